//! The one test kit: helpers that the workspace's test suites share. It depends on no crate of
//! the workspace, so any of them can take it as a dev-dependency.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod bench;
pub mod localstripe;
pub mod model_server;
pub mod moto;
pub mod netns;
pub mod postgres;
pub mod smtp;

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// A loopback port nobody listens on (bound once to find it, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` every 50 ms until it returns true, panicking with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_some(what, timeout, || {
        let ready = f();
        async move { ready.await.then_some(()) }
    })
    .await
}

/// Polls `f` every 50 ms until it yields a value, panicking with `what` after `timeout`.
pub async fn until_some<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One page of [`serve_pages`]: path, status, one extra header line (or ""), body.
pub type Page = (&'static str, u16, &'static str, &'static str);

/// A loopback HTTP/1.1 server answering each path from `pages` (404 otherwise), on a thread
/// that lives as long as the test process. Returns its port.
pub fn serve_pages(pages: Vec<Page>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, header, body) = pages
                .iter()
                .find(|p| p.0 == path)
                .map(|p| (p.1, p.2, p.3))
                .unwrap_or((404, "", "not found"));
            let header = if header.is_empty() { String::new() } else { format!("{header}\r\n") };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{header}\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A loopback HTTP server with one document at `path`.
pub fn serve_document(path: &'static str, text: &'static str) -> u16 {
    serve_pages(vec![(path, 200, "", text)])
}

/// GET with curl: the body of a 2xx answer, None otherwise.
pub async fn curl(url: &str) -> Option<String> {
    let o = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .await
        .ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// An HTTP request with curl (a JSON body when given): (status, body); status 0 when there was
/// no answer.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut args: Vec<String> = ["-s", "--max-time", "60", "-X", method, "-w", "\n%{http_code}"]
        .into_iter()
        .map(String::from)
        .collect();
    for (k, v) in headers {
        args.extend(["-H".into(), format!("{k}: {v}")]);
    }
    if let Some(b) = body {
        args.extend([
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            b.into(),
        ]);
    }
    args.push(url.into());
    let out = tokio::process::Command::new("curl").args(&args).output().await.expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of a counter or gauge in Prometheus text, summed over the label sets that contain
/// `labels`.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (labels.is_empty() || l.contains(labels)))
        .filter(|l| l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one kubectl run printed.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// kubectl with `kubeconfig`, its caches and HOME under `home`, `stdin` piped in; two minutes
/// at most.
pub async fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", home.join("kubecache"))
        .env("HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl is installed");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        pipe.write_all(s.as_bytes()).await.expect("kubectl stdin");
    }
    drop(pipe);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("kubectl finished within 120 s")
        .expect("kubectl ran");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cargo build <args> --bin <bin>` in the workspace and returns the executable cargo
/// reports. A test needs this for another package's binary (cargo only hands a test the binaries
/// of its own package) or for a build with other features.
pub fn cargo_build(args: &[&str], bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .arg("build")
        .args(args)
        .args(["--quiet", "--bin", bin, "--message-format=json"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} --bin {bin}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let suffix = format!("/{bin}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| m["executable"].as_str().map(String::from))
        .rfind(|e| e.ends_with(&suffix))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"))
}

/// A TLS client configuration that trusts only the CA certificates in `ca_pem`.
pub fn tls_client_trusting(ca_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("a PEM certificate")).expect("a CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}
