//! The request path: who is signed in, CSRF and origin checks, and one handler per page or
//! action. Handlers read through [`Cluster::as_user`] only, so every refusal is the API
//! server's; a tenant that is not the user's answers 404, like one that does not exist.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use alcove_clock::Clock;
use alcove_crds::instance::{InferenceInstance, InstanceState};
use alcove_crds::knowledgebase::KnowledgeBase;
use alcove_crds::tenant::Tenant;
use axum::extract::Multipart;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use maud::Markup;
use serde::Deserialize;

use crate::args::CatalogueModel;
use crate::cluster::Cluster;
use crate::codes::{Address, Codes, Refused, Rejected};
use crate::mail::Mailer;
use crate::session::{self, Sessions};
use crate::views::{self, Frame};

/// Largest form accepted, in bytes.
pub const MAX_FORM_BYTES: usize = 256 * 1024;

pub struct App {
    pub cluster: Cluster,
    pub codes: Codes,
    pub sessions: Sessions,
    pub mailer: Arc<Mailer>,
    pub clock: Arc<dyn Clock>,
    pub catalogue: Vec<CatalogueModel>,
    pub gateway_url: String,
    /// `scheme://host[:port]` of the public URL: the only origin state-changing requests may
    /// come from.
    pub origin: String,
    pub secure: bool,
    pub trusted_proxies: Vec<alcove_gateway::server::Cidr>,
    pub gateway: crate::gateway::GatewayClient,
    /// The platform model knowledge bases made here embed with.
    pub embedding_model: String,
    pub store: crate::store::Store,
    /// Top-ups and the billing history, when the platform gave the dashboard a Stripe key.
    pub billing: Option<Arc<crate::billing::Billing>>,
    /// The gateway's usage store, when the platform connected it (the usage page).
    pub usage: Option<alcove_gateway::store::Store>,
    /// Self sign-up, when the platform turned it on.
    pub signup: Option<crate::signup::Signup>,
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin_of(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split('/').next().unwrap_or_default();
            format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
        }
        None => url.to_ascii_lowercase(),
    }
}

// ----- answers -----

/// Everything a handler can answer besides its page: each becomes a page in words with the right
/// status, never a 500 for something a user typed.
#[derive(Debug)]
pub enum Failure {
    /// Not signed in (or the session ended): to the sign-in page.
    SignIn,
    NotFound,
    /// The CSRF token or the origin is wrong.
    Forged,
    /// The API server refused, in its words.
    Refused(StatusCode, String),
    /// The cluster could not be reached or failed.
    Unavailable(String),
    /// The tenant (named) is deleted; its data is erased at the time given, once known.
    Deleted(String, Option<String>),
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Failure {
        match e {
            kube::Error::Api(s) => match s.code {
                404 => Failure::NotFound,
                // The API server's own trouble, not a refusal of what the user asked.
                500.. => Failure::Unavailable(s.message),
                code => Failure::Refused(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
                    s.message,
                ),
            },
            other => Failure::Unavailable(other.to_string()),
        }
    }
}

/// Every name in the dashboard's URLs (a tenant, an instance, a knowledge base, a conversation,
/// a receipt) is spelled with letters, digits, `.`, `_` and `-`. A path with anything else (an
/// encoded CR LF, a space, a slash inside a name) names nothing: it is answered so before the
/// name reaches the cluster, where it could not even be made into a request.
pub fn plain_path(path: &str) -> bool {
    path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
}

/// The router's gate for [`plain_path`].
pub async fn only_plain_paths(req: Request, next: axum::middleware::Next) -> Response {
    if !plain_path(req.uri().path()) {
        return Failure::NotFound.into_response();
    }
    next.run(req).await
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, title, words) = match self {
            Failure::SignIn => return Redirect::to("/signin").into_response(),
            Failure::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it is not yours.".to_string(),
            ),
            Failure::Forged => (
                StatusCode::FORBIDDEN,
                "Refused",
                "This form came from somewhere else or has expired. Reload the page and try again."
                    .to_string(),
            ),
            Failure::Refused(code, words) if code == StatusCode::FORBIDDEN => {
                (code, "Not allowed", format!("Your account may not do that: {words}"))
            }
            Failure::Refused(code, words) => (code, "Refused", words),
            Failure::Deleted(tenant, at) => {
                let frame = Frame { title: "Account deleted", user: None, csrf: None };
                let body = views::account_gone(&tenant, at.as_deref());
                return (StatusCode::GONE, views::page(&frame, body)).into_response();
            }
            Failure::Unavailable(words) => {
                tracing::warn!(error = %words, "the cluster did not answer");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again shortly",
                    "The platform did not answer. Nothing was changed.".to_string(),
                )
            }
        };
        let frame = Frame { title, user: None, csrf: None };
        (status, views::page(&frame, views::message(title, &words))).into_response()
    }
}

type Answer = Result<Response, Failure>;

fn html(status: StatusCode, frame: &Frame, body: Markup) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], views::page(frame, body)).into_response()
}

fn fragment(body: Markup) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// Back to a page after an action (303: the browser GETs it).
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Notices a redirect may ask a page to show: fixed words, never text from the URL.
fn notice_text(key: Option<&str>) -> Option<&'static str> {
    Some(match key? {
        "created" => "Instance created. It turns Ready when its pod serves.",
        "rotated" => "A new API key is being made. The old key stops working as soon as it is.",
        "suspended" => "Suspended: the pod stops and GPU billing with it. Data and key are kept.",
        "resumed" => "Resuming: a pod is starting.",
        "attached" => {
            "Saved. The instance restarts to answer from it; it is Ready again in a moment."
        }
        _ => return None,
    })
}

#[derive(Deserialize, Default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

// ----- the signed-in user -----

/// A request's live session.
pub struct Signed {
    pub email: String,
    pub token: String,
    pub csrf: String,
}

impl Signed {
    fn frame<'a>(&'a self, title: &'a str) -> Frame<'a> {
        Frame { title, user: Some(&self.email), csrf: Some(&self.csrf) }
    }
}

impl FromRequestParts<Arc<App>> for Signed {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::token_in)
            .ok_or(Failure::SignIn)?
            .to_string();
        let s = app
            .sessions
            .resume(&token, app.clock.now())
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?
            .ok_or(Failure::SignIn)?;
        let csrf = app.sessions.csrf(&token);
        Ok(Signed { email: s.email, token, csrf })
    }
}

/// A state-changing request: a live session, a request from our own origin, and the session's
/// CSRF token (form field `csrf` or header `X-CSRF-Token`), then the form itself.
pub struct Posted<T> {
    pub user: Signed,
    pub form: T,
}

#[derive(Deserialize)]
struct CsrfField {
    csrf: Option<String>,
}

impl<T: serde::de::DeserializeOwned + Send> FromRequest<Arc<App>> for Posted<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let user = Signed::from_request_parts(&mut parts, app).await?;
        if !same_origin(&parts.headers, &app.origin) {
            return Err(Failure::Forged);
        }
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
            Failure::Refused(StatusCode::PAYLOAD_TOO_LARGE, "That form is too large.".into())
        })?;
        let presented = match parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
            Some(h) => Some(h.to_string()),
            None => serde_urlencoded::from_bytes::<CsrfField>(&bytes).ok().and_then(|f| f.csrf),
        };
        let ok = presented.is_some_and(|p| app.sessions.csrf_ok(&user.token, &p));
        if !ok {
            return Err(Failure::Forged);
        }
        let form = serde_urlencoded::from_bytes::<T>(&bytes).map_err(|e| {
            Failure::Refused(StatusCode::BAD_REQUEST, format!("The form could not be read: {e}"))
        })?;
        Ok(Posted { user, form })
    }
}

/// Whether a request comes from our own pages: `Origin` (or, without it, `Referer`) must be ours
/// when present. Browsers send `Origin` on every cross-site POST.
fn same_origin(headers: &HeaderMap, ours: &str) -> bool {
    let of = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    match (of(header::ORIGIN), of(header::REFERER)) {
        (Some(o), _) => origin_of(o) == ours,
        (None, Some(r)) => origin_of(r) == ours,
        (None, None) => true,
    }
}

#[derive(Deserialize)]
pub struct Empty {}

// ----- sign-in -----

pub async fn sign_in_page(State(app): State<Arc<App>>, parts: http::request::Parts) -> Response {
    if Signed::from_request_parts(&mut parts.clone(), &app).await.is_ok() {
        return see_other("/");
    }
    html(
        StatusCode::OK,
        &Frame { title: "Sign in", user: None, csrf: None },
        views::sign_in("", None, app.signup.is_some()),
    )
}

#[derive(Deserialize)]
pub struct EmailForm {
    #[serde(default)]
    email: String,
}

fn sign_in_frame() -> Frame<'static> {
    Frame { title: "Sign in", user: None, csrf: None }
}

/// Why no code was sent: too many were asked for.
fn too_many_codes(retry_after: jiff::SignedDuration) -> String {
    format!("Too many codes were asked for. Try again in {}.", wait_words(retry_after))
}

fn wait_words(d: jiff::SignedDuration) -> String {
    let s = d.as_secs().max(1);
    if s < 90 { format!("{s} seconds") } else { format!("{} minutes", (s + 59) / 60) }
}

/// Asks for a code. The answer is the same whether or not the address has an account: a code is
/// issued (and counted) for every well-formed address and mailed only to known ones, in the
/// background, so neither the words nor the time tell.
pub async fn request_code(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<EmailForm>,
) -> Response {
    if !same_origin(&headers, &app.origin) {
        return Failure::Forged.into_response();
    }
    let address = match Address::parse(&form.email) {
        Ok(a) => a,
        Err(e) => {
            return html(
                StatusCode::BAD_REQUEST,
                &sign_in_frame(),
                views::sign_in(&form.email, Some(e), app.signup.is_some()),
            );
        }
    };
    let issued = app.codes.issue(&address, client_ip(&app, peer, &headers), app.clock.now()).await;
    let note = match issued {
        Ok(code) => {
            if app.cluster.is_known(address.as_str()) {
                send_in_background(&app, address.clone(), code);
            }
            None
        }
        Err(Refused::TooSoon { retry_after }) => Some(format!(
            "A code was sent less than a minute ago. You can ask for another in {}.",
            wait_words(retry_after)
        )),
        Err(Refused::TooMany { retry_after }) => {
            let e = too_many_codes(retry_after);
            return html(
                StatusCode::TOO_MANY_REQUESTS,
                &sign_in_frame(),
                views::sign_in(address.as_str(), Some(&e), app.signup.is_some()),
            );
        }
        Err(Refused::Unavailable) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                &sign_in_frame(),
                views::sign_in(address.as_str(), Some(UNAVAILABLE), app.signup.is_some()),
            );
        }
    };
    html(
        StatusCode::OK,
        &sign_in_frame(),
        views::enter_code(address.as_str(), None, note.as_deref()),
    )
}

fn client_ip(app: &App, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    alcove_gateway::server::client_address(peer.ip().to_canonical(), headers, &app.trusted_proxies)
}

/// Sends a mail (`what`, in the log) without making the page wait for the relay.
fn mail_in_background<F>(what: &'static str, send: F)
where
    F: std::future::Future<Output = Result<(), crate::mail::MailError>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = send.await {
            // Neither the code nor the address: the relay's words only.
            tracing::warn!(error = %e, "{what} could not be mailed");
        }
    });
}

