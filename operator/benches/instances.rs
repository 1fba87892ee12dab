//! Benchmark (not a test): N tenants × M instances on devcluster, with simulated containers
//! (the inference image is not mapped to a program, so pods run and turn Ready as KWOK's do).
//!
//!   cargo bench -p alcove --bench instances -- --tenants 10 --instances 100
//!   cargo bench -p alcove --bench instances -- --tenants 100 --instances 100
//!   cargo bench -p alcove --bench instances -- --raw-only    # devcluster's raw write rates only
//!   cargo bench -p alcove --bench instances -- --tenants 100 --instances 100 --shards 4
//!       # 4 operator replicas, each holding one of 4 shards (RSS printed per replica)
//!   cargo bench -p alcove --bench instances -- --tenants 11 --instances 10 --big 250
//!       # fairness: t0 creates 250 instances (the quota allows 256 GPUs) before 10 others create 10 each
//!   BENCH_OPERATOR_BIN=wrapper …   # run the operator through a wrapper (e.g. heaptrack)
//!
//! Prints the time until every instance is Ready (and the p50/p99 time to Ready, overall and per
//! tenant), the operator's writes per instance by resource, its writes during a no-op resync
//! window (must be 0), its peak RSS, and the ratio of the convergence time
//! to (operator writes ÷ devcluster's raw server-side-apply rate on the same machine): 1.0 would
//! mean the operator converges as fast as the API server can take its writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alcove_crds::{InferenceInstance, Tenant};
use alcove_devcluster::{Config, DevCluster, NodeConfig};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Client writes by resource, from devcluster's request metrics.
async fn writes(client: &kube::Client) -> BTreeMap<String, f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    alcove_devcluster::metrics::writes_by_resource(&text)
}

