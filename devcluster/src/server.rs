//! The HTTP front: request parsing (as kube-apiserver's RequestInfoFactory), authentication,
//! impersonation, RBAC, fault injection, metrics, and dispatch to the REST semantics in `api`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use crate::api::{self, DeleteOpts, Deleted, FieldValidation, PatchType, WriteOpts};
use crate::auth::{self, Attributes, UserInfo};
use crate::discovery;
use crate::error::{ApiError, Qualified, success_status};
use crate::meta::{self, At};
use crate::metrics::RequestLabels;
use crate::openapi;
use crate::resources::ResourceInfo;
use crate::selectors::{FieldSelector, LabelSelector, selectable_fields};
use crate::shared::{Reply, Shared, async_stream_body};
use crate::state::EventType;
use crate::table::{self, IncludeObject};

/// What a request asks for (`request.RequestInfo`).
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub resource_request: bool,
    pub path: String,
    pub verb: String,
    pub group: String,
    pub version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// Path after `/proxy/` for proxy subresources.
    pub rest: String,
    pub watch: bool,
}

fn query_map(q: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn truthy(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true" | "1"))
}

pub fn parse_request(method: &Method, path: &str, query: &BTreeMap<String, String>) -> RequestInfo {
    let mut info = RequestInfo { path: path.to_string(), ..Default::default() };
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let (group, version, mut rest): (&str, &str, Vec<&str>) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", v, rest.to_vec()),
        ["apis", g, v, rest @ ..] => (g, v, rest.to_vec()),
        _ => {
            info.verb = method.as_str().to_lowercase();
            return info;
        }
    };
    if rest.is_empty() {
        info.verb = method.as_str().to_lowercase();
        return info;
    }
    info.resource_request = true;
    info.group = group.to_string();
    info.version = version.to_string();
    if rest[0] == "watch" {
        info.watch = true;
        rest.remove(0);
    }
    if rest.first() == Some(&"namespaces") && rest.len() >= 2 {
        let ns = rest[1];
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            info.namespace = ns.to_string();
            rest.drain(0..2);
        } else {
            info.namespace = ns.to_string();
        }
    }
    if let Some(r) = rest.first() {
        info.resource = r.to_string();
    }
    if let Some(n) = rest.get(1) {
        info.name = n.to_string();
    }
    if let Some(s) = rest.get(2) {
        info.subresource = s.to_string();
    }
    if rest.len() > 3 {
        info.rest = rest[3..].join("/");
    }
    if info.resource == "namespaces" && !info.name.is_empty() {
        info.namespace = info.name.clone();
    }
    if truthy(query.get("watch")) {
        info.watch = true;
    }
    info.verb = match *method {
        Method::GET | Method::HEAD if info.watch => "watch",
        Method::GET | Method::HEAD if info.name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if info.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
    .to_string();
    info
}

/// What representation the client accepts.
#[derive(Clone, Copy, PartialEq, Debug)]
enum As {
    Object,
    Table,
    PartialMetadata,
}

fn negotiate(headers: &HeaderMap) -> Result<As, ApiError> {
    let accept =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let mut json_ok = false;
    for part in accept.split(',') {
        let part = part.trim();
        let media = part.split(';').next().unwrap_or_default().trim();
        let params: BTreeMap<&str, &str> =
            part.split(';').skip(1).filter_map(|p| p.trim().split_once('=')).collect();
        if !matches!(media, "application/json" | "*/*" | "application/*" | "application/yaml" | "")
        {
            continue;
        }
        match params.get("as") {
            Some(&"Table") if params.get("g") == Some(&"meta.k8s.io") => return Ok(As::Table),
            Some(&"PartialObjectMetadata" | &"PartialObjectMetadataList")
                if params.get("g") == Some(&"meta.k8s.io") =>
            {
                return Ok(As::PartialMetadata);
            }
            Some(_) => continue,
            None => json_ok = true,
        }
        if json_ok {
            return Ok(As::Object);
        }
    }
    if json_ok {
        Ok(As::Object)
    } else {
        Err(ApiError::not_acceptable(format!(
            "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {accept})"
        )))
    }
}

fn metrics_verb(ri: &RequestInfo, method: &Method, headers: &HeaderMap) -> String {
    if !ri.resource_request {
        return method.as_str().to_string();
    }
    match ri.verb.as_str() {
        "watch" => "WATCH".into(),
        "list" => "LIST".into(),
        "get" => "GET".into(),
        "create" => "POST".into(),
        "update" => "PUT".into(),
        "patch" => {
            let ct =
                headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if ct.starts_with("application/apply-patch") { "APPLY".into() } else { "PATCH".into() }
        }
        "delete" => "DELETE".into(),
        "deletecollection" => "DELETECOLLECTION".into(),
        other => other.to_uppercase(),
    }
}