fn send_in_background(app: &Arc<App>, to: Address, code: String) {
    let app = app.clone();
    mail_in_background("a sign-in code", async move { app.mailer.send_code(&to, &code).await });
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    code: String,
}

const UNAVAILABLE: &str =
    "Signing in is not possible this minute. Nothing was lost; try again shortly.";

fn rejected_words(r: Rejected) -> String {
    match r {
        Rejected::Unavailable => UNAVAILABLE.into(),
        Rejected::NoCode => "There is no code waiting for this address. Ask for a new one.".into(),
        Rejected::Expired => "That code has expired. Ask for a new one.".into(),
        Rejected::Wrong { tries_left } => format!(
            "That code is not right. You can try {tries_left} more time{}.",
            if tries_left == 1 { "" } else { "s" }
        ),
        Rejected::Exhausted => {
            "Too many wrong tries: that code no longer works. Ask for a new one.".into()
        }
    }
}

/// Checks the code; a right one starts a new session (a fresh token, whatever cookie came in).
pub async fn enter_code(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CodeForm>,
) -> Response {
    if !same_origin(&headers, &app.origin) {
        return Failure::Forged.into_response();
    }
    let Ok(address) = Address::parse(&form.email) else {
        return see_other("/signin");
    };
    let now = app.clock.now();
    let checked = app.codes.verify(&address, &form.code, now).await;
    match checked {
        // Whoever holds the code owns the address; whether it owns tenants shows on the
        // overview.
        Ok(()) => {
            start_session(&app, &address, now, "/").await.unwrap_or_else(|f| f.into_response())
        }
        Err(rejected) => html(
            StatusCode::BAD_REQUEST,
            &sign_in_frame(),
            views::enter_code(address.as_str(), Some(&rejected_words(rejected)), None),
        ),
    }
}

// ----- self sign-up -----

fn signup_frame() -> Frame<'static> {
    Frame { title: "Create an account", user: None, csrf: None }
}

/// The account name a form gave, or the words for why it is not one.
fn account_name(input: &str) -> Result<String, String> {
    let name = input.split_whitespace().collect::<Vec<_>>().join(" ");
    match name.chars().count() {
        0 => Err("Give the account a name.".into()),
        129.. => Err("Use at most 128 characters.".into()),
        _ => Ok(name),
    }
}

pub async fn signup_page(State(app): State<Arc<App>>) -> Answer {
    app.signup.as_ref().ok_or(Failure::NotFound)?;
    let body = views::signup(&Default::default(), &Default::default(), false, None);
    Ok(html(StatusCode::OK, &signup_frame(), body))
}

/// Mails a code to the new account's address (any well-formed one: proving it is the point),
/// under the same limits as sign-in codes.
pub async fn signup_request(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(v): axum::Form<views::SignupForm>,
) -> Answer {
    app.signup.as_ref().ok_or(Failure::NotFound)?;
    if !same_origin(&headers, &app.origin) {
        return Err(Failure::Forged);
    }
    let page = |errors: &views::FormErrors, sent: bool, note: Option<&str>, status| {
        html(status, &signup_frame(), views::signup(&v, errors, sent, note))
    };
    let mut errors = views::FormErrors::default();
    let address = match Address::parse(&v.email) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.fields.push(("email", e.into()));
            None
        }
    };
    if let Err(e) = account_name(&v.display_name) {
        errors.fields.push(("display_name", e));
    }
    let (Some(address), true) = (address, errors.is_empty()) else {
        return Ok(page(&errors, false, None, StatusCode::BAD_REQUEST));
    };
    let note =
        match app.codes.issue(&address, client_ip(&app, peer, &headers), app.clock.now()).await {
            Ok(code) => {
                let (app, to) = (app.clone(), address.clone());
                mail_in_background("a sign-up code", async move {
                    app.mailer.send_signup_code(&to, &code).await
                });
                None
            }
            Err(Refused::TooSoon { retry_after }) => Some(format!(
                "A code was sent less than a minute ago. You can ask for another in {}.",
                wait_words(retry_after)
            )),
            Err(Refused::TooMany { retry_after }) => {
                errors.fields.push(("email", too_many_codes(retry_after)));
                return Ok(page(&errors, false, None, StatusCode::TOO_MANY_REQUESTS));
            }
            Err(Refused::Unavailable) => return Err(Failure::Unavailable("the code store".into())),
        };
    let v = views::SignupForm { email: address.as_str().to_string(), ..v.clone() };
    Ok(html(StatusCode::OK, &signup_frame(), views::signup(&v, &errors, true, note.as_deref())))
}

/// Checks the code, makes the account's Tenant (unless the address already owns one: then it
/// just signs in), and starts a session. New accounts are limited per client and per hour.
pub async fn signup_create(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(v): axum::Form<views::SignupForm>,
) -> Answer {
    let signup = app.signup.as_ref().ok_or(Failure::NotFound)?;
    if !same_origin(&headers, &app.origin) {
        return Err(Failure::Forged);
    }
    let (Ok(address), Ok(display)) = (Address::parse(&v.email), account_name(&v.display_name))
    else {
        return Ok(see_other("/signup"));
    };
    let mut errors = views::FormErrors::default();
    let now = app.clock.now();
    if let Err(r) = app.codes.verify(&address, v.code.trim(), now).await {
        errors.fields.push(("code", rejected_words(r)));
        return Ok(html(
            StatusCode::BAD_REQUEST,
            &signup_frame(),
            views::signup(&v, &errors, true, None),
        ));
    }
    let mut to = "/".to_string();
    if !app.cluster.is_known(address.as_str()) {
        let (day, hour) = (86_400_000, 3_600_000);
        let ms = now.as_millisecond();
        let client = client_ip(&app, peer, &headers).to_string();
        let limits = [
            ("signup-client", client.as_str(), crate::signup::PER_CLIENT_PER_DAY, day),
            ("signup", "all", signup.per_hour, hour),
        ];
        for (scope, subject, max, window) in limits {
            match app.store.take(scope, subject, max, window, ms).await {
                Ok(Ok(())) => {}
                Ok(Err(wait)) => {
                    errors.form = Some(format!(
                        "Too many new accounts were made just now. Try again in {}; your code will be sent again then.",
                        wait_words(jiff::SignedDuration::from_millis(wait))
                    ));
                    let body = views::signup(&v, &errors, false, None);
                    return Ok(html(StatusCode::TOO_MANY_REQUESTS, &signup_frame(), body));
                }
                Err(e) => return Err(Failure::Unavailable(e.to_string())),
            }
        }
        let suffix = crate::random::hex(&crate::random::bytes()[..3]);
        let name = crate::signup::tenant_name(&display, &suffix);
        let tenant: Tenant =
            serde_json::from_value(signup.tenant(&name, &display, address.as_str()))
                .map_err(|e| Failure::Unavailable(e.to_string()))?;
        let ready = app.cluster.create_tenant(&tenant).await?;
        tracing::info!(tenant = %name, "account made by self sign-up");
        // Not ready yet: the overview lists it with its phase.
        if ready {
            to = format!("/t/{name}");
        }
    }
    start_session(&app, &address, now, &to).await
}

