//! `alcove`: the operator and its tools.
//!
//! - `alcove operator` runs the controllers (see `alcove operator --help` for flags; every flag
//!   has an `ALCOVE_*` environment variable).
//! - `alcove gateway` runs the customers' OpenAI endpoint (see `alcove_gateway`).
//! - `alcove crds` prints the CustomResourceDefinitions (`alcove crds | kubectl apply -f -`).
//! - `alcove up` runs the whole platform on this machine (see `alcove::up`).
//! - `alcove data-report TENANT` prints where a tenant's data is and when it is erased.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "alcove", version, about = "Private, per-tenant GPU inference on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or in-cluster config).
    Operator(alcove::config::OperatorArgs),
    /// Run the customers' OpenAI endpoint: the key selects the instance, with rate limits and
    /// token metering (see `alcove gateway --help`; every flag has an `ALCOVE_GATEWAY_*`
    /// environment variable).
    Gateway {
        #[command(flatten)]
        args: alcove_gateway::GatewayArgs,
        /// Kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`, or the in-cluster service
        /// account).
        #[arg(long, env = "ALCOVE_KUBECONFIG")]
        kubeconfig: Option<std::path::PathBuf>,
    },
    /// Run the customers' dashboard: sign-in by emailed code, then their tenants' instances,
    /// acting as the signed-in user (impersonation) so the cluster's RBAC decides (see
    /// `alcove dashboard --help`; every flag has an `ALCOVE_DASHBOARD_*` environment variable).
    Dashboard {
        // Boxed: its many settings would make every variant as large.
        #[command(flatten)]
        args: Box<alcove_dashboard::DashboardArgs>,
        /// Kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`, or the in-cluster service
        /// account).
        #[arg(long, env = "ALCOVE_KUBECONFIG")]
        kubeconfig: Option<std::path::PathBuf>,
    },
    /// Print the CRDs as YAML.
    Crds,
    #[cfg(feature = "dev")]
    /// Run the whole platform on this machine: an embedded Kubernetes API with simulated GPU
    /// nodes, the CRDs, the operator, and instances as real local processes.
    Up(alcove::up::UpArgs),
    /// Print a tenant's data report: its volumes (where, data class, retention timer), its
    /// encryption key, and past erasures.
    DataReport {
        tenant: String,
        /// The operator's namespace (where erasure receipts are kept).
        #[arg(long, env = "ALCOVE_NAMESPACE", default_value = "alcove-system")]
        namespace: String,
    },
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALCOVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "dev")]
        Command::Up(args) => {
            // The terminal shows what is where; the operator's and the cluster's logs go to a file.
            let _ = std::fs::create_dir_all(&args.state_dir);
            let log_path = args.state_dir.join("alcove.log");
            let log = std::fs::File::create(&log_path).unwrap_or_else(|e| {
                eprintln!("alcove up: {}: {e}", log_path.display());
                std::process::exit(1);
            });
            let filter = tracing_subscriber::EnvFilter::try_from_env("ALCOVE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(alcove::up::run(args)) {
                eprintln!("alcove up: {e:#}");
                std::process::exit(1);
            }
        }
        Command::Gateway { args, kubeconfig } => {
            init_tracing(&args.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(alcove::run_gateway(args, kubeconfig.as_deref())) {
                tracing::error!(error = %e, "gateway failed");
                eprintln!("alcove gateway: {e:#}");
                std::process::exit(1);
            }
        }
        Command::Dashboard { args, kubeconfig } => {
            init_tracing(&args.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(alcove::run_dashboard(*args, kubeconfig.as_deref())) {
                tracing::error!(error = %e, "dashboard failed");
                eprintln!("alcove dashboard: {e:#}");
                std::process::exit(1);
            }
        }
        Command::Crds => print!("{}", alcove_crds::crd_yaml_stream()),
        Command::DataReport { tenant, namespace } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let report = rt.block_on(async {
                let client = kube::Client::try_default().await?;
                alcove::retention::data_report(client, &namespace, &tenant).await
            });
            match report {
                Ok(text) => print!("{text}"),
                Err(e) => {
                    eprintln!("alcove data-report: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Command::Operator(args) => {
            init_tracing(&args.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(alcove::run_operator(args)) {
                tracing::error!(error = %e, "operator failed");
                eprintln!("alcove operator: {e:#}");
                std::process::exit(1);
            }
        }
    }
}
