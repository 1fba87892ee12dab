//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! the holder renews every `RENEW`; a candidate takes the Lease once `LEASE_DURATION` passed
//! without a renewal. Writes use the Lease's resourceVersion, so two candidates cannot both win.
//! The same Elector holds each shard Lease when the operator is sharded (`shard`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

pub const LEASE_NAME: &str = "alcove-operator";
/// A standby takes over at most this long (plus one retry) after the leader's last renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
pub const RENEW: Duration = Duration::from_secs(2);

/// Who holds `lease` now: None when nobody does, or when the holder let it expire.
pub fn holder(lease: &Lease) -> Option<&str> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref()?.0.as_millisecond();
    let expires = renewed + i64::from(spec.lease_duration_seconds?) * 1000;
    (jiff::Timestamp::now().as_millisecond() <= expires).then_some(holder)
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

fn micro(t: jiff::Timestamp) -> MicroTime {
    MicroTime(t)
}

impl Elector {
    pub fn new(client: kube::Client, namespace: &str, identity: &str) -> Elector {
        Elector::named(client, namespace, LEASE_NAME, identity)
    }

    /// An elector on the Lease `name`.
    pub fn named(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
        }
    }

    fn lease(&self, existing: Option<&Lease>, acquiring: bool) -> Lease {
        let now = jiff::Timestamp::now();
        let mut l = existing.cloned().unwrap_or_else(|| Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
            spec: None,
        });
        let spec = l.spec.get_or_insert_with(Default::default);
        if acquiring {
            spec.acquire_time = Some(micro(now));
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(existing.is_some()));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        spec.renew_time = Some(micro(now));
        l
    }

    /// One attempt to become or stay the leader. Returns whether we hold the Lease now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let current = match self.api.get(&self.name).await {
            Ok(l) => Some(l),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(e),
        };
        let Some(current) = current else {
            return match self.api.create(&PostParams::default(), &self.lease(None, true)).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let ours = current.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if !ours && holder(&current).is_some() {
            return Ok(false);
        }
        let next = self.lease(Some(&current), !ours);
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            // Someone else wrote the Lease first: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica is the leader.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot reach the Lease"),
            }
            tokio::time::sleep(RENEW).await;
        }
    }

    /// Renews until renewal fails for a whole lease duration; returns when leadership is lost.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: renewal failed");
                    if last_ok.elapsed() >= LEASE_DURATION {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (graceful shutdown), so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(current) = self.api.get(&self.name).await
            && current.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            let mut l = current.clone();
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
            let _ = self.api.replace(&self.name, &PostParams::default(), &l).await;
        }
    }
}
