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
