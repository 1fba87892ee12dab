//! The shared context every controller gets: client, configuration, clock, metrics, event
//! recorder, and the watch caches (reflector stores) of everything the controllers read, so a
//! reconcile reads from memory and only writes go to the API server.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use alcove_crds::{InferenceInstance, KnowledgeBase, Tenant};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, Node, PersistentVolumeClaim, Pod, ResourceQuota, Secret,
    Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::events::Recorder;
use crate::metrics::Metrics;
use crate::names::MANAGED_BY;
use alcove_clock::Clock;

/// Futures that keep the caches fed; the caller drives them.
pub type Feeder = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every change a cache sees (deletions included), for controllers to subscribe to. Each
/// subscriber has its own unbounded queue, so memory follows how far subscribers are behind (a
/// broadcast channel would keep a preallocated ring of 65,536 slots per kind, about 40 MiB for
/// the operator's 19 caches, and drop triggers for a subscriber that fell behind it).
pub struct Feed<K> {
    subscribers: Arc<std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Arc<K>>>>>,
}

// By hand: derived impls would demand `K: Clone + Default`.
impl<K> Clone for Feed<K> {
    fn clone(&self) -> Self {
        Feed { subscribers: self.subscribers.clone() }
    }
}

impl<K> Default for Feed<K> {
    fn default() -> Self {
        Feed { subscribers: Default::default() }
    }
}

impl<K: Clone + Send + Sync + 'static> Feed<K> {
    /// A stream of changed objects, in the form kube-runtime's `*_stream` builders take.
    pub fn subscribe(
        &self,
    ) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|obj| Ok((*obj).clone()))
    }

    /// Hands a change to every live subscriber, forgetting those that went away.
    fn publish(&self, obj: Arc<K>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| tx.send(obj.clone()).is_ok());
    }
}

/// The names of a cache's objects by namespace, kept from the same watch as the cache, so a
/// question about one tenant's objects costs that tenant's objects, not a scan of every cached
/// object (at 10,000 instances such scans were most of the tenant controller's time).
#[derive(Clone, Default)]
pub struct ByNamespace {
    names: Arc<std::sync::RwLock<HashMap<String, BTreeSet<String>>>>,
}

impl ByNamespace {
    /// The cached objects of `namespace`, by name.
    pub fn objects<K: Resource<DynamicType = ()> + Clone>(
        &self,
        store: &Store<K>,
        namespace: &str,
    ) -> Vec<Arc<K>> {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        names
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| find(store, namespace, name))
            .collect()
    }

    fn set(&self, names: HashMap<String, BTreeSet<String>>) {
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    fn change<K: Resource>(&self, obj: &K, present: bool) {
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        note(&mut names, obj, present);
    }
}

fn note<K: Resource>(names: &mut HashMap<String, BTreeSet<String>>, obj: &K, present: bool) {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    if present {
        names.entry(ns).or_default().insert(name);
    } else if let Some(set) = names.get_mut(&ns) {
        set.remove(&name);
        if set.is_empty() {
            names.remove(&ns);
        }
    }
}

/// Marks caches ready as their first lists complete.
///
/// Readiness is tracked here rather than with kube-runtime's `Store::wait_until_ready`, whose
/// future wakes only the last of several concurrent waiters (and the `Controller`s already wait
/// on their primary stores that way).
struct Readiness {
    pending: std::sync::Mutex<Vec<&'static str>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Readiness {
    fn listed(&self, kind: &'static str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|k| *k != kind);
        if pending.is_empty() {
            self.synced.send_replace(true);
        }
    }
}

/// A kind the operator caches, and what the cache keeps of each object (`trim` unless said
/// otherwise).
pub trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    fn trim(&mut self) {
        trim(self)
    }
}

