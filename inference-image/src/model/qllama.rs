//! Llama from a GGUF file on the CPU: candle's quantized matrix kernels, with the rest of the
//! forward pass written for decoding one token at a time.
//!
//! Why not candle-transformers' `quantized_llama` (still used on GPUs): per generated token it
//! allocates a tensor per operation, grows the KV cache by concatenation (copying it each step),
//! copies K and V once more per grouped-query head, and quantizes each layer's input once per
//! projection. Here the projections that share an input run as one fused kernel call (Q/K/V,
//! gate/up), the KV cache is appended in place, and attention, RoPE and the norms are plain loops
//! over preallocated buffers. `tests::matches_candle_quantized_llama` keeps the two in agreement.

use std::borrow::Cow;
use std::io::{Read, Seek};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

use super::{qgemm, simd};

struct Layer {
    wq: Arc<QTensor>,
    wk: Arc<QTensor>,
    wv: Arc<QTensor>,
    wo: QMatMul,
    w_gate: Arc<QTensor>,
    w_up: Arc<QTensor>,
    w_down: QMatMul,
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// Appended per position: `[position][kv head][head_dim]`.
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// The KV cache of some positions, kept aside to be restored (see `crate::prefix_cache`).
pub struct KvSnapshot {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvSnapshot {
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|c| c.len() * std::mem::size_of::<f32>()).sum()
    }
}

pub struct QLlama {
    embedding: Embedding,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: QMatMul,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope_dim: usize,
    hidden: usize,
    eps: f32,
    /// `[position][rope_dim / 2]`
    cos: Vec<f32>,
    sin: Vec<f32>,
    pub context_length: usize,
    /// Positions in the KV cache.
    len: usize,
}

/// Token embeddings stay quantized; one row is dequantized per token (a real vocabulary in f32
/// would be gigabytes).
struct Embedding {
    raw: Vec<u8>,
    dtype: GgmlDType,
    row_bytes: usize,
    hidden: usize,
    vocab: usize,
}

impl Embedding {
    fn row(&self, token: u32) -> candle_core::Result<Vec<f32>> {
        let t = token as usize;
        if t >= self.vocab {
            candle_core::bail!("token {t} is outside the vocabulary of {}", self.vocab);
        }
        let bytes = &self.raw[t * self.row_bytes..(t + 1) * self.row_bytes];
        let q = QTensor::new(
            QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, self.dtype)?,
            (1, self.hidden),
        )?;
        q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()
    }
}

fn matmul_rows(w: &QMatMul, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
    if let QMatMul::QTensor(q) = w
        && let Ok((n, k)) = q.shape().dims2()
        && qgemm::preferred(q.dtype(), n, k)
        && let Some(out) = qgemm::matmul(q, &qgemm::quantize(x, rows))?
    {
        return Ok(out);
    }
    let cols = x.len() / rows;
    let t = Tensor::from_slice(x, (rows, cols), &Device::Cpu)?;
    w.forward(&t)?.flatten_all()?.to_vec1()
}

/// Several projections of one input: one fused kernel call when candle has one for these
/// weights, else one call each.
fn project(ws: &[&Arc<QTensor>], x: &[f32], rows: usize) -> candle_core::Result<Vec<Vec<f32>>> {
    if ws.iter().all(|w| w.shape().dims2().is_ok_and(|(n, k)| qgemm::preferred(w.dtype(), n, k))) {
        let quantized = qgemm::quantize(x, rows);
        let mut outs = Vec::with_capacity(ws.len());
        for w in ws {
            match qgemm::matmul(w, &quantized)? {
                Some(out) => outs.push(out),
                None => break,
            }
        }
        if outs.len() == ws.len() {
            return Ok(outs);
        }
    }
    let cols = x.len() / rows;
    let t = Tensor::from_slice(x, (rows, cols), &Device::Cpu)?;
    if rows == 1 {
        let refs: Vec<&QTensor> = ws.iter().map(|w| w.as_ref()).collect();
        if let Some(outs) = QTensor::gemv_fused_shared_lhs(&refs, &t)? {
            return outs.into_iter().map(|o| o.flatten_all()?.to_vec1()).collect();
        }
    }
    ws.iter()
        .map(|w| QMatMul::from_arc((*w).clone())?.forward(&t)?.flatten_all()?.to_vec1())
        .collect()
}

