//! Llama-family causal language models, from a safetensors directory (Hugging Face layout) or a
//! GGUF file (quantized, llama.cpp layout).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{self, Cache, Llama, LlamaConfig, LlamaEosToks};
use candle_transformers::models::quantized_llama::{self, ModelWeights};
use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;
use super::gguf_tokenizer;
use super::qllama::QLlama;

enum Weights {
    Llama {
        model: Llama,
        config: llama::Config,
        dtype: DType,
        cache: Option<Cache>,
    },
    /// GGUF on the CPU: our decode-oriented forward pass.
    QuantizedCpu(Box<QLlama>),
    /// GGUF on a GPU (or a variant `QLlama` does not cover): candle-transformers' forward pass.
    Quantized(ModelWeights),
}

/// What request handlers need of a causal LM to build and check prompts, without its weights.
pub struct Vocab {
    pub id: String,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Token ids that end a generation.
    pub eos: Vec<u32>,
    /// Whether raw completions start with the tokenizer's BOS token.
    pub add_bos: bool,
    pub context_length: usize,
    pub format: &'static str,
}

impl Vocab {
    /// Token ids of a prompt the chat template already rendered (it places any BOS itself).
    pub fn encode_rendered(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }

    /// Token ids of a raw completion prompt.
    pub fn encode_raw(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut ids = self.encode_rendered(text)?;
        if self.add_bos
            && let Some(bos) = self.template.bos_token().and_then(|t| self.tokenizer.token_to_id(t))
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }
}

/// A loaded causal LM. The engine thread owns it; handlers share its [`Vocab`].
pub struct ChatModel {
    pub vocab: Arc<Vocab>,
    weights: Weights,
    device: Device,
    /// The tokens whose keys and values the KV cache holds, in order (kept by the CPU GGUF path,
    /// the one that can rewind and restore its cache).
    live: Vec<u32>,
}

/// Saved KV states of earlier prompts (see [`crate::prefix_cache`]).
pub type PrefixCache = crate::prefix_cache::PrefixCache<super::qllama::KvSnapshot>;

impl ChatModel {
    pub fn load_safetensors(dir: &Path, id: String, device: &Device) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let raw: LlamaConfig = serde_json::from_slice(
            &std::fs::read(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
        .with_context(|| format!("{} is not a llama-family config", config_path.display()))?;
        let config = raw.into_config(false);
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            anyhow::anyhow!("loading {}: {e}", dir.join("tokenizer.json").display())
        })?;
        let tokenizer_config = read_tokenizer_config(dir)?;

        let mut eos: Vec<u32> = match &config.eos_token_id {
            Some(LlamaEosToks::Single(id)) => vec![*id],
            Some(LlamaEosToks::Multiple(ids)) => ids.clone(),
            None => vec![],
        };
        let token_text = |key: &str| -> Option<String> {
            match tokenizer_config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let eos_text = token_text("eos_token");
        if let Some(id) = eos_text.as_deref().and_then(|t| tokenizer.token_to_id(t))
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        if eos.is_empty() {
            bail!(
                "{}: no eos_token_id in config.json and no eos_token in tokenizer_config.json",
                dir.display()
            );
        }
        let bos_text = token_text("bos_token");
        let template_source = tokenizer_config.get("chat_template").and_then(chat_template_source);
        let template = ChatTemplate::new(
            template_source,
            bos_text.clone().unwrap_or_default(),
            eos_text.unwrap_or_default(),
        )?;
        let add_bos =
            tokenizer_config.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);

