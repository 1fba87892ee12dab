//! alcove-devcluster: an embedded Kubernetes API server with a process-backed kubelet.
//!
//! It speaks the real REST API (discovery, OpenAPI v3, CRUD, list/watch with resourceVersions
//! and bookmarks, status subresources, merge/JSON/strategic patches, server-side apply with
//! managedFields, finalizers, owner-reference garbage collection, namespaces, CRDs with
//! structural schemas and CEL, RBAC, quota, Pod Security) so that `kubectl` and kube-rs clients
//! work against it unchanged, and it runs pods as local processes on simulated nodes.
//!
//! It is test and local-run infrastructure, not a production API server: state is in memory,
//! and it serves plain HTTP on 127.0.0.1.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = alcove_devcluster::DevCluster::start(alcove_devcluster::Config::new("/tmp/dc")).await?;
//! let client = cluster.client().await?;
//! # let _ = client; Ok(()) }
//! ```

pub mod admission;
pub mod api;
pub mod auth;
pub mod builtin;
pub mod config;
pub mod controllers;
pub mod discovery;
pub mod error;
pub mod events;
pub mod fieldmanager;
pub mod kubelet;
pub mod meta;
pub mod metrics;
pub mod netns;
pub mod netpol;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod proxy;
pub mod quantity;
pub mod resources;
pub mod runtime;
pub mod scheduler;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod shared;
pub mod state;
pub mod table;
pub mod tls;
pub mod typeinfo;
pub mod usage;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

pub use config::{Config, CsiDriver, Faults, ImageMapping, NodeConfig, PodNetwork, StaticToken};
pub use error::ApiError;
pub use shared::Shared;

pub use config::SERVER_VERSION;

/// A running devcluster.
pub struct DevCluster {
    pub addr: SocketAddr,
    /// The CA clients trust (PEM); also written to `<state_dir>/ca.crt`.
    pub ca_pem: String,
    pub kubeconfig: PathBuf,
    pub admin_token: String,
    pub state_dir: PathBuf,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    network: Option<Arc<netns::Network>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state directory {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
    #[error("listening on 127.0.0.1:{0}: {1}")]
    Listen(u16, std::io::Error),
    #[error("making the serving certificate: {0}")]
    Tls(String),
    #[error("the pod network: {0}")]
    Network(String),
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("randomness");
    meta::hex(&bytes)
}

fn node_object(n: &NodeConfig) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": n.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    });
    for (k, v) in &n.labels {
        labels[k] = v.clone().into();
    }
    let mut capacity =
        json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    for (k, v) in &n.capacity {
        capacity[k] = v.clone().into();
    }
    let now = meta::now_rfc3339();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name, "labels": labels},
        "spec": if n.taints.is_empty() { json!({}) } else { json!({"taints": n.taints}) },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status (simulated node)", "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": n.name}],
            "nodeInfo": {
                "kubeletVersion": SERVER_VERSION, "kubeProxyVersion": SERVER_VERSION, "operatingSystem": "linux",
                "architecture": "amd64", "containerRuntimeVersion": "devcluster://0.1.0", "osImage": "devcluster (simulated)",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    })
}

