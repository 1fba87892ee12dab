//! Generic REST semantics shared by the HTTP handlers and the built-in controllers: create,
//! update, patch (merge, JSON, strategic, apply), delete with finalizers, grace periods and
//! propagation policies — the behaviour of kube-apiserver's generic registry and strategies.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::admission;
use crate::builtin;
use crate::error::{ApiError, FieldError, Qualified};
use crate::events;
use crate::fieldmanager::{self, Ownership, Scope};
use crate::meta::{self, At};
use crate::patch;
use crate::resources::{self, GroupResource, ResourceInfo};
use crate::state::State;
use crate::typeinfo::TypeInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<FieldValidation, ApiError> {
        match s.unwrap_or("Warn") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}. Supported values: Ignore, Strict, Warn"
            ))),
        }
    }
}

/// Options of one write.
#[derive(Clone, Debug)]
pub struct WriteOpts {
    pub manager: String,
    pub dry_run: bool,
    pub validation: FieldValidation,
    pub force: bool,
}

impl WriteOpts {
    /// A built-in controller's write.
    pub fn system(manager: &str) -> WriteOpts {
        WriteOpts {
            manager: manager.into(),
            dry_run: false,
            validation: FieldValidation::Ignore,
            force: true,
        }
    }
}

/// The outcome of a write.
pub struct Written {
    pub object: Arc<Value>,
    pub warnings: Vec<String>,
    pub created: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Options of one delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// What a delete did.
pub enum Deleted {
    /// The object is gone; its last state.
    Gone(Arc<Value>),
    /// Deletion started (finalizers or a grace period); the object as it is now.
    Pending(Arc<Value>),
}

fn qualified(info: &ResourceInfo) -> Qualified<'_> {
    Qualified { group: &info.group, resource: &info.plural }
}

pub fn type_info(info: &ResourceInfo) -> TypeInfo<'_> {
    match &info.crd {
        Some(crd) => TypeInfo::Custom { schema: &crd.schema },
        None => TypeInfo::Builtin { kind: &info.kind },
    }
}

/// Kinds that carry `metadata.generation`.
fn has_generation(info: &ResourceInfo) -> bool {
    info.is_custom()
        || matches!(
            info.group.as_str(),
            "apps"
                | "batch"
                | "policy"
                | "networking.k8s.io"
                | "apiextensions.k8s.io"
                | "discovery.k8s.io"
        )
}

fn is_core_events_view(info: &ResourceInfo) -> bool {
    info.storage.is_some() && info.group == "events.k8s.io"
}

/// Converts a stored object into the shape `info` serves (only events differ; the others are
/// borrowed, as every watcher renders every change).
pub fn present<'a>(info: &ResourceInfo, obj: &'a Value) -> Cow<'a, Value> {
    if is_core_events_view(info) { Cow::Owned(events::from_core(obj)) } else { Cow::Borrowed(obj) }
}

fn to_storage(info: &ResourceInfo, obj: Value) -> Value {
    if is_core_events_view(info) { events::to_core(&obj) } else { obj }
}

/// Checks `apiVersion`/`kind` of a request body, filling them when absent.
fn check_type(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    let want_av = info.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = want_av.clone().into(),
        Some(av) if av != want_av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        _ => {}
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = info.kind.clone().into(),
        Some(k) if k != info.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )));
        }
        _ => {}
    }
    Ok(())
}

