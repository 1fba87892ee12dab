//! The gateway's data path through the API server's service proxy (`--upstream api-server`).
//! An instance the directory still holds as Ready while its pod is gone (the status has not
//! caught up) must get its request once, and the client a 503 at once, in OpenAI's shape, that
//! says to retry: kube's client retries 429, 503 and 504 by default, up to 15 times over
//! minutes, and a completion must not be sent twice. An API-fault run found a request held past
//! a minute this way.

use std::time::{Duration, Instant};

mod common;

use alcove_crds::instance::InferenceInstance;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sha2::Digest;

/// Requests the API server answered through a service proxy with `code`.
fn proxied(cluster: &alcove_devcluster::DevCluster, code: &str) -> f64 {
    let text = cluster.shared().metrics.render(&[]);
    alcove_devcluster::metrics::parse_request_totals(&text)
        .into_iter()
        .filter(|(l, _)| {
            l.get("subresource").map(String::as_str) == Some("proxy")
                && l.get("code").map(String::as_str) == Some(code)
        })
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_endpoints_gets_a_request_once_and_the_client_a_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) =
        common::cluster(&dir.path().join("cluster"), &["tenant-t", "alcove-system"]).await;
    // The instance as the operator left it while it served, and its Service, now without any
    // pod behind it.
    let key = "sk-alcove-data-path-test-key-0123456789";
    let hash: String =
        sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let instances: Api<InferenceInstance> = Api::namespaced(client.clone(), "tenant-t");
    let inst = serde_json::json!({
        "apiVersion": "alcove.dev/v1alpha1", "kind": "InferenceInstance",
        "metadata": {"name": "chat", "namespace": "tenant-t", "labels": {"alcove.dev/tenant": "t"}},
        "spec": {"model": {"format": "safetensors", "source": {"platform": "default"}}},
    });
    let created = alcove_testkit::until_some("the instance", Duration::from_secs(10), || async {
        let inst = serde_json::from_value(inst.clone()).unwrap();
        instances.create(&PostParams::default(), &inst).await.ok()
    })
    .await;
    assert_eq!(created.metadata.name.as_deref(), Some("chat"));
    let status = serde_json::json!({"status": {
        "phase": "Ready", "apiKeyHash": hash,
        "rateLimits": {"requestsPerMinute": 1000, "tokensPerMinute": 1_000_000},
    }});
    instances.patch_status("chat", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chat", "namespace": "tenant-t"},
        "spec": {"selector": {"alcove.dev/instance": "chat"}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "tenant-t")
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    let args = alcove_gateway::GatewayArgs::embedded(
        alcove_gateway::upstream::Mode::ApiServer,
        format!("sqlite://{}", dir.path().join("usage.db").display()),
    );
    let (started, serving) = alcove_gateway::start(args, cluster.config()).await.unwrap();
    tokio::spawn(serving);
    let url = format!("http://{}/v1/chat/completions", started.public);
    let post = || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "60"])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .args(["-H", "Content-Type: application/json"])
            .args(["--data", r#"{"messages": [{"role": "user", "content": "Hi"}]}"#])
            .arg(&url)
            .output()
            .unwrap();
        let raw = String::from_utf8_lossy(&out.stdout).to_string();
        let code = raw.split(' ').nth(1).unwrap_or("000").to_string();
        (code, raw)
    };
    alcove_testkit::eventually("the gateway knows the key", Duration::from_secs(30), || async {
        post().0 != "401"
    })
    .await;

    let before = proxied(&cluster, "503");
    let t = Instant::now();
    let (code, answer) = post();
    let took = t.elapsed();
    assert_eq!(code, "503", "{answer}");
    assert!(answer.contains(r#""code":"instance_not_ready""#), "OpenAI's shape: {answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 5"), "{answer}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert_eq!(proxied(&cluster, "503") - before, 1.0, "the request went to the proxy once");
}
