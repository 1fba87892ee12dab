//! The Alcove operator. Controllers are thin loops over pure builders (each controller's
//! `builders` module); the shared pieces live here once: `apply` (server-side apply, skipped when
//! nothing changed), `status` (the status writer), `clock`, `context` (client, caches, metrics,
//! events), `error`.

pub mod apply;
pub mod backoff;
pub mod billing;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controller;
pub mod error;
pub mod events;
pub mod hash;
pub mod http;
pub mod instance;
pub mod knowledgebase;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod objects;
pub mod retention;
pub mod shard;
pub mod status;
pub mod tenant;
#[cfg(feature = "dev")]
pub mod up;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;

use crate::config::{Config, OperatorArgs};
use crate::context::{Caches, Context};
use crate::metrics::Metrics;
use alcove_clock::{Clock, SystemClock};

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn identity(args: &OperatorArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "alcove".into());
        format!("{host}-{}", std::process::id())
    })
}

/// A client from `kubeconfig`, or else from `KUBECONFIG`, `~/.kube/config` or the in-cluster
/// service account.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(kubeconfig).await?)?)
}

/// The configuration [`kube_client`] makes its client from.
pub async fn kube_config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("no Kubernetes configuration (kubeconfig or in-cluster): {e}")
        })?,
    })
}

/// `alcove gateway`: the customers' OpenAI endpoint, until SIGTERM.
pub async fn run_gateway(
    args: alcove_gateway::GatewayArgs,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let config = kube_config(kubeconfig).await?;
    tokio::select! {
        r = alcove_gateway::run(args, config) => r,
        () = shutdown_signal() => Ok(()),
    }
}

/// `alcove dashboard`: the customers' web app until SIGTERM.
pub async fn run_dashboard(
    args: alcove_dashboard::DashboardArgs,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let client = kube_client(kubeconfig).await?;
    tokio::select! {
        r = alcove_dashboard::run(args, client) => r,
        () = shutdown_signal() => Ok(()),
    }
}

/// `alcove operator`: serves HTTP, waits for leadership, runs the controllers until SIGTERM.
pub async fn run_operator(args: OperatorArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
        .shared()
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    #[cfg(feature = "test-hooks")]
    let clock: Arc<dyn Clock> = match &args.clock_file {
        Some(p) => Arc::new(alcove_clock::FileClock::new(p.clone())),
        None => Arc::new(SystemClock),
    };
    #[cfg(not(feature = "test-hooks"))]
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let identity = identity(&args);
    let billing = Arc::new(billing::runtime::Billing::new(&args, &config)?);
    if billing.stripe.is_none() {
        tracing::warn!(
            "no Stripe API key: billing is disabled (each Tenant's Billing condition says so)"
        );
    }
    // Every replica takes webhook deliveries: the ledger's compare-and-swap makes that safe.
    let webhook = Arc::new(billing::webhook::WebhookState {
        billing: billing.clone(),
        client: client.clone(),
        namespace: config.namespace.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        recorder: context::recorder(&client, &identity),
    });
    let state = http::HttpState { metrics: metrics.clone(), ready: ready.clone() };
    let (addr, http_task) =
        http::serve(args.http_addr, http::router(state, webhook), stopped.clone()).await?;
    tracing::info!(%addr, %identity, namespace = %config.namespace, "alcove operator serving /metrics, /healthz, /readyz, /webhooks/stripe");

    let elector = leader::Elector::new(client.clone(), &config.namespace, &identity);
    // Sharded, every replica runs the controllers; the shard Leases decide who reconciles what.
    let leader_election = args.leader_election && args.shards == 1;
    let shards = Arc::new(shard::Shards::new(args.shards));
    if leader_election {
        ready.store(true, Ordering::SeqCst);
        tokio::select! {
            _ = elector.acquire() => {}
            _ = stopped.clone() => {
                http_task.await.ok();
                return Ok(());
            }
        }
        tracing::info!(%identity, "became leader");
    }
    if !shards.sharded() {
        metrics.leader.set(1);
    }

    let (caches, handles, feeders) = Caches::new(&client);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            config,
            clock,
            metrics.clone(),
            caches.clone(),
            &identity,
            billing,
        )
        .with_shards(shards.clone()),
    );
    // Controllers subscribe to the caches' change feeds before the caches start filling.
    let controllers = futures::future::join_all(vec![
        tenant::controller(ctx.clone(), &handles, stopped.clone()).boxed(),
        instance::controller(ctx.clone(), &handles, stopped.clone()).boxed(),
        knowledgebase::controller(ctx.clone(), &handles, stopped.clone()).boxed(),
        retention::controller(ctx.clone(), &handles, stopped.clone()).boxed(),
    ]);
    for f in feeders {
        tokio::spawn(f);
    }
    {
        let ready = ready.clone();
        tokio::spawn(async move {
            ready.store(false, Ordering::SeqCst);
            while tokio::time::timeout(std::time::Duration::from_secs(5), caches.ready())
                .await
                .is_err()
            {
                tracing::warn!(waiting = ?caches.not_ready(), "caches not synced yet");
            }
            ready.store(true, Ordering::SeqCst);
            tracing::info!("caches synced; reconciling");
        });
    }
    {
        // Erasures interrupted between their deletion and their receipt (an operator killed
        // there) get the receipt from here, and a gone instance's usage ConfigMap written after
        // its destroy goes: at start, and every half minute.
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.caches.ready().await;
            loop {
                if let Err(e) = retention::finish_pending(&ctx).await {
                    tracing::warn!(error = %e, "could not finish interrupted erasures; trying again");
                }
                if let Err(e) = instance::sweep_usage(&ctx).await {
                    tracing::warn!(error = %e, "could not sweep usage ConfigMaps; trying again");
                }
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
        });
    }
    // The shard Leases are renewed until the controllers have finished their last reconciles.
    let (controllers_done, done) = tokio::sync::oneshot::channel::<()>();
    let sharding = shards.sharded().then(|| {
        tokio::spawn(shard::run(
            client.clone(),
            ctx.config.namespace.clone(),
            identity.clone(),
            shards.clone(),
            metrics.clone(),
            async move {
                let _ = done.await;
            },
        ))
    });
    let lost = async {
        if leader_election {
            elector.hold().await;
            true
        } else {
            futures::future::pending::<bool>().await
        }
    };
    tokio::select! {
        _ = controllers => {}
        lost = lost => {
            if lost {
                tracing::error!("lost the leader Lease; exiting so that a fresh start can compete again");
                std::process::exit(1);
            }
        }
    }
    if leader_election {
        elector.release().await;
    }
    if let Some(task) = sharding {
        // The controllers stopped: hand every shard back so that the others take them now.
        let _ = controllers_done.send(());
        task.await.ok();
    }
    metrics.leader.set(0);
    http_task.await.ok();
    tracing::info!("stopped");
    Ok(())
}