/// A new session for `address` (a fresh token, whatever cookie came in), and on to `to`.
async fn start_session(
    app: &App,
    address: &Address,
    now: jiff::Timestamp,
    to: &str,
) -> Result<Response, Failure> {
    let token = app
        .sessions
        .start(address.as_str(), now)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    let mut r = see_other(to);
    if let Ok(v) = HeaderValue::from_str(&session::cookie(&token, app.secure)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    tracing::info!("signed in");
    Ok(r)
}

pub async fn sign_out(State(app): State<Arc<App>>, p: Posted<Empty>) -> Response {
    if let Err(e) = app.sessions.end(&p.user.token).await {
        return Failure::Unavailable(e.to_string()).into_response();
    }
    let mut r = see_other("/signin");
    if let Ok(v) = HeaderValue::from_str(&session::cleared(app.secure)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ----- tenants and instances -----

pub async fn overview(State(app): State<Arc<App>>, user: Signed, headers: HeaderMap) -> Response {
    let locale = locale_of(&headers);
    let rows: Vec<views::TenantRow> = app
        .cluster
        .tenants_of(&user.email)
        .iter()
        .map(|t| {
            let status = t.status.clone().unwrap_or_default();
            views::TenantRow {
                name: t.name_any(),
                display_name: t.spec.display_name.clone(),
                tier: format!("{:?}", t.spec.tier).to_lowercase(),
                region: t.spec.region.clone(),
                phase: status.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into()),
                credit: balance_of(t, locale).balance,
                instances: status.instances,
                gpus: status.gpus_in_use,
                deleted: t.metadata.deletion_timestamp.as_ref().map(|_| erase_after(t)),
            }
        })
        .collect();
    html(StatusCode::OK, &user.frame("Your tenants"), views::overview(&rows))
}

/// The sensitive categories the tenant declares without a consent record, in words.
fn consent_missing(t: &Tenant) -> Vec<&'static str> {
    alcove_crds::tenant::missing_consents(&t.spec).into_iter().map(|c| c.words()).collect()
}

/// The tenant if it is this user's, else 404 (the same for one that does not exist); once it is
/// deleted, 410 with where to follow the erasure.
fn tenant(app: &App, user: &Signed, name: &str) -> Result<Arc<Tenant>, Failure> {
    let t = tenant_or_deleted(app, user, name)?;
    match t.metadata.deletion_timestamp {
        Some(_) => Err(Failure::Deleted(name.to_string(), erase_after(&t))),
        None => Ok(t),
    }
}

/// The tenant if it is this user's, also while it is being deleted: its data page, its export
/// and its deletion pages stay until the erasure.
fn tenant_or_deleted(app: &App, user: &Signed, name: &str) -> Result<Arc<Tenant>, Failure> {
    app.cluster.tenant_of(&user.email, name).ok_or(Failure::NotFound)
}

/// When a deleted tenant's remaining data is erased (`2027-01-01 18:44 UTC`), once the operator
/// has set it.
fn erase_after(t: &Tenant) -> Option<String> {
    let at = t.status.as_ref()?.erase_after.as_deref()?;
    Some(match at.parse::<jiff::Timestamp>() {
        Ok(at) => views::utc_minute(at),
        Err(_) => at.to_string(),
    })
}

fn instances_api(app: &App, user: &Signed, tenant: &str) -> Api<InferenceInstance> {
    Api::namespaced(
        app.cluster.as_user(&user.email, tenant),
        &alcove_crds::tenant::namespace_of(tenant),
    )
}

fn phase_of(i: &InferenceInstance) -> (String, String) {
    let s = i.status.as_ref();
    let phase = match (i.metadata.deletion_timestamp.is_some(), s.and_then(|s| s.phase)) {
        (true, _) => "Terminating".to_string(),
        (false, Some(p)) => format!("{p:?}"),
        (false, None) => "Pending".to_string(),
    };
    (phase, s.and_then(|s| s.message.clone()).unwrap_or_default())
}

fn model_words(i: &InferenceInstance) -> String {
    let m = &i.spec.model;
    let source = m
        .source
        .platform
        .clone()
        .or_else(|| m.source.uri.clone())
        .or_else(|| m.source.pvc.as_ref().map(|p| format!("volume {}", p.claim_name)))
        .unwrap_or_default();
    format!("{source} ({})", m.format.as_str())
}

fn state_words(s: InstanceState) -> String {
    match s {
        InstanceState::Running => "Running".into(),
        InstanceState::Suspended => "Suspended".into(),
    }
}

async fn rows(app: &App, user: &Signed, tenant: &str) -> Result<Vec<views::InstanceRow>, Failure> {
    let list = instances_api(app, user, tenant).list(&ListParams::default()).await?;
    let mut rows: Vec<_> = list
        .items
        .iter()
        .map(|i| {
            let (phase, message) = phase_of(i);
            views::InstanceRow {
                name: i.name_any(),
                model: model_words(i),
                gpus: i.spec.gpu.count,
                state: state_words(i.spec.state),
                phase,
                message,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

pub async fn instances(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Answer {
    let tn = tenant(&app, &user, &t)?;
    let rows = rows(&app, &user, &t).await?;
    let missing = consent_missing(&tn);
    let body = views::instances(
        &t,
        &tn.spec.display_name,
        &rows,
        notice_text(q.notice.as_deref()),
        &missing,
    );
    Ok(html(StatusCode::OK, &user.frame("Instances"), body))
}

pub async fn instance_rows(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
) -> Answer {
    tenant(&app, &user, &t)?;
    Ok(fragment(views::instance_rows(&t, &rows(&app, &user, &t).await?)))
}

async fn create_choices(
    app: &App,
    user: &Signed,
    tn: &Tenant,
) -> Result<(Vec<String>, Vec<String>, Vec<String>), Failure> {
    let models = app.catalogue.iter().map(|m| m.name.clone()).collect();
    let placement = tn.status.as_ref().and_then(|s| s.placement.clone()).unwrap_or_default();
    let gpus = app.cluster.gpu_products(&placement).await?;
    let kbs: Api<alcove_crds::knowledgebase::KnowledgeBase> = Api::namespaced(
        app.cluster.as_user(&user.email, &tn.name_any()),
        &alcove_crds::tenant::namespace_of(&tn.name_any()),
    );
    let kbs = kbs.list(&ListParams::default()).await?.items.iter().map(|k| k.name_any()).collect();
    Ok((models, gpus, kbs))
}

pub async fn new_instance_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
) -> Answer {
    let tn = tenant(&app, &user, &t)?;
    let (models, gpus, kbs) = create_choices(&app, &user, &tn).await?;
    let v = views::NewInstance {
        model: models.first().cloned().unwrap_or_default(),
        gpu_count: "1".into(),
        ..Default::default()
    };
    let choices =
        views::CreateChoices { models: &models, gpu_products: &gpus, knowledge_bases: &kbs };
    let body = views::new_instance(&t, &user.csrf, &v, &views::FormErrors::default(), &choices);
    Ok(html(StatusCode::OK, &user.frame("New instance"), body))
}

/// Which form field an API server refusal is about, from the field path it names.
fn field_of(message: &str) -> Option<&'static str> {
    [
        ("metadata.name", "name"),
        ("spec.gpu.count", "gpu_count"),
        ("spec.gpu.product", "gpu_product"),
        ("spec.systemPrompt", "system_prompt"),
        ("spec.limits.maxTokens", "max_tokens"),
        ("spec.limits.contextLength", "context_length"),
        ("spec.knowledgeBases", "knowledge_base"),
    ]
    .into_iter()
    .find(|(path, _)| message.contains(path))
    .map(|(_, f)| f)
}

/// Writes the system prompt from the onboarding answers (htmx swaps the block; 200 with the
/// errors beside their fields, as htmx swaps only successful answers).
pub async fn write_prompt(
    State(app): State<Arc<App>>,
    Path(t): Path<String>,
    p: Posted<views::NewInstance>,
) -> Answer {
    tenant(&app, &p.user, &t)?;
    let mut v = p.form;
    let errors = match crate::forms::system_prompt_from(&v) {
        Ok(prompt) => {
            v.system_prompt = prompt;
            views::FormErrors::default()
        }
        Err(errors) => errors,
    };
    Ok(fragment(views::prompt_writer(&t, &v, &errors)))
}

pub async fn create_instance(
    State(app): State<Arc<App>>,
    Path(t): Path<String>,
    p: Posted<views::NewInstance>,
) -> Answer {
    let user = &p.user;
    let tn = tenant(&app, user, &t)?;
    let (models, gpus, kbs) = create_choices(&app, user, &tn).await?;
    let ns = alcove_crds::tenant::namespace_of(&t);
    let refused = |errors: views::FormErrors| {
        let choices =
            views::CreateChoices { models: &models, gpu_products: &gpus, knowledge_bases: &kbs };
        html(
            StatusCode::UNPROCESSABLE_ENTITY,
            &user.frame("New instance"),
            views::new_instance(&t, &user.csrf, &p.form, &errors, &choices),
        )
    };
    let object = match crate::forms::instance_from(&p.form, &ns, &app.catalogue, &gpus, &kbs) {
        Ok(o) => o,
        Err(errors) => return Ok(refused(errors)),
    };
    let instance: InferenceInstance = serde_json::from_value(object)
        .map_err(|e| Failure::Refused(StatusCode::BAD_REQUEST, e.to_string()))?;
    match instances_api(&app, user, &t).create(&PostParams::default(), &instance).await {
        Ok(created) => {
            tracing::info!(tenant = %t, instance = %created.name_any(), "instance created from the dashboard");
            Ok(see_other(&format!("/t/{t}/i/{}?notice=created", created.name_any())))
        }
        // The API server's own words, beside the field they are about when it names one.
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 409 | 422) => {
            let mut errors = views::FormErrors::default();
            let words = if s.code == 409 {
                "An instance of that name exists already. Pick another name.".to_string()
            } else {
                s.message.clone()
            };
            match field_of(&s.message).or((s.code == 409).then_some("name")) {
                Some(f) => errors.fields.push((f, words)),
                None => errors.form = Some(words),
            }
            Ok(refused(errors))
        }
        Err(e) => Err(e.into()),
    }
}

async fn detail(
    app: &App,
    user: &Signed,
    t: &str,
    name: &str,
) -> Result<views::InstanceDetail, Failure> {
    let client = app.cluster.as_user(&user.email, t);
    let ns = alcove_crds::tenant::namespace_of(t);
    let i = Api::<InferenceInstance>::namespaced(client.clone(), &ns).get(name).await?;
    let (phase, message) = phase_of(&i);
    let status = i.status.clone().unwrap_or_default();
    let mut activity: Vec<views::Activity> = status
        .conditions
        .iter()
        .map(|c| views::Activity {
            when: c.last_transition_time.0.to_string(),
            what: format!("{} is {}", c.type_, c.status),
            detail: if c.message.is_empty() { c.reason.clone() } else { c.message.clone() },
            warning: c.status == "False" && c.type_ == "Ready" && phase != "Suspended",
        })
        .collect();
    let events = Api::<Event>::namespaced(client, &ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    activity.extend(events.iter().map(|e| {
        views::Activity {
            when: e
                .last_timestamp
                .as_ref()
                .or(e.first_timestamp.as_ref())
                .map(|t| t.0.to_string())
                .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
                .unwrap_or_default(),
            what: e.reason.clone().unwrap_or_default(),
            detail: e.message.clone().unwrap_or_default(),
            warning: e.type_.as_deref() == Some("Warning"),
        }
    }));
    activity.sort_by(|a, b| b.when.cmp(&a.when));
    let served_name = i.spec.model.served_name.clone().unwrap_or_else(|| i.name_any());
    Ok(views::InstanceDetail {
        tenant: t.to_string(),
        name: i.name_any(),
        model: model_words(&i),
        gpus: match &i.spec.gpu.product {
            Some(p) => format!("{} × {p}", i.spec.gpu.count),
            None => i.spec.gpu.count.to_string(),
        },
        state: state_words(i.spec.state),
        phase,
        message,
        endpoint: format!("{}/v1", app.gateway_url.trim_end_matches('/')),
        served_name,
        gpu_time: views::gpu_words(status.gpu_seconds),
        has_key: status.api_key_secret.is_some(),
        activity,
        knowledge_base: i.spec.knowledge_bases.first().map(|k| k.name.clone()).unwrap_or_default(),
        knowledge_bases: kb_api(app, user, t)
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|k| k.name_any()).collect())
            .unwrap_or_default(),
    })
}

pub async fn instance_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
    Query(q): Query<NoticeQuery>,
) -> Answer {
    tenant(&app, &user, &t)?;
    let d = detail(&app, &user, &t, &name).await?;
    let body = views::instance_detail(&d, &user.csrf, notice_text(q.notice.as_deref()));
    Ok(html(StatusCode::OK, &user.frame(&name), body))
}

pub async fn instance_status(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
) -> Answer {
    tenant(&app, &user, &t)?;
    let d = detail(&app, &user, &t, &name).await?;
    Ok(fragment(maud::html! {
        div #status hx-get={"/t/" (t) "/i/" (name) "/status"} hx-trigger="every 3s" hx-swap="outerHTML" aria-live="polite" {
            (views::instance_status(&d))
        }
    }))
}

/// The key block, polled until the key exists.
pub async fn key_block(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
) -> Answer {
    tenant(&app, &user, &t)?;
    let i = instances_api(&app, &user, &t).get(&name).await?;
    let has_key = i.status.as_ref().is_some_and(|s| s.api_key_secret.is_some());
    Ok(fragment(views::key_block(&format!("/t/{t}/i/{name}"), has_key, &user.csrf)))
}

/// An instance's API key, read as the user (the tenant-admin Role may get exactly the
/// instances' key Secrets). Never logged.
async fn read_key(app: &App, user: &Signed, t: &str, name: &str) -> Result<String, Failure> {
    instance_key(app, &user.email, t, name).await
}

/// An instance's API key, read as `email`.
pub(crate) async fn instance_key(
    app: &App,
    email: &str,
    t: &str,
    name: &str,
) -> Result<String, Failure> {
    app.cluster.instance_key(email, t, name).await?.ok_or(Failure::NotFound)
}

/// The API key, shown on request only.
pub async fn show_key(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    headers: HeaderMap,
    p: Posted<Empty>,
) -> Answer {
    let user = &p.user;
    tenant(&app, user, &t)?;
    let key = read_key(&app, user, &t, &name).await?;
    if headers.contains_key("hx-request") {
        return Ok(fragment(views::api_key(&key)));
    }
    let d = detail(&app, user, &t, &name).await?;
    let body =
        maud::html! { (views::instance_detail(&d, &user.csrf, None)) (views::api_key(&key)) };
    Ok(html(StatusCode::OK, &user.frame(&name), body))
}

/// Asks the operator for a new key (the `alcove.dev/rotate-api-key` annotation): the old key
/// stops working as soon as the new one is published.
pub async fn rotate_key(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    p: Posted<Empty>,
) -> Answer {
    tenant(&app, &p.user, &t)?;
    let stamp = app.clock.now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {alcove_crds::ANNOTATION_ROTATE_API_KEY: stamp}}});
    instances_api(&app, &p.user, &t)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(tenant = %t, instance = %name, "API key rotation asked from the dashboard");
    Ok(see_other(&format!("/t/{t}/i/{name}?notice=rotated")))
}

#[derive(Deserialize)]
pub struct StateForm {
    state: String,
}