impl Cached for Tenant {}
impl Cached for InferenceInstance {}
impl Cached for KnowledgeBase {}
impl Cached for Namespace {}
impl Cached for Node {}
impl Cached for ResourceQuota {}
impl Cached for LimitRange {}
impl Cached for NetworkPolicy {}
impl Cached for Role {}
impl Cached for RoleBinding {}
impl Cached for ClusterRole {}
impl Cached for ClusterRoleBinding {}
impl Cached for ConfigMap {}
impl Cached for Service {}
/// Claims are made once and never re-applied (`apply::ensure`): of them the controllers read the
/// metadata (retention's labels and annotations) and the bound volume's name (an erasure
/// receipt names it), so the rest of the spec and the status are not kept.
impl Cached for PersistentVolumeClaim {
    fn trim(&mut self) {
        use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
        trim(self);
        self.spec = self.spec.take().map(|s| PersistentVolumeClaimSpec {
            volume_name: s.volume_name,
            ..Default::default()
        });
        self.status = None;
    }
}
impl Cached for Job {}

impl Cached for Pod {
    fn trim(&mut self) {
        trim_pod(self)
    }
}

/// Secrets are cached as metadata only (kube asks for `PartialObjectMetadata`): the operator
/// reads whether a key exists and its annotations (rotation, the key's hash), never the key
/// itself, so its memory does not hold every tenant's and instance's key (nor their bytes).
pub type SecretMeta = PartialObjectMeta<Secret>;

impl Cached for SecretMeta {}

/// What a cache keeps of an object. managedFields are often larger than the object itself and no
/// controller reads them; kubectl's last-applied copy is the object once more.
pub fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The annotation under which a cached pod keeps the names of the claims it mounts
/// (`trim_pod`): k8s-openapi's `Volume` is over 3 KiB inline, and `Container` 2 KiB, whatever
/// they hold, so keeping them for a name each made pods half of the operator's memory.
const CACHED_CLAIMS: &str = "alcove.dev/cached-claims";

/// What the pods cache keeps of a pod: its metadata and status, and of its spec the node and
/// the init containers' names (whether the fetch step runs); the claims it mounts become
/// `CACHED_CLAIMS`. The rest (containers, env, probes, resources, mounts) is most of a pod and
/// never read: pods are created, never patched, so the trimmed copy is never written back.
pub fn trim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    trim(pod);
    if let Some(spec) = pod.spec.take() {
        let claims: Vec<String> = spec
            .volumes
            .into_iter()
            .flatten()
            .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
            .collect();
        if !claims.is_empty() {
            pod.metadata
                .annotations
                .get_or_insert_default()
                .insert(CACHED_CLAIMS.to_string(), claims.join(","));
        }
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            init_containers: spec.init_containers.map(|cs| {
                cs.into_iter().map(|c| Container { name: c.name, ..Default::default() }).collect()
            }),
            ..Default::default()
        });
    }
}

/// The persistent volume claims a pod mounts, from a cached pod's `CACHED_CLAIMS` or, for one
/// read from the API server, its volumes.
pub fn mounted_claims(pod: &Pod) -> Vec<&str> {
    match pod.annotations().get(CACHED_CLAIMS) {
        Some(claims) => claims.split(',').collect(),
        None => pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()))
            .collect(),
    }
}

