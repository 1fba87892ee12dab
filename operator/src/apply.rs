//! The one way the operator writes objects: server-side apply with the field manager
//! `alcove-operator`, skipped when the live object already says what we would apply.
//!
//! "Already says" is two checks: every field of the desired object has the same value in the live
//! one (defaults the API server adds are fine), and the live object carries the hash of the last
//! configuration we applied (so a field we stopped applying is still pruned by a real apply).
//!
//! The live object comes from a watch cache, which lags our own writes by a moment; the
//! `WriteLog` remembers what we wrote on top of which version, so a reconcile that runs on the
//! stale copy does not write the same thing again.
//!
//! Three writes are not applies, on purpose, and use `merge_params` so that managedFields still
//! name the operator: retention's release and reclaim of a volume (a few labels, annotations and
//! owner references on an object deliberately left as it was made), an erasure receipt (one new
//! key in a ConfigMap that concurrent erasures add to), and the billing ledger (a
//! compare-and-swap on the resourceVersion). Finalizers are applied by their own field manager
//! (`controller`), statuses by `status`.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::hash::config_hash;
use alcove_crds::FIELD_MANAGER;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One remembered write: the version it was written on top of, its fingerprint, and when.
type Written = (Option<String>, String, Instant);

/// What the operator wrote recently, by object key.
#[derive(Default)]
pub struct WriteLog {
    entries: Mutex<HashMap<String, Written>>,
}

/// How long a write is remembered: far longer than a watch event takes to arrive.
const REMEMBER: Duration = Duration::from_secs(30);

/// How long a creation is remembered. It is forgotten as soon as the watch shows the object (or
/// its deletion: then it must come back), or a re-list lacks it (created and deleted while the
/// watch was re-listing). This bound must outlast the cache's lag under load, or the object is
/// made twice: with 10,000 instances converging on 2 cores, 30 s did not (4,756 pods and 4,539
/// claims were applied again).
const REMEMBER_CREATION: Duration = Duration::from_secs(300);

impl WriteLog {
    /// Whether we already wrote on top of the version `live_rv` (so the cache is just behind our
    /// own write, whose event will trigger the next reconcile with fresh data). The fingerprint
    /// does not matter: whatever a reconcile on stale data would write is decided again then.
    pub fn already_written(&self, key: &str, live_rv: Option<&str>) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((rv, _, at)) if rv.as_deref() == live_rv && at.elapsed() < remembered(rv) => true,
            Some(_) => {
                // The cache has moved past our write (or the object was deleted since): forget it.
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// The watch showed the object (or its deletion): a creation of it is no longer in flight.
    pub fn observed(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(key).is_some_and(|(rv, _, _)| rv.is_none()) {
            entries.remove(key);
        }
    }

    /// A re-list of `kind` is in the cache: creations it lacks are gone (or not yet listed, and
    /// then a second apply of the same object changes nothing).
    pub fn relisted(&self, kind: &str, listed: &std::collections::HashSet<String>) {
        let prefix = format!("{kind}/");
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|key, (rv, _, _)| {
            rv.is_some() || !key.starts_with(&prefix) || listed.contains(key)
        });
    }

    pub fn record(&self, key: String, live_rv: Option<String>, fingerprint: String) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, (rv, _, at)| at.elapsed() < remembered(rv));
        }
        entries.insert(key, (live_rv, fingerprint, Instant::now()));
    }
}

fn remembered(rv: &Option<String>) -> Duration {
    if rv.is_none() { REMEMBER_CREATION } else { REMEMBER }
}

/// A write-log key for an object.
pub fn log_key<K: Resource<DynamicType = ()>>(obj: &K, suffix: &str) -> String {
    format!("{}/{}/{}{suffix}", K::kind(&()), obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Annotation holding the hash of the configuration the operator last applied.
pub const HASH_ANNOTATION: &str = "alcove.dev/applied-hash";

/// Whether every field of `desired` is present in `live` with the same value.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, v)| match l.get(k) {
            Some(lv) => is_subset(v, lv),
            None => v.is_null(),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b))
        }
        (a, b) => a == b,
    }
}

/// The first path where `desired` is not a subset of `live` (for logs explaining a re-apply).
pub fn first_difference(desired: &Value, live: &Value, path: &str) -> Option<String> {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().find_map(|(k, v)| match l.get(k) {
            Some(lv) => first_difference(v, lv, &format!("{path}.{k}")),
            None if v.is_null() => None,
            None => Some(format!("{path}.{k} missing")),
        }),
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => d
            .iter()
            .zip(l)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: want {a}, have {b}")),
    }
}

/// The desired object as JSON with the hash annotation set.
pub fn with_hash<K: Serialize>(desired: &K) -> Result<(Value, String)> {
    let mut v = serde_json::to_value(desired)
        .map_err(|source| Error::Serialize { what: "desired object", source })?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut)
    {
        a.remove(HASH_ANNOTATION);
    }
    let hash = config_hash(&v);
    let meta = v
        .as_object_mut()
        .and_then(|o| o.get_mut("metadata"))
        .and_then(Value::as_object_mut)
        .ok_or(Error::MissingField("metadata"))?;
    let annotations =
        meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    annotations[HASH_ANNOTATION] = Value::String(hash.clone());
    Ok((v, hash))
}

