//! The world the product's end-to-end tests (this crate's tests) run in: devcluster (in-process)
//! with GPU nodes, the CRDs installed, `alcove operator` as a real child process against it, and
//! real inference pods. Library crates keep only their own, local tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alcove_devcluster::{Config, DevCluster};
pub use alcove_testkit::localstripe::{self, LocalStripe};
pub use alcove_testkit::{
    cargo_build, curl, eventually, free_port, http, metric, serve_document, serve_pages,
    until_some, workspace_root,
};

pub const H100: &str = alcove::up::H100;

/// The `alcove` binary as tests run it: default features (`up`) plus the test hooks
/// (`--clock-file`, `--crash-after`), built once per test binary. A copy, because other builds
/// (tests/shipped_binary.rs) write the same `target/debug/alcove`.
pub fn alcove_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = cargo_build(&["-p", "alcove", "--features", "test-hooks"], "alcove");
        let copy = built.with_file_name("alcove-with-test-hooks");
        std::fs::copy(&built, &copy).expect("copy the alcove binary");
        copy
    })
    .clone()
}

/// An instance of the pro tenant (examples/good/tenant-pro.yaml) serving the GGUF test model.
pub const ACME_INSTANCE: &str = r#"
apiVersion: alcove.dev/v1alpha1
kind: InferenceInstance
metadata: {name: bot, namespace: tenant-acme}
spec:
  model: {format: gguf, source: {platform: default-gguf}, path: model.gguf}
"#;

/// The node set the examples are written for (the one `alcove up` starts).
pub fn test_nodes(mut c: Config) -> Config {
    c.nodes.extend(alcove::up::default_nodes());
    c
}

/// The product's processes, which meet API faults when a run injects them.
const COMPONENTS: [&str; 3] = ["operator", "gateway", "dashboard"];

/// The user a component runs as under API faults (not a name a test gives an identity of its
/// own, such as the chart's ServiceAccounts).
fn component_user(component: &str) -> String {
    format!("component-{component}")
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
    process: Process,
}

impl Operator {
    /// SIGKILL.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts it again after a kill, as a kubelet restarts a container: the same identity,
    /// port and arguments; the log goes on.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.child = self.process.launch();
        serving("operator serves /healthz", &format!("{}/healthz", self.http)).await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        curl(&format!("{}/metrics", self.http)).await.unwrap_or_default()
    }
}

/// How a product process is started, kept so that it can be started again after a SIGKILL.
struct Process {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Its stdout and stderr, appended to: a restart keeps what the killed process wrote.
    log: PathBuf,
}

impl Process {
    fn launch(&self) -> tokio::process::Child {
        let out = std::fs::OpenOptions::new().append(true).create(true).open(&self.log).unwrap();
        tokio::process::Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.program.display()))
    }
}

/// Waits until `url` answers 2xx.
async fn serving(what: &str, url: &str) {
    eventually(what, Duration::from_secs(30), || async { curl(url).await.is_some() }).await;
}

pub fn example(rel: &str) -> String {
    workspace_root().join("examples").join(rel).display().to_string()
}

impl Platform {
    pub async fn start() -> Platform {
        Platform::start_with(|c| c).await
    }