fn cache<K: Cached>(
    api: Api<K>,
    config: watcher::Config,
    name: &'static str,
    shared: (&Arc<Readiness>, &Arc<crate::apply::WriteLog>),
    feeders: &mut Vec<Feeder>,
) -> (Store<K>, Feed<K>, ByNamespace) {
    let (store, writer) = reflector::store();
    let feed = Feed::default();
    let publisher = feed.clone();
    let (readiness, writes) = (shared.0.clone(), shared.1.clone());
    let list_store = store.clone();
    let index = ByNamespace::default();
    let indexer = index.clone();
    // A relist's names, which replace the index once it is complete (as the store does).
    let mut relist: Option<HashMap<String, BTreeSet<String>>> = None;
    // What the cache held when a relist began.
    let mut before: HashMap<String, Arc<K>> = HashMap::new();
    let stream = reflector(writer, watcher(api, config).default_backoff().modify(K::trim));
    let task = stream.for_each(move |r| {
        match r {
            Ok(watcher::Event::Apply(obj)) => {
                indexer.change(&obj, true);
                landed(&writes, &publisher, obj);
            }
            Ok(watcher::Event::Delete(obj)) => {
                indexer.change(&obj, false);
                landed(&writes, &publisher, obj);
            }
            // Not yet "landed": until `InitDone` the cache is the one from before the list, and a
            // creation forgotten now would be made again by a reconcile reading that cache.
            Ok(watcher::Event::InitApply(obj)) => note(relist.get_or_insert_default(), &obj, true),
            Ok(watcher::Event::InitDone) => {
                indexer.set(relist.take().unwrap_or_default());
                // Subscribers hear of a (re)list's objects only now that the cache holds it: a
                // reconcile triggered earlier would read the cache from before the list, miss
                // an object created meanwhile, or act on a stale copy whose no-op write brings
                // no further event (at 10,000 instances, 855 stayed unreconciled that way).
                // Only what the list brought anew: an object it shows unchanged was seen by every
                // reconcile since, and re-triggering them all on each cut watch made a refused
                // instance retry its pod several times a second (the API-fault runs).
                let mut listed = std::collections::HashSet::new();
                for obj in list_store.state() {
                    let key = crate::apply::log_key(&*obj, "");
                    writes.observed(&key);
                    let unchanged = before.remove(&key).is_some_and(|old| {
                        old.resource_version().is_some()
                            && old.resource_version() == obj.resource_version()
                    });
                    listed.insert(key);
                    if !unchanged {
                        publisher.publish(obj);
                    }
                }
                // Gone while the watch was down: their owners hear of it as of a deletion.
                for (_, gone) in before.drain() {
                    publisher.publish(gone);
                }
                writes.relisted(&K::kind(&()), &listed);
                readiness.listed(name)
            }
            Ok(watcher::Event::Init) => {
                relist = Some(HashMap::new());
                before = list_store
                    .state()
                    .into_iter()
                    .map(|o| (crate::apply::log_key(&*o, ""), o))
                    .collect();
            }
            Err(e) => tracing::warn!(error = %e, kind = %K::kind(&()), "watch error (retrying)"),
        }
        futures::future::ready(())
    });
    feeders.push(Box::pin(task));
    (store, feed, index)
}

/// Whatever the watch says of an object we created, our creation has landed; and subscribers
/// hear of it.
fn landed<K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static>(
    writes: &crate::apply::WriteLog,
    feed: &Feed<K>,
    obj: K,
) {
    writes.observed(&crate::apply::log_key(&obj, ""));
    feed.publish(Arc::new(obj))
}

macro_rules! caches {
    ($( $field:ident: $ty:ty = $cfg:expr; )*) => {
        /// Everything the controllers read: one watch cache per kind.
        #[derive(Clone)]
        pub struct Caches {
            $( pub $field: Store<$ty>, )*
            /// Each cache's names by namespace.
            pub by_namespace: Indexes,
            /// What the operator wrote and the caches have not shown yet.
            pub writes: Arc<crate::apply::WriteLog>,
            synced: tokio::sync::watch::Receiver<bool>,
            readiness: Arc<Readiness>,
        }

        /// Each cache's names by namespace (`ByNamespace`).
        #[derive(Clone)]
        pub struct Indexes {
            $( pub $field: ByNamespace, )*
        }

        /// The change feed of each cache, for controllers to subscribe to while they are built.
        pub struct Handles {
            $( pub $field: Feed<$ty>, )*
        }

        impl Caches {
            pub fn new(client: &Client) -> (Caches, Handles, Vec<Feeder>) {
                let mut feeders = Vec::new();
                let (tx, synced) = tokio::sync::watch::channel(false);
                let readiness = Arc::new(Readiness { pending: std::sync::Mutex::new(vec![$( stringify!($field), )*]), synced: tx });
                let writes = Arc::new(crate::apply::WriteLog::default());
                $( let $field = cache::<$ty>(Api::all(client.clone()), $cfg, stringify!($field), (&readiness, &writes), &mut feeders); )*
                (Caches { $( $field: $field.0.clone(), )* by_namespace: Indexes { $( $field: $field.2.clone(), )* }, writes, synced, readiness }, Handles { $( $field: $field.1, )* }, feeders)
            }

            /// Waits until every cache has its first complete list.
            pub async fn ready(&self) {
                let mut rx = self.synced.clone();
                let _ = rx.wait_for(|synced| *synced).await;
            }

            /// The caches still waiting for their first list (for logs when a start is slow).
            pub fn not_ready(&self) -> Vec<&'static str> {
                self.readiness.pending.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        }
    };
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
}