/// One audit event (level Metadata, stage ResponseComplete) as a JSON line.
fn audit_event(
    audit: &Mutex<std::io::LineWriter<std::fs::File>>,
    ri: &RequestInfo,
    method: &Method,
    uri: String,
    user: Option<&UserInfo>,
    impersonated: Option<&UserInfo>,
    code: u16,
) {
    use std::io::Write;
    let mut object_ref =
        json!({"resource": ri.resource, "apiGroup": ri.group, "apiVersion": ri.version});
    for (k, v) in
        [("namespace", &ri.namespace), ("name", &ri.name), ("subresource", &ri.subresource)]
    {
        if !v.is_empty() {
            object_ref[k] = v.as_str().into();
        }
    }
    let mut event = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "stage": "ResponseComplete",
        "requestURI": uri,
        "verb": ri.verb,
        "method": method.as_str(),
        "user": user.map(UserInfo::to_json).unwrap_or(Value::Null),
        "objectRef": object_ref,
        "responseStatus": {"code": code},
        "stageTimestamp": jiff::Timestamp::now().to_string(),
    });
    // As kube-apiserver writes it: `user` is who authenticated, `impersonatedUser` whom they
    // acted as.
    if let Some(i) = impersonated {
        event["impersonatedUser"] = i.to_json();
    }
    let mut w = audit.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(w, "{event}");
}

/// The single entry point: every request goes through here.
pub async fn handle(AxState(shared): AxState<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = query_map(parts.uri.query());
    let ri = parse_request(&parts.method, &path, &query);
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    let mverb = metrics_verb(&ri, &parts.method, &parts.headers);
    let (reply, user, impersonated) =
        dispatch(&shared, &parts.method, &parts.headers, &ri, &query, body).await;
    if let (Some(audit), true) = (&shared.audit, ri.resource_request) {
        audit_event(
            audit,
            &ri,
            &parts.method,
            parts.uri.to_string(),
            user.as_ref(),
            impersonated.as_ref(),
            reply.status.as_u16(),
        );
    }
    if ri.resource_request {
        shared.metrics.record(RequestLabels {
            verb: mverb,
            group: ri.group.clone(),
            version: ri.version.clone(),
            resource: ri.resource.clone(),
            subresource: ri.subresource.clone(),
            scope: if !ri.name.is_empty() {
                "resource".into()
            } else if !ri.namespace.is_empty() {
                "namespace".into()
            } else {
                "cluster".into()
            },
            code: reply.status.as_u16(),
            dry_run,
        });
    }
    reply.into_response()
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

async fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    ri: &RequestInfo,
    query: &BTreeMap<String, String>,
    body: Body,
) -> (Reply, Option<UserInfo>, Option<UserInfo>) {
    let requester = match shared
        .auth
        .authenticate(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
    {
        Ok(u) => u,
        Err(e) => return (e.into(), None, None),
    };
    let user = match auth::impersonate(&shared.lock(), requester.clone(), headers) {
        Ok(u) => u,
        Err(e) => return (e.into(), Some(requester), None),
    };
    let impersonated = (user != requester).then(|| user.clone());
    let attrs = Attributes {
        verb: if ri.resource_request { ri.verb.clone() } else { method.as_str().to_lowercase() },
        resource_request: ri.resource_request,
        group: ri.group.clone(),
        resource: ri.resource.clone(),
        subresource: ri.subresource.clone(),
        namespace: ri.namespace.clone(),
        name: ri.name.clone(),
        path: ri.path.clone(),
    };
    let reply = authorized(shared, method, headers, ri, query, body, &user, &attrs).await;
    (reply, Some(requester), impersonated)
}

#[allow(clippy::too_many_arguments)]
async fn authorized(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    ri: &RequestInfo,
    query: &BTreeMap<String, String>,
    body: Body,
    user: &UserInfo,
    attrs: &Attributes,
) -> Reply {
    if !auth::authorize(&shared.lock(), user, attrs).allowed {
        return auth::forbidden(user, attrs).into();
    }
    if !ri.resource_request {
        return non_resource(shared, headers, ri);
    }
    // The service proxy is a data path (in a cluster, the gateway dials Services itself), not
    // the control plane the faults stand for.
    let faults = &match ri.subresource.as_str() {
        "proxy" => crate::config::Faults::default(),
        _ => shared.config.faults.for_user(&user.name),
    };
    if faults.error_rate > 0.0 && shared.roll() < faults.error_rate {
        return ApiError::internal("injected fault").into();
    }
    if faults.throttle_rate > 0.0 && shared.roll() < faults.throttle_rate {
        return ApiError::too_many_requests("injected throttling, please try again later", 1)
            .into();
    }
    let Some(info) = shared.lock().registry.get(&ri.group, &ri.version, &ri.resource) else {
        return ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page();
    };
    if !ri.namespace.is_empty() && !info.namespaced && ri.resource != "namespaces" {
        return ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page();
    }
    match resource(shared, method, headers, ri, query, &info, user, body).await {
        Ok(r) => r,
        Err(e) => e.into(),
    }
}

impl ApiError {
    /// The plain 404 kube-apiserver answers for a path it does not serve.
    fn into_404_page(self) -> Reply {
        Reply::error(&ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
            retry_after: None,
        })
    }
}

