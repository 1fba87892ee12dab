//! The one error type: OpenAI-shaped JSON (`{"error": {"message", "type", "param", "code"}}`), so
//! the SDKs customers use show the message and map the status to their own exception classes.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<&'static str>,
    pub headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError { status, message, kind, code, param: None, headers: Vec::new() }
    }

    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn retry_after(self, seconds: u64) -> Self {
        self.with_header(header::RETRY_AFTER, seconds.max(1))
    }

    pub fn missing_key() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or \
             `X-Api-Key: <key>`; the key is in your instance's API-key Secret or the dashboard."
                .into(),
        )
    }

    pub fn invalid_key() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided. A rotated key stops working at once; use the instance's \
             current key."
                .into(),
        )
    }

    pub fn too_many_failures(retry_after: u64) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "too_many_failed_authentications",
            format!(
                "Too many requests with a wrong API key from your address. Try again in \
                 {retry_after} s with the correct key."
            ),
        )
        .retry_after(retry_after)
    }

    pub fn suspended_by_spec(instance: &str) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "instance_suspended",
            format!(
                "Instance {instance} is suspended (spec.state: Suspended). Resume it (set \
                 spec.state to Running, or Resume in the dashboard) to serve requests again."
            ),
        )
    }

    pub fn credit_exhausted(instance: &str) -> Self {
        ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            "credit_exhausted",
            format!(
                "Instance {instance} is suspended because the account's prepaid credit is used \
                 up. Top up credit (dashboard → Billing); the instance resumes by itself."
            ),
        )
    }

    pub fn not_ready(instance: &str, why: &str, retry_after: u64) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "instance_not_ready",
            format!("Instance {instance} is not ready yet ({why}). Retry in {retry_after} s."),
        )
        .retry_after(retry_after)
    }

    pub fn rate_limited(what: &str, limit: i64, retry_after: u64) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            format!(
                "Rate limit reached: {limit} {what} per minute for this key. Try again in \
                 {retry_after} s, or raise spec.limits."
            ),
        )
        .retry_after(retry_after)
    }

    pub fn bad_request(param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError {
            param,
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                message.into(),
            )
        }
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than the gateway accepts ({limit} bytes)."),
        )
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {method} {path}."),
        )
    }

    pub fn upstream(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "upstream_error", message.into())
    }

    pub fn upstream_timeout(seconds: u64) -> Self {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "upstream_timeout",
            format!("The instance did not answer within {seconds} s."),
        )
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name.clone(), v);
            }
        }
        (self.status, headers, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_openai_shaped_with_retry_after_where_a_retry_helps() {
        let e = ApiError::not_ready("chat", "Provisioning", 5);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let b = e.body();
        assert_eq!(b["error"]["type"], "server_error");
        assert_eq!(b["error"]["code"], "instance_not_ready");
        assert!(b["error"]["message"].as_str().unwrap().contains("Provisioning"));
        let r = e.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert_eq!(ApiError::credit_exhausted("x").status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(ApiError::suspended_by_spec("x").status, StatusCode::FORBIDDEN);
    }
}
