//! Shared by devcluster's test suites: a cluster per test, kubectl against it, waiting helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use alcove_devcluster::{Config, DevCluster, NodeConfig};
// Each suite uses some of these.
#[allow(unused_imports)]
pub use alcove_testkit::{Run, eventually, free_port, kubectl, until_some, workspace_root};
use serde_json::Value;

pub const TESTPOD_IMAGE: &str = "example.com/testpod:1";

pub fn testpod() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devcluster-testpod"))
}

pub struct Env {
    pub cluster: DevCluster,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
}

pub fn base_config(dir: &Path) -> Config {
    Config::new(dir.join("state")).image("example.com/testpod*", testpod()).node(
        NodeConfig::new("node-a")
            .capacity("cpu", "8")
            .capacity("memory", "16Gi")
            .capacity("pods", "50"),
    )
}

pub async fn start() -> Env {
    start_with(|c| c).await
}

pub async fn start_with(f: impl FnOnce(Config) -> Config) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = f(base_config(dir.path()));
    let cluster = DevCluster::start(config).await.expect("devcluster starts");
    let client = cluster.client().await.expect("client");
    Env { cluster, client, dir }
}

impl Env {
    pub async fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Run {
        kubectl(kubeconfig, self.dir.path(), args, stdin).await
    }

    pub async fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_as(&self.cluster.kubeconfig, args, None).await
    }

    pub async fn kubectl_in(&self, args: &[&str], stdin: &str) -> Run {
        self.kubectl_as(&self.cluster.kubeconfig, args, Some(stdin)).await
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let r = self.kubectl(args).await;
        assert!(r.ok, "kubectl {} failed:\n{}{}", args.join(" "), r.stdout, r.stderr);
        r.stdout
    }

    pub async fn ok_in(&self, args: &[&str], stdin: &str) -> String {
        let r = self.kubectl_in(args, stdin).await;
        assert!(r.ok, "kubectl {} failed:\n{}{}", args.join(" "), r.stdout, r.stderr);
        r.stdout
    }

    /// kubectl that must fail; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let r = self.kubectl(args).await;
        assert!(!r.ok, "kubectl {} unexpectedly succeeded:\n{}", args.join(" "), r.stdout);
        r.stderr
    }

    /// A kubeconfig for a user with `token` in `groups`.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let token = format!("token-{user}");
        self.cluster.add_token(&token, user, groups);
        let path = self.dir.path().join(format!("kubeconfig-{user}"));
        self.cluster.write_kubeconfig_for(&path, user, &token).expect("write kubeconfig");
        path
    }

    /// Raw GET through the admin client.
    pub async fn get_raw(&self, path: &str) -> String {
        let req = http::Request::get(path).body(Vec::new()).expect("request");
        self.client.request_text(req).await.expect("GET")
    }

    /// Requests of the write verbs counted by `apiserver_request_total`.
    pub async fn write_requests(&self) -> f64 {
        let text = self.get_raw("/metrics").await;
        alcove_devcluster::metrics::parse_request_totals(&text)
            .into_iter()
            .filter(|(l, _)| alcove_devcluster::metrics::WRITE_VERBS.contains(&l["verb"].as_str()))
            .map(|(_, v)| v)
            .sum()
    }
}

pub fn yaml_to_json(yaml: &str) -> Value {
    serde_saphyr::from_str(yaml).expect("yaml")
}

/// A pod running the test program.
pub fn testpod_pod(name: &str, args: &[&str]) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "main",
                "image": TESTPOD_IMAGE,
                "args": args,
                "ports": [{"containerPort": 8080, "name": "http"}],
            }],
        },
    })
}