        let files = safetensors_files(dir)?;
        // CPU math runs in f32; GPUs in bf16, which llama checkpoints are trained in.
        let dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        // SAFETY: the files are mapped read-only; a model volume is mounted read-only and nobody
        // rewrites weights under a running server.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
        let model = Llama::load(vb, &config)
            .with_context(|| format!("loading llama weights from {}", dir.display()))?;
        let context_length = config.max_position_embeddings;
        Ok(Self {
            vocab: Arc::new(Vocab {
                id,
                tokenizer,
                template,
                eos,
                add_bos,
                context_length,
                format: "safetensors",
            }),
            weights: Weights::Llama { model, config, dtype, cache: None },
            device: device.clone(),
            live: Vec::new(),
        })
    }

    pub fn load_gguf(path: &Path, id: String, device: &Device) -> anyhow::Result<Self> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            bail!("{}: GGUF architecture {arch:?} is not supported (llama only)", path.display());
        }
        let vocab = gguf_tokenizer::from_gguf(&content.metadata, path)?;
        let declared = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|c| c as usize);
        let cpu = if device.is_cpu() {
            QLlama::load(&content, &mut file)
                .with_context(|| format!("loading GGUF weights from {}", path.display()))?
        } else {
            None
        };
        let (weights, context_length) = match cpu {
            Some(q) => {
                let ctx = q.context_length;
                (Weights::QuantizedCpu(Box::new(q)), ctx)
            }
            None => {
                let ctx = declared
                    .unwrap_or(quantized_llama::MAX_SEQ_LEN)
                    .min(quantized_llama::MAX_SEQ_LEN);
                let w = ModelWeights::from_gguf(content, &mut file, device)
                    .with_context(|| format!("loading GGUF weights from {}", path.display()))?;
                (Weights::Quantized(w), ctx)
            }
        };
        Ok(Self {
            vocab: Arc::new(Vocab {
                id,
                template: ChatTemplate::new(vocab.chat_template, vocab.bos_text, vocab.eos_text)?,
                tokenizer: vocab.tokenizer,
                eos: vocab.eos,
                add_bos: vocab.add_bos,
                context_length,
                format: "gguf",
            }),
            weights,
            device: device.clone(),
            live: Vec::new(),
        })
    }

    /// Serves a shorter context than the model's (an instance limit). Call before sharing the vocab.
    pub fn limit_context(&mut self, limit: usize) {
        if let Some(v) = Arc::get_mut(&mut self.vocab) {
            v.context_length = v.context_length.min(limit.max(1));
        }
    }

    /// Forgets the previous sequence: the next `forward` must start at position 0.
    pub fn reset(&mut self) -> candle_core::Result<()> {
        self.live.clear();
        match &mut self.weights {
            Weights::Llama { config, dtype, cache, .. } => {
                *cache = Some(Cache::new(true, *dtype, config, &self.device)?)
            }
            Weights::QuantizedCpu(q) => q.reset(),
            Weights::Quantized(w) => w.clear_kv_cache(),
        }
        Ok(())
    }

    /// Runs `tokens` at positions `pos..`, extending the KV cache; returns the next-token logits
    /// (f32, one per vocabulary entry).
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.weights {
            Weights::Llama { model, config, dtype, cache } => {
                let cache = match cache {
                    Some(c) => c,
                    None => cache.insert(Cache::new(true, *dtype, config, &self.device)?),
                };
                model.forward(&input, pos, cache)?
            }
            Weights::QuantizedCpu(q) => {
                // Cut first: a forward that fails part-way leaves the cache cut back to `pos`.
                self.live.truncate(pos);
                let logits = q.forward(tokens, pos)?;
                self.live.extend_from_slice(tokens);
                return Ok(logits);
            }
            Weights::Quantized(w) => w.forward(&input, pos)?,
        };
        logits.squeeze(0)?.to_dtype(DType::F32)
    }

    /// Runs a whole prompt and returns the next-token logits and how many of its tokens were
    /// not computed again: the longest prefix shared with the sequence the KV cache holds or with
    /// a snapshot in `cache`. At least the prompt's last token always runs, for its logits.
    /// Models other than the CPU GGUF one start from an empty cache.
    pub fn prefill(
        &mut self,
        prompt: &[u32],
        cache: &mut PrefixCache,
    ) -> candle_core::Result<(Tensor, usize)> {
        let Weights::QuantizedCpu(q) = &mut self.weights else {
            self.reset()?;
            return Ok((self.forward(prompt, 0)?, 0));
        };
        let most = if cache.enabled() { prompt.len().saturating_sub(1) } else { 0 };
        let live = crate::prefix_cache::common_prefix(&self.live, prompt).min(most);
        let reused = match cache.lookup(prompt) {
            Some((shared, snapshot)) if shared.min(most) > live => {
                q.restore(snapshot, shared.min(most));
                self.live.clear();
                self.live.extend_from_slice(&prompt[..shared.min(most)]);
                shared.min(most)
            }
            _ => live,
        };
        Ok((self.forward(&prompt[reused..], reused)?, reused))
    }

    /// Saves the KV cache's current sequence in `cache`, for later prompts that start with it.
    pub fn remember(&self, cache: &mut PrefixCache) {
        // Checked before copying: a long context can hold more than the whole budget.
        if let Weights::QuantizedCpu(q) = &self.weights
            && cache.would_keep(q.kv_bytes())
        {
            let snapshot = q.snapshot();
            let bytes = snapshot.bytes();
            cache.insert(self.live.clone(), snapshot, bytes);
        }
    }
}

/// Hugging Face's `chat_template` is a string, or a list of named templates ("default", "tool_use").
fn chat_template_source(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let named = |name: &str| {
                list.iter().find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
            };
            named("default").or_else(|| list.first())?.get("template")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

fn read_tokenizer_config(dir: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let path = dir.join("tokenizer_config.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON object", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `model.safetensors`, or every shard of a sharded checkpoint.
pub fn safetensors_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .safetensors weights", dir.display());
    }
    Ok(files)
}
