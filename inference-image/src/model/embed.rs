//! BERT-family sentence-embedding models (all-MiniLM-L6-v2 and kin): mean pooling over the last
//! hidden states, L2-normalised, as sentence-transformers does.

use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::Digest;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub struct Embedder {
    pub id: String,
    pub dims: usize,
    /// Longest input, in tokens, the model reads.
    pub max_tokens: usize,
    /// sha256 of the config and weights: an index built with other weights is refused.
    pub fingerprint: String,
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

/// Texts per forward pass; bounds the padded batch's memory.
const BATCH: usize = 16;

impl Embedder {
    pub fn load(dir: &Path, id: String, device: &Device) -> anyhow::Result<Self> {
        let config_bytes = std::fs::read(dir.join("config.json"))
            .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .with_context(|| format!("{}: not a BERT config", dir.display()))?;
        let files = super::llm::safetensors_files(dir)?;
        let mut hash = sha2::Sha256::new();
        hash.update(&config_bytes);
        for f in &files {
            let mut file = std::fs::File::open(f)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
            }
        }
        let fingerprint = crate::hex(&hash.finalize());
        // SAFETY: read-only mapping of a read-only model volume.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        let model = BertModel::load(vb, &config)
            .with_context(|| format!("loading BERT weights from {}", dir.display()))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            anyhow::anyhow!("loading {}: {e}", dir.join("tokenizer.json").display())
        })?;
        let max_tokens = config.max_position_embeddings.min(512);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".into(),
            ..Default::default()
        }));
        Ok(Self {
            id,
            dims: config.hidden_size,
            max_tokens,
            fingerprint,
            model,
            tokenizer,
            device: device.clone(),
        })
    }

    /// Tokens `text` takes, special tokens included, before truncation.
    pub fn token_count(&self, text: &str) -> anyhow::Result<usize> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
        tokenizer.with_padding(None);
        Ok(tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("{e}"))?.len())
    }

    /// One unit-length vector per text; inputs longer than `max_tokens` are truncated.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            let encodings = self
                .tokenizer
                .encode_batch(batch.to_vec(), true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let rows =
                |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| -> candle_core::Result<Tensor> {
                    let rows = encodings
                        .iter()
                        .map(|e| Tensor::new(f(e).as_slice(), &self.device))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Tensor::stack(&rows, 0)
                };
            let ids = rows(&|e| e.get_ids().to_vec())?;
            let type_ids = ids.zeros_like()?;
            let mask = rows(&|e| e.get_attention_mask().to_vec())?;
            let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            let unit = mean.broadcast_div(&norm)?;
            out.extend(unit.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}