    pub async fn start_with(f: impl FnOnce(Config) -> Config) -> Platform {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = f(test_nodes(Config::new(dir.path().join("cluster"))));
        // `DEVCLUSTER_FAULT_*` run these tests under API faults (docs/reliability.md). They
        // meet the product's components, each with an identity of its own, not the tests' own
        // kubectl and client.
        config.faults = alcove_devcluster::Faults::from_env();
        if config.faults.any() && config.faults.users.is_empty() {
            config.faults.users = COMPONENTS.iter().map(|c| component_user(c)).collect();
        }
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
        let mut full = vec![
            "operator",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--identity",
            &identity,
            "--log-format",
            "text",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        full.extend(args.iter().map(|a| a.to_string()));
        let process = Process {
            program: alcove_binary(),
            args: full,
            env: vec![
                ("KUBECONFIG".into(), self.component_kubeconfig("operator").display().to_string()),
                (
                    "ALCOVE_LOG".into(),
                    std::env::var("ALCOVE_TEST_LOG").unwrap_or_else(|_| "info,alcove=debug".into()),
                ),
            ],
            log: log.clone(),
        };
        std::fs::File::create(&log).unwrap();
        let child = process.launch();
        let http = format!("http://127.0.0.1:{port}");
        serving("operator serves /healthz", &format!("{http}/healthz")).await;
        self.operators.push(Operator { child, http, identity, log, process });
        n
    }

    pub async fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        let r = alcove_testkit::kubectl(kubeconfig, self.dir.path(), args, stdin).await;
        (r.ok, r.stdout, r.stderr)
    }

    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_as(&self.cluster.kubeconfig, args, None).await
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None).await
    }

    pub async fn ok_in(&self, args: &[&str], stdin: &str) -> String {
        self.ok_with(args, Some(stdin)).await
    }

    /// kubectl that must succeed. A tenant's namespace is the operator's to make: while it is
    /// not there yet, the command is tried again (for up to 30 s), as a GitOps pipeline would.
    async fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = self.kubectl_as(&self.cluster.kubeconfig, args, stdin).await;
            let namespace_pending =
                err.contains("namespaces \"tenant-") && err.contains("not found");
            if ok || !namespace_pending || std::time::Instant::now() > deadline {
                assert!(ok, "kubectl {} failed: {out}{err}", args.join(" "));
                return out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether this run injects API faults (`DEVCLUSTER_FAULT_*`).
    pub fn api_faults(&self) -> bool {
        self.cluster.shared().config.faults.any()
    }

    /// The kubeconfig a component of the product runs with: the admin's, or under API faults
    /// an identity of its own (with the admin's rights) that the faults are aimed at.
    pub fn component_kubeconfig(&self, component: &str) -> PathBuf {
        if self.api_faults() {
            self.user_kubeconfig(&component_user(component), &["system:masters"])
        } else {
            self.cluster.kubeconfig.clone()
        }
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
        alcove_devcluster::metrics::writes_by_resource(&text)
    }

    /// Writes except the Lease renewals and Events, which are not reconcile writes.
    pub async fn reconcile_writes(&self) -> f64 {
        alcove_devcluster::metrics::reconcile_writes(&self.writes_by_resource().await)
    }

    /// Under API faults only: waits (60 s at most) until the operator has written nothing for
    /// 5 s. Its caches re-list about once a second there, each kind at its own moment, so a
    /// pass can read one cache from before a change and another from after it for a few seconds
    /// more than in a clean run; the steady state a test measures begins later, not never (a
    /// world that never settles fails here).
    pub async fn settled_under_faults(&self) {
        if !self.api_faults() {
            return;
        }
        let started = std::time::Instant::now();
        let (mut last, mut quiet_since) = (self.reconcile_writes().await, started);
        while quiet_since.elapsed() < Duration::from_secs(5) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the operator kept writing for 60 s in an unchanged world"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.reconcile_writes().await;
            if now != last {
                (last, quiet_since) = (now, std::time::Instant::now());
            }
        }
    }

    pub async fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut a = args.to_vec();
        let p = format!("jsonpath={path}");
        a.extend(["-o", &p]);
        self.kubectl(&a).await.1
    }

    /// When instance `name` of namespace `ns` started its pod (its GPU time counts from there),
    /// once it has.
    pub async fn started_at(&self, ns: &str, name: &str) -> jiff::Timestamp {
        let started = until_some(&format!("{name} started"), Duration::from_secs(60), || async {
            Some(
                self.jsonpath(&["get", "inferenceinstance", name, "-n", ns], "{.status.startedAt}")
                    .await,
            )
            .filter(|s| !s.is_empty())
        })
        .await;
        started.parse().expect("an RFC 3339 startedAt")
    }

    /// Waits for a condition through `kubectl wait` (`what`: e.g. `inst/chat -n tenant-startup`).
    pub async fn wait_condition(&self, what: &str, condition: &str, timeout_s: u64) {
        let t = format!("--timeout={timeout_s}s");
        let c = format!("--for=condition={condition}");
        let mut args = vec!["wait", &c, &t];
        args.extend(what.split_whitespace());
        let (ok, out, err) = self.kubectl(&args).await;
        if !ok {
            let logs: Vec<String> = self
                .operators
                .iter()
                .map(|o| {
                    let text = o.log_text();
                    let tail: Vec<&str> = text
                        .lines()
                        .rev()
                        .take(400)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    format!("--- {} (last 400 lines)\n{}", o.identity, tail.join("\n"))
                })
                .collect();
            let mut get = vec!["get", "-o", "yaml"];
            get.extend(what.split_whitespace());
            let (_, object, _) = self.kubectl(&get).await;
            let (_, events, _) = self.kubectl(&["get", "events", "-A"]).await;
            panic!(
                "{what} never got {condition}: {out}{err}\n{}\n--- the object\n{object}\n--- events\n{events}",
                logs.join("\n")
            );
        }
    }
}

