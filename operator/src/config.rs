//! Operator configuration: command-line flags (each with an `ALCOVE_*` environment variable) and
//! an optional YAML file for the tables a platform team tunes (tiers, prices, models).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use alcove_crds::{DataClass, Tier, Window};
use serde::Deserialize;

/// `alcove operator` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespace the operator runs in: its Lease, erasure receipts and the default gateway.
    #[arg(long, env = "ALCOVE_NAMESPACE", default_value = "alcove-system")]
    pub namespace: String,
    /// Address of the HTTP server (/metrics, /healthz, /readyz, Stripe webhooks).
    #[arg(long, env = "ALCOVE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// YAML file with tiers, prices, platform models and retention defaults (see docs/operations.md).
    #[arg(long, env = "ALCOVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds between periodic reconciles of unchanged objects (drift repair).
    #[arg(long, env = "ALCOVE_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// Elect a leader through a Lease so that several replicas can run; only the leader reconciles.
    #[arg(long, env = "ALCOVE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Split the tenants into this many shards, each held by one replica through its own Lease
    /// (`alcove-operator-shard-I-of-N`); replicas share the shards evenly and re-take a dead
    /// one's within 15 s. Above 1, the shard Leases replace the leader Lease.
    #[arg(long, env = "ALCOVE_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// Identity in the leader Lease (default: hostname and process id).
    #[arg(long, env = "ALCOVE_IDENTITY")]
    pub identity: Option<String>,
    /// Log format: `json` or `text`.
    #[arg(long, env = "ALCOVE_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`, or the in-cluster service account).
    #[arg(long, env = "ALCOVE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[cfg(feature = "test-hooks")]
    /// Tests only: read "now" from this file (an RFC 3339 instant) instead of the system clock.
    #[arg(long, env = "ALCOVE_CLOCK_FILE", hide = true)]
    pub clock_file: Option<PathBuf>,
    /// Stripe secret API key. Without one, billing is disabled (and every Tenant says so).
    #[arg(long, env = "ALCOVE_STRIPE_API_KEY", hide_env_values = true)]
    pub stripe_api_key: Option<Secret>,
    /// Base URL of Stripe's API (tests point it at localstripe).
    #[arg(long, env = "ALCOVE_STRIPE_API_BASE", default_value = "https://api.stripe.com/")]
    pub stripe_api_base: String,
    /// Signing secret of the Stripe webhook endpoint (`whsec_...`); without one, /webhooks/stripe
    /// refuses every event.
    #[arg(long, env = "ALCOVE_STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<Secret>,
    #[cfg(feature = "test-hooks")]
    /// Tests only: SIGKILL the operator right after this billing step (`customer-created`,
    /// `usage-reported`, `token-usage-reported`), before its result is recorded.
    #[arg(long, env = "ALCOVE_CRASH_AFTER", hide = true)]
    pub crash_after: Option<String>,
}

/// Placement and storage of one tier.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierConfig {
    /// Labels selecting the tier's node pool (besides region and, for pro, the tenant label).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the pool's taints, as Kubernetes tolerations.
    #[serde(default)]
    pub tolerations: Vec<serde_json::Value>,
    /// StorageClass for the tier's volumes (empty: the cluster default).
    #[serde(default)]
    pub storage_class: String,
    /// Size of a knowledge-base volume when the KnowledgeBase does not say.
    #[serde(default = "default_kb_size")]
    pub knowledge_base_size: String,
    /// Size of an instance's conversation-history volume.
    #[serde(default = "default_history_size")]
    pub history_size: String,
    /// Size of a model-cache volume (one per model source, shared by the tenant's instances of
    /// it; counted against the tenant's storage quota). A model larger than this is refused
    /// before it downloads.
    #[serde(default = "default_model_cache_size")]
    pub model_cache_size: String,
    /// Gateway requests per minute per instance key, where `spec.limits` does not say.
    #[serde(default)]
    pub requests_per_minute: Option<i64>,
    /// Gateway tokens (prompt plus completion) per minute per instance key, where `spec.limits`
    /// does not say.
    #[serde(default)]
    pub tokens_per_minute: Option<i64>,
}

