//! Configuration: where state lives, the simulated nodes, which images run as local programs,
//! static tokens, and fault injection.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The Kubernetes version this server reports: within one minor of kubectl v1.32 and of the
/// k8s-openapi `v1_33` feature the workspace uses.
pub const SERVER_VERSION: &str = "v1.33.0";

/// One simulated node.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints as in `Node.spec.taints` (`key`, `value`, `effect`).
    #[serde(default)]
    pub taints: Vec<Value>,
    /// Allocatable resources (`cpu`, `memory`, `pods`, `nvidia.com/gpu`, …). Missing `cpu`,
    /// `memory` and `pods` get defaults.
    #[serde(default, alias = "allocatable")]
    pub capacity: BTreeMap<String, String>,
}

/// Pods whose image matches run this program as a local process.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ImageMapping {
    /// An image reference; a trailing `*` matches any suffix (tags, digests).
    pub image: String,
    pub executable: PathBuf,
}

/// A CSI driver served from host directories: volume `driver` with attribute `attribute=x` mounts
/// `root/x` (read-only model directories that a platform provides on its nodes).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CsiDriver {
    pub driver: String,
    pub attribute: String,
    pub root: PathBuf,
}

/// A bearer token and the user it authenticates.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StaticToken {
    pub token: String,
    pub user: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Failures injected for reliability tests. All off by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Fraction of resource requests answered 500.
    pub error_rate: f64,
    /// Fraction of resource requests answered 429 with `Retry-After: 1`.
    pub throttle_rate: f64,
    /// Watches end after this many events.
    pub watch_cut_events: Option<u64>,
    /// Watches end after this long.
    pub watch_cut_after: Option<Duration>,
    /// A watch resuming from a resourceVersion is answered 410 Gone.
    pub force_gone_on_resume: bool,
    /// Seed of the fault dice, so a failing run can be repeated.
    pub seed: u64,
    /// Only requests of these users meet the faults (empty: everyone's), so a test can fault the
    /// operator while its own kubectl runs clean.
    pub users: Vec<String>,
}

