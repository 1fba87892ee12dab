//! The one way Alcove talks to Stripe: async-stripe's client (auth, base URL, idempotency keys,
//! retries) and its request types. Answers are decoded into the few fields Alcove reads
//! ([`Object`]), so an object with more or fewer fields than the SDK's model (older API
//! versions, localstripe) still works. The operator bills through it, the dashboard takes
//! top-ups and reads the history through it.

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use stripe::{IdempotencyKey, RequestStrategy};

pub use stripe::StripeRequest;
pub use stripe_billing;
pub use stripe_core;
pub use stripe_types;

/// What went wrong, in Stripe's own words (message and code), never the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// The HTTP status Stripe answered with (0: no answer).
    pub status: u16,
    /// Stripe's error code, e.g. `card_declined`.
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

fn describe(e: stripe::StripeError) -> Error {
    match e {
        stripe::StripeError::Stripe(api, status) => {
            let code = api.code.as_ref().map(|c| c.as_str().to_string());
            let message = format!(
                "Stripe refused the request: HTTP {status}{}: {}",
                code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                api.message.clone().unwrap_or_default()
            );
            Error { status, code, message }
        }
        other => Error { status: 0, code: None, message: format!("Stripe: {other}") },
    }
}

/// One page of a list.
#[derive(Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

/// Any Stripe object, as far as Alcove reads one.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Object {
    pub id: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub amount_received: Option<i64>,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// A charge's PaymentIntent.
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// A PaymentIntent's secret for Stripe.js (never logged, never stored).
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// A form request in Stripe's own parameter names, for the rare call whose parameters the SDK's
/// types no longer spell (e.g. `payment_method_types` on a PaymentIntent, which every Stripe API
/// version still takes, and localstripe too).
pub struct Form {
    path: String,
    params: serde_json::Value,
}

impl Form {
    /// `POST /v1{path}` with `params` form-encoded (nested objects and lists as Stripe writes
    /// them: `metadata[k]=v`, `list[0]=x`).
    pub fn post(path: &str, params: serde_json::Value) -> Form {
        Form { path: path.to_string(), params }
    }
}

impl StripeRequest for Form {
    type Output = miniserde::json::Value;

    fn build(&self) -> stripe_client_core::RequestBuilder {
        stripe_client_core::RequestBuilder::new(stripe_client_core::StripeMethod::Post, &self.path)
            .form(&self.params)
    }
}

pub struct Client {
    client: stripe::Client,
}

impl Client {
    /// A client with the secret `key` against `api_base` (`https://api.stripe.com/`, or
    /// localstripe in tests).
    pub fn new(key: &str, api_base: &str) -> Result<Client, Error> {
        let base =
            if api_base.ends_with('/') { api_base.to_string() } else { format!("{api_base}/") };
        let client = stripe::ClientBuilder::new(key)
            .url(base)
            .request_strategy(RequestStrategy::ExponentialBackoff(3))
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(describe)?;
        Ok(Client { client })
    }

    /// Sends one request; `idempotency` makes a retry (ours, or the SDK's) the same request.
    pub async fn call<R: StripeRequest, T: DeserializeOwned>(
        &self,
        req: &R,
        idempotency: Option<String>,
    ) -> Result<T, Error> {
        let mut c = req.build().customize::<miniserde::json::Value>();
        if let Some(key) = idempotency {
            let key = IdempotencyKey::new(&key).map_err(|e| Error {
                status: 0,
                code: None,
                message: format!("idempotency key {key}: {e:?}"),
            })?;
            c = c.request_strategy(RequestStrategy::Idempotent(key));
        }
        let value = c.send(&self.client).await.map_err(describe)?;
        serde_json::from_str(&miniserde::json::to_string(&value)).map_err(|e| Error {
            status: 0,
            code: None,
            message: format!("unexpected Stripe response: {e}"),
        })
    }
}
