//! Billing against localstripe: the customer made once across a crash, GPU time billed exactly
//! (injected clock) with no duplicate record after a SIGKILL between a report and its
//! bookkeeping, the final record of a destroy within a second, and prepaid credit: exhaustion
//! suspends, a signed top-up resumes, forged and stale deliveries are refused, a replay is
//! applied once. Instance pods are simulated (Ready without a process): billing is about time.

use std::time::{Duration, Instant};

use alcove_tests::localstripe::{KEY, WHSEC};
use alcove_tests::*;
use serde_json::{Value, json};

fn tenant(grace: &str, threshold: i64) -> String {
    format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec:\n  displayName: Acme\n  tier: basic\n  region: tw-taipei-1\n  billing: {{customer: create, currency: usd, lowBalanceThreshold: {threshold}, suspendGracePeriod: {grace}}}\n"
    )
}

const INSTANCE: &str = "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: chat, namespace: tenant-acme}\nspec:\n  model: {format: safetensors, source: {platform: default}}\n  gpu: {count: 1}\n";

fn secs(t: jiff::Timestamp, s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second() + s).unwrap()
}

async fn spawn(p: &mut Platform, args: &[String], extra: &[&str]) -> usize {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(extra);
    p.spawn_operator(&all).await
}

/// Waits for an operator started with `--crash-after` to kill itself.
async fn died(p: &mut Platform, n: usize) {
    let status = tokio::time::timeout(Duration::from_secs(60), p.operators[n].child.wait())
        .await
        .expect("the operator crashed in time")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL; log:\n{}", p.operators[n].log_text());
}

async fn customer_id(p: &Platform) -> String {
    until_some("the tenant's Stripe customer in its status", Duration::from_secs(60), || async {
        Some(p.jsonpath(&["get", "tenant", "acme"], "{.status.billing.customerId}").await)
            .filter(|s| !s.is_empty())
    })
    .await
}

async fn billed_through(p: &Platform) -> String {
    p.jsonpath(
        &["get", "inferenceinstance", "chat", "-n", "tenant-acme"],
        "{.status.billedThrough}",
    )
    .await
}

