//! `alcove-inference make-test-model`: random-weight models with real files, so the real loading,
//! tokenizing, templating and generation code runs in tests and in `alcove up` with no model hub.
//!
//! - The tokenizer is real: a byte-level BPE trained on a small built-in corpus, with ChatML
//!   special tokens and chat template.
//! - Weights come from candle's own model builders (so names and shapes are exactly what the
//!   loaders expect), filled from a seeded generator: the same seed gives the same model.
//! - The output rows of the special tokens are zero, so a random model does not end its reply
//!   by chance (an end-of-turn token would otherwise come up about once per vocabulary size).
//! - GGUF files carry llama.cpp's metadata and tokenizer, so llama.cpp loads them too (the
//!   benchmark compares the two on the same file).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use serde_json::json;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

const CORPUS: &str = include_str!("corpus.txt");
const CHAT_TEMPLATE: &str = "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}";
const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// A few hundred thousand parameters: fast enough for every test.
    Tiny,
    /// Over 100M parameters: large enough to measure speed.
    Small,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Safetensors,
    Gguf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quant {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl Quant {
    fn ggml(self) -> GgmlDType {
        match self {
            Quant::F32 => GgmlDType::F32,
            Quant::F16 => GgmlDType::F16,
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q4_0 => GgmlDType::Q4_0,
            Quant::Q4K => GgmlDType::Q4K,
        }
    }

    /// llama.cpp's `general.file_type`.
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4K => 15,
        }
    }
}

pub struct Options {
    pub out: PathBuf,
    pub format: Format,
    pub size: Size,
    pub embedding: bool,
    pub quant: Quant,
    pub seed: u64,
}

/// What was written.
pub struct Made {
    pub parameters: usize,
    pub files: Vec<PathBuf>,
}

struct LlamaShape {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    context: usize,
    vocab_target: usize,
}

fn llama_shape(size: Size) -> LlamaShape {
    match size {
        Size::Tiny => LlamaShape {
            hidden: 64,
            intermediate: 192,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            context: 2048,
            vocab_target: 512,
        },
        Size::Small => LlamaShape {
            hidden: 1024,
            intermediate: 2816,
            layers: 10,
            heads: 16,
            kv_heads: 4,
            context: 2048,
            vocab_target: 4096,
        },
    }
}

pub fn make(opts: &Options) -> anyhow::Result<Made> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    if opts.embedding {
        if opts.format == Format::Gguf {
            bail!("embedding models are written as safetensors only");
        }
        return make_bert(opts);
    }
    make_llama(opts)
}

// ---------------------------------------------------------------------------------------------
// Deterministic weights

/// SplitMix64: tiny, seedable, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// A `VarBuilder` backend that invents every tensor a model asks for, from the seed and the
/// tensor's name, and remembers them for writing out.
struct Generator {
    seed: u64,
    made: Mutex<BTreeMap<String, Tensor>>,
}

impl SimpleBackend for Generator {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = shape.elem_count();
        let name_hash = name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut rng = Rng(self.seed ^ name_hash);
        let fan_in = shape.dims().iter().skip(1).product::<usize>().max(1);
        let data: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => {
                (0..n).map(|_| mean as f32 + stdev as f32 * rng.normal()).collect()
            }
            Init::Uniform { lo, up } => {
                (0..n).map(|_| lo as f32 + (up - lo) as f32 * rng.uniform()).collect()
            }
            Init::Kaiming { .. } => {
                let std = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| std * rng.normal()).collect()
            }
        };
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
        self.made.lock().expect("not poisoned").insert(name.to_string(), t.clone());
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the generator needs a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

