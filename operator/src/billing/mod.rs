//! Billing: prepaid credit, GPU time metered to Stripe, suspension at zero.
//!
//! - `stripe`: the Stripe calls (customers, invoice items as usage records, payment intents).
//! - `ledger`: per tenant, what was credited and how far each instance is billed (a ConfigMap in
//!   the operator's namespace, never erased by retention).
//! - `meter`: pure arithmetic of periods and prices.
//! - `account`: pure; a tenant's balance, `Billing` condition and suspension instant.
//! - `webhook`: `POST /webhooks/stripe`, signed top-ups.
//!
//! The controllers call `ensure_customer` (tenant) and `report` (instance). The order of a report
//! is what keeps anyone from being charged twice: Stripe record first (its idempotency key is the
//! instance UID and the period start), ledger second. A crash between the two leaves a record the
//! ledger does not know; the first report of each instance after a start looks for such records
//! and adopts them instead of making new ones.

pub mod account;
pub mod ledger;
pub mod meter;
pub mod runtime;
pub mod store;
pub mod stripe;
pub mod webhook;

use std::time::Duration;

use alcove_crds::{InferenceInstance, Tenant};
use jiff::Timestamp;
use kube::ResourceExt;

use crate::context::{Context, find, find_cluster};
use crate::error::Result;
use ledger::{Ledger, TokenUsage, Usage};
use meter::Metered;

/// The tenant's ledger as the cache has it.
pub fn cached_ledger(ctx: &Context, tenant: &str) -> Option<Ledger> {
    find(&ctx.caches.config_maps, &ctx.config.namespace, &ledger::name(tenant))
        .as_deref()
        .and_then(ledger::parse)
}

/// Makes sure the tenant has its Stripe customer and the ledger names it. Returns its standing.
pub async fn ensure_customer(ctx: &Context, tenant: &Tenant) -> account::Standing {
    let (Some(stripe), Some(spec)) = (ctx.billing.stripe.as_ref(), tenant.spec.billing.as_ref())
    else {
        return if ctx.billing.stripe.is_none() {
            account::Standing::Disabled
        } else {
            account::Standing::NotCharged
        };
    };
    if cached_ledger(ctx, &tenant.name_any()).is_some_and(|l| l.customer_id.is_some()) {
        return account::Standing::Account;
    }
    let name = tenant.name_any();
    let uid = tenant.uid().unwrap_or_default();
    let result = async {
        // The cache may be behind our own write: the API server has the truth.
        if let Some(id) = store::read(&ctx.client, &ctx.config.namespace, &name)
            .await?
            .and_then(|l| l.customer_id)
        {
            return Ok::<_, crate::error::Error>((id, false));
        }
        let id = if spec.customer == "create" {
            // A customer made before a crash (or by another replica) is found, not made again.
            match stripe.find_customer(&uid).await? {
                Some(id) => id,
                None => {
                    let id = stripe.create_customer(&name, &uid, &tenant.spec.display_name).await?;
                    ctx.billing.crash_point("customer-created");
                    id
                }
            }
        } else {
            stripe.link_customer(&spec.customer, &name, &uid).await?;
            spec.customer.clone()
        };
        store::update(&ctx.client, &ctx.config.namespace, tenant, |l| {
            let changed = l.customer_id.as_deref() != Some(id.as_str());
            l.customer_id = Some(id.clone());
            changed
        })
        .await?;
        Ok((id, true))
    }
    .await;
    match result {
        Ok((id, true)) => {
            ctx.event(
                tenant,
                false,
                "CustomerLinked",
                "Billing",
                format!("Stripe customer {id} bills this tenant in {}", spec.currency),
            )
            .await;
            account::Standing::Account
        }
        Ok((_, false)) => account::Standing::Account,
        Err(e) => {
            tracing::warn!(tenant = %name, error = %e, "could not set up the Stripe customer");
            account::Standing::StripeError(e.to_string())
        }
    }
}

