//! Controller sharding: with `--shards N` (N > 1), tenants are split into N shards by a stable
//! hash of the tenant name, and each shard is a Lease (`alcove-operator-shard-I-of-N`) that one
//! replica holds at a time. A replica reconciles only the objects of the tenants in the shards
//! it holds (`controller::reconcile` asks `Shards::owns`).
//!
//! - **Exactly one replica per object.** A holder stops counting a shard as its own once
//!   `RENEW_DEADLINE` passed since the send of its last successful renewal; a taker needs the Lease
//!   expired (`LEASE_DURATION` after that renewal). The 3 s between them fence the two.
//! - **Re-taken within 15 s.** A dead holder's shard expires `LEASE_DURATION` (10 s) after its last
//!   renewal and is taken at a live replica's next round (every `RENEW`, 2 s).
//! - **Balanced.** Each replica renews a member Lease (`alcove-operator-member-…`) and holds at
//!   most its fair share, ⌈N ÷ live members⌉; above it, it hands shards back (stops first, releases
//!   `HANDOFF` later), so a replica that joins gets its share.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use sha2::Digest;

use crate::leader::{Elector, RENEW};

/// A holder stops reconciling a shard this long after sending its last successful renewal,
/// before anyone else may take it (`LEASE_DURATION`).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(7);
/// A shard handed back is released this long after its holder stopped reconciling it, so that
/// reconciles already running finish first.
pub const HANDOFF: Duration = Duration::from_secs(3);
const MEMBER_PREFIX: &str = "alcove-operator-member-";
/// A member Lease expired this long ago belongs to a replica that is gone: it is deleted.
const GONE: Duration = Duration::from_secs(60);

/// The shard of `tenant` among `count`: stable across processes, versions and machines.
pub fn shard_of(tenant: &str, count: u32) -> u32 {
    let digest = sha2::Sha256::digest(tenant.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % u64::from(count.max(1))) as u32
}

/// The tenant an object belongs to: a Tenant itself, or the tenant of the namespace it is in.
pub fn tenant_of<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => crate::names::tenant_of_namespace(ns).unwrap_or(ns).to_string(),
        None => obj.meta().name.clone().unwrap_or_default(),
    }
}

pub fn shard_lease_name(shard: u32, count: u32) -> String {
    format!("alcove-operator-shard-{shard}-of-{count}")
}

/// The member Lease of a replica; the identity is hashed into a valid object name.
pub fn member_lease_name(identity: &str) -> String {
    format!("{MEMBER_PREFIX}{}", crate::hash::config_hash(&serde_json::json!(identity)))
}

/// The most shards one of `members` live replicas holds.
pub fn fair_share(count: u32, members: usize) -> usize {
    (count as usize).div_ceil(members.max(1))
}

/// A Lease nobody renewed for a minute past its expiry.
fn long_expired(lease: &Lease) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let Some(renewed) = &spec.renew_time else { return true };
    let expires = renewed.0.as_millisecond()
        + i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000
        + GONE.as_millis() as i64;
    jiff::Timestamp::now().as_millisecond() > expires
}

/// The shards this replica owns: all of them when the operator is not sharded (a leader Lease
/// gates the whole process instead).
pub struct Shards {
    count: u32,
    /// Per shard, when the last successful renewal was sent; None while not held.
    renewed: Mutex<Vec<Option<Instant>>>,
    taken: tokio::sync::broadcast::Sender<Vec<u32>>,
}

impl Shards {
    pub fn new(count: u32) -> Shards {
        Shards {
            count: count.max(1),
            renewed: Mutex::new(vec![None; count.max(1) as usize]),
            taken: tokio::sync::broadcast::channel(16).0,
        }
    }

