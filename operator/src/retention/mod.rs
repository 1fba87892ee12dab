//! Retention: volumes whose owner went away are released (`policy::release_patch`) rather than
//! deleted, and this controller erases each at its deadline — requeued for the deadline, woken
//! early only when the injected clock jumps or the tenant's legal hold changes — then verifies
//! that the volume behind it is gone and writes a receipt.

pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use alcove_crds::{DataClass, ErasureRecord, LABEL_DATA_CLASS, LABEL_TENANT, Tenant};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, predicates};

use crate::context::{Context, Handles, find_cluster, key};
use crate::controller;
use crate::error::{Error, Result};
use policy::Verdict;

const CONTROLLER: &str = "retention";

/// `patch`, applied only over the version of `pvc` it was decided from (409 otherwise, and the
/// pass is retried from a fresher cache). A stale cache under API faults released a volume a
/// second time, after the injected clock had jumped, and so moved its deadline 14 days on.
fn over(pvc: &PersistentVolumeClaim, mut patch: serde_json::Value) -> serde_json::Value {
    if let Some(rv) = pvc.resource_version() {
        patch["metadata"]["resourceVersion"] = rv.into();
    }
    patch
}

/// Releases `pvc` to retention as `class`: the window is the tenant's.
pub async fn release(ctx: &Context, pvc: &PersistentVolumeClaim, class: DataClass) -> Result<()> {
    if policy::is_released(pvc) {
        return Ok(());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let tenant_name = crate::names::tenant_of_namespace(&ns).unwrap_or_default().to_string();
    let tenant = find_cluster(&ctx.caches.tenants, &tenant_name);
    let w = policy::window(tenant.as_deref(), class, ctx.config.default_window(class));
    let patch = over(pvc, policy::release_patch(&tenant_name, class, w, ctx.now()));
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(&pvc.name_any(), &crate::apply::merge_params(), &Patch::Merge(&patch)).await?;
    tracing::info!(volume = %key(pvc), class = class.as_str(), window = %w, "volume released to retention");
    Ok(())
}

/// Takes a released volume back for `owner` (re-created within the window).
pub async fn reclaim<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    owner: &K,
) -> Result<()> {
    let Some(owner_ref) = owner.controller_owner_ref(&()) else { return Ok(()) };
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    api.patch(
        &pvc.name_any(),
        &crate::apply::merge_params(),
        &Patch::Merge(&over(pvc, policy::reclaim_patch(&owner_ref))),
    )
    .await?;
    tracing::info!(volume = %key(pvc), "released volume re-attached to its re-created owner");
    Ok(())
}

/// Takes back a released volume that no single object owns (a model cache used again within its
/// window): it stays ownerless, no longer released.
pub async fn keep(ctx: &Context, pvc: &PersistentVolumeClaim) -> Result<()> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    let patch = over(pvc, policy::keep_patch());
    api.patch(&pvc.name_any(), &crate::apply::merge_params(), &Patch::Merge(&patch)).await?;
    tracing::info!(volume = %key(pvc), "released volume used again; kept");
    Ok(())
}