fn non_resource(shared: &Arc<Shared>, headers: &HeaderMap, ri: &RequestInfo) -> Reply {
    let aggregated = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2"));
    let st = shared.lock();
    let path = ri.path.trim_end_matches('/');
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["version"] => Reply::json(200, &version_info()),
        ["healthz"] | ["livez"] | ["readyz"] => Reply::text(200, "ok"),
        ["healthz", _] | ["livez", _] | ["readyz", _] => Reply::text(200, "ok"),
        ["metrics"] => {
            let objects: Vec<(String, usize)> = st
                .collections()
                .into_iter()
                .map(|gr| (gr.to_string(), st.count(&gr, None)))
                .collect();
            let text = shared.metrics.render(&objects);
            let mut r = Reply::text(200, text);
            r.content_type = "text/plain; version=0.0.4; charset=utf-8".into();
            r
        }
        ["api"] => {
            if aggregated {
                let mut r = Reply::json(200, &discovery::aggregated(&st.registry, true));
                r.content_type = discovery::AGGREGATED_V2.into();
                r
            } else {
                Reply::json(200, &discovery::api_versions(&shared.server_address))
            }
        }
        ["apis"] => {
            if aggregated {
                let mut r = Reply::json(200, &discovery::aggregated(&st.registry, false));
                r.content_type = discovery::AGGREGATED_V2.into();
                r
            } else {
                Reply::json(200, &discovery::api_group_list(&st.registry))
            }
        }
        ["apis", g] => match discovery::api_group(&st.registry, g) {
            Some(v) => Reply::json(200, &v),
            None => ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page(),
        },
        ["api", v] => match discovery::resource_list(&st.registry, "", v) {
            Some(v) => Reply::json(200, &v),
            None => ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page(),
        },
        ["apis", g, v] => match discovery::resource_list(&st.registry, g, v) {
            Some(v) => Reply::json(200, &v),
            None => ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page(),
        },
        ["openapi", "v3"] => Reply::json(200, &openapi::root(&st.registry)),
        ["openapi", "v3", "api", v] => match openapi::group_version_document(&st.registry, "", v) {
            Some(d) => Reply::json(200, &d),
            None => ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page(),
        },
        ["openapi", "v3", "apis", g, v] => {
            match openapi::group_version_document(&st.registry, g, v) {
                Some(d) => Reply::json(200, &d),
                None => {
                    ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page()
                }
            }
        }
        _ => ApiError::not_found(Qualified { group: "", resource: "" }, "").into_404_page(),
    }
}

pub fn version_info() -> Value {
    let (major, minor) = crate::config::SERVER_VERSION
        .trim_start_matches('v')
        .split_once('.')
        .unwrap_or(("1", "33"));
    let minor = minor.split('.').next().unwrap_or("33");
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": crate::config::SERVER_VERSION,
        "gitCommit": "devcluster",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a (Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

const MAX_BODY: usize = 3 * 1024 * 1024;

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large("Request entity too large: limit is 3145728"))
}

fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = ct.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}"))),
        "application/yaml" => {
            let s = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
            serde_saphyr::from_str(s)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        "application/vnd.kubernetes.protobuf" => {
            crate::protobuf::decode(bytes).map_err(|e| ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: e,
                details: None,
                retry_after: None,
            })
        }
        _ => Err(ApiError::unsupported_media_type(&[
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ])),
    }
}