/// The `alcove-inference` binary, built on first use (a test of this package alone would not
/// build another package's binary).
pub fn inference_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| cargo_build(&["-p", "alcove-inference"], "alcove-inference")).clone()
}

/// Platform models as the CSI driver serves them: `default` (tiny llama, safetensors),
/// `default-gguf` (the same family as GGUF), `default-embedding` (tiny BERT). Made once per test
/// binary with the real `make-test-model`.
pub fn platform_models() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        let bin = inference_binary();
        for (name, extra) in [
            ("default", vec![]),
            ("default-gguf", vec!["--format", "gguf"]),
            ("default-embedding", vec!["--embedding"]),
        ] {
            let dir = root.join(name);
            let out = std::process::Command::new(&bin)
                .args(["make-test-model", "--out", dir.to_str().unwrap()])
                .args(extra)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "make-test-model {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        root
    })
    .clone()
}

/// devcluster set up to run instances for real: the inference image runs the binary, platform
/// models are served by the CSI driver the operator's default configuration names.
pub fn with_inference(c: Config) -> Config {
    with_platform_models(c.image("ghcr.io/alcove-dev/alcove-inference*", inference_binary()))
}

/// The platform models' CSI driver, so that instance pods mount their model (simulated pods
/// never read it).
pub fn with_platform_models(mut c: Config) -> Config {
    c.csi_drivers.push(alcove_devcluster::config::CsiDriver {
        driver: "models.alcove.dev".into(),
        attribute: "model".into(),
        root: platform_models(),
    });
    c
}

/// `kubectl proxy` on a free port: the host reaches services through the API server's service
/// proxy, as a platform team would.
pub struct KubectlProxy {
    pub base: String,
    _child: tokio::process::Child,
}

impl Platform {
    pub async fn kubectl_proxy(&self) -> KubectlProxy {
        let port = free_port();
        let child = tokio::process::Command::new("kubectl")
            .args(["proxy", "--port", &port.to_string()])
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("kubecache"))
            .env("HOME", self.dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl proxy");
        let base = format!("http://127.0.0.1:{port}");
        eventually("kubectl proxy serves", Duration::from_secs(15), || async {
            curl(&format!("{base}/version")).await.is_some()
        })
        .await;
        KubectlProxy { base, _child: child }
    }
}

impl Platform {
    /// `alcove data-report TENANT`, as a platform team runs it: its output (it must succeed).
    pub async fn data_report(&self, tenant: &str) -> String {
        let report = tokio::process::Command::new(alcove_binary())
            .args(["data-report", tenant])
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .output()
            .await
            .unwrap();
        assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
        String::from_utf8_lossy(&report.stdout).into_owned()
    }

    /// `kubectl get … -o json`.
    /// The receipts of `tenant`'s erasures (the operator's ConfigMap in alcove-system).
    pub async fn erasure_receipts(&self, tenant: &str) -> Vec<serde_json::Value> {
        self.erasure_entries(tenant, false).await
    }

    /// The intents of erasures begun and not yet receipted (`pending-…` keys).
    pub async fn erasure_intents(&self, tenant: &str) -> Vec<serde_json::Value> {
        self.erasure_entries(tenant, true).await
    }

