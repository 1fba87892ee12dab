//! `alcove dashboard`'s settings, and the model catalogue customers pick from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use alcove_crds::instance::ModelFormat;

const LISTEN: &str = "0.0.0.0:8080";
const MAIL_FROM: &str = "Alcove <no-reply@alcove.localhost>";
const LOG_FORMAT: &str = "text";
const EMBEDDING_MODEL: &str = "default-embedding";
const STRIPE_API: &str = "https://api.stripe.com/";
const STRIPE_JS: &str = "https://js.stripe.com/v3/";

/// A Stripe secret key: never printed, not even by `Debug`.
#[derive(Clone)]
pub struct StripeKey(pub String);

impl std::fmt::Debug for StripeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StripeKey(..)")
    }
}

impl FromStr for StripeKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() { Err("empty".into()) } else { Ok(StripeKey(s.to_string())) }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DashboardArgs {
    /// Address the pages are served on (plain HTTP: TLS ends at the ingress).
    #[arg(long, env = "ALCOVE_DASHBOARD_LISTEN", default_value = LISTEN)]
    pub listen: SocketAddr,
    /// The URL customers open, e.g. `https://dashboard.example.com`. Its scheme decides the
    /// cookie's `Secure` flag; its origin is the only one state-changing requests may come from.
    #[arg(long, env = "ALCOVE_DASHBOARD_URL")]
    pub public_url: String,
    /// The SMTP relay that carries sign-in codes: `smtp://host:25`, `smtp://host:587?tls=required`,
    /// `smtps://user:password@host:465`.
    #[arg(long, env = "ALCOVE_DASHBOARD_SMTP")]
    pub smtp: String,
    /// The sender of sign-in mail.
    #[arg(long, env = "ALCOVE_DASHBOARD_MAIL_FROM", default_value = MAIL_FROM)]
    pub mail_from: String,
    /// A file holding the dashboard's secret (at least 32 bytes; a mounted Secret). It keys the
    /// codes' hashes and the CSRF tokens. Without it a random one is made at start.
    #[arg(long, env = "ALCOVE_DASHBOARD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Where codes and sessions are kept: `sqlite:///path/dashboard.db` (one replica) or
    /// `postgres://user:password@host/db` (several replicas share it).
    #[arg(long, env = "ALCOVE_DASHBOARD_STORE")]
    pub store: String,
    /// The customers' OpenAI endpoint (the gateway's public URL), shown on instance pages.
    #[arg(long, env = "ALCOVE_GATEWAY_URL")]
    pub gateway_url: String,
    /// Where the dashboard itself reaches the gateway for the chat playground (default: the
    /// public URL), e.g. the gateway's in-cluster Service.
    #[arg(long, env = "ALCOVE_GATEWAY_INTERNAL_URL")]
    pub gateway_internal_url: Option<String>,
    /// A PEM file of the CA the gateway's certificate chains to, when it is a private one.
    #[arg(long, env = "ALCOVE_GATEWAY_CA")]
    pub gateway_ca: Option<PathBuf>,
    /// The model catalogue: `NAME=FORMAT[:PATH]` for each platform model customers may pick,
    /// e.g. `default=safetensors`, `default-gguf=gguf:model.gguf`.
    #[arg(long = "model", env = "ALCOVE_DASHBOARD_MODELS", value_delimiter = ',', required = true)]
    pub models: Vec<CatalogueModel>,
    /// The platform model knowledge bases made in the dashboard embed with.
    #[arg(long, env = "ALCOVE_DASHBOARD_EMBEDDING_MODEL", default_value = EMBEDDING_MODEL)]
    pub embedding_model: String,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For` is believed,
    /// e.g. the ingress's: the per-client sign-in limit counts the client behind them.
    #[arg(long, env = "ALCOVE_DASHBOARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<alcove_gateway::server::Cidr>,
    /// The gateway's usage store (its `--usage-store`: PostgreSQL, or its SQLite file on the same
    /// machine), read for the usage page: tokens per day and the request log. Without it the
    /// page says the log is not connected.
    #[arg(long, env = "ALCOVE_DASHBOARD_USAGE_STORE", hide_env_values = true)]
    pub usage_store: Option<String>,
    /// A Stripe secret key for top-ups: a restricted key that may create PaymentIntents, add
    /// customers' card sources and read PaymentIntents and invoice items. Without it the billing
    /// page shows the balance and history the cluster knows, and offers no top-up.
    #[arg(long, env = "ALCOVE_STRIPE_API_KEY", hide_env_values = true)]
    pub stripe_api_key: Option<StripeKey>,
    /// Base URL of Stripe's API (tests point it at localstripe).
    #[arg(long, env = "ALCOVE_STRIPE_API_BASE", default_value = STRIPE_API)]
    pub stripe_api_base: String,
    /// The publishable key (`pk_...`) Stripe.js uses in the page; required with a secret key.
    #[arg(long, env = "ALCOVE_STRIPE_PUBLISHABLE_KEY", requires = "stripe_api_key")]
    pub stripe_publishable_key: Option<String>,
    /// Where the page loads Stripe.js from (localstripe serves a stand-in at
    /// `<localstripe>/js.stripe.com/v3/`).
    #[arg(long, env = "ALCOVE_STRIPE_JS_URL", default_value = STRIPE_JS)]
    pub stripe_js_url: String,
    /// Self sign-up, off unless set: an address that proves itself with a code gets a Tenant of
    /// this tier (`free` or `basic`), as its only owner. The dashboard then creates Tenants.
    #[arg(long, env = "ALCOVE_DASHBOARD_SIGNUP_TIER", requires = "signup_region")]
    pub signup_tier: Option<String>,
    /// The region sign-up tenants live in, e.g. `tw-taipei-1`.
    #[arg(long, env = "ALCOVE_DASHBOARD_SIGNUP_REGION", requires = "signup_tier")]
    pub signup_region: Option<String>,
    /// Sign-up tenants are billed in this currency (a Stripe customer is made for each).
    #[arg(long, env = "ALCOVE_DASHBOARD_SIGNUP_CURRENCY")]
    pub signup_currency: Option<String>,
    /// New accounts the whole dashboard makes per hour, at most (each client address: 3 a day).
    #[arg(long, env = "ALCOVE_DASHBOARD_SIGNUPS_PER_HOUR", default_value_t = 20)]
    pub signups_per_hour: usize,
    #[cfg(feature = "test-hooks")]
    /// Tests only: read "now" from this file (an RFC 3339 instant) instead of the system clock.
    #[arg(long, env = "ALCOVE_CLOCK_FILE")]
    pub clock_file: Option<PathBuf>,
    /// `text` or `json` logs.
    #[arg(long, env = "ALCOVE_LOG_FORMAT", default_value = LOG_FORMAT)]
    pub log_format: String,
}

impl DashboardArgs {
    /// A dashboard inside another process (`alcove up`): a free loopback port, every other
    /// setting at its command-line default.
    pub fn embedded(
        smtp: String,
        store: String,
        gateway_url: String,
        models: Vec<CatalogueModel>,
    ) -> DashboardArgs {
        DashboardArgs {
            store,
            listen: ([127, 0, 0, 1], 0).into(),
            public_url: String::new(),
            smtp,
            mail_from: MAIL_FROM.into(),
            key_file: None,
            gateway_url,
            gateway_internal_url: None,
            gateway_ca: None,
            models,
            trusted_proxies: Vec::new(),
            embedding_model: EMBEDDING_MODEL.into(),
            usage_store: None,
            stripe_api_key: None,
            stripe_api_base: STRIPE_API.into(),
            stripe_publishable_key: None,
            stripe_js_url: STRIPE_JS.into(),
            signup_tier: None,
            signup_region: None,
            signup_currency: None,
            signups_per_hour: 20,
            #[cfg(feature = "test-hooks")]
            clock_file: None,
            log_format: LOG_FORMAT.into(),
        }
    }
}

/// A platform model customers may pick: the name `spec.model.source.platform` takes.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueModel {
    pub name: String,
    pub format: ModelFormat,
    pub path: Option<String>,
}

impl FromStr for CatalogueModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected NAME=FORMAT[:PATH], e.g. default=safetensors")
        })?;
        let (format, path) = match rest.split_once(':') {
            Some((f, p)) => (f, Some(p.to_string())),
            None => (rest, None),
        };
        let format = match format {
            "safetensors" => ModelFormat::Safetensors,
            "gguf" => ModelFormat::Gguf,
            other => {
                return Err(format!("{s:?}: format {other:?} is neither safetensors nor gguf"));
            }
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("{s:?}: the model needs a name"));
        }
        if format == ModelFormat::Gguf && path.as_deref().is_none_or(|p| !p.ends_with(".gguf")) {
            return Err(format!("{s:?}: a gguf model names its file, e.g. {name}=gguf:model.gguf"));
        }
        Ok(CatalogueModel { name: name.to_string(), format, path: path.filter(|p| !p.is_empty()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_entries_parse_with_worded_errors() {
        let m: CatalogueModel = "default=safetensors".parse().unwrap();
        assert_eq!(
            (m.name.as_str(), m.format, m.path),
            ("default", ModelFormat::Safetensors, None)
        );
        let g: CatalogueModel = "default-gguf=gguf:model.gguf".parse().unwrap();
        assert_eq!(g.path.as_deref(), Some("model.gguf"));
        assert!("default".parse::<CatalogueModel>().unwrap_err().contains("NAME=FORMAT"));
        assert!("x=onnx".parse::<CatalogueModel>().unwrap_err().contains("neither"));
        assert!("x=gguf".parse::<CatalogueModel>().unwrap_err().contains("names its file"));
        assert!("=safetensors".parse::<CatalogueModel>().unwrap_err().contains("name"));
    }
}
