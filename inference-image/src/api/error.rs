//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, so OpenAI client
//! libraries raise them as they would OpenAI's own.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    /// 400: the request is wrong; `param` names the field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param).filter(|p| !p.is_empty() && p != ".");
        e
    }

    pub fn unauthorized(message: impl Into<String>, code: Option<&'static str>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message);
        e.code = code;
        e
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message);
        e.code = Some(code);
        e
    }

    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::not_found(
            format!(
                "The model `{model}` does not exist on this instance; GET /v1/models lists the served models."
            ),
            "model_not_found",
        );
        e.param = Some("model".into());
        e
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than this server's limit of {limit} bytes."),
        )
    }

    pub fn busy(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("The instance's request queue is full; retry after {retry_after} s."),
        );
        e.code = Some("rate_limit_exceeded");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn loading() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The model is still loading; retry shortly.",
        );
        e.retry_after = Some(1);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ContextFull { .. } => {
                let mut a = Self::invalid("messages", e.to_string());
                a.code = Some("context_length_exceeded");
                a
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.openai_type(), e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_openai_type() {
        let full = ApiError::from(EngineError::ContextFull { prompt: 600, context: 512 });
        assert_eq!(full.status, StatusCode::BAD_REQUEST);
        assert_eq!(full.body()["error"]["type"], "invalid_request_error");
        assert_eq!(full.body()["error"]["code"], "context_length_exceeded");
        assert_eq!(full.body()["error"]["param"], "messages");
        let panicked = ApiError::from(EngineError::Panicked("generation"));
        assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(panicked.body()["error"]["type"], "server_error");
        assert_eq!(panicked.body()["error"]["message"], "generation failed: internal error");
        let none = ApiError::from(EngineError::NoEmbeddingModel);
        assert_eq!(none.body()["error"]["message"], "no embedding model is loaded");
    }
}
