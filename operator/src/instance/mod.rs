//! The InferenceInstance controller: a thin loop over `builders` (the objects) and `lifecycle`
//! (phase, conditions, metering). Reads from the caches; writes only what changed.

pub mod builders;
pub mod lifecycle;

use std::sync::Arc;
use std::time::Duration;

use alcove_crds::{InferenceInstance, InstancePhase, InstanceState, Tenant, condition};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Resource, ResourceExt};

use crate::context::{Context, Handles, find, find_cluster};
use crate::controller::{self, ensure_finalizer, ignore_missing, remove_finalizer};
use crate::error::{Error, Result};
use lifecycle::{Observation, PodView};

pub const FINALIZER: &str = "alcove.dev/instance-cleanup";
const CONTROLLER: &str = "instance";
/// How often the status follows a download (a status write at most this often).
const DOWNLOAD_PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// Releases the model-cache volume `claim` to retention when no instance of `ns` uses it any
/// more besides `leaving` (one being destroyed).
async fn release_cache_if_unused(
    ctx: &Context,
    ns: &str,
    claim: &str,
    leaving: Option<&InferenceInstance>,
) -> Result<()> {
    let leaving_uid = leaving.and_then(|l| l.uid());
    let used =
        ctx.caches.by_namespace.instances.objects(&ctx.caches.instances, ns).iter().any(|o| {
            o.metadata.deletion_timestamp.is_none()
                && (leaving_uid.is_none() || o.uid() != leaving_uid)
                && builders::model_cache_claim_name(o).as_deref() == Some(claim)
        });
    if used {
        return Ok(());
    }
    if let Some(pvc) = find(&ctx.caches.pvcs, ns, claim) {
        crate::retention::release(ctx, &pvc, alcove_crds::DataClass::ModelCache).await?;
    }
    Ok(())
}

async fn reconcile(i: Arc<InferenceInstance>, ctx: Arc<Context>) -> Result<Action> {
    controller::on_workers(async move {
        controller::reconcile(&ctx, CONTROLLER, &*i, async {
            if i.metadata.deletion_timestamp.is_some() {
                destroy(&i, &ctx).await
            } else {
                reconcile_inner(&i, &ctx).await
            }
        })
        .await
    })
    .await
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| Error::Other(format!("no randomness for an API key: {e}")))?;
    Ok(key)
}

/// A 403 from the quota admission: its message, for the condition.
fn quota_refusal(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota") => {
            Some(s.message.clone())
        }
        _ => None,
    }
}