/// Decodes the body as the kind: typed decoding for built-ins, pruning and defaulting for custom
/// resources. Unknown fields are refused, warned about or dropped per `fieldValidation`.
fn decode(
    info: &ResourceInfo,
    obj: Value,
    validation: FieldValidation,
    warnings: &mut Vec<String>,
    full: bool,
) -> Result<Value, ApiError> {
    let (mut out, mut unknown) = match &info.crd {
        Some(crd) => {
            let mut o = obj;
            let unknown = crd.prune_and_default(&mut o, full);
            (o, unknown)
        }
        // An applied configuration may be partial: required fields it omits are fine.
        None if !full => match builtin::normalize(&info.storage_resource().group, &info.kind, &obj)
        {
            Err(e) if e.contains("missing field") => (obj, Vec::new()),
            other => other.map_err(|e| {
                ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
                    kind = info.kind,
                    v = info.version
                ))
            })?,
        },
        // The storage form decides the type (events.k8s.io Events are stored as core Events).
        None => {
            builtin::normalize(&info.storage_resource().group, &info.kind, &obj).map_err(|e| {
                ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
                    kind = info.kind,
                    v = info.version
                ))
            })?
        }
    };
    // Metadata of custom resources is ObjectMeta like any other.
    if info.is_custom()
        && let Some(m) = out.get("metadata").cloned()
    {
        let typed: Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, _> =
            serde_json::from_value(m.clone());
        match typed {
            Ok(t) => {
                let back = serde_json::to_value(&t).unwrap_or(m.clone());
                if let (Some(a), Some(b)) = (m.as_object(), back.as_object()) {
                    for k in a.keys() {
                        if !b.contains_key(k) && !a[k].is_null() {
                            unknown.push(format!("metadata.{k}"));
                        }
                    }
                }
                out["metadata"] = back;
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
                    kind = info.kind,
                    v = info.version
                )));
            }
        }
    }
    unknown.retain(|u| !u.is_empty());
    if !unknown.is_empty() {
        match validation {
            FieldValidation::Strict => {
                let list: Vec<String> =
                    unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
                return Err(ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                    list.join(", "),
                    kind = info.kind,
                    v = info.version
                )));
            }
            FieldValidation::Warn => {
                warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")))
            }
            FieldValidation::Ignore => {}
        }
    }
    Ok(out)
}

fn validate(
    info: &ResourceInfo,
    obj: &Value,
    old: Option<&Value>,
    status_only: bool,
) -> Result<(), ApiError> {
    let mut errors: Vec<FieldError> = Vec::new();
    match &info.crd {
        Some(crd) => {
            let name = meta::name(obj);
            if name.is_empty() && obj.at("/metadata/generateName").is_none() {
                errors.push(FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                ));
            } else if !name.is_empty() && !meta::is_dns1123_subdomain(name) {
                errors.push(FieldError::invalid("metadata.name", &Value::from(name), "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
            }
            let mut schema_errors = crd.validate(obj, old);
            if status_only {
                schema_errors.retain(|e| e.field.starts_with("status"));
            }
            errors.extend(schema_errors);
        }
        None => errors.extend(builtin::validate(&info.group, &info.kind, obj, old)),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        let name = meta::name(obj);
        Err(ApiError::invalid(&info.group, &info.kind, name, errors))
    }
}

/// Generation increments when anything but metadata (and status, when it is a subresource)
/// changes.
fn bump_generation(info: &ResourceInfo, old: &Value, new: &mut Value) {
    if !has_generation(info) {
        return;
    }
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("metadata");
            if info.has_status() {
                m.remove("status");
            }
        }
        c
    };
    let generation = meta::generation(old).max(1);
    let next = if strip(old) != strip(new) { generation + 1 } else { generation };
    meta::set_meta(new, "generation", Some(next.into()));
}

/// Copies the fields the server owns from `old` into `new`.
fn keep_system_metadata(old: &Value, new: &mut Value) {
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let m = meta::metadata_mut(new);
    for k in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
        "selfLink",
    ] {
        match old_meta.get(k) {
            Some(v) => {
                m.insert(k.into(), v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    m.insert(
        "resourceVersion".into(),
        old_meta.get("resourceVersion").cloned().unwrap_or(Value::Null),
    );
}

/// Strategy resets: a main-resource write keeps the stored status, a status write keeps
/// everything but status.
fn reset_for_subresource(
    info: &ResourceInfo,
    old: &Value,
    new: Value,
    status_write: bool,
) -> Value {
    if status_write {
        let mut out = old.clone();
        match new.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                out.as_object_mut().map(|m| m.remove("status"));
            }
        }
        // Metadata changes are dropped, except managedFields, which record this write's owner.
        meta::set_meta(&mut out, "managedFields", new.at("/metadata/managedFields").cloned());
        out
    } else if info.has_status() && info.kind != "Node" {
        let mut out = new;
        match old.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                out.as_object_mut().map(|m| m.remove("status"));
            }
        }
        out
    } else {
        new
    }
}

/// Status of a CRD object as the apiextensions controllers set it.
fn crd_status(crd: &Value) -> Value {
    let now = meta::now_rfc3339();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == Value::Bool(true))
        .map(|v| v["name"].clone())
        .collect();
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": storage,
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
    })
}