/// The gateway's limits per tier when the configuration names none: the free pool is shared, so
/// it gets the least; enterprise nodes are the customer's own.
fn default_rate_limits(tier: Tier) -> (i64, i64) {
    match tier {
        Tier::Free => (20, 40_000),
        Tier::Basic => (60, 200_000),
        Tier::Pro => (600, 2_000_000),
        Tier::Enterprise => (6_000, 20_000_000),
    }
}

/// Prices and the usage reporting interval.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BillingConfig {
    /// Seconds between usage reports of a running instance; usage is also reported at every stop.
    #[serde(default = "default_report_interval")]
    pub report_interval_seconds: u64,
    /// Prices by currency (`usd`), then by GPU product as nodes label it
    /// (`nvidia.com/gpu.product`), or by served model name for token prices; `"*"` for any
    /// product or model not listed.
    #[serde(default)]
    pub prices: BTreeMap<String, BTreeMap<String, Price>>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            report_interval_seconds: default_report_interval(),
            prices: BTreeMap::new(),
        }
    }
}

fn default_report_interval() -> u64 {
    60
}

/// The prices of one GPU product (or model) in one currency, in minor units (cents).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    /// Per GPU-hour; a MIG slice counts as one GPU.
    #[serde(default)]
    pub per_gpu_hour: Option<i64>,
    /// Per million prompt tokens through the gateway.
    #[serde(default)]
    pub per_million_input_tokens: Option<i64>,
    /// Per million completion tokens through the gateway.
    #[serde(default)]
    pub per_million_output_tokens: Option<i64>,
}

/// Token prices: per million prompt and completion tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrice {
    pub input: i64,
    pub output: i64,
}

impl BillingConfig {
    /// The GPU-hour price of `product` in `currency`, falling back to the currency's `"*"`.
    pub fn gpu_price(&self, currency: &str, product: Option<&str>) -> Option<i64> {
        let table = self.prices.get(currency)?;
        product.and_then(|p| table.get(p)?.per_gpu_hour).or_else(|| table.get("*")?.per_gpu_hour)
    }

    /// The token prices for `model` on `product` in `currency`: the model's entry, else the
    /// product's, else `"*"` (the first that names a token price; an unnamed side is free).
    pub fn token_price(
        &self,
        currency: &str,
        model: &str,
        product: Option<&str>,
    ) -> Option<TokenPrice> {
        let table = self.prices.get(currency)?;
        [Some(model), product, Some("*")]
            .into_iter()
            .flatten()
            .filter_map(|k| table.get(k))
            .find(|p| p.per_million_input_tokens.is_some() || p.per_million_output_tokens.is_some())
            .map(|p| TokenPrice {
                input: p.per_million_input_tokens.unwrap_or(0),
                output: p.per_million_output_tokens.unwrap_or(0),
            })
    }
}

fn default_kb_size() -> String {
    "1Gi".into()
}
fn default_history_size() -> String {
    "1Gi".into()
}
fn default_model_cache_size() -> String {
    "20Gi".into()
}

/// Where models named by `spec.model.source.uri` may come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSources {
    /// Base URL of the Hugging Face–compatible hub that `hf://` URIs name.
    #[serde(default = "default_hub")]
    pub hub_endpoint: String,
    /// Let the fetch step reach private, loopback and link-local addresses (an in-cluster model
    /// store). Off by default: a tenant's URI must not reach the platform's own services or a
    /// cloud metadata endpoint.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// PEM certificates the fetch step trusts besides the image's CA bundle (an internal CA).
    #[serde(default)]
    pub ca_certificates: String,
    /// The S3-compatible store `s3://bucket/…` URIs name.
    #[serde(default)]
    pub s3: S3Store,
}

/// An S3-compatible store (AWS, MinIO, Ceph, …); credentials come from the instance's Secret.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Store {
    #[serde(default = "default_s3_endpoint")]
    pub endpoint: String,
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// `endpoint/bucket/key` URLs rather than `bucket.endpoint/key` (most stores besides AWS).
    #[serde(default)]
    pub path_style: bool,
}