/// The GPU product an instance runs on: its node's label, else what its spec asks for.
fn product(ctx: &Context, i: &InferenceInstance) -> Option<String> {
    let node = i.status.as_ref().and_then(|s| s.node.clone());
    node.and_then(|n| find_cluster(&ctx.caches.nodes, &n))
        .and_then(|n| n.labels().get("nvidia.com/gpu.product").cloned())
        .or_else(|| i.spec.gpu.product.clone())
}

/// The price of an instance's GPU-hour for this tenant, if the table has one.
pub fn price(ctx: &Context, tenant: &Tenant, i: &InferenceInstance) -> Option<i64> {
    let currency = &tenant.spec.billing.as_ref()?.currency;
    ctx.config.billing.gpu_price(currency, product(ctx, i).as_deref())
}

/// What the gateway published about an instance, as the cache has it.
pub fn gateway_usage(ctx: &Context, i: &InferenceInstance) -> Option<crate::usage::GatewayUsage> {
    let name = alcove_crds::gateway_usage::name(&i.uid()?);
    find(&ctx.caches.config_maps, &ctx.config.namespace, &name)
        .map(|cm| crate::usage::GatewayUsage::of(&cm))
}

/// The token prices of an instance for this tenant, if the table has them.
fn token_price(
    ctx: &Context,
    tenant: &Tenant,
    i: &InferenceInstance,
) -> Option<crate::config::TokenPrice> {
    let currency = &tenant.spec.billing.as_ref()?.currency;
    let model = crate::instance::builders::served_name(i);
    ctx.config.billing.token_price(currency, &model, product(ctx, i).as_deref())
}

/// What an instance's tokens not yet billed would cost (part of the tenant's balance).
pub fn unbilled_tokens(ctx: &Context, tenant: &Tenant, i: &InferenceInstance, l: &Ledger) -> i64 {
    let (Some(usage), Some(price)) = (gateway_usage(ctx, i), token_price(ctx, tenant, i)) else {
        return 0;
    };
    let uid = i.uid().unwrap_or_default();
    let (p, c) = l.tokens(&uid);
    meter::token_charge(
        usage.prompt_tokens - p,
        usage.completion_tokens - c,
        price,
        l.token_carry(&uid),
    )
    .0
}