    /// Not sharded: every object is this replica's.
    pub fn unsharded() -> Shards {
        Shards::new(1)
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn sharded(&self) -> bool {
        self.count > 1
    }

    fn held_at(&self, shard: u32, now: Instant) -> bool {
        let renewed = self.renewed.lock().expect("shards lock");
        renewed[shard as usize].is_some_and(|t| now.saturating_duration_since(t) < RENEW_DEADLINE)
    }

    /// Whether this replica reconciles `tenant`'s objects now.
    pub fn owns(&self, tenant: &str) -> bool {
        !self.sharded() || self.held_at(shard_of(tenant, self.count), Instant::now())
    }

    /// The shards held now.
    pub fn owned(&self) -> Vec<u32> {
        let now = Instant::now();
        (0..self.count).filter(|s| self.held_at(*s, now)).collect()
    }

    fn renewed(&self, shard: u32, sent: Instant) {
        self.renewed.lock().expect("shards lock")[shard as usize] = Some(sent);
    }

    fn dropped(&self, shard: u32) {
        self.renewed.lock().expect("shards lock")[shard as usize] = None;
    }

    /// The objects of `store` in each shard this replica takes, as it takes them: a controller
    /// reconciles them at once (each was skipped while another replica held it).
    pub fn taken<K>(&self, store: Store<K>) -> BoxStream<'static, ObjectRef<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let count = self.count;
        tokio_stream::wrappers::BroadcastStream::new(self.taken.subscribe())
            .filter_map(|r| async move { r.ok() })
            .flat_map(move |shards| {
                let refs: Vec<ObjectRef<K>> = store
                    .state()
                    .into_iter()
                    .filter(|o| shards.contains(&shard_of(&tenant_of(&**o), count)))
                    .map(|o| ObjectRef::from_obj(&*o))
                    .collect();
                futures::stream::iter(refs)
            })
            .boxed()
    }
}

