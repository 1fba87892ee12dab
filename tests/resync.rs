//! A reconcile of an unchanged object makes no write: with a 2 s resync, an operator at steady
//! state (Ready instances, an indexed knowledge base, tenants with and without credit) writes
//! nothing across several full resyncs, with billing disabled and with billing enabled
//! (localstripe). devcluster's request metrics count the writes by resource.

use std::collections::BTreeMap;
use std::time::Duration;

use alcove_tests::*;

const RESYNC: &str = "2";

/// Waits out `resyncs` full resync periods and returns the writes made meanwhile (Lease renewals
/// and Events aside), by resource, after checking that every controller did reconcile.
async fn writes_across_resyncs(
    p: &Platform,
    resyncs: u64,
    controllers: &[(&str, f64)],
) -> BTreeMap<String, f64> {
    let reconciles =
        |m: &str, c: &str| metric(m, "alcove_reconcile_total", &format!("controller=\"{c}\""));
    let before = p.writes_by_resource().await;
    let m0 = p.operators[0].metrics().await;
    tokio::time::sleep(Duration::from_secs(resyncs * RESYNC.parse::<u64>().unwrap() + 1)).await;
    let m1 = p.operators[0].metrics().await;
    let after = p.writes_by_resource().await;
    for (c, objects) in controllers {
        let ran = reconciles(&m1, c) - reconciles(&m0, c);
        assert!(
            ran >= objects * resyncs as f64,
            "{c}: {ran} reconciles in {resyncs} resyncs of {objects} objects"
        );
    }
    after
        .into_iter()
        .filter(|(k, _)| k != "leases" && k != "events")
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_state_without_billing_writes_nothing() {
    let mut p = Platform::start_with(with_inference).await;
    p.spawn_operator(&["--resync-seconds", RESYNC]).await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.ok(&["apply", "-f", &example("good/knowledgebase.yaml")]).await;
    p.ok(&["apply", "-f", &example("good/instance-safetensors.yaml")]).await;
    p.wait_condition("kb/handbook -n tenant-startup", "Indexed", 180).await;
    p.ok(&["apply", "-f", &example("good/instance-with-kb.yaml")]).await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 180).await;
    p.wait_condition("inst/assistant -n tenant-startup", "Ready", 180).await;
    let billing = p
        .jsonpath(
            &["get", "inst", "chat", "-n", "tenant-startup"],
            "{.status.conditions[?(@.type==\"Billing\")].reason}",
        )
        .await;
    assert_eq!(billing, alcove_crds::reason::DISABLED, "billing is off here");
    // Let the last aggregates (tenant instance counts, GPUs in use) land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.settled_under_faults().await;
    let rv = p
        .jsonpath(&["get", "inst", "chat", "-n", "tenant-startup"], "{.metadata.resourceVersion}")
        .await;

    let writes =
        writes_across_resyncs(&p, 2, &[("tenant", 1.0), ("instance", 2.0), ("knowledgebase", 1.0)])
            .await;
    assert!(writes.is_empty(), "writes across two resyncs of an unchanged world: {writes:?}");
    assert_eq!(
        p.jsonpath(&["get", "inst", "chat", "-n", "tenant-startup"], "{.metadata.resourceVersion}")
            .await,
        rv,
        "the instance was rewritten"
    );
}

fn tenant(name: &str) -> String {
    format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n  displayName: {name}\n  tier: basic\n  region: tw-taipei-1\n  billing: {{customer: create, currency: usd, lowBalanceThreshold: 10, suspendGracePeriod: 1m}}\n"
    )
}

fn instance(tenant: &str) -> String {
    format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {{name: chat, namespace: tenant-{tenant}}}\nspec:\n  model: {{format: safetensors, source: {{platform: default}}}}\n  gpu: {{count: 1}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_state_with_billing_writes_nothing() {
    // Simulated servers (Ready without a process): this is about the operator's writes. The
    // injected clock decides what falls due; it runs behind the real one so localstripe's
    // signatures stay within the webhook's tolerance.
    let (mut p, stripe, clock, billing_args) = billing_platform().await;
    let t0 = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 200).unwrap();
    clock.set(t0);
    let mut args = vec!["--resync-seconds", RESYNC];
    args.extend(billing_args.iter().map(String::as_str));
    let n = p.spawn_operator(&args).await;
    let hook = format!("{}/webhooks/stripe", p.operators[n].http);
    stripe.send_webhooks_to(&hook).await;

    // acme has credit; broke has none and is suspended once its grace is over.
    for t in ["acme", "broke"] {
        p.ok_in(&["apply", "-f", "-"], &tenant(t)).await;
    }
    let customer = until_some("acme's Stripe customer", Duration::from_secs(60), || async {
        Some(p.jsonpath(&["get", "tenant", "acme"], "{.status.billing.customerId}").await)
            .filter(|s| !s.is_empty())
    })
    .await;
    stripe.pay(&customer, 5000).await;
    eventually("acme's top-up credited", Duration::from_secs(30), || async {
        p.jsonpath(&["get", "tenant", "acme"], "{.status.billing.credited}").await == "5000"
    })
    .await;
    for t in ["acme", "broke"] {
        p.ok_in(&["apply", "-f", "-"], &instance(t)).await;
        p.wait_condition(&format!("inst/chat -n tenant-{t}"), "Ready", 60).await;
    }
    // Two minutes on: acme is billed for two intervals, broke's grace is over.
    clock.set(jiff::Timestamp::from_second(t0.as_second() + 120).unwrap());
    let through =
        alcove_clock::format_millis(jiff::Timestamp::from_second(t0.as_second() + 120).unwrap());
    eventually("acme billed through t0+120", Duration::from_secs(30), || async {
        p.jsonpath(&["get", "inst", "chat", "-n", "tenant-acme"], "{.status.billedThrough}").await
            == through
    })
    .await;
    eventually("broke suspended", Duration::from_secs(30), || async {
        p.jsonpath(&["get", "inst", "chat", "-n", "tenant-broke"], "{.status.phase}").await
            == "Suspended"
    })
    .await;
    let reason = |kind: &'static str, name: &'static str, ns: &'static str| {
        let p = &p;
        async move {
            let mut a = vec!["get", kind, name];
            if !ns.is_empty() {
                a.extend(["-n", ns]);
            }
            p.jsonpath(&a, "{.status.conditions[?(@.type==\"Billing\")].reason}").await
        }
    };
    eventually("billing verdicts settled", Duration::from_secs(30), || async {
        reason("tenant", "acme", "").await == alcove_crds::reason::ACTIVE
            && reason("tenant", "broke", "").await == alcove_crds::reason::CREDIT_EXHAUSTED
            && reason("inst", "chat", "tenant-acme").await == alcove_crds::reason::METERED
            && reason("inst", "chat", "tenant-broke").await == alcove_crds::reason::CREDIT_EXHAUSTED
    })
    .await;
    // Time passes, a second per second, without reaching anything that falls due (the next
    // report at t0+180; acme's unbilled usage stays under a cent until t0+130): conditions must
    // keep their transition times.
    let at = move |s: i64| jiff::Timestamp::from_second(t0.as_second() + s).unwrap();
    clock.set(at(121));
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.settled_under_faults().await;
    let ticking = Clock(clock.0.clone());
    let ticker = tokio::spawn(async move {
        for s in 122..=128 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ticking.set(at(s));
        }
    });

    let writes = writes_across_resyncs(&p, 2, &[("tenant", 2.0), ("instance", 2.0)]).await;
    ticker.abort();
    assert!(writes.is_empty(), "writes across two resyncs of an unchanged world: {writes:?}");
}