pub async fn set_state(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    p: Posted<StateForm>,
) -> Answer {
    tenant(&app, &p.user, &t)?;
    let (state, notice) = match p.form.state.as_str() {
        "Running" => ("Running", "resumed"),
        "Suspended" => ("Suspended", "suspended"),
        _ => return Err(Failure::Refused(StatusCode::BAD_REQUEST, "Unknown state.".into())),
    };
    let patch = serde_json::json!({"spec": {"state": state}});
    instances_api(&app, &p.user, &t)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(see_other(&format!("/t/{t}/i/{name}?notice={notice}")))
}

/// Where a confirmation by fresh code stands.
enum Step {
    /// Nothing asked yet: the page explains and offers to mail a code.
    Asked,
    /// A code was mailed, or why not.
    Sent(Result<(), String>),
    /// The code entered was not right, in words.
    Refused(String),
}

fn confirmation(user: &Signed, title: &str, c: &views::Confirm, step: Step) -> Response {
    let (status, sent, error) = match step {
        Step::Asked => (StatusCode::OK, false, None),
        Step::Sent(Ok(())) => (StatusCode::OK, true, None),
        Step::Sent(Err(words)) => (StatusCode::OK, false, Some(words)),
        Step::Refused(words) => (StatusCode::BAD_REQUEST, true, Some(words)),
    };
    let body = views::confirm_with_code(c, &user.csrf, &user.email, sent, error.as_deref());
    html(status, &user.frame(title), body)
}

fn destroy_confirmation(user: &Signed, t: &str, name: &str, step: Step) -> Response {
    let (base, action) = (format!("/t/{t}/i/{name}"), format!("/t/{t}/i/{name}/destroy"));
    let (title, button) = (format!("Destroy {name}?"), format!("Destroy {name}"));
    let c = views::Confirm {
        back: &base,
        action: &action,
        title: &title,
        explanation: views::DESTROY_EXPLAINED,
        button: &button,
        facts: &[],
    };
    confirmation(user, "Destroy", &c, step)
}

pub async fn destroy_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
) -> Answer {
    tenant(&app, &user, &t)?;
    instances_api(&app, &user, &t).get(&name).await?;
    Ok(destroy_confirmation(&user, &t, &name, Step::Asked))
}

/// Mails a fresh code for an action that cannot be undone to the signed-in address: whether it
/// went (a code sent under a minute ago still works), or why not.
async fn fresh_code(
    app: &Arc<App>,
    user: &Signed,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), String> {
    let address = Address::parse(&user.email).map_err(|e| e.to_string())?;
    match app.codes.issue(&address, client_ip(app, peer, headers), app.clock.now()).await {
        Ok(code) => {
            send_in_background(app, address, code);
            Ok(())
        }
        Err(Refused::TooSoon { .. }) => Ok(()),
        Err(Refused::TooMany { retry_after }) => Err(too_many_codes(retry_after)),
        Err(Refused::Unavailable) => Err(UNAVAILABLE.to_string()),
    }
}

/// Checks the fresh code of a confirmation; the words to show when it is not right.
async fn confirmed(app: &App, user: &Signed, code: &str) -> Result<(), String> {
    let address = Address::parse(&user.email).map_err(|e| e.to_string())?;
    app.codes.verify(&address, code, app.clock.now()).await.map_err(rejected_words)
}

pub async fn destroy_code(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((t, name)): Path<(String, String)>,
    headers: HeaderMap,
    p: Posted<Empty>,
) -> Answer {
    let user = &p.user;
    tenant(&app, user, &t)?;
    instances_api(&app, user, &t).get(&name).await?;
    let sent = fresh_code(&app, user, peer, &headers).await;
    Ok(destroy_confirmation(user, &t, &name, Step::Sent(sent)))
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    code: String,
}

