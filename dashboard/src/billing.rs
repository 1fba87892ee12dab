//! Credit: top-ups paid with a card through Stripe, and the history of top-ups and charges.
//!
//! The card never reaches Alcove. Stripe.js collects it in the page (Elements) and turns it into
//! a one-use token at Stripe; the dashboard attaches that token to the tenant's Stripe customer
//! and creates a PaymentIntent with it, confirmed at once. When the card's bank asks for 3-D
//! Secure, the page finishes the payment with Stripe.js (`confirmCardPayment`). Nothing here
//! credits anything: the operator's signed webhook does, once per PaymentIntent, when Stripe says
//! the payment succeeded.
//!
//! The history is read from Stripe: the customer's succeeded card charges (top-ups, each of a
//! PaymentIntent) and its invoice items (the operator's usage records: GPU time and tokens, per instance), summed per
//! day, instance and kind by [`history`], a pure function.

use std::collections::BTreeMap;

use alcove_stripe::{Error, List, Object, stripe_billing, stripe_core};
use serde_json::json;

/// How the dashboard reaches Stripe, and what the page needs to load Stripe.js.
pub struct Billing {
    client: alcove_stripe::Client,
    /// `pk_...`: identifies the platform's Stripe account to Stripe.js in the page.
    pub publishable_key: String,
    /// Stripe.js, e.g. `https://js.stripe.com/v3/` (localstripe serves a stand-in in tests).
    pub js_url: String,
    /// Origins the page's Content-Security-Policy must admit for Stripe.js: its own and the API's.
    pub origins: Vec<String>,
}

/// One top-up to make.
pub struct TopUp<'a> {
    pub customer: &'a str,
    pub currency: &'a str,
    /// Minor units.
    pub amount: i64,
    /// The Stripe.js token of the card (`tok_...`).
    pub token: &'a str,
    /// The form's one-time number: the same submission is the same payment at Stripe.
    pub nonce: &'a str,
    pub tenant: &'a str,
    pub tenant_uid: &'a str,
}

/// Where a top-up's PaymentIntent stands, as the page needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum Paid {
    Succeeded {
        intent: String,
    },
    /// The bank wants 3-D Secure: the page finishes it with this secret.
    NeedsAction {
        intent: String,
        client_secret: String,
    },
    /// Stripe is still processing it.
    Processing {
        intent: String,
    },
    /// The card was refused, in Stripe's words.
    Failed {
        message: String,
    },
}

/// What a PaymentIntent's status means for the page.
pub fn paid(pi: &Object) -> Paid {
    let intent = pi.id.clone();
    match pi.status.as_deref() {
        Some("succeeded") => Paid::Succeeded { intent },
        Some("requires_action") => match &pi.client_secret {
            Some(s) => Paid::NeedsAction { intent, client_secret: s.clone() },
            None => Paid::Processing { intent },
        },
        Some("processing") | Some("requires_capture") => Paid::Processing { intent },
        Some("canceled") => Paid::Failed { message: "The payment was canceled.".into() },
        _ => Paid::Failed {
            message: "The card was not charged. Check its details or use another card.".into(),
        },
    }
}

impl Billing {
    pub fn new(
        key: &str,
        api_base: &str,
        publishable_key: String,
        js_url: String,
        origins: Vec<String>,
    ) -> Result<Billing, Error> {
        Ok(Billing {
            client: alcove_stripe::Client::new(key, api_base)?,
            publishable_key,
            js_url,
            origins,
        })
    }

    /// Attaches the card to the customer and charges it. Both calls carry idempotency keys made
    /// from the form's nonce, so Stripe answers a retried submission with the same objects.
    pub async fn pay(&self, t: &TopUp<'_>) -> Result<Object, Error> {
        let attach = stripe_core::payment_source::CreateCustomerPaymentSource::new(
            t.customer.to_string(),
            t.token,
        );
        let card: Object =
            self.client.call(&attach, Some(format!("alcove-topup-card-{}", t.nonce))).await?;
        let intent = alcove_stripe::Form::post(
            "/payment_intents",
            json!({
                "amount": t.amount,
                "currency": t.currency.to_ascii_lowercase(),
                "customer": t.customer,
                "payment_method": card.id,
                "payment_method_types": ["card"],
                "confirm": true,
                "metadata": {
                    "alcove_tenant": t.tenant,
                    "alcove_tenant_uid": t.tenant_uid,
                    "alcove_top_up": t.nonce,
                },
            }),
        );
        self.client.call(&intent, Some(format!("alcove-topup-{}", t.nonce))).await
    }

    /// One PaymentIntent.
    pub async fn intent(&self, id: &str) -> Result<Object, Error> {
        let req = stripe_core::payment_intent::RetrievePaymentIntent::new(id);
        self.client.call(&req, None).await
    }