/// Writes entries into the tenant's receipts ConfigMap in the operator namespace (made when
/// missing): `Some(json)` adds a key, `None` removes one. With `resource_version`, the write
/// happens only over that version (409 otherwise).
async fn write_receipts(
    ctx: &Context,
    tenant: &str,
    entries: &[(String, Option<String>)],
    resource_version: Option<&str>,
) -> Result<()> {
    let ns = &ctx.config.namespace;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    // A receipt is written once, after the erasure: passing errors are tried again rather than
    // left to a later pass.
    use crate::error::retry_passing;
    if retry_passing(|| namespaces.get_opt(ns)).await?.is_none() {
        let n = Namespace {
            metadata: ObjectMeta { name: Some(ns.clone()), ..Default::default() },
            ..Default::default()
        };
        let post = kube::api::PostParams::default();
        match retry_passing(|| namespaces.create(&post, &n)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let name = policy::receipts_name(tenant);
    let labels = crate::objects::string_map([
        (LABEL_TENANT, tenant),
        crate::names::MANAGED_BY,
        (LABEL_DATA_CLASS, policy::RECEIPTS_CLASS),
    ]);
    let data: serde_json::Map<String, serde_json::Value> =
        entries.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    let mut metadata = serde_json::json!({ "labels": labels });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = rv.into();
    }
    let patch = serde_json::json!({ "metadata": metadata, "data": data });
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        data: Some(entries.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect()),
        ..Default::default()
    };
    // Each entry is its own key; a merge patch adds (or removes) it and leaves the others alone.
    // Erasures run concurrently: when two make the ConfigMap at once, the loser patches.
    let (params, patch, post) =
        (crate::apply::merge_params(), Patch::Merge(&patch), kube::api::PostParams::default());
    for _ in 0..3 {
        match retry_passing(|| cms.patch(&name, &params, &patch)).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 && resource_version.is_none() => {
                match retry_passing(|| cms.create(&post, &cm)).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A receipt's key and value: the time, then `id`, which names the erasure.
fn receipt_entry(r: &ErasureRecord, id: &str) -> Result<(String, Option<String>)> {
    let entry = format!("{}-{id}", r.erased_at.replace(':', ""));
    let body = serde_json::to_string(r).map_err(|e| Error::Other(e.to_string()))?;
    Ok((entry, Some(body)))
}

/// After a receipt: the tenant's status mirrors it, and an Event says it.
async fn announce(ctx: &Context, tenant: &str, r: &ErasureRecord) {
    let _ = ctx.tenant_nudges.send(tenant.to_string());
    if let Some(t) = find_cluster(&ctx.caches.tenants, tenant) {
        ctx.event(
            &*t,
            false,
            "Erased",
            "Erase",
            format!(
                "{} ({}) erased; deadline {}, rule {}",
                r.what, r.data_class, r.deadline, r.rule
            ),
        )
        .await;
    }
}

/// Appends a receipt to the tenant's receipts ConfigMap and publishes an Event about the tenant.
/// For what has no intent written before it went (the namespace, whose receipt the tenant's
/// status guards); everything else goes through [`erase`].
pub async fn record(ctx: &Context, tenant: &str, r: &ErasureRecord) -> Result<()> {
    let id = crate::hash::config_hash(&serde_json::json!(r.what));
    write_receipts(ctx, tenant, &[receipt_entry(r, &id)?], None).await?;
    announce(ctx, tenant, r).await;
    Ok(())
}

/// An object whose absence an erasure's receipt attests.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Gone {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
    /// Only this object: another of the same name made since is not it.
    #[serde(default)]
    pub uid: Option<String>,
}

/// The receipt an erasure will get, written before anything is deleted. An operator killed
/// between the deletion and the receipt leaves it behind, and [`finish_pending`] writes the
/// receipt once everything in `gone` is gone: no erasure goes without its receipt. (It has no
/// `erasedAt`, so it is never read as a receipt.)
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub what: String,
    pub data_class: String,
    pub deadline: String,
    pub rule: String,
    pub gone: Vec<Gone>,
}

const PENDING_PREFIX: &str = "pending-";

impl Pending {
    /// This erasure: what it says and the objects (by UID) it removes, so that a tenant of the
    /// same name made again later is another erasure.
    fn id(&self) -> String {
        crate::hash::config_hash(&serde_json::json!({ "what": self.what, "gone": self.gone }))
    }

    fn key(&self) -> String {
        format!("{PENDING_PREFIX}{}", self.id())
    }
}

/// Erases: the intent first, then `delete`, then the receipt once every object in
/// `pending.gone` is gone (else [`finish_pending`] writes it later). Returns whether this call
/// wrote the receipt.
pub async fn erase<F, Fut>(
    ctx: &Context,
    tenant: &str,
    pending: &Pending,
    delete: F,
) -> Result<bool>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let body = serde_json::to_string(pending).map_err(|e| Error::Other(e.to_string()))?;
    // Two passes may erase the same thing (a volume's own deadline and its tenant's, at once):
    // an intent is written only over a version without its receipt, so the second finds the
    // first's receipt and writes no second one.
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let name = policy::receipts_name(tenant);
    let id = pending.id();
    let mut written = false;
    for _ in 0..5 {
        let cm = crate::error::retry_passing(|| cms.get_opt(&name)).await?;
        let data = cm.as_ref().and_then(|c| c.data.as_ref());
        if data.is_some_and(|d| {
            d.keys().any(|k| !k.starts_with(PENDING_PREFIX) && k.ends_with(&format!("-{id}")))
        }) {
            return Ok(false);
        }
        let rv = cm.as_ref().and_then(|c| c.metadata.resource_version.as_deref());
        match write_receipts(ctx, tenant, &[(pending.key(), Some(body.clone()))], rv).await {
            Ok(()) => {
                written = true;
                break;
            }
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    if !written {
        return Err(Error::Other(format!("could not note the erasure of {}", pending.what)));
    }
    tracing::debug!(tenant, what = %pending.what, "erasure intent written; deleting");
    delete().await?;
    finish(ctx, tenant, pending).await
}

/// Whether `g` still exists (asked of the API server: a cache may lag).
async fn exists(ctx: &Context, g: &Gone) -> Result<bool> {
    use crate::error::retry_passing;
    let c = ctx.client.clone();
    let found: Option<Option<String>> = match g.kind.as_str() {
        "PersistentVolumeClaim" => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(c, &g.namespace);
            retry_passing(|| controller::live(&api, &g.name))
                .await?
                .into_iter()
                .next()
                .map(|o| o.uid())
        }
        "PersistentVolume" => {
            let api: Api<PersistentVolume> = Api::all(c);
            retry_passing(|| api.get_opt(&g.name)).await?.map(|o| o.uid())
        }
        "Secret" => {
            let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c, &g.namespace);
            retry_passing(|| api.get_opt(&g.name)).await?.map(|o| o.uid())
        }
        other => return Err(Error::Other(format!("an erasure of an unknown kind {other}"))),
    };
    Ok(found.is_some_and(|uid| g.uid.is_none() || uid == g.uid))
}