/// Destroys the instance after a fresh code; then shows the pod gone and billing stopped.
pub async fn destroy(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    p: Posted<ConfirmForm>,
) -> Answer {
    let user = &p.user;
    tenant(&app, user, &t)?;
    if let Err(words) = confirmed(&app, user, &p.form.code).await {
        return Ok(destroy_confirmation(user, &t, &name, Step::Refused(words)));
    }
    let api = instances_api(&app, user, &t);
    api.delete(&name, &DeleteParams::foreground()).await?;
    tracing::info!(tenant = %t, instance = %name, "instance destroyed from the dashboard");
    // The operator deletes the pod at once; show it gone when it is (a few seconds at most).
    let pods: Api<Pod> = Api::namespaced(
        app.cluster.as_user(&user.email, &t),
        &alcove_crds::tenant::namespace_of(&t),
    );
    let selector = format!("{}={name}", alcove_crds::LABEL_INSTANCE);
    let mut pod_gone = false;
    for _ in 0..40 {
        match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(l) if l.items.is_empty() => {
                pod_gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let billing = format!(
        "GPU billing stopped at {} (UTC); the final usage is recorded.",
        app.clock.now().strftime("%Y-%m-%d %H:%M:%S")
    );
    let body = views::destroyed(&t, &name, pod_gone, &billing);
    Ok(html(StatusCode::OK, &user.frame("Destroyed"), body))
}

// ----- deleting the account -----

fn account_confirmation(user: &Signed, t: &Tenant, now: jiff::Timestamp, step: Step) -> Response {
    let name = t.name_any();
    let (back, action) = (format!("/t/{name}/data"), format!("/t/{name}/delete"));
    let facts = crate::account::deletion_facts(t, now);
    let c = views::Confirm {
        back: &back,
        action: &action,
        title: "Delete your account?",
        explanation: views::DELETE_ACCOUNT_EXPLAINED,
        button: "Delete my account and its data",
        facts: &facts,
    };
    confirmation(user, "Delete your account", &c, step)
}

/// Why this account cannot be deleted here, if it cannot: already deleted, or kept by GitOps
/// (the next sync would make it again).
fn account_refusal(user: &Signed, t: &Tenant) -> Option<Response> {
    let words = if t.metadata.deletion_timestamp.is_some() {
        format!(
            "This account is already deleted. {}",
            views::erasure_when(erase_after(t).as_deref())
        )
    } else if let Some(tool) = crate::account::gitops_manager(t) {
        format!(
            "This account is kept in your platform team's configuration ({tool}): deleting it here would be undone by the next sync. Ask your platform team to remove it there; its data is then erased the same way, with receipts mailed to you."
        )
    } else {
        return None;
    };
    let body = views::message("Your account cannot be deleted here", &words);
    Some(html(StatusCode::CONFLICT, &user.frame("Delete your account"), body))
}

pub async fn delete_account_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
) -> Answer {
    let tn = tenant_or_deleted(&app, &user, &t)?;
    if let Some(refused) = account_refusal(&user, &tn) {
        return Ok(refused);
    }
    Ok(account_confirmation(&user, &tn, app.clock.now(), Step::Asked))
}

pub async fn delete_account_code(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(t): Path<String>,
    headers: HeaderMap,
    p: Posted<Empty>,
) -> Answer {
    let user = &p.user;
    let tn = tenant_or_deleted(&app, user, &t)?;
    if let Some(refused) = account_refusal(user, &tn) {
        return Ok(refused);
    }
    let sent = fresh_code(&app, user, peer, &headers).await;
    Ok(account_confirmation(user, &tn, app.clock.now(), Step::Sent(sent)))
}

/// Deletes the Tenant as its owner after a fresh code; the operator destroys its instances at
/// once and erases the rest after the account-data window; the notices mail both steps.
pub async fn delete_account(
    State(app): State<Arc<App>>,
    Path(t): Path<String>,
    p: Posted<ConfirmForm>,
) -> Answer {
    let user = &p.user;
    let tn = tenant_or_deleted(&app, user, &t)?;
    if let Some(refused) = account_refusal(user, &tn) {
        return Ok(refused);
    }
    let now = app.clock.now();
    if let Err(words) = confirmed(&app, user, &p.form.code).await {
        return Ok(account_confirmation(user, &tn, now, Step::Refused(words)));
    }
    let tenants: Api<Tenant> = Api::all(app.cluster.as_user(&user.email, &t));
    match tenants.delete(&t, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(Failure::Refused(
                StatusCode::FORBIDDEN,
                "your platform does not let owners delete their account here. Ask your platform team.".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(tenant = %t, "account deleted from the dashboard");
    let by = views::utc_minute(crate::account::erase_by(&tn, now));
    let body = views::account_deleted(&t, &user.email, &by);
    Ok(html(StatusCode::OK, &user.frame("Account deleted"), body))
}

// ----- knowledge bases -----

fn kb_api(app: &App, user: &Signed, tenant: &str) -> Api<KnowledgeBase> {
    Api::namespaced(
        app.cluster.as_user(&user.email, tenant),
        &alcove_crds::tenant::namespace_of(tenant),
    )
}

fn config_maps(app: &App, user: &Signed, tenant: &str) -> Api<ConfigMap> {
    Api::namespaced(
        app.cluster.as_user(&user.email, tenant),
        &alcove_crds::tenant::namespace_of(tenant),
    )
}

/// The ConfigMap that holds a knowledge base's uploaded documents.
fn uploads_name(kb: &str) -> String {
    format!("{kb}-uploads")
}

/// The source name uploads are indexed under (documents are reported as `uploads/<file>`).
const UPLOADS: &str = "uploads";

fn kb_phase(k: &KnowledgeBase) -> (String, String) {
    let s = k.status.as_ref();
    let phase =
        s.and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into());
    let message = s
        .and_then(|s| s.conditions.iter().find(|c| c.status == "False"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    (phase, message)
}

pub async fn kb_list(State(app): State<Arc<App>>, user: Signed, Path(t): Path<String>) -> Answer {
    tenant(&app, &user, &t)?;
    kb_list_page(&app, &user, &t, "", &views::FormErrors::default(), StatusCode::OK).await
}

async fn kb_list_page(
    app: &App,
    user: &Signed,
    t: &str,
    name: &str,
    errors: &views::FormErrors,
    status: StatusCode,
) -> Answer {
    let mut rows: Vec<views::KbRow> = kb_api(app, user, t)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|k| {
            let s = k.status.clone().unwrap_or_default();
            views::KbRow {
                name: k.name_any(),
                phase: kb_phase(k).0,
                documents: s.documents,
                chunks: s.chunks,
                indexed_at: s.indexed_at.unwrap_or_default(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let missing = tenant(app, user, t).map(|tn| consent_missing(&tn)).unwrap_or_default();
    let body = views::knowledge_bases(t, &rows, &user.csrf, name, errors, &missing);
    Ok(html(status, &user.frame("Knowledge bases"), body))
}

/// A multipart form's fields: text fields, and the one file (name, bytes).
struct Upload {
    fields: std::collections::HashMap<String, String>,
    file: Option<(String, Vec<u8>)>,
}

/// Reads a multipart form after the same checks as [`Posted`]: our origin, the session's CSRF
/// token (a field, or the header).
async fn upload(
    app: &App,
    user: &Signed,
    headers: &HeaderMap,
    mut form: Multipart,
) -> Result<Upload, Failure> {
    if !same_origin(headers, &app.origin) {
        return Err(Failure::Forged);
    }
    let mut up = Upload { fields: Default::default(), file: None };
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        Failure::Refused(
            StatusCode::BAD_REQUEST,
            format!("The form could not be read: {}", e.body_text()),
        )
    };
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_string();
        match field.file_name().map(str::to_string) {
            Some(file_name) if name == "file" => {
                let bytes = field.bytes().await.map_err(unreadable)?;
                if !file_name.is_empty() {
                    up.file = Some((file_name, bytes.to_vec()));
                }
            }
            _ => {
                let text = field.text().await.map_err(unreadable)?;
                up.fields.insert(name, text);
            }
        }
    }
    let presented = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| up.fields.get("csrf").cloned());
    if !presented.is_some_and(|p| app.sessions.csrf_ok(&user.token, &p)) {
        return Err(Failure::Forged);
    }
    Ok(up)
}

/// The document a form carries, checked: its key and text, or the words for the field.
fn uploaded_document(up: &Upload) -> Result<(String, String), String> {
    let Some((file_name, bytes)) = &up.file else {
        return Err("Choose a file to upload.".into());
    };
    crate::forms::document(file_name, bytes)
}

pub async fn kb_create(
    State(app): State<Arc<App>>,
    Path(t): Path<String>,
    headers: HeaderMap,
    user: Signed,
    form: Multipart,
) -> Answer {
    tenant(&app, &user, &t)?;
    let up = upload(&app, &user, &headers, form).await?;
    let name = up.fields.get("name").map(|n| n.trim().to_string()).unwrap_or_default();
    let mut errors = views::FormErrors::default();
    if let Some(e) = crate::forms::name_error(&name) {
        errors.fields.push(("name", e));
    }
    let document = uploaded_document(&up).map_err(|e| errors.fields.push(("file", e))).ok();
    let Some((key, text)) = document.filter(|_| errors.is_empty()) else {
        return kb_list_page(&app, &user, &t, &name, &errors, StatusCode::UNPROCESSABLE_ENTITY)
            .await;
    };
    let ns = alcove_crds::tenant::namespace_of(&t);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": uploads_name(&name), "namespace": ns},
        "data": {key: text},
    }))
    .map_err(|e| Failure::Refused(StatusCode::BAD_REQUEST, e.to_string()))?;
    let kb: KnowledgeBase = serde_json::from_value(serde_json::json!({
        "apiVersion": alcove_crds::API_VERSION, "kind": "KnowledgeBase",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "sources": [{"name": UPLOADS, "configMap": {"name": uploads_name(&name)}}],
            "embeddingModel": {"source": {"platform": app.embedding_model}},
        },
    }))
    .map_err(|e| Failure::Refused(StatusCode::BAD_REQUEST, e.to_string()))?;
    let refused = |words: String| {
        let mut errors = views::FormErrors::default();
        if words.contains("metadata.name") || words.contains("exists") {
            errors.fields.push(("name", words));
        } else {
            errors.form = Some(words);
        }
        errors
    };
    match config_maps(&app, &user, &t).create(&PostParams::default(), &cm).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let errors =
                refused("A knowledge base of that name exists already. Pick another name.".into());
            return kb_list_page(&app, &user, &t, &name, &errors, StatusCode::UNPROCESSABLE_ENTITY)
                .await;
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 422) => {
            return kb_list_page(
                &app,
                &user,
                &t,
                &name,
                &refused(s.message),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = kb_api(&app, &user, &t).create(&PostParams::default(), &kb).await {
        // Nothing half-made is left behind.
        let _ = config_maps(&app, &user, &t)
            .delete(&uploads_name(&name), &DeleteParams::default())
            .await;
        return match e {
            kube::Error::Api(s) if matches!(s.code, 400 | 409 | 422) => {
                let words = if s.code == 409 {
                    "A knowledge base of that name exists already. Pick another name.".to_string()
                } else {
                    s.message
                };
                kb_list_page(
                    &app,
                    &user,
                    &t,
                    &name,
                    &refused(words),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .await
            }
            e => Err(e.into()),
        };
    }
    tracing::info!(tenant = %t, knowledge_base = %name, "knowledge base created from the dashboard");
    Ok(see_other(&format!("/t/{t}/kb/{name}?notice=uploaded")))
}

async fn kb_detail(
    app: &App,
    user: &Signed,
    t: &str,
    name: &str,
) -> Result<views::KbDetail, Failure> {
    let k = kb_api(app, user, t).get(name).await?;
    let (phase, message) = kb_phase(&k);
    let s = k.status.clone().unwrap_or_default();
    let uploads = match config_maps(app, user, t).get(&uploads_name(name)).await {
        Ok(cm) => cm.data.unwrap_or_default().into_keys().collect(),
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let other_sources = k
        .spec
        .sources
        .iter()
        .filter(|src| src.name != UPLOADS)
        .map(|src| src.name.clone())
        .collect();
    Ok(views::KbDetail {
        tenant: t.to_string(),
        name: name.to_string(),
        phase,
        message,
        documents: s.documents,
        chunks: s.chunks,
        indexed_at: s.indexed_at.unwrap_or_default(),
        uploads,
        other_sources,
    })
}

pub async fn kb_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
    Query(q): Query<NoticeQuery>,
) -> Answer {
    tenant(&app, &user, &t)?;
    let d = kb_detail(&app, &user, &t, &name).await?;
    let note = match q.notice.as_deref() {
        Some("uploaded") => Some("Uploaded. It is being indexed; the count below follows."),
        Some("removed") => Some("Removed. The knowledge base is being indexed again without it."),
        _ => None,
    };
    Ok(html(StatusCode::OK, &user.frame(&name), views::knowledge_base(&d, &user.csrf, None, note)))
}

pub async fn kb_status(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
) -> Answer {
    tenant(&app, &user, &t)?;
    Ok(fragment(views::kb_status(&kb_detail(&app, &user, &t, &name).await?)))
}

/// Adds (or replaces) one document; the operator indexes again.
pub async fn kb_upload(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    headers: HeaderMap,
    user: Signed,
    form: Multipart,
) -> Answer {
    tenant(&app, &user, &t)?;
    let up = upload(&app, &user, &headers, form).await?;
    let d = kb_detail(&app, &user, &t, &name).await?;
    let refuse = |words: String| {
        let body = views::knowledge_base(&d, &user.csrf, Some(&words), None);
        Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &user.frame(&name), body))
    };
    let (key, text) = match uploaded_document(&up) {
        Ok(doc) => doc,
        Err(words) => return refuse(words),
    };
    let cms = config_maps(&app, &user, &t);
    let existing = match cms.get(&uploads_name(&name)).await {
        Ok(cm) => cm.data.unwrap_or_default(),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return refuse(
                "This knowledge base takes no uploads: it is configured by your platform team."
                    .into(),
            );
        }
        Err(e) => return Err(e.into()),
    };
    let total: usize =
        existing.iter().filter(|(k, _)| **k != key).map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + key.len()
            + text.len();
    if total > crate::forms::MAX_UPLOADS {
        return refuse(format!(
            "The knowledge base would hold more than {} KiB of uploads. Remove a document first.",
            crate::forms::MAX_UPLOADS / 1024
        ));
    }
    let patch = serde_json::json!({"data": {key: text}});
    cms.patch(&uploads_name(&name), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(tenant = %t, knowledge_base = %name, "document uploaded from the dashboard");
    Ok(see_other(&format!("/t/{t}/kb/{name}?notice=uploaded")))
}

#[derive(Deserialize)]
pub struct RemoveForm {
    #[serde(default)]
    document: String,
}

/// Removes one uploaded document; the operator indexes again without it.
pub async fn kb_remove(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    headers: HeaderMap,
    p: Posted<RemoveForm>,
) -> Answer {
    tenant(&app, &p.user, &t)?;
    let cms = config_maps(&app, &p.user, &t);
    let cm = cms.get(&uploads_name(&name)).await?;
    if !cm.data.unwrap_or_default().contains_key(&p.form.document) {
        return Err(Failure::NotFound);
    }
    let patch = serde_json::json!({"data": {p.form.document.clone(): null}});
    cms.patch(&uploads_name(&name), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(tenant = %t, knowledge_base = %name, "document removed from the dashboard");
    let to = format!("/t/{t}/kb/{name}?notice=removed");
    // htmx follows a page change by its header, not a redirect.
    if headers.contains_key("hx-request")
        && let Ok(v) = HeaderValue::from_str(&to)
    {
        return Ok(([(HeaderName::from_static("hx-redirect"), v)], "").into_response());
    }
    Ok(see_other(&to))
}

#[derive(Deserialize)]
pub struct AttachForm {
    #[serde(default)]
    knowledge_base: String,
}

/// Which knowledge base an instance answers from (one, or none).
pub async fn attach(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    p: Posted<AttachForm>,
) -> Answer {
    tenant(&app, &p.user, &t)?;
    let kb = p.form.knowledge_base.trim();
    let value = if kb.is_empty() {
        serde_json::Value::Null
    } else {
        kb_api(&app, &p.user, &t).get(kb).await?;
        serde_json::json!([{"name": kb}])
    };
    let patch = serde_json::json!({"spec": {"knowledgeBases": value}});
    instances_api(&app, &p.user, &t)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(see_other(&format!("/t/{t}/i/{name}?notice=attached")))
}

// ----- the chat playground -----

/// A conversation id the instance accepts (its rule), else a new random one.
fn conversation_id(asked: &str) -> String {
    let ok = (1..=128).contains(&asked.len())
        && asked.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        asked.to_string()
    } else {
        format!("c-{}", &crate::random::hex(&crate::random::bytes())[..16])
    }
}

/// The gateway's error message, or a status in words.
fn gateway_words(status: u16, body: &serde_json::Value) -> String {
    body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("The instance answered with status {status}."))
}

async fn conversation_rows(app: &App, key: &str) -> Result<Vec<views::ConversationRow>, String> {
    let (status, body) = app
        .gateway
        .json(http::Method::GET, "/conversations", key, None)
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(gateway_words(status, &body));
    }
    let rows = body["data"].as_array().cloned().unwrap_or_default();
    Ok(rows
        .iter()
        .map(|c| views::ConversationRow {
            id: c["id"].as_str().unwrap_or_default().to_string(),
            title: c["title"].as_str().unwrap_or_default().to_string(),
            when: c["updated_at"]
                .as_i64()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default(),
            turns: c["messages"].as_u64().unwrap_or_default(),
        })
        .collect())
}

#[derive(Deserialize, Default)]
pub struct ChatQuery {
    c: Option<String>,
    notice: Option<String>,
}

