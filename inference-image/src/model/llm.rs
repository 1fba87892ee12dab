//! Llama-family causal language models, from a safetensors directory (Hugging Face layout) or a
//! GGUF file (quantized, llama.cpp layout).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{self, Cache, Llama, LlamaConfig, LlamaEosToks};
use candle_transformers::models::quantized_llama::{self, ModelWeights};
use tokenizers::Tokenizer;

use super::chat_template::{ChatTemplate, Message};
use super::gguf_tokenizer;
use super::qllama::{Feed, Kv, QLlama};

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
    /// The texts of the tokenizer's special tokens.
    specials: Vec<String>,
    /// A copy of the tokenizer that reads special tokens as plain text: made the first time a
    /// message spells one (most servers never need it).
    literal: OnceLock<Tokenizer>,
}

/// A message spells one of the model's control tokens where the chat template changed its text,
/// so that the spelled token cannot be told from the template's own.
#[derive(Debug)]
pub struct UnplacedControlText {
    /// The message's index in the conversation.
    pub message: usize,
    pub token: String,
}

impl std::fmt::Display for UnplacedControlText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message {} of the prompt contains {:?}, the model's control token, in text the chat \
             template cuts apart",
            self.message, self.token
        )
    }
}

impl std::error::Error for UnplacedControlText {}

impl Vocab {
    fn new(
        id: String,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        eos: Vec<u32>,
        add_bos: bool,
        context_length: usize,
        format: &'static str,
    ) -> Vocab {
        let mut specials: Vec<String> = tokenizer
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content)
            .collect();
        specials.sort();
        let literal = OnceLock::new();
        Vocab { id, tokenizer, template, eos, add_bos, context_length, format, specials, literal }
    }

    fn literal(&self) -> &Tokenizer {
        self.literal.get_or_init(|| {
            let mut tokenizer = self.tokenizer.clone();
            tokenizer.set_encode_special_tokens(true);
            tokenizer
        })
    }

    /// Token ids of a chat prompt the template rendered from `messages`. A message that spells
    /// one of the model's control tokens (`<|im_start|>`, `<|eot_id|>`…) gets that text encoded
    /// as the text it is. Otherwise, a user could close their own turn and open a system one,
    /// and so could a document retrieved into the system message. Prompts with no such text
    /// (nearly all) are encoded exactly as [`Self::encode_rendered`] encodes `rendered`.
    pub fn encode_chat(&self, rendered: &str, messages: &[Message]) -> anyhow::Result<Vec<u32>> {
        let spelled = |text: &str| self.specials.iter().find(|t| text.contains(t.as_str()));
        let Some((first, token)) =
            messages.iter().enumerate().find_map(|(i, m)| Some((i, spelled(&m.content)?)))
        else {
            return self.encode_rendered(rendered);
        };
        let unplaced = || UnplacedControlText { message: first, token: token.clone() };
        // Rendered again with each such message's text between two marks that appear nowhere in
        // the conversation (Unicode noncharacters, reserved for a program's own use): the
        // template's own markers stay outside them, wherever it puts them. (A template that
        // trims the text no longer trims these messages.)
        let used = |c: char| rendered.contains(c) || messages.iter().any(|m| m.content.contains(c));
        let mut free = ('\u{FDD0}'..='\u{FDEF}').filter(|&c| !used(c));
        let (Some(open), Some(close)) = (free.next(), free.next()) else {
            return Err(unplaced().into());
        };
        let marked: Vec<Message> = messages
            .iter()
            .map(|m| match spelled(&m.content) {
                Some(_) => {
                    Message { role: m.role.clone(), content: format!("{open}{}{close}", m.content) }
                }
                None => m.clone(),
            })
            .collect();
        let text = self.template.render(&marked).map_err(|_| unplaced())?;
        let mut ids = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(open) {
            let (outside, after) = (&rest[..at], &rest[at + open.len_utf8()..]);
            let end = after.find(close).ok_or_else(unplaced)?;
            let inside = &after[..end];
            // A template that cut the text apart (sliced it, split it) loses a mark.
            if outside.contains(close) || inside.contains(open) {
                return Err(unplaced().into());
            }
            ids.extend(self.encode_rendered(outside)?);
            let encoded = self.literal().encode_fast(inside, false);
            ids.extend(encoded.map_err(|e| anyhow::anyhow!("{e}"))?.get_ids());
            rest = &after[end + close.len_utf8()..];
        }
        if rest.contains(close) {
            return Err(unplaced().into());
        }
        ids.extend(self.encode_rendered(rest)?);
        Ok(ids)
    }

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
}

