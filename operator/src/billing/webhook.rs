//! `POST /webhooks/stripe`: credit top-ups. Each delivery is verified as Stripe specifies
//! (`Stripe-Signature: t=<unix>,v1=<hex>`; HMAC-SHA256 of `<t>.<raw body>` with the endpoint's
//! signing secret; any v1 may match, to allow secret rotation; older than the tolerance is a
//! replay), then the PaymentIntent is read back from Stripe (an event's copy of an amount is never
//! trusted) and credited once to the tenant its customer belongs to.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use kube::ResourceExt;
use serde_json::json;
use sha2::Sha256;

use super::runtime::Billing;
use super::store;
use crate::metrics::Metrics;
use alcove_clock::Clock;

/// Stripe's default tolerance.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, PartialEq)]
pub enum Refusal {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

impl Refusal {
    fn message(&self) -> &'static str {
        match self {
            Refusal::Missing => "no Stripe-Signature header",
            Refusal::Malformed => "the Stripe-Signature header has no timestamp or no v1 signature",
            Refusal::Stale => "the signature's timestamp is outside the tolerance (a replay)",
            Refusal::Mismatch => "no v1 signature matches the payload",
        }
    }
}

/// Verifies a delivery. `now` is unix seconds.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    payload: &[u8],
    now: i64,
) -> Result<(), Refusal> {
    let header = header.ok_or(Refusal::Missing)?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(Refusal::Malformed)?;
    if signatures.is_empty() {
        return Err(Refusal::Malformed);
    }
    let matches = signatures.iter().any(|s| {
        let Some(sig) = crate::hash::from_hex(s) else { return false };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        mac.verify_slice(&sig).is_ok()
    });
    if !matches {
        return Err(Refusal::Mismatch);
    }
    if t < now - TOLERANCE_SECS {
        return Err(Refusal::Stale);
    }
    Ok(())
}

/// What the handler needs; lives outside the leader's context, as every replica takes deliveries.
pub struct WebhookState {
    pub billing: Arc<Billing>,
    pub client: kube::Client,
    pub namespace: String,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub recorder: crate::events::Recorder,
}

fn reply(code: StatusCode, body: serde_json::Value) -> Response {
    (code, Json(body)).into_response()
}

pub async fn handle(
    State(s): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let outcome = |o: &str| s.metrics.webhooks.with_label_values(&[o]).inc();
    let (Some(secret), Some(stripe)) =
        (s.billing.webhook_secret.as_ref(), s.billing.stripe.as_ref())
    else {
        outcome("refused");
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "billing is disabled on this operator (no Stripe API key or webhook signing secret)"}),
        );
    };
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    if let Err(r) = verify(secret.expose().as_bytes(), header, &body, s.clock.now().as_second()) {
        outcome("refused");
        tracing::warn!(reason = r.message(), "refused a Stripe webhook delivery");
        return reply(StatusCode::BAD_REQUEST, json!({"error": r.message()}));
    }
    let event: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            outcome("refused");
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("the event is not JSON: {e}")}),
            );
        }
    };
    let kind = event["type"].as_str().unwrap_or_default();
    let event_id = event["id"].as_str().unwrap_or_default();
    if kind != "payment_intent.succeeded" {
        outcome("ignored");
        return reply(StatusCode::OK, json!({"ignored": kind}));
    }
    let Some(intent) = event
        .pointer("/data/object/id")
        .and_then(|v| v.as_str())
        .filter(|id| id.starts_with("pi_"))
    else {
        outcome("refused");
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "payment_intent.succeeded without a PaymentIntent id"}),
        );
    };
    match credit(&s, stripe, intent).await {
        Ok(Credit::Applied { tenant }) => {
            outcome("applied");
            tracing::info!(event = event_id, payment = intent, %tenant, "credited a top-up");
            reply(StatusCode::OK, json!({"applied": true, "tenant": tenant}))
        }
        Ok(Credit::Duplicate { tenant }) => {
            outcome("duplicate");
            reply(
                StatusCode::OK,
                json!({"applied": false, "tenant": tenant, "reason": "this payment was already credited"}),
            )
        }
        Ok(Credit::Ignored(why)) => {
            outcome("ignored");
            tracing::warn!(event = event_id, payment = intent, why = %why, "ignored a payment");
            reply(StatusCode::OK, json!({"applied": false, "reason": why}))
        }
        Err(e) => {
            // Stripe redelivers on 5xx: nothing was credited, so a later attempt can be.
            outcome("failed");
            tracing::warn!(event = event_id, payment = intent, error = %e, "could not credit a payment; Stripe will redeliver");
            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e.to_string()}))
        }
    }
}