    /// The customer's latest 100 charges and latest 100 invoice items, newest first.
    pub async fn records(&self, customer: &str) -> Result<(Vec<Object>, Vec<Object>), Error> {
        let payments = stripe_core::charge::ListCharge::new().customer(customer).limit(100);
        let items =
            stripe_billing::invoice_item::ListInvoiceItem::new().customer(customer).limit(100);
        let (p, i): (Result<List<Object>, _>, Result<List<Object>, _>) =
            futures::join!(self.client.call(&payments, None), self.client.call(&items, None));
        Ok((p?.data, i?.data))
    }
}

/// What a charge was for.
#[derive(Debug, Clone, PartialEq)]
pub enum Usage {
    /// GPU time, in milliseconds of GPU use (GPUs × time).
    Gpu {
        millis: i64,
    },
    Tokens {
        prompt: i64,
        completion: i64,
    },
}

/// One line of the billing history.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    TopUp {
        day: jiff::civil::Date,
        at: jiff::Timestamp,
        amount: i64,
        intent: String,
    },
    /// Charges of one instance of one kind on one day, summed.
    Charge {
        day: jiff::civil::Date,
        instance: String,
        usage: Usage,
        amount: i64,
        records: usize,
    },
}

impl Entry {
    pub fn day(&self) -> jiff::civil::Date {
        match self {
            Entry::TopUp { day, .. } | Entry::Charge { day, .. } => *day,
        }
    }
}

fn day_of(t: jiff::Timestamp) -> jiff::civil::Date {
    t.to_zoned(jiff::tz::TimeZone::UTC).date()
}

fn at(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(seconds).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The customer's top-ups (its succeeded card charges of PaymentIntents) and its usage charges
/// summed per day (UTC), instance and kind, newest day first; on one day, top-ups first. Only
/// this customer's records count, whatever Stripe returned.
pub fn history(customer: &str, card_charges: &[Object], items: &[Object]) -> Vec<Entry> {
    let mine = |o: &&Object| o.customer.as_deref() == Some(customer);
    let mut out: Vec<Entry> = card_charges
        .iter()
        .filter(mine)
        .filter(|c| c.status.as_deref() == Some("succeeded"))
        .filter_map(|c| {
            Some(Entry::TopUp {
                day: day_of(at(c.created)),
                at: at(c.created),
                amount: c.amount.unwrap_or(0),
                intent: c.payment_intent.clone()?,
            })
        })
        .collect();
    let mut charges: BTreeMap<(jiff::civil::Date, String, bool), (Usage, i64, usize)> =
        BTreeMap::new();
    for item in items.iter().filter(mine) {
        let m = |k: &str| item.metadata.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let instance = item.metadata.get("alcove_instance").cloned().unwrap_or_default();
        let tokens = item.metadata.get("alcove_kind").map(String::as_str) == Some("tokens");
        // GPU time belongs to the day its period started; tokens to the day they were billed.
        let when = item
            .metadata
            .get("period_start")
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(|| at(item.created));
        let entry = charges.entry((day_of(when), instance, tokens)).or_insert_with(|| {
            let usage = if tokens {
                Usage::Tokens { prompt: 0, completion: 0 }
            } else {
                Usage::Gpu { millis: 0 }
            };
            (usage, 0, 0)
        });
        match &mut entry.0 {
            Usage::Tokens { prompt, completion } => {
                *prompt += m("prompt_tokens");
                *completion += m("completion_tokens");
            }
            Usage::Gpu { millis } => *millis += m("gpu_millis"),
        }
        entry.1 += item.amount.unwrap_or(0);
        entry.2 += 1;
    }
    out.extend(charges.into_iter().map(|((day, instance, _), (usage, amount, records))| {
        Entry::Charge { day, instance, usage, amount, records }
    }));
    out.sort_by(|a, b| {
        let rank = |e: &Entry| match e {
            Entry::TopUp { at, .. } => (0, at.as_second(), String::new()),
            Entry::Charge { instance, usage, .. } => {
                (1, 0, format!("{instance}{}", matches!(usage, Usage::Tokens { .. })))
            }
        };
        b.day().cmp(&a.day()).then_with(|| {
            let (ra, rb) = (rank(a), rank(b));
            ra.0.cmp(&rb.0).then(rb.1.cmp(&ra.1)).then(ra.2.cmp(&rb.2))
        })
    });
    out
}

/// A receipt's facts, from the PaymentIntent (only a succeeded one of this customer is one).
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub intent: String,
    pub at: jiff::Timestamp,
    pub amount: i64,
    pub currency: String,
}

