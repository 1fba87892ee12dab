//! Fetch throughput: `alcove-inference fetch` against `curl` on the same file from the same
//! loopback HTTPS server, in one run. Prints the CPU, both rates (median of RUNS) and the ratio
//! fetch / curl (goal ≥ 0.8).
//!
//!   cargo bench -p alcove-inference --bench fetch            # 1 GiB, 3 runs
//!   FETCH_BENCH_MIB=256 FETCH_BENCH_RUNS=5 cargo bench -p alcove-inference --bench fetch

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use alcove_testkit::model_server::{ModelServer, Options};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn timed(what: &str, mut cmd: Command) -> f64 {
    let start = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    secs
}

fn main() {
    let mib = env("FETCH_BENCH_MIB", 1024);
    let runs = env("FETCH_BENCH_RUNS", 3).max(1);
    let bytes: Vec<u8> =
        (0..mib << 20).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect();
    let server = ModelServer::start(Options {
        files: vec![("/bench.gguf".into(), bytes)],
        https: true,
        ..Default::default()
    });
    let url = format!("{}/bench.gguf", server.base);
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, server.ca_pem.clone().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_alcove-inference");
    let size = (mib << 20) as f64;
    let (mut curl, mut fetch) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let out = work.path().join(format!("curl-{run}"));
        let mut c = Command::new("curl");
        c.args(["-sSf", "--cacert", ca.to_str().unwrap(), "-o", out.to_str().unwrap(), &url]);
        curl.push(size / timed("curl", c));
        std::fs::remove_file(&out).unwrap();
        let cache = work.path().join(format!("cache-{run}"));
        let mut f = Command::new(bin);
        f.args(["fetch", "--uri", &url, "--cache", cache.to_str().unwrap(), "--format", "gguf"])
            .arg("--allow-private-addresses")
            .env("ALCOVE_FETCH_EXTRA_CA", server.ca_pem.clone().unwrap());
        fetch.push(size / timed("fetch", f));
        assert!(Path::new(&cache).join("current/model.gguf").exists());
        std::fs::remove_dir_all(&cache).unwrap();
    }
    let (c, f) = (median(curl), median(fetch));
    println!(
        "cpu: {} ({} CPUs)",
        cpu(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("file: {mib} MiB over loopback HTTPS (rustls server), median of {runs}");
    println!("curl:  {:>8.1} MiB/s", c / (1 << 20) as f64);
    println!(
        "fetch: {:>8.1} MiB/s (streams to disk and hashes SHA-256 as it goes)",
        f / (1 << 20) as f64
    );
    println!("ratio fetch/curl: {:.2}", f / c);
}
