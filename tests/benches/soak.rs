//! Soak: the gateway and two instances under sustained concurrent load (issue 24 §6).
//!
//!     cargo bench -p alcove-tests --bench soak [-- --seconds 600 --concurrency 8 --sample 30]
//!
//! devcluster, the operator and `alcove gateway` run as processes, as deployed, and serve two
//! real `alcove-inference` instances (the GGUF and the safetensors test model) of two tenants.
//! The binaries are the debug builds the tests run. C clients send chat completions through the
//! gateway for S seconds, every other one streamed, each over its own keep-alive connection.
//!
//! Every `--sample` seconds it prints the resident memory of the gateway, the operator and each
//! instance, and the window's requests, errors, p50 and p99. At the end: each process's growth
//! from the end of warm-up (the first fifth of the run) and over the last half to the end (an
//! instance's prefix cache fills for a while by design), the last window's p99 against
//! the first one's after warm-up, the errors, and whether the gateway's usage store holds exactly
//! one record for each answer it gave (matched by `x-request-id`), and no other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alcove_dashboard::gateway::GatewayClient;
use alcove_testkit::bench::{arg, machine, quantile_ms};
use alcove_testkit::metric;
use alcove_tests::*;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// One answered (or failed) request: when it ended, how long it took, and its id when the
/// gateway gave one.
struct Done {
    at: Instant,
    took: Duration,
    ok: bool,
    id: Option<String>,
}

#[derive(Default)]
struct Log {
    done: Vec<Done>,
    errors: Vec<String>,
}