/// Bills the tokens the gateway counted for an instance beyond what the ledger has billed: one
/// Stripe record keyed by the totals it bills through, then the ledger (the order that keeps a
/// crash from charging twice; records a crash left unrecorded are adopted after a restart).
///
/// Until a whole minor unit is due nothing is recorded, so each record covers a contiguous range
/// of the totals; `last` (the instance is being destroyed) records the remainder in the ledger.
pub async fn report_tokens(
    ctx: &Context,
    tenant: &Tenant,
    i: &InferenceInstance,
    last: bool,
) -> Result<()> {
    let (Some(stripe), Some(spec)) = (ctx.billing.stripe.as_ref(), tenant.spec.billing.as_ref())
    else {
        return Ok(());
    };
    let (Some(usage), Some(price)) = (gateway_usage(ctx, i), token_price(ctx, tenant, i)) else {
        return Ok(());
    };
    let uid = i.uid().unwrap_or_default();
    let cached = cached_ledger(ctx, &tenant.name_any()).unwrap_or_default();
    let Some(customer) = cached.customer_id.clone() else { return Ok(()) };
    let (p, c) = cached.tokens(&uid);
    if usage.prompt_tokens <= p && usage.completion_tokens <= c {
        return Ok(());
    }
    let instance = crate::context::key(i);
    let mut fresh = store::read(&ctx.client, &ctx.config.namespace, &tenant.name_any())
        .await?
        .unwrap_or_default();
    let checked = format!("tokens/{uid}");
    if !ctx.billing.checked(&checked) {
        let (p, c) = fresh.tokens(&uid);
        let unknown: Vec<TokenUsage> = stripe
            .find_token_usage(&customer, &uid)
            .await?
            .into_iter()
            .filter(|t| t.prompt_through > p || t.completion_through > c)
            .collect();
        if !unknown.is_empty() {
            tracing::info!(%instance, records = unknown.len(), "adopting token records made before a restart");
            fresh = store::update(&ctx.client, &ctx.config.namespace, tenant, |l| {
                let mut changed = false;
                for t in &unknown {
                    changed |= l.record_tokens(&uid, &instance, t);
                }
                changed
            })
            .await?;
        }
        ctx.billing.mark_checked(&checked);
    }
    let (p, c) = fresh.tokens(&uid);
    if usage.prompt_tokens <= p && usage.completion_tokens <= c {
        return Ok(());
    }
    let through = (usage.prompt_tokens.max(p), usage.completion_tokens.max(c));
    let (amount, carry) =
        meter::token_charge(through.0 - p, through.1 - c, price, fresh.token_carry(&uid));
    let t = TokenUsage { prompt_through: through.0, completion_through: through.1, amount, carry };
    if amount == 0 && !last {
        return Ok(());
    }
    // A last remainder under a minor unit stays in the ledger: no Stripe record of 0.
    if amount > 0 {
        let id = stripe
            .create_token_usage(&stripe::TokenRecord {
                customer: &customer,
                currency: &spec.currency,
                tenant: &tenant.name_any(),
                instance_uid: &uid,
                instance: &instance,
                model: &crate::instance::builders::served_name(i),
                from: (p, c),
                usage: &t,
            })
            .await?;
        ctx.billing.crash_point("token-usage-reported");
        ctx.metrics.usage_records.with_label_values(&[&tenant.name_any()]).inc();
        tracing::info!(%instance, record = %id, prompt_through = t.prompt_through, completion_through = t.completion_through, amount, "token usage reported");
    }
    store::update(&ctx.client, &ctx.config.namespace, tenant, |l| {
        l.record_tokens(&uid, &instance, &t)
    })
    .await?;
    Ok(())
}

/// Reports what is due of an instance's run that started at `run_start` (None: not running):
/// whole intervals while it runs, everything up to `end` when the run ends there. `destroyed`
/// closes the instance's meter.
pub async fn report(
    ctx: &Context,
    tenant: &Tenant,
    i: &InferenceInstance,
    run_start: Option<Timestamp>,
    end: Option<Timestamp>,
    destroyed: bool,
) -> Metered {
    match report_inner(ctx, tenant, i, run_start, end, destroyed).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(instance = %crate::context::key(i), error = %e, "usage report failed; retrying");
            Metered::Failed(e.to_string())
        }
    }
}

