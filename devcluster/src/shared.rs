//! What the server, the kubelet and the proxy share: the cluster's state and configuration
//! (`Shared`) and the answer type of a handler (`Reply`).

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::error::ApiError;
use crate::meta;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::state::State;

/// Everything the handlers share.
pub struct Shared {
    pub state: Mutex<State>,
    pub config: Config,
    pub auth: Authenticator,
    pub metrics: Metrics,
    pub runtime: Arc<Runtime>,
    pub server_address: String,
    pub(crate) fault_rng: Mutex<u64>,
    pub(crate) audit: Option<Mutex<std::io::LineWriter<std::fs::File>>>,
}

impl Shared {
    pub fn new(config: Config, runtime: Arc<Runtime>, server_address: String) -> Shared {
        let seed = config.faults.seed.max(1);
        let audit = config.audit_log.as_ref().map(|p| {
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("audit log {}: {e}", p.display()));
            Mutex::new(std::io::LineWriter::new(f))
        });
        Shared {
            audit,
            state: Mutex::new(State::new(config.watch_history, config.watch_history_age)),
            auth: Authenticator::new(&config.tokens),
            metrics: Metrics::default(),
            runtime,
            server_address,
            fault_rng: Mutex::new(seed),
            config,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// xorshift: a cheap, seeded die for fault injection.
    pub(crate) fn roll(&self) -> f64 {
        let mut s = self.fault_rng.lock().unwrap_or_else(|p| p.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % 1_000_000) as f64 / 1_000_000.0
    }
}

/// An answer, with the warnings to put in `Warning` headers.
pub struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Body,
    pub(crate) content_type: String,
    pub(crate) warnings: Vec<String>,
    pub(crate) retry_after: Option<u64>,
    pub(crate) headers: HeaderMap,
}

impl Reply {
    pub(crate) fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body: Body::from(v.to_string()),
            content_type: "application/json".into(),
            warnings: Vec::new(),
            retry_after: None,
            headers: HeaderMap::new(),
        }
    }

    pub(crate) fn with_body(status: StatusCode, body: Body, content_type: &str) -> Reply {
        Reply {
            status,
            body,
            content_type: content_type.into(),
            warnings: Vec::new(),
            retry_after: None,
            headers: HeaderMap::new(),
        }
    }

    pub fn plain(s: String) -> Reply {
        Reply::text(200, s)
    }

    pub fn stream_text(body: Body) -> Reply {
        Reply::with_body(StatusCode::OK, body, "text/plain")
    }

    /// A proxied response: status, headers and streaming body as the backend sent them.
    pub fn proxied(status: StatusCode, headers: HeaderMap, body: Body) -> Reply {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        Reply { status, body, content_type, warnings: Vec::new(), retry_after: None, headers }
    }

    pub(crate) fn error(e: &ApiError) -> Reply {
        let mut r = Reply::json(e.code, &e.to_status());
        r.retry_after = e.retry_after;
        r
    }

    pub(crate) fn text(status: u16, s: impl Into<String>) -> Reply {
        Reply::with_body(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            Body::from(s.into()),
            "text/plain; charset=utf-8",
        )
    }

    pub(crate) fn into_response(self) -> Response {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        for (k, v) in &self.headers {
            resp.headers_mut().append(k, v.clone());
        }
        if let Ok(ct) = HeaderValue::from_str(&self.content_type) {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        resp.headers_mut()
            .insert("audit-id", HeaderValue::from_str(&meta::new_uid()).expect("uuid is ascii"));
        for w in &self.warnings {
            let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
            if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
                resp.headers_mut().append(header::WARNING, v);
            }
        }
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::error(&e)
    }
}

/// A streaming body fed by a task through a channel.
pub fn async_stream_body<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(f(tx));
    let stream =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    Body::from_stream(stream)
}
