//! Fetch throughput: `alcove-inference fetch` against `curl` on the same file, from the same
//! loopback HTTPS server and from the same moto S3 server (curl signing with `--aws-sigv4`), in
//! one run. Prints the CPU, the rates (median of RUNS) and the ratios fetch / curl (goal ≥ 0.8).
//! moto comes from `.venv` (`./test.sh` installs it).
//!
//!   cargo bench -p alcove-inference --bench fetch            # 1 GiB, 3 runs
//!   FETCH_BENCH_MIB=256 FETCH_BENCH_RUNS=5 cargo bench -p alcove-inference --bench fetch

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use alcove_testkit::bench::machine;
use alcove_testkit::model_server::{ModelServer, Options};
use alcove_testkit::moto::{self, Moto};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed(what: &str, mut cmd: Command) -> f64 {
    let start = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    secs
}

/// Median rates (bytes/s) of curl and of fetch over `runs` alternating runs.
fn race(
    runs: usize,
    size: f64,
    work: &Path,
    curl_args: &[String],
    fetch_args: &[String],
    env: &[(&str, String)],
) -> (f64, f64) {
    let bin = env!("CARGO_BIN_EXE_alcove-inference");
    let (mut curl, mut fetch) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let out = work.join(format!("curl-{run}"));
        let mut c = Command::new("curl");
        c.args(["-sSf", "-o", out.to_str().unwrap()]).args(curl_args);
        curl.push(size / timed("curl", c));
        std::fs::remove_file(&out).unwrap();
        let cache = work.join(format!("cache-{run}"));
        let mut f = Command::new(bin);
        f.args([
            "fetch",
            "--cache",
            cache.to_str().unwrap(),
            "--format",
            "gguf",
            "--allow-private-addresses",
        ])
        .args(fetch_args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        fetch.push(size / timed("fetch", f));
        assert!(cache.join("current/model.gguf").exists());
        std::fs::remove_dir_all(&cache).unwrap();
    }
    (median(curl), median(fetch))
}

fn main() {
    let mib = env("FETCH_BENCH_MIB", 1024);
    let runs = env("FETCH_BENCH_RUNS", 3).max(1);
    let bytes: Vec<u8> =
        (0..mib << 20).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect();
    let size = bytes.len() as f64;
    let work = tempfile::tempdir().unwrap();
    let file_dir = work.path().join("object");
    std::fs::create_dir_all(&file_dir).unwrap();
    std::fs::write(file_dir.join("bench.gguf"), &bytes).unwrap();

    let server = ModelServer::start(Options {
        files: vec![("/bench.gguf".into(), bytes)],
        https: true,
        ..Default::default()
    });
    let url = format!("{}/bench.gguf", server.base);
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, server.ca_pem.clone().unwrap()).unwrap();
    let https = race(
        runs,
        size,
        work.path(),
        &["--cacert".into(), ca.display().to_string(), url.clone()],
        &["--uri".into(), url],
        &[("ALCOVE_FETCH_EXTRA_CA", server.ca_pem.clone().unwrap())],
    );

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let moto = rt.block_on(Moto::start(&work.path().join("moto.log")));
    rt.block_on(moto.put_dir("bench", "", &file_dir));
    let creds = work.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("accessKeyId"), moto::ACCESS_KEY_ID).unwrap();
    std::fs::write(creds.join("secretAccessKey"), moto::SECRET_ACCESS_KEY).unwrap();
    let s3 = race(
        runs,
        size,
        work.path(),
        &[
            "--aws-sigv4".into(),
            format!("aws:amz:{}:s3", moto::REGION),
            "--user".into(),
            format!("{}:{}", moto::ACCESS_KEY_ID, moto::SECRET_ACCESS_KEY),
            format!("{}/bench/bench.gguf", moto.endpoint),
        ],
        &[
            "--uri".into(),
            "s3://bench/bench.gguf".into(),
            "--s3-endpoint".into(),
            moto.endpoint.clone(),
            "--s3-path-style".into(),
            "--credentials".into(),
            creds.display().to_string(),
        ],
        &[],
    );

    let rate = |b: f64| b / (1 << 20) as f64;
    println!("cpu: {}", machine());
    println!(
        "file: {mib} MiB, median of {runs}; fetch streams to disk and hashes SHA-256 as it goes"
    );
    println!(
        "loopback HTTPS (rustls server): curl {:>8.1} MiB/s  fetch {:>8.1} MiB/s  ratio {:.2}",
        rate(https.0),
        rate(https.1),
        https.1 / https.0
    );
    println!(
        "moto S3 (server mode):          curl {:>8.1} MiB/s  fetch {:>8.1} MiB/s  ratio {:.2}",
        rate(s3.0),
        rate(s3.1),
        s3.1 / s3.0
    );
}
