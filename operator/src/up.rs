//! `alcove up`: the whole platform on one machine — devcluster (the Kubernetes API, simulated
//! nodes and GPUs, a kubelet that runs pods as local processes), the CRDs, the operator, and the
//! inference image mapped to this workspace's `alcove-inference`, which really runs (on CPU).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alcove_devcluster::{Config as ClusterConfig, DevCluster, NodeConfig};
use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

/// `alcove up` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Directory for the kubeconfig, the cluster's volumes and pod logs, models and logs.
    #[arg(long, default_value = ".alcove")]
    pub state_dir: PathBuf,
    /// A model to serve as the platform model `default` (a safetensors directory) or
    /// `default-gguf` (a .gguf file). Without it, test models with random weights are generated.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// YAML file with `nodes` (and optionally `images`, `csiDrivers`) in devcluster's format,
    /// instead of the default node set.
    #[arg(long)]
    pub nodes: Option<PathBuf>,
    /// The `alcove-inference` program pods of the inference image run (default: next to this
    /// program, built with cargo when missing).
    #[arg(long, env = "ALCOVE_INFERENCE_BINARY")]
    pub inference_binary: Option<PathBuf>,
    /// Port of the Kubernetes API on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

pub const H100: &str = "NVIDIA-H100-80GB-HBM3";

/// The node set the examples are written for: a shared pool in `tw-taipei-1`, nodes dedicated to
/// the pro tenant `acme`, a pool the enterprise tenant `globex` brings, the shared pool in another
/// region, and a CPU-only node.
pub fn default_nodes() -> Vec<NodeConfig> {
    vec![
        NodeConfig::gpu("gpu-tw-1", "tw-taipei-1", H100, 8).label("alcove.dev/pool", "shared"),
        NodeConfig::gpu("gpu-tw-2", "tw-taipei-1", H100, 8).label("alcove.dev/pool", "shared"),
        NodeConfig::gpu("gpu-tw-acme", "tw-taipei-1", H100, 8)
            .label("alcove.dev/tenant", "acme")
            .taint("alcove.dev/tenant", "acme", "NoSchedule"),
        NodeConfig::gpu("gpu-tw-globex", "tw-taipei-1", H100, 8)
            .label("alcove.dev/customer-pool", "globex")
            .taint("alcove.dev/customer-pool", "globex", "NoSchedule"),
        NodeConfig::gpu("gpu-jp-1", "jp-tokyo-1", H100, 8).label("alcove.dev/pool", "shared"),
        NodeConfig::new("cpu-1")
            .label("topology.kubernetes.io/region", "tw-taipei-1")
            .capacity("cpu", "16")
            .capacity("memory", "64Gi"),
    ]
}

/// The workspace this binary was built from (to build `alcove-inference` when it is missing).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `alcove-inference`: the flag, else next to this program, else built with cargo (the same
/// profile as this program).
fn inference_binary(args: &UpArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.inference_binary {
        if !p.is_file() {
            bail!("--inference-binary {}: no such file", p.display());
        }
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("locating this program")?;
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join("alcove-inference");
    if beside.is_file() {
        return Ok(beside);
    }
    let release = dir.ends_with("release");
    println!(
        "alcove up: building alcove-inference ({}; first run only)",
        if release { "release" } else { "debug" }
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "alcove-inference", "--bin", "alcove-inference"])
        .current_dir(workspace_root());
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo to build alcove-inference")?;
    if !status.success() || !beside.is_file() {
        bail!(
            "building alcove-inference failed; build it with `cargo build --release -p alcove-inference` or pass --inference-binary"
        );
    }
    Ok(beside)
}

