//! `alcove gateway`: the customers' one OpenAI endpoint.
//!
//! - [`directory`]: key → instance, from the key hashes the operator publishes in instance status.
//! - [`limits`]: requests and tokens per minute per key; failed keys per client address.
//! - [`usage`]: token counts from answers (and the stream option that makes streams carry them).
//! - [`upstream`]: to the instance's Service, or through the API server's service proxy.
//! - [`store`], [`recorder`]: one usage record per request (never its content), SQLite or
//!   PostgreSQL, kept 90 days; per-day totals kept for billing.
//! - [`server`]: the request path: key, availability, limits, forward, meter.
//! - [`publish`]: token totals and the last request per instance, and wake-ups of idle ones, for
//!   the operator (a ConfigMap per instance, at most one write a minute each).
//! - [`tls`]: the certificate, reloaded when its files change (a mounted Secret).
//!
//! Layers, bottom up: error, metrics → directory, limits, usage, tls, store → upstream, recorder,
//! publish → server → this.

pub mod directory;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod publish;
pub mod recorder;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use alcove_crds::instance::InferenceInstance;
use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::routing::{any, get};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::directory::Directory;
use crate::server::{Bounds, Cidr, Gateway};

const MAX_BODY_BYTES: usize = 4 << 20;
const UPSTREAM_TIMEOUT_SECONDS: u64 = 300;
const AUTH_FAILURES_PER_MINUTE: u32 = 20;
const PUBLISH_SECONDS: u64 = 60;
const WAKE_TIMEOUT_SECONDS: u64 = 180;
const NAMESPACE: &str = "alcove-system";
const LOG_FORMAT: &str = "text";

#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address of the public OpenAI endpoint.
    #[arg(long, env = "ALCOVE_GATEWAY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "ALCOVE_GATEWAY_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain; with `--tls-key`, the endpoint speaks HTTPS. Both files are read
    /// again when they change (a mounted Secret, e.g. from cert-manager).
    #[arg(long, env = "ALCOVE_GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "ALCOVE_GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How requests reach instances: `service` (in-cluster DNS of the instance's Service) or
    /// `api-server` (the API server's service proxy, for a gateway outside the cluster).
    #[arg(long, env = "ALCOVE_GATEWAY_UPSTREAM", value_enum, default_value = "service")]
    pub upstream: upstream::Mode,
    /// Gateway replicas behind the load balancer: each enforces its share of every limit.
    #[arg(long, env = "ALCOVE_GATEWAY_REPLICAS", default_value_t = 1)]
    pub replicas: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "ALCOVE_GATEWAY_MAX_BODY_BYTES", default_value_t = MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Seconds to wait for an instance's answer to begin, and between two chunks of a stream.
    #[arg(long, env = "ALCOVE_GATEWAY_UPSTREAM_TIMEOUT", default_value_t = UPSTREAM_TIMEOUT_SECONDS)]
    pub upstream_timeout_seconds: u64,
    /// Requests with a wrong key allowed per client address per minute.
    #[arg(long, env = "ALCOVE_GATEWAY_AUTH_FAILURES_PER_MINUTE", default_value_t = AUTH_FAILURES_PER_MINUTE)]
    pub auth_failures_per_minute: u32,
    /// Optional per-instance host names: with `ai.example.com`, the host
    /// `<instance>.<tenant>.ai.example.com` admits only that instance's key (route such names,
    /// e.g. a wildcard DNS record and certificate, to the gateway). Any other host: the key alone.
    #[arg(long, env = "ALCOVE_GATEWAY_HOST_DOMAIN")]
    pub host_domain: Option<String>,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For` is believed.
    #[arg(long, env = "ALCOVE_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,
    /// The namespace of the usage ConfigMaps (the operator's).
    #[arg(long, env = "ALCOVE_NAMESPACE", default_value = NAMESPACE)]
    pub namespace: String,
    /// Seconds between two publications of an instance's usage (token totals, last request).
    #[arg(long, env = "ALCOVE_GATEWAY_PUBLISH_SECONDS", default_value_t = PUBLISH_SECONDS)]
    pub publish_seconds: u64,
    /// Seconds a request waits for an idle instance to wake before a 503.
    #[arg(long, env = "ALCOVE_GATEWAY_WAKE_TIMEOUT", default_value_t = WAKE_TIMEOUT_SECONDS)]
    pub wake_timeout_seconds: u64,
    /// The usage store: `sqlite:///path/usage.db` (one replica) or `postgres://…` (several).
    #[arg(long, env = "ALCOVE_GATEWAY_USAGE_STORE")]
    pub usage_store: String,
    #[cfg(feature = "test-hooks")]
    /// Tests only: read "now" from this file (an RFC 3339 instant) instead of the system clock.
    #[arg(long, env = "ALCOVE_CLOCK_FILE")]
    pub clock_file: Option<PathBuf>,
    /// `text` or `json` logs.
    #[arg(long, env = "ALCOVE_LOG_FORMAT", default_value = LOG_FORMAT)]
    pub log_format: String,
}

