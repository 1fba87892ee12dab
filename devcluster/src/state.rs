//! The object store: every object as JSON, one global resourceVersion counter (as etcd's
//! revision), an event history for watch resumption, and the indexes the garbage collector needs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::builtin::cluster_ip_offset;
use crate::meta::{self, At};
use crate::quantity::Quantity;
use crate::resources::{GroupResource, Registry};
use crate::usage::quota_usage;

/// Watch event types as they appear on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
#[derive(Debug)]
pub struct Event {
    pub gr: GroupResource,
    pub kind: EventType,
    pub rv: u64,
    /// The object after the change (for deletes: its last state, at the deletion's version).
    pub object: Arc<Value>,
    /// The object before the change (for watchers whose selector stops matching).
    pub old: Option<Arc<Value>>,
}

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub gr: GroupResource,
    pub namespace: String,
    pub name: String,
}

type Collection = BTreeMap<(String, String), Arc<Value>>;

/// All stored state. Lives behind one mutex: every write is one short critical section, like an
/// etcd transaction, which keeps resourceVersions and watch order trivially consistent. Updates
/// of existing objects (API patches, the kubelet's status writes) are worked out outside it from
/// one version and committed under it only if that version is still stored
/// (`api::commit_if_current`), so the lock is held for the write alone.
pub struct State {
    pub registry: Registry,
    objects: HashMap<GroupResource, Collection>,
    rv: u64,
    /// Recent events and when each happened, oldest first.
    history: VecDeque<(Instant, Arc<Event>)>,
    history_limit: usize,
    /// Events older than this are compacted away whatever their number, as kube-apiserver's
    /// watch cache keeps only fresh events: every version of every object would otherwise stay
    /// in memory (gigabytes at 10,000 instances).
    history_age: Duration,
    /// Oldest resourceVersion a watch may still resume from.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
    by_uid: HashMap<String, ObjectRef>,
    /// owner uid → objects whose ownerReferences name it.
    dependents: HashMap<String, BTreeSet<ObjectRef>>,
    /// namespace → what its objects consume of quotas (non-zero totals only), kept with every
    /// write so quota admission and the quota controller never rescan a namespace.
    usage: HashMap<String, BTreeMap<String, Quantity>>,
    /// Services' cluster IPs in the service range, as offsets (`builtin::cluster_ip_offset`),
    /// so handing out the lowest free one never scans every Service.
    cluster_ips: BTreeSet<u32>,
    /// Writes taken since the start, by resource: whoever made them (clients, the scheduler,
    /// the kubelet, the controllers), so a benchmark can say what the store spent them on.
    writes: HashMap<GroupResource, u64>,
}

