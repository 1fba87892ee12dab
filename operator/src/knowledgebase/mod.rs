//! The KnowledgeBase controller: a thin loop over `builders`. Reads the caches (and the Secrets a
//! source names, which are not cached); writes only what changed.

pub mod builders;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alcove_crds::{KnowledgeBase, KnowledgeBasePhase, LABEL_KNOWLEDGE_BASE, Tenant, Tier};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, predicates};
use kube::{Resource, ResourceExt};

use crate::context::{Context, Handles, find, find_cluster, key};
use crate::controller::{self, ensure_finalizer, ignore_missing, remove_finalizer};
use crate::error::{Error, Result};
use crate::names::COMPONENT_LABEL;
use builders::{IndexSummary, JobView, Observation};

pub const FINALIZER: &str = "alcove.dev/knowledge-base-cleanup";
const CONTROLLER: &str = "knowledgebase";
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

async fn reconcile(kb: Arc<KnowledgeBase>, ctx: Arc<Context>) -> Result<Action> {
    controller::on_workers(async move {
        controller::reconcile(&ctx, CONTROLLER, &*kb, async {
            if kb.metadata.deletion_timestamp.is_some() {
                destroy(&kb, &ctx).await
            } else {
                reconcile_inner(&kb, &ctx).await
            }
        })
        .await
    })
    .await
}

fn quota_refusal(e: &Error) -> Option<String> {
    match e {
        Error::Kube(kube::Error::Api(s))
            if s.code == 403 && s.message.contains("exceeded quota") =>
        {
            Some(s.message.clone())
        }
        _ => None,
    }
}

/// The contents of the ConfigMap and Secret keys the sources name (source → key → value), or
/// which one is missing.
async fn source_contents(
    kb: &KnowledgeBase,
    ctx: &Context,
) -> Result<std::result::Result<BTreeMap<String, BTreeMap<String, String>>, String>> {
    let ns = kb.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = BTreeMap::new();
    for s in &kb.spec.sources {
        let (kind, refd, data) = if let Some(r) = &s.config_map {
            let data = find(&ctx.caches.config_maps, &ns, &r.name)
                .map(|cm| cm.data.clone().unwrap_or_default());
            ("ConfigMap", r, data)
        } else if let Some(r) = &s.secret {
            let data = secrets.get_opt(&r.name).await?.map(|sec| {
                sec.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect::<BTreeMap<_, _>>()
            });
            ("Secret", r, data)
        } else {
            continue;
        };
        let field = format!("spec.sources[name={}]", s.name);
        let Some(mut data) = data else {
            return Ok(Err(format!("{kind} {} named by {field} does not exist", refd.name)));
        };
        if !refd.keys.is_empty() {
            if let Some(k) = refd.keys.iter().find(|k| !data.contains_key(*k)) {
                return Ok(Err(format!("{kind} {} has no key {k} (listed in {field})", refd.name)));
            }
            data.retain(|k, _| refd.keys.contains(k));
        }
        out.insert(s.name.clone(), data);
    }
    Ok(Ok(out))
}

/// The pods of one Job (from the managed-pods cache).
fn job_pods(ctx: &Context, ns: &str, job: &str) -> Vec<Arc<Pod>> {
    ctx.caches
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns)
                && p.labels().get(JOB_NAME_LABEL).map(String::as_str) == Some(job)
        })
        .collect()
}

/// The last termination message of a Job's pods.
fn termination_message(pods: &[Arc<Pod>]) -> Option<String> {
    pods.iter()
        .filter_map(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .state
                .as_ref()?
                .terminated
                .as_ref()?
                .message
                .clone()
        })
        .next_back()
}

fn job_view(job: &Job, pods: &[Arc<Pod>]) -> JobView {
    let conds = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let is =
        |t: &str| conds.iter().find(|c| c.type_ == t && c.status == alcove_crds::condition::TRUE);
    if is("Complete").is_some() {
        return match termination_message(pods)
            .and_then(|m| serde_json::from_str::<IndexSummary>(&m).ok())
        {
            Some(s) => JobView::Succeeded(s),
            None => JobView::Failed(
                "the indexing job finished without reporting what it indexed".into(),
            ),
        };
    }
    if let Some(c) = is("Failed") {
        let last = termination_message(pods)
            .map(|m| format!("; last output: {}", m.trim()))
            .unwrap_or_default();
        return JobView::Failed(format!(
            "{}: {}{last}",
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default()
        ));
    }
    JobView::Running
}

