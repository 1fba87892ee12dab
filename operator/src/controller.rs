//! What every controller shares: the instrumented reconcile wrapper, the error policy (capped
//! exponential backoff with jitter, per object), and the finalizer helpers.

use std::future::Future;
use std::time::Instant;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::apply::{WriteLog, log_key};
use crate::context::{Context, key};
use crate::error::{Error, Result};

/// How many reconciles one controller runs at once. Unbounded, a burst (10,000 instances created
/// together) started thousands at once, each holding its objects, its builders' output and a
/// connection: the operator's memory peaked at 800 MiB. A few dozen keep the API server busy;
/// a controller never reconciles one object twice at once either way.
pub const CONCURRENCY: u16 = 32;

/// The runtime configuration every controller runs with.
pub fn bounded() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(CONCURRENCY)
}

/// Runs a reconcile on the runtime's worker threads. kube-runtime polls a controller's reconciles
/// inside the controller's own future, which the operator drives from its main thread: every
/// reconcile of every controller shared that one thread, and under load the operator used a
/// fraction of one core while its queues grew.
pub async fn on_workers<F>(reconcile: F) -> Result<Action>
where
    F: Future<Output = Result<Action>> + Send + 'static,
{
    match tokio::spawn(reconcile).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Other(format!("reconcile cancelled: {e}"))),
    }
}

/// Runs one reconcile of `obj` by `controller` once the caches are synced, when its tenant is in
/// this replica's shards: counted, timed, and a success clears the object's backoff.
pub async fn reconcile<K, F>(
    ctx: &Context,
    controller: &'static str,
    obj: &K,
    run: F,
) -> Result<Action>
where
    K: Resource,
    F: Future<Output = Result<Action>>,
{
    ctx.caches.ready().await;
    // Another replica's shard: it reconciles this; `Shards::taken` brings it back if ours.
    if !ctx.shards.owns(&crate::shard::tenant_of(obj)) {
        return Ok(Action::await_change());
    }
    let object = format!("{controller}:{}", key(obj));
    tracing::debug!(%object, "reconcile");
    let started = Instant::now();
    ctx.metrics.reconciles.with_label_values(&[controller]).inc();
    let result = run.await;
    ctx.metrics.duration.with_label_values(&[controller]).observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoff.succeeded(&object);
    }
    result
}

/// After a failed reconcile: counted by reason, logged, retried after the object's backoff.
pub fn error_policy<K: Resource>(
    ctx: &Context,
    controller: &'static str,
    obj: &K,
    error: &Error,
) -> Action {
    ctx.metrics.errors.with_label_values(&[controller, error.reason()]).inc();
    let object = format!("{controller}:{}", key(obj));
    let delay = ctx.backoff.failed(&object);
    // A passing API error (a 500, a 429, no answer) is tried again sooner: a tenth of the
    // object's backoff (100 ms, 200 ms, … up to 30 s): under API faults, a few unlucky passes in
    // a row would otherwise hold a time-critical step (an erasure due at a clock jump) for 7 s.
    let delay = match error {
        Error::Kube(e) if crate::error::passing(e) => delay / 10,
        _ => delay,
    };
    tracing::warn!(%object, %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The field manager of finalizer entries, apart from the one that applies children and status.
fn finalizer_manager() -> String {
    format!("{}-finalizer", alcove_crds::FIELD_MANAGER)
}

/// A merge patch that sets `obj`'s finalizers to `finalizers`, conditional on the version we
/// read: a changed object answers 409 (the change comes back as an event), a gone one 404. Not
/// an apply: an apply to an object deleted meanwhile would create it again (for a Tenant the
/// operator may not, so the API server refused it as a create).
fn finalizer_patch<K: Resource>(obj: &K, finalizers: Vec<String>) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}
    })
}

fn finalizer_params() -> PatchParams {
    PatchParams { field_manager: Some(finalizer_manager()), ..Default::default() }
}

/// Adds the cleanup finalizer, keeping every other entry. Returns whether it wrote (or found
/// the object changed meanwhile, or our write of it still in flight to the cache: either way an
/// event follows).
pub async fn ensure_finalizer<K>(
    log: &WriteLog,
    api: &Api<K>,
    obj: &K,
    finalizer: &str,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(false);
    }
    // Other triggers (a tenant's status, a child) reconcile the version we added it to until the
    // cache shows our write; patching it again would only be refused. With 10,000 instances that
    // was half an extra write per instance.
    let key = log_key(obj, "#finalizer");
    let read = obj.resource_version();
    if log.already_written(&key, read.as_deref()) {
        return Ok(true);
    }
    let mut all = obj.finalizers().to_vec();
    all.push(finalizer.to_string());
    let patch = finalizer_patch(obj, all);
    match api.patch(&obj.name_any(), &finalizer_params(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            log.record(key, read, String::new());
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Removes a finalizer, keeping every other entry.
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let rest = obj.finalizers().iter().filter(|f| *f != finalizer).cloned().collect();
    let patch = finalizer_patch(obj, rest);
    match api.patch(&obj.name_any(), &finalizer_params(), &Patch::Merge(&patch)).await {
        // Gone is done; changed meanwhile, its event brings the next pass.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        r => ignore_missing(r),
    }
}

/// A delete or patch of something already gone is done.
pub fn ignore_missing<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The objects named `name` as the API server has them now, not as a cache does: a list by name,
/// because the operator may list and watch its kinds and needs no get. (At most one; a caller
/// that must not take a re-created object of the same name for it compares UIDs.)
pub async fn live<K>(api: &Api<K>, name: &str) -> std::result::Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
    Ok(api.list(&by_name).await?.items)
}
