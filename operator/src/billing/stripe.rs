//! The Stripe calls billing makes, through async-stripe's client (auth, base URL, idempotency
//! keys, retries) and its request types. Responses are decoded into the few fields billing reads,
//! so an object with more or fewer fields than the SDK's model (older API versions, localstripe)
//! still works.
//!
//! Mapping (see docs/billing.md): Tenant → Customer (metadata `alcove_tenant`,
//! `alcove_tenant_uid`); usage → InvoiceItem on that customer (metadata names the instance and
//! the period); top-up → a succeeded PaymentIntent of that customer.

use std::collections::HashMap;

use alcove_stripe::{List, Object, StripeRequest, stripe_billing, stripe_core, stripe_types};
use serde::de::DeserializeOwned;

use super::ledger::{TokenUsage, Usage};
use crate::config::Secret;
use crate::error::{Error, Result};

pub struct Stripe {
    client: alcove_stripe::Client,
}

/// What a usage record says about itself, besides its amount.
pub struct UsageRecord<'a> {
    pub customer: &'a str,
    pub currency: &'a str,
    pub tenant: &'a str,
    pub instance_uid: &'a str,
    /// `namespace/name`.
    pub instance: &'a str,
    pub product: &'a str,
    pub gpus: i32,
    pub usage: &'a Usage,
}

/// A token record: the instance, the model, and the gateway totals it bills from and through.
pub struct TokenRecord<'a> {
    pub customer: &'a str,
    pub currency: &'a str,
    pub tenant: &'a str,
    pub instance_uid: &'a str,
    /// `namespace/name`.
    pub instance: &'a str,
    pub model: &'a str,
    /// The totals already billed (prompt, completion).
    pub from: (i64, i64),
    pub usage: &'a TokenUsage,
}

/// A PaymentIntent as billing reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub id: String,
    pub customer: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub succeeded: bool,
}

impl Stripe {
    pub fn new(key: &Secret, api_base: &str) -> Result<Stripe> {
        let client = alcove_stripe::Client::new(key.expose(), api_base)
            .map_err(|e| Error::Billing(e.message))?;
        Ok(Stripe { client })
    }

    async fn call<R: StripeRequest, T: DeserializeOwned>(
        &self,
        req: &R,
        idempotency: Option<String>,
    ) -> Result<T> {
        self.client.call(req, idempotency).await.map_err(|e| Error::Billing(e.message))
    }

    /// The customer made for a tenant earlier (found by the tenant UID in its metadata).
    pub async fn find_customer(&self, tenant_uid: &str) -> Result<Option<String>> {
        let mut after: Option<String> = None;
        loop {
            let mut req = stripe_core::customer::ListCustomer::new().limit(100);
            if let Some(a) = &after {
                req = req.starting_after(a.clone());
            }
            let page: List<Object> = self.call(&req, None).await?;
            if let Some(c) = page.data.iter().find(|c| {
                c.metadata.get("alcove_tenant_uid").map(String::as_str) == Some(tenant_uid)
            }) {
                return Ok(Some(c.id.clone()));
            }
            match page.data.last() {
                Some(last) if page.has_more => after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
    }

    /// Creates the tenant's customer. The idempotency key is the tenant UID's, so Stripe answers
    /// a retry with the customer it already made.
    pub async fn create_customer(
        &self,
        tenant: &str,
        tenant_uid: &str,
        display_name: &str,
    ) -> Result<String> {
        let req = stripe_core::customer::CreateCustomer::new()
            .name(display_name)
            .description(format!("Alcove tenant {tenant}"))
            .metadata(metadata(tenant, tenant_uid));
        let c: Object = self.call(&req, Some(format!("alcove-customer-{tenant_uid}"))).await?;
        Ok(c.id)
    }

    /// Links an existing customer to a tenant: it must exist; its metadata then names the tenant,
    /// so payments to it are credited to the tenant.
    pub async fn link_customer(&self, id: &str, tenant: &str, tenant_uid: &str) -> Result<()> {
        let req =
            stripe_core::customer::UpdateCustomer::new(id).metadata(metadata(tenant, tenant_uid));
        let _: Object = self.call(&req, Some(format!("alcove-link-{tenant_uid}-{id}"))).await?;
        Ok(())
    }

    /// The tenant (name, UID) a customer belongs to, from its metadata.
    pub async fn customer_tenant(&self, id: &str) -> Result<Option<(String, String)>> {
        let c: Object = self.call(&stripe_core::customer::RetrieveCustomer::new(id), None).await?;
        Ok(c.metadata
            .get("alcove_tenant")
            .cloned()
            .zip(c.metadata.get("alcove_tenant_uid").cloned()))
    }

    /// Creates one usage record (an invoice item), keyed by instance and period start.
    pub async fn create_usage(&self, r: &UsageRecord<'_>) -> Result<String> {
        let u = r.usage;
        let secs = u.gpu_millis as f64 / 1000.0;
        let meta = [
            ("alcove_tenant", r.tenant.to_string()),
            ("alcove_instance", r.instance.to_string()),
            ("alcove_instance_uid", r.instance_uid.to_string()),
            ("period_start", alcove_clock::format_millis(u.from)),
            ("period_end", alcove_clock::format_millis(u.to)),
            ("gpu_millis", u.gpu_millis.to_string()),
            ("gpus", r.gpus.to_string()),
            ("gpu_product", r.product.to_string()),
            ("carry", u.carry.to_string()),
        ];
        let description = format!(
            "GPU time: {} ({}), {secs:.3} GPU-seconds on {} × {}",
            r.instance, r.tenant, r.gpus, r.product
        );
        let key = super::meter::record_key(r.instance_uid, u.from);
        self.invoice_item(r.customer, r.currency, u.amount, description, meta, key).await
    }

    /// Creates one token record (an invoice item), keyed by instance and the totals it bills
    /// through.
    pub async fn create_token_usage(&self, r: &TokenRecord<'_>) -> Result<String> {
        let u = r.usage;
        let (prompt, completion) = (u.prompt_through - r.from.0, u.completion_through - r.from.1);
        let meta = [
            ("alcove_kind", "tokens".to_string()),
            ("alcove_tenant", r.tenant.to_string()),
            ("alcove_instance", r.instance.to_string()),
            ("alcove_instance_uid", r.instance_uid.to_string()),
            ("model", r.model.to_string()),
            ("prompt_tokens", prompt.to_string()),
            ("completion_tokens", completion.to_string()),
            ("prompt_through", u.prompt_through.to_string()),
            ("completion_through", u.completion_through.to_string()),
            ("carry", u.carry.to_string()),
        ];
        let description = format!(
            "Tokens: {} ({}), model {}: {prompt} prompt + {completion} completion tokens",
            r.instance, r.tenant, r.model
        );
        let key =
            super::meter::token_record_key(r.instance_uid, u.prompt_through, u.completion_through);
        self.invoice_item(r.customer, r.currency, u.amount, description, meta, key).await
    }

    /// One invoice item; `key` makes a retry after a crash the same item, never a second one.
    async fn invoice_item(
        &self,
        customer: &str,
        currency: &str,
        amount: i64,
        description: String,
        meta: impl IntoIterator<Item = (&str, String)>,
        key: String,
    ) -> Result<String> {
        let meta: HashMap<String, String> =
            meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let currency: stripe_types::Currency = currency.parse().unwrap_or_else(|e| match e {});
        let req = stripe_billing::invoice_item::CreateInvoiceItem::new()
            .customer(customer)
            .currency(currency)
            .amount(amount)
            .description(description)
            .metadata(meta);
        let item: Object = self.call(&req, Some(key)).await?;
        Ok(item.id)
    }

    /// The token records of an instance, oldest first: what a report cut short by a crash left
    /// behind is among them.
    pub async fn find_token_usage(
        &self,
        customer: &str,
        instance_uid: &str,
    ) -> Result<Vec<TokenUsage>> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req =
                stripe_billing::invoice_item::ListInvoiceItem::new().customer(customer).limit(100);
            if let Some(a) = &after {
                req = req.starting_after(a.clone());
            }
            let page: List<Object> = self.call(&req, None).await?;
            for item in &page.data {
                let m = |k: &str| item.metadata.get(k).cloned().unwrap_or_default();
                if m("alcove_kind") != "tokens" || m("alcove_instance_uid") != instance_uid {
                    continue;
                }
                let (Ok(p), Ok(c)) =
                    (m("prompt_through").parse::<i64>(), m("completion_through").parse::<i64>())
                else {
                    continue;
                };
                found.push(TokenUsage {
                    prompt_through: p,
                    completion_through: c,
                    amount: item.amount.unwrap_or(0),
                    carry: m("carry").parse().unwrap_or(0),
                });
            }
            match page.data.last() {
                Some(last) if page.has_more => after = Some(last.id.clone()),
                _ => break,
            }
        }
        found.sort_by_key(|t| (t.prompt_through, t.completion_through));
        Ok(found)
    }

