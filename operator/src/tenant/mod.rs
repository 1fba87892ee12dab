//! The Tenant controller: a thin loop over `builders`. Reads from the caches, applies what
//! changed, writes status only when it differs, raises Events on transitions.

pub mod builders;

use std::sync::Arc;
use std::time::Duration;

use alcove_crds::{
    InferenceInstance, InstancePhase, KnowledgeBase, Tenant, TenantPhase, TenantStatus, condition,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use crate::conditions;
use crate::context::{Context, Handles, find, find_cluster};
use crate::controller::{self, ensure_finalizer, ignore_missing, remove_finalizer};
use crate::error::{Error, Result};

pub const FINALIZER: &str = "alcove.dev/tenant-cleanup";
const CONTROLLER: &str = "tenant";

/// Names of the API-key Secrets of the tenant's instances (tenant admins may read those).
fn api_key_secrets(ctx: &Context, ns: &str) -> Vec<String> {
    ctx.caches
        .by_namespace
        .instances
        .objects(&ctx.caches.instances, ns)
        .iter()
        .map(|i| crate::instance::builders::api_key_secret_name(&i.name_any()))
        .collect()
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    controller::on_workers(async move {
        controller::reconcile(&ctx, CONTROLLER, &*tenant, reconcile_inner(&tenant, &ctx)).await
    })
    .await
}

async fn reconcile_inner(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let name = tenant.name_any();
    let ns = crate::names::namespace_name(&name);
    if tenant.metadata.deletion_timestamp.is_some() {
        return cleanup(tenant, ctx).await;
    }
    if ensure_finalizer(&ctx.writes, &tenants, tenant, FINALIZER).await? {
        // The update comes back as an event; continue from there (or after a resync, should a
        // stale cache have made the write a no-op that brings no event).
        return Ok(Action::requeue(ctx.config.resync));
    }

    // Namespace first: everything else lives in it.
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    ctx.apply(
        &namespaces,
        &builders::namespace(tenant),
        find_cluster(&ctx.caches.namespaces, &ns).as_deref(),
    )
    .await?;

    let quotas: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    let quota_written = ctx
        .apply(
            &quotas,
            &builders::resource_quota(tenant),
            find(&ctx.caches.quotas, &ns, builders::QUOTA).as_deref(),
        )
        .await?;
    let limits: Api<LimitRange> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply(
        &limits,
        &builders::limit_range(tenant),
        find(&ctx.caches.limit_ranges, &ns, builders::LIMITS).as_deref(),
    )
    .await?;

    let netpols: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let mut isolation_repaired = false;
    for p in builders::network_policies(tenant, &ctx.config) {
        let live = find(&ctx.caches.network_policies, &ns, &p.name_any());
        let existed = live.is_some();
        if ctx.apply(&netpols, &p, live.as_deref()).await? && existed {
            isolation_repaired = true;
        }
    }
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), &ns);
    let role = builders::role(tenant, &api_key_secrets(ctx, &ns));
    ctx.apply(&roles, &role, find(&ctx.caches.roles, &ns, builders::ROLE).as_deref()).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply(
        &bindings,
        &builders::role_binding(tenant),
        find(&ctx.caches.role_bindings, &ns, builders::ROLE_BINDING).as_deref(),
    )
    .await?;
    // The owners' own Tenant (read it, delete the account): cluster-scoped, like the Tenant.
    let account = builders::account_role_name(&tenant.name_any());
    let cluster_roles: Api<ClusterRole> = Api::all(ctx.client.clone());
    ctx.apply(
        &cluster_roles,
        &builders::account_role(tenant),
        find_cluster(&ctx.caches.cluster_roles, &account).as_deref(),
    )
    .await?;
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    ctx.apply(
        &cluster_bindings,
        &builders::account_role_binding(tenant),
        find_cluster(&ctx.caches.cluster_role_bindings, &account).as_deref(),
    )
    .await?;

    // The key is created once; an existing one is never touched.
    let live_key = find(&ctx.caches.secrets, &ns, crate::names::KEY_SECRET);
    if live_key.is_none() {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| Error::Other(format!("no randomness for the tenant key: {e}")))?;
        ctx.create(&secrets, &builders::key_secret(tenant, &key), None).await?;
    }
    if isolation_repaired {
        ctx.event(
            tenant,
            true,
            "IsolationRestored",
            "Reconcile",
            format!("a network policy of {ns} had drifted and was restored"),
        )
        .await;
    }
    if quota_written
        && tenant
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition::QUOTA_APPLIED))
    {
        ctx.event(
            tenant,
            false,
            "QuotaUpdated",
            "Reconcile",
            format!("quota of {ns} set from spec.quota"),
        )
        .await;
    }

    // Placement and whether the region can ever host this tenant's GPUs.
    let placement = builders::placement(tenant, &ctx.config);
    let capacity = ctx.caches.nodes.state().iter().any(|n| builders::node_can_host(&placement, n));

    // Aggregates from the tenant's instances.
    let instances: Vec<Arc<InferenceInstance>> =
        ctx.caches.by_namespace.instances.objects(&ctx.caches.instances, &ns);
    let gpus: i32 = instances
        .iter()
        .filter(|i| {
            matches!(
                i.status.as_ref().and_then(|s| s.phase),
                Some(InstancePhase::Ready | InstancePhase::Provisioning)
            )
        })
        .map(|i| i.spec.gpu.count)
        .sum();
    ctx.metrics.gpus_in_use.with_label_values(&[&name]).set(gpus as i64);

    let now = ctx.now();
    let previous = tenant.status.clone().unwrap_or_default();
    let generation = tenant.metadata.generation;
    let region = &tenant.spec.region;
    let ready = if capacity {
        conditions::condition(
            &previous.conditions,
            condition::READY,
            true,
            "Reconciled",
            &format!("namespace {ns} is isolated and the region has capacity"),
            generation,
            now,
        )
    } else {
        conditions::condition(
            &previous.conditions,
            condition::READY,
            false,
            "NoCapacityInRegion",
            &format!(
                "no node in region {region} can host a GPU instance of this {} tenant",
                tenant.spec.tier.as_str()
            ),
            generation,
            now,
        )
    };
    let capacity_lost = !capacity && conditions::transitioned(&previous.conditions, &ready);
    let first_ready = !previous.conditions.iter().any(|c| c.type_ == condition::READY);
    let mut desired = TenantStatus {
        namespace: Some(ns.clone()),
        phase: Some(if capacity { TenantPhase::Ready } else { TenantPhase::Degraded }),
        conditions: vec![
            ready,
            conditions::condition(
                &previous.conditions,
                condition::QUOTA_APPLIED,
                true,
                "Applied",
                &format!(
                    "ResourceQuota {} and LimitRange {} applied",
                    builders::QUOTA,
                    builders::LIMITS
                ),
                generation,
                now,
            ),
            conditions::condition(
                &previous.conditions,
                condition::ISOLATION_APPLIED,
                true,
                "Applied",
                "network policies, RBAC and the encryption key are in place",
                generation,
                now,
            ),
        ],
        observed_generation: generation,
        placement: Some(placement),
        instances: instances.len() as i32,
        gpus_in_use: gpus,
        ..previous.clone()
    };
    // Billing: the customer, the balance mirrored from the ledger and the running instances.
    let standing = crate::billing::ensure_customer(ctx, tenant).await;
    let ledger = crate::billing::cached_ledger(ctx, &name);
    let runs: Vec<crate::billing::account::Run> = instances
        .iter()
        .filter_map(|i| {
            let started_at = i.status.as_ref()?.started_at.as_deref()?.parse().ok()?;
            Some(crate::billing::account::Run {
                uid: i.uid().unwrap_or_default(),
                started_at,
                gpus: crate::instance::lifecycle::billed_gpus(i),
                per_gpu_hour: crate::billing::price(ctx, tenant, i),
            })
        })
        .collect();
    let tokens_unbilled: i64 = match &ledger {
        Some(l) => {
            instances.iter().map(|i| crate::billing::unbilled_tokens(ctx, tenant, i, l)).sum()
        }
        None => 0,
    };
    let billing = crate::billing::account::verdict(
        tenant,
        &standing,
        ledger.as_ref(),
        &runs,
        tokens_unbilled,
        now,
    );
    desired.billing = billing.status.clone();
    desired.conditions.push(billing.condition.clone());
    if let Some(b) = &billing.status {
        ctx.metrics
            .credit
            .with_label_values(&[&name, b.currency.as_deref().unwrap_or_default()])
            .set(b.balance);
        ctx.metrics.low_balance.with_label_values(&[&name]).set(billing.low as i64);
    }
    // Ledgers of destroyed instances keep their totals; their meters go once the instance has.
    if let Some(l) = &ledger
        && l.meters.values().any(|m| m.closed)
    {
        let uids: std::collections::HashSet<String> =
            ctx.caches.instances.state().iter().filter_map(|i| i.uid()).collect();
        if l.meters.iter().any(|(uid, m)| m.closed && !uids.contains(uid)) {
            crate::billing::store::update(&ctx.client, &ctx.config.namespace, tenant, |l| {
                l.prune(|uid| uids.contains(uid))
            })
            .await?;
        }
    }
    desired.erasure = last_receipts(ctx, &tenant.name_any()).await?;
    desired.erase_after = previous.erase_after.clone();
    // The key's place and age (never the key): the data report shows it to the owners.
    desired.encryption_key = live_key
        .as_deref()
        .and_then(|k| k.metadata.creation_timestamp.as_ref())
        .map(|at| alcove_crds::tenant::EncryptionKey {
            secret: crate::names::KEY_SECRET.into(),
            created_at: alcove_clock::format(at.0),
        });
    // Events accompany status transitions, so a repeated reconcile repeats neither.
    let message = desired.conditions[0].message.clone();
    let billing_changed = conditions::transitioned(&previous.conditions, &billing.condition);
    if ctx.write_status(&tenants, tenant, tenant.status.as_ref(), &desired).await? {
        if first_ready {
            ctx.event(
                tenant,
                false,
                "Provisioned",
                "Reconcile",
                format!("namespace {ns} created with quota, policies, RBAC and key"),
            )
            .await;
        }
        if capacity_lost {
            ctx.event(tenant, true, "NoCapacityInRegion", "Placement", message).await;
        }
        if billing_changed {
            let c = &billing.condition;
            let was_exhausted = previous.conditions.iter().any(|p| {
                p.type_ == condition::BILLING && p.reason == alcove_crds::reason::CREDIT_EXHAUSTED
            });
            match c.reason.as_str() {
                alcove_crds::reason::CREDIT_EXHAUSTED => {
                    ctx.event(
                        tenant,
                        true,
                        alcove_crds::reason::CREDIT_EXHAUSTED,
                        "Billing",
                        c.message.clone(),
                    )
                    .await
                }
                alcove_crds::reason::LOW_BALANCE => {
                    ctx.event(
                        tenant,
                        true,
                        alcove_crds::reason::LOW_BALANCE,
                        "Billing",
                        c.message.clone(),
                    )
                    .await
                }
                alcove_crds::reason::ACTIVE if was_exhausted => {
                    ctx.event(tenant, false, "CreditRestored", "Billing", c.message.clone()).await
                }
                alcove_crds::reason::STRIPE_ERROR | alcove_crds::reason::DISABLED => {
                    ctx.event(tenant, true, &c.reason, "Billing", c.message.clone()).await
                }
                _ => {}
            }
        }
    }
    let wake = billing
        .wake
        .map_or(ctx.config.resync, |w| w.clamp(Duration::from_secs(1), ctx.config.resync));
    let wake = if matches!(standing, crate::billing::account::Standing::StripeError(_)) {
        Duration::from_secs(10)
    } else {
        wake
    };
    Ok(Action::requeue(wake))
}