/// Writes a kubeconfig for `server` (trusting `ca_pem`) authenticating with `token`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> std::io::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: devcluster\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: devcluster\n  context:\n    cluster: devcluster\n    user: {user}\ncurrent-context: devcluster\npreferences: {{}}\n"
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl DevCluster {
    /// Starts the API server, controllers, scheduler and kubelet on the current tokio runtime.
    pub async fn start(mut config: Config) -> Result<DevCluster, StartError> {
        let state_dir = config.state_dir.clone();
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| StartError::StateDir(state_dir.clone(), e))?;
        let state_dir =
            state_dir.canonicalize().map_err(|e| StartError::StateDir(state_dir.clone(), e))?;
        config.state_dir = state_dir.clone();
        let volumes_dir = state_dir.join("volumes");
        std::fs::create_dir_all(&volumes_dir)
            .map_err(|e| StartError::StateDir(volumes_dir.clone(), e))?;
        let admin_token = random_token();
        config.tokens.push(StaticToken {
            token: admin_token.clone(),
            user: "admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into()],
        });
        if config.nodes.is_empty() {
            config.nodes.push(NodeConfig::new("devcluster-node"));
        }

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|e| StartError::Listen(config.port, e))?;
        let addr = listener.local_addr().map_err(|e| StartError::Listen(config.port, e))?;
        let runtime = Arc::new(runtime::Runtime::new(
            state_dir.clone(),
            config.images.clone(),
            config.csi_drivers.clone(),
        ));
        runtime.set_api_port(addr.port());
        let nodes = config.nodes.clone();
        let pod_network = config.pod_network;
        let shared = Arc::new(Shared::new(config, runtime, addr.to_string()));
        let network = match pod_network {
            PodNetwork::Loopback => None,
            PodNetwork::Namespaces => Some(
                netns::Network::start(shared.clone(), addr.port())
                    .await
                    .map_err(StartError::Network)?,
            ),
        };

        {
            let mut st = shared.lock();
            for (gr, obj) in auth::bootstrap_rbac() {
                api::system_write(&mut st, &gr, obj, false, "kube-apiserver");
            }
            let namespaces = resources::GroupResource::core("namespaces");
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                api::system_write(
                    &mut st,
                    &namespaces,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    false,
                    "kube-apiserver",
                );
            }
            for n in &nodes {
                api::system_write(
                    &mut st,
                    &resources::GroupResource::core("nodes"),
                    node_object(n),
                    false,
                    "kubelet",
                );
            }
            api::system_write(
                &mut st,
                &resources::GroupResource::new("storage.k8s.io", "storageclasses"),
                json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                    "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                    "provisioner": "devcluster.alcove.dev/hostpath", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}),
                false,
                "kube-apiserver",
            );
            api::system_write(
                &mut st,
                &resources::GroupResource::core("services"),
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                    "spec": {"type": "ClusterIP", "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}]}}),
                false,
                "kube-apiserver",
            );
        }

        let certs = tls::generate().map_err(StartError::Tls)?;
        std::fs::write(state_dir.join("ca.crt"), &certs.ca_pem)
            .map_err(|e| StartError::StateDir(state_dir.clone(), e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config.clone());
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let app = axum::Router::new().fallback(server::handle).with_state(shared.clone());
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let _ = tcp.set_nodelay(true);
                        let acceptor = acceptor.clone();
                        let app = app.clone();
                        let mut stop = stop_rx.clone();
                        tokio::spawn(async move {
                            let Ok(stream) = acceptor.accept(tcp).await else { return };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let service = hyper_util::service::TowerToHyperService::new(app);
                            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades();
                            tokio::select! {
                                _ = conn => {}
                                _ = stop.changed() => {}
                            }
                        });
                    }
                    _ = stop_rx.changed() => return,
                }
            }
        }));
        tasks.push(tokio::spawn(control_loop(shared.clone(), volumes_dir)));
        tasks.push(tokio::spawn(kubelet::run(shared.clone(), network.clone())));

        let kubeconfig = state_dir.join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &format!("https://{addr}"),
            &certs.ca_pem,
            "admin",
            &admin_token,
        )
        .map_err(|e| StartError::StateDir(kubeconfig.clone(), e))?;
        Ok(DevCluster {
            addr,
            ca_pem: certs.ca_pem,
            kubeconfig,
            admin_token,
            state_dir,
            shared,
            shutdown: Some(stop_tx),
            tasks,
            network,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A kube client authenticated as the cluster admin.
    pub async fn client(&self) -> Result<kube::Client, kube::Error> {
        self.client_with_token(&self.admin_token).await
    }

    /// A kube client authenticated with `token`.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, kube::Error> {
        kube::Client::try_from(self.config_with_token(token))
    }

    /// The configuration of a client authenticated as the cluster admin (for a caller that
    /// makes clients of its own from it).
    pub fn config(&self) -> kube::Config {
        self.config_with_token(&self.admin_token)
    }

    fn config_with_token(&self, token: &str) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("valid url"));
        config.auth_info.token = Some(token.to_string().into());
        config.root_cert = Some(vec![pem_to_der(&self.ca_pem)]);
        config.default_namespace = "default".into();
        config
    }

    /// Adds a bearer token for `user` in `groups`.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.shared.auth.add_token(
            token,
            user,
            &groups.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        );
    }

    /// Writes a kubeconfig authenticating with `token`.
    pub fn write_kubeconfig_for(
        &self,
        path: &Path,
        user: &str,
        token: &str,
    ) -> std::io::Result<()> {
        write_kubeconfig(path, &self.url(), &self.ca_pem, user, token)
    }

    /// In-process access for tests: metrics, the kubelet's process table, the store.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops serving and kills every pod process.
    pub async fn shutdown(mut self) {
        self.stop();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }

    fn stop(&mut self) {
        self.shared.runtime.kill_all();
        if let Some(n) = &self.network {
            n.shutdown();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default()
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs the built-in controllers and the scheduler until the process ends: the store's events in
/// batches, and a tick every 250 ms for time-driven work (job backoff, TTLs, pending pods).
async fn control_loop(shared: Arc<Shared>, volumes_dir: PathBuf) {
    let mut rx = shared.lock().subscribe();
    let mut controllers = controllers::Controllers::new(volumes_dir);
    let mut scheduler = scheduler::Cache::default();
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            r = rx.recv() => {
                let mut batch = Vec::new();
                match r {
                    Ok(e) => batch.push(e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed events: treat every object as changed.
                        let mut st = shared.lock();
                        scheduler.rebuild(&st);
                        let everything = st.everything_as_events();
                        controllers.handle(&mut st, &everything);
                        scheduler::schedule_pending(&mut st, &mut scheduler);
                        continue;
                    }
                    Err(_) => return,
                }
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                    if batch.len() >= 2048 {
                        break;
                    }
                }
                let mut st = shared.lock();
                controllers.handle(&mut st, &batch);
                scheduler::handle(&mut st, &mut scheduler, &batch);
            }
            _ = ticker.tick() => {
                let mut st = shared.lock();
                controllers.tick(&mut st);
                scheduler::schedule_pending(&mut st, &mut scheduler);
            }
        }
    }
}