/// Saved KV states of earlier prompts (see [`crate::prefix_cache`]).
pub type PrefixCache = crate::prefix_cache::PrefixCache<Kv>;

/// One generation's place in the model: the tokens whose keys and values it holds, and, on the
/// CPU GGUF path, its own KV cache (candle's models keep their single cache inside).
pub struct Sequence {
    kv: Option<Kv>,
    tokens: Vec<u32>,
}

impl Sequence {
    /// Positions computed so far.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

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
        // candle-transformers' llama loader unwraps each layer's tensors: a checkpoint missing
        // one, or holding it in another shape, panics there. The panic is its error here.
        let model =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Llama::load(vb, &config)))
                .map_err(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("the checkpoint does not match config.json");
                    anyhow::anyhow!("{why}")
                })
                .and_then(|loaded| Ok(loaded?))
                .with_context(|| format!("loading llama weights from {}", dir.display()))?;
        let context_length = config.max_position_embeddings;
        Ok(Self {
            vocab: Arc::new(Vocab::new(
                id,
                tokenizer,
                template,
                eos,
                add_bos,
                context_length,
                "safetensors",
            )),
            weights: Weights::Llama { model, config, dtype, cache: None },
            device: device.clone(),
        })
    }

    pub fn load_gguf(path: &Path, id: String, device: &Device) -> anyhow::Result<Self> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
        check_tensor_sizes(&content).with_context(|| format!("{} is damaged", path.display()))?;
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
            vocab: Arc::new(Vocab::new(
                id,
                vocab.tokenizer,
                ChatTemplate::new(vocab.chat_template, vocab.bos_text, vocab.eos_text)?,
                vocab.eos,
                vocab.add_bos,
                context_length,
                "gguf",
            )),
            weights,
            device: device.clone(),
        })
    }

    /// Serves a shorter context than the model's (an instance limit). Call before sharing the vocab.
    pub fn limit_context(&mut self, limit: usize) {
        if let Some(v) = Arc::get_mut(&mut self.vocab) {
            v.context_length = v.context_length.min(limit.max(1));
        }
    }

    /// How many sequences [`Self::step`] takes at once: any number on the CPU GGUF path, which
    /// gives each its own KV cache; one elsewhere.
    pub fn batch_capacity(&self) -> usize {
        match self.weights {
            Weights::QuantizedCpu(_) => usize::MAX,
            _ => 1,
        }
    }

    /// Starts a sequence for `prompt`: its KV cache begins with the longest prefix of the prompt
    /// that a snapshot in `cache` holds (never the prompt's last token, whose logits are needed).
    /// Returns it and the number of prompt tokens reused. On the models without their own
    /// sequences this forgets the model's previous one.
    pub fn begin(
        &mut self,
        prompt: &[u32],
        cache: &mut PrefixCache,
    ) -> candle_core::Result<(Sequence, usize)> {
        let q = match &mut self.weights {
            Weights::QuantizedCpu(q) => q,
            Weights::Llama { config, dtype, cache, .. } => {
                *cache = Some(Cache::new(true, *dtype, config, &self.device)?);
                return Ok((Sequence { kv: None, tokens: Vec::new() }, 0));
            }
            Weights::Quantized(w) => {
                w.clear_kv_cache();
                return Ok((Sequence { kv: None, tokens: Vec::new() }, 0));
            }
        };
        if let Some(t) = prompt.iter().find(|&&t| t as usize >= q.vocab_size()) {
            candle_core::bail!("token {t} is outside the vocabulary of {}", q.vocab_size());
        }
        let most = prompt.len().saturating_sub(1);
        let kv = match cache.lookup(prompt) {
            Some((shared, kv)) if shared.min(most) > 0 => kv.prefix(shared.min(most)),
            _ => q.new_kv(),
        };
        let tokens = prompt[..kv.len()].to_vec();
        let reused = tokens.len();
        Ok((Sequence { kv: Some(kv), tokens }, reused))
    }

    /// Runs each sequence's next tokens, all in one forward pass where the model allows; returns
    /// the next-token logits (f32, one per vocabulary entry) of each feed that asks for them.
    /// On the CPU GGUF path a step that fails leaves every sequence as it was.
    pub fn step(
        &mut self,
        feeds: &mut [(&mut Sequence, &[u32], bool)],
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let out = match &mut self.weights {
            Weights::QuantizedCpu(q) => {
                let mut batch = Vec::with_capacity(feeds.len());
                for (seq, tokens, logits) in feeds.iter_mut() {
                    let Some(kv) = seq.kv.as_mut() else {
                        candle_core::bail!("the sequence was not begun on this model");
                    };
                    batch.push(Feed { kv, tokens, logits: *logits });
                }
                q.forward(&mut batch)?
                    .into_iter()
                    .map(|l| {
                        l.map(|l| {
                            let len = l.len();
                            Tensor::from_vec(l, len, &Device::Cpu)
                        })
                        .transpose()
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
            Weights::Llama { model, config, dtype, cache } => {
                let [(seq, tokens, want)] = feeds else {
                    candle_core::bail!("this model runs one sequence at a time");
                };
                let input = Tensor::new(*tokens, &self.device)?.unsqueeze(0)?;
                let cache = match cache {
                    Some(c) => c,
                    None => cache.insert(Cache::new(true, *dtype, config, &self.device)?),
                };
                let logits = model.forward(&input, seq.len(), cache)?;
                vec![want.then(|| logits.squeeze(0)?.to_dtype(DType::F32)).transpose()?]
            }
            Weights::Quantized(w) => {
                let [(seq, tokens, want)] = feeds else {
                    candle_core::bail!("this model runs one sequence at a time");
                };
                let input = Tensor::new(*tokens, &self.device)?.unsqueeze(0)?;
                let logits = w.forward(&input, seq.len())?;
                vec![want.then(|| logits.squeeze(0)?.to_dtype(DType::F32)).transpose()?]
            }
        };
        for (seq, tokens, _) in feeds.iter_mut() {
            seq.tokens.extend_from_slice(tokens);
        }
        Ok(out)
    }

    /// Ends a sequence, keeping its KV cache in `cache` for later prompts that start with it.
    pub fn finish(&self, seq: Sequence, cache: &mut PrefixCache) {
        if let Some(mut kv) = seq.kv
            && cache.would_keep(kv.bytes())
        {
            kv.shrink();
            let bytes = kv.bytes();
            cache.insert(seq.tokens, kv, bytes);
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

/// Every tensor's size, computed without overflow, and not zero. candle multiplies a header's
/// dimensions unchecked when it reads a tensor (a damaged header panics there in a debug build
/// and reads a wrapped size in a release one), and it views an empty tensor's bytes through a
/// dangling pointer that is not aligned for the block type (undefined behaviour; a debug build
/// aborts on it).
fn check_tensor_sizes(content: &candle_core::quantized::gguf_file::Content) -> anyhow::Result<()> {
    for (name, t) in &content.tensor_infos {
        let dims = t.shape.dims();
        let bytes = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| (n / t.ggml_dtype.block_size()).checked_mul(t.ggml_dtype.type_size()))
            .filter(|&b| b <= isize::MAX as usize);
        match bytes {
            None => bail!("tensor {name} has dimensions {dims:?}: more than any file can hold"),
            Some(0) => bail!("tensor {name} has dimensions {dims:?}: no elements"),
            Some(_) => {}
        }
    }
    Ok(())
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
