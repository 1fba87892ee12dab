//! How a request reaches its instance: straight to the instance's Service (the gateway runs in
//! the cluster), or through the Kubernetes API server's service proxy (the gateway runs beside a
//! cluster, as in `alcove up`). Either way the response body streams back as it arrives.
//!
//! The API server's proxy does not forward `Authorization`, so the key travels as `X-Api-Key`,
//! which the instance also accepts.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::directory::Route;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// To `status.endpoint`, the instance's Service (in-cluster DNS).
    Service,
    /// Through the API server's `services/<name>:http/proxy` subresource.
    ApiServer,
}

#[derive(Clone)]
pub enum Upstream {
    Service(Box<HttpClient<HttpConnector, Body>>),
    ApiServer(kube::Client),
}

/// Response headers that describe the hop, not the message.
const HOP_BY_HOP: [&str; 6] =
    ["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"];

impl Upstream {
    pub fn new(mode: Mode, client: kube::Client, connect_timeout: Duration) -> Upstream {
        match mode {
            Mode::ApiServer => Upstream::ApiServer(client),
            Mode::Service => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                Upstream::Service(Box::new(
                    HttpClient::builder(TokioExecutor::new()).build(connector),
                ))
            }
        }
    }

    /// Sends `body` to the instance at `path_and_query` (`/v1/...`) with the caller's key; the
    /// answer's status and headers within `timeout`, its body as it streams.
    pub async fn send(
        &self,
        route: &Route,
        method: Method,
        path_and_query: &str,
        key: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response<Body>, ApiError> {
        let key = HeaderValue::from_str(key).map_err(|_| {
            ApiError::bad_request(None, "The API key has characters a key never has.")
        })?;
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", key);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let sent = async {
            match self {
                Upstream::ApiServer(client) => {
                    let uri = format!(
                        "/api/v1/namespaces/{}/services/{}:http/proxy{path_and_query}",
                        route.namespace, route.instance
                    );
                    let mut req = Request::builder().method(method).uri(uri);
                    *req.headers_mut().expect("a fresh builder") = headers;
                    let req = req
                        .body(kube::client::Body::from(body))
                        .map_err(|e| ApiError::upstream(format!("bad upstream request: {e}")))?;
                    let resp = client.send(req).await.map_err(|e| {
                        ApiError::upstream(format!("the instance could not be reached: {e}"))
                    })?;
                    let (parts, body) = resp.into_parts();
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
                Upstream::Service(client) => {
                    let base = route
                        .endpoint
                        .as_deref()
                        .map(|e| e.trim_end_matches('/').trim_end_matches("/v1"))
                        .ok_or_else(|| ApiError::upstream("the instance has no endpoint yet"))?;
                    let mut req =
                        Request::builder().method(method).uri(format!("{base}{path_and_query}"));
                    *req.headers_mut().expect("a fresh builder") = headers;
                    let req = req
                        .body(Body::from(body))
                        .map_err(|e| ApiError::upstream(format!("bad upstream request: {e}")))?;
                    let resp = client.request(req).await.map_err(|e| {
                        ApiError::upstream(format!("the instance could not be reached: {e}"))
                    })?;
                    let (parts, body) = resp.into_parts();
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
            }
        };
        let mut resp = tokio::time::timeout(timeout, sent)
            .await
            .map_err(|_| ApiError::upstream_timeout(timeout.as_secs()))??;
        for h in HOP_BY_HOP {
            resp.headers_mut().remove(h);
        }
        Ok(resp)
    }
}
