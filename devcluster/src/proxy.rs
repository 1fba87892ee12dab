//! The `services/<name>:<port>/proxy/...` and `pods/<name>:<port>/proxy/...` subresources: the
//! request goes to a ready endpoint of the service (or to the pod) and the response streams back
//! unchanged (so server-sent events arrive as they are produced). As in kube-apiserver, the
//! client's `Authorization` header is consumed by the API server and not forwarded.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::error::{ApiError, Qualified};
use crate::meta::{self, At};
use crate::resources::{GroupResource, ResourceInfo};
use crate::shared::{Reply, Shared};

/// Splits `name`, `name:port` or `scheme:name:port`.
fn split_name(raw: &str) -> (&str, Option<&str>) {
    let parts: Vec<&str> = raw.split(':').collect();
    match parts.as_slice() {
        [name] => (name, None),
        [name, port] => (name, Some(port)),
        [_, name, port] => (name, Some(port)),
        _ => (raw, None),
    }
}

fn unavailable(message: String) -> ApiError {
    ApiError::service_unavailable(message)
}

/// (pod uid, container port) the request should reach.
fn target(
    shared: &Shared,
    info: &ResourceInfo,
    ns: &str,
    raw_name: &str,
) -> Result<(String, i64), ApiError> {
    let (name, port) = split_name(raw_name);
    let st = shared.lock();
    if info.kind == "Pod" {
        let pod = st
            .get(&GroupResource::core("pods"), ns, name)
            .ok_or_else(|| ApiError::not_found(Qualified { group: "", resource: "pods" }, name))?;
        let ports: Vec<&Value> = pod
            .at("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .collect();
        let cp = match port {
            Some(p) => match p.parse::<i64>() {
                Ok(n) => n,
                Err(_) => ports
                    .iter()
                    .find(|x| x["name"] == p)
                    .and_then(|x| x["containerPort"].as_i64())
                    .ok_or_else(|| unavailable(format!("no port named {p:?} in pod {name}")))?,
            },
            None => ports.first().and_then(|x| x["containerPort"].as_i64()).unwrap_or(80),
        };
        return Ok((meta::uid(&pod).to_string(), cp));
    }
    let svc = st
        .get(&GroupResource::core("services"), ns, name)
        .ok_or_else(|| ApiError::not_found(Qualified { group: "", resource: "services" }, name))?;
    let svc_ports: Vec<Value> =
        svc.at("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let svc_port = match port {
        Some(p) => svc_ports.iter().find(|sp| {
            sp["name"] == p || sp["port"].as_i64().map(|n| n.to_string()).as_deref() == Some(p)
        }),
        None => svc_ports.first(),
    }
    .cloned()
    .ok_or_else(|| {
        unavailable(format!(
            "no service port {:?} found for service \"{name}\"",
            port.unwrap_or_default()
        ))
    })?;
    let ep = st.get(&GroupResource::core("endpoints"), ns, name);
    let subsets = ep.as_deref().and_then(|e| e["subsets"].as_array().cloned()).unwrap_or_default();
    for subset in subsets {
        let port_name = svc_port["name"].as_str().unwrap_or_default();
        let ep_port = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_i64());
        let Some(ep_port) = ep_port else { continue };
        if let Some(addr) = subset["addresses"].as_array().and_then(|a| a.first())
            && let Some(uid) = addr.at("/targetRef/uid").and_then(Value::as_str)
        {
            return Ok((uid.to_string(), ep_port));
        }
    }
    Err(unavailable(format!("no endpoints available for service \"{name}\"")))
}

#[allow(clippy::too_many_arguments)]
pub async fn proxy(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    info: &ResourceInfo,
    ns: &str,
    raw_name: &str,
    rest: &str,
    query: &BTreeMap<String, String>,
    body: Body,
) -> Result<Reply, ApiError> {
    let (uid, container_port) = target(shared, info, ns, raw_name)?;
    let Some(host_port) = shared.runtime.host_port(&uid, container_port) else {
        return Err(unavailable(format!(
            "error trying to reach service: dial tcp 127.0.0.1:{container_port}: connect: connection refused"
        )));
    };
    let mut uri = format!("http://127.0.0.1:{host_port}/{rest}");
    if !query.is_empty() {
        let q: String =
            form_urlencoded::Serializer::new(String::new()).extend_pairs(query.iter()).finish();
        uri.push('?');
        uri.push_str(&q);
    }
    let mut req = hyper::Request::builder().method(method.clone()).uri(&uri);
    for (k, v) in headers {
        let name = k.as_str();
        if name == "authorization"
            || name.starts_with("impersonate-")
            || name == "host"
            || name == "connection"
            || name == "transfer-encoding"
        {
            continue;
        }
        req = req.header(k, v);
    }
    req = req.header(header::HOST, format!("127.0.0.1:{host_port}"));
    let bytes = body.collect().await.map_err(|e| ApiError::bad_request(e.to_string()))?.to_bytes();
    let req = req
        .body(http_body_util::Full::new(bytes))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let client: Client<_, http_body_util::Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(req)
        .await
        .map_err(|e| unavailable(format!("error trying to reach service: {e}")))?;
    let (parts, body) = resp.into_parts();
    let mut out_headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        if k == header::CONNECTION || k == header::TRANSFER_ENCODING {
            continue;
        }
        out_headers.append(k, v.clone());
    }
    let status = StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok(Reply::proxied(status, out_headers, Body::new(body)))
}
