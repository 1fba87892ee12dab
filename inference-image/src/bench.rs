//! `alcove-inference bench`: time to first token and decode speed on one model file, with the
//! same load and forward code the server runs. `inference-image/bench/compare.sh` runs it beside
//! llama.cpp on the same GGUF file, prompt tokens and thread count.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;

use crate::model::{self, ChatModel, ModelFiles, PrefixCache, Sequence};

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
    /// The CPU's model name, so figures from different machines are not compared as one.
    pub cpu: String,
    /// Which SIMD paths and kernels ran.
    pub kernels: String,
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
    /// A second turn of the same conversation (the first turn's prompt and answer, then 32 more
    /// tokens): time to first token with the first turn in the prefix cache, how many prompt
    /// tokens it reused, and the same turn computed from scratch.
    pub turn2_prompt_tokens: usize,
    pub turn2_ttft_ms: f64,
    pub turn2_reused_tokens: usize,
    pub turn2_uncached_ttft_ms: f64,
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
        let mut sampler = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
        let t0 = Instant::now();
        let (mut seq, _) = model.begin(&prompt, &mut PrefixCache::new(0))?;
        let logits = prefill(&mut model, &mut seq, &prompt)?;
        let mut token = sampler.sample(&logits)?;
        let first = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 1..opts.gen_tokens {
            let logits = next(&mut model, &mut seq, &[token])?;
            token = sampler.sample(&logits)?;
        }
        let rest = t1.elapsed().as_secs_f64();
        if run > 0 {
            ttft.push(first * 1000.0);
            decode.push((opts.gen_tokens.saturating_sub(1)) as f64 / rest.max(1e-9));
        }
    }
    let ttft_ms = median(ttft);

    // The first turn of a conversation, kept in the prefix cache as the server keeps it.
    let mut cache = PrefixCache::new(256 << 20);
    let mut sampler = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
    let (mut seq, _) = model.begin(&prompt, &mut cache)?;
    let mut logits = prefill(&mut model, &mut seq, &prompt)?;
    let mut turn2 = prompt.clone();
    for _ in 0..opts.gen_tokens {
        let token = sampler.sample(&logits)?;
        turn2.push(token);
        logits = next(&mut model, &mut seq, &[token])?;
    }
    model.finish(seq, &mut cache);
    turn2.extend(vocab.encode_rendered(text)?.into_iter().take(32));
    let turn2_prompt_tokens = turn2.len();
    if turn2_prompt_tokens > vocab.context_length {
        anyhow::bail!("the second turn's {turn2_prompt_tokens} tokens exceed the context");
    }
    let t = Instant::now();
    let (mut seq, turn2_reused_tokens) = model.begin(&turn2, &mut cache)?;
    sampler.sample(&prefill(&mut model, &mut seq, &turn2)?)?;
    let turn2_ttft_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let (mut seq, _) = model.begin(&turn2, &mut PrefixCache::new(0))?;
    sampler.sample(&prefill(&mut model, &mut seq, &turn2)?)?;
    let turn2_uncached_ttft_ms = t.elapsed().as_secs_f64() * 1000.0;

    Ok(Report {
        engine: "candle",
        model: opts.model.display().to_string(),
        cpu: cpu_model(),
        kernels: kernels(&opts.model)?,
        threads: candle_core::utils::get_num_threads(),
        prompt_tokens: prompt.len(),
        gen_tokens: opts.gen_tokens,
        runs: opts.runs,
        load_seconds,
        ttft_ms,
        decode_tokens_per_s: median(decode),
        prefill_tokens_per_s: prompt.len() as f64 / (ttft_ms / 1000.0),
        turn2_prompt_tokens,
        turn2_ttft_ms,
        turn2_reused_tokens,
        turn2_uncached_ttft_ms,
    })
}

/// Reads the rest of `prompt` in the chunks the server reads it in; the next-token logits.
fn prefill(model: &mut ChatModel, seq: &mut Sequence, prompt: &[u32]) -> anyhow::Result<Tensor> {
    loop {
        let end = prompt.len().min(seq.len() + crate::engine::CHUNK_ALONE);
        let chunk = &prompt[seq.len()..end];
        let logits = model.step(&mut [(&mut *seq, chunk, end == prompt.len())])?.pop().flatten();
        if end == prompt.len() {
            return logits.context("the model returned no logits");
        }
    }
}

/// Runs `tokens` for one sequence; the next-token logits.
fn next(model: &mut ChatModel, seq: &mut Sequence, tokens: &[u32]) -> anyhow::Result<Tensor> {
    model.step(&mut [(seq, tokens, true)])?.pop().flatten().context("the model returned no logits")
}

/// `model name` from /proc/cpuinfo (Linux), else the architecture.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The kernels for the model's layer weights (a GGUF's first feed-forward matrix).
fn kernels(path: &std::path::Path) -> anyhow::Result<String> {
    let ModelFiles::Gguf(file) = model::detect(path)? else {
        return Ok("safetensors weights: candle f32 matmul".to_string());
    };
    let mut f =
        std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f)?;
    let info = content
        .tensor_infos
        .get("blk.0.ffn_down.weight")
        .context("the GGUF has no blk.0.ffn_down.weight")?;
    Ok(model::qgemm::describe(info.ggml_dtype))
}
