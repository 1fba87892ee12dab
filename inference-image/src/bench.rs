//! `alcove-inference bench`: time to first token and decode speed on one model file, with the
//! same load and forward code the server runs. `inference-image/bench/compare.sh` runs it beside
//! llama.cpp on the same GGUF file, prompt tokens and thread count.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;

use crate::model::{self, ChatModel, ModelFiles};

pub struct Options {
    pub model: PathBuf,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub runs: usize,
    /// Where to write the prompt's token ids, so another engine can be fed the same ones.
    pub prompt_ids_out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub engine: &'static str,
    pub model: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub runs: usize,
    pub load_seconds: f64,
    /// Median over runs: prefill of the prompt plus the first sampled token.
    pub ttft_ms: f64,
    /// Median over runs: tokens after the first, per second.
    pub decode_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let device = model::device();
    let mut model = match model::detect(&opts.model)? {
        ModelFiles::Gguf(f) => ChatModel::load_gguf(&f, model::default_id(&opts.model), &device)?,
        ModelFiles::Llama(d) => {
            ChatModel::load_safetensors(&d, model::default_id(&opts.model), &device)?
        }
        ModelFiles::Bert(_) => {
            anyhow::bail!(
                "bench measures generation; {} is an embedding model",
                opts.model.display()
            )
        }
    };
    let load_seconds = started.elapsed().as_secs_f64();
    let vocab = model.vocab.clone();
    if opts.prompt_tokens + opts.gen_tokens > vocab.context_length {
        anyhow::bail!(
            "{} prompt + {} generated tokens exceed the context of {}",
            opts.prompt_tokens,
            opts.gen_tokens,
            vocab.context_length
        );
    }
    // Prose, repeated until long enough, cut to exactly the requested number of tokens.
    let mut prompt = Vec::new();
    let text = include_str!("testmodel/corpus.txt");
    while prompt.len() < opts.prompt_tokens {
        prompt.extend(vocab.encode_rendered(text)?);
    }
    prompt.truncate(opts.prompt_tokens.max(1));
    if let Some(path) = &opts.prompt_ids_out {
        std::fs::write(path, serde_json::to_vec(&prompt)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let mut ttft = Vec::new();
    let mut decode = Vec::new();
    // One untimed run first: page in the weights, warm the caches and thread pool.
    for run in 0..=opts.runs {
        model.reset()?;
        let mut sampler = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
        let t0 = Instant::now();
        let logits = model.forward(&prompt, 0)?;
        let mut token = sampler.sample(&logits)?;
        let first = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for i in 1..opts.gen_tokens {
            let logits = model.forward(&[token], prompt.len() + i - 1)?;
            token = sampler.sample(&logits)?;
        }
        let rest = t1.elapsed().as_secs_f64();
        if run > 0 {
            ttft.push(first * 1000.0);
            decode.push((opts.gen_tokens.saturating_sub(1)) as f64 / rest.max(1e-9));
        }
    }
    let ttft_ms = median(ttft);
    Ok(Report {
        engine: "candle",
        model: opts.model.display().to_string(),
        threads: candle_core::utils::get_num_threads(),
        prompt_tokens: prompt.len(),
        gen_tokens: opts.gen_tokens,
        runs: opts.runs,
        load_seconds,
        ttft_ms,
        decode_tokens_per_s: median(decode),
        prefill_tokens_per_s: prompt.len() as f64 / (ttft_ms / 1000.0),
    })
}
