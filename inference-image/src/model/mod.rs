//! Model loading: which kind a path holds, and the device the math runs on.

pub mod chat_template;
pub mod embed;
pub mod gguf_tokenizer;
pub mod llm;
pub(crate) mod qgemm;
pub mod qllama;
mod simd;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use candle_core::Device;

pub use chat_template::{ChatTemplate, Message};
pub use embed::Embedder;
pub use llm::{ChatModel, PrefixCache, Sequence, UnplacedControlText, Vocab};

/// What a model path holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    /// Llama-family safetensors directory.
    Llama(PathBuf),
    /// Llama-family GGUF file.
    Gguf(PathBuf),
    /// BERT-family embedding model directory.
    Bert(PathBuf),
}

/// Recognises a model from its files: a `.gguf` file (or a directory holding exactly one), or a
/// directory whose config.json names a llama or BERT architecture.
pub fn detect(path: &Path) -> anyhow::Result<ModelFiles> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(ModelFiles::Gguf(path.to_path_buf()));
        }
        bail!("{}: a model is a .gguf file or a directory with config.json", path.display());
    }
    if !path.is_dir() {
        bail!("{}: no such model file or directory", path.display());
    }
    let config = path.join("config.json");
    if !config.exists() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => Ok(ModelFiles::Gguf(one.clone())),
            [] => bail!("{}: neither config.json nor a .gguf file", path.display()),
            _ => bail!("{}: several .gguf files; name the one to serve", path.display()),
        };
    }
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)
        .with_context(|| format!("{} is not JSON", config.display()))?;
    let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or_default();
    let architectures: Vec<&str> = value
        .get("architectures")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    match model_type {
        "llama" | "mistral" => Ok(ModelFiles::Llama(path.to_path_buf())),
        "bert" => Ok(ModelFiles::Bert(path.to_path_buf())),
        _ if architectures.iter().any(|a| a.starts_with("Llama") || a.starts_with("Mistral")) => {
            Ok(ModelFiles::Llama(path.to_path_buf()))
        }
        _ if architectures.iter().any(|a| a.starts_with("Bert")) => {
            Ok(ModelFiles::Bert(path.to_path_buf()))
        }
        other => bail!(
            "{}: model_type {other:?} is not supported (llama-family or BERT-family)",
            config.display()
        ),
    }
}

/// The GPU when built with `cuda` and one is present, else the CPU.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => tracing::warn!(error = %e, "no usable CUDA device; running on the CPU"),
        }
    }
    Device::Cpu
}

/// The id a model is served under when none is given: its directory or file stem.
pub fn default_id(path: &Path) -> String {
    let stem = if path.is_file() { path.file_stem() } else { path.file_name() };
    stem.map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "model".into())
}