fn write_opts(
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Result<WriteOpts, ApiError> {
    let manager = query.get("fieldManager").cloned().unwrap_or_else(|| {
        // As kube-apiserver: the user agent's program name.
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or(ua).chars().take(128).collect())
            .unwrap_or_default()
    });
    if manager.len() > 128 {
        return Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    Ok(WriteOpts {
        manager,
        dry_run,
        validation: FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?,
        force: truthy(query.get("force")),
    })
}

fn shape(info: &ResourceInfo, obj: &Value, want: As) -> Value {
    let v = api::present(info, obj);
    match want {
        As::PartialMetadata => table::partial_metadata(&v),
        _ => v.into_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    ri: &RequestInfo,
    query: &BTreeMap<String, String>,
    info: &Arc<ResourceInfo>,
    user: &UserInfo,
    body: Body,
) -> Result<Reply, ApiError> {
    let ns = if info.namespaced { ri.namespace.as_str() } else { "" };
    let want = negotiate(headers)?;
    match ri.subresource.as_str() {
        "" | "status" => {}
        "log" if info.kind == "Pod" => {
            return crate::kubelet::logs(shared, ns, &ri.name, query).await;
        }
        "proxy" if matches!(info.kind.as_str(), "Pod" | "Service") => {
            return crate::proxy::proxy(
                shared, method, headers, info, ns, &ri.name, &ri.rest, query, body,
            )
            .await;
        }
        "token" if info.kind == "ServiceAccount" && ri.verb == "create" => {
            return token_request(shared, ns, &ri.name, headers, body).await;
        }
        "binding" if info.kind == "Pod" && ri.verb == "create" => {
            return pod_binding(shared, ns, &ri.name, headers, body).await;
        }
        "eviction" if info.kind == "Pod" && ri.verb == "create" => {
            let mut st = shared.lock();
            api::delete(&mut st, info, ns, &ri.name, &DeleteOpts::default())?;
            return Ok(Reply::json(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ));
        }
        "finalize" if info.kind == "Namespace" && ri.verb == "update" => {
            let bytes = read_body(body).await?;
            let obj = parse_body(headers, &bytes)?;
            let mut st = shared.lock();
            let mut current =
                (*st.get(&info.storage_resource(), "", &ri.name).ok_or_else(|| {
                    ApiError::not_found(Qualified { group: "", resource: "namespaces" }, &ri.name)
                })?)
                .clone();
            current["spec"]["finalizers"] =
                obj.at("/spec/finalizers").cloned().unwrap_or(json!([]));
            let w = api::update(
                &mut st,
                info,
                "",
                &ri.name,
                current,
                &write_opts(query, headers)?,
                false,
            )?;
            return Ok(Reply::json(200, &w.object));
        }
        "scale" => return Err(ApiError::method_not_allowed()),
        _ => {
            return Err(ApiError::not_found(Qualified { group: "", resource: "" }, "").into_plain());
        }
    }
    let status_write = ri.subresource == "status";
    if info.virtual_only {
        if ri.verb != "create" {
            return Err(ApiError::method_not_allowed());
        }
        let bytes = read_body(body).await?;
        let obj = parse_body(headers, &bytes)?;
        let st = shared.lock();
        let answer = auth::review(&st, &shared.auth, &info.kind, user, obj)?;
        return Ok(Reply::json(201, &answer));
    }
    match ri.verb.as_str() {
        "get" => {
            let found = shared.lock().get(&info.storage_resource(), ns, &ri.name);
            let obj = found.ok_or_else(|| {
                ApiError::not_found(
                    Qualified { group: &info.group, resource: &info.plural },
                    &ri.name,
                )
            })?;
            if want == As::Table {
                let view = api::present(info, &obj).into_owned();
                let t = table::table(
                    info,
                    &[view],
                    meta::resource_version(&obj),
                    None,
                    IncludeObject::parse(query.get("includeObject").map(String::as_str)),
                    true,
                );
                return Ok(Reply::json(200, &t));
            }
            Ok(Reply::json(200, &shape(info, &obj, want)))
        }
        "list" => list(shared, info, ns, query, want),
        "watch" => watch(
            shared,
            info,
            ns,
            &ri.name,
            query,
            want,
            shared.config.faults.for_user(&user.name),
        ),
        "create" => {
            if status_write {
                return Err(ApiError::method_not_allowed());
            }
            let bytes = read_body(body).await?;
            let obj = parse_body(headers, &bytes)?;
            let opts = write_opts(query, headers)?;
            let mut st = shared.lock();
            if info.group == RBAC_GROUP {
                auth::check_escalation(&st, user, &info.plural, ns, &obj)?;
            }
            let w = api::create(&mut st, info, ns, obj, &opts)?;
            // Rendering the reply needs no lock.
            drop(st);
            let mut r = Reply::json(201, &shape(info, &w.object, want));
            r.warnings = w.warnings;
            Ok(r)
        }
        "update" => {
            let bytes = read_body(body).await?;
            let obj = parse_body(headers, &bytes)?;
            let opts = write_opts(query, headers)?;
            let mut st = shared.lock();
            if info.group == RBAC_GROUP {
                auth::check_escalation(&st, user, &info.plural, ns, &obj)?;
            }
            let w = api::update(&mut st, info, ns, &ri.name, obj, &opts, status_write)?;
            drop(st);
            let mut r = Reply::json(200, &shape(info, &w.object, want));
            r.warnings = w.warnings;
            Ok(r)
        }
        "patch" => {
            let ct =
                headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let ptype = PatchType::from_content_type(ct).ok_or_else(|| {
                ApiError::unsupported_media_type(&[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                    "application/strategic-merge-patch+json",
                ])
            })?;
            let bytes = read_body(body).await?;
            let patch = if ptype == PatchType::Apply {
                api::parse_apply_body(&bytes)?
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
            };
            let mut opts = write_opts(query, headers)?;
            if ptype != PatchType::Apply && query.get("force").is_some() {
                return Err(ApiError::bad_request(
                    "force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            if ptype == PatchType::Apply && query.get("fieldManager").is_none() {
                opts.manager = String::new();
            }
            // A patch of an existing object is worked out outside the store's lock and committed
            // under it if the object is still that version, so the lock is held for the write
            // alone. RBAC objects (checked for escalation against the store), creating applies,
            // and patches that lost the race a few times take the lock throughout, as before.
            if info.group != RBAC_GROUP {
                for _ in 0..api::OPTIMISTIC_TRIES {
                    let Some(old) = shared.lock().get(&info.storage_resource(), ns, &ri.name)
                    else {
                        break;
                    };
                    let prepared = api::prepare_patch(
                        info,
                        &ri.name,
                        old,
                        ptype,
                        &patch,
                        &opts,
                        status_write,
                    )?;
                    let written = api::commit_if_current(&mut shared.lock(), info, prepared);
                    if let Some(w) = written {
                        let mut r = Reply::json(200, &shape(info, &w.object, want));
                        r.warnings = w.warnings;
                        return Ok(r);
                    }
                }
            }
            let mut st = shared.lock();
            // An apply that creates the object is a create too, and is authorized as one.
            if ptype == PatchType::Apply
                && !status_write
                && st.get(&info.storage_resource(), ns, &ri.name).is_none()
            {
                let create = Attributes {
                    verb: "create".into(),
                    resource_request: true,
                    group: ri.group.clone(),
                    resource: ri.resource.clone(),
                    namespace: ns.into(),
                    name: ri.name.clone(),
                    ..Default::default()
                };
                if !auth::authorize(&st, user, &create).allowed {
                    return Err(auth::forbidden(user, &create));
                }
            }
            if info.group == RBAC_GROUP {
                let preview = api::patch(
                    &mut st,
                    info,
                    ns,
                    &ri.name,
                    ptype,
                    &patch,
                    &WriteOpts { dry_run: true, ..opts.clone() },
                    status_write,
                )?;
                auth::check_escalation(&st, user, &info.plural, ns, &preview.object)?;
            }
            let w = api::patch(&mut st, info, ns, &ri.name, ptype, &patch, &opts, status_write)?;
            drop(st);
            let mut r =
                Reply::json(if w.created { 201 } else { 200 }, &shape(info, &w.object, want));
            r.warnings = w.warnings;
            Ok(r)
        }
        "delete" => {
            let bytes = read_body(body).await?;
            let dopts = delete_opts(query, &bytes)?;
            let deleted = api::delete(&mut shared.lock(), info, ns, &ri.name, &dopts)?;
            match deleted {
                Deleted::Pending(obj) => Ok(Reply::json(200, &shape(info, &obj, want))),
                Deleted::Gone(obj) => {
                    if info.is_custom()
                        || matches!(info.kind.as_str(), "Pod" | "Namespace" | "Node" | "Service")
                    {
                        Ok(Reply::json(200, &shape(info, &obj, want)))
                    } else {
                        Ok(Reply::json(
                            200,
                            &success_status(&info.group, &info.plural, &ri.name, meta::uid(&obj)),
                        ))
                    }
                }
            }
        }
        "deletecollection" => {
            let bytes = read_body(body).await?;
            let dopts = delete_opts(query, &bytes)?;
            let labels = LabelSelector::parse(
                query.get("labelSelector").map(String::as_str).unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            let fields = parse_field_selector(info, query)?;
            let mut st = shared.lock();
            let targets: Vec<String> = st
                .list(&info.storage_resource(), if ns.is_empty() { None } else { Some(ns) })
                .iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .map(|o| meta::name(o).to_string())
                .collect();
            let mut deleted = Vec::new();
            for name in targets {
                if let Ok(d) = api::delete(&mut st, info, ns, &name, &dopts) {
                    let obj = match d {
                        Deleted::Gone(o) | Deleted::Pending(o) => o,
                    };
                    deleted.push(api::present(info, &obj).into_owned());
                }
            }
            Ok(Reply::json(
                200,
                &json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": {"resourceVersion": st.current_rv().to_string()}, "items": deleted}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

impl ApiError {
    fn into_plain(self) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
            retry_after: None,
        }
    }
}

fn delete_opts(query: &BTreeMap<String, String>, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let b: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let grace = query
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
        .or_else(|| b["gracePeriodSeconds"].as_i64());
    let mut propagation = query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| b["propagationPolicy"].as_str().map(str::to_string));
    if propagation.is_none()
        && let Some(orphan) = query
            .get("orphanDependents")
            .map(|v| v == "true")
            .or_else(|| b["orphanDependents"].as_bool())
    {
        propagation = Some(if orphan { "Orphan" } else { "Background" }.into());
    }
    Ok(DeleteOpts {
        grace_period: grace,
        propagation,
        precondition_uid: b.at("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
        precondition_rv: b
            .at("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: query.get("dryRun").is_some_and(|v| v == "All")
            || b["dryRun"].as_array().is_some_and(|a| a.iter().any(|x| x == "All")),
    })
}

fn parse_field_selector(
    info: &ResourceInfo,
    query: &BTreeMap<String, String>,
) -> Result<FieldSelector, ApiError> {
    let fs =
        FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or_default())
            .map_err(ApiError::bad_request)?;
    let allowed = selectable_fields(&info.group, &info.plural);
    for f in fs.fields() {
        if !(f == "metadata.name" || f == "metadata.namespace" || allowed.contains(&f)) {
            return Err(ApiError::bad_request(format!("field label not supported: {f}")));
        }
    }
    Ok(fs)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

fn list(
    shared: &Arc<Shared>,
    info: &Arc<ResourceInfo>,
    ns: &str,
    query: &BTreeMap<String, String>,
    want: As,
) -> Result<Reply, ApiError> {
    let labels =
        LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())
            .map_err(ApiError::bad_request)?;
    let fields = parse_field_selector(info, query)?;
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let st = shared.lock();
    let ns_filter = if ns.is_empty() { None } else { Some(ns) };
    let (rv, candidates) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| {
                ApiError::bad_request("continue key is not valid: illegal base64 data")
            })?;
            let t: ContinueToken = serde_json::from_slice(&bytes)
                .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
            (t.rv, st.list_after(&info.storage_resource(), ns_filter, &(t.ns, t.name)))
        }
        None => {
            let objs = match fields.name() {
                // A get-by-name list (kubectl wait, kube-rs) needs no scan.
                Some(name) if ns_filter.is_some() || !info.namespaced => {
                    st.get(&info.storage_resource(), ns, name).into_iter().collect()
                }
                _ => st.list(&info.storage_resource(), ns_filter),
            };
            (st.current_rv(), objs)
        }
    };
    // Filtering and rendering a large list needs no lock.
    drop(st);
    let mut items = Vec::new();
    let mut cont = None;
    let mut remaining = 0usize;
    let mut matching = candidates.into_iter().filter(|o| labels.matches(o) && fields.matches(o));
    for o in matching.by_ref() {
        if limit > 0 && items.len() == limit {
            remaining = 1;
            let last: &Value = items.last().expect("limit > 0");
            let token = ContinueToken {
                rv,
                ns: meta::namespace(last).to_string(),
                name: meta::name(last).to_string(),
            };
            cont = Some(
                base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(&token).expect("token serializes")),
            );
            let _ = o;
            break;
        }
        items.push(api::present(info, &o).into_owned());
    }
    if cont.is_some() {
        remaining += matching.count();
    }
    match want {
        As::Table => {
            let t = table::table(
                info,
                &items,
                &rv.to_string(),
                cont.as_deref(),
                IncludeObject::parse(query.get("includeObject").map(String::as_str)),
                true,
            );
            Ok(Reply::json(200, &t))
        }
        As::PartialMetadata => {
            let items: Vec<Value> = items.iter().map(table::partial_metadata).collect();
            let mut l = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items});
            if let Some(c) = cont {
                l["metadata"]["continue"] = c.into();
                l["metadata"]["remainingItemCount"] = remaining.into();
            }
            Ok(Reply::json(200, &l))
        }
        As::Object => {
            let mut l = json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items});
            if let Some(c) = cont {
                l["metadata"]["continue"] = c.into();
                l["metadata"]["remainingItemCount"] = remaining.into();
            }
            Ok(Reply::json(200, &l))
        }
    }
}

