//! A GGUF file carries its own tokenizer (llama.cpp's `tokenizer.ggml.*` metadata). This rebuilds
//! it as a Hugging Face `tokenizers` tokenizer so a GGUF model needs no other file.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use candle_core::quantized::gguf_file::Value;
use serde_json::json;
use tokenizers::Tokenizer;

pub struct GgufVocab {
    pub tokenizer: Tokenizer,
    pub eos: Vec<u32>,
    pub add_bos: bool,
    pub bos_text: String,
    pub eos_text: String,
    pub chat_template: Option<String>,
}

/// llama.cpp's token types.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

pub fn from_gguf(metadata: &HashMap<String, Value>, path: &Path) -> anyhow::Result<GgufVocab> {
    let get = |key: &str| metadata.get(key);
    let model =
        get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let tokens: Vec<String> = get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .context("no tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<_, _>>()?;
    let types: Vec<i32> = match get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(list) => list.iter().map(|v| v.to_i32()).collect::<Result<_, _>>()?,
        None => vec![1; tokens.len()],
    };
    let tokenizer = match model.as_str() {
        "gpt2" => {
            let merges: Vec<String> = get("tokenizer.ggml.merges")
                .and_then(|v| v.to_vec().ok())
                .context("a gpt2 tokenizer needs tokenizer.ggml.merges")?
                .iter()
                .map(|v| v.to_string().cloned())
                .collect::<Result<_, _>>()?;
            byte_level_bpe(&tokens, &types, &merges)?
        }
        other => {
            // SentencePiece-style vocabularies are not rebuilt here; a tokenizer.json beside the
            // file (as Hugging Face ships it) serves instead.
            let beside = path.with_file_name("tokenizer.json");
            if !beside.exists() {
                bail!(
                    "{}: GGUF tokenizer model {other:?} is not supported; place the model's tokenizer.json beside the file",
                    path.display()
                );
            }
            Tokenizer::from_file(&beside)
                .map_err(|e| anyhow::anyhow!("loading {}: {e}", beside.display()))?
        }
    };
    let id = |key: &str| get(key).and_then(|v| v.to_u32().ok());
    let text =
        |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned().unwrap_or_default();
    let mut eos: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| id(k))
        .collect();
    eos.dedup();
    if eos.is_empty() {
        bail!("{}: no tokenizer.ggml.eos_token_id", path.display());
    }
    Ok(GgufVocab {
        tokenizer,
        bos_text: text(id("tokenizer.ggml.bos_token_id")),
        eos_text: text(Some(eos[0])),
        eos,
        add_bos: get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
        chat_template: get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
    })
}

/// GPT-2 style byte-level BPE from llama.cpp's vocabulary: tokens by id, merges as "a b".
pub fn byte_level_bpe(
    tokens: &[String],
    types: &[i32],
    merges: &[String],
) -> anyhow::Result<Tokenizer> {
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            matches!(types.get(*i), Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED))
        })
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] == TOKEN_TYPE_CONTROL})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    Tokenizer::from_bytes(serde_json::to_vec(&doc)?)
        .map_err(|e| anyhow::anyhow!("rebuilding the GGUF tokenizer: {e}"))
}