impl Faults {
    /// Reads `DEVCLUSTER_FAULT_*` environment variables.
    pub fn from_env() -> Faults {
        let f = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
        let u = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Faults {
            error_rate: f("DEVCLUSTER_FAULT_ERROR_RATE").unwrap_or(0.0),
            throttle_rate: f("DEVCLUSTER_FAULT_THROTTLE_RATE").unwrap_or(0.0),
            watch_cut_events: u("DEVCLUSTER_FAULT_WATCH_CUT_EVENTS"),
            watch_cut_after: u("DEVCLUSTER_FAULT_WATCH_CUT_SECONDS").map(Duration::from_secs),
            force_gone_on_resume: std::env::var("DEVCLUSTER_FAULT_FORCE_410")
                .is_ok_and(|v| v == "1" || v == "true"),
            seed: u("DEVCLUSTER_FAULT_SEED").unwrap_or(1),
            users: std::env::var("DEVCLUSTER_FAULT_USERS")
                .map(|v| v.split(',').filter(|u| !u.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }

    /// The faults `user`'s requests meet: these, or none.
    pub fn for_user(&self, user: &str) -> Faults {
        if self.users.is_empty() || self.users.iter().any(|u| u == user) {
            self.clone()
        } else {
            Faults { seed: self.seed, ..Faults::default() }
        }
    }

    pub fn any(&self) -> bool {
        self.error_rate > 0.0
            || self.throttle_rate > 0.0
            || self.watch_cut_events.is_some()
            || self.watch_cut_after.is_some()
            || self.force_gone_on_resume
    }
}

/// Everything `DevCluster::start` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Holds volumes, pod logs and the kubeconfig.
    pub state_dir: PathBuf,
    /// 0 picks a free port.
    pub port: u16,
    pub nodes: Vec<NodeConfig>,
    pub images: Vec<ImageMapping>,
    pub csi_drivers: Vec<CsiDriver>,
    pub tokens: Vec<StaticToken>,
    pub faults: Faults,
    /// Watch events kept for resumption; older resourceVersions get 410 Gone.
    pub watch_history: usize,
    /// Watch events older than this are forgotten too (kube-apiserver's watch cache keeps 75 s).
    pub watch_history_age: Duration,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Writes an audit event (`audit.k8s.io/v1`, level Metadata) per resource request to this
    /// file, one JSON object per line, as kube-apiserver's `--audit-log-path` does.
    pub audit_log: Option<PathBuf>,
    pub pod_network: PodNetwork,
}

/// How pods are networked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodNetwork {
    /// Pods share the host's loopback: each container port gets a free host port, and
    /// NetworkPolicies are stored but not enforced.
    #[default]
    Loopback,
    /// Each pod runs in its own network namespace with its own address; Services get working
    /// cluster IPs and NetworkPolicies are enforced with nftables ([`crate::netns`]). Needs root,
    /// `ip` and `nft`.
    Namespaces,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Config {
        Config {
            state_dir: state_dir.into(),
            port: 0,
            nodes: Vec::new(),
            images: Vec::new(),
            csi_drivers: Vec::new(),
            tokens: Vec::new(),
            faults: Faults::default(),
            watch_history: 200_000,
            watch_history_age: Duration::from_secs(75),
            bookmark_interval: Duration::from_secs(10),
            audit_log: None,
            pod_network: PodNetwork::Loopback,
        }
    }

    pub fn node(mut self, node: NodeConfig) -> Config {
        self.nodes.push(node);
        self
    }

    pub fn image(mut self, image: &str, executable: impl Into<PathBuf>) -> Config {
        self.images.push(ImageMapping { image: image.into(), executable: executable.into() });
        self
    }

    pub fn token(mut self, token: &str, user: &str, groups: &[&str]) -> Config {
        self.tokens.push(StaticToken {
            token: token.into(),
            user: user.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        });
        self
    }

    /// Reads nodes, image mappings and CSI drivers from a YAML file:
    /// `{nodes: [...], images: [...], csiDrivers: [...]}` (each key optional).
    pub fn load_file(mut self, path: &std::path::Path) -> Result<Config, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct File {
            #[serde(default)]
            nodes: Vec<NodeConfig>,
            #[serde(default)]
            images: Vec<ImageMapping>,
            #[serde(default)]
            csi_drivers: Vec<CsiDriver>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: File =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        self.nodes.extend(f.nodes);
        self.images.extend(f.images);
        self.csi_drivers.extend(f.csi_drivers);
        Ok(self)
    }

    /// Reads a kube-apiserver token file: `token,user,uid,"group1,group2"` per line.
    pub fn load_token_file(mut self, path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, groups) = match line.split_once(",\"") {
                Some((h, g)) => (h, g.trim_end_matches('"')),
                None => (line, ""),
            };
            let mut parts = head.split(',');
            let token = parts.next().unwrap_or_default();
            let user = parts.next().ok_or_else(|| {
                format!("{}:{}: expected token,user[,uid[,groups]]", path.display(), i + 1)
            })?;
            let uid = parts.next().unwrap_or_default();
            let mut gs: Vec<String> =
                groups.split(',').filter(|g| !g.is_empty()).map(str::to_string).collect();
            gs.extend(parts.map(str::to_string).filter(|g| !g.is_empty()));
            self.tokens.push(StaticToken {
                token: token.into(),
                user: user.into(),
                uid: uid.into(),
                groups: gs,
            });
        }
        Ok(self)
    }
}

impl NodeConfig {
    pub fn new(name: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            capacity: BTreeMap::new(),
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> NodeConfig {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn capacity(mut self, k: &str, v: &str) -> NodeConfig {
        self.capacity.insert(k.into(), v.into());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> NodeConfig {
        self.taints.push(serde_json::json!({"key": key, "value": value, "effect": effect}));
        self
    }

    /// A GPU node with `gpus` devices of `product` in `region`.
    pub fn gpu(name: &str, region: &str, product: &str, gpus: u32) -> NodeConfig {
        NodeConfig::new(name)
            .label("topology.kubernetes.io/region", region)
            .label("nvidia.com/gpu.product", product)
            .label("nvidia.com/gpu.count", &gpus.to_string())
            .capacity("nvidia.com/gpu", &gpus.to_string())
            .capacity("cpu", "64")
            .capacity("memory", "512Gi")
    }
}
