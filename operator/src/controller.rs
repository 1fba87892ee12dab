//! What every controller shares: the instrumented reconcile wrapper, the error policy (capped
//! exponential backoff with jitter, per object), and the finalizer helpers.

use std::future::Future;
use std::time::Instant;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::context::{Context, key};
use crate::error::{Error, Result};

/// Runs one reconcile of `obj` by `controller` once the caches are synced: counted, timed, and a
/// success clears the object's backoff.
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
    tracing::warn!(%object, %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The field manager of finalizer entries, apart from the one that applies children and status.
fn finalizer_manager() -> String {
    format!("{}-finalizer", alcove_crds::FIELD_MANAGER)
}

/// The server-side apply body that sets `obj`'s finalizers owned by us to `finalizers`.
fn finalizer_body<K: Resource<DynamicType = ()>>(
    obj: &K,
    finalizers: &[&str],
) -> serde_json::Value {
    let mut meta = serde_json::json!({"name": obj.name_any(), "finalizers": finalizers});
    if let Some(ns) = obj.namespace() {
        meta["namespace"] = ns.into();
    }
    serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "metadata": meta})
}

/// Adds the cleanup finalizer (server-side apply of just that list entry, so GitOps managers'
/// fields are untouched). Returns whether it wrote.
pub async fn ensure_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(false);
    }
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(&finalizer_manager()).force(),
        &Patch::Apply(&finalizer_body(obj, &[finalizer])),
    )
    .await?;
    Ok(true)
}

/// Removes a finalizer (apply of an empty list by the same manager releases it).
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    ignore_missing(
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(&finalizer_manager()).force(),
            &Patch::Apply(&finalizer_body(obj, &[])),
        )
        .await,
    )
}

/// A delete or patch of something already gone is done.
pub fn ignore_missing<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