    /// The usage records of an instance starting at or after `since`, oldest first: what a
    /// report cut short by a crash left behind.
    pub async fn find_usage(
        &self,
        customer: &str,
        instance_uid: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<Usage>> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req =
                stripe_billing::invoice_item::ListInvoiceItem::new().customer(customer).limit(100);
            if let Some(a) = &after {
                req = req.starting_after(a.clone());
            }
            let page: List<Object> = self.call(&req, None).await?;
            for item in &page.data {
                if item.metadata.get("alcove_instance_uid").map(String::as_str)
                    != Some(instance_uid)
                {
                    continue;
                }
                let m = |k: &str| item.metadata.get(k).cloned().unwrap_or_default();
                let (Ok(from), Ok(to)) = (
                    m("period_start").parse::<jiff::Timestamp>(),
                    m("period_end").parse::<jiff::Timestamp>(),
                ) else {
                    continue;
                };
                if super::meter::adoptable(from, since) {
                    found.push(Usage {
                        from,
                        to,
                        gpu_millis: m("gpu_millis").parse().unwrap_or(0),
                        amount: item.amount.unwrap_or(0),
                        carry: m("carry").parse().unwrap_or(0),
                    });
                }
            }
            // Newest first: once a page reaches records made before `since`, older pages cannot
            // hold what is looked for.
            let older = page.data.last().is_some_and(|i| i.created < since.as_second());
            match page.data.last() {
                Some(last) if page.has_more && !older => after = Some(last.id.clone()),
                _ => break,
            }
        }
        found.sort_by_key(|u| u.from);
        Ok(found)
    }

    /// A PaymentIntent, read from Stripe (an event's copy is never trusted for amounts).
    pub async fn payment(&self, id: &str) -> Result<Payment> {
        let p: Object =
            self.call(&stripe_core::payment_intent::RetrievePaymentIntent::new(id), None).await?;
        Ok(Payment {
            succeeded: p.status.as_deref() == Some("succeeded"),
            amount: p.amount_received.or(p.amount).unwrap_or(0),
            currency: p.currency.unwrap_or_default(),
            customer: p.customer,
            id: p.id,
        })
    }
}

fn metadata(tenant: &str, tenant_uid: &str) -> HashMap<String, String> {
    [
        ("alcove_tenant".to_string(), tenant.to_string()),
        ("alcove_tenant_uid".to_string(), tenant_uid.to_string()),
    ]
    .into()
}