/// Renders one watch event line.
fn event_line(kind: &str, object: &Value) -> Bytes {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        r#type: &'a str,
        object: &'a Value,
    }
    let mut s = serde_json::to_vec(&Line { r#type: kind, object }).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn watch(
    shared: &Arc<Shared>,
    info: &Arc<ResourceInfo>,
    ns: &str,
    name: &str,
    query: &BTreeMap<String, String>,
    want: As,
    faults: crate::config::Faults,
) -> Result<Reply, ApiError> {
    let labels =
        LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())
            .map_err(ApiError::bad_request)?;
    let mut fields = parse_field_selector(info, query)?;
    if !name.is_empty() {
        fields = FieldSelector::parse(&format!("metadata.name={name}"))
            .map_err(ApiError::bad_request)?;
    }
    let bookmarks = truthy(query.get("allowWatchBookmarks"));
    let send_initial = truthy(query.get("sendInitialEvents"));
    let timeout =
        query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();
    let gr = info.storage_resource();
    let ns_filter = if ns.is_empty() { None } else { Some(ns.to_string()) };
    let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
    let matches = {
        let labels = labels.clone();
        let fields = fields.clone();
        let ns_filter = ns_filter.clone();
        move |o: &Value| {
            ns_filter.as_deref().is_none_or(|n| n == meta::namespace(o))
                && labels.matches(o)
                && fields.matches(o)
        }
    };

    let mut initial: Vec<Bytes> = Vec::new();
    let info_c = info.clone();
    let render = move |kind: &str, o: &Value| -> Bytes {
        let v = api::present(&info_c, o);
        match want {
            As::Table => {
                let v = v.into_owned();
                let rv = meta::resource_version(&v);
                event_line(
                    kind,
                    &table::table(&info_c, std::slice::from_ref(&v), rv, None, include, false),
                )
            }
            As::PartialMetadata => event_line(kind, &table::partial_metadata(&v)),
            As::Object => event_line(kind, &v),
        }
    };
    // The initial list is taken under the lock (consistent with `current`) and rendered after.
    let mut listed = Vec::new();
    let mut end_bookmark = None;
    let (start_rv, mut rx, backlog) = {
        let st = shared.lock();
        let rx = st.subscribe();
        let current = st.current_rv();
        if send_initial || rv_param.is_empty() || rv_param == "0" {
            listed = st.list(&gr, ns_filter.as_deref());
            if send_initial && bookmarks {
                end_bookmark = Some(event_line(
                    "BOOKMARK",
                    &json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": {"resourceVersion": current.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}),
                ));
            }
            (current, rx, Vec::new())
        } else {
            let rv: u64 = rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {rv_param}"))
            })?;
            if faults.force_gone_on_resume {
                let gone = ApiError::too_old(rv, current);
                initial.push(event_line("ERROR", &gone.to_status()));
                (current, rx, Vec::new())
            } else {
                match st.events_since(rv) {
                    Ok(backlog) => (rv, rx, backlog),
                    Err(oldest) => {
                        initial
                            .push(event_line("ERROR", &ApiError::too_old(rv, oldest).to_status()));
                        // Nothing follows an expired watch.
                        let body = Body::from_stream(futures::stream::iter(
                            initial.into_iter().map(Ok::<_, std::convert::Infallible>),
                        ));
                        return Ok(Reply::with_body(StatusCode::OK, body, "application/json"));
                    }
                }
            }
        }
    };
    for o in listed.iter().filter(|o| matches(o)) {
        initial.push(render("ADDED", o));
    }
    initial.extend(end_bookmark);
    let expired =
        faults.force_gone_on_resume && !(send_initial || rv_param.is_empty() || rv_param == "0");
    let shared_c = shared.clone();
    let info_c = info.clone();
    let bookmark_interval = shared.config.bookmark_interval;
    let stream = async_stream_body(move |tx| async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let cut_at = faults.watch_cut_after.map(|t| tokio::time::Instant::now() + t);
        let mut sent: u64 = 0;
        let mut last_rv = start_rv;
        let handle_event = |e: &crate::state::Event, last_rv: &mut u64| -> Option<Bytes> {
            if e.rv <= *last_rv {
                return None;
            }
            // Any write is progress, so bookmarks carry the store's version as kube-apiserver's
            // do: a watch of a quiet kind would otherwise resume from a version long compacted
            // away, get 410 Gone and re-list (at 10,000 instances every quiet watch did).
            *last_rv = e.rv;
            if e.gr != gr {
                return None;
            }
            let now = matches(&e.object);
            let before = e.old.as_deref().is_some_and(&matches);
            let kind = match (e.kind, before, now) {
                (EventType::Deleted, true, _) => "DELETED",
                (EventType::Deleted, false, _) => return None,
                (EventType::Added, _, true) => "ADDED",
                (EventType::Modified, true, true) => "MODIFIED",
                (EventType::Modified, false, true) => "ADDED",
                // No longer selected: the watcher sees it leave.
                (EventType::Modified, true, false) => "DELETED",
                _ => return None,
            };
            Some(render(kind, &e.object))
        };
        for e in backlog {
            if let Some(line) = handle_event(&e, &mut last_rv) {
                if tx.send(line).await.is_err() {
                    return;
                }
                sent += 1;
                shared_c.metrics.watch_event(&info_c.group, &info_c.plural);
            }
        }
        let mut ticker = tokio::time::interval(bookmark_interval);
        ticker.tick().await;
        loop {
            if faults.watch_cut_events.is_some_and(|n| sent >= n) {
                return;
            }
            let sleep_until = [deadline, cut_at].into_iter().flatten().min();
            tokio::select! {
                _ = async { match sleep_until { Some(t) => tokio::time::sleep_until(t).await, None => futures::future::pending().await } } => return,
                _ = ticker.tick(), if bookmarks => {
                    let b = json!({"kind": info_c.kind, "apiVersion": info_c.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &b)).await.is_err() {
                        return;
                    }
                }
                r = rx.recv() => match r {
                    Ok(e) => {
                        if let Some(line) = handle_event(&e, &mut last_rv) {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                            sent += 1;
                            shared_c.metrics.watch_event(&info_c.group, &info_c.plural);
                        }
                    }
                    // A watcher that fell behind is cut; it resumes from its last version.
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Reply::with_body(StatusCode::OK, stream, "application/json"))
}

async fn token_request(
    shared: &Arc<Shared>,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Reply, ApiError> {
    let bytes = read_body(body).await?;
    let req: Value = if bytes.is_empty() { json!({}) } else { parse_body(headers, &bytes)? };
    let uid = {
        let st = shared.lock();
        let sa = st
            .get(&crate::resources::GroupResource::core("serviceaccounts"), ns, name)
            .ok_or_else(|| {
                ApiError::not_found(Qualified { group: "", resource: "serviceaccounts" }, name)
            })?;
        meta::uid(&sa).to_string()
    };
    let token = shared.auth.issue_service_account_token(ns, name, &uid);
    let seconds = req.at("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
    let exp = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let mut out = req.clone();
    out["apiVersion"] = "authentication.k8s.io/v1".into();
    out["kind"] = "TokenRequest".into();
    out["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    if out.get("spec").is_none() {
        out["spec"] = json!({"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": seconds});
    }
    out["status"] = json!({"token": token, "expirationTimestamp": meta::format_time(exp)});
    Ok(Reply::json(201, &out))
}

async fn pod_binding(
    shared: &Arc<Shared>,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Reply, ApiError> {
    let bytes = read_body(body).await?;
    let binding = parse_body(headers, &bytes)?;
    let node = binding.at("/target/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut st = shared.lock();
    crate::scheduler::bind(&mut st, ns, name, &node)
        .map_err(|e| ApiError::conflict(Qualified { group: "", resource: "pods" }, name, &e))?;
    Ok(Reply::json(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
