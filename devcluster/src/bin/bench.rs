//! `cargo run --release -p alcove-devcluster --bin devcluster-bench [-- --objects N --clients C]`
//!
//! Raw request rates of devcluster through the kube-rs client over HTTPS: creates, merge patches,
//! server-side applies and gets of small ConfigMaps from C concurrent clients, and the latency
//! from sending a write to receiving its watch event. Operator benchmarks state their ratio to these
//! figures, so devcluster is never mistaken for the bottleneck.

use std::time::{Duration, Instant};

use alcove_devcluster::{Config, DevCluster};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"bench": "yes"}}, "data": {"k": "v"}}),
    )
    .expect("configmap")
}

async fn phase<F, Fut>(label: &str, n: usize, clients: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                f(i).await;
                i += clients;
            }
        }));
    }
    for t in tasks {
        t.await.expect("bench task");
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!("{label:<28} {n:>7} requests in {secs:>6.2} s = {rate:>8.0} /s");
    rate
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = arg("--objects", 5000);
    let clients = arg("--clients", 16);
    let dir = tempfile_dir();
    let cluster = DevCluster::start(Config::new(&dir)).await.expect("devcluster starts");
    println!(
        "devcluster-bench: {n} small ConfigMaps, {clients} concurrent clients, {} CPU(s)",
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1)
    );
    let clients_vec: Vec<kube::Client> =
        futures::future::join_all((0..clients).map(|_| cluster.client()))
            .await
            .into_iter()
            .map(|c| c.expect("client"))
            .collect();
    let api_for = move |i: usize| -> Api<ConfigMap> {
        Api::namespaced(clients_vec[i % clients_vec.len()].clone(), "default")
    };

    let a = api_for.clone();
    let create = phase("create (POST)", n, clients, move |i| {
        let api = a(i);
        async move {
            api.create(&PostParams::default(), &cm(&format!("cm-{i}"))).await.expect("create");
        }
    })
    .await;
    let a = api_for.clone();
    let patch = phase("merge patch (PATCH)", n, clients, move |i| {
        let api = a(i);
        async move {
            api.patch(
                &format!("cm-{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"k": format!("v{i}")}})),
            )
            .await
            .expect("patch");
        }
    })
    .await;
    let a = api_for.clone();
    let apply = phase("server-side apply (APPLY)", n, clients, move |i| {
        let api = a(i);
        async move {
            let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}, "data": {"applied": "yes"}});
            api.patch(&format!("cm-{i}"), &PatchParams::apply("bench"), &Patch::Apply(&cfg)).await.expect("apply");
        }
    })
    .await;
    let a = api_for.clone();
    let get = phase("get (GET)", n, clients, move |i| {
        let api = a(i);
        async move {
            api.get(&format!("cm-{i}")).await.expect("get");
        }
    })
    .await;

    // Watch latency: time from sending a write to receiving its event on an open watch.
    let api = api_for(0);
    let rv = api
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream =
        api.watch(&WatchParams::default().labels("probe=yes"), &rv).await.expect("watch").boxed();
    let mut latencies = Vec::new();
    for i in 0..200 {
        let mut probe = cm(&format!("probe-{i}"));
        probe.metadata.labels = Some([("probe".to_string(), "yes".to_string())].into());
        let sent = Instant::now();
        api.create(&PostParams::default(), &probe).await.expect("create probe");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
                .await
                .expect("event in time")
                .expect("watch ok")
            {
                Some(WatchEvent::Added(o))
                    if o.metadata.name.as_deref() == Some(&format!("probe-{i}")) =>
                {
                    break;
                }
                Some(_) => continue,
                None => panic!("watch ended"),
            }
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let p =
        |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "watch event latency          p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    let writes = [create, patch, apply];
    let slowest_write = writes.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "slowest write rate           {slowest_write:.0} /s (goal >= 5000 /s): {}",
        if slowest_write >= 5000.0 { "met" } else { "NOT met" }
    );
    println!("get rate                     {get:.0} /s");
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("devcluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