fn default_s3_endpoint() -> String {
    "https://s3.amazonaws.com".into()
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

impl Default for S3Store {
    fn default() -> Self {
        S3Store { endpoint: default_s3_endpoint(), region: default_s3_region(), path_style: false }
    }
}

fn default_hub() -> String {
    "https://huggingface.co".into()
}

impl Default for ModelSources {
    fn default() -> Self {
        ModelSources {
            hub_endpoint: default_hub(),
            allow_private_addresses: false,
            ca_certificates: String::new(),
            s3: S3Store::default(),
        }
    }
}

/// The YAML file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// Namespaces whose pods may reach instance ports (gateway, dashboard). Default: the
    /// operator's own namespace.
    #[serde(default)]
    pub gateway_namespaces: Vec<String>,
    /// Image of the inference server.
    #[serde(default = "default_image")]
    pub inference_image: String,
    #[serde(default)]
    pub tiers: BTreeMap<Tier, TierConfig>,
    /// How platform-provided models are mounted: a CSI driver serving read-only model
    /// directories on GPU nodes, and the volume attribute naming the model.
    #[serde(default)]
    pub platform_models: PlatformModels,
    /// Platform-wide retention defaults per data class (`7d`, `24h`, `90m`), used where a
    /// Tenant's spec says nothing. Each must be within the privacy promise and above any legal
    /// minimum (see docs/privacy.md).
    #[serde(default)]
    pub retention: BTreeMap<DataClass, String>,
    /// Prices and the usage reporting interval (see docs/billing.md).
    #[serde(default)]
    pub billing: BillingConfig,
    /// Where `spec.model.source.uri` models may be fetched from.
    #[serde(default)]
    pub model_sources: ModelSources,
}

pub fn default_image() -> String {
    "ghcr.io/alcove-dev/alcove-inference:0.1.0".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformModels {
    pub csi_driver: String,
    pub attribute: String,
}

impl Default for PlatformModels {
    fn default() -> Self {
        PlatformModels { csi_driver: "models.alcove.dev".into(), attribute: "model".into() }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            gateway_namespaces: Vec::new(),
            inference_image: default_image(),
            tiers: BTreeMap::new(),
            platform_models: PlatformModels::default(),
            retention: BTreeMap::new(),
            billing: BillingConfig::default(),
            model_sources: ModelSources::default(),
        }
    }
}

/// Everything controllers read.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub gateway_namespaces: Vec<String>,
    pub inference_image: String,
    pub tiers: BTreeMap<Tier, TierConfig>,
    pub platform_models: PlatformModels,
    pub resync: Duration,
    /// Retention windows where a Tenant's spec says nothing (validated; product defaults otherwise).
    pub retention: BTreeMap<DataClass, Window>,
    pub billing: BillingConfig,
    pub model_sources: ModelSources,
}

