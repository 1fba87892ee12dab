//! What the gateway costs: the same instance (a real `alcove-inference` with a test model) called
//! directly and through `alcove gateway`, in one run, one after the other.
//!
//!     cargo bench -p alcove-gateway --bench overhead [-- --requests N --seconds S --concurrency C]
//!
//! Prints, for `GET /v1/models` (the gateway's own cost, the instance does almost nothing) and
//! a one-token chat completion: latency p50 and p99 each way and the difference; the most
//! requests per second with C connections each way and their ratio; and the time to the first
//! streamed token each way. The gateway runs in-process with plain HTTP (as behind a
//! TLS-terminating load balancer), keys by hash, limits, metering and records on; the instance
//! object lives in devcluster with its status as the operator would write it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alcove_crds::instance::InferenceInstance;
use alcove_testkit::bench::{arg, machine, quantile_ms};

#[path = "../tests/common/mod.rs"]
mod common;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sha2::Digest;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    key: &str,
    body: Option<&str>,
) -> Duration {
    let started = Instant::now();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .unwrap();
    let resp = client.request(req).await.expect("request");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.into_body().collect().await.expect("body");
    started.elapsed()
}

async fn latencies(
    client: &HttpClient,
    method: &str,
    url: &str,
    key: &str,
    body: Option<&str>,
    n: u64,
) -> Vec<Duration> {
    for _ in 0..20 {
        call(client, method, url, key, body).await;
    }
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(call(client, method, url, key, body).await);
    }
    v.sort();
    v
}

async fn throughput(
    method: &str,
    url: &str,
    key: &str,
    body: Option<&str>,
    seconds: u64,
    concurrency: u64,
) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (method, url, key, done) =
            (method.to_string(), url.to_string(), key.to_string(), done.clone());
        let body = body.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            while Instant::now() < deadline {
                call(&client, &method, &url, &key, body.as_deref()).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}