async fn report_inner(
    ctx: &Context,
    tenant: &Tenant,
    i: &InferenceInstance,
    run_start: Option<Timestamp>,
    end: Option<Timestamp>,
    destroyed: bool,
) -> Result<Metered> {
    let Some(stripe) = ctx.billing.stripe.as_ref() else {
        return Ok(Metered::Off(
            alcove_crds::reason::DISABLED,
            "billing is disabled: the operator has no Stripe API key".into(),
        ));
    };
    let Some(spec) = tenant.spec.billing.as_ref() else {
        return Ok(Metered::Off(
            alcove_crds::reason::NOT_CHARGED,
            format!(
                "tenant {} has no spec.billing: usage is metered but nobody is charged",
                tenant.name_any()
            ),
        ));
    };
    let cached = cached_ledger(ctx, &tenant.name_any()).unwrap_or_default();
    let Some(customer) = cached.customer_id.clone() else {
        return Ok(Metered::Off(
            "AwaitingCustomer",
            format!("waiting for tenant {}'s Stripe customer", tenant.name_any()),
        ));
    };
    let uid = i.uid().unwrap_or_default();
    let interval = ctx.billing.interval;
    let now = ctx.now();
    let Some(run_start) = run_start else {
        if destroyed && cached.meters.get(&uid).is_some_and(|m| !m.closed) {
            let instance = crate::context::key(i);
            store::update(&ctx.client, &ctx.config.namespace, tenant, |l| l.close(&uid, &instance))
                .await?;
        }
        return Ok(Metered::Billed { through: cached.through(&uid), next: None });
    };
    let gpus = crate::instance::lifecycle::billed_gpus(i);
    let product = product(ctx, i).unwrap_or_else(|| "*".into());
    let Some(per_gpu_hour) = ctx.config.billing.gpu_price(&spec.currency, Some(&product)) else {
        return Ok(Metered::Off(
            "NoPrice",
            format!(
                "the price table has no {} price for {product}: this instance is not charged",
                spec.currency
            ),
        ));
    };
    let billed = |through: Option<Timestamp>| Metered::Billed {
        through,
        next: end.is_none().then(|| {
            let at = meter::next_report(run_start, through, interval);
            if at > now { at.duration_since(now).unsigned_abs() } else { Duration::ZERO }
        }),
    };
    // Cheap check on the cache first; the API server's copy decides.
    if meter::due(run_start, cached.through(&uid), now, end, interval).is_none() && !destroyed {
        return Ok(billed(cached.through(&uid)));
    }
    let fresh = store::read(&ctx.client, &ctx.config.namespace, &tenant.name_any())
        .await?
        .unwrap_or_default();
    let instance = crate::context::key(i);
    let Some(period) = meter::due(run_start, fresh.through(&uid), now, end, interval) else {
        if destroyed && !fresh.meters.get(&uid).is_some_and(|m| m.closed) {
            store::update(&ctx.client, &ctx.config.namespace, tenant, |l| l.close(&uid, &instance))
                .await?;
        }
        return Ok(billed(fresh.through(&uid)));
    };
    if !ctx.billing.checked(&uid) {
        // Records a crash left unrecorded are adopted, not made again.
        let found = stripe.find_usage(&customer, &uid, period.from).await?;
        if !found.is_empty() {
            tracing::info!(%instance, records = found.len(), "adopting usage records made before a restart");
            let l = store::update(&ctx.client, &ctx.config.namespace, tenant, |l| {
                // Every record is applied (no short-circuit); any of them may change the ledger.
                let mut changed = false;
                for u in &found {
                    changed |= l.record(&uid, &instance, u);
                }
                changed
            })
            .await?;
            ctx.billing.mark_checked(&uid);
            // The next reconcile (due at once) reports what remains.
            return Ok(billed(l.through(&uid)));
        }
        ctx.billing.mark_checked(&uid);
    }
    let charge = meter::charge(period, gpus, per_gpu_hour, fresh.carry(&uid));
    let usage = Usage {
        from: period.from,
        to: period.to,
        gpu_millis: charge.gpu_millis,
        amount: charge.amount,
        carry: charge.carry,
    };
    let record = stripe::UsageRecord {
        customer: &customer,
        currency: &spec.currency,
        tenant: &tenant.name_any(),
        instance_uid: &uid,
        instance: &instance,
        product: &product,
        gpus,
        usage: &usage,
    };
    let id = stripe.create_usage(&record).await?;
    ctx.billing.crash_point("usage-reported");
    ctx.metrics.usage_records.with_label_values(&[&tenant.name_any()]).inc();
    tracing::info!(%instance, record = %id, from = %usage.from, to = %usage.to, gpu_ms = usage.gpu_millis, amount = usage.amount, "usage reported");
    let l = store::update(&ctx.client, &ctx.config.namespace, tenant, |l| {
        let recorded = l.record(&uid, &instance, &usage);
        let closed = destroyed && l.close(&uid, &instance);
        recorded || closed
    })
    .await?;
    Ok(billed(l.through(&uid)))
}