    async fn erasure_entries(&self, tenant: &str, intents: bool) -> Vec<serde_json::Value> {
        let name = format!("alcove-erasures-{tenant}");
        let (ok, out, _) =
            self.kubectl(&["get", "configmap", &name, "-n", "alcove-system", "-o", "json"]).await;
        if !ok {
            return Vec::new();
        }
        let cm: serde_json::Value = serde_json::from_str(&out).unwrap();
        cm["data"]
            .as_object()
            .map(|d| {
                d.iter()
                    .filter(|(k, _)| k.starts_with("pending-") == intents)
                    .map(|(_, v)| serde_json::from_str(v.as_str().unwrap()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a).await).unwrap()
    }

    /// The Events of a namespace with `reason`.
    pub async fn events(&self, ns: &str, reason: &str) -> Vec<serde_json::Value> {
        let v = self.json(&["get", "events", "-n", ns]).await;
        v["items"].as_array().unwrap().iter().filter(|e| e["reason"] == reason).cloned().collect()
    }

    /// Waits (10 s at most) for an Event of `reason` in `ns`. An Event follows the write it
    /// announces, a retry or two later under API faults (`error::retry_passing`).
    pub async fn event_announced(&self, ns: &str, reason: &str) {
        eventually(&format!("a {reason} Event in {ns}"), Duration::from_secs(10), || async {
            !self.events(ns, reason).await.is_empty()
        })
        .await;
    }
}

/// The logs of the tests' stand-ins for Stripe, S3 and PostgreSQL: not the product's output.
const STAND_INS: [&str; 3] = ["localstripe.log", "moto.log", "postgres.log"];

impl Platform {
    /// Every output of the product's components, by where it came from: each `*.log` file under
    /// the platform's directory (the operators', gateways' and dashboards' logs, and the container
    /// logs of the pods that still exist), the operators', the gateways' and the running
    /// instances' metrics, and every Event. What a sweep for leaked secrets reads.
    pub async fn every_output(&self, gateways: &[&Gateway]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "log")
                    && !STAND_INS.iter().any(|s| path.ends_with(s))
                {
                    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default())
                        .into_owned();
                    out.push((path.display().to_string(), text));
                }
            }
        }
        for o in &self.operators {
            out.push((format!("{} metrics", o.identity), o.metrics().await));
        }
        for g in gateways {
            let text = curl(&format!("{}/metrics", g.metrics)).await.unwrap_or_default();
            out.push((format!("gateway metrics ({})", g.metrics), text));
        }
        let instances = self.json(&["get", "inst", "-A"]).await;
        for i in instances["items"].as_array().into_iter().flatten() {
            let (ns, name) = (&i["metadata"]["namespace"], &i["metadata"]["name"]);
            let (ns, name) = (ns.as_str().unwrap_or_default(), name.as_str().unwrap_or_default());
            let path = format!("/api/v1/namespaces/{ns}/services/{name}:http/proxy/metrics");
            let (_, text, _) = self.kubectl(&["get", "--raw", &path]).await;
            out.push((format!("instance {ns}/{name} metrics"), text));
        }
        out.push(("Events".into(), self.ok(&["get", "events", "-A", "-o", "json"]).await));
        out
    }
}

/// Where `secret` occurs in `outputs`: the sources that hold it. A secret of digits only (a
/// sign-in code) counts where no digit adjoins it and no `.` precedes it, so that it is not
/// found inside a longer number or a timestamp's fraction of a second.
pub fn leaks(outputs: &[(String, String)], secret: &str) -> Vec<String> {
    let digits = secret.bytes().all(|b| b.is_ascii_digit());
    outputs
        .iter()
        .filter(|(_, text)| {
            text.match_indices(secret).any(|(i, _)| {
                let before = text[..i].bytes().next_back();
                let after = text[i + secret.len()..].bytes().next();
                !digits
                    || !(before.is_some_and(|b| b.is_ascii_digit() || b == b'.')
                        || after.is_some_and(|b| b.is_ascii_digit()))
            })
        })
        .map(|(source, _)| source.clone())
        .collect()
}

/// devcluster running real inference pods, and one operator.
pub async fn platform_with_operator() -> Platform {
    let mut p = Platform::start_with(with_inference).await;
    p.spawn_operator(&[]).await;
    p
}

/// The operator's injected clock (`--clock-file`): an RFC 3339 instant in a file.
pub struct Clock(pub PathBuf);

impl Clock {
    pub fn set(&self, t: jiff::Timestamp) {
        // Whole seconds, as the deadlines the tests compare with are written.
        let t = jiff::Timestamp::from_second(t.as_second()).unwrap();
        alcove_clock::FileClock::set(&self.0, t).unwrap();
    }

    pub fn now(&self) -> jiff::Timestamp {
        std::fs::read_to_string(&self.0).unwrap().trim().parse().unwrap()
    }
}

/// A running `alcove gateway`.
pub struct Gateway {
    pub child: tokio::process::Child,
    /// `https://127.0.0.1:<port>/v1`
    pub base: String,
    pub metrics: String,
    pub ca: PathBuf,
    pub log: PathBuf,
    pub dir: PathBuf,
    process: Process,
}

