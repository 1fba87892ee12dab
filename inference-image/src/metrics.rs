//! Prometheus metrics of the server. Counts and timings only: no prompt, completion, key or
//! conversation id ever becomes a label or a value.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub completion_tokens: IntCounter,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub queue_depth: IntGauge,
    pub model_load_seconds: Gauge,
    pub prompt_tokens_reused: IntCounter,
    pub prefix_cache_bytes: IntGauge,
    pub step_sequences: Histogram,
    pub running: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "alcove_inference_requests_total",
                "HTTP requests by endpoint and status code.",
            ),
            &["endpoint", "code"],
        )
        .expect("valid metric");
        let prompt_tokens = IntCounter::new(
            "alcove_inference_prompt_tokens_total",
            "Prompt tokens read (tokens in).",
        )
        .expect("valid metric");
        let completion_tokens = IntCounter::new(
            "alcove_inference_completion_tokens_total",
            "Tokens generated (tokens out).",
        )
        .expect("valid metric");
        let time_to_first_token = Histogram::with_opts(
            HistogramOpts::new(
                "alcove_inference_time_to_first_token_seconds",
                "From a request's arrival to its first generated token, queueing included.",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        let time_per_output_token = Histogram::with_opts(
            HistogramOpts::new(
                "alcove_inference_time_per_output_token_seconds",
                "Time between consecutive generated tokens.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )
        .expect("valid metric");
        let queue_depth =
            IntGauge::new("alcove_inference_queue_depth", "Requests waiting for the model.")
                .expect("valid metric");
        let model_load_seconds = Gauge::new(
            "alcove_inference_model_load_seconds",
            "How long loading the models took at start-up.",
        )
        .expect("valid metric");
        let prompt_tokens_reused = IntCounter::new(
            "alcove_inference_prompt_tokens_reused_total",
            "Prompt tokens not computed again: their KV state came from an earlier request.",
        )
        .expect("valid metric");
        let prefix_cache_bytes = IntGauge::new(
            "alcove_inference_prefix_cache_bytes",
            "Memory held by saved KV states of earlier prompts.",
        )
        .expect("valid metric");
        let step_sequences = Histogram::with_opts(
            HistogramOpts::new(
                "alcove_inference_step_sequences",
                "Generations carried by each forward pass (continuous batching).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("valid metric");
        let running = IntGauge::new(
            "alcove_inference_running_generations",
            "Generations in the batch now (at most --parallel).",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(prompt_tokens.clone()),
            Box::new(completion_tokens.clone()),
            Box::new(time_to_first_token.clone()),
            Box::new(time_per_output_token.clone()),
            Box::new(queue_depth.clone()),
            Box::new(model_load_seconds.clone()),
            Box::new(prompt_tokens_reused.clone()),
            Box::new(prefix_cache_bytes.clone()),
            Box::new(step_sequences.clone()),
            Box::new(running.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            time_to_first_token,
            time_per_output_token,
            queue_depth,
            model_load_seconds,
            prompt_tokens_reused,
            prefix_cache_bytes,
            step_sequences,
            running,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
