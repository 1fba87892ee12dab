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

/// Releases `pvc` to retention as `class`: the window is the tenant's.
pub async fn release(ctx: &Context, pvc: &PersistentVolumeClaim, class: DataClass) -> Result<()> {
    if policy::is_released(pvc) {
        return Ok(());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let tenant_name = crate::names::tenant_of_namespace(&ns).unwrap_or_default().to_string();
    let tenant = find_cluster(&ctx.caches.tenants, &tenant_name);
    let w = policy::window(tenant.as_deref(), class, ctx.config.default_window(class));
    let patch = policy::release_patch(&tenant_name, class, w, ctx.now());
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
        &Patch::Merge(&policy::reclaim_patch(&owner_ref)),
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
    api.patch(&pvc.name_any(), &crate::apply::merge_params(), &Patch::Merge(&policy::keep_patch()))
        .await?;
    tracing::info!(volume = %key(pvc), "released volume used again; kept");
    Ok(())
}

/// Appends a receipt to the tenant's receipts ConfigMap in the operator namespace (made when
/// missing) and publishes an Event about the tenant.
pub async fn record(ctx: &Context, tenant: &str, r: &ErasureRecord) -> Result<()> {
    let ns = &ctx.config.namespace;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    // A receipt is written once, after the erasure: passing errors are tried again rather than
    // left to a later pass, which finds the claim gone and has nothing to write a receipt for.
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
    let entry = format!(
        "{}-{}",
        r.erased_at.replace(':', ""),
        crate::hash::config_hash(&serde_json::json!(r.what))
    );
    let body = serde_json::to_string(r).map_err(|e| Error::Other(e.to_string()))?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(crate::objects::string_map([
                (LABEL_TENANT, tenant),
                crate::names::MANAGED_BY,
                (LABEL_DATA_CLASS, policy::RECEIPTS_CLASS),
            ])),
            ..Default::default()
        },
        data: Some([(entry, body)].into()),
        ..Default::default()
    };
    // Each receipt is its own key; a merge patch adds it and leaves the others alone.
    // Erasures run concurrently: when two make the ConfigMap at once, the loser patches.
    let (params, patch, post) =
        (crate::apply::merge_params(), Patch::Merge(&cm), kube::api::PostParams::default());
    for _ in 0..3 {
        match retry_passing(|| cms.patch(&name, &params, &patch)).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                match retry_passing(|| cms.create(&post, &cm)).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
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
    Ok(())
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
/// Returns the description for the receipt, or `None` when the claim was already gone (an
/// earlier pass erased it and wrote the receipt; a cache that lags must not write a second).
pub async fn erase_volume(ctx: &Context, pvc: &PersistentVolumeClaim) -> Result<Option<String>> {
    let ns = pvc.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    // A cache still showing a claim this operator deleted moments ago costs no second delete.
    let mark = format!("Delete/{}", pvc.uid().unwrap_or_default());
    if ctx.writes.already_written(&mark, Some("deleted")) {
        return Ok(None);
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: pvc.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&pvc.name_any(), &dp).await {
        Ok(_) => ctx.writes.record(mark, Some("deleted".into()), String::new()),
        // Gone, or (409) a different claim of that name now: not this volume any more.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(None),
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
    Ok(Some(format!(
        "PersistentVolumeClaim {}{}",
        key(pvc),
        volume.map(|v| format!(" (volume {v})")).unwrap_or_default()
    )))
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
    match policy::verdict(pvc, now, hold) {
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
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            let class = pvc.labels().get(LABEL_DATA_CLASS).cloned().unwrap_or_default();
            let rule = pvc.annotations().get(policy::ANNOTATION_RULE).cloned().unwrap_or_default();
            if let Some(what) = erase_volume(ctx, pvc).await? {
                let erased_at = ctx.now();
                ctx.metrics.erasures.with_label_values(&[&class]).inc();
                record(
                    ctx,
                    &tenant_name,
                    &policy::receipt(what, &class, deadline, erased_at, rule),
                )
                .await?;
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
    let by_name =
        |name: &str| kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let claim_query = by_name(&cached.name_any());
    let live = crate::error::retry_passing(|| claims.list(&claim_query)).await?;
    let Some(live) = live.items.into_iter().find(|c| c.uid() == cached.uid()) else {
        return Ok(None);
    };
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let tenant_query = by_name(tenant_name);
    let hold = crate::error::retry_passing(|| tenants.list(&tenant_query))
        .await?
        .items
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