/// Registers (or re-registers) the resources a CRD serves.
fn register_crd(st: &mut State, crd: &Value) {
    let group = crd["spec"]["group"].as_str().unwrap_or_default();
    let plural = crd.at("/spec/names/plural").and_then(Value::as_str).unwrap_or_default();
    st.registry.remove_group_resource(&GroupResource::new(group, plural));
    for info in resources::infos_from_crd(crd) {
        st.registry.insert(info);
    }
}

fn after_write(st: &mut State, info: &ResourceInfo, obj: &Value) {
    if info.group == "apiextensions.k8s.io" && info.kind == "CustomResourceDefinition" {
        register_crd(st, obj);
    }
}

fn store_new(st: &mut State, info: &ResourceInfo, obj: Value, dry_run: bool) -> Arc<Value> {
    if dry_run {
        return Arc::new(obj);
    }
    let stored = st.insert(&info.storage_resource(), obj);
    after_write(st, info, &stored);
    stored
}

fn store_replace(st: &mut State, info: &ResourceInfo, obj: Value, dry_run: bool) -> Arc<Value> {
    if dry_run {
        return Arc::new(obj);
    }
    let stored = st.replace(&info.storage_resource(), obj);
    after_write(st, info, &stored);
    stored
}

/// How the managed fields of a write are computed.
enum Managed {
    /// An ordinary write by this manager.
    Update,
    /// Already computed (server-side apply).
    Precomputed,
}

fn ownership<'a>(info: &'a ResourceInfo, status_write: bool, now: &'a str) -> Ownership<'a> {
    Ownership {
        ti: type_info(info),
        scope: if status_write {
            Scope::StatusOnly
        } else if info.has_status() && info.kind != "Node" {
            Scope::MainResource
        } else {
            Scope::Everything
        },
        api_version: if info.group.is_empty() { "v1" } else { "" },
        subresource: if status_write { "status" } else { "" },
        now,
    }
}

fn api_version_of(info: &ResourceInfo) -> String {
    info.api_version()
}

fn create_inner(
    st: &mut State,
    info: &ResourceInfo,
    namespace: &str,
    mut obj: Value,
    opts: &WriteOpts,
    managed: Managed,
) -> Result<Written, ApiError> {
    let mut warnings = Vec::new();
    check_type(info, &mut obj)?;
    if info.namespaced {
        match meta::namespace(&obj) {
            "" => meta::set_meta(&mut obj, "namespace", Some(namespace.into())),
            ns if ns != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
    } else {
        meta::set_meta(&mut obj, "namespace", None);
    }
    if meta::name(&obj).is_empty()
        && let Some(prefix) =
            obj.at("/metadata/generateName").and_then(Value::as_str).map(str::to_string)
    {
        meta::set_meta(
            &mut obj,
            "name",
            Some(format!("{prefix}{}", meta::random_suffix(5)).into()),
        );
    }
    let precomputed_managed = obj.at("/metadata/managedFields").cloned();
    let mut obj = decode(info, to_storage(info, obj), opts.validation, &mut warnings, true)?;
    let name = meta::name(&obj).to_string();
    {
        let m = meta::metadata_mut(&mut obj);
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            m.remove(k);
        }
        m.insert("uid".into(), meta::new_uid().into());
        m.insert("creationTimestamp".into(), meta::now_rfc3339().into());
        if has_generation(info) {
            m.insert("generation".into(), 1.into());
        } else {
            m.remove("generation");
        }
    }
    if info.has_status() && info.kind != "Node" {
        obj.as_object_mut().map(|m| m.remove("status"));
    }
    builtin::apply_defaults(&info.group, &info.kind, &mut obj, true);
    if info.kind == "Service" && info.group.is_empty() {
        assign_cluster_ip(st, &mut obj)?;
    }
    if info.kind == "CustomResourceDefinition" {
        obj["status"] = crd_status(&obj);
    }
    if info.kind == "Pod" && info.group.is_empty() {
        admission::limit_ranges(st, namespace, &mut obj).map_err(|msg| {
            ApiError::forbidden(format!("pods \"{name}\" is forbidden: {msg}"), "", "pods", &name)
        })?;
    }
    validate(info, &obj, None, false)?;
    admission::namespace_lifecycle(st, info, namespace, &name)?;
    if st.get(&info.storage_resource(), meta::namespace(&obj), &name).is_some() {
        return Err(ApiError::already_exists(qualified(info), &name));
    }
    admission::resource_quota(st, info, &obj)?;
    warnings.extend(admission::pod_security(st, info, &obj)?);
    let now = meta::now_rfc3339();
    match managed {
        Managed::Update => fieldmanager::update_managed(
            None,
            &mut obj,
            &opts.manager,
            &ownership(info, false, &now),
        ),
        Managed::Precomputed => {
            if let Some(m) = precomputed_managed {
                meta::set_meta(&mut obj, "managedFields", Some(m));
            }
        }
    }
    fix_managed_api_version(info, &mut obj);
    let stored = store_new(st, info, obj, opts.dry_run);
    Ok(Written { object: stored, warnings, created: true })
}