fn field(item: &Value, key: &str) -> String {
    item["metadata"][key].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_once_and_gpu_time_billed_exactly_across_crashes() {
    let (mut p, stripe, clock, args) = billing_platform().await;
    let t0 = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    clock.set(t0);

    // Killed right after Stripe made the customer, before the ledger names it.
    let first = spawn(&mut p, &args, &["--crash-after", "customer-created"]).await;
    p.ok_in(&["apply", "-f", "-"], &tenant("1d", 0)).await;
    died(&mut p, first).await;
    let uid = p.jsonpath(&["get", "tenant", "acme"], "{.metadata.uid}").await;
    assert_eq!(stripe.customers_of(&uid).await.len(), 1, "the crashed run made the customer");
    spawn(&mut p, &args, &[]).await;
    let customer = customer_id(&p).await;
    let customers = stripe.customers_of(&uid).await;
    assert_eq!(
        customers.len(),
        1,
        "a restart finds the customer instead of making another: {customers:?}"
    );
    assert_eq!(customers[0]["id"], customer.as_str());

    // GPU time from Ready (t0, the clock is frozen) in whole intervals.
    p.ok_in(&["apply", "-f", "-"], INSTANCE).await;
    assert_eq!(p.started_at("tenant-acme", "chat").await, t0);
    clock.set(secs(t0, 60));
    let want = lifecycle_ts(secs(t0, 60));
    eventually("billed through t0+60", Duration::from_secs(30), || async {
        billed_through(&p).await == want
    })
    .await;
    assert_eq!(stripe.usage(&customer).await.len(), 1);

    // SIGKILL after Stripe took the second record, before the ledger and status know.
    p.operators[1].kill().await;
    let crashing = spawn(&mut p, &args, &["--crash-after", "usage-reported"]).await;
    clock.set(secs(t0, 120));
    died(&mut p, crashing).await;
    assert_eq!(stripe.usage(&customer).await.len(), 2, "the record made before the crash");
    assert_eq!(billed_through(&p).await, want, "the status never heard of it");
    spawn(&mut p, &args, &[]).await;
    clock.set(secs(t0, 150));
    let want = lifecycle_ts(secs(t0, 120));
    eventually(
        "the orphan record adopted: billed through t0+120",
        Duration::from_secs(30),
        || async { billed_through(&p).await == want },
    )
    .await;
    assert_eq!(stripe.usage(&customer).await.len(), 2, "adopted, not made again");

    // Suspended at t0+185: the partial interval is billed at the stop.
    clock.set(secs(t0, 185));
    p.ok(&[
        "patch",
        "inferenceinstance",
        "chat",
        "-n",
        "tenant-acme",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"state":"Suspended"}}"#,
    ])
    .await;
    let want = lifecycle_ts(secs(t0, 185));
    eventually("billed through the suspension", Duration::from_secs(30), || async {
        billed_through(&p).await == want
    })
    .await;
    let records = stripe.usage(&customer).await;
    let periods: Vec<(String, String)> =
        records.iter().map(|r| (field(r, "period_start"), field(r, "period_end"))).collect();
    // [t0, t0+60), [t0+60, t0+120), then the rest up to t0+185 — as one record, or as the
    // interval that fell due when the clock moved plus the partial one at the stop.
    assert_eq!(
        periods[..2],
        [
            (lifecycle_ts(t0), lifecycle_ts(secs(t0, 60))),
            (lifecycle_ts(secs(t0, 60)), lifecycle_ts(secs(t0, 120)))
        ],
        "{records:#?}"
    );
    assert!(
        periods.windows(2).all(|w| w[0].1 == w[1].0),
        "contiguous, no overlap, no duplicate: {periods:?}"
    );
    assert_eq!(periods.last().unwrap().1, lifecycle_ts(secs(t0, 185)));
    assert!(periods.len() <= 4, "{periods:?}");
    let gpu_ms: i64 = records.iter().map(|r| field(r, "gpu_millis").parse::<i64>().unwrap()).sum();
    assert!((gpu_ms - 185_000).abs() <= 1000, "T = 185 s billed as {gpu_ms} GPU-ms");
    let amount: i64 = records.iter().map(|r| r["amount"].as_i64().unwrap()).sum();
    assert_eq!(amount, 18, "185 GPU-s at 0.1 cent, rounded once");
    assert!(records.iter().all(|r| r["currency"] == "usd" && r["customer"] == customer.as_str()));
    let billed = until_some("the tenant's mirror", Duration::from_secs(30), || async {
        Some(p.jsonpath(&["get", "tenant", "acme"], "{.status.billing.billed}").await)
            .filter(|b| b == "18")
    })
    .await;
    assert_eq!(billed, "18");
    // The ledger is a billing record: in the operator namespace, marked as such.
    let ledger = p.json(&["get", "configmap", "billing-acme", "-n", "alcove-system"]).await;
    assert_eq!(ledger["metadata"]["labels"]["alcove.dev/data-class"], "billingRecords");
}