impl Config {
    pub fn load(args: &OperatorArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                serde_saphyr::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        Config::from_file(file, &args.namespace, Duration::from_secs(args.resync_seconds.max(1)))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}",
                    args.config.as_deref().unwrap_or(std::path::Path::new("")).display()
                )
            })
    }

    pub fn from_file(
        file: FileConfig,
        namespace: &str,
        resync: Duration,
    ) -> anyhow::Result<Config> {
        let gateway_namespaces = if file.gateway_namespaces.is_empty() {
            vec![namespace.to_string()]
        } else {
            file.gateway_namespaces
        };
        let mut retention = BTreeMap::new();
        for (class, text) in &file.retention {
            let w = Window::parse(text).ok_or_else(|| {
                anyhow::anyhow!(
                    "retention.{}: {text:?} is not a window like 7d, 24h or 90m",
                    class.as_str()
                )
            })?;
            if let Some(max) = class.max_window()
                && w > max
            {
                anyhow::bail!(
                    "retention.{}: {w} is longer than the privacy promise ({max})",
                    class.as_str()
                );
            }
            // A platform default applies to every tier, so it must meet the strictest minimum.
            if let Some(min) =
                alcove_crds::Tier::ALL.iter().filter_map(|t| class.legal_minimum(*t)).max()
                && w < min
            {
                anyhow::bail!(
                    "retention.{}: {w} is shorter than the legal minimum ({min})",
                    class.as_str()
                );
            }
            retention.insert(*class, w);
        }
        if file.billing.report_interval_seconds == 0 {
            anyhow::bail!("billing.reportIntervalSeconds must be at least 1");
        }
        for (currency, table) in &file.billing.prices {
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
                anyhow::bail!(
                    "billing.prices.{currency}: a currency is a lower-case ISO 4217 code like usd"
                );
            }
            for (product, price) in table {
                for (field, value) in [
                    ("perGpuHour", price.per_gpu_hour),
                    ("perMillionInputTokens", price.per_million_input_tokens),
                    ("perMillionOutputTokens", price.per_million_output_tokens),
                ] {
                    if value.is_some_and(|v| v < 0) {
                        anyhow::bail!(
                            "billing.prices.{currency}.{product}.{field} may not be negative"
                        );
                    }
                }
                if *price == Price::default() {
                    anyhow::bail!(
                        "billing.prices.{currency}.{product} names no price (perGpuHour, perMillionInputTokens or perMillionOutputTokens)"
                    );
                }
            }
        }
        Ok(Config {
            billing: file.billing,
            retention,
            namespace: namespace.into(),
            gateway_namespaces,
            inference_image: file.inference_image,
            tiers: file.tiers,
            platform_models: file.platform_models,
            model_sources: file.model_sources,
            resync,
        })
    }

    /// The retention window of `class` where a Tenant's spec says nothing.
    pub fn default_window(&self, class: DataClass) -> Window {
        self.retention.get(&class).copied().unwrap_or_else(|| class.default_window())
    }

    /// The tier's settings, or the defaults: free and basic share the pool labelled
    /// `alcove.dev/pool=shared`.
    pub fn tier(&self, tier: Tier) -> TierConfig {
        self.tiers.get(&tier).cloned().unwrap_or_else(|| match tier {
            Tier::Free | Tier::Basic => TierConfig {
                node_selector: [("alcove.dev/pool".to_string(), "shared".to_string())].into(),
                knowledge_base_size: default_kb_size(),
                history_size: default_history_size(),
                model_cache_size: default_model_cache_size(),
                ..Default::default()
            },
            _ => TierConfig {
                knowledge_base_size: default_kb_size(),
                history_size: default_history_size(),
                model_cache_size: default_model_cache_size(),
                ..Default::default()
            },
        })
    }

    /// The gateway's limits for an instance of a tenant of `tier`: the instance's own
    /// `spec.limits`, else the tier's configuration, else the tier's default.
    pub fn rate_limits(
        &self,
        tier: Tier,
        spec: &alcove_crds::instance::Limits,
    ) -> alcove_crds::instance::RateLimits {
        let configured = self.tier(tier);
        let (rpm, tpm) = default_rate_limits(tier);
        alcove_crds::instance::RateLimits {
            requests_per_minute: spec
                .requests_per_minute
                .map(i64::from)
                .or(configured.requests_per_minute)
                .unwrap_or(rpm),
            tokens_per_minute: spec
                .tokens_per_minute
                .or(configured.tokens_per_minute)
                .unwrap_or(tpm),
        }
    }

    /// A configuration for unit tests.
    #[cfg(test)]
    pub fn for_tests() -> Config {
        Config::from_file(FileConfig::default(), "alcove-system", Duration::from_secs(300))
            .expect("default configuration")
    }
}