/// Time to the first content event of a stream.
async fn first_token(client: &HttpClient, url: &str, key: &str) -> Duration {
    let started = Instant::now();
    let body = r#"{"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16, "stream": true}"#;
    let req = hyper::Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let mut resp = client.request(req).await.unwrap().into_body();
    let mut seen = String::new();
    let mut at = None;
    while let Some(frame) = resp.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
            if at.is_none()
                && seen.contains(r#""content":""#)
                && seen.matches("data: ").count() >= 2
            {
                at = Some(started.elapsed());
            }
        }
    }
    at.expect("a streamed token")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let requests = arg("--requests", 2000);
    let seconds = arg("--seconds", 5);
    let concurrency = arg("--concurrency", 8);
    let dir = tempfile::tempdir().unwrap();

    // The instance: alcove-inference serving a test model on a loopback port.
    let inference =
        alcove_testkit::cargo_build(&["--release", "-p", "alcove-inference"], "alcove-inference");
    let model = dir.path().join("model");
    let made = std::process::Command::new(&inference)
        .args(["make-test-model", "--out", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let key = "k".repeat(64);
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, &key).unwrap();
    let port = alcove_testkit::free_port();
    let _server = tokio::process::Command::new(&inference)
        .args(["serve", "--model", model.to_str().unwrap(), "--model-id", "chat"])
        .args(["--port", &port.to_string(), "--api-key-file", key_file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let direct = format!("http://127.0.0.1:{port}");
    alcove_testkit::eventually("the instance serves", Duration::from_secs(60), || async {
        alcove_testkit::curl(&format!("{direct}/readyz")).await.is_some()
    })
    .await;

    // Its InferenceInstance, Ready, with the key's hash published, as the operator leaves it.
    let (cluster, client) =
        common::cluster(&dir.path().join("cluster"), &["tenant-bench", "alcove-system"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let instances: Api<InferenceInstance> = Api::namespaced(client.clone(), "tenant-bench");
    let inst: InferenceInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "alcove.dev/v1alpha1", "kind": "InferenceInstance",
        "metadata": {"name": "chat", "namespace": "tenant-bench", "labels": {"alcove.dev/tenant": "bench"}},
        "spec": {"model": {"format": "safetensors", "source": {"platform": "default"}}, "gpu": {"count": 1}},
    }))
    .unwrap();
    instances.create(&PostParams::default(), &inst).await.unwrap();
    let hash: String =
        sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let status = serde_json::json!({"status": {
        "phase": "Ready", "endpoint": format!("{direct}/v1"), "apiKeyHash": hash,
        "rateLimits": {"requestsPerMinute": 100_000_000, "tokensPerMinute": 1_000_000_000},
    }});
    instances.patch_status("chat", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();

    // The gateway, in-process, dialing the instance's endpoint as it does in a cluster.
    let args = alcove_gateway::GatewayArgs::embedded(
        alcove_gateway::upstream::Mode::Service,
        format!("sqlite://{}", dir.path().join("usage.db").display()),
    );
    let (started, serving) = alcove_gateway::start(args, cluster.config()).await.unwrap();
    tokio::spawn(serving);
    let via = format!("http://{}", started.public);
    alcove_testkit::eventually("the gateway routes the key", Duration::from_secs(30), || async {
        let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let req = hyper::Request::get(format!("{via}/v1/models"))
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.request(req).await.is_ok_and(|r| r.status().is_success())
    })
    .await;

    println!(
        "gateway overhead: {}; instance: alcove-inference (release) with a test model",
        machine()
    );
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let chat =
        r#"{"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}"#;
    for (name, method, path, body) in [
        ("GET /v1/models", "GET", "/v1/models", None),
        ("POST /v1/chat/completions (1 token)", "POST", "/v1/chat/completions", Some(chat)),
    ] {
        let n = if body.is_some() { requests / 4 } else { requests };
        let d = latencies(&client, method, &format!("{direct}{path}"), &key, body, n).await;
        let g = latencies(&client, method, &format!("{via}{path}"), &key, body, n).await;
        let (d50, d99, g50, g99) = (
            quantile_ms(&d, 0.5),
            quantile_ms(&d, 0.99),
            quantile_ms(&g, 0.5),
            quantile_ms(&g, 0.99),
        );
        println!(
            "{name}, {n} sequential requests: direct p50 {d50:.3} ms p99 {d99:.3} ms; gateway p50 {g50:.3} ms p99 {g99:.3} ms; added p50 {:.3} ms p99 {:.3} ms (goal: p50 < 1 ms)",
            g50 - d50,
            g99 - d99
        );
    }
    // The most requests per second: a no-op (the gateway's own ceiling) and a one-token chat
    // completion (where the instance does real work, as it always does in production).
    for (name, method, path, body) in [
        ("GET /v1/models", "GET", "/v1/models", None),
        ("POST /v1/chat/completions (1 token)", "POST", "/v1/chat/completions", Some(chat)),
    ] {
        let d =
            throughput(method, &format!("{direct}{path}"), &key, body, seconds, concurrency).await;
        let g = throughput(method, &format!("{via}{path}"), &key, body, seconds, concurrency).await;
        println!(
            "{name}, {concurrency} connections for {seconds} s: direct {d:.0} req/s, gateway {g:.0} req/s, ratio {:.2} (goal ≥ 0.90)",
            g / d
        );
    }
    let mut td = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..20 {
        td.push(first_token(&client, &format!("{direct}/v1/chat/completions"), &key).await);
        tg.push(first_token(&client, &format!("{via}/v1/chat/completions"), &key).await);
    }
    td.sort();
    tg.sort();
    println!(
        "time to first streamed token, median of 20: direct {:.2} ms, gateway {:.2} ms",
        quantile_ms(&td, 0.5),
        quantile_ms(&tg, 0.5)
    );
    cluster.shutdown().await;
}
