//! The dashboard's page times under load: 50 signed-in sessions (50 owners of one tenant) each
//! loading the overview and an instance's page over and over, at the same time.
//!
//!     cargo bench -p alcove-tests --bench dashboard [-- --sessions N --seconds S]
//!
//! Against devcluster and the operator (instances whose pods are simulated: the pages read the
//! API, not the pod); the dashboard runs in this process, built like the benchmark (optimized),
//! with an SQLite store and its loopback mail sink. Prints p50 and p99 per page, pages per
//! second, and the CPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alcove_testkit::bench::{arg, machine, quantile_ms};
use alcove_tests::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn get(client: &HttpClient, url: &str, cookie: &str) -> Duration {
    let started = Instant::now();
    let req = hyper::Request::get(url).header("cookie", cookie).body(Full::default()).unwrap();
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
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(sessions)
        .build(HttpConnector::new());
    let (sink, sink_serving) =
        alcove_dashboard::mailsink::start(p.dir.path().join("mail")).await.unwrap();
    tokio::spawn(sink_serving);
    let mut args = alcove_dashboard::DashboardArgs::embedded(
        format!("smtp://127.0.0.1:{}", sink.port),
        format!("sqlite://{}", p.dir.path().join("dashboard.db").display()),
        "https://ai.alcove.example".into(),
        vec!["default=safetensors".parse().unwrap()],
    );
    // Each session signs in from its own address, as behind an ingress.
    args.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let (started, serving) =
        alcove_dashboard::start(args, p.client.clone(), Arc::new(alcove_clock::SystemClock))
            .await
            .unwrap();
    tokio::spawn(serving);
    let base = started.url.clone();
    let post = |path: &str, form: String, ip: String| {
        let req = hyper::Request::post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-for", ip)
            .body(Full::new(Bytes::from(form)))
            .unwrap();
        client.request(req)
    };
    let mut cookies = Vec::new();
    for i in 0..sessions {
        let email = format!("user{i}@startup.example");
        let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
        let asked = post("/signin", format!("email={email}"), ip.clone()).await.unwrap();
        assert_eq!(asked.status(), 200);
        let code = until_some("the code in the mail sink", Duration::from_secs(20), || async {
            std::fs::read_dir(&sink.dir)
                .ok()?
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .find(|m| m.contains(&format!("To: {email}")))?
                .lines()
                .find(|l| l.starts_with("Subject: "))?
                .rsplit(' ')
                .next()
                .map(|c| c.trim().to_string())
        })
        .await;
        let done = post("/signin/code", format!("email={email}&code={code}"), ip).await.unwrap();
        assert_eq!(done.status(), 303);
        let cookie = done.headers()["set-cookie"].to_str().unwrap();
        cookies.push(cookie.split(';').next().unwrap().to_string());
    }

    let pages = [("overview", "/".to_string()), ("instance page", "/t/startup/i/chat".to_string())];
    for (what, path) in &pages {
        // Warm-up: every session once.
        for c in &cookies {
            get(&client, &format!("{base}{path}"), c).await;
        }
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in cookies.clone() {
            let (client, url) = (client.clone(), format!("{base}{path}"));
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
            quantile_ms(&all, 0.5),
            quantile_ms(&all, 0.99),
            all.len() as f64 / seconds as f64,
            all.len()
        );
    }
    println!("machine: {}", machine());
}
