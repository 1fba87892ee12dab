//! The public endpoint: who is calling (key → instance), may they (availability, limits), then
//! the request goes to the instance and the answer comes back, metered on the way.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;

use crate::directory::{Availability, Directory, Route};
use crate::error::ApiError;
use crate::limits::{FailureLimiter, Limiter, Quota};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::store::Record;
use crate::upstream::Upstream;
use crate::usage::{EventSplitter, Usage, inspect_event, prepare};

/// Limits on what passes through.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub max_body_bytes: usize,
    /// For the instance's status and headers, and between two chunks of a stream.
    pub upstream_timeout: Duration,
    /// Most bytes of a non-streamed answer (it is read whole to find its usage).
    pub max_response_bytes: usize,
}

pub struct Gateway {
    pub directory: RwLock<Arc<Directory>>,
    pub limiter: Mutex<Limiter>,
    pub failures: Mutex<FailureLimiter>,
    pub metrics: Metrics,
    pub upstream: Upstream,
    pub bounds: Bounds,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    pub recorder: Recorder,
    pub clock: Arc<dyn alcove_clock::Clock>,
    pub activity: Arc<crate::publish::Activity>,
    /// Bumped whenever the directory is rebuilt: what a request waiting for a waking instance
    /// watches.
    pub directory_version: tokio::sync::watch::Sender<u64>,
    /// How long a request waits for an idle instance to wake.
    pub wake_timeout: Duration,
    /// Per-instance host names `<instance>.<tenant>.<domain>`: such a host admits only its own
    /// instance's key.
    pub host_domain: Option<String>,
}

/// The (instance, tenant) a host name `<instance>.<tenant>.<domain>` names, if it does.
pub fn host_selects<'a>(host: &'a str, domain: &str) -> Option<(&'a str, &'a str)> {
    let host = host
        .rsplit_once(':')
        .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    let prefix = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (instance, tenant) = prefix.split_once('.')?;
    (!instance.is_empty() && !tenant.is_empty() && !tenant.contains('.'))
        .then_some((instance, tenant))
}

impl Gateway {
    /// Wakes an idle instance and waits (within the bound) until it is no longer idle or
    /// starting; the route as it then is.
    async fn wake(&self, route: Arc<Route>, idle_since: &str, key: &str) -> Arc<Route> {
        self.activity.wake(&route, idle_since);
        let mut version = self.directory_version.subscribe();
        let deadline = tokio::time::Instant::now() + self.wake_timeout;
        let mut current = route;
        loop {
            match &current.availability {
                Availability::Idle(_) | Availability::NotReady(_) => {}
                _ => return current,
            }
            if tokio::time::timeout_at(deadline, version.changed()).await.is_err() {
                return current;
            }
            let found = self.directory.read().unwrap_or_else(|p| p.into_inner()).lookup(key);
            match found {
                Some(r) => current = r,
                None => return current,
            }
        }
    }
}

/// 16 random bytes as hex: names one request in the client's `x-request-id` and its record.
fn new_request_id() -> String {
    let mut b = [0u8; 16];
    // The system's random source does not fail on Linux; a zero id would still be unique enough
    // within its millisecond for a record's primary key not to matter more than the answer.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An address block (`10.0.0.0/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max),
            None => Some(max),
        }
        .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v) => u32::from(v) as u128,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let shift = width - self.prefix as u32;
        if shift >= 128 {
            return true;
        }
        bits(self.addr) >> shift == bits(ip) >> shift
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded.into_iter().rev().find(|ip| !is_trusted(*ip)).unwrap_or(peer)
}

/// The key from `Authorization: Bearer …` or `X-Api-Key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim()).filter(|k| !k.is_empty());
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty())
}

/// The metrics name of a path: which of the instance's endpoints it is.
fn endpoint_of(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v1/")?;
    if rest.split('/').any(|s| s == ".." || s == "." || s.is_empty()) {
        return None;
    }
    Some(match rest.split('/').next()? {
        "chat" if rest == "chat/completions" => "chat/completions",
        "completions" if rest == "completions" => "completions",
        "embeddings" if rest == "embeddings" => "embeddings",
        "models" => "models",
        "conversations" => "conversations",
        _ => return None,
    })
}