enum Credit {
    Applied { tenant: String },
    Duplicate { tenant: String },
    Ignored(String),
}

async fn credit(
    s: &WebhookState,
    stripe: &super::stripe::Stripe,
    intent: &str,
) -> crate::error::Result<Credit> {
    let payment = stripe.payment(intent).await?;
    if !payment.succeeded {
        return Ok(Credit::Ignored(format!("PaymentIntent {intent} has not succeeded")));
    }
    let Some(customer) = payment.customer.as_deref() else {
        return Ok(Credit::Ignored(format!("PaymentIntent {intent} has no customer")));
    };
    let Some((tenant_name, uid)) = stripe.customer_tenant(customer).await? else {
        return Ok(Credit::Ignored(format!("customer {customer} belongs to no tenant")));
    };
    let tenants: kube::Api<alcove_crds::Tenant> = kube::Api::all(s.client.clone());
    let found =
        crate::error::retry_passing(|| crate::controller::live(&tenants, &tenant_name)).await?;
    let Some(tenant) = found.into_iter().find(|t| t.uid().as_deref() == Some(uid.as_str())) else {
        return Ok(Credit::Ignored(format!(
            "tenant {tenant_name} of customer {customer} no longer exists"
        )));
    };
    let currency = tenant.spec.billing.as_ref().map(|b| b.currency.clone()).unwrap_or_default();
    if payment.currency != currency {
        let why = format!(
            "payment {intent} is in {} but tenant {tenant_name} is billed in {currency}; not credited",
            payment.currency
        );
        crate::context::publish(&s.recorder, &tenant, true, "TopUpRefused", "Credit", why.clone())
            .await;
        return Ok(Credit::Ignored(why));
    }
    let mut applied = false;
    store::update(&s.client, &s.namespace, &tenant, |l| {
        applied = l.credit(&payment.id, payment.amount);
        applied
    })
    .await?;
    if !applied {
        return Ok(Credit::Duplicate { tenant: tenant_name });
    }
    let note = format!(
        "credited {} (payment {intent})",
        super::account::display(payment.amount, &currency)
    );
    crate::context::publish(&s.recorder, &tenant, false, "TopUp", "Credit", note).await;
    Ok(Credit::Applied { tenant: tenant_name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, payload: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{payload}").as_bytes());
        crate::hash::hex(&mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_are_verified_as_stripe_specifies() {
        let secret = "whsec_test";
        let body = r#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let now = 1_790_000_000;
        let good = format!("t={now},v1={}", sign(secret, now, body));
        assert_eq!(verify(secret.as_bytes(), Some(&good), body.as_bytes(), now + 10), Ok(()));
        // Rotation: a header may carry several v1 signatures (and v0 ones, which are ignored).
        let rotated = format!(
            "t={now},v1={},v1={},v0=abcd",
            sign("whsec_old", now, body),
            sign(secret, now, body)
        );
        assert_eq!(verify(secret.as_bytes(), Some(&rotated), body.as_bytes(), now), Ok(()));
        assert_eq!(
            verify(
                secret.as_bytes(),
                Some(&good),
                br#"{"id":"evt_1","type":"payment_intent.succeeded","x":1}"#,
                now
            ),
            Err(Refusal::Mismatch),
            "a changed payload"
        );
        assert_eq!(
            verify(b"whsec_other", Some(&good), body.as_bytes(), now),
            Err(Refusal::Mismatch),
            "another secret"
        );
        assert_eq!(
            verify(secret.as_bytes(), Some(&good), body.as_bytes(), now + TOLERANCE_SECS + 1),
            Err(Refusal::Stale)
        );
        // The timestamp is signed: moving it forward breaks the signature.
        let moved = format!("t={},v1={}", now + 400, sign(secret, now, body));
        assert_eq!(
            verify(secret.as_bytes(), Some(&moved), body.as_bytes(), now + 400),
            Err(Refusal::Mismatch)
        );
        assert_eq!(verify(secret.as_bytes(), None, body.as_bytes(), now), Err(Refusal::Missing));
        assert_eq!(
            verify(secret.as_bytes(), Some("v1=00"), body.as_bytes(), now),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(secret.as_bytes(), Some(&format!("t={now}")), body.as_bytes(), now),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(secret.as_bytes(), Some(&format!("t={now},v1=zz")), body.as_bytes(), now),
            Err(Refusal::Mismatch)
        );
    }
}