/// `managedFields[].apiVersion` is the API version the manager used.
fn fix_managed_api_version(info: &ResourceInfo, obj: &mut Value) {
    let av = api_version_of(info);
    if let Some(entries) = obj.pointer_mut("/metadata/managedFields").and_then(Value::as_array_mut)
    {
        for e in entries {
            if e["apiVersion"].as_str().is_none_or(str::is_empty)
                || !info.group.is_empty() && e["apiVersion"] == "v1"
            {
                e["apiVersion"] = av.clone().into();
            }
        }
    }
}

pub fn create(
    st: &mut State,
    info: &ResourceInfo,
    namespace: &str,
    obj: Value,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    create_inner(st, info, namespace, obj, opts, Managed::Update)
}

fn get_existing(
    st: &State,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
) -> Result<Arc<Value>, ApiError> {
    st.get(&info.storage_resource(), namespace, name)
        .ok_or_else(|| ApiError::not_found(qualified(info), name))
}

/// An update worked out from one version of the stored object (`old`) without the store:
/// `commit` writes it, and `commit_if_current` only while `old` is still the stored version.
pub struct Prepared {
    old: Arc<Value>,
    outcome: Outcome,
    warnings: Vec<String>,
    dry_run: bool,
}

enum Outcome {
    /// Nothing changed: no write, no new resourceVersion.
    Unchanged,
    /// The last finalizer of an object being deleted is gone: the object goes.
    Remove(Value),
    Replace(Value),
}

/// Writes a prepared update.
fn commit(st: &mut State, info: &ResourceInfo, p: Prepared) -> Written {
    let object = match p.outcome {
        Outcome::Unchanged => p.old,
        Outcome::Remove(new) if p.dry_run => Arc::new(new),
        Outcome::Remove(new) => st
            .remove(&info.storage_resource(), meta::namespace(&new), meta::name(&new))
            .unwrap_or_else(|| Arc::new(new)),
        Outcome::Replace(new) => store_replace(st, info, new, p.dry_run),
    };
    Written { object, warnings: p.warnings, created: false }
}

/// How many times a write prepared outside the store's lock is prepared again after another
/// write to the object came first, before the writer takes the lock throughout.
pub const OPTIMISTIC_TRIES: usize = 3;

/// Writes a prepared update if the object is still the version it was prepared from (a
/// compare-and-swap, as etcd's): `None` when another write came first.
pub fn commit_if_current(st: &mut State, info: &ResourceInfo, p: Prepared) -> Option<Written> {
    let stored = st.get(&info.storage_resource(), meta::namespace(&p.old), meta::name(&p.old))?;
    Arc::ptr_eq(&stored, &p.old).then(|| commit(st, info, p))
}

