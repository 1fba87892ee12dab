//! Prometheus metrics. Labels never carry prompt text or secrets: controller names, phases,
//! tenant names (which are cluster-level object names), error reasons.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub instances_by_phase: IntGaugeVec,
    pub gpus_in_use: IntGaugeVec,
    pub time_to_ready: Histogram,
    pub gpu_seconds: IntCounterVec,
    pub leader: IntGauge,
    pub shards_owned: IntGauge,
    pub erasures: IntCounterVec,
    pub credit: IntGaugeVec,
    pub low_balance: IntGaugeVec,
    pub usage_records: IntCounterVec,
    pub webhooks: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("alcove_reconcile_total", "Reconciles run, by controller"),
            &["controller"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "alcove_reconcile_errors_total",
                "Reconciles that failed, by controller and reason",
            ),
            &["controller", "reason"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "alcove_reconcile_duration_seconds",
                "Time spent in one reconcile, by controller",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["controller"],
        )
        .expect("metric");
        let instances_by_phase = IntGaugeVec::new(
            Opts::new("alcove_instances", "InferenceInstances by phase"),
            &["phase"],
        )
        .expect("metric");
        let gpus_in_use = IntGaugeVec::new(
            Opts::new("alcove_gpus_in_use", "GPUs held by running instances, by tenant"),
            &["tenant"],
        )
        .expect("metric");
        let time_to_ready = Histogram::with_opts(
            HistogramOpts::new(
                "alcove_instance_time_to_ready_seconds",
                "Time from an instance's creation to its first Ready",
            )
            .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
        )
        .expect("metric");
        let gpu_seconds = IntCounterVec::new(
            Opts::new(
                "alcove_gpu_seconds_total",
                "GPU-seconds of finished instance runs (suspend, failure, destroy), by tenant",
            ),
            &["tenant"],
        )
        .expect("metric");
        let erasures = IntCounterVec::new(
            Opts::new("alcove_erasures_total", "Volumes erased by retention, by data class"),
            &["class"],
        )
        .expect("metric");
        let credit = IntGaugeVec::new(Opts::new("alcove_tenant_credit_balance", "Credit balance in the currency's minor unit (credit minus usage, reported or not), by tenant and currency"), &["tenant", "currency"]).expect("metric");
        let low_balance = IntGaugeVec::new(
            Opts::new(
                "alcove_tenant_low_balance",
                "1 while a tenant's balance is below its low-balance threshold",
            ),
            &["tenant"],
        )
        .expect("metric");
        let usage_records = IntCounterVec::new(
            Opts::new(
                "alcove_billing_usage_records_total",
                "Usage records created in Stripe, by tenant",
            ),
            &["tenant"],
        )
        .expect("metric");
        let webhooks = IntCounterVec::new(
            Opts::new(
                "alcove_billing_webhooks_total",
                "Stripe webhook deliveries, by outcome (applied, duplicate, ignored, refused)",
            ),
            &["outcome"],
        )
        .expect("metric");
        let leader = IntGauge::new("alcove_leader", "1 while this replica holds the leader Lease")
            .expect("metric");
        let shards_owned = IntGauge::new(
            "alcove_shards_owned",
            "Shard Leases this replica holds (with --shards above 1)",
        )
        .expect("metric");
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(reconciles.clone()),
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(instances_by_phase.clone()),
            Box::new(gpus_in_use.clone()),
            Box::new(time_to_ready.clone()),
            Box::new(gpu_seconds.clone()),
            Box::new(leader.clone()),
            Box::new(shards_owned.clone()),
            Box::new(erasures.clone()),
            Box::new(credit.clone()),
            Box::new(low_balance.clone()),
            Box::new(usage_records.clone()),
            Box::new(webhooks.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            instances_by_phase,
            gpus_in_use,
            time_to_ready,
            gpu_seconds,
            leader,
            shards_owned,
            erasures,
            credit,
            low_balance,
            usage_records,
            webhooks,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = String::new();
        let encoder = prometheus::TextEncoder::new();
        encoder.encode_utf8(&self.registry.gather(), &mut buf).expect("text encoding");
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
