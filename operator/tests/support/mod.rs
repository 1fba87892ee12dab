//! The world the operator's end-to-end tests run in: devcluster (in-process) with GPU nodes, the
//! CRDs installed, and `alcove operator` as a real child process against it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alcove_devcluster::{Config, DevCluster, NodeConfig};

pub const H100: &str = "NVIDIA-H100-80GB-HBM3";

/// The node set the examples are written for: a shared pool, nodes dedicated to `acme`, nodes
/// `globex` brings, another region, and a CPU-only node.
pub fn test_nodes(c: Config) -> Config {
    c.node(NodeConfig::gpu("gpu-tw-1", "tw-taipei-1", H100, 8).label("alcove.dev/pool", "shared"))
        .node(NodeConfig::gpu("gpu-tw-2", "tw-taipei-1", H100, 8).label("alcove.dev/pool", "shared"))
        .node(NodeConfig::gpu("gpu-tw-acme", "tw-taipei-1", H100, 8).label("alcove.dev/tenant", "acme").taint("alcove.dev/tenant", "acme", "NoSchedule"))
        .node(
            NodeConfig::gpu("gpu-tw-globex", "tw-taipei-1", H100, 8)
                .label("alcove.dev/customer-pool", "globex")
                .taint("alcove.dev/customer-pool", "globex", "NoSchedule"),
        )
        .node(NodeConfig::gpu("gpu-jp-1", "jp-tokyo-1", H100, 8).label("alcove.dev/pool", "shared"))
        .node(NodeConfig::new("cpu-1").label("topology.kubernetes.io/region", "tw-taipei-1").capacity("cpu", "16").capacity("memory", "64Gi"))
}

pub struct Platform {
    pub cluster: DevCluster,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    pub operators: Vec<Operator>,
}

/// A running `alcove operator` process.
pub struct Operator {
    pub child: tokio::process::Child,
    pub http: String,
    pub identity: String,
    pub log: PathBuf,
}

impl Operator {
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        curl(&format!("{}/metrics", self.http)).await.unwrap_or_default()
    }
}

pub async fn curl(url: &str) -> Option<String> {
    let o = tokio::process::Command::new("curl").args(["-sf", "--max-time", "5", url]).output().await.ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

pub fn example(rel: &str) -> String {
    workspace_root().join("examples").join(rel).display().to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Platform {
    pub async fn start() -> Platform {
        Platform::start_with(|c| c).await
    }

    pub async fn start_with(f: impl FnOnce(Config) -> Config) -> Platform {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = f(test_nodes(Config::new(dir.path().join("cluster"))));
        let cluster = DevCluster::start(config).await.expect("devcluster");
        let client = cluster.client().await.expect("client");
        let p = Platform { cluster, client, dir, operators: Vec::new() };
        p.ok(&["apply", "-f", workspace_root().join("crds/manifests").to_str().unwrap()]).await;
        p.ok(&["create", "namespace", "alcove-system"]).await;
        p
    }

    /// Starts `alcove operator` with `args` added to the test defaults.
    pub async fn spawn_operator(&mut self, args: &[&str]) -> usize {
        let n = self.operators.len();
        let port = free_port();
        let identity = format!("operator-{n}");
        let log = self.dir.path().join(format!("{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut full = vec!["operator", "--http-addr", &format!("127.0.0.1:{port}"), "--identity", &identity, "--log-format", "text"]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        full.extend(args.iter().map(|a| a.to_string()));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_alcove"))
            .args(&full)
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .env("ALCOVE_LOG", "info,alcove=debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("alcove binary");
        let http = format!("http://127.0.0.1:{port}");
        eventually("operator serves /healthz", Duration::from_secs(20), || async { curl(&format!("{http}/healthz")).await.is_some() }).await;
        self.operators.push(Operator { child, http, identity, log });
        n
    }

    pub async fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("kubecache"))
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).await.unwrap();
        }
        drop(pipe);
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("kubectl in time").unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_as(&self.cluster.kubeconfig, args, None).await
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args).await;
        assert!(ok, "kubectl {} failed: {out}{err}", args.join(" "));
        out
    }

    pub async fn ok_in(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.kubectl_as(&self.cluster.kubeconfig, args, Some(stdin)).await;
        assert!(ok, "kubectl {} failed: {out}{err}", args.join(" "));
        out
    }

    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let token = format!("token-{}", user.replace(['@', '.'], "-"));
        self.cluster.add_token(&token, user, groups);
        let path = self.dir.path().join(format!("kubeconfig-{}", user.replace(['@', '.'], "-")));
        self.cluster.write_kubeconfig_for(&path, user, &token).unwrap();
        path
    }

    /// Client write requests (POST/PUT/PATCH/APPLY/DELETE) per resource, from devcluster's metrics.
    pub async fn writes_by_resource(&self) -> BTreeMap<String, f64> {
        let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
        let text = self.client.request_text(req).await.unwrap();
        let mut out = BTreeMap::new();
        for (labels, v) in alcove_devcluster::metrics::parse_request_totals(&text) {
            if alcove_devcluster::metrics::WRITE_VERBS.contains(&labels["verb"].as_str()) {
                let key = if labels["subresource"].is_empty() { labels["resource"].clone() } else { format!("{}/{}", labels["resource"], labels["subresource"]) };
                *out.entry(key).or_default() += v;
            }
        }
        out
    }

    /// Writes except the Lease renewals and Events, which are not reconcile writes.
    pub async fn reconcile_writes(&self) -> f64 {
        self.writes_by_resource().await.into_iter().filter(|(k, _)| k != "leases" && k != "events").map(|(_, v)| v).sum()
    }

    pub async fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut a = args.to_vec();
        let p = format!("jsonpath={path}");
        a.extend(["-o", &p]);
        self.kubectl(&a).await.1
    }

    /// Waits for a condition through `kubectl wait`.
    pub async fn wait_condition(&self, what: &str, condition: &str, timeout_s: u64) {
        let t = format!("--timeout={timeout_s}s");
        let c = format!("--for=condition={condition}");
        let (ok, out, err) = self.kubectl(&["wait", &c, what, &t]).await;
        assert!(ok, "{what} never got {condition}: {out}{err}");
    }
}

/// Polls until `f` is true, panicking with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `f` yields a value.
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
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a counter or gauge in Prometheus text (summing over label sets that contain `labels`).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (labels.is_empty() || l.contains(labels)))
        .filter(|l| l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