/// Works out an update of `old` into `new`: strategy, validation, finalization and managed
/// fields; `commit` writes it (or nothing, when nothing changed).
#[allow(clippy::too_many_arguments)]
fn prepare_update(
    info: &ResourceInfo,
    old: Arc<Value>,
    new: Value,
    opts: &WriteOpts,
    status_write: bool,
    managed: Managed,
    mut warnings: Vec<String>,
) -> Result<Prepared, ApiError> {
    let name = meta::name(&old).to_string();
    let rv_in_request = meta::resource_version(&new).to_string();
    if !rv_in_request.is_empty() && rv_in_request != meta::resource_version(&old) {
        return Err(ApiError::modified(qualified(info), &name));
    }
    let client_managed = new.at("/metadata/managedFields").cloned();
    let mut new = decode(info, new, opts.validation, &mut warnings, true)?;
    keep_system_metadata(&old, &mut new);
    let mut new = reset_for_subresource(info, &old, new, status_write);
    if status_write {
        // The status strategy keeps the stored metadata; only managedFields are recomputed.
        keep_system_metadata(&old, &mut new);
    }
    builtin::apply_defaults(&info.group, &info.kind, &mut new, false);
    if info.kind == "CustomResourceDefinition" && !status_write {
        new["status"] = crd_status(&new);
    }
    bump_generation(info, &old, &mut new);
    validate(info, &new, Some(&old), status_write)?;

    // Removing the last finalizer of an object being deleted deletes it.
    let finalized = meta::is_deleting(&new)
        && meta::finalizers(&new).is_empty()
        && !(info.kind == "Namespace"
            && new.at("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty()))
        && !(info.kind == "Pod" && new.at("/spec/nodeName").is_some() && !pod_terminated(&new));
    let now = meta::now_rfc3339();
    match managed {
        Managed::Update => {
            match client_managed {
                // `managedFields: [{}]` is how a client clears ownership.
                Some(Value::Array(a))
                    if a.len() == 1 && a[0].as_object().is_some_and(|m| m.is_empty()) =>
                {
                    meta::set_meta(&mut new, "managedFields", None);
                }
                _ => {
                    meta::set_meta(
                        &mut new,
                        "managedFields",
                        old.at("/metadata/managedFields").cloned(),
                    );
                    fieldmanager::update_managed(
                        Some(&old),
                        &mut new,
                        &opts.manager,
                        &ownership(info, status_write, &now),
                    );
                }
            }
        }
        Managed::Precomputed => {}
    }
    fix_managed_api_version(info, &mut new);
    let outcome = if finalized {
        Outcome::Remove(new)
    } else {
        meta::set_meta(&mut new, "resourceVersion", old.at("/metadata/resourceVersion").cloned());
        if new == *old { Outcome::Unchanged } else { Outcome::Replace(new) }
    };
    Ok(Prepared { old, outcome, warnings, dry_run: opts.dry_run })
}

fn pod_terminated(pod: &Value) -> bool {
    matches!(pod.at("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

pub fn update(
    st: &mut State,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    mut obj: Value,
    opts: &WriteOpts,
    status_write: bool,
) -> Result<Written, ApiError> {
    check_type(info, &mut obj)?;
    let body_name = meta::name(&obj);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if info.namespaced && !meta::namespace(&obj).is_empty() && meta::namespace(&obj) != namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let old = get_existing(st, info, namespace, name)?;
    let obj = to_storage(info, obj);
    let p = prepare_update(info, old, obj, opts, status_write, Managed::Update, Vec::new())?;
    Ok(commit(st, info, p))
}

/// A full update (PUT) of the stored object `old` by a trusted in-process writer (the kubelet),
/// worked out without the store: `commit_if_current` writes it.
pub fn prepare_put(
    info: &ResourceInfo,
    old: Arc<Value>,
    mut obj: Value,
    opts: &WriteOpts,
    status_write: bool,
) -> Result<Prepared, ApiError> {
    check_type(info, &mut obj)?;
    let obj = to_storage(info, obj);
    prepare_update(info, old, obj, opts, status_write, Managed::Update, Vec::new())
}

/// Parses an apply body (YAML or JSON).
pub fn parse_apply_body(body: &[u8]) -> Result<Value, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("apply patch is not UTF-8"))?;
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

#[allow(clippy::too_many_arguments)]
pub fn patch(
    st: &mut State,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    ptype: PatchType,
    body: &Value,
    opts: &WriteOpts,
    status_write: bool,
) -> Result<Written, ApiError> {
    match st.get(&info.storage_resource(), namespace, name) {
        Some(old) => {
            let p = prepare_patch(info, name, old, ptype, body, opts, status_write)?;
            Ok(commit(st, info, p))
        }
        None if ptype == PatchType::Apply => {
            apply_create(st, info, namespace, name, body, opts, status_write)
        }
        None => Err(ApiError::not_found(qualified(info), name)),
    }
}

/// The update a patch (server-side apply included) makes of the stored object `old`, worked out
/// without the store.
#[allow(clippy::too_many_arguments)]
pub fn prepare_patch(
    info: &ResourceInfo,
    name: &str,
    old: Arc<Value>,
    ptype: PatchType,
    body: &Value,
    opts: &WriteOpts,
    status_write: bool,
) -> Result<Prepared, ApiError> {
    if ptype == PatchType::Apply {
        let (config, warnings) = applied_config(info, name, body, opts)?;
        if let Some(rv) = config.at("/metadata/resourceVersion").and_then(Value::as_str)
            && rv != meta::resource_version(&old)
        {
            return Err(ApiError::modified(qualified(info), name));
        }
        let now = meta::now_rfc3339();
        let own = ownership(info, status_write, &now);
        let mut new = fieldmanager::apply(&old, &config, &opts.manager, opts.force, &own)
            .map_err(|c| fieldmanager::conflict_error(&c))?;
        meta::set_meta(&mut new, "resourceVersion", old.at("/metadata/resourceVersion").cloned());
        return prepare_update(info, old, new, opts, status_write, Managed::Precomputed, warnings);
    }
    let view = present(info, &old);
    let patched = match ptype {
        PatchType::Merge => {
            if !body.is_object() {
                return Err(ApiError::bad_request("merge patch must be a JSON object"));
            }
            patch::merge_patch(&view, body)
        }
        PatchType::Json => patch::json_patch(&view, body).map_err(|e| ApiError {
            code: 422,
            reason: "Invalid",
            message: e,
            details: None,
            retry_after: None,
        })?,
        PatchType::Strategic => {
            let ti = type_info(info);
            if !ti.supports_strategic_merge() {
                return Err(ApiError::unsupported_media_type(&[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ]));
            }
            patch::strategic_merge_patch(&view, body, &ti).map_err(ApiError::bad_request)?
        }
        PatchType::Apply => unreachable!("handled above"),
    };
    let mut patched = patched;
    check_type(info, &mut patched)?;
    let mut patched = to_storage(info, patched);
    // A patch that leaves resourceVersion alone is unconditional.
    if body.at("/metadata/resourceVersion").is_none() {
        meta::set_meta(
            &mut patched,
            "resourceVersion",
            old.at("/metadata/resourceVersion").cloned(),
        );
    }
    if meta::name(&patched) != name {
        return Err(ApiError::bad_request(
            "metadata.name: Invalid value: the name of a patched object may not change",
        ));
    }
    prepare_update(info, old, patched, opts, status_write, Managed::Update, Vec::new())
}

/// Checks and decodes an applied configuration; also returns the decoder's warnings.
fn applied_config(
    info: &ResourceInfo,
    name: &str,
    config: &Value,
    opts: &WriteOpts,
) -> Result<(Value, Vec<String>), ApiError> {
    if opts.manager.is_empty() {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let mut config = config.clone();
    if !config.is_object() {
        return Err(ApiError::bad_request("apply patch must be a YAML or JSON object"));
    }
    if config.get("apiVersion").is_none() || config.get("kind").is_none() {
        return Err(ApiError::bad_request("apiVersion and kind must be set in an apply patch"));
    }
    check_type(info, &mut config)?;
    if config.at("/metadata/managedFields").is_some() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let body_name = meta::name(&config);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let mut warnings = Vec::new();
    // The applied configuration is decoded like any body (so unknown fields are found here) but
    // not defaulted: defaults are nobody's fields.
    let config = decode(info, to_storage(info, config), opts.validation, &mut warnings, false)?;
    Ok((config, warnings))
}

/// A server-side apply that creates the object.
fn apply_create(
    st: &mut State,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    config: &Value,
    opts: &WriteOpts,
    status_write: bool,
) -> Result<Written, ApiError> {
    let (config, warnings) = applied_config(info, name, config, opts)?;
    if status_write {
        return Err(ApiError::not_found(qualified(info), name));
    }
    let now = meta::now_rfc3339();
    let own = ownership(info, status_write, &now);
    let mut base =
        json!({"apiVersion": info.api_version(), "kind": info.kind, "metadata": {"name": name}});
    if info.namespaced {
        base["metadata"]["namespace"] = namespace.into();
    }
    let new = fieldmanager::apply(&base, &config, &opts.manager, opts.force, &own)
        .map_err(|c| fieldmanager::conflict_error(&c))?;
    let mut w = create_inner(st, info, namespace, new, opts, Managed::Precomputed)?;
    w.warnings.extend(warnings);
    Ok(w)
}

/// Deletes per DeleteOptions: preconditions, finalizers, grace periods and propagation.
pub fn delete(
    st: &mut State,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    opts: &DeleteOpts,
) -> Result<Deleted, ApiError> {
    let gr = info.storage_resource();
    let old = get_existing(st, info, namespace, name)?;
    if let Some(uid) = &opts.precondition_uid
        && uid != meta::uid(&old)
    {
        return Err(ApiError::conflict(
            qualified(info),
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::uid(&old)
            ),
        ));
    }
    if let Some(rv) = &opts.precondition_rv
        && rv != meta::resource_version(&old)
    {
        return Err(ApiError::conflict(
            qualified(info),
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta::resource_version(&old)
            ),
        ));
    }
    if info.kind == "CustomResourceDefinition" && !opts.dry_run {
        // Deleting a CRD deletes every custom resource it served.
        let group = old["spec"]["group"].as_str().unwrap_or_default().to_string();
        let plural =
            old.at("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_string();
        let crgr = GroupResource::new(&group, &plural);
        st.drop_collection(&crgr);
        st.registry.remove_group_resource(&crgr);
    }
    let mut obj = (*old).clone();
    let mut finalizers = meta::finalizers(&obj);
    match opts.propagation.as_deref() {
        Some("Orphan") => {
            if !finalizers.iter().any(|f| f == "orphan") {
                finalizers.push("orphan".into());
            }
        }
        Some("Foreground") => {
            if !finalizers.iter().any(|f| f == "foregroundDeletion") {
                finalizers.push("foregroundDeletion".into());
            }
        }
        None | Some("Background") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                vec![FieldError::not_supported(
                    "propagationPolicy",
                    &Value::from(other),
                    &["Foreground".into(), "Background".into(), "Orphan".into()],
                )],
            ));
        }
    }
    let is_pod = info.kind == "Pod" && info.group.is_empty();
    let grace = if is_pod {
        let g = opts
            .grace_period
            .or_else(|| obj.at("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30);
        // Unscheduled or finished pods have nothing to stop.
        if obj.at("/spec/nodeName").is_none() || pod_terminated(&obj) { 0 } else { g.max(0) }
    } else {
        0
    };
    let namespace_pending = info.kind == "Namespace"
        && obj.at("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if finalizers.is_empty() && grace == 0 && !namespace_pending {
        if opts.dry_run {
            return Ok(Deleted::Gone(old));
        }
        let gone = st.remove(&gr, namespace, name).unwrap_or(old);
        return Ok(Deleted::Gone(gone));
    }
    let already = meta::is_deleting(&obj);
    meta::set_finalizers(&mut obj, &finalizers);
    if !already {
        let at = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(grace))
            .unwrap_or_else(|_| jiff::Timestamp::now());
        meta::set_meta(&mut obj, "deletionTimestamp", Some(meta::format_time(at).into()));
        meta::set_meta(&mut obj, "deletionGracePeriodSeconds", Some(grace.into()));
        if info.kind == "Namespace" {
            obj["status"]["phase"] = "Terminating".into();
        }
        if has_generation(info) && !info.is_custom() {
            let g = meta::generation(&obj) + 1;
            meta::set_meta(&mut obj, "generation", Some(g.into()));
        }
    } else if is_pod {
        // A shorter grace period on a second delete takes effect.
        let current =
            obj.at("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(grace);
        if grace < current {
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .unwrap_or_else(|_| jiff::Timestamp::now());
            meta::set_meta(&mut obj, "deletionTimestamp", Some(meta::format_time(at).into()));
            meta::set_meta(&mut obj, "deletionGracePeriodSeconds", Some(grace.into()));
        }
    }
    if is_pod && opts.grace_period == Some(0) {
        // Force deletion: gone now, the kubelet cleans up whatever still runs.
        if opts.dry_run {
            return Ok(Deleted::Gone(old));
        }
        let gone = st.remove(&gr, namespace, name).unwrap_or(old);
        return Ok(Deleted::Gone(gone));
    }
    if obj == *old {
        return Ok(Deleted::Pending(old));
    }
    if opts.dry_run {
        return Ok(Deleted::Pending(Arc::new(obj)));
    }
    Ok(Deleted::Pending(st.replace(&gr, obj)))
}

/// Convenience for built-in controllers: writes `obj` (main resource or status) as `manager`,
/// ignoring objects that vanished or changed meanwhile (the controller will see the event).
pub fn system_write(
    st: &mut State,
    gr: &GroupResource,
    obj: Value,
    status: bool,
    manager: &str,
) -> Option<Arc<Value>> {
    let info = st.registry.preferred(gr)?;
    let ns = meta::namespace(&obj).to_string();
    let name = meta::name(&obj).to_string();
    let result = if st.get(gr, &ns, &name).is_some() {
        update(st, &info, &ns, &name, obj, &WriteOpts::system(manager), status)
    } else {
        create(st, &info, &ns, obj, &WriteOpts::system(manager))
    };
    match result {
        Ok(w) => Some(w.object),
        Err(e) => {
            tracing::debug!(%gr, %ns, %name, error = %e, "system write refused");
            None
        }
    }
}

/// Convenience for built-in controllers: deletes in the background.
pub fn system_delete(
    st: &mut State,
    gr: &GroupResource,
    namespace: &str,
    name: &str,
    opts: &DeleteOpts,
) -> bool {
    let Some(info) = st.registry.preferred(gr) else { return false };
    delete(st, &info, namespace, name, opts).is_ok()
}

/// A new Service gets a free cluster IP unless it names one, is headless (`None`) or is an
/// ExternalName, as kube-apiserver's allocator does; a named one must be free.
fn assign_cluster_ip(st: &State, obj: &mut Value) -> Result<(), ApiError> {
    if obj.at("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        return Ok(());
    }
    let ip = match obj.at("/spec/clusterIP").and_then(Value::as_str) {
        Some("None") => return Ok(()),
        Some(ip) if !ip.is_empty() => {
            if st.cluster_ip_taken(ip) {
                let e = FieldError::invalid(
                    "spec.clusterIPs",
                    &Value::from(ip),
                    "failed to allocate IP: provided IP is already allocated",
                );
                return Err(ApiError::invalid("", "Service", meta::name(obj), vec![e]));
            }
            ip.to_string()
        }
        _ => builtin::allocate_cluster_ip(st.cluster_ips()).ok_or_else(|| {
            ApiError::internal("failed to allocate a cluster IP: the service range is full")
        })?,
    };
    obj["spec"]["clusterIP"] = ip.clone().into();
    obj["spec"]["clusterIPs"] = json!([ip]);
    Ok(())
}

/// Records a core/v1 Event about `involved`, folding repeats into `count` as Kubernetes does.
pub fn record_event(
    st: &mut State,
    involved: &Value,
    ty: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ns = match meta::namespace(involved) {
        "" => "default",
        n => n,
    }
    .to_string();
    if st.get(&GroupResource::core("namespaces"), "", &ns).is_none() {
        return;
    }
    let uid = meta::uid(involved).to_string();
    let now = meta::now_rfc3339();
    let events = GroupResource::core("events");
    // Repeats of one event (same object, reason and message) are one Event with a count, as the
    // kubelet aggregates them; the name is derived from that key, so finding it is a lookup.
    let key = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{uid}\0{reason}\0{message}").as_bytes());
        crate::meta::hex(&d[..8])
    };
    let name = format!("{}.{key}", meta::name(involved));
    if let Some(e) = st.get(&events, &ns, &name) {
        let mut e = (*e).clone();
        e["count"] = (e["count"].as_i64().unwrap_or(1) + 1).into();
        e["lastTimestamp"] = now.into();
        system_write(st, &events, e, false, component);
        return;
    }
    let ev = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "kind": involved["kind"], "namespace": meta::namespace(involved), "name": meta::name(involved),
            "uid": uid, "apiVersion": involved["apiVersion"], "resourceVersion": meta::resource_version(involved),
        },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": ty,
        "eventTime": null,
        "reportingComponent": component,
        "reportingInstance": "",
    });
    system_write(st, &events, ev, false, component);
}