pub async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let request_id = new_request_id();
    let client = client_address(peer.ip(), req.headers(), &gw.trusted_proxies);
    let path = req.uri().path().to_string();
    let Some(endpoint) = endpoint_of(&path) else {
        return ApiError::not_found(req.method().as_str(), &path).into_response();
    };
    if let Some(wait) =
        gw.failures.lock().unwrap_or_else(|p| p.into_inner()).blocked(client, started)
    {
        return ApiError::too_many_failures(wait.as_secs_f64().ceil() as u64).into_response();
    }
    let Some(key) = presented_key(req.headers()).map(str::to_string) else {
        gw.metrics.auth_failures.inc();
        return ApiError::missing_key().into_response();
    };
    let route = gw.directory.read().unwrap_or_else(|p| p.into_inner()).lookup(&key);
    // A per-instance host name admits only that instance's key.
    let named = gw.host_domain.as_deref().and_then(|domain| {
        let host = req.headers().get(header::HOST)?.to_str().ok()?.to_ascii_lowercase();
        host_selects(&host, domain).map(|(i, t)| (i.to_string(), t.to_string()))
    });
    let route =
        route.filter(|r| named.as_ref().is_none_or(|(i, t)| *i == r.instance && *t == r.tenant));
    let Some(route) = route else {
        gw.metrics.auth_failures.inc();
        gw.failures.lock().unwrap_or_else(|p| p.into_inner()).failed(client, started);
        return ApiError::invalid_key().into_response();
    };
    let route = match &route.availability {
        Availability::Idle(since) => {
            let since = since.clone();
            gw.wake(route, &since, &key).await
        }
        _ => route,
    };
    let refused = match &route.availability {
        Availability::Ready => None,
        Availability::SuspendedBySpec => Some(ApiError::suspended_by_spec(&route.instance)),
        Availability::CreditExhausted => Some(ApiError::credit_exhausted(&route.instance)),
        Availability::NotReady(why) => Some(ApiError::not_ready(&route.instance, why, 5)),
        Availability::Idle(_) => Some(ApiError::not_ready(&route.instance, "waking up", 5)),
    };
    if let Some(e) = refused {
        return answered(&gw, &route, endpoint, &request_id, started, e.into_response());
    }
    let admitted = gw.limiter.lock().unwrap_or_else(|p| p.into_inner()).admit(
        &route.key_id,
        route.limits,
        started,
    );
    let quota = match admitted {
        Ok(q) => q,
        Err(r) => {
            gw.metrics
                .rate_limited
                .with_label_values(&[route.tenant.as_str(), route.instance.as_str(), r.what])
                .inc();
            let mut e =
                ApiError::rate_limited(r.what, r.limit, r.retry_after.as_secs_f64().ceil() as u64);
            for (k, v) in r.quota.headers() {
                e = e.with_header(header::HeaderName::from_static(k), v);
            }
            return answered(&gw, &route, endpoint, &request_id, started, e.into_response());
        }
    };
    let mut resp = match forward(&gw, &route, endpoint, &key, req, &request_id, started).await {
        Ok(r) => r,
        // The instance was not reached or did not answer in time: accounted here.
        Err(e) => return answered(&gw, &route, endpoint, &request_id, started, e.into_response()),
    };
    add_quota_headers(resp.headers_mut(), &quota);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Accounts a request answered without the instance's usage (refused, or the instance failed):
