//! API errors, rendered as `metav1.Status` bodies with kube-apiserver's codes, reasons and
//! message formats (apimachinery `api/errors` and `util/validation/field`).

use serde_json::{Value, json};

/// A refusal the server answers with a `Status` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds a client should wait (429 and some 500s carry `Retry-After`).
    pub retry_after: Option<u64>,
}

/// The resource a not-found or conflict message names: `pods` or `tenants.alcove.dev`.
#[derive(Debug, Clone)]
pub struct Qualified<'a> {
    pub group: &'a str,
    pub resource: &'a str,
}

impl std::fmt::Display for Qualified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None, retry_after: None }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn not_found(q: Qualified<'_>, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{q} \"{name}\" not found"))
            .with_details(details(q.group, q.resource, name))
    }

    pub fn already_exists(q: Qualified<'_>, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{q} \"{name}\" already exists"))
            .with_details(details(q.group, q.resource, name))
    }

    pub fn conflict(q: Qualified<'_>, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {q} \"{name}\": {why}"),
        )
        .with_details(details(q.group, q.resource, name))
    }

    pub fn modified(q: Qualified<'_>, name: &str) -> ApiError {
        ApiError::conflict(
            q,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid. `kind` is the qualified kind (`Pod`, `Tenant.alcove.dev`).
    pub fn invalid(group: &str, kind: &str, name: &str, errors: Vec<FieldError>) -> ApiError {
        let qualified = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let mut seen = Vec::new();
        for e in &errors {
            let s = e.to_string();
            if !seen.contains(&s) {
                seen.push(s);
            }
        }
        let message = match seen.len() {
            0 => format!("{qualified} \"{name}\" is invalid"),
            1 => format!("{qualified} \"{name}\" is invalid: {}", seen[0]),
            _ => format!("{qualified} \"{name}\" is invalid: [{}]", seen.join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.kind.cause_type(), "message": e.body(), "field": e.field}))
            .collect();
        let mut d = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            d["group"] = group.into();
        }
        ApiError::new(422, "Invalid", message).with_details(d)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(
        message: impl Into<String>,
        group: &str,
        resource: &str,
        name: &str,
    ) -> ApiError {
        let mut d = json!({"kind": resource});
        if !name.is_empty() {
            d["name"] = name.into();
        }
        if !group.is_empty() {
            d["group"] = group.into();
        }
        ApiError::new(403, "Forbidden", message).with_details(d)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError::new(406, "NotAcceptable", message)
    }

    pub fn unsupported_media_type(accepted: &[&str]) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_old(requested: u64, oldest: u64) -> ApiError {
        ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> ApiError {
        let mut e = ApiError::new(429, "TooManyRequests", message);
        e.retry_after = Some(retry_after);
        e.details = Some(json!({"retryAfterSeconds": retry_after}));
        e
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(500, "InternalError", format!("Internal error occurred: {message}"))
            .with_details(json!({"causes": [{"message": message}]}))
    }

    pub fn service_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

fn details(group: &str, resource: &str, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": resource});
    if !group.is_empty() {
        d["group"] = group.into();
    }
    d
}

/// A success `Status` (returned by deletes of some resources and by deletecollection).
pub fn success_status(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut d = details(group, resource, name);
    if !uid.is_empty() {
        d["uid"] = uid.into();
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

/// Kinds of field errors (`field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
    TooMany,
    TypeInvalid,
    NotFound,
}

impl FieldErrorKind {
    fn cause_type(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::TypeInvalid => "FieldValueTypeInvalid",
            FieldErrorKind::NotFound => "FieldValueNotFound",
        }
    }

    fn label(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::TooMany => "Too many",
            FieldErrorKind::TypeInvalid => "Invalid value",
            FieldErrorKind::NotFound => "Not found",
        }
    }
}

/// One field error: renders as `field: <label>: <value>: <detail>` like `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    pub field: String,
    /// The offending value, already rendered (`"gold"`, `9`, `"object"`), if shown.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            kind: FieldErrorKind::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn invalid(
        field: impl Into<String>,
        value: &Value,
        detail: impl Into<String>,
    ) -> FieldError {
        FieldError {
            kind: FieldErrorKind::Invalid,
            field: field.into(),
            value: Some(render_value(value)),
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            kind: FieldErrorKind::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn not_supported(
        field: impl Into<String>,
        value: &Value,
        allowed: &[String],
    ) -> FieldError {
        let detail = if allowed.is_empty() {
            String::new()
        } else {
            format!(
                "supported values: {}",
                allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
            )
        };
        FieldError {
            kind: FieldErrorKind::NotSupported,
            field: field.into(),
            value: Some(render_value(value)),
            detail,
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> FieldError {
        FieldError {
            kind: FieldErrorKind::Duplicate,
            field: field.into(),
            value: Some(render_value(value)),
            detail: String::new(),
        }
    }

    pub fn not_found(field: impl Into<String>, value: &Value) -> FieldError {
        FieldError {
            kind: FieldErrorKind::NotFound,
            field: field.into(),
            value: Some(render_value(value)),
            detail: String::new(),
        }
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> FieldError {
        FieldError {
            kind: FieldErrorKind::TooLong,
            field: field.into(),
            value: None,
            detail: format!("may not be more than {max} bytes"),
        }
    }

    pub fn too_many(field: impl Into<String>, actual: usize, max: usize) -> FieldError {
        FieldError {
            kind: FieldErrorKind::TooMany,
            field: field.into(),
            value: Some(actual.to_string()),
            detail: format!("must have at most {max} items"),
        }
    }

    pub fn type_invalid(
        field: impl Into<String>,
        value: &Value,
        detail: impl Into<String>,
    ) -> FieldError {
        FieldError {
            kind: FieldErrorKind::TypeInvalid,
            field: field.into(),
            value: Some(render_value(value)),
            detail: detail.into(),
        }
    }

    /// The message without the field (`ErrorBody`).
    pub fn body(&self) -> String {
        let mut s = self.kind.label().to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Renders a bad value as Go's `%v`/`%q` would for simple values.
pub fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "\"null\"".into(),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}