fn kubectl(kubeconfig: &Path, dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", dir.join("kubecache"))
        .env("HOME", dir)
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let tenants = arg("--tenants", 10);
    let per_tenant = arg("--instances", 100);
    // `--big N`: tenant t0 has N instances, created before everyone else's (fairness).
    let big = arg("--big", 0);
    let count = move |t: usize| if t == 0 && big > 0 { big } else { per_tenant };
    let resync = arg("--resync", 20);
    let shards = arg("--shards", 1).max(1);
    let total: usize = (0..tenants).map(count).sum();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("default")).unwrap();

    // GPU nodes for everyone (8 GPUs each) plus headroom, all in the shared pool of one region.
    let nodes = total.div_ceil(8) + 2;
    let mut config = Config::new(dir.path().join("cluster"));
    for n in 0..nodes {
        config = config.node(
            NodeConfig::gpu(&format!("gpu-{n}"), "tw-taipei-1", "NVIDIA-H100-80GB-HBM3", 8)
                .label("alcove.dev/pool", "shared"),
        );
    }
    config.csi_drivers.push(alcove_devcluster::CsiDriver {
        driver: "models.alcove.dev".into(),
        attribute: "model".into(),
        root: models.clone(),
    });
    let cluster = DevCluster::start(config).await.expect("devcluster");
    let client = cluster.client().await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    kubectl(
        &cluster.kubeconfig,
        dir.path(),
        &["apply", "-f", root.join("crds/manifests").to_str().unwrap()],
    );
    kubectl(&cluster.kubeconfig, dir.path(), &["create", "namespace", "alcove-system"]);
    println!(
        "instances benchmark: {tenants} tenants × {per_tenant} instances{} = {total}, {nodes} simulated GPU nodes, {shards} shard(s), {} CPU(s)",
        if big > 0 { format!(" (t0: {big})") } else { String::new() },
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1)
    );

    // devcluster's raw write rate here: server-side applies of small objects, 16 and 64 clients.
    let raw_n = 3000;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut raw_rates = Vec::new();
    for clients in [16, 64] {
        let started = Instant::now();
        futures::stream::iter(0..raw_n)
            .map(|i| {
                let api = api.clone();
                async move {
                    let name = format!("raw-{clients}-{i}");
                    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
                    api.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&cm)).await.expect("apply");
                }
            })
            .buffer_unordered(clients)
            .collect::<Vec<_>>()
            .await;
        let rate = raw_n as f64 / started.elapsed().as_secs_f64();
        println!(
            "  devcluster raw write rate (server-side apply, {clients} clients): {rate:.0} writes/s"
        );
        raw_rates.push(rate);
    }
    let raw_rate = raw_rates[0];
    if std::env::args().any(|a| a == "--raw-only") {
        cluster.shutdown().await;
        return;
    }

    // One operator, or (`--shards N`) N replicas sharing N shards, which the benchmark waits for.
    let mut operators = Vec::new();
    for r in 0..shards {
        let log = std::fs::File::create(dir.path().join(format!("operator-{r}.log"))).unwrap();
        let operator = tokio::process::Command::new(
            std::env::var("BENCH_OPERATOR_BIN").unwrap_or(env!("CARGO_BIN_EXE_alcove").into()),
        )
        .args([
            "operator",
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--resync-seconds",
            &resync.to_string(),
            "--leader-election=false",
            "--shards",
            &shards.to_string(),
            "--identity",
            &format!("bench-{r}"),
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("ALCOVE_LOG", std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("alcove binary");
        operators.push(operator);
    }
    let pids: Vec<u32> = operators.iter().map(|o| o.id().unwrap_or(0)).collect();
    if shards > 1 {
        let leases: Api<Lease> = Api::namespaced(client.clone(), "alcove-system");
        let started = Instant::now();
        loop {
            let held: std::collections::BTreeSet<String> = leases
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|l| l.name_any().starts_with("alcove-operator-shard-"))
                .filter_map(|l| alcove::leader::holder(l).map(str::to_string))
                .collect();
            if held.len() == shards {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "shards not spread: {held:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "  {shards} operator replicas, one shard each, after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    let before = alcove_devcluster::metrics::reconcile_writes(&writes(&client).await);
    let rv_before = cluster.shared().lock().current_rv();
    // Every write the store takes, by resource, so devcluster's own share (scheduler, kubelet,
    // controllers, Events) names its parts too.
    let store_counts = || {
        let mut by_resource: BTreeMap<String, u64> = BTreeMap::new();
        for (gr, n) in cluster.shared().lock().writes_by_resource() {
            *by_resource.entry(gr.resource.clone()).or_default() += n;
        }
        by_resource
    };
    let store_counts_before = store_counts();
    let started = Instant::now();
    let tenants_api: Api<Tenant> = Api::all(client.clone());
    futures::stream::iter(0..tenants)
        .map(|t| {
            let api = tenants_api.clone();
            async move {
                let n = count(t);
                let tenant: Tenant = serde_json::from_value(json!({
                    "apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": format!("t{t}")},
                    "spec": {"displayName": format!("Tenant {t}"), "tier": "basic", "region": "tw-taipei-1", "quota": {"maxGpus": n, "maxInstances": n, "maxStorage": "100Ti", "maxKnowledgeBases": 1}},
                }))
                .unwrap();
                api.create(&PostParams::default(), &tenant).await.expect("tenant");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // Instances go into each tenant's namespace as soon as the operator has made it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut created = vec![false; tenants];
    // When each instance was created, and when it was first seen Ready.
    let created_at: Arc<Mutex<BTreeMap<(String, String), Instant>>> = Arc::default();
    // A watch notes when each instance is first seen Ready, from the first create on.
    let ready_at: Arc<Mutex<BTreeMap<(String, String), Instant>>> = Arc::default();
    let watching = tokio::spawn({
        let ready_at = ready_at.clone();
        let api: Api<InferenceInstance> = Api::all(client.clone());
        kube::runtime::watcher(api, kube::runtime::watcher::Config::default()).for_each(move |e| {
            if let Ok(
                kube::runtime::watcher::Event::Apply(i)
                | kube::runtime::watcher::Event::InitApply(i),
            ) = e
                && i.status.as_ref().and_then(|s| s.phase)
                    == Some(alcove_crds::InstancePhase::Ready)
            {
                ready_at
                    .lock()
                    .unwrap()
                    .entry((i.namespace().unwrap_or_default(), i.name_any()))
                    .or_insert_with(Instant::now);
            }
            futures::future::ready(())
        })
    });
    while created.iter().any(|c| !c) {
        let have: Vec<String> = namespaces
            .list(&ListParams::default().labels(alcove_crds::LABEL_TENANT))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let ready: Vec<usize> = (0..tenants)
            .filter(|t| !created[*t] && have.contains(&format!("tenant-t{t}")))
            .collect();
        for t in &ready {
            created[*t] = true;
        }
        futures::stream::iter(ready.into_iter().flat_map(|t| (0..count(t)).map(move |i| (t, i))))
            .map(|(t, i)| {
                let api: Api<InferenceInstance> = Api::namespaced(client.clone(), &format!("tenant-t{t}"));
                let created_at = created_at.clone();
                async move {
                    let inst: InferenceInstance = serde_json::from_value(json!({
                        "apiVersion": "alcove.dev/v1alpha1", "kind": "InferenceInstance", "metadata": {"name": format!("i{i}")},
                        "spec": {"model": {"format": "safetensors", "source": {"platform": "default"}}},
                    }))
                    .unwrap();
                    let at = Instant::now();
                    api.create(&PostParams::default(), &inst).await.expect("instance");
                    created_at.lock().unwrap().insert((format!("tenant-t{t}"), format!("i{i}")), at);
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The benchmark's own creates share the machine with everything else: when they end bounds
    // how early convergence could.
    let all_created = started.elapsed();
    let mut last_print = Instant::now();
    loop {
        let ready = ready_at.lock().unwrap().len();
        if ready == total {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("  … {ready}/{total} Ready after {:.0?}", started.elapsed());
            last_print = Instant::now();
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "not converged within an hour");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converge = started.elapsed();
    watching.abort();
    let ready_at = std::mem::take(&mut *ready_at.lock().unwrap());
    // Every write the store took meanwhile (each one a resourceVersion): the operator's, the
    // benchmark's, and devcluster's own scheduler, kubelet, controllers and Events.
    let store_writes = (cluster.shared().lock().current_rv() - rv_before) as f64;
    let mut store_by_resource: Vec<(String, u64)> = store_counts()
        .into_iter()
        .map(|(r, n)| (r.clone(), n - store_counts_before.get(&r).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    store_by_resource.sort_by_key(|(r, n)| (std::cmp::Reverse(*n), r.clone()));
    // The creations of this benchmark itself are not the operator's writes.
    let bench_writes = (tenants + total) as f64;
    tokio::time::sleep(Duration::from_secs(2)).await; // stragglers (tenant aggregates)
    let after_map = writes(&client).await;
    let operator_writes =
        alcove_devcluster::metrics::reconcile_writes(&after_map) - before - bench_writes;

    // A no-op window covering two full resyncs: every object is reconciled twice, nothing written.
    let window_start = writes(&client).await;
    tokio::time::sleep(Duration::from_secs(2 * resync as u64 + 5)).await;
    let window_end = writes(&client).await;
    let window = alcove_devcluster::metrics::reconcile_writes(&window_end)
        - alcove_devcluster::metrics::reconcile_writes(&window_start);
    // By resource, so a regression names what it rewrites.
    let window_by_resource: Vec<String> = window_end
        .iter()
        .filter(|(k, _)| *k != "leases" && *k != "events")
        .map(|(k, v)| (k, v - window_start.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .map(|(k, d)| format!("{k}={d:.0}"))
        .collect();
    let rss: Vec<f64> = pids.iter().map(|p| peak_rss_mib(*p)).collect();
    let ideal = operator_writes / raw_rate;

    println!(
        "  converged: {total} instances Ready in {:.2} s ({:.0} instances/s)",
        converge.as_secs_f64(),
        total as f64 / converge.as_secs_f64()
    );
    println!(
        "  the benchmark's creates (tenants, then instances as namespaces appeared) ended after {:.2} s",
        all_created.as_secs_f64()
    );
    println!(
        "  operator writes: {operator_writes:.0} ({:.2} per instance, tenants' included)",
        operator_writes / total as f64
    );
    let mut by_resource: Vec<(String, f64)> = after_map
        .into_iter()
        .filter(|(k, _)| k != "leases" && k != "events" && k != "configmaps")
        .collect();
    by_resource.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "  writes by resource (incl. the benchmark's own creates): {}",
        by_resource.iter().map(|(k, v)| format!("{k}={v:.0}")).collect::<Vec<_>>().join(" ")
    );
    println!(
        "  writes during a {} s no-op window (two full resyncs): {window:.0}{}",
        2 * resync + 5,
        if window_by_resource.is_empty() {
            String::new()
        } else {
            format!(" ({})", window_by_resource.join(" "))
        }
    );
    let status_writes = by_resource
        .iter()
        .find(|(k, _)| k == "inferenceinstances/status")
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    println!("  instance status writes: {:.2} per instance", status_writes / total as f64);
    if shards == 1 {
        println!(
            "  operator peak RSS: {:.0} MiB ({:.1} KiB per instance)",
            rss[0],
            rss[0] * 1024.0 / total as f64
        );
    } else {
        let sum: f64 = rss.iter().sum();
        println!(
            "  operator peak RSS: {} MiB, {sum:.0} MiB in all ({:.1} KiB per instance)",
            rss.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" + "),
            sum * 1024.0 / total as f64
        );
    }
    println!("  devcluster (this process) peak RSS: {:.0} MiB", peak_rss_mib(std::process::id()));
    // Time to Ready from each instance's creation, over all instances and per tenant (fairness:
    // no tenant starved).
    let created_at = std::mem::take(&mut *created_at.lock().unwrap());
    let seconds = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * q).round() as usize]
    };
    let mut all = Vec::new();
    let mut tenant_p50 = Vec::new();
    let mut tenant_p99 = Vec::new();
    let mut big_tenant = Vec::new();
    for t in 0..tenants {
        let ns = format!("tenant-t{t}");
        let mut mine: Vec<f64> = ready_at
            .range((ns.clone(), String::new())..)
            .take_while(|((n, _), _)| *n == ns)
            .map(|(key, at)| at.duration_since(created_at[key]).as_secs_f64())
            .collect();
        all.extend(mine.iter().copied());
        if t == 0 && big > 0 {
            big_tenant = mine;
            continue;
        }
        tenant_p50.push(seconds(&mut mine, 0.5));
        tenant_p99.push(seconds(&mut mine, 0.99));
    }
    if big > 0 {
        println!(
            "  time to Ready of t0 ({big} instances, created first): p50 {:.1} s, p99 {:.1} s",
            seconds(&mut big_tenant, 0.5),
            seconds(&mut big_tenant, 0.99)
        );
    }
    println!(
        "  time to Ready (from each instance's creation): p50 {:.1} s, p99 {:.1} s; per tenant{}, p50 from {:.1} to {:.1} s and p99 from {:.1} to {:.1} s",
        seconds(&mut all, 0.5),
        seconds(&mut all, 0.99),
        if big > 0 { " but t0" } else { "" },
        seconds(&mut tenant_p50, 0.0),
        seconds(&mut tenant_p50, 1.0),
        seconds(&mut tenant_p99, 0.0),
        seconds(&mut tenant_p99, 1.0),
    );
    println!(
        "  convergence ÷ (writes ÷ raw rate) = {:.2} s ÷ {ideal:.2} s = {:.2}",
        converge.as_secs_f64(),
        converge.as_secs_f64() / ideal
    );
    println!(
        "  all writes the store took while converging (scheduler, kubelet, controllers, Events included): {store_writes:.0} ({:.1} per instance); convergence ÷ (those ÷ raw rate) = {:.2}",
        store_writes / total as f64,
        converge.as_secs_f64() / (store_writes / raw_rate)
    );
    println!(
        "  those by resource: {}",
        store_by_resource.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(" ")
    );
    for mut o in operators {
        let _ = o.kill().await;
    }
    if let Ok(keep) = std::env::var("BENCH_KEEP_LOG") {
        let _ = std::fs::copy(dir.path().join("operator-0.log"), keep);
    }
    cluster.shutdown().await;
}
