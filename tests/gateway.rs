//! The customer gateway end to end: devcluster, the operator and real inference pods, and
//! `alcove gateway` as a separate process serving HTTPS. Customers' programs are the official
//! OpenAI Python SDK configured with a base URL and a key only (plus the test CA, through
//! `SSL_CERT_FILE`, as a private CA would be).

use std::time::{Duration, Instant};

use alcove_tests::localstripe::LocalStripe;
use alcove_tests::*;
use sha2::Digest;

const INSTANCES: &str = r#"
apiVersion: alcove.dev/v1alpha1
kind: InferenceInstance
metadata: {name: chat, namespace: tenant-startup}
spec:
  model: {format: safetensors, source: {platform: default}}
  limits: {maxTokens: 2000, contextLength: 2048}
---
apiVersion: alcove.dev/v1alpha1
kind: InferenceInstance
metadata: {name: embed, namespace: tenant-startup}
spec:
  model: {format: safetensors, source: {platform: default-embedding}}
  limits: {requestsPerMinute: 6}
---
apiVersion: alcove.dev/v1alpha1
kind: InferenceInstance
metadata: {name: bot, namespace: tenant-acme}
spec:
  model: {format: gguf, source: {platform: default-gguf}, path: model.gguf}
"#;

fn sha256_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

const CHAT: &str = r#"{"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}"#;

