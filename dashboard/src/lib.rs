//! `alcove dashboard`: the customers' web app. Server-rendered pages (maud), htmx for the live
//! parts, nothing loaded from elsewhere. Codes and sessions take "now" as an argument (the
//! server passes the one injected clock), so their tests move time instead of waiting.
//!
//! - [`random`]: secrets from the operating system's secure source.
//! - [`money`]: amounts in a currency's minor units, as a reader's language writes them.
//! - [`store`]: codes, sessions and limit counts, shared by replicas (SQLite or PostgreSQL).
//! - [`args`]: the settings and the model catalogue.
//! - [`codes`]: sign-in by emailed one-time code: issued, checked, limited.
//! - [`session`]: session tokens, 30-day idle expiry, the cookie, and CSRF tokens.
//! - [`views`]: the pages, pure functions of what they show.
//! - [`forms`]: forms → API objects, with errors per field.
//! - [`account`]: what deleting an account means: who keeps it (GitOps), when data goes.
//! - [`signup`]: self sign-up's settings and the Tenant a new account gets.
//! - [`mail`]: the code's message, sent over SMTP.
//! - [`mailsink`]: a loopback SMTP server that keeps messages as files, for `alcove up`.
//! - [`cluster`]: the Tenant cache and the impersonating client (RBAC decides, not us).
//! - [`gateway`]: the chat playground's calls, through the customers' endpoint with the key.
//! - [`billing`]: top-ups by card through Stripe (the card never reaches us) and the history.
//! - [`export`]: "Export your data", a tar archive streamed as it is read.
//! - [`notify`]: mail to owners when a tenant's credit or existence changes, once per change.
//! - [`server`]: sessions, CSRF and origin checks, one handler per page or action.
//!
//! Layers, bottom up: random, money, args, store → codes, session, views → forms, account, signup →
//! mail, mailsink, cluster, gateway, billing, export, notify → server → this.

pub mod account;
pub mod args;
pub mod billing;
pub mod cluster;
pub mod codes;
pub mod export;
pub mod forms;
pub mod gateway;
pub mod mail;
pub mod mailsink;
pub mod money;
pub mod notify;
pub mod random;
pub mod server;
pub mod session;
pub mod signup;
pub mod store;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::header;
use axum::routing::{get, post};

pub use args::DashboardArgs;
use server::App;

/// A started dashboard: where it listens.
pub struct Started {
    pub addr: SocketAddr,
    pub url: String,
}

/// Runs the dashboard until the process ends.
pub async fn run(args: DashboardArgs, client: kube::Client) -> anyhow::Result<()> {
    #[cfg(feature = "test-hooks")]
    let clock: Arc<dyn alcove_clock::Clock> = match &args.clock_file {
        Some(p) => Arc::new(alcove_clock::FileClock::new(p.clone())),
        None => Arc::new(alcove_clock::SystemClock),
    };
    #[cfg(not(feature = "test-hooks"))]
    let clock: Arc<dyn alcove_clock::Clock> = Arc::new(alcove_clock::SystemClock);
    let (_started, serving) = start(args, client, clock).await?;
    serving.await
}

fn read_key(args: &DashboardArgs) -> anyhow::Result<[u8; 32]> {
    use sha2::Digest;
    match &args.key_file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let trimmed = bytes.trim_ascii();
            anyhow::ensure!(
                trimmed.len() >= 32,
                "{}: the dashboard key must hold at least 32 bytes",
                path.display()
            );
            Ok(sha2::Sha256::digest(trimmed).into())
        }
        None => {
            tracing::warn!(
                "no --key-file: a random key is used, so sessions and codes end when this process does and cannot be shared with other replicas"
            );
            Ok(random::bytes())
        }
    }
}