pub fn receipt(customer: &str, pi: &Object) -> Option<Receipt> {
    (pi.customer.as_deref() == Some(customer) && pi.status.as_deref() == Some("succeeded")).then(
        || Receipt {
            intent: pi.id.clone(),
            at: at(pi.created),
            amount: pi.amount_received.or(pi.amount).unwrap_or(0),
            currency: pi.currency.clone().unwrap_or_default(),
        },
    )
}

/// Whether a form's nonce is one the page made (32 hex digits), so it can key Stripe requests.
pub fn valid_nonce(n: &str) -> bool {
    n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a token is one Stripe.js could have made.
pub fn valid_token(t: &str) -> bool {
    t.starts_with("tok_")
        && t.len() <= 255
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn object(
        id: &str,
        customer: &str,
        created: i64,
        amount: i64,
        meta: &[(&str, &str)],
    ) -> Object {
        Object {
            id: id.into(),
            created,
            customer: Some(customer.into()),
            amount: Some(amount),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn history_sums_charges_per_day_instance_and_kind() {
        let day1 = 1_790_000_000; // 2026-09-21 UTC
        let day2 = day1 + 86_400;
        let charge = |id: &str, customer, t, amount, status: &str| Object {
            payment_intent: Some(id.replace("ch_", "pi_")),
            status: Some(status.into()),
            ..object(id, customer, t, amount, &[])
        };
        let paid = charge("ch_1", "cus_a", day1 + 10, 2000, "succeeded");
        let failed = charge("ch_2", "cus_a", day1 + 20, 3000, "failed");
        let other = charge("ch_3", "cus_b", day1 + 30, 9999, "succeeded");
        let gpu = |id, t: i64, ms| {
            let start = jiff::Timestamp::from_second(t).unwrap().to_string();
            object(
                id,
                "cus_a",
                t + 60,
                6,
                &[
                    ("alcove_instance", "tenant-a/chat"),
                    ("period_start", &start),
                    ("gpu_millis", ms),
                ],
            )
        };
        let tokens = object(
            "ii_t",
            "cus_a",
            day2 + 5,
            3,
            &[
                ("alcove_kind", "tokens"),
                ("alcove_instance", "tenant-a/chat"),
                ("prompt_tokens", "100"),
                ("completion_tokens", "40"),
            ],
        );
        let items = [
            gpu("ii_1", day1, "60000"),
            gpu("ii_2", day1 + 60, "60000"),
            gpu("ii_3", day2, "30000"),
            tokens,
        ];
        let h = history("cus_a", &[paid, failed, other], &items);
        let d1 = day_of(at(day1));
        let d2 = day_of(at(day2));
        assert_eq!(
            h,
            vec![
                Entry::Charge {
                    day: d2,
                    instance: "tenant-a/chat".into(),
                    usage: Usage::Gpu { millis: 30000 },
                    amount: 6,
                    records: 1
                },
                Entry::Charge {
                    day: d2,
                    instance: "tenant-a/chat".into(),
                    usage: Usage::Tokens { prompt: 100, completion: 40 },
                    amount: 3,
                    records: 1
                },
                Entry::TopUp { day: d1, at: at(day1 + 10), amount: 2000, intent: "pi_1".into() },
                Entry::Charge {
                    day: d1,
                    instance: "tenant-a/chat".into(),
                    usage: Usage::Gpu { millis: 120000 },
                    amount: 12,
                    records: 2
                },
            ],
            "failed payments and other customers' records are not this history"
        );
    }

    #[test]
    fn payment_states_and_receipts() {
        let mut pi = object("pi_1", "cus_a", 1_790_000_000, 2500, &[]);
        pi.currency = Some("usd".into());
        pi.status = Some("requires_action".into());
        pi.client_secret = Some("pi_1_secret_x".into());
        assert_eq!(
            paid(&pi),
            Paid::NeedsAction { intent: "pi_1".into(), client_secret: "pi_1_secret_x".into() }
        );
        assert_eq!(receipt("cus_a", &pi), None, "no receipt before it succeeded");
        pi.status = Some("succeeded".into());
        assert_eq!(paid(&pi), Paid::Succeeded { intent: "pi_1".into() });
        assert_eq!(receipt("cus_a", &pi).map(|r| r.amount), Some(2500));
        assert_eq!(
            receipt("cus_b", &pi),
            None,
            "another customer's payment is no receipt of this one"
        );
        pi.status = Some("requires_payment_method".into());
        assert!(matches!(paid(&pi), Paid::Failed { .. }));
        assert!(valid_nonce("0123456789abcdef0123456789abcdef"));
        assert!(!valid_nonce("0123456789abcdef0123456789abcdeg"));
        assert!(!valid_nonce("short"));
        assert!(valid_token("tok_1AbC"));
        assert!(!valid_token("tok_1&amount=1"));
        assert!(!valid_token("pm_card_visa"));
    }
}