/// Tokens the instance has generated so far (its per-token histogram's count).
async fn generated(p: &Platform, ns: &str, instance: &str) -> f64 {
    let path = format!("/api/v1/namespaces/{ns}/services/{instance}:http/proxy/metrics");
    let text = p.ok(&["get", "--raw", &path]).await;
    metric(&text, "alcove_inference_time_per_output_token_seconds_count", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_reach_their_instance_with_a_base_url_and_a_key() {
    let p = platform_with_operator().await;
    p.ok(&[
        "apply",
        "-f",
        &example("good/tenant-basic.yaml"),
        "-f",
        &example("good/tenant-pro.yaml"),
    ])
    .await;
    p.ok_in(&["apply", "-f", "-"], INSTANCES).await;
    for i in ["chat -n tenant-startup", "embed -n tenant-startup", "bot -n tenant-acme"] {
        p.wait_condition(&format!("inst/{i}"), "Ready", 90).await;
    }
    let key = api_key(&p, "tenant-startup", "chat").await;
    let embed_key = api_key(&p, "tenant-startup", "embed").await;
    let bot_key = api_key(&p, "tenant-acme", "bot").await;
    let status = p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await["status"].clone();
    assert_eq!(status["apiKeyHash"], sha256_hex(&key), "the operator publishes the key's hash");
    assert_eq!(status["rateLimits"]["requestsPerMinute"], 60, "the basic tier's default");
    let clock = p.dir.path().join("gateway-clock");
    let t0: jiff::Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
    alcove_clock::FileClock::set(&clock, t0).unwrap();
    let gw = Gateway::start(
        &p,
        "gw",
        &["--auth-failures-per-minute", "5", "--clock-file", clock.to_str().unwrap()],
    )
    .await;

    // The SDK with nothing but the base URL and the key: chat, streams, embeddings, models.
    let chat = gw.sdk("chat", &key).await;
    assert!(chat["content"].as_str().is_some_and(|c| !c.is_empty()), "{chat}");
    assert!(chat["usage"]["completion_tokens"].as_i64().unwrap() > 0, "{chat}");
    let stream = gw.sdk("stream", &key).await;
    assert!(stream["chunks"].as_i64().unwrap() > 1, "{stream}");
    assert!(stream["usage"].is_null(), "the usage chunk the client did not ask for is removed");
    let with_usage = gw.sdk("stream-usage", &key).await;
    assert!(with_usage["usage"]["completion_tokens"].as_i64().unwrap() > 0, "{with_usage}");
    let embed = gw.sdk("embed", &embed_key).await;
    assert_eq!(embed["vectors"], 2, "{embed}");
    assert!(embed["usage"]["prompt_tokens"].as_i64().unwrap() > 0, "{embed}");
    assert_eq!(gw.sdk("models", &key).await["models"], serde_json::json!(["chat"]));
    // `model` may be omitted; X-Api-Key works as well as Bearer.
    let r = gw.call("/chat/completions", &[("X-Api-Key", &key)], Some(CHAT)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["model"], "chat");
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("60"), "{r:?}");
    let request_id = r.header("x-request-id").unwrap().to_string();

    // Refusals, OpenAI-shaped: another instance's key names its own model, a missing key, a
    // wrong key; then the address that keeps guessing is slowed down.
    let other = gw.sdk("chat", &bot_key).await;
    assert_eq!(
        other["status"], 404,
        "the bot's key reaches the bot, which serves no `chat`: {other}"
    );
    let none = gw.call("/chat/completions", &[], Some(CHAT)).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.body["error"]["code"], "missing_api_key", "{none:?}");
    let wrong_key = "0".repeat(64);
    for _ in 0..5 {
        let r = gw.sdk("chat", &wrong_key).await;
        assert_eq!(r["status"], 401, "{r}");
        assert_eq!(r["body"]["code"], "invalid_api_key", "{r}");
    }
    let blocked = gw
        .call("/chat/completions", &[("Authorization", &format!("Bearer {key}"))], Some(CHAT))
        .await;
    assert_eq!(
        blocked.status, 429,
        "five wrong keys a minute, then even a right one waits: {blocked:?}"
    );
    assert_eq!(blocked.body["error"]["code"], "too_many_failed_authentications");
    assert!(blocked.header("retry-after").is_some());

    // One record per request, with the tokens the instance reported, and no content.
    let store = gw.store().await;
    let records = until_some("5 records of chat", Duration::from_secs(10), || async {
        let r = store.records("tenant-startup", "chat", 100).await.unwrap();
        (r.len() == 5).then_some(r)
    })
    .await;
    assert!(records.iter().all(|r| r.status == 200 && r.tenant == "startup"), "{records:?}");
    assert!(records.iter().all(|r| r.key_id == sha256_hex(&key)[..12]), "{records:?}");
    assert!(records.iter().all(|r| r.at_ms == t0.as_millisecond()), "the injected clock");
    let mine = records.iter().find(|x| x.request_id == request_id).unwrap();
    assert_eq!(
        (mine.prompt_tokens, mine.completion_tokens),
        (
            r.body["usage"]["prompt_tokens"].as_i64().unwrap(),
            r.body["usage"]["completion_tokens"].as_i64().unwrap()
        )
    );
    let streamed = &with_usage["usage"];
    assert!(
        records.iter().any(|x| x.prompt_tokens == streamed["prompt_tokens"].as_i64().unwrap()
            && x.completion_tokens == streamed["completion_tokens"].as_i64().unwrap()),
        "the streamed answer's usage is recorded: {records:?}"
    );
    assert!(
        records
            .iter()
            .filter(|x| x.endpoint == "chat/completions")
            .all(|x| x.completion_tokens > 0),
        "the stream whose usage chunk was removed is still metered: {records:?}"
    );
    let bot = store.records("tenant-acme", "bot", 10).await.unwrap();
    assert_eq!(bot.len(), 1);
    assert_eq!(bot[0].status, 404);
    let bytes = gw.store_bytes();
    assert!(bytes.contains(&request_id), "the store is readable as bytes");
    for secret in ["Say hello", key.as_str()] {
        assert!(!bytes.contains(secret), "{secret:?} is in the store");
    }
    // 90 days later (and a day), by the injected clock, the records are gone; the totals stay.
    let totals = store.totals(&records[0].instance_uid).await.unwrap();
    alcove_clock::FileClock::set(&clock, t0 + jiff::SignedDuration::from_hours(91 * 24)).unwrap();
    until_some("the records' purge", Duration::from_secs(10), || async {
        store.records("tenant-startup", "chat", 100).await.unwrap().is_empty().then_some(())
    })
    .await;
    assert_eq!(store.totals(&records[0].instance_uid).await.unwrap(), totals);
    assert_eq!(totals.requests, 5);

    // A fresh gateway (the first one now distrusts this address) for the rest.
    let gw = Gateway::start(&p, "gw2", &["--host-domain", "gw.test"]).await;
    // A per-instance host name admits its own instance's key only.
    let own = [("Host", "chat.startup.gw.test"), ("Authorization", &format!("Bearer {key}"))];
    assert_eq!(gw.call("/models", &own, None).await.status, 200);
    let other =
        [("Host", "chat.startup.gw.test"), ("Authorization", &format!("Bearer {embed_key}"))];
    assert_eq!(gw.call("/models", &other, None).await.status, 401);

    // Streams are passed on as they come, and a client that leaves stops the generation.
    let full = gw
        .call(
            "/chat/completions",
            &[("Authorization", &format!("Bearer {key}"))],
            Some(r#"{"messages": [{"role": "user", "content": "Count."}], "max_tokens": 2000, "temperature": 0}"#),
        )
        .await;
    let full_tokens = full.body["usage"]["completion_tokens"].as_f64().unwrap();
    assert!(full_tokens >= 500.0, "a long answer to cut short: {full:?}");
    let before = generated(&p, "tenant-startup", "chat").await;
    let started = Instant::now();
    let mut stream = tokio::process::Command::new("curl")
        .args(["-s", "-N", "--cacert", gw.ca.to_str().unwrap(), "-H"])
        .arg(format!("Authorization: Bearer {key}"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(r#"{"messages": [{"role": "user", "content": "Count."}], "max_tokens": 2000, "temperature": 0, "stream": true}"#)
        .arg(format!("{}/chat/completions", gw.base))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = stream.stdout.take().unwrap();
    // Read until the first generated token arrives (after the role chunk), then leave.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    use tokio::io::AsyncReadExt;
    while String::from_utf8_lossy(&seen).matches("data: ").count() < 2 {
        let n = out.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let first_token = started.elapsed();
    assert!(String::from_utf8_lossy(&seen).contains(r#""content":"#), "a token first");
    stream.kill().await.unwrap();
    drop(out);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped_at = generated(&p, "tenant-startup", "chat").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = generated(&p, "tenant-startup", "chat").await;
    assert_eq!(stopped_at, later, "nothing is generated for a client that left");
    eprintln!(
        "stream: first event after {first_token:?}; {} of {full_tokens} tokens generated before the disconnect stopped it",
        later - before
    );
    assert!(later > before, "the stream had started generating");
    assert!(
        later - before < full_tokens / 2.0,
        "the generation stopped early: {} of {full_tokens} tokens (first event after {first_token:?})",
        later - before
    );

    // Limits: the embed instance allows 6 requests a minute.
    let auth = format!("Bearer {embed_key}");
    let input = r#"{"input": "hello"}"#;
    for left in (0..6).rev() {
        let r = gw.call("/embeddings", &[("Authorization", &auth)], Some(input)).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(left.to_string().as_str()));
    }
    let limited = gw.call("/embeddings", &[("Authorization", &auth)], Some(input)).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(limited.header("retry-after"), Some("10"), "one request per 10 s comes back");
    assert_eq!(limited.header("x-ratelimit-limit-requests"), Some("6"));
    assert_eq!(limited.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(limited.header("x-ratelimit-reset-requests"), Some("1m0s"));
    assert!(limited.header("x-ratelimit-limit-tokens").is_some());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let recovered = gw.call("/embeddings", &[("Authorization", &auth)], Some(input)).await;
    assert_eq!(recovered.status, 200, "after the reset: {recovered:?}");

    // Two replicas sharing a PostgreSQL store: each takes half of the limit, so together they
    // let 6 through, not 12; both write their records to the one store.
    let pg = alcove_testkit::postgres::Postgres::start();
    let shared = ["--replicas", "2", "--usage-store", pg.dsn.as_str()];
    let (a, b) = (
        Gateway::start(&p, "replica-a", &shared).await,
        Gateway::start(&p, "replica-b", &shared).await,
    );
    let mut admitted = 0;
    for gw in [&a, &b] {
        for _ in 0..5 {
            if gw.call("/embeddings", &[("Authorization", &auth)], Some(input)).await.status == 200
            {
                admitted += 1;
            }
        }
    }
    assert_eq!(admitted, 6, "two replicas hold the instance's limit together");
    let pg_store = alcove_gateway::store::Store::open(&pg.dsn).await.unwrap();
    let embed_records = until_some("10 records in PostgreSQL", Duration::from_secs(10), || async {
        let r = pg_store.records("tenant-startup", "embed", 100).await.unwrap();
        (r.len() == 10).then_some(r)
    })
    .await;
    assert_eq!(embed_records.iter().filter(|r| r.status == 200).count(), 6);
    assert_eq!(embed_records.iter().filter(|r| r.status == 429).count(), 4);
    assert!(embed_records.iter().filter(|r| r.status == 200).all(|r| r.prompt_tokens > 0));
    assert!(!pg.dump().contains(r#""hello""#), "no input text in PostgreSQL");

    // Rotation: the old key is refused within a second of the new hash being published.
    p.ok(&["annotate", "inst", "chat", "-n", "tenant-startup", "alcove.dev/rotate-api-key=1"])
        .await;
    let old_hash = sha256_hex(&key);
    until_some("the new key's hash is published", Duration::from_secs(30), || async {
        let h = p
            .jsonpath(&["get", "inst", "chat", "-n", "tenant-startup"], "{.status.apiKeyHash}")
            .await;
        (!h.is_empty() && h != old_hash).then_some(())
    })
    .await;
    let published = Instant::now();
    until_some("the rotated-out key is refused", Duration::from_secs(15), || async {
        let r = gw.call("/models", &[("Authorization", &format!("Bearer {key}"))], None).await;
        (r.status == 401).then_some(())
    })
    .await;
    let took = published.elapsed();
    eprintln!("rotation: the old key was refused {took:?} after the new hash was published");
    // The gateway learns of the hash from its watch; under API faults that watch is cut and
    // re-listed every few seconds, and the refusal waits for the relist.
    let bound = Duration::from_secs(if p.api_faults() { 10 } else { 1 });
    assert!(took < bound, "refused {took:?} after the hash changed");
    let new_key = api_key(&p, "tenant-startup", "chat").await;
    until_some("the new key serves", Duration::from_secs(60), || async {
        let r = gw.call("/models", &[("Authorization", &format!("Bearer {new_key}"))], None).await;
        (r.status == 200).then_some(())
    })
    .await;

    // Suspended: a 403 that says how to resume; then while the pod starts again, 503 and when.
    p.ok(&[
        "patch",
        "inst",
        "chat",
        "-n",
        "tenant-startup",
        "--type=merge",
        "-p",
        r#"{"spec":{"state":"Suspended"}}"#,
    ])
    .await;
    let auth = format!("Bearer {new_key}");
    let suspended =
        until_some("the suspension reaches the gateway", Duration::from_secs(30), || async {
            let r = gw.call("/chat/completions", &[("Authorization", &auth)], Some(CHAT)).await;
            (r.status == 403).then_some(r)
        })
        .await;
    assert_eq!(suspended.body["error"]["code"], "instance_suspended");
    assert!(suspended.body["error"]["message"].as_str().unwrap().contains("spec.state"));
    // The gateway refuses from the spec at once; the pod stops when the operator gets to it (a
    // moment later, or longer under API faults). Resumed before that, it would serve at once.
    eventually("the suspended instance's pod stops", Duration::from_secs(60), || async {
        let pods = ["get", "pods", "-n", "tenant-startup", "-l", "alcove.dev/instance=chat"];
        p.json(&pods).await["items"].as_array().is_some_and(|i| i.is_empty())
    })
    .await;
    p.ok(&[
        "patch",
        "inst",
        "chat",
        "-n",
        "tenant-startup",
        "--type=merge",
        "-p",
        r#"{"spec":{"state":"Running"}}"#,
    ])
    .await;
    let starting =
        until_some("the resume reaches the gateway", Duration::from_secs(30), || async {
            let r = gw.call("/chat/completions", &[("Authorization", &auth)], Some(CHAT)).await;
            (r.status != 403).then_some(r)
        })
        .await;
    // Under API faults the gateway may hear of the resume (its watch cut and re-listed) only
    // after the pod is Ready again, and then it serves at once.
    if !(p.api_faults() && starting.status == 200) {
        assert_eq!(starting.status, 503, "the pod is starting: {starting:?}");
        assert_eq!(starting.body["error"]["code"], "instance_not_ready");
        assert_eq!(starting.header("retry-after"), Some("5"));
    }

    // Metrics by tenant and instance; no key, no prompt anywhere the gateway writes.
    let metrics = curl(&format!("{}/metrics", gw.metrics)).await.unwrap();
    assert!(
        metric(&metrics, "alcove_gateway_requests_total", r#"instance="embed""#) >= 7.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "alcove_gateway_tokens_total", r#"instance="chat",kind="completion""#)
            > 0.0
    );
    assert!(metrics.contains("alcove_gateway_request_duration_seconds_bucket"));
    for gw in [&gw, &a, &b] {
        for text in [gw.log_text(), curl(&format!("{}/metrics", gw.metrics)).await.unwrap()] {
            for secret in [key.as_str(), &new_key, &embed_key, &bot_key, "Say hello", "Count."] {
                assert!(!text.contains(secret), "{secret:?} leaked");
            }
        }
    }
}

/// Token records of an instance in localstripe: (prompt, completion, amount) each.
async fn token_records(stripe: &LocalStripe, customer: &str, uid: &str) -> Vec<(i64, i64, i64)> {
    stripe
        .usage(customer)
        .await
        .iter()
        .filter(|i| {
            i["metadata"]["alcove_kind"] == "tokens" && i["metadata"]["alcove_instance_uid"] == uid
        })
        .map(|i| {
            let m = |k: &str| i["metadata"][k].as_str().unwrap().parse::<i64>().unwrap();
            (m("prompt_tokens"), m("completion_tokens"), i["amount"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_billed_once_and_an_idle_instance_sleeps_until_a_request_wakes_it() {
    let mut p = Platform::start_with(with_inference).await;
    let stripe = LocalStripe::start(&p.dir.path().join("localstripe.log")).await;
    // Tokens at 1 cent per 1,000 prompt tokens and 3 per 1,000 completion tokens, so a few
    // requests make whole cents; GPU time is not priced here.
    let config = p.dir.path().join("operator.yaml");
    std::fs::write(
        &config,
        "billing:\n  prices:\n    usd:\n      \"*\": {perMillionInputTokens: 10000, perMillionOutputTokens: 30000}\n",
    )
    .unwrap();
    let clock = Clock(p.dir.path().join("clock"));
    let t0: jiff::Timestamp = "2027-03-01T09:00:00Z".parse().unwrap();
    clock.set(t0);
    let operator_args = [
        "--config",
        config.to_str().unwrap(),
        "--stripe-api-key",
        alcove_testkit::localstripe::KEY,
        "--stripe-api-base",
        &stripe.base,
        "--clock-file",
        clock.0.to_str().unwrap(),
        "--leader-election",
        "false",
    ];
    let mut crashing_args = operator_args.to_vec();
    crashing_args.extend(["--crash-after", "token-usage-reported"]);
    let crashing = p.spawn_operator(&crashing_args).await;
    p.ok_in(
        &["apply", "-f", "-"],
        "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme\n  tier: basic\n  region: tw-taipei-1\n  billing: {customer: create, currency: usd, suspendGracePeriod: 7d}\n",
    )
    .await;
    p.wait_condition("tenant/acme", "Ready", 60).await;
    p.ok_in(
        &["apply", "-f", "-"],
        "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: chat, namespace: tenant-acme}\nspec:\n  model: {format: safetensors, source: {platform: default}}\n  idleTimeout: 15m\n",
    )
    .await;
    p.wait_condition("inst/chat -n tenant-acme", "Ready", 90).await;
    let uid = p.jsonpath(&["get", "inst", "chat", "-n", "tenant-acme"], "{.metadata.uid}").await;
    let customer = until_some("the Stripe customer", Duration::from_secs(60), || async {
        Some(p.jsonpath(&["get", "tenant", "acme"], "{.status.billing.customerId}").await)
            .filter(|s| !s.is_empty())
    })
    .await;
    let gw = Gateway::start(
        &p,
        "gw",
        &["--publish-seconds", "1", "--clock-file", clock.0.to_str().unwrap()],
    )
    .await;
    let key = api_key(&p, "tenant-acme", "chat").await;
    let auth = format!("Bearer {key}");
    let long = r#"{"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200, "temperature": 0}"#;
    let mut used = (0, 0);
    for _ in 0..3 {
        let r = gw.call("/chat/completions", &[("Authorization", &auth)], Some(long)).await;
        assert_eq!(r.status, 200, "{r:?}");
        used.0 += r.body["usage"]["prompt_tokens"].as_i64().unwrap();
        used.1 += r.body["usage"]["completion_tokens"].as_i64().unwrap();
    }

    // The first token record reaches Stripe and the operator dies before its ledger knows: the
    // next operator adopts the record instead of making it again.
    let status = tokio::time::timeout(Duration::from_secs(60), p.operators[crashing].child.wait())
        .await
        .expect("the operator reached the crash point")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{}", p.operators[crashing].log_text());
    assert_eq!(token_records(&stripe, &customer, &uid).await.len(), 1);
    p.spawn_operator(&operator_args).await;
    let r = gw.call("/chat/completions", &[("Authorization", &auth)], Some(long)).await;
    used.0 += r.body["usage"]["prompt_tokens"].as_i64().unwrap();
    used.1 += r.body["usage"]["completion_tokens"].as_i64().unwrap();
    let records = until_some("every token billed", Duration::from_secs(60), || async {
        let r = token_records(&stripe, &customer, &uid).await;
        let sum = r.iter().fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1));
        (sum == used).then_some(r)
    })
    .await;
    // Exactly once: the records add up to the tokens used, and to their price.
    let cents: i64 = records.iter().map(|r| r.2).sum();
    let exact = (used.0 * 10_000 + used.1 * 30_000) / 1_000_000;
    assert!(cents == exact || cents + 1 == exact, "{cents} cents for {used:?} ({records:?})");
    // The tenant's status mirrors the ledger a moment later (under API faults, a retry later).
    eventually("the balance counts the tokens", Duration::from_secs(10), || async {
        let balance = p.jsonpath(&["get", "tenant", "acme"], "{.status.billing.balance}").await;
        balance.parse::<i64>().is_ok_and(|b| b <= -cents)
    })
    .await;

    // Idle: 15 minutes without a request stops the pod; GPU billing stops with it.
    clock.set(t0 + jiff::SignedDuration::from_mins(16));
    until_some("the instance idles", Duration::from_secs(30), || async {
        let phase =
            p.jsonpath(&["get", "inst", "chat", "-n", "tenant-acme"], "{.status.phase}").await;
        (phase == "Idle").then_some(())
    })
    .await;
    let inst = p.json(&["get", "inst", "chat", "-n", "tenant-acme"]).await;
    assert!(inst["status"]["startedAt"].is_null(), "the run ended: {inst}");
    assert!(inst["status"]["idleSince"].is_string());
    eventually("the pod is gone", Duration::from_secs(30), || async {
        !p.kubectl(&["get", "pod", "chat", "-n", "tenant-acme"]).await.0
    })
    .await;
    assert_eq!(inst["spec"]["state"], "Running", "the spec is not touched");
    assert_eq!(inst["metadata"]["generation"], 1, "the spec is not touched");

    // A request wakes it: held until the pod is Ready, then answered. (Under API faults the
    // gateway may hear of the idling a moment after the pod went: that request gets a 503 that
    // says to retry, as an SDK does, and the retry wakes it.)
    let woken = Instant::now();
    let mut r = gw.call("/chat/completions", &[("Authorization", &auth)], Some(CHAT)).await;
    if p.api_faults() && r.status == 503 && r.body["error"]["code"] == "instance_not_ready" {
        tokio::time::sleep(Duration::from_secs(5)).await;
        r = gw.call("/chat/completions", &[("Authorization", &auth)], Some(CHAT)).await;
    }
    let wake = woken.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    eprintln!("wake: the request that woke the idle instance was answered after {wake:?}");
    let phase = p.jsonpath(&["get", "inst", "chat", "-n", "tenant-acme"], "{.status.phase}").await;
    assert_eq!(phase, "Ready");
}
