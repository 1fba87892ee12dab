//! Prometheus metrics by tenant and instance. Labels are object names, endpoints and status
//! codes: never a key, a key id, a prompt or a completion.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub tokens: IntCounterVec,
    pub duration: HistogramVec,
    pub rate_limited: IntCounterVec,
    pub auth_failures: IntCounter,
    pub instances: IntGauge,
    pub records_written: IntCounter,
    pub records_dropped: IntCounter,
    pub records_purged: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "alcove_gateway_requests_total",
                "Requests answered, by instance, endpoint and status code",
            ),
            &["tenant", "instance", "endpoint", "code"],
        )
        .expect("metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "alcove_gateway_tokens_total",
                "Tokens the instances reported, by kind (prompt, completion)",
            ),
            &["tenant", "instance", "kind"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "alcove_gateway_request_duration_seconds",
                "From the request's arrival to its last byte, by instance and endpoint",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["tenant", "instance", "endpoint"],
        )
        .expect("metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "alcove_gateway_rate_limited_total",
                "Requests refused by a rate limit, by limit",
            ),
            &["tenant", "instance", "limit"],
        )
        .expect("metric");
        let auth_failures = IntCounter::new(
            "alcove_gateway_auth_failures_total",
            "Requests with a missing, unknown or rotated-out key",
        )
        .expect("metric");
        let instances = IntGauge::new("alcove_gateway_instances", "Instances with a published key")
            .expect("metric");
        let records_written = IntCounter::new(
            "alcove_gateway_usage_records_written_total",
            "Usage records the store accepted",
        )
        .expect("metric");
        let records_dropped = IntCounter::new(
            "alcove_gateway_usage_records_dropped_total",
            "Usage records dropped because the store fell too far behind",
        )
        .expect("metric");
        let records_purged = IntCounter::new(
            "alcove_gateway_usage_records_purged_total",
            "Usage records deleted after their 90 days",
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tokens.clone()),
            Box::new(duration.clone()),
            Box::new(rate_limited.clone()),
            Box::new(auth_failures.clone()),
            Box::new(instances.clone()),
            Box::new(records_written.clone()),
            Box::new(records_dropped.clone()),
            Box::new(records_purged.clone()),
        ] {
            registry.register(c).expect("register metric");
        }
        Metrics {
            registry,
            requests,
            tokens,
            duration,
            rate_limited,
            auth_failures,
            instances,
            records_written,
            records_dropped,
            records_purged,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
