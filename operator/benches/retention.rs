//! Benchmark (not a test): retention of N released volumes whose deadlines are spread over an
//! hour of injected time.
//!
//!   cargo bench -p alcove --bench retention -- --volumes 10000 --tenants 100
//!
//! devcluster and `alcove operator --clock-file F`; the volumes are created released (labels and
//! `alcove.dev/retain-until`), bound to directory-backed volumes. The benchmark then moves the
//! injected clock through the hour in steps (`--step-seconds` of injected time every
//! `--step-real-ms`), and for each volume measures its lateness: from the real instant the clock
//! passed its deadline to the real instant its claim was deleted (plus the step, the most the
//! injected clock can lag). Prints the worst and median lateness, early erasures (must be 0), and
//! the API writes spent per volume (goal: one delete each; receipts and Events are counted apart).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alcove_devcluster::{Config, DevCluster, NodeConfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn writes(client: &kube::Client) -> BTreeMap<String, f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for (labels, v) in alcove_devcluster::metrics::parse_request_totals(&text) {
        if alcove_devcluster::metrics::WRITE_VERBS.contains(&labels["verb"].as_str()) {
            *out.entry(format!(
                "{} {} {}",
                labels["verb"],
                labels["resource"],
                labels.get("code").cloned().unwrap_or_default()
            ))
            .or_default() += v;
        }
    }
    out
}

fn fmt(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let volumes = arg("--volumes", 10_000);
    let tenants = arg("--tenants", 100).max(1);
    let step = arg("--step-seconds", 30) as i64;
    let step_real = Duration::from_millis(arg("--step-real-ms", 1000) as u64);
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(
        Config::new(dir.path().join("cluster"))
            .node(NodeConfig::new("node-1").label("topology.kubernetes.io/region", "tw-taipei-1")),
    )
    .await
    .expect("devcluster");
    let client = cluster.client().await.unwrap();
    println!(
        "retention benchmark: {volumes} released volumes in {tenants} tenant namespaces, deadlines over one hour; clock step {step} s every {step_real:?}"
    );

    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in alcove_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.expect("crd");
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in std::iter::once("alcove-system".to_string())
        .chain((0..tenants).map(|t| format!("tenant-t{t}")))
    {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let t0: jiff::Timestamp = fmt(jiff::Timestamp::now()).parse().unwrap();
    let clock = dir.path().join("clock");
    alcove_clock::FileClock::set(&clock, t0).unwrap();
    // Deadlines: 60 s after t0 up to one hour later, evenly spread.
    let deadline_of =
        |i: usize| t0 + jiff::SignedDuration::from_secs(60 + (i as i64 * 3600) / volumes as i64);
    let mut deadlines: HashMap<(String, String), jiff::Timestamp> = HashMap::new();
    let started = Instant::now();
    let items: Vec<(usize, String, String)> =
        (0..volumes).map(|i| (i, format!("tenant-t{}", i % tenants), format!("v{i}"))).collect();
    for (i, ns, name) in &items {
        deadlines.insert((ns.clone(), name.clone()), deadline_of(*i));
    }
    futures::stream::iter(items)
        .map(|(i, ns, name)| {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let tenant = ns.trim_start_matches("tenant-").to_string();
            async move {
                let pvc = json!({"metadata": {"name": name,
                    "labels": {"app.kubernetes.io/managed-by": "alcove-operator", "alcove.dev/tenant": tenant, "alcove.dev/data-class": "conversationHistory", "alcove.dev/released": "true"},
                    "annotations": {"alcove.dev/retain-until": fmt(deadline_of(i)), "alcove.dev/retention-rule": "conversationHistory=7d"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}});
                api.create(&PostParams::default(), &serde_json::from_value(pvc).unwrap()).await.expect("pvc");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    println!("  created {volumes} claims in {:.1} s", started.elapsed().as_secs_f64());

    // Deletions, as the API server reports them.
    let deleted: Arc<Mutex<HashMap<(String, String), Instant>>> = Default::default();
    let seen = deleted.clone();
    let all: Api<PersistentVolumeClaim> = Api::all(client.clone());
    tokio::spawn(watcher(all, watcher::Config::default()).default_backoff().for_each(move |e| {
        if let Ok(watcher::Event::Delete(p)) = e {
            let key =
                (p.metadata.namespace.unwrap_or_default(), p.metadata.name.unwrap_or_default());
            seen.lock().unwrap().insert(key, Instant::now());
        }
        futures::future::ready(())
    }));

    let log = std::fs::File::create(dir.path().join("operator.log")).unwrap();
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_alcove"))
        .args([
            "operator",
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--leader-election=false",
            "--clock-file",
            clock.to_str().unwrap(),
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("ALCOVE_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("alcove binary");
    tokio::time::sleep(Duration::from_secs(5)).await; // caches fill; nothing is due yet
    let before = writes(&client).await;

    // Walk the injected clock through the hour; note when each instant was reached.
    let mut reached: Vec<(jiff::Timestamp, Instant)> = Vec::new();
    let mut now = t0;
    let end = t0 + jiff::SignedDuration::from_secs(3600 + 120);
    let walk = Instant::now();
    while now < end {
        now += jiff::SignedDuration::from_secs(step);
        alcove_clock::FileClock::set(&clock, now).unwrap();
        reached.push((now, Instant::now()));
        tokio::time::sleep(step_real).await;
    }
    let deadline_wait = Instant::now() + Duration::from_secs(300);
    while deleted.lock().unwrap().len() < volumes && Instant::now() < deadline_wait {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let walked = walk.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = writes(&client).await;

    let deleted = deleted.lock().unwrap().clone();
    let mut lateness: Vec<f64> = Vec::new();
    let mut early = 0;
    for (key, at) in &deleted {
        let Some(deadline) = deadlines.get(key) else { continue };
        // The real instant the injected clock first showed a time at or past the deadline.
        let Some((_, due)) = reached.iter().find(|(t, _)| t >= deadline) else { continue };
        if *at < *due {
            early += 1;
        }
        lateness.push(at.saturating_duration_since(*due).as_secs_f64());
    }
    lateness.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lateness.get(((lateness.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN)
    };
    let spent: BTreeMap<&String, f64> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let deletes = spent
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("delete persistentvolumeclaims 2"))
        .map(|(_, v)| v)
        .sum::<f64>();
    println!(
        "  erased {}/{volumes} in {:.0} s of real time (the hour walked at {}×)",
        deleted.len(),
        walked.as_secs_f64(),
        step as f64 / step_real.as_secs_f64()
    );
    println!(
        "  lateness after the clock passed the deadline (real time; + up to {step} s of clock step): worst {:.2} s, p99 {:.2} s, median {:.2} s",
        pct(1.0),
        pct(0.99),
        pct(0.5)
    );
    println!("  erased before the deadline: {early}");
    println!("  PVC deletes per volume: {:.2}", deletes / volumes as f64);
    println!(
        "  API writes during the hour: {}",
        spent.iter().map(|(k, v)| format!("{k}={v:.0}")).collect::<Vec<_>>().join(", ")
    );
    let _ = operator.kill().await;
    cluster.shutdown().await;
}