fn all() -> watcher::Config {
    watcher::Config::default()
}

caches! {
    tenants: Tenant = all();
    instances: InferenceInstance = all();
    knowledge_bases: KnowledgeBase = all();
    namespaces: Namespace = watcher::Config::default().labels(alcove_crds::LABEL_TENANT);
    nodes: Node = all();
    quotas: ResourceQuota = managed();
    limit_ranges: LimitRange = managed();
    network_policies: NetworkPolicy = managed();
    roles: Role = managed();
    role_bindings: RoleBinding = managed();
    cluster_roles: ClusterRole = managed();
    cluster_role_bindings: ClusterRoleBinding = managed();
    secrets: SecretMeta = managed();
    // Erasure receipts grow with every erasure and are read only on demand: kept out of memory.
    config_maps: ConfigMap = watcher::Config::default().labels(&format!("{}!={}", alcove_crds::LABEL_DATA_CLASS, crate::retention::policy::RECEIPTS_CLASS));
    services: Service = managed();
    pods: Pod = managed();
    pvcs: PersistentVolumeClaim = managed();
    jobs: Job = managed();
}

/// Finds a namespaced object in a store.
pub fn find<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    namespace: &str,
    name: &str,
) -> Option<Arc<K>> {
    store.get(&reflector::ObjectRef::new(name).within(namespace))
}

/// Finds a cluster-scoped object in a store.
pub fn find_cluster<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    name: &str,
) -> Option<Arc<K>> {
    store.get(&reflector::ObjectRef::new(name))
}

/// The operator's Event recorder.
pub fn recorder(client: &Client, identity: &str) -> Recorder {
    Recorder::new(client.clone(), "alcove-operator", identity)
}

/// Publishes an Event about `obj` with `recorder` (`Context::event` where there is no Context).
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    if let Err(e) = recorder.publish(&obj.object_ref(&()), warning, reason, action, note).await {
        tracing::warn!(error = %e, reason, "could not record event");
    }
}

pub struct Context {
    /// The caches' write log (see `apply::WriteLog`).
    pub writes: Arc<crate::apply::WriteLog>,
    /// Retry delays of objects whose reconcile failed.
    pub backoff: crate::backoff::Backoff,
    pub client: Client,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub caches: Caches,
    /// Tenants whose status should be refreshed from outside the caches (a new erasure receipt).
    pub tenant_nudges: tokio::sync::broadcast::Sender<String>,
    pub billing: Arc<crate::billing::runtime::Billing>,
    /// The tenants this replica reconciles (all of them unless sharded).
    pub shards: Arc<crate::shard::Shards>,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        caches: Caches,
        identity: &str,
        billing: Arc<crate::billing::runtime::Billing>,
    ) -> Context {
        let recorder = recorder(&client, identity);
        Context {
            writes: caches.writes.clone(),
            backoff: Default::default(),
            client,
            config,
            clock,
            metrics,
            recorder,
            caches,
            tenant_nudges: tokio::sync::broadcast::channel(1024).0,
            billing,
            shards: Arc::new(crate::shard::Shards::unsharded()),
        }
    }

    /// This replica reconciles only the tenants of `shards` (see `shard`).
    pub fn with_shards(self, shards: Arc<crate::shard::Shards>) -> Context {
        Context { shards, ..self }
    }

    /// Publishes an Event about `obj`. Failing to record an Event never fails a reconcile.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        publish(&self.recorder, obj, warning, reason, action, note).await
    }

    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }

    /// Server-side applies `desired` unless `live` already matches (see `apply`).
    pub async fn apply<K>(
        &self,
        api: &Api<K>,
        desired: &K,
        live: Option<&K>,
    ) -> crate::error::Result<bool>
    where
        K: Resource<DynamicType = ()>
            + serde::Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        crate::apply::apply(&self.writes, api, desired, live).await
    }

    /// Creates an object that is made once and never changed (see `apply::create`).
    pub async fn create<K>(
        &self,
        api: &Api<K>,
        obj: &K,
        live: Option<&K>,
    ) -> crate::error::Result<bool>
    where
        K: Resource<DynamicType = ()>
            + serde::Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        crate::apply::create(&self.writes, api, obj, live).await
    }

    /// Applies an object only when it does not exist (see `apply::ensure`).
    pub async fn ensure<K>(
        &self,
        api: &Api<K>,
        desired: &K,
        live: Option<&K>,
    ) -> crate::error::Result<bool>
    where
        K: Resource<DynamicType = ()>
            + serde::Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        crate::apply::ensure(&self.writes, api, desired, live).await
    }

    /// Writes a status when it changed (see `status`).
    pub async fn write_status<K, S>(
        &self,
        api: &Api<K>,
        obj: &K,
        current: Option<&S>,
        desired: &S,
    ) -> crate::error::Result<bool>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
        S: serde::Serialize + PartialEq + Clone + crate::conditions::Conditioned,
    {
        crate::status::write(&self.writes, api, obj, current, desired).await
    }
}