/// its metrics and its record, with no tokens.
fn answered(
    gw: &Arc<Gateway>,
    route: &Arc<Route>,
    endpoint: &'static str,
    request_id: &str,
    started: Instant,
    mut resp: Response,
) -> Response {
    let mut meter = Meter::new(gw, route, endpoint, request_id, route.served_name.clone(), started);
    meter.status = resp.status().as_u16();
    drop(meter.finish());
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn add_quota_headers(headers: &mut HeaderMap, quota: &Quota) {
    for (k, v) in quota.headers() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
}

async fn forward(
    gw: &Arc<Gateway>,
    route: &Arc<Route>,
    endpoint: &'static str,
    key: &str,
    req: Request,
    request_id: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    let method = req.method().clone();
    let path_and_query =
        req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let limit = gw.bounds.max_body_bytes;
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(ApiError::too_large(limit));
    }
    let body = http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(None, "The request body could not be read.")
            }
        })?
        .to_bytes();
    let takes_model = matches!(endpoint, "chat/completions" | "completions" | "embeddings");
    let mut model = route.served_name.clone();
    let (body, stream, client_wants_usage) = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) if method == Method::POST => {
            let p = prepare(v, &route.served_name, takes_model);
            if let Some(m) = p.body.get("model").and_then(|m| m.as_str()) {
                // Bounded: it is stored, and a client could send anything.
                model = m.chars().take(128).collect();
            }
            (Bytes::from(p.body.to_string()), p.stream, p.client_wants_usage)
        }
        // Not a JSON object: the instance says what is wrong with it.
        _ => (body, false, false),
    };
    let timeout = gw.bounds.upstream_timeout;
    let resp = gw.upstream.send(route, method, &path_and_query, key, body, timeout).await?;
    let resp = no_pod_behind(resp, route, timeout).await?;
    let mut meter = Meter::new(gw, route, endpoint, request_id, model, started);
    meter.status = resp.status().as_u16();
    let is_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let (parts, upstream_body) = resp.into_parts();
    if stream && is_stream {
        meter.streaming = true;
        let body = metered_stream(upstream_body, meter, client_wants_usage, timeout);
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = tokio::time::timeout(
        timeout,
        http_body_util::Limited::new(upstream_body, gw.bounds.max_response_bytes).collect(),
    )
    .await
    .map_err(|_| ApiError::upstream_timeout(timeout.as_secs()))?
    .map_err(|e| ApiError::upstream(format!("the instance's answer could not be read: {e}")))?
    .to_bytes();
    if parts.status == StatusCode::OK {
        meter.usage = serde_json::from_slice(&bytes).ok().as_ref().and_then(Usage::of);
    }
    meter.finish_durably().await;
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// A 503 that is a Kubernetes `Status` came from the API server's service proxy, not from the
/// instance: no pod serves it (it went idle or stopped a moment before the directory heard).
/// The client gets the gateway's own answer, in OpenAI's shape with a `Retry-After`, as for any
/// instance that is not ready; its retry finds the instance idle and wakes it.
async fn no_pod_behind(
    resp: Response,
    route: &Route,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if resp.status() != StatusCode::SERVICE_UNAVAILABLE || !json {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes =
        tokio::time::timeout(timeout, http_body_util::Limited::new(body, 64 << 10).collect())
            .await
            .map_err(|_| ApiError::upstream_timeout(timeout.as_secs()))?
            .map_err(|e| {
                ApiError::upstream(format!("the instance's answer could not be read: {e}"))
            })?
            .to_bytes();
    let status: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    if status.as_ref().is_some_and(|s| s["kind"] == "Status" && s["apiVersion"] == "v1") {
        return Err(ApiError::not_ready(&route.instance, "no pod serves it", 5));
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// How long an answer's last byte waits for its usage record's commit.
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Accounts one request once: at its last byte, or when the client goes away first.
struct Meter {
    gw: Arc<Gateway>,
    route: Arc<Route>,
    endpoint: &'static str,
    request_id: String,
    model: String,
    status: u16,
    started: Instant,
    usage: Option<Usage>,
    /// The answer is being streamed: if the meter is dropped before the end, the client left.
    streaming: bool,
    done: bool,
}

impl Meter {
    fn new(
        gw: &Arc<Gateway>,
        route: &Arc<Route>,
        endpoint: &'static str,
        request_id: &str,
        model: String,
        started: Instant,
    ) -> Meter {
        Meter {
            gw: gw.clone(),
            route: route.clone(),
            endpoint,
            request_id: request_id.to_string(),
            model,
            status: 0,
            started,
            usage: None,
            streaming: false,
            done: false,
        }
    }

    /// Accounts it (once); the receiver resolves when its record is committed.
    fn finish(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if std::mem::replace(&mut self.done, true) {
            return None;
        }
        let (tenant, instance) = (self.route.tenant.as_str(), self.route.instance.as_str());
        let status = if self.status == 0 { "000".to_string() } else { self.status.to_string() };
        self.gw
            .metrics
            .requests
            .with_label_values(&[tenant, instance, self.endpoint, status.as_str()])
            .inc();
        let latency = self.started.elapsed();
        self.gw
            .metrics
            .duration
            .with_label_values(&[tenant, instance, self.endpoint])
            .observe(latency.as_secs_f64());
        self.gw.activity.touch(&self.route);
        let usage = self.usage.unwrap_or_default();
        let committed = self.gw.recorder.record(Record {
            request_id: std::mem::take(&mut self.request_id),
            at_ms: self.gw.clock.now().as_millisecond(),
            tenant: tenant.to_string(),
            namespace: self.route.namespace.clone(),
            instance: instance.to_string(),
            instance_uid: self.route.uid.clone(),
            key_id: self.route.key_id.clone(),
            model: std::mem::take(&mut self.model),
            endpoint: self.endpoint.to_string(),
            status: i64::from(self.status),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms: latency.as_millis() as i64,
        });
        if let Some(u) = self.usage {
            let m = &self.gw.metrics.tokens;
            m.with_label_values(&[tenant, instance, "prompt"])
                .inc_by(u.prompt_tokens.max(0) as u64);
            m.with_label_values(&[tenant, instance, "completion"])
                .inc_by(u.completion_tokens.max(0) as u64);
            self.gw.limiter.lock().unwrap_or_else(|p| p.into_inner()).spend(
                &self.route.key_id,
                self.route.limits,
                u.total(),
                Instant::now(),
            );
        }
        committed
    }

    /// `finish`; when the answer carries tokens (what is billed), its last byte waits until the
    /// record is committed (bounded: a store that is down keeps the record queued, not the
    /// answer). Answers without tokens do not wait: nothing is billed by them, and the wait
    /// would cost the gateway's own ceiling most.
    async fn finish_durably(&mut self) {
        let billed = self.usage.is_some_and(|u| u.total() > 0);
        if let Some(committed) = self.finish().filter(|_| billed) {
            let _ = tokio::time::timeout(COMMIT_WAIT, committed).await;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.streaming && !self.done {
            // nginx's "client closed request": the record says the answer was cut short.
            self.status = 499;
        }
        drop(self.finish());
    }
}

/// The instance's event stream, passed on event by event; the usage chunk is read, and dropped
/// when the client did not ask for it. Dropping this body (the client left) drops the upstream
/// connection, which stops the generation.
fn metered_stream(upstream: Body, meter: Meter, client_wants_usage: bool, idle: Duration) -> Body {
    struct S {
        upstream: axum::body::BodyDataStream,
        splitter: EventSplitter,
        meter: Meter,
        ended: bool,
    }
    let state = S {
        upstream: upstream.into_data_stream(),
        splitter: EventSplitter::default(),
        meter,
        ended: false,
    };
    let stream = futures::stream::unfold(state, move |mut s| async move {
        loop {
            if s.ended {
                return None;
            }
            let next = match tokio::time::timeout(idle, s.upstream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    s.ended = true;
                    drop(s.meter.finish());
                    let e: Box<dyn std::error::Error + Send + Sync> =
                        format!("the instance sent nothing for {} s", idle.as_secs()).into();
                    return Some((Err(e), s));
                }
            };
            let events = match next {
                Some(Ok(chunk)) => s.splitter.push(&chunk),
                Some(Err(e)) => {
                    s.ended = true;
                    drop(s.meter.finish());
                    let e: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
                    return Some((Err(e), s));
                }
                None => {
                    s.ended = true;
                    let rest = s.splitter.finish();
                    s.meter.finish_durably().await;
                    return rest.map(|r| (Ok(Bytes::from(r)), s));
                }
            };
            let mut out = Vec::new();
            for event in events {
                let (usage, usage_only) = inspect_event(&event);
                if usage.is_some() {
                    s.meter.usage = usage;
                }
                if event.starts_with(b"data: [DONE]") {
                    // The answer is complete: a client that closes now has not left early.
                    s.meter.finish_durably().await;
                }
                if !usage_only || client_wants_usage {
                    out.extend_from_slice(&event);
                }
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), s));
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.1.1.1".parse().unwrap());
        let lb: IpAddr = "10.9.9.9".parse().unwrap();
        let outsider: IpAddr = "5.6.7.8".parse().unwrap();
        assert_eq!(client_address(lb, &h, &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_address(outsider, &h, &trusted), outsider, "spoofed header ignored");
        assert_eq!(client_address(lb, &HeaderMap::new(), &trusted), lb);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("::1".parse::<Cidr>().unwrap().contains("::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn host_names_select_an_instance_under_the_domain_only() {
        let d = "ai.example.com";
        assert_eq!(host_selects("chat.acme.ai.example.com", d), Some(("chat", "acme")));
        assert_eq!(host_selects("chat.acme.ai.example.com:8443", d), Some(("chat", "acme")));
        assert_eq!(host_selects("ai.example.com", d), None, "the shared endpoint");
        assert_eq!(host_selects("acme.ai.example.com", d), None);
        assert_eq!(host_selects("x.chat.acme.ai.example.com", d), None);
        assert_eq!(host_selects("chat.acme.evil-ai.example.com", d), None);
        assert_eq!(host_selects("chat.acmeai.example.com", d), None);
    }

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", " k ".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(presented_key(&h), None);
    }

    #[test]
    fn only_the_instances_endpoints_pass() {
        assert_eq!(endpoint_of("/v1/chat/completions"), Some("chat/completions"));
        assert_eq!(endpoint_of("/v1/models/chat"), Some("models"));
        assert_eq!(endpoint_of("/v1/conversations/c-1"), Some("conversations"));
        assert_eq!(endpoint_of("/v1/chat/other"), None);
        assert_eq!(endpoint_of("/metrics"), None);
        assert_eq!(endpoint_of("/v1/../metrics"), None);
        assert_eq!(endpoint_of("/v1/models/../../metrics"), None);
    }

    mod properties {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::prelude::*;

        use super::*;

        fn segment() -> impl Strategy<Value = &'static str> {
            proptest::sample::select(vec![
                "v1",
                "chat",
                "completions",
                "embeddings",
                "models",
                "conversations",
                "metrics",
                "..",
                ".",
                "",
                "%2e%2e",
                "x",
            ])
        }

        proptest! {
            /// A block contains exactly the addresses that share its first `prefix` bits.
            #[test]
            fn cidrs_contain_exactly_their_prefix(
                (a, b, p) in (any::<u32>(), any::<u32>(), 0u8..=32),
                (x, y, q) in (any::<u128>(), any::<u128>(), 0u8..=128),
            ) {
                let v4: Cidr = format!("{}/{p}", Ipv4Addr::from(a)).parse().unwrap();
                let mask4 = u32::MAX.checked_shl(32 - p as u32).unwrap_or(0);
                prop_assert_eq!(v4.contains(Ipv4Addr::from(b).into()), a & mask4 == b & mask4);
                let v6: Cidr = format!("{}/{q}", Ipv6Addr::from(x)).parse().unwrap();
                let mask6 = u128::MAX.checked_shl(128 - q as u32).unwrap_or(0);
                prop_assert_eq!(v6.contains(Ipv6Addr::from(y).into()), x & mask6 == y & mask6);
                prop_assert!(!v4.contains(Ipv6Addr::from(y).into()));
                prop_assert!(!v6.contains(Ipv4Addr::from(b).into()));
            }

            /// No path that climbs out of `/v1/`, or hides a segment, is passed as an endpoint.
            #[test]
            fn no_traversal_is_an_endpoint(segments in proptest::collection::vec(segment(), 0..6)) {
                let path = format!("/{}", segments.join("/"));
                if endpoint_of(&path).is_some() {
                    let rest = path.strip_prefix("/v1/").unwrap();
                    let hidden = |s: &str| s.is_empty() || s == "." || s == "..";
                    prop_assert!(!rest.split('/').any(hidden), "{path}");
                }
            }

            /// A host selects an instance only when it is `<instance>.<tenant>.<domain>`, with
            /// or without a port.
            #[test]
            fn hosts_select_only_their_own_names(
                labels in proptest::collection::vec("[a-z0-9-]{0,4}|\\.|:[0-9]{0,3}", 0..6),
            ) {
                let host = labels.concat();
                let domain = "ai.example.com";
                let port = |p: &str| {
                    p.strip_prefix(':').is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
                };
                let under = [format!("{host}.{domain}"), format!("{host}{domain}")];
                for candidate in [host.clone()].into_iter().chain(under) {
                    if let Some((instance, tenant)) = host_selects(&candidate, domain) {
                        let name = format!("{instance}.{tenant}.{domain}");
                        let rest = candidate.strip_prefix(&name);
                        prop_assert!(rest.is_some_and(|r| r.is_empty() || port(r)), "{candidate}");
                        prop_assert!(!instance.is_empty() && !tenant.is_empty());
                    }
                }
            }
        }
    }
}
