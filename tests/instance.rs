//! The InferenceInstance controller end to end: devcluster runs instance pods as real
//! `alcove-inference` processes serving the platform's test models; requests go through
//! `kubectl proxy` and the API server's service proxy, as a platform team's would.

use std::time::{Duration, Instant};

use alcove_tests::*;
use base64::Engine;
use serde_json::{Value, json};

async fn api_key(p: &Platform, ns: &str, instance: &str) -> String {
    let s = p.json(&["get", "secret", &format!("{instance}-api-key"), "-n", ns]).await;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(s["data"]["api-key"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

fn service_url(proxy: &KubectlProxy, ns: &str, svc: &str, path: &str) -> String {
    format!("{}/api/v1/namespaces/{ns}/services/{svc}:80/proxy{path}", proxy.base)
}

async fn chat(
    proxy: &KubectlProxy,
    ns: &str,
    svc: &str,
    model: &str,
    key: Option<&str>,
    extra: Value,
) -> (u16, Value) {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4, "temperature": 0});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    let headers: Vec<(&str, &str)> = key.map(|k| vec![("X-Api-Key", k)]).unwrap_or_default();
    let (code, text) = http(
        "POST",
        &service_url(proxy, ns, svc, "/v1/chat/completions"),
        &headers,
        Some(&body.to_string()),
    )
    .await;
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn pod_uid(p: &Platform, ns: &str, name: &str) -> Option<String> {
    let (ok, out, _) =
        p.kubectl(&["get", "pod", name, "-n", ns, "-o", "jsonpath={.metadata.uid}"]).await;
    (ok && !out.is_empty()).then_some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_example_instance_serves_with_its_own_key_only() {
    let p = platform_with_operator().await;
    p.ok(&[
        "apply",
        "-f",
        &example("good/tenant-basic.yaml"),
        "-f",
        &example("good/tenant-pro.yaml"),
    ])
    .await;
    p.ok(&["apply", "-f", &example("good/instance-safetensors.yaml")]).await;
    p.ok_in(&["apply", "-f", "-"], ACME_INSTANCE).await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 60).await;
    p.wait_condition("inst/bot -n tenant-acme", "Ready", 60).await;

    let table = p.ok(&["get", "inst", "-n", "tenant-startup"]).await;
    let line = table.lines().find(|l| l.starts_with("chat ")).unwrap();
    assert!(
        line.contains("Ready") && line.contains("http://chat.tenant-startup.svc.cluster.local/v1"),
        "{table}"
    );
    let inst = p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await;
    let status = &inst["status"];
    assert_eq!(status["apiKeySecret"], "chat-api-key");
    assert!(status["startedAt"].is_string());
    assert!(
        status["node"] == "gpu-tw-1" || status["node"] == "gpu-tw-2",
        "the shared pool: {status}"
    );
    for c in ["Ready", "Scheduled", "QuotaAvailable"] {
        assert!(
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["type"] == c && x["status"] == "True"),
            "{c}: {status}"
        );
    }
    // The acme instance runs on acme's dedicated node.
    assert_eq!(
        p.json(&["get", "inst", "bot", "-n", "tenant-acme"]).await["status"]["node"],
        "gpu-tw-acme"
    );

    let proxy = p.kubectl_proxy().await;
    let key = api_key(&p, "tenant-startup", "chat").await;
    assert_eq!(key.len(), 64, "32 random bytes, hex");
    let (code, v) = chat(&proxy, "tenant-startup", "chat", "chat", Some(&key), json!({})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let (code, v) = chat(&proxy, "tenant-startup", "chat", "chat", None, json!({})).await;
    assert_eq!(code, 401, "{v}");
    let other = api_key(&p, "tenant-acme", "bot").await;
    let (code, _) = chat(&proxy, "tenant-startup", "chat", "chat", Some(&other), json!({})).await;
    assert_eq!(code, 401, "another tenant's key");
    let (code, _) = chat(&proxy, "tenant-acme", "bot", "bot", Some(&other), json!({})).await;
    assert_eq!(code, 200, "it works where it belongs");
    // The system prompt is in the prompt: 1 more turn of tokens than the acme bot's bare prompt.
    let (_, with_prompt) =
        chat(&proxy, "tenant-startup", "chat", "chat", Some(&key), json!({"max_tokens": 1})).await;
    let (_, bare) =
        chat(&proxy, "tenant-acme", "bot", "bot", Some(&other), json!({"max_tokens": 1})).await;
    assert!(
        with_prompt["usage"]["prompt_tokens"].as_u64().unwrap()
            > bare["usage"]["prompt_tokens"].as_u64().unwrap() + 5
    );
    // The instance's limit is the server's.
    let (code, v) =
        chat(&proxy, "tenant-startup", "chat", "chat", Some(&key), json!({"max_tokens": 300}))
            .await;
    assert_eq!(code, 400, "spec.limits.maxTokens is 256: {v}");

    // An unchanged instance costs no writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.settled_under_faults().await;
    let before = p.reconcile_writes().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        p.reconcile_writes().await,
        before,
        "writes while nothing changed: {:?}",
        p.writes_by_resource().await
    );

    let m = p.operators[0].metrics().await;
    assert_eq!(metric(&m, "alcove_instances", "phase=\"Ready\""), 2.0, "{m}");
    assert!(metric(&m, "alcove_instance_time_to_ready_seconds_count", "") >= 2.0);
    eventually("gpus in use per tenant", Duration::from_secs(10), || async {
        metric(&p.operators[0].metrics().await, "alcove_gpus_in_use", "tenant=\"startup\"") == 1.0
    })
    .await;
    assert!(!p.operators[0].log_text().contains(&key), "the key reached the operator's log");
    p.event_announced("tenant-startup", "Ready").await;
    assert!(
        p.events("tenant-startup", "Ready")
            .await
            .iter()
            .any(|e| e["regarding"]["name"] == "chat" || e["involvedObject"]["name"] == "chat")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_stops_the_process_and_records_usage_within_a_second() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.ok(&["apply", "-f", &example("good/instance-gguf.yaml")]).await;
    p.wait_condition("inst/chat-gguf -n tenant-startup", "Ready", 60).await;
    let uid = pod_uid(&p, "tenant-startup", "chat-gguf").await.unwrap();
    let pids = p.cluster.shared().runtime.pids(&uid);
    assert_eq!(pids.len(), 1);
    let pvc = p.json(&["get", "pvc", "chat-gguf-history", "-n", "tenant-startup"]).await;
    assert_eq!(pvc["metadata"]["labels"]["alcove.dev/data-class"], "conversationHistory");
    let pv = p.json(&["get", "pv", pvc["spec"]["volumeName"].as_str().unwrap()]).await;
    let pv_dir = std::path::PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert!(pv_dir.exists());
    // Some GPU time to bill: 2 s, because the run ends at the deletionTimestamp, which (as on
    // kube-apiserver) has whole seconds, so up to a second of the wait is not counted.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    p.ok(&["delete", "inst", "chat-gguf", "-n", "tenant-startup", "--wait=false"]).await;
    // The process first (an in-process check, polled tightly), then the usage record (a kubectl
    // round trip each): asking kubectl before the process is gone only adds its latency.
    eventually("process gone", Duration::from_secs(10), || async {
        !alcove_devcluster::runtime::process_alive(pids[0])
    })
    .await;
    let gone = started.elapsed();
    eventually("final usage recorded", Duration::from_secs(10), || async {
        !p.events("tenant-startup", "Destroyed").await.is_empty()
    })
    .await;
    let took = started.elapsed();
    let ev = p.events("tenant-startup", "Destroyed").await;
    let note = ev[0]["message"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("GPU-seconds"), "{note}");
    let used: i64 = note.split_whitespace().find_map(|w| w.parse().ok()).unwrap();
    assert!(used >= 1, "at least a second of GPU time: {note}");
    eprintln!(
        "destroy: delete request → process gone in {gone:?}, final usage recorded in {took:?}"
    );
    // An injected 429 asks the operator to wait a second before it tries again, and the path
    // from the delete to the record makes several requests: two 429s on it cost 2 s.
    let bound = Duration::from_secs(if p.api_faults() { 4 } else { 1 });
    assert!(took < bound, "delete → process gone and usage recorded took {took:?}");

    // Nothing of the instance remains.
    eventually("the instance is gone", Duration::from_secs(10), || async {
        !p.kubectl(&["get", "inst", "chat-gguf", "-n", "tenant-startup"]).await.0
    })
    .await;
    for kind in ["pods", "services", "secrets", "configmaps"] {
        let left = p
            .ok(&[
                "get",
                kind,
                "-n",
                "tenant-startup",
                "-l",
                "alcove.dev/instance=chat-gguf",
                "-o",
                "name",
            ])
            .await;
        assert!(left.trim().is_empty(), "{kind} left behind: {left}");
    }
    // The history is released to retention (tests/retention.rs erases it at its deadline).
    let released = p.json(&["get", "pvc", "chat-gguf-history", "-n", "tenant-startup"]).await;
    assert_eq!(released["metadata"]["labels"]["alcove.dev/released"], "true", "{released}");
    assert!(released["metadata"]["annotations"]["alcove.dev/retain-until"].is_string());
    assert!(pv_dir.exists(), "kept for the retention window");
    let m = p.operators[0].metrics().await;
    assert!(metric(&m, "alcove_gpu_seconds_total", "tenant=\"startup\"") >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_keeps_key_and_history_and_resume_serves_them() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.ok(&["apply", "-f", &example("good/instance-safetensors.yaml")]).await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 60).await;
    let proxy = p.kubectl_proxy().await;
    let key = api_key(&p, "tenant-startup", "chat").await;
    let (code, first) = chat(
        &proxy,
        "tenant-startup",
        "chat",
        "chat",
        Some(&key),
        json!({"conversation": "c-42", "messages": [{"role": "user", "content": "Remember the word TURNIP."}]}),
    )
    .await;
    assert_eq!(code, 200, "{first}");
    let pvc_uid = p.json(&["get", "pvc", "chat-history", "-n", "tenant-startup"]).await["metadata"]
        ["uid"]
        .clone();
    tokio::time::sleep(Duration::from_millis(1500)).await; // GPU time to meter

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
    eventually("suspended", Duration::from_secs(20), || async {
        p.jsonpath(&["get", "inst", "chat", "-n", "tenant-startup"], "{.status.phase}").await
            == "Suspended"
    })
    .await;
    eventually("pod gone", Duration::from_secs(10), || async {
        pod_uid(&p, "tenant-startup", "chat").await.is_none()
    })
    .await;
    let inst = p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await;
    assert!(
        inst["status"]["gpuSeconds"].as_i64().unwrap() >= 1,
        "the run was metered: {}",
        inst["status"]
    );
    assert!(inst["status"]["startedAt"].is_null(), "billing stopped");
    assert_eq!(
        p.json(&["get", "pvc", "chat-history", "-n", "tenant-startup"]).await["metadata"]["uid"],
        pvc_uid,
        "history kept"
    );
    assert_eq!(api_key(&p, "tenant-startup", "chat").await, key, "key kept");
    p.event_announced("tenant-startup", "Suspended").await;

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
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 60).await;
    let (code, stored) = http(
        "GET",
        &service_url(&proxy, "tenant-startup", "chat", "/v1/conversations/c-42"),
        &[("X-Api-Key", &key)],
        None,
    )
    .await;
    assert_eq!(code, 200, "the same key works after resume: {stored}");
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored["messages"][0]["content"], "Remember the word TURNIP.",
        "history survived the suspension"
    );
    assert_eq!(stored["messages"][1]["content"], first["choices"][0]["message"]["content"]);
    p.event_announced("tenant-startup", "Resumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_gpus_waits_with_the_schedulers_reason_until_a_node_appears() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    let big = r#"
apiVersion: alcove.dev/v1alpha1
kind: InferenceInstance
metadata: {name: big, namespace: tenant-startup}
spec:
  model: {format: safetensors, source: {platform: default}}
  gpu: {count: 4, product: NVIDIA-B200}
"#;
    p.ok_in(&["apply", "-f", "-"], big).await;
    let message = until_some(
        "Scheduled=False with the scheduler's reason",
        Duration::from_secs(20),
        || async {
            let v = p.json(&["get", "inst", "big", "-n", "tenant-startup"]).await;
            let c = v["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| {
                    c["type"] == "Scheduled"
                        && c["status"] == "False"
                        && c["reason"] == alcove_crds::reason::UNSCHEDULABLE
                })?
                .clone();
            Some(c["message"].as_str()?.to_string())
        },
    )
    .await;
    assert!(message.starts_with("0/6 nodes are available"), "{message}");
    assert_eq!(
        p.jsonpath(&["get", "inst", "big", "-n", "tenant-startup"], "{.status.phase}").await,
        "Pending"
    );
    p.event_announced("tenant-startup", "Unschedulable").await;
    assert!(
        p.events("tenant-startup", "Unschedulable")
            .await
            .iter()
            .any(|e| e["message"].as_str().unwrap_or_default().contains("0/6 nodes"))
    );

    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"gpu-tw-b200","labels":{"topology.kubernetes.io/region":"tw-taipei-1","alcove.dev/pool":"shared","nvidia.com/gpu.product":"NVIDIA-B200"}},
        "status":{"capacity":{"nvidia.com/gpu":"8","cpu":"64","memory":"512Gi","pods":"110"},"allocatable":{"nvidia.com/gpu":"8","cpu":"64","memory":"512Gi","pods":"110"}}}"#;
    p.ok_in(&["create", "-f", "-"], node).await;
    p.wait_condition("inst/big -n tenant-startup", "Ready", 60).await;
    assert_eq!(
        p.jsonpath(&["get", "inst", "big", "-n", "tenant-startup"], "{.status.node}").await,
        "gpu-tw-b200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_short_is_a_condition_and_clears_when_room_appears() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    let inst = |name: &str, gpus: u32| {
        format!(
            "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {{name: {name}, namespace: tenant-startup}}\nspec:\n  model: {{format: safetensors, source: {{platform: default}}}}\n  gpu: {{count: {gpus}}}\n"
        )
    };
    p.ok_in(&["apply", "-f", "-"], &inst("first", 3)).await;
    p.wait_condition("inst/first -n tenant-startup", "Ready", 60).await;
    p.ok_in(&["apply", "-f", "-"], &inst("second", 2)).await;
    let message = until_some("QuotaAvailable=False", Duration::from_secs(20), || async {
        let v = p.json(&["get", "inst", "second", "-n", "tenant-startup"]).await;
        let c = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "QuotaAvailable" && c["status"] == "False")?
            .clone();
        Some(c["message"].as_str()?.to_string())
    })
    .await;
    assert!(message.contains("exceeded quota") && message.contains("nvidia.com/gpu"), "{message}");
    p.event_announced("tenant-startup", "QuotaExceeded").await;
    // No crash loop: a refused instance does not hammer the API server. Under API faults its
    // other children (key, claim, Service) may still be on their way when the condition shows;
    // each changes the quota's usage, and a quota change rightly asks for one more try.
    if p.api_faults() {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let before = p.writes_by_resource().await.get("pods").copied().unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = p.writes_by_resource().await.get("pods").copied().unwrap_or(0.0);
    assert!(after - before <= 1.0, "pod create attempts in 3 s: {}", after - before);

    p.ok(&["delete", "inst", "first", "-n", "tenant-startup"]).await;
    p.wait_condition("inst/second -n tenant-startup", "Ready", 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_revokes_the_old_one_and_prompts_update_in_place() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.ok(&["apply", "-f", &example("good/instance-safetensors.yaml")]).await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 60).await;
    let proxy = p.kubectl_proxy().await;
    let old = api_key(&p, "tenant-startup", "chat").await;
    let tokens = |key: String| {
        let proxy = &proxy;
        async move {
            let (code, v) =
                chat(proxy, "tenant-startup", "chat", "chat", Some(&key), json!({"max_tokens": 1}))
                    .await;
            (code, v["usage"]["prompt_tokens"].as_u64().unwrap_or(0))
        }
    };
    let (_, before) = tokens(old.clone()).await;

    // A new prompt reaches the running server through its volume: same pod.
    let uid = pod_uid(&p, "tenant-startup", "chat").await.unwrap();
    p.ok(&["patch", "inst", "chat", "-n", "tenant-startup", "--type=merge", "-p", r#"{"spec":{"systemPrompt":"You are the helpful, patient and precise assistant of Startup Inc., and you answer in full sentences."}}"#]).await;
    eventually("the longer prompt is used", Duration::from_secs(20), || async {
        tokens(old.clone()).await.1 > before
    })
    .await;
    assert_eq!(
        pod_uid(&p, "tenant-startup", "chat").await.unwrap(),
        uid,
        "no restart for a prompt edit"
    );

    p.ok(&[
        "annotate",
        "inst",
        "chat",
        "-n",
        "tenant-startup",
        "alcove.dev/rotate-api-key=2026-11-22",
    ])
    .await;
    let new = until_some("a new key", Duration::from_secs(20), || async {
        let k = api_key(&p, "tenant-startup", "chat").await;
        (k != old).then_some(k)
    })
    .await;
    // A rotation re-creates the pod, so the old key stops at once (the running server would
    // also read the new key when its volume refreshes, so "the new key works" alone could be
    // met by the old pod while the re-creation still waits, as under API faults it can).
    let rotated = until_some("the pod re-created for the new key", Duration::from_secs(30), || {
        let uid = uid.clone();
        let p = &p;
        async move { pod_uid(p, "tenant-startup", "chat").await.filter(|u| *u != uid) }
    })
    .await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 60).await;
    eventually("the new key works", Duration::from_secs(30), || async {
        tokens(new.clone()).await.0 == 200
    })
    .await;
    assert_eq!(tokens(old.clone()).await.0, 401, "the old key is revoked");
    p.event_announced("tenant-startup", "ApiKeyRotated").await;

    // The status publishes the key's hash, which is noted on its Secret: the operator caches
    // Secrets' metadata only and never holds the key.
    let sha = |key: &str| alcove_testkit::model_server::sha256_hex(key.as_bytes());
    let published = || async {
        p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await["status"]["apiKeyHash"]
            .as_str()
            .map(str::to_string)
    };
    eventually("the new key's hash is published", Duration::from_secs(20), || async {
        published().await == Some(sha(&new))
    })
    .await;
    let secret = p.json(&["get", "secret", "chat-api-key", "-n", "tenant-startup"]).await;
    assert_eq!(secret["metadata"]["annotations"]["alcove.dev/api-key-sha256"], sha(&new));
    // A key made before hashes were noted (no annotation), and a status that lost its hash: the
    // operator reads the key from the API server and publishes its hash again.
    p.ok(&[
        "annotate",
        "secret",
        "chat-api-key",
        "-n",
        "tenant-startup",
        "alcove.dev/api-key-sha256-",
    ])
    .await;
    p.ok(&[
        "patch",
        "inst",
        "chat",
        "-n",
        "tenant-startup",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"apiKeyHash":null}}"#,
    ])
    .await;
    eventually("the hash is published again", Duration::from_secs(20), || async {
        published().await == Some(sha(&new))
    })
    .await;
    assert_eq!(
        pod_uid(&p, "tenant-startup", "chat").await,
        Some(rotated),
        "publishing the hash again re-creates nothing"
    );
    assert_eq!(tokens(new.clone()).await.0, 200);
}