/// `namespace/name` for logs.
pub fn key<K: Resource>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_pod_keeps_what_the_controllers_read() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "i1", "namespace": "tenant-a",
                "labels": {"alcove.dev/instance": "i1"},
                "annotations": {"alcove.dev/pod-hash": "h1", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "alcove-operator", "operation": "Apply"}]
            },
            "spec": {
                "nodeName": "gpu-1",
                "initContainers": [{"name": "fetch", "image": "alcove-inference", "args": ["fetch"]}],
                "containers": [{"name": "server", "image": "alcove-inference", "env": [{"name": "A", "value": "b"}]}],
                "volumes": [
                    {"name": "history", "persistentVolumeClaim": {"claimName": "i1-history"}},
                    {"name": "prompt", "configMap": {"name": "i1-prompt"}},
                    {"name": "model", "persistentVolumeClaim": {"claimName": "model-cache-1"}}
                ]
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let claims = ["i1-history", "model-cache-1"];
        assert_eq!(mounted_claims(&pod), claims, "a pod from the API server");
        trim_pod(&mut pod);
        assert!(pod.metadata.managed_fields.is_none());
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get("alcove.dev/pod-hash").map(String::as_str), Some("h1"));
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        let spec = pod.spec.clone().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("gpu-1"));
        let init = spec.init_containers.as_deref().unwrap_or_default();
        assert_eq!((init[0].name.as_str(), init[0].args.as_ref()), ("fetch", None), "names only");
        assert!(spec.containers.is_empty() && spec.volumes.is_none(), "containers and volumes go");
        assert_eq!(mounted_claims(&pod), claims, "the claims are kept by name");
        assert!(pod.status.is_some(), "status is kept whole");
    }

    #[test]
    fn a_cached_claim_keeps_its_metadata_and_volume_name() {
        let mut pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "history", "namespace": "tenant-a",
                "labels": {"alcove.dev/released": "true"},
                "annotations": {"alcove.dev/retain-until": "2027-01-01T00:00:00Z"},
                "managedFields": [{"manager": "alcove-operator"}]},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "standard", "volumeName": "pv-1"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}},
        }))
        .unwrap();
        Cached::trim(&mut pvc);
        assert_eq!(pvc.labels()["alcove.dev/released"], "true");
        assert_eq!(pvc.annotations()["alcove.dev/retain-until"], "2027-01-01T00:00:00Z");
        assert!(pvc.metadata.managed_fields.is_none());
        let spec = pvc.spec.unwrap();
        assert_eq!(spec.volume_name.as_deref(), Some("pv-1"));
        assert_eq!((spec.resources, spec.access_modes, pvc.status), (None, None, None));
    }
}