/// Binds the listener and starts watching Tenants; the future serves until an error.
pub async fn start(
    mut args: DashboardArgs,
    client: kube::Client,
    clock: Arc<dyn alcove_clock::Clock>,
) -> anyhow::Result<(Started, impl std::future::Future<Output = anyhow::Result<()>>)> {
    let key = read_key(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if args.public_url.is_empty() {
        args.public_url = format!("http://{addr}");
    }
    let mailer = Arc::new(mail::Mailer::new(&args.smtp, &args.mail_from)?);
    let store = store::Store::open(&args.store).await?;
    let (cluster, watching) = cluster::Cluster::new(client);
    let billing = match (&args.stripe_api_key, &args.stripe_publishable_key) {
        (Some(key), Some(pk)) => {
            let origins = [args.stripe_js_url.as_str(), args.stripe_api_base.as_str()]
                .map(server::origin_of)
                .into_iter()
                .fold(Vec::new(), |mut all, o| {
                    if !all.contains(&o) {
                        all.push(o);
                    }
                    all
                });
            Some(Arc::new(
                billing::Billing::new(
                    &key.0,
                    &args.stripe_api_base,
                    pk.clone(),
                    args.stripe_js_url.clone(),
                    origins,
                )
                .map_err(|e| anyhow::anyhow!("the Stripe client: {e}"))?,
            ))
        }
        (Some(_), None) => anyhow::bail!(
            "--stripe-api-key needs --stripe-publishable-key: the page's Stripe.js identifies the account with it"
        ),
        _ => None,
    };
    // Separate keys for code hashes and CSRF tokens, both from the one secret.
    let derive = |label: &[u8]| -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::new().chain_update(key).chain_update(label).finalize().into()
    };
    let signup = match (&args.signup_tier, &args.signup_region) {
        (Some(tier), Some(region)) => Some(
            signup::Signup::new(
                tier,
                region,
                args.signup_currency.as_deref(),
                args.signups_per_hour,
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        ),
        _ => None,
    };
    let usage = match &args.usage_store {
        Some(dsn) => Some(alcove_gateway::store::Store::open(dsn).await?),
        None => None,
    };
    let app = Arc::new(App {
        cluster,
        codes: codes::Codes::new(derive(b"codes"), store.clone()),
        sessions: session::Sessions::new(derive(b"csrf"), store.clone()),
        store: store.clone(),
        billing,
        usage,
        signup,
        mailer,
        clock,
        catalogue: args.models.clone(),
        gateway_url: args.gateway_url.clone(),
        origin: server::origin_of(&args.public_url),
        secure: args.public_url.starts_with("https://"),
        trusted_proxies: args.trusted_proxies.clone(),
        embedding_model: args.embedding_model.clone(),
        gateway: gateway::GatewayClient::new(
            args.gateway_internal_url.as_deref().unwrap_or(&args.gateway_url),
            args.gateway_ca.as_deref(),
        )?,
    });
    let ready = app.cluster.clone();
    let notifying = notify::run(
        app.cluster.clone(),
        store.clone(),
        app.mailer.clone(),
        app.clock.clone(),
        args.public_url.clone(),
    );
    let purging = purge(store, app.clock.clone());
    let router = Router::new()
        .route("/", get(server::overview))
        .route("/signin", get(server::sign_in_page).post(server::request_code))
        .route("/signin/code", post(server::enter_code))
        .route("/signup", get(server::signup_page).post(server::signup_request))
        .route("/signup/code", post(server::signup_create))
        .route("/signout", post(server::sign_out))
        .route("/t/{tenant}", get(server::instances))
        .route("/t/{tenant}/rows", get(server::instance_rows))
        .route("/t/{tenant}/new/prompt", post(server::write_prompt))
        .route("/t/{tenant}/account", get(server::account_page).post(server::rectify))
        .route("/t/{tenant}/new", get(server::new_instance_page).post(server::create_instance))
        .route("/t/{tenant}/i/{name}", get(server::instance_page))
        .route("/t/{tenant}/i/{name}/status", get(server::instance_status))
        .route("/t/{tenant}/i/{name}/key", post(server::show_key))
        .route("/t/{tenant}/i/{name}/keyblock", get(server::key_block))
        .route("/t/{tenant}/i/{name}/rotate", post(server::rotate_key))
        .route("/t/{tenant}/i/{name}/state", post(server::set_state))
        .route("/t/{tenant}/i/{name}/destroy", get(server::destroy_page).post(server::destroy))
        .route("/t/{tenant}/i/{name}/destroy/code", post(server::destroy_code))
        .route("/t/{tenant}/i/{name}/kb", post(server::attach))
        .route("/t/{tenant}/data", get(server::data_page))
        .route("/t/{tenant}/export.tar", get(server::export))
        .route("/t/{tenant}/delete", get(server::delete_account_page).post(server::delete_account))
        .route("/t/{tenant}/delete/code", post(server::delete_account_code))
        .route("/t/{tenant}/usage", get(server::usage_page))
        .route("/t/{tenant}/usage.csv", get(server::usage_csv))
        .route("/t/{tenant}/billing", get(server::billing_page))
        .route("/t/{tenant}/billing/balance", get(server::balance_block))
        .route("/t/{tenant}/billing/pay", post(server::pay))
        .route("/t/{tenant}/billing/receipts/{intent}", get(server::receipt))
        .route("/t/{tenant}/kb", get(server::kb_list).post(server::kb_create))
        .route("/t/{tenant}/kb/{name}", get(server::kb_page))
        .route("/t/{tenant}/kb/{name}/status", get(server::kb_status))
        .route("/t/{tenant}/kb/{name}/upload", post(server::kb_upload))
        .route("/t/{tenant}/kb/{name}/remove", post(server::kb_remove))
        .route("/t/{tenant}/i/{name}/chat", get(server::chat_page).post(server::chat_send))
        .route("/t/{tenant}/i/{name}/conversations", get(server::conversation_list))
        .route(
            "/t/{tenant}/i/{name}/c/{id}/delete",
            get(server::delete_conversation_page).post(server::delete_conversation),
        )
        .route("/t/{tenant}/i/{name}/c/{id}/delete/code", post(server::delete_conversation_code))
        .route(
            "/assets/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], views::STYLE) }),
        )
        .route(
            "/assets/htmx.min.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], views::HTMX) }),
        )
        .route(
            "/assets/dashboard.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], views::SCRIPT) }),
        )
        // Browsers ask for it on every site; there is none.
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match tokio::time::timeout(std::time::Duration::from_millis(100), ready.ready())
                        .await
                    {
                        Ok(()) => (axum::http::StatusCode::OK, "ready"),
                        Err(_) => {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "tenants not listed yet")
                        }
                    }
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            server::MAX_FORM_BYTES + crate::forms::MAX_DOCUMENT,
        ))
        .layer(axum::middleware::from_fn(server::only_plain_paths))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app);
    let started = Started { addr, url: args.public_url.clone() };
    tracing::info!(addr = %addr, url = %args.public_url, "dashboard listening");
    let serving = async move {
        let server = async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .context("dashboard server")
        };
        tokio::select! {
            r = server => r,
            r = watching => r,
            () = purging => Ok(()),
            () = notifying => Ok(()),
        }
    };
    Ok((started, serving))
}

/// Deletes codes, sessions and counts past their use, every ten minutes.
async fn purge(store: store::Store, clock: Arc<dyn alcove_clock::Clock>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let now = clock.now().as_millisecond();
        let (codes, idle, hour) =
            (codes::VALID_FOR.as_millis() as i64, session::IDLE.as_millis() as i64, 3_600_000);
        // A top-up form's claim outlives any retry of it.
        let day = 86_400_000;
        if let Err(e) = store.purge(now - codes, now - idle, now - hour, now - day).await {
            tracing::warn!(error = %e, "purging the dashboard store");
        }
    }
}

/// Every page: no framing by other sites, no sniffing, scripts and styles from us only.
/// (The billing page sets its own policy, which admits Stripe.js.)
async fn security_headers(mut r: axum::response::Response) -> axum::response::Response {
    let h = r.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            ),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("same-origin"));
    r
}