/// Resident memory of a process in MiB (0 once it is gone).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The instance's prefix cache in MiB (its metric, through the API server's service proxy): it
/// grows by design up to its bound (256 MiB), so memory beyond it is what could be a leak.
async fn prefix_cache_mib(p: &Platform, instance: Option<(&str, &str)>) -> Option<f64> {
    let (ns, name) = instance?;
    let path = format!("/api/v1/namespaces/{ns}/services/{name}:http/proxy/metrics");
    let (ok, text, _) = p.kubectl(&["get", "--raw", &path]).await;
    ok.then(|| metric(&text, "alcove_inference_prefix_cache_bytes", "") / (1 << 20) as f64)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

const INSTANCES: [(&str, &str, &str, &str); 2] = [
    (
        "acme",
        "tenant-acme",
        "bot",
        "{format: gguf, source: {platform: default-gguf}, path: model.gguf}",
    ),
    ("startup", "tenant-startup", "chat", "{format: safetensors, source: {platform: default}}"),
];

async fn run() {
    let seconds = arg("--seconds", 600);
    let concurrency = arg("--concurrency", 8) as usize;
    let sample = arg("--sample", 30).max(1);

    let mut p = Platform::start_with(with_inference).await;
    p.spawn_operator(&[]).await;
    let tenants = ["good/tenant-basic.yaml", "good/tenant-pro.yaml"].map(example);
    p.ok(&["apply", "-f", &tenants[0], "-f", &tenants[1]]).await;
    let mut keys = Vec::new();
    for (tenant, ns, name, model) in INSTANCES {
        p.wait_condition(&format!("tenant/{tenant}"), "Ready", 60).await;
        // The load, not the tier's rate limit, is what is measured.
        let yaml = format!(
            "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  model: {model}\n  limits: {{requestsPerMinute: 1000000, tokensPerMinute: 1000000000}}\n"
        );
        p.ok_in(&["apply", "-f", "-"], &yaml).await;
    }
    let mut instance_pids = Vec::new();
    for (_, ns, name, _) in INSTANCES {
        p.wait_condition(&format!("inst/{name} -n {ns}"), "Ready", 120).await;
        keys.push(api_key(&p, ns, name).await);
        let pods = Api::<Pod>::namespaced(p.client.clone(), ns).list(&Default::default()).await;
        let uid = pods
            .expect("pods")
            .items
            .into_iter()
            .find(|pod| pod.metadata.name.as_deref().is_some_and(|n| n.starts_with(name)))
            .and_then(|pod| pod.metadata.uid)
            .expect("the instance's pod");
        let pid = p.cluster.shared().runtime.pids(&uid).first().copied().expect("its process");
        instance_pids.push((format!("{ns}/{name}"), pid as u32, Some((ns, name))));
    }
    let gw = Gateway::start(&p, "gw", &[]).await;
    let mut processes = vec![
        ("gateway".to_string(), gw.child.id().expect("gateway pid"), None),
        ("operator".to_string(), p.operators[0].child.id().expect("operator pid"), None),
    ];
    processes.extend(instance_pids);

    println!("soak: {seconds} s, {concurrency} clients, a sample every {sample} s");
    println!("machine: {}", machine());
    let base = gw.base.trim_end_matches("/v1").to_string();
    let log = Arc::new(Mutex::new(Log::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut clients = Vec::new();
    for c in 0..concurrency {
        let client = GatewayClient::new(&base, Some(&gw.ca)).expect("client");
        let (log, key) = (log.clone(), keys[c % keys.len()].clone());
        let model = INSTANCES[c % INSTANCES.len()].2;
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let stream = n.is_multiple_of(2);
                let body = serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": format!("Request {n} of client {c}.")}],
                    "max_tokens": 16,
                    "temperature": 0,
                    "stream": stream,
                });
                let t = Instant::now();
                let answer = async {
                    let resp = client
                        .call(http::Method::POST, "/chat/completions", &key, Some(&body))
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    let (status, id) = (resp.status(), resp.headers().get("x-request-id").cloned());
                    let id = id.and_then(|v| v.to_str().ok().map(str::to_string));
                    let bytes = resp.into_body().collect().await.map_err(|e| (id.clone(), e));
                    let text = match bytes {
                        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                        Err((id, e)) => return Ok((id, Err(format!("reading the answer: {e}")))),
                    };
                    let complete = if stream {
                        text.trim_end().ends_with("data: [DONE]")
                    } else {
                        serde_json::from_str::<serde_json::Value>(&text)
                            .is_ok_and(|v| v["usage"]["completion_tokens"].as_i64() > Some(0))
                    };
                    Ok::<_, String>((
                        id,
                        if status == 200 && complete {
                            Ok(())
                        } else {
                            Err(format!("{status}: {}", text.chars().take(200).collect::<String>()))
                        },
                    ))
                }
                .await;
                let took = t.elapsed();
                let mut log = log.lock().unwrap();
                let (id, outcome) = match answer {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => (None, Err(e)),
                };
                if let Err(e) = &outcome {
                    log.errors.push(e.clone());
                }
                log.done.push(Done { at: Instant::now(), took, ok: outcome.is_ok(), id });
            }
        }));
    }

    // Samples: (seconds since start, RSS per process, window latencies, window errors).
    let mut rss: Vec<Vec<(f64, Option<f64>)>> = Vec::new();
    let mut p99s = Vec::new();
    let mut from = 0usize;
    print!("{:>6} {:>9} {:>7} {:>9} {:>9}", "t (s)", "requests", "errors", "p50 ms", "p99 ms");
    for (name, _, instance) in &processes {
        print!(" {:>24}", format!("{name} MiB"));
        if instance.is_some() {
            print!(" {:>10}", "cache MiB");
        }
    }
    println!();
    let mut next = started;
    while next < deadline {
        next += Duration::from_secs(sample);
        tokio::time::sleep_until(next.min(deadline).into()).await;
        let (mut took, errors) = {
            let log = log.lock().unwrap();
            let window = &log.done[from..];
            from = log.done.len();
            let took: Vec<Duration> = window.iter().filter(|d| d.ok).map(|d| d.took).collect();
            (took, window.iter().filter(|d| !d.ok).count())
        };
        took.sort();
        let mut now = Vec::new();
        for (_, pid, instance) in &processes {
            now.push((rss_mib(*pid), prefix_cache_mib(&p, *instance).await));
        }
        print!(
            "{:>6} {:>9} {:>7} {:>9.1} {:>9.1}",
            started.elapsed().as_secs(),
            took.len(),
            errors,
            quantile_ms(&took, 0.5),
            quantile_ms(&took, 0.99)
        );
        for (m, cache) in &now {
            print!(" {m:>24.1}");
            if let Some(c) = cache {
                print!(" {c:>10.1}");
            }
        }
        println!();
        rss.push(now);
        p99s.push(quantile_ms(&took, 0.99));
    }
    for c in clients {
        c.await.unwrap();
    }

    let (answered, ids, failed, errors, mut all) = {
        let log = log.lock().unwrap();
        let answered: Vec<&str> = log.done.iter().filter_map(|d| d.id.as_deref()).collect();
        let ids: BTreeSet<String> = answered.iter().map(|s| s.to_string()).collect();
        let all: Vec<Duration> = log.done.iter().filter(|d| d.ok).map(|d| d.took).collect();
        let failed = log.done.iter().filter(|d| !d.ok).count();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for e in &log.errors {
            *errors.entry(e.chars().take(120).collect()).or_default() += 1;
        }
        (answered.len(), ids, failed, errors, all)
    };
    all.sort();
    let total = all.len() + failed;
    let elapsed = log.lock().unwrap().done.last().map_or(0.0, |d| (d.at - started).as_secs_f64());

    // The gateway writes records in batches: wait until they stop coming.
    let store = gw.store().await;
    let records = async || {
        let mut ids = Vec::new();
        for (tenant, ..) in INSTANCES {
            let r = store.tenant_records(tenant, None, i64::MAX, 100_000_000).await.unwrap();
            ids.extend(r.into_iter().map(|r| r.request_id));
        }
        ids
    };
    let mut recorded = records().await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = records().await;
        if again.len() == recorded.len() && again.len() >= answered {
            break;
        }
        recorded = again;
    }
    let recorded_set: BTreeSet<String> = recorded.iter().cloned().collect();
    let duplicates = recorded.len() - recorded_set.len();
    let missing = ids.difference(&recorded_set).count();
    let unanswered = recorded_set.difference(&ids).count();

    let warm = (rss.len() / 5).max(1).min(rss.len().saturating_sub(1));
    println!();
    println!(
        "requests: {total} in {elapsed:.0} s ({:.1}/s), answered with an id: {answered}, failed: {failed}",
        total as f64 / elapsed.max(1.0)
    );
    println!(
        "latency over the run: p50 {:.1} ms, p99 {:.1} ms",
        quantile_ms(&all, 0.5),
        quantile_ms(&all, 0.99)
    );
    if let (Some(first), Some(last)) = (p99s.get(warm), p99s.last()) {
        let after: Vec<f64> = p99s[warm..].to_vec();
        let (lo, hi) = after.iter().fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!(
            "p99 per window after warm-up: first {first:.1} ms, last {last:.1} ms (ratio {:.2}), lowest {lo:.1}, highest {hi:.1}",
            last / first.max(f64::MIN_POSITIVE)
        );
    }
    println!("resident memory from the end of warm-up (sample {}) to the end:", warm + 1);
    for (i, (name, ..)) in processes.iter().enumerate() {
        let ((base, base_cache), (last, last_cache)) = (rss[warm][i], rss.last().unwrap()[i]);
        let peak = rss.iter().map(|s| s[i].0).fold(0f64, f64::max);
        print!(
            "  {name:<28} {base:>8.1} -> {last:>8.1} MiB ({:+.1} MiB, {:+.1}%), peak {peak:.1} MiB",
            last - base,
            (last - base) / base.max(f64::MIN_POSITIVE) * 100.0
        );
        let (half, _) = rss[rss.len() / 2][i];
        print!("; over the last half {half:.1} -> {last:.1} MiB ({:+.1} MiB)", last - half);
        if let (Some(b), Some(l)) = (base_cache, last_cache) {
            print!(
                "; its prefix cache {b:.1} -> {l:.1} MiB, beyond it {:+.1} MiB",
                (last - l) - (base - b)
            );
        }
        println!();
    }
    println!(
        "usage records: {} for {answered} answers: missing {missing}, without an answer {unanswered}, duplicated {duplicates}",
        recorded.len()
    );
    for (e, n) in &errors {
        println!("  error ×{n}: {e}");
    }
}