pub async fn chat_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
    Query(q): Query<ChatQuery>,
) -> Answer {
    tenant(&app, &user, &t)?;
    let key = read_key(&app, &user, &t, &name).await?;
    let conversation = conversation_id(q.c.as_deref().unwrap_or_default());
    let (rows, mut unavailable) = match conversation_rows(&app, &key).await {
        Ok(rows) => (rows, None),
        Err(words) => (Vec::new(), Some(format!("The instance cannot chat now: {words}"))),
    };
    let mut messages = Vec::new();
    if q.c.is_some() && unavailable.is_none() {
        let path = format!("/conversations/{conversation}");
        match app.gateway.json(http::Method::GET, &path, &key, None).await {
            Ok((200, body)) => {
                for m in body["messages"].as_array().cloned().unwrap_or_default() {
                    let role = m["role"].as_str().unwrap_or_default();
                    if role == "user" || role == "assistant" {
                        messages.push((
                            role.to_string(),
                            m["content"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                }
            }
            Ok((404, _)) => return Err(Failure::NotFound),
            Ok((status, body)) => unavailable = Some(gateway_words(status, &body)),
            Err(e) => unavailable = Some(e.to_string()),
        }
    }
    let note = match q.notice.as_deref() {
        Some("deleted") => Some("The conversation is deleted from the instance's store."),
        _ => None,
    };
    let v = views::ChatView {
        tenant: &t,
        name: &name,
        conversation: &conversation,
        conversations: &rows,
        messages: &messages,
        unavailable: unavailable.as_deref(),
    };
    Ok(html(StatusCode::OK, &user.frame("Chat"), views::chat(&v, &user.csrf, None, note)))
}

/// The conversation list alone (refreshed by the page after each answer).
pub async fn conversation_list(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name)): Path<(String, String)>,
) -> Answer {
    tenant(&app, &user, &t)?;
    let key = read_key(&app, &user, &t, &name).await?;
    let rows = conversation_rows(&app, &key).await.unwrap_or_default();
    Ok(fragment(views::conversation_list(&format!("/t/{t}/i/{name}"), &rows, "")))
}

#[derive(Deserialize)]
pub struct ChatForm {
    #[serde(default)]
    conversation: String,
    #[serde(default)]
    message: String,
}

/// One question. With `Accept: text/event-stream` (the page's script) the gateway's stream is
/// passed through as it comes; without scripts the answer is awaited and the page shown again.
pub async fn chat_send(
    State(app): State<Arc<App>>,
    Path((t, name)): Path<(String, String)>,
    headers: HeaderMap,
    p: Posted<ChatForm>,
) -> Answer {
    let user = &p.user;
    tenant(&app, user, &t)?;
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let message = p.form.message.trim();
    if message.is_empty() {
        let words = "Write a message first.";
        if streaming {
            let body = serde_json::json!({"error": {"message": words, "param": "message"}});
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response());
        }
        return Ok(see_other(&format!("/t/{t}/i/{name}/chat")));
    }
    let key = read_key(&app, user, &t, &name).await?;
    let conversation = conversation_id(&p.form.conversation);
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": message}],
        "stream": streaming,
        "conversation": conversation,
    });
    let answer = app
        .gateway
        .call(http::Method::POST, "/chat/completions", &key, Some(&body))
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    let status = answer.status();
    if streaming {
        let mut r = Response::builder().status(status.as_u16());
        if let Some(ct) = answer.headers().get(header::CONTENT_TYPE) {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        let r = r
            .header(header::CACHE_CONTROL, "no-store")
            .header("x-conversation", conversation)
            .body(axum::body::Body::new(answer.into_body()))
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        return Ok(r);
    }
    use http_body_util::BodyExt as _;
    let bytes =
        answer.into_body().collect().await.map_err(|e| Failure::Unavailable(e.to_string()))?;
    if !status.is_success() {
        let body: serde_json::Value = serde_json::from_slice(&bytes.to_bytes()).unwrap_or_default();
        return Err(Failure::Refused(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            gateway_words(status.as_u16(), &body),
        ));
    }
    Ok(see_other(&format!("/t/{t}/i/{name}/chat?c={conversation}")))
}

fn delete_confirmation(user: &Signed, t: &str, name: &str, id: &str, step: Step) -> Response {
    let (base, action) =
        (format!("/t/{t}/i/{name}/chat?c={id}"), format!("/t/{t}/i/{name}/c/{id}/delete"));
    let c = views::Confirm {
        back: &base,
        action: &action,
        title: "Delete this conversation?",
        explanation: views::DELETE_CONVERSATION_EXPLAINED,
        button: "Delete the conversation",
        facts: &[],
    };
    confirmation(user, "Delete conversation", &c, step)
}

pub async fn delete_conversation_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, name, id)): Path<(String, String, String)>,
) -> Answer {
    tenant(&app, &user, &t)?;
    instances_api(&app, &user, &t).get(&name).await?;
    Ok(delete_confirmation(&user, &t, &name, &id, Step::Asked))
}

