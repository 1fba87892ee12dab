//! What the operator learns from the gateway: per instance, its token totals (for billing) and
//! its last request (for idling), in a ConfigMap `usage-<uid>` in the gateway's namespace; and,
//! at once, that a request is waiting for an idle instance.
//!
//! Steady traffic costs at most one write per instance per publish interval (a minute by
//! default): requests only mark their instance, and a loop publishes the marked ones. Totals come
//! from the usage store, so several replicas sharing one store publish the same numbers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alcove_crds::gateway_usage as u;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};

use crate::directory::Route;
use crate::store::{Store, Totals};

#[derive(Default)]
struct Entry {
    tenant: String,
    namespace: String,
    instance: String,
    /// Requests since the last publish.
    pending: bool,
    /// Publish once more after a change: records still queued then reach the totals.
    settle: bool,
    /// The `status.idleSince` of the idling a waiting request ends.
    wake_for: Option<String>,
    /// The instance is being deleted: publish the last totals, then forget it.
    last_word: bool,
    published: Option<BTreeMap<String, String>>,
}

pub struct Activity {
    entries: Mutex<HashMap<String, Entry>>,
    /// Instances whose last totals were published: nothing more is said about them.
    finished: Mutex<std::collections::HashSet<String>>,
    now_publish: tokio::sync::Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            entries: Mutex::new(HashMap::new()),
            finished: Mutex::default(),
            now_publish: tokio::sync::Notify::new(),
        }
    }
}