impl QLlama {
    /// Loads a llama GGUF; `Ok(None)` for variants this path does not cover (mixture of experts),
    /// which candle-transformers' implementation serves instead.
    pub fn load<R: Read + Seek>(ct: &Content, reader: &mut R) -> anyhow::Result<Option<Self>> {
        let md = |k: &str| ct.metadata.get(k).with_context(|| format!("GGUF metadata lacks {k}"));
        let u = |k: &str| -> anyhow::Result<usize> { Ok(md(k)?.to_u32()? as usize) };
        if ct.metadata.get("llama.expert_count").and_then(|v| v.to_u32().ok()).unwrap_or(0) > 0 {
            return Ok(None);
        }
        let heads = u("llama.attention.head_count")?;
        let kv_heads = u("llama.attention.head_count_kv")?;
        let layers_n = u("llama.block_count")?;
        let hidden = u("llama.embedding_length")?;
        let rope_dim = u("llama.rope.dimension_count")?;
        let eps = md("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let base = ct
            .metadata
            .get("llama.rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10000.0);
        let context_length = ct
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|c| c as usize)
            .unwrap_or(4096);
        let head_dim = hidden / heads;
        if heads % kv_heads != 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
            bail!(
                "unsupported attention shape: {heads} heads, {kv_heads} KV heads, rope over {rope_dim} of {head_dim}"
            );
        }
        let dev = Device::Cpu;
        let mut tensor = |name: &str| -> anyhow::Result<Arc<QTensor>> {
            Ok(Arc::new(
                ct.tensor(reader, name, &dev).with_context(|| format!("GGUF tensor {name}"))?,
            ))
        };
        let vector = |q: Arc<QTensor>| -> anyhow::Result<Vec<f32>> {
            Ok(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?)
        };

        let embd = tensor("token_embd.weight")?;
        let (vocab, embd_hidden) = embd.shape().dims2()?;
        if embd_hidden != hidden {
            bail!("token_embd.weight is {vocab}×{embd_hidden}; the model's width is {hidden}");
        }
        let output = match ct.tensor_infos.contains_key("output.weight") {
            true => tensor("output.weight")?,
            false => embd.clone(), // tied embeddings
        };
        let embedding = Embedding {
            row_bytes: embd.data()?.len() / vocab,
            raw: embd.data()?.into_owned(),
            dtype: embd.dtype(),
            hidden,
            vocab,
        };
        let mut layers = Vec::with_capacity(layers_n);
        for i in 0..layers_n {
            let p = format!("blk.{i}");
            layers.push(Layer {
                wq: tensor(&format!("{p}.attn_q.weight"))?,
                wk: tensor(&format!("{p}.attn_k.weight"))?,
                wv: tensor(&format!("{p}.attn_v.weight"))?,
                wo: QMatMul::from_arc(tensor(&format!("{p}.attn_output.weight"))?)?,
                w_gate: tensor(&format!("{p}.ffn_gate.weight"))?,
                w_up: tensor(&format!("{p}.ffn_up.weight"))?,
                w_down: QMatMul::from_arc(tensor(&format!("{p}.ffn_down.weight"))?)?,
                attn_norm: vector(tensor(&format!("{p}.attn_norm.weight"))?)?,
                ffn_norm: vector(tensor(&format!("{p}.ffn_norm.weight"))?)?,
                k_cache: Vec::new(),
                v_cache: Vec::new(),
            });
        }
        let norm = vector(tensor("output_norm.weight")?)?;
        let half = rope_dim / 2;
        let (mut cos, mut sin) =
            (Vec::with_capacity(context_length * half), Vec::with_capacity(context_length * half));
        for pos in 0..context_length {
            for i in 0..half {
                let freq = 1.0 / base.powf(2.0 * i as f32 / rope_dim as f32);
                let angle = pos as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Some(Self {
            embedding,
            layers,
            norm,
            output: QMatMul::from_arc(output)?,
            heads,
            kv_heads,
            head_dim,
            rope_dim,
            hidden,
            eps,
            cos,
            sin,
            context_length,
            len: 0,
        }))
    }

    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Bytes of keys and values the cache holds now (what [`Self::snapshot`] would copy).
    pub fn kv_bytes(&self) -> usize {
        2 * self.layers.len()
            * self.len
            * self.kv_heads
            * self.head_dim
            * std::mem::size_of::<f32>()
    }

    /// A copy of the KV cache as it is now.
    pub fn snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            k: self.layers.iter().map(|l| l.k_cache.clone()).collect(),
            v: self.layers.iter().map(|l| l.v_cache.clone()).collect(),
            len: self.len,
        }
    }

    /// Replaces the KV cache with the first `len` positions of `snapshot` (at most its own).
    pub fn restore(&mut self, snapshot: &KvSnapshot, len: usize) {
        let len = len.min(snapshot.len);
        let kv = self.kv_heads * self.head_dim;
        for ((l, k), v) in self.layers.iter_mut().zip(&snapshot.k).zip(&snapshot.v) {
            l.k_cache.clear();
            l.k_cache.extend_from_slice(&k[..len * kv]);
            l.v_cache.clear();
            l.v_cache.extend_from_slice(&v[..len * kv]);
        }
        self.len = len;
    }

    fn truncate(&mut self, len: usize) {
        let kv = self.kv_heads * self.head_dim;
        for l in &mut self.layers {
            l.k_cache.truncate(len * kv);
            l.v_cache.truncate(len * kv);
        }
        self.len = len;
    }

    /// Interleaved rotary embedding (llama.cpp's "normal" RoPE: pairs 2i, 2i+1) at `pos`.
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.rope_dim / 2;
        let (cos, sin) =
            (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
        for head in x.chunks_exact_mut(self.head_dim) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Runs `tokens` at positions `pos..` (the cache is cut back to `pos` first); returns the
    /// next-token logits.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let n = tokens.len();
        if n == 0 {
            candle_core::bail!("no tokens");
        }
        if pos > self.len {
            candle_core::bail!("position {pos} is past the {} cached positions", self.len);
        }
        if pos + n > self.context_length {
            candle_core::bail!(
                "{} positions exceed the context of {}",
                pos + n,
                self.context_length
            );
        }
        self.truncate(pos);
        let (hidden, hd, kvd) = (self.hidden, self.head_dim, self.kv_heads * self.head_dim);
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();

        let mut x = Vec::with_capacity(n * hidden);
        for &t in tokens {
            x.extend(self.embedding.row(t)?);
        }
        let mut xn = vec![0f32; n * hidden];
        let mut attn = vec![0f32; n * hidden];
        for li in 0..self.layers.len() {
            xn.copy_from_slice(&x);
            for row in xn.chunks_exact_mut(hidden) {
                simd::rms_norm(row, &self.layers[li].attn_norm, self.eps);
            }
            let l = &self.layers[li];
            let mut qkv = project(&[&l.wq, &l.wk, &l.wv], &xn, n)?;
            let v = qkv.pop().unwrap_or_default();
            let mut k = qkv.pop().unwrap_or_default();
            let mut q = qkv.pop().unwrap_or_default();
            for i in 0..n {
                self.rope(&mut q[i * hidden..(i + 1) * hidden], pos + i);
                self.rope(&mut k[i * kvd..(i + 1) * kvd], pos + i);
            }
            let l = &mut self.layers[li];
            l.k_cache.extend_from_slice(&k);
            l.v_cache.extend_from_slice(&v);

            // Causal attention: query i sees positions 0..=pos+i. One work item per (query, KV
            // head): the query heads sharing a KV head read each cached row once. Items write
            // disjoint, consecutive slices of `attn`, and run on candle's worker threads.
            let (k_cache, v_cache) = (&l.k_cache, &l.v_cache);
            let outputs: Vec<std::sync::Mutex<&mut [f32]>> =
                attn.chunks_mut(group * hd).map(std::sync::Mutex::new).collect();
            candle_core::utils::barrier_pool().execute_chunked(n * self.kv_heads, |items| {
                let mut scores = vec![0f32; group * (pos + n)];
                for item in items {
                    let (i, kvh) = (item / self.kv_heads, item % self.kv_heads);
                    let seen = pos + i + 1;
                    let queries =
                        &q[i * hidden + kvh * group * hd..i * hidden + (kvh + 1) * group * hd];
                    let mut out = outputs[item].lock().unwrap_or_else(|e| e.into_inner());
                    simd::attend(
                        queries,
                        k_cache,
                        v_cache,
                        kvd,
                        kvh * hd,
                        hd,
                        seen,
                        scale,
                        &mut scores,
                        &mut out,
                    );
                }
            });
            drop(outputs);
            let o = matmul_rows(&l.wo, &attn, n)?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            xn.copy_from_slice(&x);
            for row in xn.chunks_exact_mut(hidden) {
                simd::rms_norm(row, &l.ffn_norm, self.eps);
            }
            let mut gu = project(&[&l.w_gate, &l.w_up], &xn, n)?;
            let up = gu.pop().unwrap_or_default();
            let mut gate = gu.pop().unwrap_or_default();
            simd::silu_mul(&mut gate, &up);
            let d = matmul_rows(&l.w_down, &gate, n)?;
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        self.len = pos + n;
        let mut last = x[(n - 1) * hidden..].to_vec();
        simd::rms_norm(&mut last, &self.norm, self.eps);
        let logits = matmul_rows(&self.output, &last, 1)?;
        let len = logits.len();
        Tensor::from_vec(logits, len, &Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::quantized_llama::ModelWeights;

    /// The same GGUF through both implementations: prompt, then token by token, then a
    /// rewind (a shorter position than the cache holds).
    #[test]
    fn matches_candle_quantized_llama() {
        let dir = tempfile::tempdir().unwrap();
        crate::testmodel::make(&crate::testmodel::Options {
            out: dir.path().to_path_buf(),
            format: crate::testmodel::Format::Gguf,
            size: crate::testmodel::Size::Tiny,
            embedding: false,
            quant: crate::testmodel::Quant::Q8_0,
            seed: 3,
        })
        .unwrap();
        let path = dir.path().join("model.gguf");
        let open = || {
            let mut f = std::fs::File::open(&path).unwrap();
            let ct = Content::read(&mut f).unwrap();
            (ct, f)
        };
        let (ct, mut f) = open();
        let mut ours = QLlama::load(&ct, &mut f).unwrap().unwrap();
        let (ct, mut f) = open();
        let mut theirs = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let (a, b) =
                (a.to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(a.len(), b.len());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-3 * scale.max(1.0), "logits differ by {worst} (scale {scale})");
        };
        let prompt = [5u32, 17, 200, 3, 99, 42, 7];
        let input = |t: &[u32]| Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        close(&ours.forward(&prompt, 0).unwrap(), &theirs.forward(&input(&prompt), 0).unwrap());
        for (i, t) in [11u32, 12, 13, 300].iter().enumerate() {
            close(
                &ours.forward(&[*t], prompt.len() + i).unwrap(),
                &theirs.forward(&input(&[*t]), prompt.len() + i).unwrap(),
            );
        }
        // Rewind to after the prompt and continue differently: same as a fresh run.
        theirs.clear_kv_cache();
        theirs.forward(&input(&prompt), 0).unwrap();
        close(
            &ours.forward(&[77], prompt.len()).unwrap(),
            &theirs.forward(&input(&[77]), prompt.len()).unwrap(),
        );
        // A snapshot restored into a fresh model continues exactly as the original does.
        let (ct, mut f) = open();
        let mut fresh = QLlama::load(&ct, &mut f).unwrap().unwrap();
        ours.forward(&prompt, 0).unwrap();
        let saved = ours.snapshot();
        assert_eq!(saved.bytes(), 2 * 2 * prompt.len() * 32 * 4, "2 layers of K and V, 32 wide");
        assert_eq!(saved.bytes(), ours.kv_bytes());
        fresh.restore(&saved, 5);
        let (a, b) =
            (ours.forward(&prompt[5..], 5).unwrap(), fresh.forward(&prompt[5..], 5).unwrap());
        assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        assert!(ours.forward(&[1], 100).is_err(), "a gap in positions is refused");
        assert!(
            ours.forward(&[1_000_000], 0).is_err(),
            "a token outside the vocabulary is refused"
        );
    }
}