fn generate(
    seed: u64,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let generator = std::sync::Arc::new(Generator { seed, made: Mutex::new(BTreeMap::new()) });
    struct Shared(std::sync::Arc<Generator>);
    impl SimpleBackend for Shared {
        fn get(
            &self,
            s: Shape,
            name: &str,
            h: Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, name, h, dtype, dev)
        }
        fn get_unchecked(
            &self,
            name: &str,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(name, dtype, dev)
        }
        fn contains_tensor(&self, name: &str) -> bool {
            self.0.contains_tensor(name)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(generator.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let made = std::mem::take(&mut *generator.made.lock().expect("not poisoned"));
    Ok(made)
}

// ---------------------------------------------------------------------------------------------
// Llama

/// Trains the byte-level BPE tokenizer on the built-in corpus.
pub fn train_tokenizer(vocab_target: usize) -> anyhow::Result<Tokenizer> {
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_target)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .train(&mut TrainerWrapper::BpeTrainer(trainer), CORPUS.lines().map(|l| format!("{l}\n")))
        .map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;
    Ok(tokenizer)
}

fn make_llama(opts: &Options) -> anyhow::Result<Made> {
    let shape = llama_shape(opts.size);
    let tokenizer = train_tokenizer(shape.vocab_target)?;
    let vocab_size = tokenizer.get_vocab_size(true);
    let id = |t: &str| {
        tokenizer.token_to_id(t).with_context(|| format!("{t} missing from the vocabulary"))
    };
    let (bos, im_end, eot) = (id("<|endoftext|>")?, id("<|im_end|>")?, id("<|endoftext|>")?);
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": shape.context,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": bos,
        "eos_token_id": [im_end, eot],
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    let llama_config: candle_transformers::models::llama::LlamaConfig =
        serde_json::from_value(config.clone())?;
    let llama_config = llama_config.into_config(false);
    let mut tensors = generate(opts.seed, |vb| {
        candle_transformers::models::llama::Llama::load(vb, &llama_config).map(|_| ())
    })?;
    // Special tokens never win by chance (see the module comment).
    let lm_head = tensors.get("lm_head.weight").context("no lm_head")?.clone();
    let mut rows = lm_head.to_vec2::<f32>()?;
    for special in SPECIAL.iter().filter_map(|s| tokenizer.token_to_id(s)) {
        rows[special as usize].iter_mut().for_each(|x| *x = 0.0);
    }
    tensors.insert("lm_head.weight".into(), Tensor::new(rows, &Device::Cpu)?);
    let parameters = tensors.values().map(|t| t.elem_count()).sum();

    let mut files = Vec::new();
    match opts.format {
        Format::Safetensors => {
            let weights = opts.out.join("model.safetensors");
            candle_core::safetensors::save(
                &tensors.into_iter().collect::<HashMap<_, _>>(),
                &weights,
            )?;
            files.push(weights);
            let path = opts.out.join("config.json");
            std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
            files.push(path);
            let path = opts.out.join("tokenizer.json");
            tokenizer.save(&path, true).map_err(|e| anyhow::anyhow!("{e}"))?;
            files.push(path);
            let path = opts.out.join("tokenizer_config.json");
            let tokenizer_config = json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "add_bos_token": false,
                "model_max_length": shape.context,
                "chat_template": CHAT_TEMPLATE,
            });
            std::fs::write(&path, serde_json::to_string_pretty(&tokenizer_config)?)?;
            files.push(path);
        }
        Format::Gguf => {
            let path = opts.out.join("model.gguf");
            write_gguf(&path, &tensors, &shape, &tokenizer, opts.quant, [bos, im_end])?;
            files.push(path);
        }
    }
    Ok(Made { parameters, files })
}

/// Hugging Face llama names → llama.cpp GGUF names.
fn gguf_name(hf: &str) -> Option<String> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let part = match rest {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

/// Hugging Face stores q/k with rotary halves split; GGUF llama interleaves them (the same
/// permutation llama.cpp's converter applies), so both files compute the same function.
fn permute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn write_gguf(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    shape: &LlamaShape,
    tokenizer: &Tokenizer,
    quant: Quant,
    [bos, eos]: [u32; 2],
) -> anyhow::Result<()> {
    let mut quantized: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in tensors {
        let gguf = gguf_name(name).with_context(|| format!("no GGUF name for {name}"))?;
        let t = if name.ends_with("q_proj.weight") {
            permute_qk(t, shape.heads)?
        } else if name.ends_with("k_proj.weight") {
            permute_qk(t, shape.kv_heads)?
        } else {
            t.clone()
        };
        let dtype = if t.rank() == 1 { GgmlDType::F32 } else { quant.ggml() };
        let block = dtype.block_size();
        let cols = *t.dims().last().unwrap_or(&0);
        if cols % block != 0 {
            bail!(
                "{quant:?} needs rows that are multiples of {block} values; {gguf} has {cols} (use another --quant or --size)"
            );
        }
        quantized.push((gguf, QTensor::quantize(&t, dtype)?));
    }

    let doc: serde_json::Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?)?;
    let vocab = tokenizer.get_vocab(true);
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, i) in &vocab {
        *tokens.get_mut(*i as usize).context("vocabulary ids are not contiguous")? = t.clone();
    }
    let types: Vec<Value> = tokens
        .iter()
        .map(|t| Value::I32(if SPECIAL.contains(&t.as_str()) { 3 } else { 1 }))
        .collect();
    let merges: Vec<Value> = doc["model"]["merges"]
        .as_array()
        .context("tokenizer has no merges")?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(pair) => {
                pair.iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(" ")
            }
            _ => String::new(),
        })
        .map(Value::String)
        .collect();

    let s = |v: &str| Value::String(v.to_string());
    let u = |v: usize| Value::U32(v as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", s("llama")),
        ("general.name", s("alcove test model")),
        ("general.file_type", Value::U32(quant.file_type())),
        ("llama.context_length", u(shape.context)),
        ("llama.embedding_length", u(shape.hidden)),
        ("llama.block_count", u(shape.layers)),
        ("llama.feed_forward_length", u(shape.intermediate)),
        ("llama.rope.dimension_count", u(shape.hidden / shape.heads)),
        ("llama.attention.head_count", u(shape.heads)),
        ("llama.attention.head_count_kv", u(shape.kv_heads)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.vocab_size", u(tokens.len())),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt-2")),
        ("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id", Value::U32(eos)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", s(CHAT_TEMPLATE)),
    ];
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        quantized.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    candle_core::quantized::gguf_file::write(&mut file, &metadata_refs, &tensor_refs)?;
    use std::io::Write;
    file.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// BERT