async fn reconcile_inner(kb: &KnowledgeBase, ctx: &Context) -> Result<Action> {
    let ns = kb.namespace().unwrap_or_default();
    let name = kb.name_any();
    let kbs: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(tenant) =
        crate::names::tenant_of_namespace(&ns).and_then(|t| find_cluster(&ctx.caches.tenants, t))
    else {
        let why = format!(
            "namespace {ns} belongs to no Tenant: knowledge bases live in their tenant's namespace (tenant-<name>)"
        );
        return write_status(
            kb,
            ctx,
            &kbs,
            &Observation {
                refused: Some((alcove_crds::reason::INVALID_SPEC.into(), why)),
                ..Default::default()
            },
        )
        .await;
    };
    if tenant.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if tenant.spec.tier == Tier::Free {
        let why = format!(
            "the free tier has no knowledge-base storage: tenant {} has spec.tier free (spec.quota.maxKnowledgeBases must be 0 on the free tier); move the tenant to basic or above to use knowledge bases",
            tenant.name_any()
        );
        return write_status(
            kb,
            ctx,
            &kbs,
            &Observation {
                refused: Some(("TierHasNoKnowledgeBases".into(), why)),
                ..Default::default()
            },
        )
        .await;
    }
    if let Some(why) = alcove_crds::tenant::consent_refusal(&tenant.name_any(), &tenant.spec) {
        return write_status(
            kb,
            ctx,
            &kbs,
            &Observation {
                refused: Some((alcove_crds::reason::CONSENT_REQUIRED.into(), why)),
                ..Default::default()
            },
        )
        .await;
    }
    if ensure_finalizer(&ctx.writes, &kbs, kb, FINALIZER).await? {
        // The update comes back as an event; a resync covers a stale cache's no-op write.
        return Ok(Action::requeue(ctx.config.resync));
    }
    let client = &ctx.client;
    let mut obs = Observation::default();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let inline_name = builders::inline_config_map_name(&name);
    match builders::inline_config_map(kb) {
        Some(cm) => drop(
            ctx.apply(
                &config_maps,
                &cm,
                find(&ctx.caches.config_maps, &ns, &inline_name).as_deref(),
            )
            .await?,
        ),
        None if find(&ctx.caches.config_maps, &ns, &inline_name).is_some() => {
            ignore_missing(config_maps.delete(&inline_name, &DeleteParams::default()).await)?
        }
        None => {}
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let np_name = builders::network_policy_name(&name);
    match builders::network_policy(kb) {
        Some(np) => drop(
            ctx.apply(&policies, &np, find(&ctx.caches.network_policies, &ns, &np_name).as_deref())
                .await?,
        ),
        None if find(&ctx.caches.network_policies, &ns, &np_name).is_some() => {
            ignore_missing(policies.delete(&np_name, &DeleteParams::default()).await)?
        }
        None => {}
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let live_pvc = find(&ctx.caches.pvcs, &ns, &builders::pvc_name(&name));
    // Re-created within the knowledge-base window: the index is still there.
    if let Some(pvc) = live_pvc.as_deref().filter(|p| crate::retention::policy::is_released(p)) {
        crate::retention::reclaim(ctx, pvc, kb).await?;
    }
    match ctx
        .ensure(&pvcs, &builders::pvc(kb, &ctx.config.tier(tenant.spec.tier)), live_pvc.as_deref())
        .await
    {
        Ok(_) => {}
        Err(e) if quota_refusal(&e).is_some() => obs.quota_refusal = quota_refusal(&e),
        Err(e) => return Err(e),
    }

    let contents = match source_contents(kb, ctx).await? {
        Ok(c) => c,
        Err(missing) => {
            obs.missing_source = Some(missing);
            return write_status(kb, ctx, &kbs, &obs).await;
        }
    };
    let hash = builders::source_hash(kb, &contents);
    obs.hash = Some(hash.clone());
    let job_name = builders::job_name(&name, &hash);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mine: Vec<Arc<Job>> = ctx
        .caches
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.namespace().as_deref() == Some(ns.as_str())
                && j.labels().get(LABEL_KNOWLEDGE_BASE) == Some(&name)
        })
        .collect();

    // Runs for older sources are stopped first: two runs must never race to write the index.
    let mut older_running = false;
    for j in mine.iter().filter(|j| j.name_any() != job_name) {
        if j.metadata.deletion_timestamp.is_none() {
            ignore_missing(jobs.delete(&j.name_any(), &DeleteParams::background()).await)?;
        }
        older_running = true;
    }
    older_running |= ctx.caches.pods.state().iter().any(|p| {
        p.namespace().as_deref() == Some(ns.as_str())
            && p.labels().get(LABEL_KNOWLEDGE_BASE) == Some(&name)
            && p.labels().get(COMPONENT_LABEL).map(String::as_str) == Some("indexer")
            && p.labels().get(JOB_NAME_LABEL) != Some(&job_name)
    });

    let current = mine.iter().find(|j| j.name_any() == job_name);
    let indexed_already = kb
        .status
        .as_ref()
        .is_some_and(|s| s.source_hash.as_deref() == Some(hash.as_str()) && s.indexed_at.is_some());
    match current {
        Some(j) => obs.job = Some(job_view(j, &job_pods(ctx, &ns, &job_name))),
        None if indexed_already => {}
        None if older_running || obs.quota_refusal.is_some() => obs.job = Some(JobView::Running),
        None => {
            let placement = crate::tenant::builders::placement(&tenant, &ctx.config);
            match builders::job(kb, &ctx.config, &placement, &hash) {
                Err(why) => obs.refused = Some((alcove_crds::reason::INVALID_SPEC.into(), why)),
                Ok(job) => match ctx.ensure(&jobs, &job, None).await {
                    Ok(_) => obs.job = Some(JobView::Running),
                    Err(e) if quota_refusal(&e).is_some() => obs.quota_refusal = quota_refusal(&e),
                    Err(e) => return Err(e),
                },
            }
        }
    }
    let action = write_status(kb, ctx, &kbs, &obs).await?;
    // The summary is in the status now: the finished run (and the pod that saw the documents) go.
    if let (Some(JobView::Succeeded(_)), Some(j)) = (&obs.job, current)
        && j.metadata.deletion_timestamp.is_none()
    {
        ignore_missing(jobs.delete(&job_name, &DeleteParams::background()).await)?;
    }
    if older_running || obs.quota_refusal.is_some() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    // A failed run keeps its Job for `kubectl logs` no longer than the staged-documents window;
    // then it goes with its pod (and the documents staged in it), and the next reconcile retries.
    if let (Some(JobView::Failed(_)), Some(j)) = (&obs.job, current) {
        let window = crate::retention::policy::window(
            Some(&tenant),
            alcove_crds::DataClass::StagedDocuments,
            ctx.config.default_window(alcove_crds::DataClass::StagedDocuments),
        );
        let finished = j
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter().find(|c| {
                    (c.type_ == "Failed" || c.type_ == "Complete")
                        && c.status == alcove_crds::condition::TRUE
                })
            })
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0);
        let deadline =
            crate::retention::policy::deadline(finished.unwrap_or_else(|| ctx.now()), window);
        if ctx.now() >= deadline {
            if j.metadata.deletion_timestamp.is_none() {
                ignore_missing(jobs.delete(&job_name, &DeleteParams::background()).await)?;
                ctx.event(
                    kb,
                    false,
                    "StagedDocumentsErased",
                    "Erase",
                    format!(
                        "failed indexing run {job_name} deleted with its pod ({} after it failed)",
                        window
                    ),
                )
                .await;
            }
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        return Ok(Action::requeue(
            deadline.duration_since(ctx.now()).unsigned_abs().min(ctx.config.resync),
        ));
    }
    Ok(action)
}