impl Gateway {
    /// A gateway with its own SQLite store (`<dir>/usage.db`) unless `args` name a store.
    pub async fn start(p: &Platform, name: &str, args: &[&str]) -> Gateway {
        let dir = p.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let pem = alcove_devcluster::tls::loopback_pem("alcove-gateway", &[]).unwrap();
        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&ca, &pem.ca_pem).unwrap();
        std::fs::write(&cert, &pem.chain_pem).unwrap();
        std::fs::write(&key, &pem.key_pem).unwrap();
        let (port, mport) = (free_port(), free_port());
        let log = dir.join("gateway.log");
        let sqlite = format!("sqlite://{}", dir.join("usage.db").display());
        let store =
            if args.contains(&"--usage-store") { vec![] } else { vec!["--usage-store", &sqlite] };
        let mut full: Vec<String> = ["gateway", "--upstream", "api-server", "--log-format", "text"]
            .into_iter()
            .map(String::from)
            .collect();
        full.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        full.extend(["--metrics-listen".into(), format!("127.0.0.1:{mport}")]);
        full.extend(["--tls-cert".into(), cert.display().to_string()]);
        full.extend(["--tls-key".into(), key.display().to_string()]);
        full.extend(args.iter().chain(&store).map(|a| a.to_string()));
        let process = Process {
            program: alcove_binary(),
            args: full,
            env: vec![
                (
                    "ALCOVE_KUBECONFIG".into(),
                    p.component_kubeconfig("gateway").display().to_string(),
                ),
                ("ALCOVE_LOG".into(), "debug,hyper=info,kube=info,tower=info,rustls=info".into()),
            ],
            log: log.clone(),
        };
        std::fs::File::create(&log).unwrap();
        let child = process.launch();
        let metrics = format!("http://127.0.0.1:{mport}");
        serving("the gateway lists instances", &format!("{metrics}/readyz")).await;
        let base = format!("https://127.0.0.1:{port}/v1");
        Gateway { child, base, metrics, ca, log, dir, process }
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts it again after a kill, on the same ports with the same store.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.child = self.process.launch();
        serving("the gateway lists instances", &format!("{}/readyz", self.metrics)).await;
    }

    /// The official SDK: `openai_client.py ACTION` with this gateway and `key`.
    pub async fn sdk(&self, action: &str, key: &str) -> serde_json::Value {
        let out = tokio::process::Command::new(workspace_root().join(".venv/bin/python"))
            .arg(workspace_root().join("tests/support/openai_client.py"))
            .arg(action)
            .env("ALCOVE_BASE_URL", &self.base)
            .env("ALCOVE_API_KEY", key)
            .env("SSL_CERT_FILE", &self.ca)
            .output()
            .await
            .expect("run ./test.sh: it installs the openai SDK into .venv");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{action}: {text}{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{action}: {e}: {text}"))
    }

    /// A raw HTTPS request: (status, lower-cased headers, body).
    pub async fn call(&self, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        call_gateway(&self.base, &self.ca, path, headers, body).await
    }

    /// Waits, under API faults, until the gateway takes `key`. It hears of a new key through its
    /// watch, which the faults cut and re-list (docs/reliability.md: 10 s instead of 1 s). Asked
    /// every 2 s: each refusal counts towards the address's 20 failed sign-ins a minute.
    pub async fn learn_key(&self, p: &Platform, key: &str) {
        if !p.api_faults() {
            return;
        }
        let auth = format!("Bearer {key}");
        for _ in 0..10 {
            if self.call("/models", &[("Authorization", &auth)], None).await.status != 401 {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        panic!("the gateway did not learn the instance's key within 20 s");
    }

    pub async fn store(&self) -> alcove_gateway::store::Store {
        let dsn = format!("sqlite://{}", self.dir.join("usage.db").display());
        alcove_gateway::store::Store::open(&dsn).await.unwrap()
    }

    /// Every byte the SQLite store holds (database and write-ahead log).
    pub fn store_bytes(&self) -> String {
        ["usage.db", "usage.db-wal"]
            .iter()
            .map(|f| {
                String::from_utf8_lossy(&std::fs::read(self.dir.join(f)).unwrap_or_default())
                    .into_owned()
            })
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A raw HTTPS request to the gateway at `base` (`https://…/v1`) whose certificate `ca` signed.
pub async fn call_gateway(
    base: &str,
    ca: &Path,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "60", "--cacert", ca.to_str().unwrap()]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("{base}{path}")).output().await.unwrap();
    Reply::parse(&String::from_utf8_lossy(&out.stdout))
}

/// `curl -i` output: (status, lower-cased headers, body).
pub fn split_response(raw: &str) -> (u16, Vec<(String, String)>, &str) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn parse(raw: &str) -> Reply {
        let (status, headers, body) = split_response(raw);
        Reply {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An instance's API key, from its Secret.
pub async fn api_key(p: &Platform, ns: &str, instance: &str) -> String {
    let b64 = p
        .jsonpath(&["get", "secret", &format!("{instance}-api-key"), "-n", ns], "{.data.api-key}")
        .await;
    use base64::Engine;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap())
        .unwrap()
}

/// A running `alcove dashboard`, with a real SMTP server (aiosmtpd from `.venv`) catching its
/// mail in a maildir.
pub struct Dashboard {
    pub child: tokio::process::Child,
    pub smtp: alcove_testkit::smtp::Smtp,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    pub log: PathBuf,
    pub maildir: PathBuf,
    pub dir: PathBuf,
    process: Process,
    /// The run injects API faults: its browsers click again on "Try again shortly".
    api_faults: bool,
}

impl Dashboard {
    /// A dashboard acting on `p` (its kubeconfig: the dashboard's own identity), offering the
    /// platform models `default` and `default-gguf`, with the customers' endpoint `gw` and its
    /// usage store.
    pub async fn start(p: &Platform, name: &str, gw: &Gateway) -> Dashboard {
        let base = gw.base.trim_end_matches("/v1").to_string();
        let ca = gw.ca.display().to_string();
        let usage = format!("sqlite://{}", gw.dir.join("usage.db").display());
        let args = ["--gateway-url", &base, "--gateway-ca", &ca, "--usage-store", &usage];
        Dashboard::start_as(p, name, &p.component_kubeconfig("dashboard"), &args).await
    }

    /// The same with the identity of `kubeconfig` (e.g. the chart's ServiceAccount) and `args`
    /// (which name the gateway).
    pub async fn start_as(p: &Platform, name: &str, kubeconfig: &Path, args: &[&str]) -> Dashboard {
        let dir = p.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let maildir = dir.join("mail");
        let smtp = alcove_testkit::smtp::Smtp::start(maildir.clone()).await;
        let key = dir.join("key");
        std::fs::write(&key, "a-test-key-of-at-least-thirty-two-bytes").unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.join("dashboard.log");
        let mut full: Vec<String> = vec!["dashboard".into(), "--log-format".into(), "text".into()];
        full.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        full.extend(["--public-url".into(), url.clone()]);
        full.extend(["--smtp".into(), format!("smtp://127.0.0.1:{}", smtp.port)]);
        full.extend(["--key-file".into(), key.display().to_string()]);
        full.extend(args.iter().map(|a| a.to_string()));
        full.extend(["--store".into(), format!("sqlite://{}", dir.join("dashboard.db").display())]);
        for model in ["default=safetensors", "default-gguf=gguf:model.gguf"] {
            full.extend(["--model".into(), model.into()]);
        }
        let process = Process {
            program: alcove_binary(),
            args: full,
            env: vec![
                ("ALCOVE_KUBECONFIG".into(), kubeconfig.display().to_string()),
                (
                    "ALCOVE_LOG".into(),
                    "debug,hyper=info,kube=info,tower=info,rustls=info,lettre=info".into(),
                ),
            ],
            log: log.clone(),
        };
        std::fs::File::create(&log).unwrap();
        let child = process.launch();
        serving("the dashboard lists tenants", &format!("{url}/readyz")).await;
        Dashboard { child, smtp, url, log, maildir, dir, process, api_faults: p.api_faults() }
    }

    /// SIGKILL (its mail server goes on).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts it again after a kill, on the same port with the same store and key.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.child = self.process.launch();
        serving("the dashboard lists tenants", &format!("{}/readyz", self.url)).await;
    }

    /// Every message the SMTP server has received, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else { return Vec::new() };
        let mut files: Vec<_> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                Some((e.metadata().ok()?.modified().ok()?, e.path()))
            })
            .collect();
        files.sort();
        files.into_iter().filter_map(|(_, p)| std::fs::read_to_string(p).ok()).collect()
    }

    /// The code of the `n`th code message to `to` (counting from 0; notices are not counted),
    /// once it has arrived.
    pub async fn code(&self, to: &str, n: usize) -> String {
        until_some(&format!("mail {n} to {to}"), Duration::from_secs(20), || async {
            let mail = self
                .mails()
                .into_iter()
                .filter(|m| {
                    m.contains(&format!("To: {to}"))
                        && m.lines().any(|l| l.starts_with("Subject: ") && l.contains(" code: "))
                })
                .nth(n)?;
            let subject = mail.lines().find(|l| l.starts_with("Subject: "))?;
            Some(subject.rsplit(' ').next()?.trim().to_string())
        })
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The messages to `to` whose subject holds `subject`.
    pub fn mails_about(&self, to: &str, subject: &str) -> Vec<String> {
        self.mails()
            .into_iter()
            .filter(|m| {
                m.contains(&format!("To: {to}"))
                    && m.lines().any(|l| l.starts_with("Subject: ") && l.contains(subject))
            })
            .collect()
    }

    /// A new browser-like client (its own cookie jar).
    pub fn browser(&self, name: &str) -> Browser {
        Browser {
            jar: self.dir.join(format!("{name}.cookies")),
            base: self.url.clone(),
            click_again: self.api_faults,
        }
    }

    /// A client signed in as `email` with the code mailed to it (`n`: mails to it before).
    pub async fn sign_in(&self, email: &str, n: usize) -> Browser {
        let b = self.browser(email);
        let asked = b.post("/signin", &[("email", email)], &[]).await;
        assert_eq!(asked.status, 200, "{}", asked.body);
        let code = self.code(email, n).await;
        let done = b.post("/signin/code", &[("email", email), ("code", &code)], &[]).await;
        assert_eq!(done.status, 303, "{}", done.body);
        b
    }
}

