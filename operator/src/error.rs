//! The operator's one error type. Errors say what went wrong in terms a platform team can act on;
//! spec problems are not errors (they become conditions), these are failures to talk to the API.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing {what}: {source}")]
    Serialize { what: &'static str, source: serde_json::Error },
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("billing: {0}")]
    Billing(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A short label for the error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(s)) if s.code == 429 => "throttled",
            Error::Kube(kube::Error::Api(s)) if s.code >= 500 => "server_error",
            Error::Kube(_) => "api",
            Error::Serialize { .. } => "serialize",
            Error::MissingField(_) => "missing_field",
            Error::Billing(_) => "billing",
            Error::Other(_) => "other",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an API error may pass if the request is made again: throttling, a server error, or
/// no answer at all.
pub fn passing(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => true,
    }
}

/// `request`, tried again after a passing error (up to 3 more times, within about 3 s). For
/// one-shot paths that no reconcile repeats: an Event, a payment credited from a webhook.
pub async fn retry_passing<T, F, Fut>(mut request: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut result = request().await;
    for wait_ms in [250, 1000, 2000] {
        match &result {
            Err(e) if passing(e) => {
                tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
                result = request().await;
            }
            _ => break,
        }
    }
    result
}