impl GatewayArgs {
    /// A gateway inside another process (`alcove up`, the benchmark): both listeners on free
    /// loopback ports, plain HTTP, one replica, every other setting at its command-line default.
    pub fn embedded(upstream: upstream::Mode, usage_store: String) -> GatewayArgs {
        GatewayArgs {
            listen: ([127, 0, 0, 1], 0).into(),
            metrics_listen: ([127, 0, 0, 1], 0).into(),
            tls_cert: None,
            tls_key: None,
            upstream,
            replicas: 1,
            max_body_bytes: MAX_BODY_BYTES,
            upstream_timeout_seconds: UPSTREAM_TIMEOUT_SECONDS,
            auth_failures_per_minute: AUTH_FAILURES_PER_MINUTE,
            host_domain: None,
            trusted_proxies: Vec::new(),
            namespace: NAMESPACE.into(),
            publish_seconds: PUBLISH_SECONDS,
            wake_timeout_seconds: WAKE_TIMEOUT_SECONDS,
            usage_store,
            #[cfg(feature = "test-hooks")]
            clock_file: None,
            log_format: LOG_FORMAT.into(),
        }
    }
}

/// A started gateway: where it listens.
pub struct Started {
    pub public: SocketAddr,
    pub metrics: SocketAddr,
}

/// Runs the gateway until the process ends.
pub async fn run(args: GatewayArgs, config: kube::Config) -> anyhow::Result<()> {
    let (_started, serving) = start(args, config).await?;
    serving.await
}

/// Binds both listeners and starts watching instances; the future serves until an error.
pub async fn start(
    args: GatewayArgs,
    config: kube::Config,
) -> anyhow::Result<(Started, impl std::future::Future<Output = anyhow::Result<()>>)> {
    let client = kube::Client::try_from(config.clone())?;
    // Requests to instances through the API server's service proxy go without kube's default
    // retries (429, 503 and 504, up to 15 times over minutes): a completion must not be sent
    // twice, and an instance without endpoints (idle, starting) is answered at once, not after
    // minutes of retries.
    let mut config = config;
    config.default_retry = false;
    let data_path = kube::Client::try_from(config)?;
    #[cfg(feature = "test-hooks")]
    let clock: Arc<dyn alcove_clock::Clock> = match &args.clock_file {
        Some(p) => Arc::new(alcove_clock::FileClock::new(p.clone())),
        None => Arc::new(alcove_clock::SystemClock),
    };
    #[cfg(not(feature = "test-hooks"))]
    let clock: Arc<dyn alcove_clock::Clock> = Arc::new(alcove_clock::SystemClock);
    let store = store::Store::open(&args.usage_store).await?;
    let metrics = metrics::Metrics::new();
    let (recorder, writing) = recorder::start(
        store.clone(),
        metrics.records_dropped.clone(),
        metrics.records_written.clone(),
    );
    let gw = Arc::new(Gateway {
        directory: RwLock::new(Arc::new(Directory::default())),
        limiter: Mutex::new(limits::Limiter::new(args.replicas)),
        failures: Mutex::new(limits::FailureLimiter::new(args.auth_failures_per_minute)),
        metrics,
        upstream: upstream::Upstream::new(args.upstream, data_path, Duration::from_secs(5)),
        bounds: Bounds {
            max_body_bytes: args.max_body_bytes,
            upstream_timeout: Duration::from_secs(args.upstream_timeout_seconds.max(1)),
            max_response_bytes: 64 << 20,
        },
        trusted_proxies: args.trusted_proxies.clone(),
        recorder,
        clock: clock.clone(),
        activity: Arc::new(publish::Activity::default()),
        directory_version: tokio::sync::watch::channel(0).0,
        wake_timeout: Duration::from_secs(args.wake_timeout_seconds.max(1)),
        host_domain: args.host_domain.clone().map(|d| d.trim_matches('.').to_ascii_lowercase()),
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::acceptor(c, k)?),
        _ => None,
    };
    let public = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("listen on {}", args.metrics_listen))?;
    let started = Started { public: public.local_addr()?, metrics: metrics_listener.local_addr()? };
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let api = Router::new()
        .route("/{*path}", any(server::handle))
        .fallback(any(server::handle))
        .with_state(gw.clone());
    let ops = Router::new()
        .route("/metrics", get(|State(gw): State<Arc<Gateway>>| async move { gw.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get({
                let synced = synced.clone();
                move || async move {
                    if synced.load(std::sync::atomic::Ordering::Relaxed) {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "instances not listed yet")
                    }
                }
            }),
        )
        .with_state(gw.clone());

    let publishing = gw.activity.clone().publish(
        client.clone(),
        args.namespace.clone(),
        store.clone(),
        Duration::from_secs(args.publish_seconds.max(1)),
    );
    let watching = watch_instances(client, gw.clone(), synced);
    let serving = async move {
        let api_server = tls::serve(public, api, tls);
        let ops_server = async move {
            axum::serve(metrics_listener, ops.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .context("metrics server")
        };
        let housekeeping = async {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let now = Instant::now();
                gw.limiter.lock().unwrap_or_else(|p| p.into_inner()).prune(now);
                gw.failures.lock().unwrap_or_else(|p| p.into_inner()).prune(now);
            }
        };
        let purging = purge_records(store, clock, gw.metrics.records_purged.clone());
        tokio::select! {
            r = api_server => r,
            r = ops_server => r,
            r = watching => r,
            () = housekeeping => Ok(()),
            () = writing => Ok(()),
            () = purging => Ok(()),
            () = publishing => Ok(()),
        }
    };
    tracing::info!(public = %started.public, metrics = %started.metrics, "gateway listening");
    Ok((started, serving))
}