impl State {
    pub fn new(history_limit: usize, history_age: Duration) -> State {
        let (tx, _) = broadcast::channel(65_536);
        State {
            registry: Registry::with_builtins(),
            objects: HashMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit,
            history_age,
            compacted: 1,
            tx,
            by_uid: HashMap::new(),
            dependents: HashMap::new(),
            usage: HashMap::new(),
            cluster_ips: BTreeSet::new(),
            writes: HashMap::new(),
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Writes taken since the start, by resource.
    pub fn writes_by_resource(&self) -> &HashMap<GroupResource, u64> {
        &self.writes
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn get(&self, gr: &GroupResource, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects.get(gr)?.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub fn get_by_uid(&self, uid: &str) -> Option<(ObjectRef, Arc<Value>)> {
        let r = self.by_uid.get(uid)?;
        self.get(&r.gr, &r.namespace, &r.name).map(|o| (r.clone(), o))
    }

    /// Objects of a collection, optionally in one namespace, in (namespace, name) order.
    pub fn list(&self, gr: &GroupResource, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let Some(coll) = self.objects.get(gr) else { return Vec::new() };
        match namespace {
            Some(ns) => coll
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => coll.values().cloned().collect(),
        }
    }

    /// Objects after `(namespace, name)` in key order (list continuation).
    pub fn list_after(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        after: &(String, String),
    ) -> Vec<Arc<Value>> {
        let Some(coll) = self.objects.get(gr) else { return Vec::new() };
        coll.range(after.clone()..)
            .filter(|(k, _)| k != &after)
            .filter(|((n, _), _)| namespace.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn count(&self, gr: &GroupResource, namespace: Option<&str>) -> usize {
        match namespace {
            None => self.objects.get(gr).map_or(0, BTreeMap::len),
            Some(_) => self.list(gr, namespace).len(),
        }
    }

    /// What a namespace's objects consume of quotas; `None` when nothing.
    pub fn usage(&self, namespace: &str) -> Option<&BTreeMap<String, Quantity>> {
        self.usage.get(namespace)
    }

    /// The cluster IPs in use in the service range, as offsets.
    pub fn cluster_ips(&self) -> &BTreeSet<u32> {
        &self.cluster_ips
    }

    /// Whether a Service holds `ip` (outside the range, found by a scan: only a client that
    /// chooses its own IP gets there).
    pub fn cluster_ip_taken(&self, ip: &str) -> bool {
        match cluster_ip_offset(ip) {
            Some(n) => self.cluster_ips.contains(&n),
            None => self
                .list(&GroupResource::core("services"), None)
                .iter()
                .any(|s| s.at("/spec/clusterIP").and_then(Value::as_str) == Some(ip)),
        }
    }

    pub fn dependents_of(&self, owner_uid: &str) -> Vec<ObjectRef> {
        self.dependents.get(owner_uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every stored object as a `Modified` event, for consumers that missed events.
    pub fn everything_as_events(&self) -> Vec<Arc<Event>> {
        let mut events = Vec::new();
        for gr in self.collections() {
            for obj in self.list(&gr, None) {
                events.push(Arc::new(Event {
                    gr: gr.clone(),
                    kind: EventType::Modified,
                    rv: 0,
                    object: obj.clone(),
                    old: Some(obj),
                }));
            }
        }
        events
    }

    pub fn collections(&self) -> Vec<GroupResource> {
        self.objects.keys().cloned().collect()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, event: Event) {
        match self.writes.get_mut(&event.gr) {
            Some(n) => *n += 1,
            None => {
                self.writes.insert(event.gr.clone(), 1);
            }
        }
        let event = Arc::new(event);
        let now = Instant::now();
        self.history.push_back((now, event.clone()));
        while self.history.len() > self.history_limit
            || self
                .history
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.history_age)
        {
            if let Some((_, old)) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    /// Events after `rv`, or `Err(oldest)` when `rv` is older than the retained history.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, u64> {
        if rv < self.compacted {
            return Err(self.compacted);
        }
        let start = self.history.partition_point(|(_, e)| e.rv <= rv);
        Ok(self.history.iter().skip(start).map(|(_, e)| e.clone()).collect())
    }

    fn index(&mut self, r: &ObjectRef, old: Option<&Value>, new: Option<&Value>) {
        self.count_usage(r, old, new);
        if r.gr.group.is_empty() && r.gr.resource == "services" {
            let offset = |s: &Value| {
                s.at("/spec/clusterIP").and_then(Value::as_str).and_then(cluster_ip_offset)
            };
            if let Some(n) = old.and_then(offset) {
                self.cluster_ips.remove(&n);
            }
            if let Some(n) = new.and_then(offset) {
                self.cluster_ips.insert(n);
            }
        }
        if let Some(o) = old {
            for owner in meta::owner_references(o) {
                if let Some(uid) = owner["uid"].as_str()
                    && let Some(set) = self.dependents.get_mut(uid)
                {
                    set.remove(r);
                    if set.is_empty() {
                        self.dependents.remove(uid);
                    }
                }
            }
            if new.is_none() {
                self.by_uid.remove(meta::uid(o));
            }
        }
        if let Some(n) = new {
            for owner in meta::owner_references(n) {
                if let Some(uid) = owner["uid"].as_str() {
                    self.dependents.entry(uid.to_string()).or_default().insert(r.clone());
                }
            }
            self.by_uid.insert(meta::uid(n).to_string(), r.clone());
        }
    }

    fn count_usage(&mut self, r: &ObjectRef, old: Option<&Value>, new: Option<&Value>) {
        // Only pods and claims consume more than their count, and a replacement keeps the count.
        let sized = r.gr.group.is_empty()
            && matches!(r.gr.resource.as_str(), "pods" | "persistentvolumeclaims");
        if r.namespace.is_empty() || (old.is_some() && new.is_some() && !sized) {
            return;
        }
        let before = old.map(|o| quota_usage(&r.gr, o)).unwrap_or_default();
        let after = new.map(|n| quota_usage(&r.gr, n)).unwrap_or_default();
        if before == after {
            return;
        }
        let totals = self.usage.entry(r.namespace.clone()).or_default();
        for (k, q) in before {
            let left = totals.get(&k).copied().unwrap_or_default() - q;
            totals.insert(k, left);
        }
        for (k, q) in after {
            let sum = totals.get(&k).copied().unwrap_or_default() + q;
            totals.insert(k, sum);
        }
        totals.retain(|_, q| !q.is_zero());
        if totals.is_empty() {
            self.usage.remove(&r.namespace);
        }
    }

    /// Stores a new object, stamping its resourceVersion. The caller has checked it is new.
    pub fn insert(&mut self, gr: &GroupResource, mut obj: Value) -> Arc<Value> {
        let rv = self.next_rv();
        meta::set_meta(&mut obj, "resourceVersion", Some(rv.to_string().into()));
        let r = ObjectRef {
            gr: gr.clone(),
            namespace: meta::namespace(&obj).into(),
            name: meta::name(&obj).into(),
        };
        self.index(&r, None, Some(&obj));
        let obj = Arc::new(obj);
        self.objects
            .entry(gr.clone())
            .or_default()
            .insert((r.namespace.clone(), r.name.clone()), obj.clone());
        self.record(Event {
            gr: gr.clone(),
            kind: EventType::Added,
            rv,
            object: obj.clone(),
            old: None,
        });
        obj
    }

    /// Replaces a stored object, stamping a new resourceVersion.
    pub fn replace(&mut self, gr: &GroupResource, mut obj: Value) -> Arc<Value> {
        let rv = self.next_rv();
        meta::set_meta(&mut obj, "resourceVersion", Some(rv.to_string().into()));
        let r = ObjectRef {
            gr: gr.clone(),
            namespace: meta::namespace(&obj).into(),
            name: meta::name(&obj).into(),
        };
        let old = self.get(gr, &r.namespace, &r.name);
        self.index(&r, old.as_deref(), Some(&obj));
        let obj = Arc::new(obj);
        self.objects
            .entry(gr.clone())
            .or_default()
            .insert((r.namespace.clone(), r.name.clone()), obj.clone());
        self.record(Event {
            gr: gr.clone(),
            kind: EventType::Modified,
            rv,
            object: obj.clone(),
            old,
        });
        obj
    }

    /// Removes an object; the DELETED event carries its last state at a new resourceVersion.
    pub fn remove(
        &mut self,
        gr: &GroupResource,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Value>> {
        let old = self.objects.get_mut(gr)?.remove(&(namespace.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        let r = ObjectRef { gr: gr.clone(), namespace: namespace.into(), name: name.into() };
        self.index(&r, Some(&old), None);
        let mut last = (*old).clone();
        meta::set_meta(&mut last, "resourceVersion", Some(rv.to_string().into()));
        let last = Arc::new(last);
        self.record(Event {
            gr: gr.clone(),
            kind: EventType::Deleted,
            rv,
            object: last.clone(),
            old: Some(old),
        });
        Some(last)
    }

    /// Drops a whole collection (its CRD was deleted), emitting deletes.
    pub fn drop_collection(&mut self, gr: &GroupResource) {
        let keys: Vec<(String, String)> =
            self.objects.get(gr).map(|c| c.keys().cloned().collect()).unwrap_or_default();
        for (ns, name) in keys {
            self.remove(gr, &ns, &name);
        }
        self.objects.remove(gr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_and_history() {
        let mut s = State::new(3, Duration::from_secs(60));
        let gr = GroupResource::core("configmaps");
        let a = s.insert(&gr, json!({"metadata": {"name": "a", "namespace": "n", "uid": "u1"}}));
        let rv_a: u64 = meta::resource_version(&a).parse().unwrap();
        s.replace(
            &gr,
            json!({"metadata": {"name": "a", "namespace": "n", "uid": "u1"}, "data": {"k": "v"}}),
        );
        s.remove(&gr, "n", "a");
        assert_eq!(s.writes_by_resource().get(&gr), Some(&3), "each write counted");
        let since = s.events_since(rv_a).unwrap();
        assert_eq!(
            since.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventType::Modified, EventType::Deleted]
        );
        s.insert(&gr, json!({"metadata": {"name": "b", "namespace": "n", "uid": "u2"}}));
        s.insert(&gr, json!({"metadata": {"name": "c", "namespace": "n", "uid": "u3"}}));
        assert!(s.events_since(rv_a).is_err(), "history of 3 no longer reaches the first write");
        assert_eq!(s.list(&gr, Some("n")).len(), 2);
    }

    #[test]
    fn history_forgets_by_age() {
        let mut s = State::new(100, Duration::from_millis(50));
        let gr = GroupResource::core("configmaps");
        let a = s.insert(&gr, json!({"metadata": {"name": "a", "namespace": "n", "uid": "u1"}}));
        let rv_a: u64 = meta::resource_version(&a).parse().unwrap();
        assert!(s.events_since(rv_a - 1).is_ok());
        std::thread::sleep(Duration::from_millis(80));
        s.insert(&gr, json!({"metadata": {"name": "b", "namespace": "n", "uid": "u2"}}));
        assert!(s.events_since(rv_a - 1).is_err(), "a's event is older than the age bound");
        assert!(s.events_since(rv_a).is_ok(), "b's is kept");
    }

    #[test]
    fn quota_usage_totals_follow_every_write() {
        let mut s = State::new(10, Duration::from_secs(60));
        let (pods, cms) = (GroupResource::core("pods"), GroupResource::core("configmaps"));
        let pod = |extra: Value| {
            let mut p = json!({"metadata": {"name": "p", "namespace": "n", "uid": "p1"},
                "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}, "requests": {"cpu": "500m"}}}]}});
            p["metadata"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            p
        };
        let used = |s: &State, k: &str| {
            s.usage("n").and_then(|u| u.get(k)).copied().unwrap_or_default().to_string()
        };
        s.insert(&pods, pod(json!({})));
        s.insert(&cms, json!({"metadata": {"name": "c", "namespace": "n", "uid": "c1"}}));
        assert_eq!(used(&s, "requests.nvidia.com/gpu"), "2");
        assert_eq!(used(&s, "requests.cpu"), "500m");
        assert_eq!(used(&s, "count/configmaps"), "1");
        assert_eq!(used(&s, "pods"), "1");
        // A pod being deleted frees its share at once; the config map still counts.
        s.replace(&pods, pod(json!({"deletionTimestamp": "2026-01-01T00:00:00Z"})));
        assert_eq!(used(&s, "requests.nvidia.com/gpu"), "0");
        assert_eq!(used(&s, "pods"), "0");
        s.remove(&pods, "n", "p");
        s.remove(&cms, "n", "c");
        assert!(s.usage("n").is_none(), "nothing left: {:?}", s.usage("n"));
    }

    #[test]
    fn dependents_index() {
        let mut s = State::new(10, Duration::from_secs(60));
        let gr = GroupResource::core("configmaps");
        s.insert(&gr, json!({"metadata": {"name": "child", "namespace": "n", "uid": "c", "ownerReferences": [{"uid": "p", "name": "parent", "kind": "ConfigMap", "apiVersion": "v1"}]}}));
        assert_eq!(s.dependents_of("p").len(), 1);
        s.remove(&gr, "n", "child");
        assert!(s.dependents_of("p").is_empty());
    }
}