/// The customers' side: two tenants (startup, owned by alice@startup.example; acme, by
/// bob@acme.example) with real inference pods, the gateway and the dashboard.
pub async fn customers_world() -> (Platform, Gateway, Dashboard) {
    let p = platform_with_operator().await;
    let tenants = ["good/tenant-basic.yaml", "good/tenant-pro.yaml"].map(example);
    p.ok(&["apply", "-f", &tenants[0], "-f", &tenants[1]]).await;
    p.wait_condition("tenant/startup", "Ready", 60).await;
    p.wait_condition("tenant/acme", "Ready", 60).await;
    let gw = Gateway::start(&p, "gw", &[]).await;
    let d = Dashboard::start(&p, "dashboard", &gw).await;
    (p, gw, d)
}

/// A platform with localstripe, an operator config with prices (usd: 360 cents per GPU-hour,
/// i.e. 0.1 cent per GPU-second), and the operator arguments that point billing at them.
pub async fn billing_platform() -> (Platform, LocalStripe, Clock, Vec<String>) {
    // The default platform model's volume must exist for the pod to start; simulated servers
    // never read it.
    let models = tempfile::tempdir().unwrap().keep();
    std::fs::create_dir_all(models.join("default")).unwrap();
    let p = Platform::start_with(|mut c| {
        c.csi_drivers.push(alcove_devcluster::config::CsiDriver {
            driver: "models.alcove.dev".into(),
            attribute: "model".into(),
            root: models,
        });
        c
    })
    .await;
    let stripe = LocalStripe::start(&p.dir.path().join("localstripe.log")).await;
    let config = p.dir.path().join("operator.yaml");
    std::fs::write(
        &config,
        "billing:\n  reportIntervalSeconds: 60\n  prices:\n    usd:\n      \"*\": {perGpuHour: 360}\n",
    )
    .unwrap();
    let clock = Clock(p.dir.path().join("clock"));
    let mut args = billing_operator_args(&config, &stripe, &clock);
    args.extend(["--leader-election".into(), "false".into()]);
    (p, stripe, clock, args)
}