fn millis(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// The ConfigMap's data for an instance's totals (and a pending wake).
pub fn data(
    route: (&str, &str, &str, &str),
    totals: &Totals,
    wake_for: Option<&str>,
    last_word: bool,
) -> BTreeMap<String, String> {
    let (tenant, namespace, instance, uid) = route;
    let mut d: BTreeMap<String, String> = [
        (u::TENANT, tenant.to_string()),
        (u::NAMESPACE, namespace.to_string()),
        (u::INSTANCE, instance.to_string()),
        (u::INSTANCE_UID, uid.to_string()),
        (u::REQUESTS, totals.requests.to_string()),
        (u::PROMPT_TOKENS, totals.prompt_tokens.to_string()),
        (u::COMPLETION_TOKENS, totals.completion_tokens.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if totals.last_ms > 0 {
        d.insert(u::LAST_REQUEST_AT.into(), millis(totals.last_ms));
    }
    if let Some(w) = wake_for {
        d.insert(u::WAKE_FOR_IDLE_SINCE.into(), w.to_string());
    }
    if last_word {
        d.insert(u::LAST_WORD.into(), "true".into());
    }
    d
}

impl Activity {
    fn entry<'a>(entries: &'a mut HashMap<String, Entry>, route: &Route) -> &'a mut Entry {
        entries.entry(route.uid.clone()).or_insert_with(|| Entry {
            tenant: route.tenant.clone(),
            namespace: route.namespace.clone(),
            instance: route.instance.clone(),
            ..Default::default()
        })
    }

    /// A request of `route` was answered.
    pub fn touch(&self, route: &Route) {
        if self.finished.lock().unwrap_or_else(|p| p.into_inner()).contains(&route.uid) {
            return;
        }
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Self::entry(&mut e, route).pending = true;
    }

    /// `route`'s instance is being deleted: its last totals are published now (the operator
    /// waits for them before its final token bill).
    pub fn last_word(&self, route: &Route) {
        if self.finished.lock().unwrap_or_else(|p| p.into_inner()).contains(&route.uid) {
            return;
        }
        {
            let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = Self::entry(&mut e, route);
            if entry.last_word {
                return;
            }
            entry.last_word = true;
            entry.pending = true;
        }
        self.now_publish.notify_one();
    }

    /// A request waits for `route`, idle since `idle_since`: published now, not at the next
    /// interval.
    pub fn wake(&self, route: &Route, idle_since: &str) {
        {
            let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = Self::entry(&mut e, route);
            entry.wake_for = Some(idle_since.to_string());
            entry.pending = true;
        }
        self.now_publish.notify_one();
    }

    /// Publishes the marked instances every `interval` (and at once on a wake), until the end.
    pub async fn publish(
        self: Arc<Self>,
        client: kube::Client,
        namespace: String,
        store: Store,
        interval: Duration,
    ) {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &namespace);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.now_publish.notified() => {}
            }
            type Due = (String, (String, String, String), Option<String>, bool);
            let due: Vec<Due> = {
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                entries
                    .iter_mut()
                    .filter(|(_, e)| e.pending || e.settle)
                    .map(|(uid, e)| {
                        e.settle = e.pending;
                        e.pending = false;
                        (
                            uid.clone(),
                            (e.tenant.clone(), e.namespace.clone(), e.instance.clone()),
                            e.wake_for.clone(),
                            e.last_word,
                        )
                    })
                    .collect()
            };
            for (uid, (tenant, ns, instance), wake, last_word) in due {
                let totals = match store.totals(&uid).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading usage totals; publishing later");
                        self.mark(&uid);
                        continue;
                    }
                };
                let d = data((&tenant, &ns, &instance, &uid), &totals, wake.as_deref(), last_word);
                let unchanged = self
                    .entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&uid)
                    .is_some_and(|e| e.published.as_ref() == Some(&d));
                if unchanged {
                    continue;
                }
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(u::name(&uid)),
                        namespace: Some(namespace.clone()),
                        labels: Some(
                            [
                                (u::LABEL.to_string(), "gateway".to_string()),
                                ("app.kubernetes.io/managed-by".into(), "alcove-gateway".into()),
                                (alcove_crds::LABEL_TENANT.into(), tenant.clone()),
                                (alcove_crds::LABEL_INSTANCE.into(), instance.clone()),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    data: Some(d.clone()),
                    ..Default::default()
                };
                match api
                    .patch(
                        &u::name(&uid),
                        &PatchParams::apply(u::FIELD_MANAGER).force(),
                        &Patch::Apply(&cm),
                    )
                    .await
                {
                    Ok(_) if last_word => {
                        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
                        self.finished.lock().unwrap_or_else(|p| p.into_inner()).insert(uid);
                    }
                    Ok(_) => {
                        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(e) = entries.get_mut(&uid) {
                            e.published = Some(d);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, instance = %format!("{ns}/{instance}"), "publishing usage; retrying");
                        self.mark(&uid);
                    }
                }
            }
        }
    }

    fn mark(&self, uid: &str) {
        if let Some(e) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get_mut(uid) {
            e.pending = true;
        }
    }

    /// Forgets instances that are gone (their ConfigMap is the operator's to delete).
    pub fn retain(&self, exists: impl Fn(&str) -> bool) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|uid, _| exists(uid));
        self.finished.lock().unwrap_or_else(|p| p.into_inner()).retain(|uid| exists(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_names_the_instance_its_totals_and_a_wake() {
        let t = Totals {
            requests: 2,
            prompt_tokens: 30,
            completion_tokens: 7,
            last_ms: 1_800_000_000_000,
        };
        let d = data(("acme", "tenant-acme", "bot", "u1"), &t, Some("2027-01-15T07:00:00Z"), true);
        assert_eq!(d[u::LAST_WORD], "true");
        assert_eq!(d[u::PROMPT_TOKENS], "30");
        assert_eq!(d[u::COMPLETION_TOKENS], "7");
        assert_eq!(d[u::LAST_REQUEST_AT], "2027-01-15T08:00:00Z");
        assert_eq!(d[u::WAKE_FOR_IDLE_SINCE], "2027-01-15T07:00:00Z");
        let quiet = data(("acme", "tenant-acme", "bot", "u1"), &Totals::default(), None, false);
        assert!(
            !quiet.contains_key(u::LAST_REQUEST_AT) && !quiet.contains_key(u::WAKE_FOR_IDLE_SINCE)
        );
        assert!(!quiet.contains_key(u::LAST_WORD));
    }
}
