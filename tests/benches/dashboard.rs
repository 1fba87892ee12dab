//! The dashboard's page times under load: 50 signed-in sessions (50 owners of one tenant) each
//! loading the overview and an instance's page over and over, at the same time.
//!
//!     cargo bench -p alcove-tests --bench dashboard [-- --sessions N --seconds S]
//!
//! Against devcluster and the operator (instances whose pods are simulated: the pages read the
//! API, not the pod), `alcove dashboard` as its own process with an SQLite store, sign-in through
//! a real SMTP server. Prints p50 and p99 per page, requests per second, and the CPU.

use std::time::{Duration, Instant};

use alcove_tests::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

async fn get(client: &HttpClient, url: &str, cookie: &str) -> Duration {
    let started = Instant::now();
    let req = hyper::Request::get(url).header("cookie", cookie).body(Empty::new()).unwrap();
    let resp = client.request(req).await.expect("request");
    assert_eq!(resp.status(), 200, "{url}");
    resp.into_body().collect().await.expect("body");
    started.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let sessions = arg("--sessions", 50) as usize;
    let seconds = arg("--seconds", 20);
    let mut p = Platform::start().await;
    p.spawn_operator(&[]).await;
    let owners: String = (0..sessions)
        .map(|i| format!("    - {{kind: User, name: user{i}@startup.example}}\n"))
        .collect();
    let tenant = format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: startup}}\nspec:\n  displayName: Startup Inc.\n  tier: basic\n  region: tw-taipei-1\n  owners:\n{owners}"
    );
    p.ok_in(&["apply", "-f", "-"], &tenant).await;
    p.wait_condition("tenant/startup", "Ready", 60).await;
    p.ok(&["apply", "-f", &example("good/instance-safetensors.yaml")]).await;
    let kubeconfig = p.cluster.kubeconfig.clone();
    let d = Dashboard::start_as(
        &p,
        "dashboard",
        &kubeconfig,
        &["--gateway-url", "https://ai.alcove.example", "--trusted-proxies", "127.0.0.1"],
    )
    .await;

    // Sign in every session (each from its own client address, as behind an ingress).
    let mut cookies = Vec::new();
    for i in 0..sessions {
        let email = format!("user{i}@startup.example");
        let b = d.browser(&format!("s{i}"));
        let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
        let asked = b.post("/signin", &[("email", &email)], &[("X-Forwarded-For", &ip)]).await;
        assert_eq!(asked.status, 200, "{}", asked.body);
        let code = d.code(&email, 0).await;
        let done = b.post("/signin/code", &[("email", &email), ("code", &code)], &[]).await;
        assert_eq!(done.status, 303);
        let cookie = done.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
        cookies.push(cookie);
    }

    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(sessions)
        .build(HttpConnector::new());
    let pages = [("overview", "/".to_string()), ("instance page", "/t/startup/i/chat".to_string())];
    for (what, path) in &pages {
        // Warm-up: every session once.
        for c in &cookies {
            get(&client, &format!("{}{path}", d.url), c).await;
        }
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in cookies.clone() {
            let (client, url) = (client.clone(), format!("{}{path}", d.url));
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    times.push(get(&client, &url, &c).await);
                }
                times
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        println!(
            "{what:<14} {sessions} sessions: p50 {:.1} ms, p99 {:.1} ms, {:.0} pages/s ({} pages in {seconds} s)",
            quantile(&all, 0.5),
            quantile(&all, 0.99),
            all.len() as f64 / seconds as f64,
            all.len()
        );
    }
    println!(
        "machine: {}, {} CPUs",
        cpu(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