/// The latest erasure receipts, mirrored into the status (the full list is in the receipts
/// ConfigMap in the operator's namespace).
async fn last_receipts(ctx: &Context, tenant: &str) -> Result<Vec<alcove_crds::ErasureRecord>> {
    let all = crate::retention::receipts(&ctx.client, &ctx.config.namespace, tenant).await?;
    Ok(all[all.len().saturating_sub(20)..].to_vec())
}

/// Deletion: destroy the tenant's instances and knowledge bases at once (billing stops), keep
/// its namespace and volumes for the account-data window from the deletion (the erase window,
/// paused by a legal hold), then erase every remaining volume, the encryption key (crypto-
/// shredding whatever escaped), and the namespace, each with a receipt; the Tenant goes last.
async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    use crate::retention::policy;
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let name = tenant.name_any();
    let ns = crate::names::namespace_name(&name);
    let window = policy::window(
        Some(tenant),
        alcove_crds::DataClass::AccountData,
        ctx.config.default_window(alcove_crds::DataClass::AccountData),
    );
    // The window starts when the operator first sees the deletion (by the one clock), and the
    // deadline is kept in the status, so a restart or a changed spec never moves it later.
    let erase_after = tenant
        .status
        .as_ref()
        .and_then(|s| s.erase_after.as_deref())
        .and_then(alcove_clock::parse)
        .unwrap_or_else(|| policy::deadline(ctx.now(), window));
    let mut s = tenant.status.clone().unwrap_or_default();
    s.phase = Some(TenantPhase::Erasing);
    s.erase_after = Some(alcove_clock::format(erase_after));
    s.erasure = last_receipts(ctx, &name).await?;
    let first = tenant.status.as_ref().and_then(|s| s.phase) != Some(TenantPhase::Erasing);
    ctx.write_status(&tenants, tenant, tenant.status.as_ref(), &s).await?;
    if first {
        ctx.event(
            tenant,
            false,
            "Erasing",
            "Delete",
            format!(
                "instances and knowledge bases destroyed; the tenant's data in {ns} is erased at {} ({})",
                alcove_clock::format(erase_after),
                policy::rule(alcove_crds::DataClass::AccountData, window)
            ),
        )
        .await;
    }
    let instances: Api<InferenceInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let kbs: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), &ns);
    let live_instances: Vec<Arc<InferenceInstance>> =
        ctx.caches.by_namespace.instances.objects(&ctx.caches.instances, &ns);
    let live_kbs: Vec<Arc<KnowledgeBase>> =
        ctx.caches.by_namespace.knowledge_bases.objects(&ctx.caches.knowledge_bases, &ns);
    for i in &live_instances {
        if i.metadata.deletion_timestamp.is_none() {
            ignore_missing(instances.delete(&i.name_any(), &DeleteParams::background()).await)?;
        }
    }
    for k in &live_kbs {
        if k.metadata.deletion_timestamp.is_none() {
            ignore_missing(kbs.delete(&k.name_any(), &DeleteParams::background()).await)?;
        }
    }
    if !live_instances.is_empty() || !live_kbs.is_empty() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    if tenant.spec.legal_hold {
        return Ok(Action::await_change());
    }
    let now = ctx.now();
    if now < erase_after {
        return Ok(Action::requeue(
            erase_after.duration_since(now).unsigned_abs().max(Duration::from_millis(100)),
        ));
    }
    // Erase: the volumes (the tenant's PVCs, cached or not), then the key, then the namespace.
    let class = alcove_crds::DataClass::AccountData;
    let rule = policy::rule(class, window);
    let receipt =
        |what: String| policy::receipt(what, class.as_str(), erase_after, ctx.now(), rule.clone());
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let live_ns = namespaces.get_opt(&ns).await?;
    if live_ns.is_some() {
        let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &ns);
        for pvc in pvcs.list(&Default::default()).await?.items {
            let pending =
                crate::retention::volume_erasure(&pvc, class.as_str(), erase_after, rule.clone());
            crate::retention::erase_volume_with_receipt(ctx, &name, &pvc, &pending).await?;
        }
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(secret) = secrets.get_opt(crate::names::KEY_SECRET).await? {
            let pending = crate::retention::Pending {
                what: format!(
                    "Secret {ns}/{} (the tenant's encryption key)",
                    crate::names::KEY_SECRET
                ),
                data_class: class.as_str().into(),
                deadline: alcove_clock::format(erase_after),
                rule: rule.clone(),
                gone: vec![crate::retention::Gone {
                    kind: "Secret".into(),
                    namespace: ns.clone(),
                    name: crate::names::KEY_SECRET.into(),
                    uid: secret.uid(),
                }],
            };
            crate::retention::erase(ctx, &name, &pending, || async {
                ignore_missing(
                    secrets.delete(crate::names::KEY_SECRET, &DeleteParams::default()).await,
                )?;
                Ok(())
            })
            .await?;
        }
    }
    match live_ns {
        Some(n) => {
            if n.metadata.deletion_timestamp.is_none() {
                ignore_missing(namespaces.delete(&ns, &DeleteParams::background()).await)?;
            }
            Ok(Action::requeue(Duration::from_millis(500)))
        }
        None => {
            // The last receipt goes into the status (the next pass writes it) before the Tenant
            // goes, so its final state, which the dashboard mails to the owners, holds them all.
            if !s.erasure.iter().any(|r| r.what == format!("Namespace {ns}")) {
                crate::retention::record(ctx, &name, &receipt(format!("Namespace {ns}"))).await?;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            remove_finalizer(&tenants, tenant, FINALIZER).await?;
            ctx.metrics.gpus_in_use.with_label_values(&[&name]).set(0);
            Ok(Action::await_change())
        }
    }
}

fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    controller::error_policy(&ctx, CONTROLLER, &*tenant, error)
}

/// The Tenant controller, ready to run.
pub fn controller<S>(
    ctx: Arc<Context>,
    h: &Handles,
    shutdown: S,
) -> impl std::future::Future<Output = ()> + Send + use<S>
where
    S: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    // Instances and knowledge bases change a tenant's aggregates; their namespace names the tenant.
    fn by_namespace<K: Resource>(obj: K) -> Option<ObjectRef<Tenant>> {
        obj.namespace().and_then(|n| crate::names::tenant_of_namespace(&n).map(ObjectRef::new))
    }
    // Children are namespaced while the Tenant is cluster-scoped, so owner references cannot map
    // them back (the mapping assumes one namespace); their tenant label does.
    fn by_label<K: Resource>(obj: K) -> Option<ObjectRef<Tenant>> {
        obj.labels().get(alcove_crds::LABEL_TENANT).map(|t| ObjectRef::new(t))
    }
    // Node changes can give or take a region's capacity: re-check every tenant.
    let node_changes = h.nodes.subscribe().map(|_| ());
    // A new erasure receipt: the status mirrors it.
    let nudged = tokio_stream::wrappers::BroadcastStream::new(ctx.tenant_nudges.subscribe())
        .filter_map(|r| futures::future::ready(r.ok().map(|t| ObjectRef::new(&t))));
    Controller::for_stream(h.tenants.subscribe(), ctx.caches.tenants.clone())
        .with_config(crate::controller::bounded())
        .watches_stream(h.namespaces.subscribe(), by_label)
        .watches_stream(h.quotas.subscribe(), by_label)
        .watches_stream(h.limit_ranges.subscribe(), by_label)
        .watches_stream(h.network_policies.subscribe(), by_label)
        .watches_stream(h.roles.subscribe(), by_label)
        .watches_stream(h.role_bindings.subscribe(), by_label)
        .watches_stream(h.cluster_roles.subscribe(), by_label)
        .watches_stream(h.cluster_role_bindings.subscribe(), by_label)
        .watches_stream(h.secrets.subscribe(), by_label)
        // The billing ledger (operator namespace) carries the tenant label too.
        .watches_stream(h.config_maps.subscribe(), by_label)
        .watches_stream(h.instances.subscribe(), by_namespace)
        .watches_stream(h.knowledge_bases.subscribe(), by_namespace)
        .reconcile_all_on(node_changes)
        .reconcile_on(nudged)
        .reconcile_all_on(ctx.clock.jumps().unwrap_or_else(|| futures::stream::pending().boxed()))
        .reconcile_on(ctx.shards.taken(ctx.caches.tenants.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
}
