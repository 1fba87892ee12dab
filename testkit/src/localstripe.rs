//! localstripe (PyPI; `./test.sh` installs it into `.venv`), the fake Stripe that billing tests
//! run against, on a free loopback port.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{eventually, free_port, http, workspace_root};

pub const KEY: &str = "sk_test_alcove";
pub const WHSEC: &str = "whsec_alcove_test";

pub struct LocalStripe {
    pub base: String,
    _child: tokio::process::Child,
}

impl LocalStripe {
    /// Starts localstripe with its output in `log`, and waits until it answers.
    pub async fn start(log: &Path) -> LocalStripe {
        let port = free_port();
        let python = workspace_root().join(".venv/bin/python");
        assert!(python.exists(), "run ./test.sh: it installs localstripe into .venv");
        let log = std::fs::File::create(log).unwrap();
        let child = tokio::process::Command::new(python)
            .arg(workspace_root().join("testkit/run_localstripe.py"))
            .arg(port.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("localstripe");
        let base = format!("http://127.0.0.1:{port}");
        let s = LocalStripe { base, _child: child };
        eventually("localstripe serves", Duration::from_secs(30), || async {
            s.call("GET", "/v1/customers", None).await.0 == 200
        })
        .await;
        s
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (code, text) = http(
            method,
            &format!("{}{path}", self.base),
            &[("Authorization", &format!("Bearer {KEY}"))],
            body.as_deref(),
        )
        .await;
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, v) = self.call(method, path, body).await;
        assert_eq!(code, 200, "localstripe {method} {path}: {v}");
        v
    }

    pub async fn customers_of(&self, tenant_uid: &str) -> Vec<Value> {
        let v = self.ok("GET", "/v1/customers?limit=100", None).await;
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["metadata"]["alcove_tenant_uid"] == tenant_uid)
            .cloned()
            .collect()
    }

    /// Every item of a list endpoint (`path` with its query), page by page.
    pub async fn list_all(&self, path: &str) -> Vec<Value> {
        let mut items: Vec<Value> = Vec::new();
        loop {
            let after =
                items.last().map(|i| format!("&starting_after={}", i["id"].as_str().unwrap()));
            let page = self
                .ok("GET", &format!("{path}&limit=100{}", after.unwrap_or_default()), None)
                .await;
            items.extend(page["data"].as_array().unwrap().iter().cloned());
            if page["has_more"] != true {
                return items;
            }
        }
    }

    /// The usage records of a customer, oldest period first.
    pub async fn usage(&self, customer: &str) -> Vec<Value> {
        let mut items = self.list_all(&format!("/v1/invoiceitems?customer={customer}")).await;
        items.sort_by_key(|i| {
            i["metadata"]["period_start"].as_str().unwrap_or_default().to_string()
        });
        items
    }

    /// The `payment_intent.succeeded` event Stripe made for payment intent `pi`.
    pub async fn succeeded_event(&self, pi: &str) -> Value {
        let events = self.list_all("/v1/events?type=payment_intent.succeeded").await;
        events.into_iter().find(|e| e["data"]["object"]["id"] == pi).expect("the event Stripe made")
    }

    /// Has localstripe deliver `payment_intent.succeeded` to `url`, signed with [`WHSEC`].
    pub async fn send_webhooks_to(&self, url: &str) {
        let hook = json!({"url": url, "secret": WHSEC, "events": ["payment_intent.succeeded"]});
        self.ok("POST", "/_config/webhooks/alcove", Some(hook)).await;
    }

    /// A card payment by the customer, confirmed at once: Stripe then sends
    /// `payment_intent.succeeded` to the registered webhook.
    pub async fn pay(&self, customer: &str, amount: i64) -> String {
        let pm = self.ok("POST", "/v1/payment_methods", Some(json!({"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}))).await;
        let pi = self.ok("POST", "/v1/payment_intents", Some(json!({"amount": amount, "currency": "usd", "customer": customer, "payment_method": pm["id"], "confirm": true}))).await;
        assert_eq!(pi["status"], "succeeded", "{pi}");
        pi["id"].as_str().unwrap().to_string()
    }
}