fn lifecycle_ts(t: jiff::Timestamp) -> String {
    alcove_clock::format_millis(t)
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_records_the_final_usage_within_a_second() {
    let (mut p, stripe, _clock, args) = billing_platform().await;
    // The system clock: the run ends at the API server's deletionTimestamp.
    spawn(&mut p, &args, &[]).await;
    p.ok_in(&["apply", "-f", "-"], &tenant("1d", 0)).await;
    let customer = customer_id(&p).await;
    p.ok_in(&["apply", "-f", "-"], INSTANCE).await;
    p.wait_condition("inferenceinstance/chat -n tenant-acme", "Ready", 60).await;
    let uid = p
        .jsonpath(&["get", "inferenceinstance", "chat", "-n", "tenant-acme"], "{.metadata.uid}")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stripe.usage(&customer).await.is_empty(),
        "less than an interval: nothing reported yet"
    );

    let asked = Instant::now();
    p.ok(&["delete", "inferenceinstance", "chat", "-n", "tenant-acme", "--wait=false"]).await;
    let record = loop {
        if let Some(r) = stripe
            .usage(&customer)
            .await
            .into_iter()
            .find(|r| field(r, "alcove_instance_uid") == uid)
        {
            break r;
        }
        assert!(asked.elapsed() < Duration::from_secs(10), "no final usage record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = asked.elapsed();
    println!("final usage record {} ms after the delete request", elapsed.as_millis());
    // An injected 429 asks the operator to wait a second before it tries again.
    let bound = Duration::from_secs(if p.api_faults() { 3 } else { 1 });
    assert!(elapsed < bound, "final record after {elapsed:?}");
    let ms: i64 = field(&record, "gpu_millis").parse().unwrap();
    assert!(ms >= 1000, "the run's GPU time: {record}");
    // The instance goes; its meter in the ledger goes with it, its totals stay.
    eventually("instance gone", Duration::from_secs(30), || async {
        !p.kubectl(&["get", "inferenceinstance", "chat", "-n", "tenant-acme"]).await.0
    })
    .await;
    eventually("meter pruned, total kept", Duration::from_secs(30), || async {
        let cm = p.json(&["get", "configmap", "billing-acme", "-n", "alcove-system"]).await;
        let l: Value = serde_json::from_str(cm["data"]["ledger.json"].as_str().unwrap()).unwrap();
        l["meters"].as_object().is_some_and(|m| m.is_empty()) && l["billed"] == record["amount"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn credit_exhaustion_suspends_and_a_signed_top_up_resumes() {
    let (mut p, stripe, clock, args) = billing_platform().await;
    // The injected clock runs 200 s behind: localstripe signs with the real time, which then
    // stays within the tolerance after the clock is advanced below.
    let t0 = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 200).unwrap();
    clock.set(t0);
    let n = spawn(&mut p, &args, &[]).await;
    let hook = format!("{}/webhooks/stripe", p.operators[n].http);
    stripe.send_webhooks_to(&hook).await;
    p.ok_in(&["apply", "-f", "-"], &tenant("2m", 10)).await;
    let customer = customer_id(&p).await;
    let credited =
        || async { p.jsonpath(&["get", "tenant", "acme"], "{.status.billing.credited}").await };
    let billing_reason = |kind: &'static str, ns: &'static str, name: &'static str| {
        let p = &p;
        async move {
            let mut a = vec!["get", kind, name];
            if !ns.is_empty() {
                a.extend(["-n", ns]);
            }
            p.jsonpath(&a, "{.status.conditions[?(@.type==\"Billing\")].reason}").await
        }
    };

    // 20 cents of credit, paid by card; Stripe's own webhook delivery credits it.
    stripe.pay(&customer, 20).await;
    eventually("the top-up credited", Duration::from_secs(30), || async {
        credited().await == "20"
    })
    .await;
    p.ok_in(&["apply", "-f", "-"], INSTANCE).await;
    p.started_at("tenant-acme", "chat").await;

    // 0.1 cent per second: below 10 cents after 100 s (low), at 0 after 200 s (exhausted).
    clock.set(secs(t0, 150));
    eventually("low balance", Duration::from_secs(30), || async {
        billing_reason("tenant", "", "acme").await == alcove_crds::reason::LOW_BALANCE
    })
    .await;
    // (A Tenant's Events are in default.)
    p.event_announced("default", "LowBalance").await;
    assert_eq!(
        metric(&p.operators[n].metrics().await, "alcove_tenant_low_balance", "tenant=\"acme\""),
        1.0
    );
    clock.set(secs(t0, 200));
    eventually("credit exhausted", Duration::from_secs(30), || async {
        billing_reason("tenant", "", "acme").await == alcove_crds::reason::CREDIT_EXHAUSTED
    })
    .await;
    let phase = || async {
        p.jsonpath(&["get", "inferenceinstance", "chat", "-n", "tenant-acme"], "{.status.phase}")
            .await
    };
    assert_eq!(phase().await, "Ready", "still running within the 2m grace");
    clock.set(secs(t0, 320));
    eventually("suspended after the grace", Duration::from_secs(30), || async {
        phase().await == "Suspended"
    })
    .await;
    assert_eq!(
        billing_reason("inferenceinstance", "tenant-acme", "chat").await,
        alcove_crds::reason::CREDIT_EXHAUSTED
    );
    eventually("the instance's CreditExhausted Event", Duration::from_secs(10), || async {
        !p.events("tenant-acme", "CreditExhausted").await.is_empty()
    })
    .await;
    eventually("the pod deleted", Duration::from_secs(30), || async {
        !p.kubectl(&["get", "pod", "chat", "-n", "tenant-acme"]).await.0
    })
    .await;
    let billed_at_suspend =
        stripe.usage(&customer).await.iter().map(|r| r["amount"].as_i64().unwrap()).sum::<i64>();
    assert_eq!(billed_at_suspend, 32, "320 s of GPU time until the suspension");

    // Forged and stale deliveries: 400, nothing credited.
    let forged_body = json!({"id": "evt_forged", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_forged", "object": "payment_intent", "amount": 100000, "customer": customer}}}).to_string();
    let now = clock.now().as_second();
    let (code, body) = http(
        "POST",
        &hook,
        &[("Stripe-Signature", &format!("t={now},v1={}", "ab".repeat(32)))],
        Some(&forged_body),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no v1 signature matches"), "{body}");
    let (code, body) = http(
        "POST",
        &hook,
        &[("Stripe-Signature", &stripe_signature(now - 400, &forged_body))],
        Some(&forged_body),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("outside the tolerance"), "{body}");
    assert_eq!(credited().await, "20");
    assert_eq!(phase().await, "Suspended");

    // A real top-up resumes the instance.
    let pi = stripe.pay(&customer, 5000).await;
    eventually("the second top-up credited", Duration::from_secs(30), || async {
        credited().await == "5020"
    })
    .await;
    eventually("resumed", Duration::from_secs(30), || async { phase().await == "Ready" }).await;
    assert_eq!(billing_reason("tenant", "", "acme").await, alcove_crds::reason::ACTIVE);
    eventually("the Resumed Event names the top-up", Duration::from_secs(10), || async {
        p.events("tenant-acme", "Resumed")
            .await
            .iter()
            .any(|e| e["message"].as_str().unwrap_or_default().contains("credit was topped up"))
    })
    .await;

    // The same event delivered again, validly signed: applied once.
    let event = stripe.succeeded_event(&pi).await;
    let payload = event.to_string();
    let (code, body) = http(
        "POST",
        &hook,
        &[("Stripe-Signature", &stripe_signature(clock.now().as_second(), &payload))],
        Some(&payload),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["applied"], false, "{body}");
    assert_eq!(credited().await, "5020");
    let m = p.operators[n].metrics().await;
    assert!(metric(&m, "alcove_billing_webhooks_total", "outcome=\"refused\"") >= 2.0);
    assert_eq!(metric(&m, "alcove_billing_webhooks_total", "outcome=\"applied\""), 2.0);
    // Neither secret in any output: logs, metrics, Events.
    let outputs = p.every_output(&[]).await;
    assert!(outputs.iter().any(|(_, text)| text.contains("top-up")), "the sweep reads the log");
    for secret in [WHSEC, KEY] {
        assert_eq!(leaks(&outputs, secret), Vec::<String>::new(), "a Stripe secret leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_stripe_key_billing_is_visibly_disabled() {
    let mut p = Platform::start().await;
    let n = p.spawn_operator(&[]).await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    let reason = until_some("the Billing condition", Duration::from_secs(60), || async {
        Some(
            p.jsonpath(
                &["get", "tenant", "startup"],
                "{.status.conditions[?(@.type==\"Billing\")].reason}",
            )
            .await,
        )
        .filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(reason, alcove_crds::reason::DISABLED);
    let message = p
        .jsonpath(
            &["get", "tenant", "startup"],
            "{.status.conditions[?(@.type==\"Billing\")].message}",
        )
        .await;
    assert!(message.contains("no Stripe API key"), "{message}");
    assert_eq!(
        p.jsonpath(&["get", "tenant", "startup"], "{.status.billing}").await,
        "",
        "no balance is made up"
    );
    let (code, body) = http(
        "POST",
        &format!("{}/webhooks/stripe", p.operators[n].http),
        &[("Stripe-Signature", "t=1,v1=00")],
        Some("{}"),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("billing is disabled"), "{body}");
}