async fn reconcile_inner(i: &InferenceInstance, ctx: &Context) -> Result<Action> {
    let ns = i.namespace().unwrap_or_default();
    let name = i.name_any();
    let instances: Api<InferenceInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(tenant) =
        crate::names::tenant_of_namespace(&ns).and_then(|t| find_cluster(&ctx.caches.tenants, t))
    else {
        let obs = Observation {
            invalid_spec: Some(format!(
                "namespace {ns} belongs to no Tenant: instances live in their tenant's namespace (tenant-<name>)"
            )),
            ..Default::default()
        };
        return write_status(i, ctx, &instances, &obs, None).await;
    };
    if tenant.metadata.deletion_timestamp.is_some() {
        // The tenant controller is destroying this namespace; it deletes the instance next.
        return Ok(Action::await_change());
    }
    if ensure_finalizer(&ctx.writes, &instances, i, FINALIZER).await? {
        // The update comes back as an event; a resync covers a stale cache's no-op write.
        return Ok(Action::requeue(ctx.config.resync));
    }
    let client = &ctx.client;
    let mut obs = Observation {
        credit_suspended: crate::billing::account::suspended(&tenant, ctx.now()),
        consent_required: alcove_crds::tenant::consent_refusal(&tenant.name_any(), &tenant.spec),
        ..Default::default()
    };
    let usage = find(
        &ctx.caches.config_maps,
        &ctx.config.namespace,
        &alcove_crds::gateway_usage::name(&i.uid().unwrap_or_default()),
    )
    .map(|cm| crate::usage::GatewayUsage::of(&cm));
    let idle_in = match lifecycle::idle(i, usage.as_ref(), ctx.now()) {
        Ok(why) => {
            obs.idle = Some(why);
            None
        }
        Err(wait) => wait,
    };
    let suspended = i.spec.state == InstanceState::Suspended
        || obs.consent_required.is_some()
        || obs.credit_suspended.is_some()
        || obs.idle.is_some();

    // The API key: made once; replaced only when the rotation annotation asks.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let key_name = builders::api_key_secret_name(&name);
    let requested = builders::requested_rotation(i);
    let mut key_in_flight = false;
    let (key_rotation, key_hash) = match find(&ctx.caches.secrets, &ns, &key_name) {
        None => {
            let fresh = builders::api_key_secret(i, &random_key()?, &requested);
            // Not created (made by an earlier pass, or there already): this key is not the one
            // stored, and its hash must not reach the status (the gateway would refuse the real
            // key). The status keeps what it says; while our own creation is on its way to the
            // cache, it waits for it.
            let created = ctx.create(&secrets, &fresh, None).await?;
            key_in_flight =
                !created && ctx.writes.already_written(&crate::apply::log_key(&fresh, ""), None);
            (requested.clone(), created.then(|| builders::api_key_hash(&fresh)).flatten())
        }
        Some(s) if builders::key_rotation_of(&*s) != requested => {
            let mut fresh = builders::api_key_secret(i, &random_key()?, &requested);
            // Only over the Secret as cached: a cache that has not seen this rotation's own
            // write yet (a watch re-listing) would otherwise make a second key, and the first,
            // already handed to the pod, would stop working. A conflict retries the pass.
            fresh.metadata.resource_version = s.resource_version();
            secrets
                .patch(
                    &key_name,
                    &PatchParams::apply(alcove_crds::FIELD_MANAGER).force(),
                    &Patch::Apply(&fresh),
                )
                .await?;
            ctx.event(
                i,
                false,
                "ApiKeyRotated",
                "RotateKey",
                format!("a new key is in Secret {key_name}; the old one no longer works"),
            )
            .await;
            (requested.clone(), builders::api_key_hash(&fresh))
        }
        Some(s) => {
            let hash = match builders::noted_key_hash(&*s) {
                Some(hash) => Some(hash),
                // Made before keys' hashes were noted on their Secrets: the cache holds no keys.
                None => secrets.get_opt(&key_name).await?.as_ref().and_then(builders::api_key_hash),
            };
            (builders::key_rotation_of(&*s), hash)
        }
    };
    obs.api_key_hash = key_hash;
    obs.rate_limits = Some(ctx.config.rate_limits(tenant.spec.tier, &i.spec.limits));

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let prompt_name = builders::prompt_config_map_name(&name);
    match builders::system_prompt(i) {
        Some(cm) => {
            ctx.apply(
                &config_maps,
                &cm,
                find(&ctx.caches.config_maps, &ns, &prompt_name).as_deref(),
            )
            .await?;
        }
        None if find(&ctx.caches.config_maps, &ns, &prompt_name).is_some() => {
            ignore_missing(config_maps.delete(&prompt_name, &DeleteParams::default()).await)?;
        }
        None => {}
    }
    // The history volume is created once; its size and class are fixed from then on.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let live_pvc = find(&ctx.caches.pvcs, &ns, &builders::history_pvc_name(&name));
    // Re-created within the history's retention window: the conversations are still there.
    if let Some(pvc) = live_pvc.as_deref().filter(|p| crate::retention::policy::is_released(p)) {
        crate::retention::reclaim(ctx, pvc, i).await?;
    }
    match ctx
        .ensure(
            &pvcs,
            &builders::history_pvc(i, &ctx.config.tier(tenant.spec.tier)),
            live_pvc.as_deref(),
        )
        .await
    {
        Ok(_) => {}
        Err(Error::Kube(k)) if quota_refusal(&k).is_some() => obs.quota_refusal = quota_refusal(&k),
        Err(e) => return Err(e),
    }
    // A URI's model: the shared cache volume (taken back from retention when a released one is
    // used again) and egress to the source for the fetch step.
    let tier = ctx.config.tier(tenant.spec.tier);
    if let Some(cache) = builders::model_cache_pvc(i, &tier) {
        let claim = cache.name_any();
        let live_cache = find(&ctx.caches.pvcs, &ns, &claim);
        if let Some(pvc) =
            live_cache.as_deref().filter(|p| crate::retention::policy::is_released(p))
        {
            crate::retention::keep(ctx, pvc).await?;
        }
        match ctx.ensure(&pvcs, &cache, live_cache.as_deref()).await {
            Ok(_) => {}
            Err(Error::Kube(k)) if quota_refusal(&k).is_some() => {
                obs.quota_refusal = quota_refusal(&k)
            }
            Err(e) => return Err(e),
        }
        obs.model_cache = Some(claim);
    }
    // A source changed: the old cache goes to retention once no instance uses it.
    if let Some(old) = i.status.as_ref().and_then(|s| s.model_cache.as_deref())
        && obs.model_cache.as_deref() != Some(old)
    {
        release_cache_if_unused(ctx, &ns, old, None).await?;
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let egress_name = builders::model_egress_name(&name);
    let live_egress = find(&ctx.caches.network_policies, &ns, &egress_name);
    match builders::model_egress(i, &ctx.config) {
        Some(np) => {
            ctx.apply(&policies, &np, live_egress.as_deref()).await?;
        }
        None if live_egress.is_some() => {
            ignore_missing(policies.delete(&egress_name, &DeleteParams::default()).await)?;
        }
        None => {}
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    ctx.apply(&services, &builders::service(i), find(&ctx.caches.services, &ns, &name).as_deref())
        .await?;

    // The pod: created when missing, re-created when what it is built from changed (pods are
    // immutable), deleted while suspended.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let live = find(&ctx.caches.pods, &ns, &name);
    let placement = crate::tenant::builders::placement(&tenant, &ctx.config);
    let knowledge_bases = match builders::resolve_knowledge_bases(i, |ns, name| {
        find(&ctx.caches.knowledge_bases, ns, name)
    }) {
        Ok(m) => m,
        Err(builders::KbProblem::Refused(why)) => {
            obs.invalid_spec = Some(why);
            Vec::new()
        }
        Err(builders::KbProblem::Waiting(why)) => {
            obs.waiting = Some(why);
            Vec::new()
        }
    };
    let desired = match &obs.invalid_spec {
        Some(why) => Err(why.clone()),
        None => builders::pod(
            i,
            &ctx.config,
            &builders::PodInputs {
                placement: &placement,
                key_rotation: &key_rotation,
                knowledge_bases: &knowledge_bases,
                model_cache_size: &tier.model_cache_size,
            },
        ),
    };
    // A pod this operator deleted that the cache still shows as it was (a re-listing lags) is
    // not serving: it never makes the instance Ready. (Under API faults, a resume read the
    // suspended run's pod from a stale cache and said Ready before the new pod existed.)
    let deleted_mark = |p: &Pod| format!("Delete/Pod/{}", p.uid().unwrap_or_default());
    let deleted_by_us = live
        .as_deref()
        .is_some_and(|p| ctx.writes.already_written(&deleted_mark(p), Some("deleted")));
    let delete_pod = || async {
        ignore_missing(
            pods.delete(
                &name,
                &DeleteParams { grace_period_seconds: Some(2), ..Default::default() },
            )
            .await,
        )?;
        if let Some(p) = live.as_deref() {
            ctx.writes.record(deleted_mark(p), Some("deleted".into()), String::new());
        }
        Ok::<(), Error>(())
    };
    // A pod we just created, or one the scheduler has not placed or refused yet: its next event
    // follows at once and says more than a status written now would.
    let mut pod_on_its_way = false;
    match (&desired, live.as_deref()) {
        (Err(why), live) => {
            obs.invalid_spec = Some(why.clone());
            if live.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
                delete_pod().await?;
            }
        }
        (Ok(_), Some(p)) if suspended => {
            if p.metadata.deletion_timestamp.is_none() && !deleted_by_us {
                delete_pod().await?;
            }
            let mut view = PodView::of(p);
            view.deleting |= deleted_by_us;
            obs.pod = Some(view);
        }
        (Ok(_), None) if suspended || obs.waiting.is_some() => {}
        (Ok(pod), None) => {
            if obs.quota_refusal.is_none() {
                match ctx.ensure(&pods, pod, None).await {
                    Ok(created) => {
                        pod_on_its_way = created
                            || ctx.writes.already_written(&crate::apply::log_key(pod, ""), None)
                    }
                    Err(Error::Kube(k)) if quota_refusal(&k).is_some() => {
                        obs.quota_refusal = quota_refusal(&k)
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        (Ok(pod), Some(p)) => {
            // While a knowledge base is missing, a running server keeps the index it has.
            let stale = builders::pod_hash(p) != builders::pod_hash(pod) && obs.waiting.is_none();
            let finished = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            );
            if (stale || finished) && p.metadata.deletion_timestamp.is_none() && !deleted_by_us {
                delete_pod().await?;
            }
            let mut view = PodView::of(p);
            view.deleting |= deleted_by_us;
            pod_on_its_way = !(stale || finished)
                && lifecycle::awaiting_scheduler(
                    &view,
                    p.metadata.creation_timestamp.as_ref(),
                    ctx.now(),
                );
            obs.pod = Some(view);
        }
    }
    // The fetch step's progress, from the last lines of its log; looked at again shortly.
    let downloading =
        obs.pod.as_ref().is_some_and(|p| matches!(p.fetch, Some(lifecycle::FetchState::Running)));
    if downloading {
        let params = kube::api::LogParams {
            container: Some(builders::FETCH_CONTAINER.into()),
            tail_lines: Some(5),
            ..Default::default()
        };
        match pods.logs(&name, &params).await {
            Ok(text) => obs.download = lifecycle::download_progress(&text),
            Err(e) => {
                tracing::debug!(instance = %crate::context::key(i), error = %e, "no fetch progress yet")
            }
        }
    }
    // Tokens through the gateway since the last report (a failure is retried shortly; it does
    // not hold the status back).
    let tokens_failed = match crate::billing::report_tokens(ctx, &tenant, i, false).await {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(instance = %crate::context::key(i), error = %e, "token report failed; retrying");
            true
        }
    };
    if (pod_on_its_way || key_in_flight) && i.status.as_ref().is_none_or(|s| s.started_at.is_none())
    {
        // A status saying "creating the pod" or "waiting for the scheduler", or one without the
        // new key's hash, would be replaced within milliseconds: one write for nothing. (A run in
        // progress is ended now, not then: its bill is to the second.) A scheduler that stays
        // silent is reported after the grace.
        return Ok(Action::requeue(lifecycle::SCHEDULER_GRACE));
    }
    let mut action = write_status(i, ctx, &instances, &obs, Some(&tenant)).await?;
    if tokens_failed {
        action = Action::requeue(Duration::from_secs(5));
    }
    let wake_at = [crate::billing::account::suspends_in(&tenant, ctx.now()), idle_in]
        .into_iter()
        .flatten()
        .min();
    if let Some(at) = wake_at {
        action = Action::requeue(at.min(ctx.config.resync));
    }
    if downloading {
        action = Action::requeue(DOWNLOAD_PROGRESS_EVERY);
    }
    if obs.quota_refusal.is_some() {
        // Quota frees up when another instance goes; its quota change triggers a retry, and this
        // backoff covers what the watch misses.
        // A clock behind the condition's time (skew) counts as no wait, not as the longest.
        let waited = i
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions.iter().find(|c| {
                    c.type_ == condition::QUOTA_AVAILABLE
                        && c.status == alcove_crds::condition::FALSE
                })
            })
            .map(|c| ctx.now().duration_since(c.last_transition_time.0).as_secs().max(0))
            .unwrap_or(0);
        return Ok(Action::requeue(Duration::from_secs((waited.unsigned_abs() / 2).clamp(5, 300))));
    }
    Ok(action)
}

/// Writes the lifecycle's verdict; Events accompany transitions only. Usage is reported first:
/// a run that ends here is billed up to this instant before the status says it ended.
async fn write_status(
    i: &InferenceInstance,
    ctx: &Context,
    api: &Api<InferenceInstance>,
    obs: &Observation,
    tenant: Option<&Tenant>,
) -> Result<Action> {
    let now = ctx.now();
    let prev = i.status.clone().unwrap_or_default();
    let mut next = lifecycle::desired_status(i, obs, now);
    let run_start =
        prev.started_at.as_deref().or(next.started_at.as_deref()).and_then(alcove_clock::parse);
    let ends = prev.started_at.is_some() && next.started_at.is_none();
    if ends {
        // A run's end is billed once, by the pass that ends it. A cache from before an earlier
        // pass ended it (a re-listing lags) would end it again, later, and bill the seconds
        // between twice (found under API faults). So the API server's version is asked first;
        // a cache behind it waits for the watch to catch up.
        let live =
            controller::live(api, &i.name_any()).await?.into_iter().find(|l| l.uid() == i.uid());
        if live.is_some_and(|l| l.resource_version() != i.resource_version()) {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    let metered = match tenant {
        Some(t) => crate::billing::report(ctx, t, i, run_start, ends.then_some(now), false).await,
        None => crate::billing::meter::Metered::Off(
            "NoTenant",
            "the instance belongs to no tenant".into(),
        ),
    };
    if ends && let crate::billing::meter::Metered::Failed(e) = &metered {
        // The run's end must be billed before the status forgets when the run started.
        return Err(Error::Billing(e.clone()));
    }
    lifecycle::set_billing(
        &mut next,
        &metered,
        obs.credit_suspended.as_deref(),
        i.metadata.generation,
        now,
    );
    let requeue = match &metered {
        crate::billing::meter::Metered::Billed { next: Some(d), .. } => {
            (*d + Duration::from_millis(50)).min(ctx.config.resync)
        }
        crate::billing::meter::Metered::Failed(_) => Duration::from_secs(5),
        _ => ctx.config.resync,
    };
    if !ctx.write_status(api, i, i.status.as_ref(), &next).await? {
        return Ok(Action::requeue(requeue));
    }
    let cond = |s: &alcove_crds::InferenceInstanceStatus, t: &str| {
        s.conditions.iter().find(|c| c.type_ == t).cloned()
    };
    let changed = |t: &str| match (cond(&prev, t), cond(&next, t)) {
        (Some(a), Some(b)) => a.status != b.status || a.reason != b.reason,
        (None, Some(_)) => true,
        _ => false,
    };
    let ready = cond(&next, condition::READY).map(|c| c.message).unwrap_or_default();
    if next.phase != prev.phase {
        match next.phase {
            Some(InstancePhase::Ready) => {
                ctx.event(i, false, "Ready", "Serve", ready.clone()).await;
                if lifecycle::first_ready(&prev, &next)
                    && let Some(created) = i.metadata.creation_timestamp.as_ref()
                {
                    ctx.metrics
                        .time_to_ready
                        .observe(now.duration_since(created.0).as_secs_f64().max(0.0));
                }
            }
            Some(InstancePhase::Pending) if obs.consent_required.is_some() => {
                ctx.event(
                    i,
                    true,
                    alcove_crds::reason::CONSENT_REQUIRED,
                    "Refuse",
                    obs.consent_required.clone().unwrap_or_default(),
                )
                .await
            }
            Some(InstancePhase::Suspended) if obs.credit_suspended.is_some() => {
                ctx.event(
                    i,
                    true,
                    alcove_crds::reason::CREDIT_EXHAUSTED,
                    "Suspend",
                    format!(
                        "{}; pod deleted, volumes and key kept",
                        obs.credit_suspended.clone().unwrap_or_default()
                    ),
                )
                .await
            }
            Some(InstancePhase::Suspended) => {
                ctx.event(
                    i,
                    false,
                    alcove_crds::reason::SUSPENDED,
                    "Suspend",
                    format!(
                        "pod deleted, volumes and key kept; {} GPU-seconds used in total",
                        next.gpu_seconds
                    ),
                )
                .await
            }
            Some(InstancePhase::Failed) => {
                ctx.event(i, true, "Failed", "Serve", ready.clone()).await
            }
            _ => {}
        }
        if prev.phase == Some(InstancePhase::Suspended) {
            let for_credit = prev.conditions.iter().any(|c| {
                c.type_ == condition::READY && c.reason == alcove_crds::reason::CREDIT_EXHAUSTED
            });
            let why = if for_credit {
                "credit was topped up: starting the server"
            } else {
                "spec.state is Running: starting the server"
            };
            ctx.event(i, false, "Resumed", "Resume", why.into()).await;
        }
    }
    if changed(condition::SCHEDULED)
        && let Some(s) = cond(&next, condition::SCHEDULED).filter(|s| {
            s.status == alcove_crds::condition::FALSE
                && s.reason == alcove_crds::reason::UNSCHEDULABLE
        })
    {
        ctx.event(i, true, alcove_crds::reason::UNSCHEDULABLE, "Schedule", s.message).await;
    }
    if changed(condition::QUOTA_AVAILABLE)
        && let Some(q) = cond(&next, condition::QUOTA_AVAILABLE)
            .filter(|q| q.status == alcove_crds::condition::FALSE)
    {
        ctx.event(i, true, alcove_crds::reason::QUOTA_EXCEEDED, "CreatePod", q.message).await;
    }
    if prev.started_at.is_some() && next.started_at.is_none() {
        ctx.metrics
            .gpu_seconds
            .with_label_values(&[&crate::names::tenant_of_namespace(
                &i.namespace().unwrap_or_default(),
            )
            .unwrap_or_default()
            .to_string()])
            .inc_by((next.gpu_seconds - prev.gpu_seconds).max(0) as u64);
    }
    Ok(Action::requeue(requeue))
}

/// Destroy: record the final usage (the run ends at the delete request), delete the pod at once
/// and every other child, release the history volume to retention, and let the instance go once
/// the pod is gone.
async fn destroy(i: &InferenceInstance, ctx: &Context) -> Result<Action> {
    if !i.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = i.namespace().unwrap_or_default();
    let name = i.name_any();
    let client = &ctx.client;
    let instances: Api<InferenceInstance> = Api::namespaced(client.clone(), &ns);
    if i.status.as_ref().and_then(|s| s.phase) != Some(InstancePhase::Terminating) {
        // Billing stops at the delete request: the final usage record first, then the rest.
        let (mut last, used) = lifecycle::final_status(i, ctx.now());
        if let Some(tenant) = crate::names::tenant_of_namespace(&ns)
            .and_then(|t| find_cluster(&ctx.caches.tenants, t))
        {
            let run_start = i
                .status
                .as_ref()
                .and_then(|s| s.started_at.as_deref())
                .and_then(alcove_clock::parse);
            let end =
                i.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or_else(|| ctx.now());
            let metered = crate::billing::report(ctx, &tenant, i, run_start, Some(end), true).await;
            if let crate::billing::meter::Metered::Failed(e) = &metered {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                ignore_missing(
                    pods.delete(
                        &name,
                        &DeleteParams { grace_period_seconds: Some(2), ..Default::default() },
                    )
                    .await,
                )?;
                return Err(Error::Billing(e.clone()));
            }
            lifecycle::set_billing(&mut last, &metered, None, i.metadata.generation, ctx.now());
        }
        ctx.write_status(&instances, i, i.status.as_ref(), &last).await?;
        let tenant = crate::names::tenant_of_namespace(&ns).unwrap_or_default().to_string();
        ctx.metrics.gpu_seconds.with_label_values(&[&tenant]).inc_by(used.max(0) as u64);
        ctx.event(
            i,
            false,
            "Destroyed",
            "Delete",
            format!("pod deleted; final usage {} GPU-seconds", last.gpu_seconds),
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = find(&ctx.caches.pods, &ns, &name);
    if pod.as_ref().is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
        ignore_missing(
            pods.delete(
                &name,
                &DeleteParams { grace_period_seconds: Some(2), ..Default::default() },
            )
            .await,
        )?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    if find(&ctx.caches.services, &ns, &name).is_some() {
        ignore_missing(services.delete(&name, &DeleteParams::default()).await)?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let key_name = builders::api_key_secret_name(&name);
    if find(&ctx.caches.secrets, &ns, &key_name).is_some() {
        ignore_missing(secrets.delete(&key_name, &DeleteParams::default()).await)?;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let prompt_name = builders::prompt_config_map_name(&name);
    if find(&ctx.caches.config_maps, &ns, &prompt_name).is_some() {
        ignore_missing(config_maps.delete(&prompt_name, &DeleteParams::default()).await)?;
    }
    if pod.is_some() {
        // The pod's deletion event brings us back; this is the fallback.
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // Tokens: the gateway's last totals are billed, then its usage ConfigMap goes. The gateway
    // publishes them when it sees the delete; its word is awaited a bounded time.
    let usage_name = alcove_crds::gateway_usage::name(&i.uid().unwrap_or_default());
    let usage: Api<ConfigMap> = Api::namespaced(client.clone(), &ctx.config.namespace);
    let cm = match find(&ctx.caches.config_maps, &ctx.config.namespace, &usage_name) {
        Some(cm) => Some((*cm).clone()),
        // Not in the cache (a re-listing may lag): asked of the API server, as tokens the
        // gateway published would otherwise go unbilled and their ConfigMap stay behind.
        None => usage.get_opt(&usage_name).await?,
    };
    if let Some(cm) = cm {
        let deleted =
            i.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or_else(|| ctx.now());
        let waited = ctx.now().duration_since(deleted);
        if !crate::usage::GatewayUsage::of(&cm).last_word
            && waited < jiff::SignedDuration::from_secs(30)
        {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        if let Some(tenant) = crate::names::tenant_of_namespace(&ns)
            .and_then(|t| find_cluster(&ctx.caches.tenants, t))
        {
            crate::billing::report_tokens(ctx, &tenant, i, true).await?;
        }
        ignore_missing(usage.delete(&usage_name, &DeleteParams::default()).await)?;
    }
    // The history outlives the instance for the tenant's window; retention erases it then. Its
    // owner reference goes first, so the garbage collector does not take it with the instance.
    let history = builders::history_pvc_name(&name);
    let pvc = match find(&ctx.caches.pvcs, &ns, &history) {
        Some(p) => Some((*p).clone()),
        // Not in the cache (one re-listing may lag): asked of the API server, as a claim left
        // with its owner reference would go with the instance.
        None => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            controller::live(&api, &history).await?.into_iter().next()
        }
    };
    if let Some(pvc) = pvc {
        crate::retention::release(ctx, &pvc, alcove_crds::DataClass::ConversationHistory).await?;
    }
    // The model cache, shared by the tenant's instances of the same source, when this was the last.
    if let Some(claim) = builders::model_cache_claim_name(i) {
        release_cache_if_unused(ctx, &ns, &claim, Some(i)).await?;
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let egress_name = builders::model_egress_name(&name);
    if find(&ctx.caches.network_policies, &ns, &egress_name).is_some() {
        ignore_missing(policies.delete(&egress_name, &DeleteParams::default()).await)?;
    }
    remove_finalizer(&instances, i, FINALIZER).await?;
    Ok(Action::await_change())
}

/// Deletes the gateway's usage ConfigMaps whose instance is gone. The destroy deletes an
/// instance's own, but a gateway that hears of the deletion late (a cut watch, a restart) can
/// publish its last word after that: the chaos test under API faults found one left so. Read
/// from the caches; only a ConfigMap whose instance the cache lacks costs a request (is it gone,
/// by UID, asked of the API server). Returns how many went.
pub async fn sweep_usage(ctx: &Context) -> Result<usize> {
    use alcove_crds::gateway_usage as u;
    let ns = &ctx.config.namespace;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let mut deleted = 0;
    for cm in ctx.caches.by_namespace.config_maps.objects(&ctx.caches.config_maps, ns) {
        if cm.labels().get(u::LABEL).map(String::as_str) != Some("gateway") {
            continue;
        }
        let data = cm.data.clone().unwrap_or_default();
        let (Some(i_ns), Some(name), Some(uid)) =
            (data.get(u::NAMESPACE), data.get(u::INSTANCE), data.get(u::INSTANCE_UID))
        else {
            continue;
        };
        let same = |i: &InferenceInstance| i.uid().as_ref() == Some(uid);
        if find(&ctx.caches.instances, i_ns, name).is_some_and(|i| same(&i)) {
            continue;
        }
        let instances: Api<InferenceInstance> = Api::namespaced(ctx.client.clone(), i_ns);
        if controller::live(&instances, name).await?.iter().any(same) {
            continue;
        }
        // Only the version read: one the gateway writes again meanwhile waits for the next sweep.
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: cm.uid(),
                resource_version: cm.resource_version(),
            }),
            ..Default::default()
        };
        match cms.delete(&cm.name_any(), &dp).await {
            Ok(_) => {
                deleted += 1;
                tracing::info!(instance = %format!("{i_ns}/{name}"), "usage ConfigMap of a gone instance deleted");
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

fn error_policy(i: Arc<InferenceInstance>, error: &Error, ctx: Arc<Context>) -> Action {
    controller::error_policy(&ctx, CONTROLLER, &*i, error)
}

/// Keeps `alcove_instances{phase}` equal to the phases in the cache.
async fn count_phases(ctx: Arc<Context>) {
    let phases = [
        "Pending",
        "Downloading",
        "Provisioning",
        "Ready",
        "Suspended",
        "Idle",
        "Failed",
        "Terminating",
    ];
    loop {
        let mut counts = [0i64; 8];
        // Sharded, each replica counts its own: the sum over replicas is the whole.
        for i in ctx.caches.instances.state() {
            if !ctx.shards.owns(&crate::shard::tenant_of(&*i)) {
                continue;
            }
            if let Some(p) = i.status.as_ref().and_then(|s| s.phase) {
                let name = serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                if let Some(ix) = phases.iter().position(|x| *x == name) {
                    counts[ix] += 1;
                }
            }
        }
        for (p, n) in phases.iter().zip(counts) {
            ctx.metrics.instances_by_phase.with_label_values(&[p]).set(n);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The InferenceInstance controller, ready to run.
pub fn controller<S>(
    ctx: Arc<Context>,
    h: &Handles,
    shutdown: S,
) -> impl std::future::Future<Output = ()> + Send + use<S>
where
    S: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    fn by_label<K: Resource>(obj: K) -> Option<ObjectRef<InferenceInstance>> {
        let ns = obj.namespace()?;
        obj.labels().get(alcove_crds::LABEL_INSTANCE).map(|n| ObjectRef::new(n).within(&ns))
    }
    // The gateway's usage ConfigMap (in the operator's namespace) names its instance in its data:
    // new tokens to bill, a last request that postpones idling, a request that wakes.
    fn of_config_map(cm: ConfigMap) -> Option<ObjectRef<InferenceInstance>> {
        if cm.labels().contains_key(alcove_crds::gateway_usage::LABEL) {
            let data = cm.data.as_ref()?;
            let name = data.get(alcove_crds::gateway_usage::INSTANCE)?;
            let ns = data.get(alcove_crds::gateway_usage::NAMESPACE)?;
            return Some(ObjectRef::new(name).within(ns));
        }
        by_label(cm)
    }
    // A quota change can make room: retry the instances it refused.
    let (store, index) = (ctx.caches.instances.clone(), ctx.caches.by_namespace.instances.clone());
    let refused = move |q: k8s_openapi::api::core::v1::ResourceQuota| {
        let ns = q.namespace().unwrap_or_default();
        index
            .objects(&store, &ns)
            .into_iter()
            .filter(|i| {
                i.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == condition::QUOTA_AVAILABLE
                            && c.status == alcove_crds::condition::FALSE
                    })
                })
            })
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    };
    // A tenant's spec (tier, region, placement) decides where its instances run.
    let (store, index) = (ctx.caches.instances.clone(), ctx.caches.by_namespace.instances.clone());
    let of_tenant = move |t: Tenant| {
        let ns = crate::names::namespace_name(&t.name_any());
        index.objects(&store, &ns).into_iter().map(|i| ObjectRef::from_obj(&*i)).collect::<Vec<_>>()
    };
    // A tenant's credit running out (or topped up) suspends (or resumes) its instances.
    fn tenant_state(t: &Tenant) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        t.metadata.generation.hash(&mut h);
        let s = t.status.as_ref();
        s.and_then(|s| s.billing.as_ref()).and_then(|b| b.suspend_at.clone()).hash(&mut h);
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::BILLING))
            .map(|c| c.reason.clone())
            .hash(&mut h);
        s.and_then(|s| s.billing.as_ref()).and_then(|b| b.customer_id.clone()).hash(&mut h);
        Some(h.finish())
    }
    // A knowledge base indexed (or gone) changes what its instances mount.
    let (store, index) = (ctx.caches.instances.clone(), ctx.caches.by_namespace.instances.clone());
    let using_kb = move |kb: alcove_crds::KnowledgeBase| {
        let ns = kb.namespace().unwrap_or_default();
        index
            .objects(&store, &ns)
            .into_iter()
            .filter(|i| i.spec.knowledge_bases.iter().any(|r| r.name == kb.name_any()))
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    };
    tokio::spawn(count_phases(ctx.clone()));
    Controller::for_stream(h.instances.subscribe(), ctx.caches.instances.clone())
        .with_config(crate::controller::bounded())
        .watches_stream(h.pods.subscribe(), by_label)
        .watches_stream(h.services.subscribe(), by_label)
        .watches_stream(h.secrets.subscribe(), by_label)
        .watches_stream(h.config_maps.subscribe(), of_config_map)
        .watches_stream(h.pvcs.subscribe(), by_label)
        .watches_stream(h.quotas.subscribe(), refused)
        .watches_stream(h.knowledge_bases.subscribe(), using_kb)
        .watches_stream(
            h.tenants.subscribe().predicate_filter(tenant_state, Default::default()),
            of_tenant,
        )
        // Usage falls due as time passes: an injected clock's jump re-checks every instance.
        .reconcile_all_on(ctx.clock.jumps().unwrap_or_else(|| futures::stream::pending().boxed()))
        .reconcile_on(ctx.shards.taken(ctx.caches.instances.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
}