async fn write_status(
    kb: &KnowledgeBase,
    ctx: &Context,
    api: &Api<KnowledgeBase>,
    obs: &Observation,
) -> Result<Action> {
    let prev = kb.status.clone().unwrap_or_default();
    let next = builders::desired_status(kb, obs, ctx.now());
    ctx.write_status(api, kb, kb.status.as_ref(), &next).await?;
    let indexed =
        next.conditions.iter().find(|c| c.type_ == alcove_crds::condition::INDEXED).cloned();
    let before = prev
        .conditions
        .iter()
        .find(|c| c.type_ == alcove_crds::condition::INDEXED)
        .map(|c| (c.status.clone(), c.reason.clone()));
    if let Some(c) = indexed
        && before != Some((c.status.clone(), c.reason.clone()))
    {
        match (next.phase, c.reason.as_str()) {
            (Some(KnowledgeBasePhase::Ready), _) => {
                ctx.event(kb, false, "Indexed", "Index", c.message).await
            }
            (_, "Indexing") => ctx.event(kb, false, "Indexing", "Index", c.message).await,
            (_, reason) => ctx.event(kb, true, reason, "Index", c.message).await,
        }
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// Deletion: stop indexing, then — once no instance's pod mounts it — release the volume to
/// retention (the tenant's knowledge-base window).
async fn destroy(kb: &KnowledgeBase, ctx: &Context) -> Result<Action> {
    if !kb.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = kb.namespace().unwrap_or_default();
    let name = kb.name_any();
    let client = &ctx.client;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    for j in ctx.caches.jobs.state().iter().filter(|j| {
        j.namespace().as_deref() == Some(ns.as_str())
            && j.labels().get(LABEL_KNOWLEDGE_BASE) == Some(&name)
    }) {
        if j.metadata.deletion_timestamp.is_none() {
            ignore_missing(jobs.delete(&j.name_any(), &DeleteParams::background()).await)?;
        }
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let inline_name = builders::inline_config_map_name(&name);
    if find(&ctx.caches.config_maps, &ns, &inline_name).is_some() {
        ignore_missing(config_maps.delete(&inline_name, &DeleteParams::default()).await)?;
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let np_name = builders::network_policy_name(&name);
    if find(&ctx.caches.network_policies, &ns, &np_name).is_some() {
        ignore_missing(policies.delete(&np_name, &DeleteParams::default()).await)?;
    }
    let claim = builders::pvc_name(&name);
    let users: Vec<String> = ctx
        .caches
        .by_namespace
        .pods
        .objects(&ctx.caches.pods, &ns)
        .iter()
        .filter(|p| crate::context::mounted_claims(p).contains(&claim.as_str()))
        .map(|p| p.name_any())
        .collect();
    if !users.is_empty() {
        // The retention window starts when no server reads the index any more.
        tracing::info!(knowledge_base = %key(kb), pods = ?users, "knowledge base deleted; its volume is released once no pod mounts it");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if let Some(pvc) = find(&ctx.caches.pvcs, &ns, &claim) {
        crate::retention::release(ctx, &pvc, alcove_crds::DataClass::KnowledgeBase).await?;
    }
    let kbs: Api<KnowledgeBase> = Api::namespaced(client.clone(), &ns);
    remove_finalizer(&kbs, kb, FINALIZER).await?;
    Ok(Action::await_change())
}

fn error_policy(kb: Arc<KnowledgeBase>, error: &Error, ctx: Arc<Context>) -> Action {
    controller::error_policy(&ctx, CONTROLLER, &*kb, error)
}

/// The KnowledgeBase controller, ready to run.
pub fn controller<S>(
    ctx: Arc<Context>,
    h: &Handles,
    shutdown: S,
) -> impl std::future::Future<Output = ()> + Send + use<S>
where
    S: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    fn by_label<K: Resource>(obj: K) -> Option<ObjectRef<KnowledgeBase>> {
        let ns = obj.namespace()?;
        obj.labels().get(LABEL_KNOWLEDGE_BASE).map(|n| ObjectRef::new(n).within(&ns))
    }
    // A ConfigMap a source names: its change re-indexes. (Secrets are not watched, to keep
    // tenant secrets out of the operator's memory; their changes are seen at the next resync.)
    let store = ctx.caches.knowledge_bases.clone();
    let naming = move |cm: ConfigMap| {
        let (ns, name) = (cm.namespace().unwrap_or_default(), cm.name_any());
        store
            .state()
            .into_iter()
            .filter(|k| {
                k.namespace().as_deref() == Some(ns.as_str())
                    && k.spec
                        .sources
                        .iter()
                        .any(|s| s.config_map.as_ref().is_some_and(|r| r.name == name))
            })
            .map(|k| ObjectRef::from_obj(&*k))
            .collect::<Vec<_>>()
    };
    let store = ctx.caches.knowledge_bases.clone();
    let of_tenant = move |t: Tenant| {
        let ns = crate::names::namespace_name(&t.name_any());
        store
            .state()
            .into_iter()
            .filter(|k| k.namespace().as_deref() == Some(ns.as_str()))
            .map(|k| ObjectRef::from_obj(&*k))
            .collect::<Vec<_>>()
    };
    Controller::for_stream(h.knowledge_bases.subscribe(), ctx.caches.knowledge_bases.clone())
        .with_config(crate::controller::bounded())
        .watches_stream(h.jobs.subscribe(), by_label)
        .watches_stream(h.pods.subscribe(), by_label)
        .watches_stream(h.pvcs.subscribe(), by_label)
        .watches_stream(h.config_maps.subscribe(), naming)
        .watches_stream(
            h.tenants.subscribe().predicate_filter(predicates::generation, Default::default()),
            of_tenant,
        )
        .reconcile_all_on(ctx.clock.jumps().unwrap_or_else(|| futures::stream::pending().boxed()))
        .reconcile_on(ctx.shards.taken(ctx.caches.knowledge_bases.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
}