/// A usage ConfigMap the gateway wrote after its instance's destroy (it heard of the deletion
/// late: a cut watch, a restart) is swept, and one whose instance exists is kept. (Found by the
/// chaos test under API faults: a ConfigMap left behind with no instance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_instances_usage_config_map_is_swept_and_a_live_ones_kept() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    let parked = "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: parked, namespace: tenant-startup}\nspec:\n  state: Suspended\n  model: {format: safetensors, source: {platform: default}}\n";
    p.ok_in(&["apply", "-f", "-"], parked).await;
    let live =
        p.jsonpath(&["get", "inst", "parked", "-n", "tenant-startup"], "{.metadata.uid}").await;
    let usage = |uid: &str, instance: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: usage-{uid}\n  namespace: alcove-system\n  labels: {{alcove.dev/usage: gateway, alcove.dev/instance: {instance}}}\ndata: {{tenant: startup, namespace: tenant-startup, instance: {instance}, instanceUid: {uid}, requests: '3', promptTokens: '40', completionTokens: '9'}}\n"
        )
    };
    p.ok_in(&["apply", "-f", "-"], &usage(&live, "parked")).await;
    // A gone one: its name's instance exists, but not with that UID (made again since).
    p.ok_in(&["apply", "-f", "-"], &usage("5f0c9d2e-0000-4000-8000-000000000001", "parked")).await;
    eventually("the gone instance's usage swept", Duration::from_secs(45), || async {
        !p.kubectl(&[
            "get",
            "configmap",
            "usage-5f0c9d2e-0000-4000-8000-000000000001",
            "-n",
            "alcove-system",
        ])
        .await
        .0
    })
    .await;
    assert!(
        p.kubectl(&["get", "configmap", &format!("usage-{live}"), "-n", "alcove-system"]).await.0,
        "the live instance's usage is kept"
    );
}