/// Deletes records past their 90 days: hourly, and whenever an injected clock jumps.
async fn purge_records(
    store: store::Store,
    clock: Arc<dyn alcove_clock::Clock>,
    purged: prometheus::IntCounter,
) {
    let mut jumps = clock.jumps().unwrap_or_else(|| futures::stream::pending().boxed());
    loop {
        match store.purge(clock.now().as_millisecond()).await {
            Ok(n) => {
                purged.inc_by(n);
                if n > 0 {
                    tracing::info!(records = n, "usage records past 90 days purged");
                }
            }
            Err(e) => tracing::warn!(error = %e, "purging usage records"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = jumps.next() => {}
        }
    }
}

/// Keeps the directory equal to the instances' published hashes: rebuilt after each batch of
/// watch events, so a rotated key stops working as soon as the operator publishes the new hash.
async fn watch_instances(
    client: kube::Client,
    gw: Arc<Gateway>,
    synced: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let api: kube::Api<InferenceInstance> = kube::Api::all(client);
    let (reader, writer) = reflector::store();
    let mut events = reflector(writer, watcher(api, watcher::Config::default()).default_backoff())
        .ready_chunks(4096)
        .boxed();
    while let Some(batch) = events.next().await {
        let mut relist_done = false;
        for e in &batch {
            match e {
                Ok(watcher::Event::InitDone) => relist_done = true,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "watching instances"),
            }
        }
        let state = reader.state();
        let directory = Directory::build(state.iter().map(|i| i.as_ref()));
        gw.metrics.instances.set(directory.len() as i64);
        *gw.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(directory);
        gw.directory_version.send_modify(|v| *v += 1);
        let uids: std::collections::HashSet<String> =
            state.iter().filter_map(|i| kube::ResourceExt::uid(i.as_ref())).collect();
        gw.activity.retain(|uid| uids.contains(uid));
        for deleting in state.iter().filter(|i| i.metadata.deletion_timestamp.is_some()) {
            if let Some(route) = directory::Route::of(deleting) {
                gw.activity.last_word(&route);
            }
        }
        if relist_done {
            synced.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    anyhow::bail!("the instance watch ended")
}

/// The peer address of a request (set by [`tls::serve`] for every connection).
pub type Peer = ConnectInfo<SocketAddr>;