/// Holds this replica's share of the shard Leases until `stop`, then hands every one back.
pub async fn run(
    client: kube::Client,
    namespace: String,
    identity: String,
    shards: Arc<Shards>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let count = shards.count();
    let api: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let member =
        Elector::named(client.clone(), &namespace, &member_lease_name(&identity), &identity);
    let electors: Vec<Arc<Elector>> = (0..count)
        .map(|i| {
            Arc::new(Elector::named(
                client.clone(),
                &namespace,
                &shard_lease_name(i, count),
                &identity,
            ))
        })
        .collect();
    let mut held: BTreeSet<u32> = BTreeSet::new();
    // Shards handed back, until their release has surely happened: never re-taken before, or
    // the late release would free a shard this replica believes it holds.
    let mut handed: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut first = true;
    tokio::pin!(stop);
    loop {
        if let Err(e) = member.try_acquire_or_renew().await {
            tracing::warn!(error = %e, "sharding: cannot renew the member Lease");
        }
        let leases = match api.list(&ListParams::default()).await {
            Ok(l) => Some(l.items),
            Err(e) => {
                tracing::warn!(error = %e, "sharding: cannot list Leases");
                None
            }
        };
        // Without the list, the members are unknown: keep what is held, take and hand back nothing.
        let unknown = leases.is_none();
        let leases = leases.unwrap_or_default();
        let members = leases
            .iter()
            .filter(|l| l.name_any().starts_with(MEMBER_PREFIX))
            .filter(|l| crate::leader::holder(l).is_some())
            .count();
        // Members gone for a while (replaced pods) would otherwise pile up, one per pod ever run.
        for gone in leases.iter().filter(|l| l.name_any().starts_with(MEMBER_PREFIX)) {
            if long_expired(gone) {
                let _ = api.delete(&gone.name_any(), &Default::default()).await;
            }
        }
        let fair = if unknown { held.len() } else { fair_share(count, members) };
        handed.retain(|_, at| at.elapsed() < HANDOFF + RENEW);
        let mut taken = Vec::new();
        for i in 0..count {
            let lease = shard_lease_name(i, count);
            let foreign = leases.iter().any(|l| {
                l.name_any() == lease
                    && crate::leader::holder(l).is_some_and(|h| h != identity.as_str())
            });
            // The first round only announces this replica, so that replicas starting together
            // see each other before taking shares.
            let wanted = held.contains(&i)
                || (!first && !foreign && held.len() < fair && !handed.contains_key(&i));
            if !wanted {
                continue;
            }
            let sent = Instant::now();
            match electors[i as usize].try_acquire_or_renew().await {
                Ok(true) => {
                    // Renewals that failed past the deadline skipped this shard's objects
                    // meanwhile (and dropped their resync timers): they are reconciled again.
                    let lapsed = held.contains(&i) && !shards.held_at(i, Instant::now());
                    shards.renewed(i, sent);
                    if held.insert(i) {
                        tracing::info!(shard = i, shards = count, "took shard");
                        taken.push(i);
                    } else if lapsed {
                        tracing::warn!(shard = i, "shard renewed after its deadline lapsed");
                        taken.push(i);
                    }
                }
                Ok(false) => {
                    if held.remove(&i) {
                        shards.dropped(i);
                        tracing::warn!(shard = i, shards = count, "lost shard to another replica");
                    }
                }
                // Keep trying: `RENEW_DEADLINE` stops the reconciles if this lasts.
                Err(e) => tracing::warn!(shard = i, error = %e, "sharding: renewal failed"),
            }
        }
        while held.len() > fair {
            let i = *held.iter().next_back().expect("held");
            held.remove(&i);
            shards.dropped(i);
            tracing::info!(shard = i, fair, members, "handing shard back");
            handed.insert(i, Instant::now());
            let elector = electors[i as usize].clone();
            tokio::spawn(async move {
                tokio::time::sleep(HANDOFF).await;
                elector.release().await;
            });
        }
        metrics.shards_owned.set(held.len() as i64);
        if !taken.is_empty() {
            let _ = shards.taken.send(taken);
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(RENEW) => {}
            () = &mut stop => break,
        }
    }
    for i in std::mem::take(&mut held) {
        shards.dropped(i);
        electors[i as usize].release().await;
    }
    member.release().await;
    metrics.shards_owned.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("acme", 4), shard_of("acme", 4));
        assert_eq!(shard_of("acme", 1), 0);
        let mut per = [0usize; 4];
        for t in 0..1000 {
            per[shard_of(&format!("tenant-{t}"), 4) as usize] += 1;
        }
        assert!(per.iter().all(|n| (200..300).contains(n)), "{per:?}");
        // Pinned (the first 8 bytes of SHA-256, big-endian, modulo N): replicas of different
        // versions during a rolling upgrade must agree on every tenant's shard.
        assert_eq!(shard_of("acme", 3), 0);
        assert_eq!(
            (0..8).map(|i| shard_of(&format!("t{i}"), 3)).collect::<Vec<_>>(),
            [0, 2, 2, 2, 0, 0, 1, 0]
        );
    }

    #[test]
    fn fair_shares_cover_every_shard() {
        assert_eq!(fair_share(4, 1), 4);
        assert_eq!(fair_share(4, 3), 2);
        assert_eq!(fair_share(3, 3), 1);
        assert_eq!(fair_share(3, 2), 2);
        assert_eq!(fair_share(3, 0), 3);
        for n in 1..10u32 {
            for m in 1..10usize {
                assert!(fair_share(n, m) * m >= n as usize);
            }
        }
    }

    #[test]
    fn a_shard_is_owned_only_until_the_renew_deadline() {
        let s = Shards::new(2);
        let t = shard_of("acme", 2);
        assert!(!s.owns("acme"));
        s.renewed(t, Instant::now());
        assert!(s.owns("acme"));
        assert_eq!(s.owned(), vec![t]);
        s.renewed(t, Instant::now() - RENEW_DEADLINE);
        assert!(!s.owns("acme"), "a renewal older than the deadline no longer counts");
        s.renewed(t, Instant::now());
        s.dropped(t);
        assert!(!s.owns("acme"));
        assert!(Shards::unsharded().owns("anyone"));
    }

    #[test]
    fn member_leases_are_gone_a_minute_after_they_expire() {
        let lease = |ago: i64| Lease {
            metadata: Default::default(),
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some("r".into()),
                lease_duration_seconds: Some(10),
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    jiff::Timestamp::now() - jiff::SignedDuration::from_secs(ago),
                )),
                ..Default::default()
            }),
        };
        assert!(!long_expired(&lease(0)));
        assert!(!long_expired(&lease(65)), "expired 55 s ago");
        assert!(long_expired(&lease(75)));
        assert!(crate::leader::holder(&lease(5)).is_some());
        assert!(crate::leader::holder(&lease(15)).is_none());
    }

    #[test]
    fn objects_belong_to_the_tenant_of_their_namespace() {
        let pod = k8s_openapi::api::core::v1::Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("tenant-acme".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(tenant_of(&pod), "acme");
        let tenant = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta { name: Some("acme".into()), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(tenant_of(&tenant), "acme");
        assert!(member_lease_name("operator-0").len() < 63);
    }
}