/// Writes `pending`'s receipt, and removes the intent in the same write, when everything it
/// names is gone and the intent is still there (one writer wins: the write is conditional on the
/// version read). Returns whether this call wrote it.
async fn finish(ctx: &Context, tenant: &str, pending: &Pending) -> Result<bool> {
    for g in &pending.gone {
        if exists(ctx, g).await? {
            tracing::debug!(tenant, what = %pending.what, still = %g.name, "receipt waits");
            return Ok(false);
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let name = policy::receipts_name(tenant);
    for _ in 0..5 {
        let cm = crate::error::retry_passing(|| cms.get_opt(&name)).await?;
        let Some(cm) = cm else { return Ok(false) };
        if !cm.data.as_ref().is_some_and(|d| d.contains_key(&pending.key())) {
            return Ok(false);
        }
        let r = ErasureRecord {
            what: pending.what.clone(),
            data_class: pending.data_class.clone(),
            deadline: pending.deadline.clone(),
            erased_at: alcove_clock::format(ctx.now()),
            rule: pending.rule.clone(),
        };
        let entries = [receipt_entry(&r, &pending.id())?, (pending.key(), None)];
        match write_receipts(ctx, tenant, &entries, cm.metadata.resource_version.as_deref()).await {
            Ok(()) => {
                announce(ctx, tenant, &r).await;
                return Ok(true);
            }
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Writes the receipts of erasures whose operator was killed between deleting and writing
/// (their intents, left in the receipts ConfigMaps). Runs at start and every minute.
pub async fn finish_pending(ctx: &Context) -> Result<usize> {
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let lp = kube::api::ListParams::default()
        .labels(&format!("{LABEL_DATA_CLASS}={}", policy::RECEIPTS_CLASS));
    let mut written = 0;
    for cm in cms.list(&lp).await?.items {
        let tenant = cm.labels().get(LABEL_TENANT).cloned().unwrap_or_default();
        for (k, v) in cm.data.clone().unwrap_or_default() {
            let Some(pending) = k
                .starts_with(PENDING_PREFIX)
                .then(|| serde_json::from_str::<Pending>(&v).ok())
                .flatten()
            else {
                continue;
            };
            if finish(ctx, &tenant, &pending).await? {
                tracing::info!(tenant, what = %pending.what, "an interrupted erasure's receipt written");
                written += 1;
            }
        }
    }
    Ok(written)
}

/// The intent of erasing volume claim `pvc`: the claim (this one) and its volume must go.
pub fn volume_erasure(
    pvc: &PersistentVolumeClaim,
    class: &str,
    deadline: jiff::Timestamp,
    rule: String,
) -> Pending {
    let ns = pvc.namespace().unwrap_or_default();
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    let mut gone = vec![Gone {
        kind: "PersistentVolumeClaim".into(),
        namespace: ns,
        name: pvc.name_any(),
        uid: pvc.uid(),
    }];
    if let Some(pv) = &volume {
        gone.push(Gone {
            kind: "PersistentVolume".into(),
            namespace: String::new(),
            name: pv.clone(),
            uid: None,
        });
    }
    Pending {
        what: format!(
            "PersistentVolumeClaim {}{}",
            key(pvc),
            volume.map(|v| format!(" (volume {v})")).unwrap_or_default()
        ),
        data_class: class.into(),
        deadline: alcove_clock::format(deadline),
        rule,
        gone,
    }
}

/// Every receipt of a tenant, oldest first (read from the API: receipts are not cached).
pub async fn receipts(
    client: &kube::Client,
    operator_namespace: &str,
    tenant: &str,
) -> Result<Vec<ErasureRecord>> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), operator_namespace);
    let cm = cms.get_opt(&policy::receipts_name(tenant)).await?;
    let mut out: Vec<(String, ErasureRecord)> = cm
        .and_then(|c| c.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, serde_json::from_str(&v).ok()?)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// Deletes a volume claim and waits (bounded) until its PersistentVolume — the data — is gone.
/// (A claim already gone is not an error: an earlier pass deleted it.)
async fn erase_volume(ctx: &Context, pvc: &PersistentVolumeClaim) -> Result<()> {
    let ns = pvc.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    // A cache still showing a claim this operator deleted moments ago costs no second delete.
    let mark = format!("Delete/{}", pvc.uid().unwrap_or_default());
    if ctx.writes.already_written(&mark, Some("deleted")) {
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: pvc.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&pvc.name_any(), &dp).await {
        Ok(_) => ctx.writes.record(mark, Some("deleted".into()), String::new()),
        // Gone, or (409) a different claim of that name now: not this volume any more.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    if let Some(pv) = &volume {
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let mut waited = Duration::ZERO;
        // A passing error here would end the pass after the claim's deletion, and with it the
        // receipt (the next pass finds the claim gone).
        while crate::error::retry_passing(|| pvs.get_opt(pv)).await?.is_some() {
            if waited > Duration::from_secs(60) {
                return Err(Error::Other(format!(
                    "volume {pv} of {} still exists 60 s after its claim was deleted",
                    key(pvc)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            waited += Duration::from_millis(200);
        }
    }
    Ok(())
}

/// Erases volume claim `pvc` with the receipt of `pending` (see [`erase`]).
pub async fn erase_volume_with_receipt(
    ctx: &Context,
    tenant: &str,
    pvc: &PersistentVolumeClaim,
    pending: &Pending,
) -> Result<bool> {
    erase(ctx, tenant, pending, || erase_volume(ctx, pvc)).await
}

async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action> {
    controller::on_workers(async move {
        controller::reconcile(&ctx, CONTROLLER, &*pvc, reconcile_inner(&pvc, &ctx)).await
    })
    .await
}

async fn reconcile_inner(pvc: &PersistentVolumeClaim, ctx: &Context) -> Result<Action> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tenant_name = pvc.labels().get(LABEL_TENANT).cloned().unwrap_or_default();
    let tenant = find_cluster(&ctx.caches.tenants, &tenant_name);
    let hold = tenant.as_ref().is_some_and(|t| t.spec.legal_hold);
    let now = ctx.now();
    let verdict = policy::verdict(pvc, now, hold);
    tracing::debug!(volume = %key(pvc), ?verdict, "retention verdict");
    match verdict {
        Verdict::NotReleased | Verdict::Held => Ok(Action::await_change()),
        Verdict::KeepUntil(deadline) => {
            let wait = deadline.duration_since(now).unsigned_abs();
            Ok(Action::requeue(wait.max(Duration::from_millis(100))))
        }
        Verdict::Erase { .. } => {
            // Erasure cannot be undone: the verdict is made again from the API server. A cache
            // catching up after a cut watch may not show a legal hold set moments ago, or a
            // claim its owner took back (an API-fault run erased under a legal hold that way).
            let Some((pvc, deadline)) = confirmed(ctx, pvc, &tenant_name).await? else {
                tracing::debug!(volume = %key(pvc), "erasure not confirmed by the API server");
                return Ok(Action::requeue(Duration::from_secs(1)));
            };
            let pvc = &pvc;
            // A volume a pod mounts was taken back by its owner; never erase from under it.
            let (ns, name) = (pvc.namespace().unwrap_or_default(), pvc.name_any());
            let mounted = ctx
                .caches
                .by_namespace
                .pods
                .objects(&ctx.caches.pods, &ns)
                .iter()
                .any(|p| crate::context::mounted_claims(p).contains(&name.as_str()));
            if mounted {
                tracing::debug!(volume = %key(pvc), "erasure waits: a pod mounts the volume");
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            let class = pvc.labels().get(LABEL_DATA_CLASS).cloned().unwrap_or_default();
            let rule = pvc.annotations().get(policy::ANNOTATION_RULE).cloned().unwrap_or_default();
            let pending = volume_erasure(pvc, &class, deadline, rule);
            if erase_volume_with_receipt(ctx, &tenant_name, pvc, &pending).await? {
                ctx.metrics.erasures.with_label_values(&[&class]).inc();
            }
            Ok(Action::await_change())
        }
    }
}

/// The claim and its deadline when the live claim and tenant still say "erase" (`None`: they do
/// not, or the claim is another one now). Lists by name: the operator may list and watch claims
/// and tenants, and needs no get.
async fn confirmed(
    ctx: &Context,
    cached: &PersistentVolumeClaim,
    tenant_name: &str,
) -> Result<Option<(PersistentVolumeClaim, jiff::Timestamp)>> {
    use crate::error::retry_passing;
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let name = cached.name_any();
    let live = retry_passing(|| controller::live(&claims, &name)).await?;
    let Some(live) = live.into_iter().find(|c| c.uid() == cached.uid()) else {
        return Ok(None);
    };
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let hold = retry_passing(|| controller::live(&tenants, tenant_name))
        .await?
        .iter()
        .any(|t| t.spec.legal_hold);
    Ok(match policy::verdict(&live, ctx.now(), hold) {
        Verdict::Erase { deadline } => Some((live, deadline)),
        _ => None,
    })
}

fn error_policy(pvc: Arc<PersistentVolumeClaim>, error: &Error, ctx: Arc<Context>) -> Action {
    controller::error_policy(&ctx, CONTROLLER, &*pvc, error)
}

/// The retention controller over released volumes, ready to run.
pub fn controller<S>(
    ctx: Arc<Context>,
    h: &Handles,
    shutdown: S,
) -> impl std::future::Future<Output = ()> + Send + use<S>
where
    S: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    // A legal hold set or lifted (or a changed window) re-decides the tenant's released volumes.
    let store = ctx.caches.pvcs.clone();
    let of_tenant = move |t: Tenant| {
        let name = t.name_any();
        store
            .state()
            .into_iter()
            .filter(|p| policy::is_released(p) && p.labels().get(LABEL_TENANT) == Some(&name))
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    };
    // When an injected clock jumps, the released volumes it made due are re-decided now rather
    // than at their real-time timers (only those: a jump must not re-run every volume).
    let (store, clock) = (ctx.caches.pvcs.clone(), ctx.clock.clone());
    let due = ctx.clock.jumps().unwrap_or_else(|| futures::stream::pending().boxed()).flat_map(
        move |_| {
            let now = clock.now();
            let refs: Vec<ObjectRef<PersistentVolumeClaim>> = store
                .state()
                .into_iter()
                .filter(|p| matches!(policy::verdict(p, now, false), Verdict::Erase { .. }))
                .map(|p| ObjectRef::from_obj(&*p))
                .collect();
            futures::stream::iter(refs)
        },
    );
    Controller::for_stream(h.pvcs.subscribe(), ctx.caches.pvcs.clone())
        .with_config(crate::controller::bounded())
        .watches_stream(
            h.tenants.subscribe().predicate_filter(predicates::generation, Default::default()),
            of_tenant,
        )
        .reconcile_on(due)
        .reconcile_on(ctx.shards.taken(ctx.caches.pvcs.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
}

/// `alcove data-report TENANT`: where each of the tenant's volumes lives, the key that encrypts
/// them, each retention timer, and past erasures — read from the cluster, printed for people.
pub async fn data_report(
    client: kube::Client,
    operator_namespace: &str,
    tenant: &str,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let ns = crate::names::namespace_name(tenant);
    let tenants: Api<Tenant> = Api::all(client.clone());
    let t = tenants.get_opt(tenant).await?;
    let mut out = String::new();
    match &t {
        Some(t) => {
            let s = t.status.clone().unwrap_or_default();
            writeln!(
                out,
                "tenant {tenant}: tier {}, region {}, namespace {ns}{}",
                t.spec.tier.as_str(),
                t.spec.region,
                if t.spec.legal_hold { ", LEGAL HOLD (no erasure)" } else { "" }
            )?;
            if let Some(after) = s.erase_after {
                writeln!(out, "  deleted: everything left is erased at {after}")?;
            }
        }
        None => writeln!(out, "tenant {tenant}: deleted (erased); receipts below")?,
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    if secrets.get_metadata_opt(crate::names::KEY_SECRET).await?.is_some() {
        writeln!(
            out,
            "  encryption key: Secret {ns}/{} (conversation history is encrypted with it; deleted last at erasure)",
            crate::names::KEY_SECRET
        )?;
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let pod_list = pods.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
    let list = if t.is_some() {
        pvcs.list(&Default::default()).await.map(|l| l.items).unwrap_or_default()
    } else {
        Vec::new()
    };
    let volumes = alcove_crds::report::volumes(&list, &pod_list);
    writeln!(out, "  volumes: {}", volumes.len())?;
    for v in volumes {
        let where_ = if v.nodes.is_empty() {
            "not mounted".to_string()
        } else {
            format!("mounted on {}", v.nodes.join(", "))
        };
        writeln!(
            out,
            "  - {} [{}] {} on {}, {where_}; {}",
            v.name,
            v.data_class,
            v.size,
            v.bound_to,
            v.timer.words()
        )?;
    }
    let receipts = receipts(&client, operator_namespace, tenant).await?;
    writeln!(out, "  erasures: {}", receipts.len())?;
    for r in receipts {
        writeln!(
            out,
            "  - {} erased at {} [{}] (deadline {}, rule {})",
            r.what, r.erased_at, r.data_class, r.deadline, r.rule
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_is_never_read_as_a_receipt_and_is_keyed_by_what_it_erases() {
        let pending = Pending {
            what: "Secret tenant-a/alcove-tenant-key".into(),
            data_class: "accountData".into(),
            deadline: "2027-01-01T00:00:00Z".into(),
            rule: "accountData=30d".into(),
            gone: vec![Gone {
                kind: "Secret".into(),
                namespace: "tenant-a".into(),
                name: "alcove-tenant-key".into(),
                uid: None,
            }],
        };
        let json = serde_json::to_string(&pending).unwrap();
        assert!(
            serde_json::from_str::<ErasureRecord>(&json).is_err(),
            "no erasedAt: not a receipt"
        );
        assert_eq!(serde_json::from_str::<Pending>(&json).unwrap(), pending);
        assert!(pending.key().starts_with(PENDING_PREFIX));
        let other = Pending { what: "Namespace tenant-a".into(), ..pending.clone() };
        assert_ne!(pending.key(), other.key());
        assert_eq!(pending.key(), pending.clone().key(), "the same erasure, the same intent");
        let mut again = pending.clone();
        again.gone[0].uid = Some("another-uid".into());
        assert_ne!(pending.key(), again.key(), "a tenant of the same name made again");
    }

    #[test]
    fn a_release_is_written_only_over_the_version_it_was_decided_from() {
        let mut pvc = PersistentVolumeClaim::default();
        pvc.metadata.resource_version = Some("41".into());
        let w = alcove_crds::Window::parse("3d").unwrap();
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let patch =
            over(&pvc, policy::release_patch("acme", DataClass::ConversationHistory, w, now));
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        assert!(patch["metadata"]["ownerReferences"].is_null());
        assert!(patch["metadata"]["annotations"][alcove_crds::ANNOTATION_RETAIN_UNTIL].is_string());
        pvc.metadata.resource_version = None;
        assert!(over(&pvc, policy::keep_patch())["metadata"].get("resourceVersion").is_none());
    }
}