pub async fn delete_conversation_code(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((t, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    p: Posted<Empty>,
) -> Answer {
    let user = &p.user;
    tenant(&app, user, &t)?;
    instances_api(&app, user, &t).get(&name).await?;
    let sent = fresh_code(&app, user, peer, &headers).await;
    Ok(delete_confirmation(user, &t, &name, &id, Step::Sent(sent)))
}

/// Deletes the conversation from the instance's store (through the gateway, with the key).
pub async fn delete_conversation(
    State(app): State<Arc<App>>,
    Path((t, name, id)): Path<(String, String, String)>,
    p: Posted<ConfirmForm>,
) -> Answer {
    let user = &p.user;
    tenant(&app, user, &t)?;
    if let Err(words) = confirmed(&app, user, &p.form.code).await {
        return Ok(delete_confirmation(user, &t, &name, &id, Step::Refused(words)));
    }
    let key = read_key(&app, user, &t, &name).await?;
    let path = format!("/conversations/{}", conversation_id(&id));
    let (status, body) = app
        .gateway
        .json(http::Method::DELETE, &path, &key, None)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    match status {
        200 | 404 => {
            tracing::info!(tenant = %t, instance = %name, "conversation deleted from the dashboard");
            Ok(see_other(&format!("/t/{t}/i/{name}/chat?notice=deleted")))
        }
        _ => Err(Failure::Refused(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            gateway_words(status, &body),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_reach_a_handler() {
        assert!(plain_path("/t/startup/i/chat-2/c/first_talk.1/delete"));
        assert!(plain_path("/t/acme/billing/receipts/pi_3Qx"));
        for bad in ["/t/startup/i/chat%0d%0aX: y", "/t/a b", "/t/%2e%2e/x", "/t/é", "/t/a:b"] {
            assert!(!plain_path(bad), "{bad}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(origin_of("https://Dash.Example.com/t/acme?x=1"), "https://dash.example.com");
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "http://127.0.0.1:8080"), "no Origin: a same-origin form");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h, "http://127.0.0.1:8080"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h, "http://127.0.0.1:8080"));
    }

    #[test]
    fn api_refusals_land_beside_their_field() {
        assert_eq!(
            field_of("spec.limits.maxTokens must not exceed spec.limits.contextLength"),
            Some("max_tokens")
        );
        assert_eq!(field_of("metadata.name: Invalid value"), Some("name"));
        assert_eq!(field_of("something else"), None);
        assert!(notice_text(Some("<script>")).is_none(), "only fixed notices");
    }
}

// ----- credit and billing -----

fn locale_of(headers: &HeaderMap) -> crate::money::Locale {
    crate::money::locale(headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()))
}

fn currency_of(t: &Tenant) -> Option<String> {
    t.spec.billing.as_ref().map(|b| b.currency.to_ascii_lowercase())
}

fn customer_of(t: &Tenant) -> Option<String> {
    t.status.as_ref()?.billing.as_ref()?.customer_id.clone().filter(|c| !c.is_empty())
}

fn balance_of(t: &Tenant, locale: crate::money::Locale) -> views::Balance {
    use crate::money::format;
    let (Some(spec), Some(currency)) = (t.spec.billing.as_ref(), currency_of(t)) else {
        return views::Balance {
            balance: "No billing account".into(),
            state: views::Credit::NotCharged,
        };
    };
    let status = t.status.as_ref().and_then(|s| s.billing.clone()).unwrap_or_default();
    let state = if status.balance <= 0 {
        views::Credit::Exhausted {
            suspend_at: status
                .suspend_at
                .as_deref()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .map(views::utc_minute),
        }
    } else if status.balance < spec.low_balance_threshold {
        views::Credit::Low { threshold: format(spec.low_balance_threshold, &currency, locale) }
    } else {
        views::Credit::Healthy
    };
    views::Balance { balance: format(status.balance, &currency, locale), state }
}

fn history_rows(
    tenant: &str,
    currency: &str,
    entries: &[crate::billing::Entry],
    locale: crate::money::Locale,
) -> Vec<views::HistoryRow> {
    use crate::billing::{Entry, Usage};
    use crate::money::format;
    entries
        .iter()
        .map(|e| match e {
            Entry::TopUp { at, amount, intent, .. } => views::HistoryRow {
                date: at.strftime("%Y-%m-%d %H:%M").to_string(),
                what: "Top-up by card".into(),
                amount: format!("+{}", format(*amount, currency, locale)),
                receipt: Some(format!("/t/{tenant}/billing/receipts/{intent}")),
            },
            Entry::Charge { day, instance, usage, amount, records } => {
                let name = instance.rsplit('/').next().unwrap_or(instance);
                let what = match usage {
                    Usage::Gpu { millis } => {
                        format!("GPU time: {name}, {}", views::gpu_words(millis / 1000))
                    }
                    Usage::Tokens { prompt, completion } => {
                        format!("Tokens: {name}, {prompt} prompt + {completion} completion")
                    }
                };
                let what = if *records > 1 { format!("{what} ({records} records)") } else { what };
                views::HistoryRow {
                    date: day.to_string(),
                    what,
                    amount: format!("-{}", format(*amount, currency, locale)),
                    receipt: None,
                }
            }
        })
        .collect()
}

pub async fn billing_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let tn = tenant(&app, &user, &t)?;
    let locale = locale_of(&headers);
    let (currency, customer) = (currency_of(&tn), customer_of(&tn));
    let top_up = match (&app.billing, &currency, &customer) {
        (None, _, _) => Err(
            "Top-ups by card are not offered on this platform. Ask your platform team how to add credit.",
        ),
        (_, None, _) => Err("This tenant has no billing account, so it needs no credit."),
        (_, _, None) => Err("Your billing account is being set up. Reload this page in a minute."),
        (Some(b), Some(c), Some(_)) => {
            let (min, max) = crate::money::top_up_range(c);
            Ok(views::TopUpForm {
                publishable_key: &b.publishable_key,
                js_url: &b.js_url,
                currency: c.to_ascii_uppercase(),
                nonce: crate::random::hex(&crate::random::bytes()[..16]),
                range: (crate::money::format(min, c, locale), crate::money::format(max, c, locale)),
            })
        }
    };
    let history = match (&app.billing, &currency, &customer) {
        (Some(b), Some(c), Some(cus)) => match b.records(cus).await {
            Ok((payments, items)) => {
                let entries = crate::billing::history(cus, &payments, &items);
                Ok(history_rows(&t, c, &entries, locale))
            }
            Err(e) => {
                tracing::warn!(tenant = %t, error = %e, "reading the billing history from Stripe");
                Err("The history could not be read from Stripe just now. Reload in a minute.".into())
            }
        },
        (None, Some(_), _) => Err("Your history is kept by the platform's payment processor; this dashboard is not connected to it. Ask your platform team for statements.".into()),
        (_, None, _) => Ok(Vec::new()),
        (_, _, None) => Ok(Vec::new()),
    };
    let view = views::BillingView {
        tenant: &t,
        display_name: &tn.spec.display_name,
        balance: balance_of(&tn, locale),
        top_up,
        history,
    };
    let mut page =
        html(StatusCode::OK, &user.frame("Credit and billing"), views::billing(&view, &user.csrf));
    if let Some(b) = &app.billing {
        // Stripe.js runs here, and only here: its script, its API calls and its 3-D Secure frames.
        let stripe = b.origins.join(" ");
        let policy = format!(
            "default-src 'self'; script-src 'self' {stripe}; connect-src 'self' {stripe}; frame-src {stripe} https://*.stripe.com; img-src 'self' data: {stripe}; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        );
        if let Ok(v) = HeaderValue::from_str(&policy) {
            page.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    Ok(page)
}

pub async fn balance_block(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let tn = tenant(&app, &user, &t)?;
    Ok(fragment(views::balance_block(&t, &balance_of(&tn, locale_of(&headers)))))
}

#[derive(Deserialize)]
pub struct PayForm {
    #[serde(default)]
    amount: String,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    token: String,
}

/// A top-up's answer to the page's script: `status` (succeeded, requires_action, processing), or
/// `error` in words with the `field` it belongs to.
///
/// Every answer carries the nonce for the page's next payment: the page keeps the old one only
/// when no answer came, so resending then is the same payment.
fn pay_reply(code: StatusCode, mut body: serde_json::Value) -> Response {
    body["nonce"] = crate::random::hex(&crate::random::bytes()[..16]).into();
    (code, [(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

fn pay_refused(code: StatusCode, field: &str, words: &str) -> Response {
    pay_reply(code, serde_json::json!({"error": words, "field": field}))
}

fn paid_reply(paid: crate::billing::Paid) -> Response {
    use crate::billing::Paid;
    match paid {
        Paid::Succeeded { intent } => pay_reply(
            StatusCode::OK,
            serde_json::json!({"status": "succeeded", "intent": intent, "message": "Payment received. Your credit appears here as soon as Stripe confirms it."}),
        ),
        Paid::NeedsAction { intent, client_secret } => pay_reply(
            StatusCode::OK,
            serde_json::json!({"status": "requires_action", "intent": intent, "client_secret": client_secret}),
        ),
        Paid::Processing { intent } => pay_reply(
            StatusCode::ACCEPTED,
            serde_json::json!({"status": "processing", "intent": intent, "message": "Your payment is being processed. The credit appears here when it succeeds."}),
        ),
        Paid::Failed { message } => pay_refused(StatusCode::PAYMENT_REQUIRED, "card", &message),
    }
}

/// Pays a top-up: validates the form, claims its nonce (so a double click or a retry pays once),
/// then has Stripe charge the tokenized card. The credit itself arrives through the operator's
/// webhook, never from here.
pub async fn pay(
    State(app): State<Arc<App>>,
    Path(t): Path<String>,
    headers: HeaderMap,
    p: Posted<PayForm>,
) -> Response {
    let Ok(tn) = tenant(&app, &p.user, &t) else { return Failure::NotFound.into_response() };
    let (Some(billing), Some(currency), Some(customer)) =
        (app.billing.as_ref(), currency_of(&tn), customer_of(&tn))
    else {
        return pay_refused(
            StatusCode::CONFLICT,
            "amount",
            "Top-ups are not available for this tenant. Reload the page.",
        );
    };
    let locale = locale_of(&headers);
    let amount = match crate::money::parse(&p.form.amount, &currency, locale) {
        Ok(a) => a,
        Err(words) => return pay_refused(StatusCode::BAD_REQUEST, "amount", &words),
    };
    let (min, max) = crate::money::top_up_range(&currency);
    if !(min..=max).contains(&amount) {
        let words = format!(
            "Top up between {} and {}.",
            crate::money::format(min, &currency, locale),
            crate::money::format(max, &currency, locale)
        );
        return pay_refused(StatusCode::BAD_REQUEST, "amount", &words);
    }
    if !crate::billing::valid_nonce(&p.form.nonce) || !crate::billing::valid_token(&p.form.token) {
        return pay_refused(
            StatusCode::BAD_REQUEST,
            "card",
            "The card form could not be read. Reload the page and enter the card again.",
        );
    }
    let store = &app.store;
    let now = app.clock.now().as_millisecond();
    match store.claim_top_up(&p.form.nonce, &t, now).await {
        Err(e) => {
            tracing::warn!(error = %e, "claiming a top-up");
            return pay_refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "card",
                "We could not start the payment. Nothing was charged. Try again in a moment.",
            );
        }
        Ok(crate::store::Claim::Taken { tenant, intent }) => {
            if tenant != t {
                return pay_refused(
                    StatusCode::CONFLICT,
                    "card",
                    "This form belongs to another page. Reload the page.",
                );
            }
            return match intent {
                None => paid_reply(crate::billing::Paid::Processing { intent: String::new() }),
                Some(id) => match billing.intent(&id).await {
                    Ok(pi) => paid_reply(crate::billing::paid(&pi)),
                    Err(e) => {
                        tracing::warn!(tenant = %t, payment = %id, error = %e, "reading a top-up");
                        paid_reply(crate::billing::Paid::Processing { intent: id })
                    }
                },
            };
        }
        Ok(crate::store::Claim::New) => {}
    }
    let top_up = crate::billing::TopUp {
        customer: &customer,
        currency: &currency,
        amount,
        token: &p.form.token,
        nonce: &p.form.nonce,
        tenant: &t,
        tenant_uid: tn.metadata.uid.as_deref().unwrap_or_default(),
    };
    match billing.pay(&top_up).await {
        Ok(pi) => {
            if let Err(e) = store.top_up_paid(&p.form.nonce, &pi.id).await {
                tracing::warn!(error = %e, payment = %pi.id, "recording a top-up's payment");
            }
            tracing::info!(tenant = %t, payment = %pi.id, amount, currency = %currency, status = pi.status.as_deref().unwrap_or_default(), "top-up paid");
            paid_reply(crate::billing::paid(&pi))
        }
        Err(e) => {
            if let Err(e) = store.release_top_up(&p.form.nonce).await {
                tracing::warn!(error = %e, "releasing a refused top-up");
            }
            tracing::info!(tenant = %t, status = e.status, code = e.code.as_deref().unwrap_or_default(), "top-up refused by Stripe");
            match e.status {
                400..=499 => {
                    let words = match e.code.as_deref() {
                        Some("card_declined") => {
                            "Your card was declined. Use another card or ask your bank."
                        }
                        Some("expired_card") => "Your card has expired.",
                        Some("incorrect_cvc") => "The card's security code is wrong.",
                        _ => "The card was not accepted. Check its details or use another card.",
                    };
                    pay_refused(StatusCode::PAYMENT_REQUIRED, "card", words)
                }
                _ => pay_refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "card",
                    "The payment service did not answer. If your card was charged, the credit still arrives; otherwise try again in a moment.",
                ),
            }
        }
    }
}

/// One top-up's receipt, as a file to keep: only a succeeded payment of this tenant's customer.
pub async fn receipt(
    State(app): State<Arc<App>>,
    user: Signed,
    Path((t, intent)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    let tn = tenant(&app, &user, &t)?;
    let (Some(billing), Some(customer)) = (app.billing.as_ref(), customer_of(&tn)) else {
        return Err(Failure::NotFound);
    };
    if !intent.starts_with("pi_") || !intent.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(Failure::NotFound);
    }
    let pi = billing.intent(&intent).await.map_err(|e| match e.status {
        404 => Failure::NotFound,
        _ => Failure::Unavailable(e.to_string()),
    })?;
    let r = crate::billing::receipt(&customer, &pi).ok_or(Failure::NotFound)?;
    let view = views::ReceiptView {
        tenant: &t,
        display_name: &tn.spec.display_name,
        intent: &r.intent,
        paid_at: r.at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        amount: crate::money::format(r.amount, &r.currency, locale_of(&headers)),
    };
    let disposition = format!("attachment; filename=\"alcove-receipt-{}.html\"", r.intent);
    Ok((
        [
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        views::receipt(&view),
    )
        .into_response())
}

// ----- your data -----

/// The data report: the account, where its data lives, the key, how long each kind is kept, and
/// what was erased. Volumes and pods are read as the user (the tenant-admin Role may read them);
/// the rest is the Tenant the dashboard watches.
pub async fn data_page(State(app): State<Arc<App>>, user: Signed, Path(t): Path<String>) -> Answer {
    use alcove_crds::policy::DataClass;
    let tn = tenant_or_deleted(&app, &user, &t)?;
    let ns = alcove_crds::tenant::namespace_of(&t);
    let client = app.cluster.as_user(&user.email, &t);
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let all = ListParams::default();
    let (pvcs, pods) = futures::try_join!(pvcs.list(&all), pods.list(&all))?;
    let volumes = alcove_crds::report::volumes(&pvcs.items, &pods.items);
    let status = tn.status.clone().unwrap_or_default();
    let spec = &tn.spec;
    let owners: Vec<String> = spec
        .owners
        .iter()
        .map(|o| format!("{} ({})", o.name, o.kind.as_str().to_lowercase()))
        .collect();
    let sensitive = if spec.sensitive_data.is_empty() {
        "none declared".to_string()
    } else {
        spec.sensitive_data
            .iter()
            .map(|c| match spec.consents.iter().find(|k| k.category == *c) {
                Some(k) => format!("{} (consent {})", c.words(), k.reference),
                None => format!("{} (waiting for consent)", c.words()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let account = vec![
        ("Name", format!("{} ({t})", spec.display_name)),
        ("Owners", owners.join(", ")),
        (
            "Contact email",
            spec.contact_email.clone().unwrap_or_else(|| "none: notices go to every owner".into()),
        ),
        ("Tier", spec.tier.as_str().to_string()),
        ("Region", format!("{}: your volumes and the GPUs that read them stay there", spec.region)),
        ("Namespace", ns.clone()),
        ("Sensitive data", sensitive),
        (
            "Legal hold",
            if spec.legal_hold { "on: nothing is erased while it lasts" } else { "off" }.into(),
        ),
    ];
    let now = app.clock.now();
    let key = match &status.encryption_key {
        Some(k) => {
            let made: Option<jiff::Timestamp> = k.created_at.parse().ok();
            let age = made.map(|m| now.duration_since(m).as_secs().max(0) / 86_400).unwrap_or(0);
            format!(
                "Secret {} in {ns}, made {} ({age} days ago). Conversation history is encrypted with it. When the account is erased it is deleted last, so nothing that escaped erasure can be read.",
                k.secret,
                made.map(|m| m.strftime("%Y-%m-%d").to_string()).unwrap_or_default()
            )
        }
        None => "Not made yet: it is made with the account's namespace.".into(),
    };
    let windows = DataClass::ALL
        .into_iter()
        .map(|c| match spec.retention.as_ref().and_then(|r| r.get(c)) {
            Some(w) => (c.as_str(), w.to_string(), "your account"),
            None if c == DataClass::BillingRecords => {
                (c.as_str(), c.default_window().to_string(), "the law (accounting records)")
            }
            None => (c.as_str(), c.default_window().to_string(), "the platform (at most this)"),
        })
        .collect();
    let view = views::DataView {
        tenant: &t,
        display_name: &spec.display_name,
        account,
        key,
        volumes: &volumes,
        windows,
        erasures: &status.erasure,
        erase_after: tn.metadata.deletion_timestamp.as_ref().map(|_| {
            erase_after(&tn).unwrap_or_else(|| "the end of its account-data window".into())
        }),
    };
    Ok(html(StatusCode::OK, &user.frame("Your data"), views::data(&view)))
}

// ----- rectification -----

pub async fn account_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Answer {
    let tn = tenant(&app, &user, &t)?;
    let v = views::AccountForm {
        display_name: tn.spec.display_name.clone(),
        contact_email: tn.spec.contact_email.clone().unwrap_or_default(),
        code: String::new(),
    };
    let saved = q.notice.as_deref() == Some("saved");
    let body =
        views::account_details(&t, &user.csrf, &v, &views::FormErrors::default(), None, saved);
    Ok(html(StatusCode::OK, &user.frame("Your details"), body))
}

/// Corrects the display name and the contact address. A new contact address (other than the
/// user's own) is sent a code first; fields a GitOps sync would undo are refused beside them.
pub async fn rectify(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(t): Path<String>,
    headers: HeaderMap,
    p: Posted<views::AccountForm>,
) -> Answer {
    let (user, v) = (&p.user, &p.form);
    let tn = tenant(&app, user, &t)?;
    let page = |errors: &views::FormErrors, sent: Option<&str>, status: StatusCode| {
        let body = views::account_details(&t, &user.csrf, v, errors, sent, false);
        html(status, &user.frame("Your details"), body)
    };
    let mut errors = views::FormErrors::default();
    let display = account_name(&v.display_name).unwrap_or_else(|e| {
        errors.fields.push(("display_name", e));
        String::new()
    });
    let contact = match v.contact_email.trim() {
        "" => None,
        a => match Address::parse(a) {
            Ok(a) => Some(a),
            Err(e) => {
                errors.fields.push(("contact_email", e.to_string()));
                None
            }
        },
    };
    let display_changed = display != tn.spec.display_name;
    let contact_changed = contact.as_ref().map(Address::as_str) != tn.spec.contact_email.as_deref();
    let kept = |what: &str| {
        format!(
            "Your platform team keeps the {what} in their configuration ({}): ask them to change it there.",
            crate::account::gitops_manager(&tn).unwrap_or("GitOps")
        )
    };
    if display_changed && crate::account::gitops_manager(&tn).is_some() {
        errors.fields.push(("display_name", kept("account name")));
    }
    if contact_changed && crate::account::gitops_owns(&tn, "contactEmail") {
        errors.fields.push(("contact_email", kept("contact email")));
    }
    if !errors.is_empty() {
        return Ok(page(&errors, None, StatusCode::UNPROCESSABLE_ENTITY));
    }
    let now = app.clock.now();
    // A new address proves it is the customer's (and not a stranger's inbox) with a code.
    let to_prove = contact
        .as_ref()
        .filter(|a| contact_changed && !a.as_str().eq_ignore_ascii_case(&user.email));
    if let Some(a) = to_prove {
        if v.code.trim().is_empty() {
            match app.codes.issue(a, client_ip(&app, peer, &headers), now).await {
                Ok(code) => {
                    let (app, a, who, account) =
                        (app.clone(), a.clone(), user.email.clone(), display.clone());
                    mail_in_background("a contact confirmation code", async move {
                        app.mailer.send_contact_code(&a, &code, &who, &account).await
                    });
                }
                Err(Refused::TooSoon { .. }) => {}
                Err(Refused::TooMany { retry_after }) => {
                    errors.fields.push(("contact_email", too_many_codes(retry_after)));
                    return Ok(page(&errors, None, StatusCode::TOO_MANY_REQUESTS));
                }
                Err(Refused::Unavailable) => {
                    return Err(Failure::Unavailable("the code store".into()));
                }
            }
            return Ok(page(&errors, Some(a.as_str()), StatusCode::OK));
        }
        if let Err(r) = app.codes.verify(a, v.code.trim(), now).await {
            errors.fields.push(("code", rejected_words(r)));
            return Ok(page(&errors, Some(a.as_str()), StatusCode::UNPROCESSABLE_ENTITY));
        }
    }
    if display_changed || contact_changed {
        let contact = contact.as_ref().map(Address::as_str);
        app.cluster
            .rectify(
                &t,
                display_changed.then_some(display.as_str()),
                contact_changed.then_some(contact),
            )
            .await?;
        tracing::info!(tenant = %t, "account details corrected from the dashboard");
    }
    Ok(see_other(&format!("/t/{t}/account?notice=saved")))
}

// ----- usage -----

#[derive(Deserialize, Default)]
pub struct UsageQuery {
    #[serde(default)]
    instance: String,
    before: Option<i64>,
}

/// Requests per page of the log.
const LOG_PAGE: i64 = 50;

fn usage_store(app: &App) -> Result<&alcove_gateway::store::Store, &'static str> {
    app.usage.as_ref().ok_or(
        "The request log is not connected to this dashboard. Ask your platform team: it is kept by the gateway.",
    )
}

fn store_failure(e: sqlx::Error) -> Failure {
    Failure::Unavailable(format!("the usage store: {e}"))
}

pub async fn usage_page(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Answer {
    let tn = tenant(&app, &user, &t)?;
    let mut view = views::UsageView {
        tenant: &t,
        display_name: &tn.spec.display_name,
        unavailable: None,
        bars: Vec::new(),
        days: Vec::new(),
        instances: Vec::new(),
        instance: &q.instance,
        log: Vec::new(),
        older: None,
        gpu: None,
    };
    let today = app.clock.now().to_zoned(jiff::tz::TimeZone::UTC).date();
    let day_before = |n: i64| today.checked_sub(jiff::Span::new().days(n)).unwrap_or(today);
    view.gpu =
        gpu_days(&app, &tn, &q.instance, &(0..30).rev().map(day_before).collect::<Vec<_>>()).await;
    let store = match usage_store(&app) {
        Ok(s) => s,
        Err(why) => {
            view.unavailable = Some(why);
            return Ok(html(StatusCode::OK, &user.frame("Usage"), views::usage(&view)));
        }
    };
    let since_log = day_before(89).to_string();
    let daily = store.daily(&t, &since_log).await.map_err(store_failure)?;
    let since_chart = day_before(29).to_string();
    let mut names: Vec<String> = daily.iter().map(|d| d.instance.clone()).collect();
    names.sort();
    names.dedup();
    view.instances = names;
    let picked =
        |d: &&alcove_gateway::store::Daily| q.instance.is_empty() || d.instance == q.instance;
    view.bars = (0..30)
        .rev()
        .map(|n| {
            let day = day_before(n).to_string();
            let of_day = daily.iter().filter(picked).filter(|d| d.day == day);
            views::DayBar {
                parts: vec![
                    of_day.clone().map(|d| d.prompt_tokens).sum(),
                    of_day.map(|d| d.completion_tokens).sum(),
                ],
                day,
            }
        })
        .collect();
    view.days = daily
        .iter()
        .rev()
        .filter(picked)
        .filter(|d| d.day >= since_chart)
        .map(|d| views::UsageRow {
            day: d.day.clone(),
            instance: d.instance.clone(),
            requests: d.requests,
            prompt: d.prompt_tokens,
            completion: d.completion_tokens,
        })
        .collect();
    let filter = Some(q.instance.as_str()).filter(|i| !i.is_empty());
    let records = store
        .tenant_records(&t, filter, q.before.unwrap_or(i64::MAX), LOG_PAGE)
        .await
        .map_err(store_failure)?;
    if records.len() as i64 == LOG_PAGE
        && let Some(last) = records.last()
    {
        let mut href = format!("/t/{t}/usage?before={}", last.at_ms);
        if let Some(i) = filter {
            href.push_str(&format!("&instance={}", form_urlencoded_value(i)));
        }
        view.older = Some(href);
    }
    view.log = records
        .into_iter()
        .map(|r| views::LogRow {
            at: jiff::Timestamp::from_millisecond(r.at_ms)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            instance: r.instance,
            model: r.model,
            endpoint: r.endpoint,
            status: r.status,
            prompt: r.prompt_tokens,
            completion: r.completion_tokens,
            latency_ms: r.latency_ms,
        })
        .collect();
    Ok(html(StatusCode::OK, &user.frame("Usage"), views::usage(&view)))
}

/// GPU seconds per day of `days` (of one instance, when `instance` is set), from the billing
/// records at Stripe, and their total in words; `None` without them (not billed, or not
/// connected): the page then shows tokens only.
async fn gpu_days(
    app: &App,
    tn: &Tenant,
    instance: &str,
    days: &[jiff::civil::Date],
) -> Option<(Vec<views::DayBar>, String)> {
    let customer = tn.status.as_ref()?.billing.as_ref()?.customer_id.clone()?;
    let records = app.billing.as_ref()?.records(&customer).await;
    let (payments, items) = records
        .map_err(
            |e| tracing::warn!(tenant = %tn.name_any(), error = %e, "reading GPU time from Stripe"),
        )
        .ok()?;
    let mut seconds: std::collections::BTreeMap<jiff::civil::Date, i64> = Default::default();
    for e in crate::billing::history(&customer, &payments, &items) {
        if let crate::billing::Entry::Charge {
            day,
            instance: i,
            usage: crate::billing::Usage::Gpu { millis },
            ..
        } = e
            && (instance.is_empty() || i == instance)
        {
            *seconds.entry(day).or_default() += millis / 1000;
        }
    }
    let bars: Vec<views::DayBar> = days
        .iter()
        .map(|d| views::DayBar {
            day: d.to_string(),
            parts: vec![seconds.get(d).copied().unwrap_or(0)],
        })
        .collect();
    let total = views::gpu_words(bars.iter().map(|b| b.parts[0]).sum());
    Some((bars, total))
}

fn form_urlencoded_value(v: &str) -> String {
    serde_urlencoded::to_string([("v", v)]).unwrap_or_default().trim_start_matches("v=").to_string()
}

/// "Export your data": the archive (export.rs), streamed as it is read.
pub async fn export(State(app): State<Arc<App>>, user: Signed, Path(t): Path<String>) -> Answer {
    let tn = tenant_or_deleted(&app, &user, &t)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tracing::info!(tenant = %t, "data export started from the dashboard");
    let sources = crate::export::Sources {
        cluster: app.cluster.clone(),
        gateway: app.gateway.clone(),
        usage: app.usage.clone(),
        billing: app.billing.clone(),
        clock: app.clock.clone(),
    };
    tokio::spawn(crate::export::write(sources, user.email.clone(), tn, tx));
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let day = app.clock.now().strftime("%Y-%m-%d").to_string();
    let disposition = format!("attachment; filename=\"alcove-export-{t}-{day}.tar\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// The request log as CSV (the same filter), streamed a thousand records at a time.
pub async fn usage_csv(
    State(app): State<Arc<App>>,
    user: Signed,
    Path(t): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Answer {
    tenant(&app, &user, &t)?;
    if app.usage.is_none() {
        return Err(Failure::NotFound);
    }
    let pages = futures::stream::unfold(Some(i64::MAX), move |before| {
        let (app, t, instance) = (app.clone(), t.clone(), q.instance.clone());
        async move {
            let before = before?;
            let store = app.usage.as_ref()?;
            let filter = Some(instance.as_str()).filter(|i| !i.is_empty());
            match store.tenant_records(&t, filter, before, 1000).await {
                Err(e) => {
                    tracing::warn!(error = %e, "reading the request log");
                    Some((Err(std::io::Error::other("the usage store failed")), None))
                }
                Ok(records) if records.is_empty() => None,
                Ok(records) => {
                    let next =
                        (records.len() == 1000).then(|| records.last().map(|r| r.at_ms)).flatten();
                    let chunk: String = records.iter().map(crate::export::usage_line).collect();
                    Some((Ok(bytes::Bytes::from(chunk)), next))
                }
            }
        }
    });
    use futures::StreamExt as _;
    let first: Result<bytes::Bytes, std::io::Error> =
        Ok(bytes::Bytes::from_static(crate::export::USAGE_HEADER.as_bytes()));
    let body = futures::stream::iter([first]).chain(pages);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"alcove-requests.csv\""),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