/// A secret flag value: never printed, not even by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() { Err("empty".into()) } else { Ok(Secret(s.to_string())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_retention(yaml: &str) -> anyhow::Result<Config> {
        let file: FileConfig = serde_saphyr::from_str(yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
        Config::from_file(file, "alcove-system", Duration::from_secs(300))
    }

    #[test]
    fn rate_limits_come_from_the_spec_then_the_tier_configuration_then_the_tier_default() {
        use alcove_crds::instance::{Limits, RateLimits};
        let file: FileConfig =
            serde_saphyr::from_str("tiers:\n  basic:\n    requestsPerMinute: 7\n").unwrap();
        let c = Config::from_file(file, "alcove-system", Duration::from_secs(300)).unwrap();
        let none = Limits::default();
        assert_eq!(
            c.rate_limits(Tier::Basic, &none),
            RateLimits { requests_per_minute: 7, tokens_per_minute: 200_000 }
        );
        assert_eq!(
            c.rate_limits(Tier::Free, &none),
            RateLimits { requests_per_minute: 20, tokens_per_minute: 40_000 }
        );
        let own = Limits { requests_per_minute: Some(3), tokens_per_minute: Some(9), ..none };
        assert_eq!(
            c.rate_limits(Tier::Basic, &own),
            RateLimits { requests_per_minute: 3, tokens_per_minute: 9 }
        );
    }

    #[test]
    fn retention_defaults_are_configurable_within_the_promise_and_the_law() {
        let c =
            with_retention("retention: {conversationHistory: 3d, stagedDocuments: 30m}").unwrap();
        assert_eq!(c.default_window(DataClass::ConversationHistory), Window::days(3));
        assert_eq!(c.default_window(DataClass::StagedDocuments), Window::minutes(30));
        assert_eq!(
            c.default_window(DataClass::KnowledgeBase),
            Window::days(7),
            "unset classes keep the product default"
        );

        let err = with_retention("retention: {conversationHistory: 8d}").unwrap_err().to_string();
        assert!(
            err.contains("retention.conversationHistory")
                && err.contains("longer than the privacy promise (7d)"),
            "{err}"
        );
        let err = with_retention("retention: {accountData: 1d}").unwrap_err().to_string();
        assert!(
            err.contains("retention.accountData")
                && err.contains("shorter than the legal minimum (7d)"),
            "{err}"
        );
        let err = with_retention("retention: {knowledgeBase: soon}").unwrap_err().to_string();
        assert!(err.contains("retention.knowledgeBase") && err.contains("\"soon\""), "{err}");
        assert!(
            with_retention("retention: {caches: 1d}").is_err(),
            "an unknown data class is refused"
        );
    }

    #[test]
    fn prices_fall_back_to_the_currency_default_and_bad_tables_are_refused() {
        let c = with_retention(
            "billing: {prices: {usd: {NVIDIA-H100-80GB-HBM3: {perGpuHour: 250}, '*': {perGpuHour: 120}}}}",
        )
        .unwrap();
        assert_eq!(c.billing.report_interval_seconds, 60);
        assert_eq!(c.billing.gpu_price("usd", Some("NVIDIA-H100-80GB-HBM3")), Some(250));
        assert_eq!(c.billing.gpu_price("usd", Some("NVIDIA-L4")), Some(120));
        assert_eq!(c.billing.gpu_price("usd", None), Some(120));
        assert_eq!(c.billing.gpu_price("eur", Some("NVIDIA-H100-80GB-HBM3")), None, "no eur table");
        assert_eq!(c.billing.token_price("usd", "chat", None), None, "no token prices");
        let t = with_retention(
            "billing: {prices: {usd: {chat: {perMillionInputTokens: 50, perMillionOutputTokens: 150}, NVIDIA-L4: {perGpuHour: 90, perMillionOutputTokens: 7}, '*': {perGpuHour: 120, perMillionInputTokens: 1}}}}",
        )
        .unwrap();
        let tp = |i, o| Some(super::TokenPrice { input: i, output: o });
        assert_eq!(
            t.billing.token_price("usd", "chat", Some("NVIDIA-L4")),
            tp(50, 150),
            "the model first"
        );
        assert_eq!(
            t.billing.token_price("usd", "bot", Some("NVIDIA-L4")),
            tp(0, 7),
            "then the product"
        );
        assert_eq!(t.billing.token_price("usd", "bot", None), tp(1, 0), "then *");
        assert_eq!(
            t.billing.gpu_price("usd", Some("chat")),
            Some(120),
            "a model entry has no GPU price"
        );
        let err = with_retention("billing: {prices: {usd: {'*': {}}}}").unwrap_err().to_string();
        assert!(err.contains("names no price"), "{err}");
        let err = with_retention("billing: {prices: {USD: {'*': {perGpuHour: 1}}}}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("billing.prices.USD"), "{err}");
        let err = with_retention("billing: {prices: {usd: {'*': {perGpuHour: -1}}}}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("may not be negative"), "{err}");
        assert!(with_retention("billing: {reportIntervalSeconds: 0}").is_err());
        assert!(
            with_retention("billing: {prices: {usd: {'*': {perHour: 1}}}}").is_err(),
            "unknown keys are refused"
        );
    }
}