/// The platform models the CSI driver serves: `default` (chat, safetensors), `default-gguf`
/// (chat, GGUF), `default-embedding` (sentence embeddings). Returns a line saying what they are.
fn platform_models(bin: &Path, root: &Path, model: Option<&Path>) -> anyhow::Result<String> {
    std::fs::create_dir_all(root)?;
    let make = |name: &str, extra: &[&str]| -> anyhow::Result<()> {
        let dir = root.join(name);
        if dir.join(".complete").exists() {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&dir);
        let out = std::process::Command::new(bin)
            .args(["make-test-model", "--out"])
            .arg(&dir)
            .args(extra)
            .output()?;
        if !out.status.success() {
            bail!("make-test-model {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(dir.join(".complete"), b"")?;
        Ok(())
    };
    make("default-embedding", &["--embedding"])?;
    let Some(model) = model else {
        make("default", &[])?;
        make("default-gguf", &["--format", "gguf"])?;
        return Ok(
            "test models with random weights (their answers are random text; pass --model for a real one)".into()
        );
    };
    let model = model.canonicalize().with_context(|| format!("--model {}", model.display()))?;
    for name in ["default", "default-gguf"] {
        let _ = std::fs::remove_dir_all(root.join(name));
        let _ = std::fs::remove_file(root.join(name));
    }
    if model.is_dir() {
        std::os::unix::fs::symlink(&model, root.join("default"))?;
        make("default-gguf", &["--format", "gguf"])?;
        Ok(format!(
            "default = {} (safetensors); default-gguf is a random-weight test model",
            model.display()
        ))
    } else {
        std::fs::create_dir_all(root.join("default-gguf"))?;
        std::os::unix::fs::symlink(&model, root.join("default-gguf").join("model.gguf"))?;
        make("default", &[])?;
        Ok(format!(
            "default-gguf = {} (model.gguf); default is a random-weight test model",
            model.display()
        ))
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `GET http://127.0.0.1:port/path` answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Runs until SIGTERM or Ctrl-C, then stops the operator and the cluster (which kills every pod
/// process; they also die with this process, by `PR_SET_PDEATHSIG`).
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let state = args.state_dir.canonicalize()?;
    let bin = inference_binary(&args)?;
    let models = state.join("models");
    let model_note = platform_models(&bin, &models, args.model.as_deref())?;

    // The API's state lives in memory: each run starts a fresh cluster.
    let cluster_dir = state.join("cluster");
    let _ = std::fs::remove_dir_all(&cluster_dir);
    let mut config = ClusterConfig::new(&cluster_dir);
    config.port = args.port;
    match &args.nodes {
        Some(path) => {
            config = config.load_file(path).map_err(|e| anyhow::anyhow!("--nodes {e}"))?
        }
        None => config.nodes = default_nodes(),
    }
    let image = crate::config::default_image();
    let pattern = format!("{}*", image.split(':').next().unwrap_or(&image));
    config = config.image(&pattern, &bin);
    config.csi_drivers.push(alcove_devcluster::config::CsiDriver {
        driver: "models.alcove.dev".into(),
        attribute: "model".into(),
        root: models.clone(),
    });
    let nodes = config.nodes.clone();
    let cluster =
        DevCluster::start(config).await.map_err(|e| anyhow::anyhow!("starting devcluster: {e}"))?;
    let kubeconfig = state.join("kubeconfig");
    std::fs::copy(&cluster.kubeconfig, &kubeconfig).context("writing the kubeconfig")?;

    let client = cluster.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in alcove_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &PatchParams::apply("alcove-up").force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("installing CRD {name}"))?;
    }

    // The operator's namespace, as the chart's install makes it (ledgers, receipts, the
    // gateway's usage ConfigMaps live there).
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "alcove-system"}});
    namespaces
        .patch("alcove-system", &PatchParams::apply("alcove-up").force(), &Patch::Apply(&ns))
        .await
        .context("creating namespace alcove-system")?;

    let port = free_port()?;
    let operator_args = crate::config::OperatorArgs {
        namespace: "alcove-system".into(),
        http_addr: ([127, 0, 0, 1], port).into(),
        config: None,
        resync_seconds: 300,
        leader_election: false,
        shards: 1,
        identity: Some("alcove-up".into()),
        log_format: "text".into(),
        #[cfg(feature = "test-hooks")]
        clock_file: None,
        kubeconfig: Some(kubeconfig.clone()),
        // Billing runs when the environment names a Stripe (e.g. localstripe); disabled otherwise.
        stripe_api_key: std::env::var("ALCOVE_STRIPE_API_KEY").ok().and_then(|k| k.parse().ok()),
        stripe_api_base: std::env::var("ALCOVE_STRIPE_API_BASE")
            .unwrap_or_else(|_| "https://api.stripe.com/".into()),
        stripe_webhook_secret: std::env::var("ALCOVE_STRIPE_WEBHOOK_SECRET")
            .ok()
            .and_then(|k| k.parse().ok()),
        #[cfg(feature = "test-hooks")]
        crash_after: None,
    };
    let mut operator = tokio::spawn(crate::run_operator(operator_args));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_ok(port, "/readyz") {
        if operator.is_finished() || Instant::now() > deadline {
            let why = match operator.await {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "not ready within 60 s".into(),
            };
            cluster.shutdown().await;
            bail!("the operator did not start: {why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The gateway: HTTPS on loopback with a certificate from a CA made for this run; it reaches
    // instances through the API server's service proxy (there is no Service network here).
    let gateway_dir = state.join("gateway");
    std::fs::create_dir_all(&gateway_dir)?;
    let pem = alcove_devcluster::tls::loopback_pem("alcove-gateway", &[])
        .map_err(|e| anyhow::anyhow!("gateway certificate: {e}"))?;
    let (ca, cert, key) =
        (gateway_dir.join("ca.pem"), gateway_dir.join("tls.crt"), gateway_dir.join("tls.key"));
    std::fs::write(&ca, &pem.ca_pem)?;
    std::fs::write(&cert, &pem.chain_pem)?;
    std::fs::write(&key, &pem.key_pem)?;
    // The dashboard's usage page reads the same store (one process, one SQLite file).
    let usage_dsn = format!("sqlite://{}", gateway_dir.join("usage.db").display());
    let gateway_args = alcove_gateway::GatewayArgs {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..alcove_gateway::GatewayArgs::embedded(
            alcove_gateway::upstream::Mode::ApiServer,
            usage_dsn.clone(),
        )
    };
    let (gateway, gateway_serving) = alcove_gateway::start(gateway_args, cluster.config()).await?;
    let gateway_url = format!("https://{}/v1", gateway.public);
    std::fs::write(gateway_dir.join("url"), &gateway_url)?;
    let gateway_task = tokio::spawn(gateway_serving);

    // The dashboard, with a loopback mail sink standing in for a relay: sign-in codes land as
    // files under the state directory.
    let (sink, sink_serving) = alcove_dashboard::mailsink::start(state.join("mail")).await?;
    let sink_task = tokio::spawn(sink_serving);
    let catalogue = ["default=safetensors", "default-gguf=gguf:model.gguf"]
        .iter()
        .map(|m| m.parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Top-ups by card when the environment names a Stripe (as for the operator's billing) and
    // its publishable key; e.g. localstripe with ALCOVE_STRIPE_JS_URL=<it>/js.stripe.com/v3/.
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let stripe_publishable_key = env("ALCOVE_STRIPE_PUBLISHABLE_KEY");
    let dashboard_args = alcove_dashboard::DashboardArgs {
        gateway_ca: Some(ca.clone()),
        stripe_api_key: stripe_publishable_key
            .as_ref()
            .and_then(|_| env("ALCOVE_STRIPE_API_KEY"))
            .and_then(|k| k.parse().ok()),
        stripe_publishable_key,
        usage_store: Some(usage_dsn),
        stripe_api_base: env("ALCOVE_STRIPE_API_BASE")
            .unwrap_or_else(|| "https://api.stripe.com/".into()),
        stripe_js_url: env("ALCOVE_STRIPE_JS_URL")
            .unwrap_or_else(|| "https://js.stripe.com/v3/".into()),
        ..alcove_dashboard::DashboardArgs::embedded(
            format!("smtp://127.0.0.1:{}", sink.port),
            format!("sqlite://{}", state.join("dashboard.db").display()),
            format!("https://{}", gateway.public),
            catalogue,
        )
    };
    let (dashboard, dashboard_serving) = alcove_dashboard::start(
        dashboard_args,
        cluster.client().await?,
        std::sync::Arc::new(alcove_clock::SystemClock),
    )
    .await?;
    let dashboard_task = tokio::spawn(dashboard_serving);

    let rel = |p: &Path| {
        p.strip_prefix(std::env::current_dir().unwrap_or_default())
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    println!(
        "alcove up: Kubernetes API   {} (kubeconfig {})",
        cluster.url(),
        rel(&kubeconfig).display()
    );
    for n in &nodes {
        let gpus = n
            .capacity
            .get("nvidia.com/gpu")
            .map(|g| {
                format!(
                    "{g}× {}",
                    n.labels.get("nvidia.com/gpu.product").cloned().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "CPU only".into());
        println!(
            "alcove up: node {:<14} {gpus}, {}",
            n.name,
            n.labels.get("topology.kubernetes.io/region").cloned().unwrap_or_default()
        );
    }
    println!(
        "alcove up: gateway          {gateway_url}  (the customers' OpenAI base URL; metrics http://{}/metrics)",
        gateway.metrics
    );
    println!(
        "alcove up:   its certificate's CA is {}: export SSL_CERT_FILE=$PWD/{} for the OpenAI SDKs, curl --cacert {}",
        rel(&ca).display(),
        rel(&ca).display(),
        rel(&ca).display()
    );
    println!(
        "alcove up: dashboard        {}  (sign in as a tenant owner, e.g. alice@startup.example after applying examples/good/tenant-basic.yaml)",
        dashboard.url
    );
    println!(
        "alcove up:   sign-in mail goes to the sink {}: each message is a .eml file there",
        rel(&sink.dir).display()
    );
    println!("alcove up: inference image {image} runs {}", bin.display());
    println!("alcove up: platform models in {}: {model_note}", rel(&models).display());
    println!(
        "alcove up: operator metrics http://127.0.0.1:{port}/metrics; pod logs under {}",
        rel(&cluster_dir).display()
    );
    println!(
        "alcove up: simulated: the nodes and their GPUs; real: the Kubernetes API, the operator, and every inference server (on this machine's CPU)"
    );
    println!(
        "alcove up: ready in {:.1} s — export KUBECONFIG={}   (Ctrl-C stops everything)",
        started.elapsed().as_secs_f64(),
        rel(&kubeconfig).display()
    );

    // The operator listens for the same signal; whichever of the two sees it first, both stop.
    let stopped_alone = tokio::select! {
        _ = crate::shutdown_signal() => None,
        r = &mut operator => Some(r),
    };
    println!("alcove up: stopping");
    gateway_task.abort();
    dashboard_task.abort();
    sink_task.abort();
    match stopped_alone {
        None => drop(tokio::time::timeout(Duration::from_secs(5), operator).await),
        Some(Ok(Ok(()))) => {}
        Some(r) => {
            cluster.shutdown().await;
            return match r {
                Ok(Err(e)) => Err(e.context("the operator stopped")),
                _ => bail!("the operator stopped"),
            };
        }
    }
    cluster.shutdown().await;
    println!("alcove up: stopped");
    Ok(())
}
