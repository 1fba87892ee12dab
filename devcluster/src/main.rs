//! `alcove-devcluster --state-dir DIR [--port N] [--nodes FILE] [--token-file FILE]
//! [--image IMAGE=EXE]... [--pod-network loopback|namespaces]`
//!
//! Serves the embedded Kubernetes API on 127.0.0.1, writes `DIR/kubeconfig`, prints a line with
//! `ready` once it serves, and stops (killing every pod process) on SIGINT or SIGTERM.
//! Fault injection is set with `DEVCLUSTER_FAULT_*` variables (see `Faults::from_env`).

use std::path::PathBuf;

use alcove_devcluster::{Config, DevCluster, Faults, ImageMapping};
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Embedded Kubernetes API server with a process-backed kubelet")]
struct Args {
    /// Directory for the kubeconfig, volumes and pod logs.
    #[arg(long, default_value = ".devcluster")]
    state_dir: PathBuf,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// YAML file with `nodes`, `images` and `csiDrivers`.
    #[arg(long)]
    nodes: Option<PathBuf>,
    /// kube-apiserver style token file: `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Run pods of IMAGE as the local program EXE (IMAGE may end in `*`).
    #[arg(long = "image", value_name = "IMAGE=EXE")]
    images: Vec<String>,
    /// Append an audit event per resource request to FILE (JSON lines, audit.k8s.io/v1).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// `loopback` (pods share the host's loopback) or `namespaces` (each pod in its own network
    /// namespace, NetworkPolicies enforced; needs root, `ip` and `nft`).
    #[arg(long, default_value = "loopback", value_parser = ["loopback", "namespaces"])]
    pod_network: String,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = Config::new(&args.state_dir);
    config.port = args.port;
    config.faults = Faults::from_env();
    config.audit_log = args.audit_log_path.clone();
    if args.pod_network == "namespaces" {
        config.pod_network = alcove_devcluster::PodNetwork::Namespaces;
    }
    if let Some(path) = &args.nodes {
        config = config.load_file(path).unwrap_or_else(|e| fail(&e));
    }
    if let Some(path) = &args.token_file {
        config = config.load_token_file(path).unwrap_or_else(|e| fail(&e));
    }
    for spec in &args.images {
        let (image, exe) = spec
            .split_once('=')
            .unwrap_or_else(|| fail(&format!("--image {spec}: expected IMAGE=EXE")));
        config.images.push(ImageMapping { image: image.into(), executable: exe.into() });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    runtime.block_on(async move {
        let cluster = DevCluster::start(config).await.unwrap_or_else(|e| fail(&e.to_string()));
        println!(
            "devcluster ready at {} (kubeconfig: {})",
            cluster.url(),
            cluster.kubeconfig.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .unwrap_or_else(|e| fail(&e.to_string()));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        cluster.shutdown().await;
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("alcove-devcluster: {msg}");
    std::process::exit(2);
}