/// Whether applying `desired` to `live` would change anything.
pub fn needs_apply<K: Serialize>(desired: &K, live: Option<&K>) -> Result<bool> {
    let Some(live) = live else { return Ok(true) };
    let (want, hash) = with_hash(desired)?;
    let live_v = serde_json::to_value(live)
        .map_err(|source| Error::Serialize { what: "live object", source })?;
    let live_hash = live_v
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(HASH_ANNOTATION))
        .and_then(Value::as_str);
    let drift = first_difference(&want, &live_v, "");
    if let Some(d) = &drift {
        let name = live_v
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        tracing::debug!(object = %name, difference = %d, "re-applying");
    }
    Ok(live_hash != Some(hash.as_str()) || drift.is_some())
}

/// Applies `desired` unless `live` already matches. Returns whether a write happened.
pub async fn apply<K>(log: &WriteLog, api: &Api<K>, desired: &K, live: Option<&K>) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let key = log_key(desired, "");
    if !needs_apply(desired, live)? {
        return Ok(false);
    }
    let (body, hash) = with_hash(desired)?;
    let live_rv = live.and_then(|l| l.resource_version());
    // An absent object we created moments ago is in flight to the cache (briefly: it may also
    // have been deleted since, and then it must come back).
    if log.already_written(&key, live_rv.as_deref()) {
        return Ok(false);
    }
    let name = desired.name_any();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    log.record(key, live_rv, hash);
    Ok(true)
}

/// Creates `obj` unless the cache shows it (`live`) or we created it moments ago. For objects
/// made once and never re-applied (keys): an existing one (409) is left as it is. Returns
/// whether it was created.
pub async fn create<K>(log: &WriteLog, api: &Api<K>, obj: &K, live: Option<&K>) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let key = log_key(obj, "");
    if live.is_some() {
        return Ok(false);
    }
    if log.already_written(&key, None) {
        return Ok(false);
    }
    match api.create(&kube::api::PostParams::default(), obj).await {
        Ok(_) => {
            log.record(key, None, String::new());
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Server-side applies `desired` only when the cache has no such object: for objects that are
/// immutable once made (pods) or deliberately left as made (volumes).
pub async fn ensure<K>(log: &WriteLog, api: &Api<K>, desired: &K, live: Option<&K>) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    if live.is_some() {
        return Ok(false);
    }
    apply(log, api, desired, None).await
}

/// Parameters of the operator's few merge patches (see the module comment): its field manager.
pub fn merge_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    #[test]
    fn creations_are_forgotten_when_seen_or_missing_from_a_relist() {
        let log = WriteLog::default();
        for key in ["Pod/ns/seen", "Pod/ns/gone", "Pod/ns/listed", "Secret/ns/other"] {
            log.record(key.into(), None, String::new());
        }
        log.record("Pod/ns/updated".into(), Some("7".into()), "h".into());
        log.observed("Pod/ns/seen");
        let listed = ["Pod/ns/listed".to_string()].into_iter().collect();
        log.relisted("Pod", &listed);
        assert!(!log.already_written("Pod/ns/seen", None), "the watch showed it");
        assert!(!log.already_written("Pod/ns/gone", None), "the re-list lacks it");
        assert!(log.already_written("Pod/ns/listed", None));
        assert!(log.already_written("Secret/ns/other", None), "another kind's re-list");
        assert!(log.already_written("Pod/ns/updated", Some("7")), "not a creation");
    }

    #[test]
    fn subset_ignores_server_defaults_but_not_changes() {
        let desired = json!({"spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}});
        let live = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"a": "b"}, "clusterIP": "10.96.0.1"}});
        assert!(is_subset(&desired, &live));
        let drifted =
            json!({"spec": {"ports": [{"port": 81, "protocol": "TCP"}], "selector": {"a": "b"}}});
        assert!(!is_subset(&desired, &drifted));
        let extra_item =
            json!({"spec": {"ports": [{"port": 80}, {"port": 81}], "selector": {"a": "b"}}});
        assert!(!is_subset(&desired, &extra_item));
    }

    #[test]
    fn needs_apply_tracks_hash_and_content() {
        let desired: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
        assert!(needs_apply(&desired, None).unwrap());
        let (applied, _) = with_hash(&desired).unwrap();
        let mut live = applied.clone();
        live["metadata"]["resourceVersion"] = "7".into();
        let live: ConfigMap = serde_json::from_value(live).unwrap();
        assert!(
            !needs_apply(&desired, Some(&live)).unwrap(),
            "what we applied, plus server fields"
        );
        let mut drifted = live.clone();
        drifted.data.as_mut().unwrap().insert("k".into(), "edited".into());
        assert!(needs_apply(&desired, Some(&drifted)).unwrap(), "drift is repaired");
        let fewer: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {}})).unwrap();
        assert!(
            needs_apply(&fewer, Some(&live)).unwrap(),
            "a dropped field is pruned by a real apply"
        );
    }
}