/// The operator arguments that bill through `stripe` with the prices in `config`, by `clock`.
pub fn billing_operator_args(config: &Path, stripe: &LocalStripe, clock: &Clock) -> Vec<String> {
    [
        "--config",
        config.to_str().unwrap(),
        "--stripe-api-key",
        localstripe::KEY,
        "--stripe-api-base",
        &stripe.base,
        "--stripe-webhook-secret",
        localstripe::WHSEC,
        "--clock-file",
        clock.0.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec()
}

/// The `Stripe-Signature` header Stripe sends with a webhook delivery of `payload` at `t`.
pub fn stripe_signature(t: i64, payload: &str) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(localstripe::WHSEC.as_bytes()).unwrap();
    mac.update(format!("{t}.{payload}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Runs a browser journey (`tests/browser/<script>`, Debian's chromium through playwright-core,
/// both installed by `./test.sh`) against dashboard `d` with `vars`; its screenshots go to
/// `$CARGO_TARGET_DIR/<shots>/`. Returns the JSON line it prints last, after checking it
/// ended well (the dashboard's log is shown when not).
pub async fn browser_journey(
    script: &str,
    shots: &str,
    d: &Dashboard,
    vars: &[(&str, &str)],
) -> (serde_json::Value, PathBuf) {
    let node_modules = workspace_root().join("tests/browser/node_modules/playwright-core");
    assert!(
        node_modules.exists() && Path::new("/usr/bin/chromium").exists(),
        "run ./test.sh: it installs Debian's chromium and playwright-core (tests/browser)"
    );
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join(shots);
    let _ = std::fs::remove_dir_all(&out);
    let run = tokio::process::Command::new("node")
        .arg(workspace_root().join("tests/browser").join(script))
        .env("DASHBOARD_URL", &d.url)
        .env("MAILDIR", &d.maildir)
        .env("OUT", &out)
        .envs(vars.iter().copied())
        .output();
    let run = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the journey ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the journey failed:\n{stdout}\n{}\n--- dashboard log\n{}",
        String::from_utf8_lossy(&run.stderr),
        d.log_text()
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true, "{result}");
    (result, out)
}

/// curl with a cookie jar, as a browser without scripts.
pub struct Browser {
    pub jar: PathBuf,
    pub base: String,
    /// Under API faults: a request answered "Try again shortly" (the dashboard's answer to a
    /// passing API error, which changes nothing) is sent again, up to 3 times a second apart, as
    /// a customer would. In a clean run that page is a failure to see.
    pub click_again: bool,
}

#[derive(Debug)]
pub struct WebPage {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl WebPage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The CSRF token the page's forms carry.
    pub fn csrf(&self) -> String {
        let at = self.body.find(r#"name="csrf" value=""#).expect("a form with a CSRF token");
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Browser {
    async fn curl(&self, args: &[&str]) -> WebPage {
        let mut page = self.curl_once(args).await;
        for _ in 0..3 {
            if !(self.click_again
                && page.status == 503
                && page.body.contains("<title>Try again shortly"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            page = self.curl_once(args).await;
        }
        page
    }

    async fn curl_once(&self, args: &[&str]) -> WebPage {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "60", "-b"])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .args(args)
            .output()
            .await
            .expect("curl");
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, headers, body) = split_response(&raw);
        WebPage { status, headers, body: body.to_string() }
    }

    pub async fn get(&self, path: &str) -> WebPage {
        self.get_with(path, &[]).await
    }

    /// A GET with extra headers (e.g. `Accept-Language`).
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> WebPage {
        let mut args: Vec<String> = Vec::new();
        for (k, v) in headers {
            args.extend(["-H".into(), format!("{k}: {v}")]);
        }
        args.push(format!("{}{path}", self.base));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(&refs).await
    }

    /// Downloads `path` into the file `to`, bytes as sent; the status code.
    pub async fn download(&self, path: &str, to: &Path) -> u16 {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "120", "-w", "%{http_code}", "-b"])
            .arg(&self.jar)
            .arg("-o")
            .arg(to)
            .arg(format!("{}{path}", self.base))
            .output()
            .await
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    /// A form post (`application/x-www-form-urlencoded`), with extra headers.
    pub async fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> WebPage {
        let mut args: Vec<String> = vec!["-X".into(), "POST".into()];
        for (k, v) in fields {
            args.extend(["--data-urlencode".into(), format!("{k}={v}")]);
        }
        if fields.is_empty() {
            args.extend(["-d".into(), String::new()]);
        }
        for (k, v) in headers {
            args.extend(["-H".into(), format!("{k}: {v}")]);
        }
        args.push(format!("{}{path}", self.base));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(&refs).await
    }
}

/// Unpacks a data export with GNU tar (an implementation other than the dashboard's) into
/// `dir`, checks that its manifest lists exactly the files there, each with its size and
/// SHA-256, and returns the manifest.
pub fn unpack_export(archive: &Path, dir: &Path) -> serde_json::Value {
    use sha2::Digest as _;
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "GNU tar reads the archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "alcove-export/1");
    let mut listed: Vec<String> = vec!["manifest.json".into()];
    for part in manifest["parts"].as_array().unwrap() {
        let path = part["path"].as_str().unwrap();
        let data = std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(part["bytes"], data.len(), "{path}");
        let sum: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(part["sha256"], sum, "{path}");
        listed.push(path.to_string());
    }
    fn files(root: &Path, at: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(at).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    files(dir, dir, &mut found);
    listed.sort();
    found.sort();
    assert_eq!(found, listed, "the manifest lists every file");
    manifest
}

/// A JSON file of an unpacked export.
pub fn export_json(dir: &Path, path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::leaks;

    #[test]
    fn a_code_is_found_as_a_number_of_its_own_not_inside_another() {
        let out = |t: &str| vec![("log".to_string(), t.to_string())];
        assert_eq!(leaks(&out("code=123456 accepted"), "123456"), ["log"]);
        assert_eq!(leaks(&out(r#"{"code":"123456"}"#), "123456"), ["log"]);
        assert!(leaks(&out("at 2026-12-05T18:27:31.123456Z"), "123456").is_empty());
        assert!(leaks(&out("took 91234567 ns"), "123456").is_empty());
        assert_eq!(leaks(&out("key sk-a.123456x"), "sk-a.123456x"), ["log"]);
    }
}