fn make_bert(opts: &Options) -> anyhow::Result<Made> {
    let (hidden, layers, heads, intermediate) = match opts.size {
        Size::Tiny => (64, 2, 2, 128),
        Size::Small => (384, 6, 12, 1536),
    };
    let vocab = wordpiece_vocab();
    let config = json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab.len(),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "classifier_dropout": null,
    });
    let bert_config: candle_transformers::models::bert::Config =
        serde_json::from_value(config.clone())?;
    let tensors = generate(opts.seed, |vb| {
        candle_transformers::models::bert::BertModel::load(vb, &bert_config).map(|_| ())
    })?;
    let parameters = tensors.values().map(|t| t.elem_count()).sum();
    let weights = opts.out.join("model.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect::<HashMap<_, _>>(), &weights)?;
    let config_path = opts.out.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
    let vocab_json: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let special = |t: &str| {
        let i = vocab.iter().position(|v| v == t).unwrap_or(0);
        json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
    };
    let added: Vec<serde_json::Value> =
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].into_iter().map(special).collect();
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab_json},
    });
    // Loading it back proves the file is a tokenizer the library reads.
    let tokenizer = Tokenizer::from_bytes(serde_json::to_vec(&tokenizer_json)?)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let tokenizer_path = opts.out.join("tokenizer.json");
    tokenizer.save(&tokenizer_path, true).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Made { parameters, files: vec![weights, config_path, tokenizer_path] })
}

/// BERT's special tokens, single characters with and without the `##` continuation prefix, and
/// the corpus's words: every text tokenizes, common words as one piece.
fn wordpiece_vocab() -> Vec<String> {
    let mut vocab: Vec<String> =
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    let chars: Vec<char> =
        ('a'..='z').chain('0'..='9').chain("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".chars()).collect();
    vocab.extend(chars.iter().map(|c| c.to_string()));
    vocab.extend(chars.iter().filter(|c| c.is_alphanumeric()).map(|c| format!("##{c}")));
    let mut words: Vec<String> = CORPUS
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(|w| w.to_lowercase())
        .collect();
    words.sort();
    words.dedup();
    vocab.extend(words);
    vocab
}

/// Parameters of the llama model a size would generate, without generating it.
pub fn llama_parameters(size: Size, vocab: usize) -> usize {
    let s = llama_shape(size);
    let head_dim = s.hidden / s.heads;
    let attention = 2 * s.hidden * s.hidden + 2 * s.hidden * s.kv_heads * head_dim;
    let mlp = 3 * s.hidden * s.intermediate;
    s.layers * (attention + mlp + 2 * s.hidden) + 2 * vocab * s.hidden + s.hidden
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_is_over_100m_parameters() {
        let vocab =
            train_tokenizer(llama_shape(Size::Small).vocab_target).unwrap().get_vocab_size(true);
        assert!(
            llama_parameters(Size::Small, vocab) >= 100_000_000,
            "{}",
            llama_parameters(Size::Small, vocab)
        );
    }

    #[test]
    fn the_tokenizer_round_trips_text_and_knows_chatml() {
        let t = train_tokenizer(512).unwrap();
        let text = "<|im_start|>user\nHello, wörld! 12.50 €<|im_end|>";
        let ids = t.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids[0], t.token_to_id("<|im_start|>").unwrap());
        assert_eq!(*ids.last().unwrap(), t.token_to_id("<|im_end|>").unwrap());
        assert_eq!(t.decode(&ids, false).unwrap(), text);
        assert!(ids.len() < text.len(), "merges were learned");
    }

    #[test]
    fn weights_are_a_function_of_the_seed() {
        let shape = llama_shape(Size::Tiny);
        let tok = train_tokenizer(shape.vocab_target).unwrap();
        let cfg: candle_transformers::models::llama::LlamaConfig = serde_json::from_value(json!({
            "hidden_size": shape.hidden, "intermediate_size": shape.intermediate, "vocab_size": tok.get_vocab_size(true),
            "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
            "rms_norm_eps": 1e-5, "max_position_embeddings": shape.context,
        }))
        .unwrap();
        let cfg = cfg.into_config(false);
        let make = |seed| {
            generate(seed, |vb| {
                candle_transformers::models::llama::Llama::load(vb, &cfg).map(|_| ())
            })
            .unwrap()
        };
        let (a, b, c) = (make(1), make(1), make(2));
        let w = |m: &BTreeMap<String, Tensor>| {
            m["model.layers.0.self_attn.q_proj.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
        assert_eq!(a["model.norm.weight"].to_vec1::<f32>().unwrap(), vec![1.0; shape.hidden]);
    }

    #[test]
    fn gguf_names_cover_llama() {
        assert_eq!(
            gguf_name("model.layers.3.mlp.down_proj.weight").as_deref(),
            Some("blk.3.ffn_down.weight")
        );
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }
}
