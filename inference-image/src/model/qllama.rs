//! Llama from a GGUF file on the CPU: candle's quantized matrix kernels (or ours, `qgemm`), with
//! the rest of the forward pass written for decoding, and for decoding several sequences at once.
//!
//! Why not candle-transformers' `quantized_llama` (still used on GPUs): per generated token it
//! allocates a tensor per operation, grows the KV cache by concatenation (copying it each step),
//! copies K and V once more per grouped-query head, and quantizes each layer's input once per
//! projection. Here the projections that share an input run as one fused kernel call (Q/K/V,
//! gate/up), the KV cache is appended in place, and attention, RoPE and the norms are plain loops
//! over preallocated buffers. `tests::matches_candle_quantized_llama` keeps the two in agreement.
//!
//! The weights are shared and each sequence brings its own KV cache ([`Kv`]), so one forward pass
//! can carry the rows of many sequences (continuous batching): every weight matrix is read once
//! per step for all of them, which is what a decode step's time is spent on.

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
}

/// One sequence's keys and values, per layer, appended per position: `[position][kv head][head_dim]`.
/// A finished sequence's cache can be kept whole in the prefix cache (`crate::prefix_cache`).
#[derive(Clone)]
pub struct Kv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    /// Values per position in one layer: KV heads × head size.
    width: usize,
}

impl Kv {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|c| c.len() * std::mem::size_of::<f32>()).sum()
    }

    /// A copy of the first `len` positions (at most all of them).
    pub fn prefix(&self, len: usize) -> Kv {
        let len = len.min(self.len);
        let cut = |c: &Vec<Vec<f32>>| c.iter().map(|l| l[..len * self.width].to_vec()).collect();
        Kv { k: cut(&self.k), v: cut(&self.v), len, width: self.width }
    }

    /// Forgets the positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for c in self.k.iter_mut().chain(&mut self.v) {
            c.truncate(len * self.width);
        }
        self.len = len;
    }

    /// Gives back the room grown for positions never used (a kept cache lives long).
    pub fn shrink(&mut self) {
        for c in self.k.iter_mut().chain(&mut self.v) {
            c.shrink_to_fit();
        }
    }
}

/// One sequence's part of a forward pass: `tokens` run after the positions `kv` holds.
pub struct Feed<'a> {
    pub kv: &'a mut Kv,
    pub tokens: &'a [u32],
    /// Whether to return the next-token logits after the last of `tokens` (a prompt's chunks
    /// before its last need none).
    pub logits: bool,
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
        && qgemm::preferred(q.dtype(), rows, n, k)
        && let Some(out) =
            qgemm::matmul(q, &qgemm::quantize(x, rows, qgemm::activation_block(q.dtype())))?
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
    let block = qgemm::activation_block(ws[0].dtype());
    if ws.iter().all(|w| {
        qgemm::activation_block(w.dtype()) == block
            && w.shape().dims2().is_ok_and(|(n, k)| qgemm::preferred(w.dtype(), rows, n, k))
    }) {
        let quantized = qgemm::quantize(x, rows, block);
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

/// The longest context whose RoPE tables a GGUF may ask for (2M positions; the largest llama
/// contexts published are 1M).
const MAX_CONTEXT: usize = 1 << 21;

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
        let head_dim = hidden.checked_div(heads).unwrap_or(0);
        if kv_heads == 0
            || head_dim == 0
            || heads % kv_heads != 0
            || rope_dim > head_dim
            || rope_dim % 2 != 0
        {
            bail!(
                "unsupported attention shape: {heads} heads, {kv_heads} KV heads, rope over {rope_dim} of {head_dim}"
            );
        }
        // The RoPE tables below hold every position: a damaged count must not reserve them.
        if context_length == 0 || context_length > MAX_CONTEXT {
            bail!("llama.context_length {context_length} is not within 1..={MAX_CONTEXT}");
        }
        if !(eps.is_finite() && eps > 0.0 && base.is_finite() && base > 0.0) {
            bail!("the norm epsilon ({eps}) and the RoPE base ({base}) must be positive numbers");
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

        // Every weight's shape is checked against the metadata here: the kernels index rows by
        // these widths, and a file whose tensors disagree with its header must fail to load
        // rather than read past a row.
        let shaped = |name: &str, t: &Arc<QTensor>, want: &[usize]| -> anyhow::Result<()> {
            if t.shape().dims() != want {
                bail!("{name} is {:?}; the metadata makes it {want:?}", t.shape().dims());
            }
            Ok(())
        };
        let embd = tensor("token_embd.weight")?;
        let (vocab, embd_hidden) = embd.shape().dims2()?;
        if embd_hidden != hidden || vocab == 0 {
            bail!("token_embd.weight is {vocab}×{embd_hidden}; the model's width is {hidden}");
        }
        let output = match ct.tensor_infos.contains_key("output.weight") {
            true => tensor("output.weight")?,
            false => embd.clone(), // tied embeddings
        };
        shaped("output.weight", &output, &[vocab, hidden])?;
        let (q_rows, kv_rows) = (heads * head_dim, kv_heads * head_dim);
        let Some(&ffn) =
            ct.tensor_infos.get("blk.0.ffn_up.weight").and_then(|t| t.shape.dims().first())
        else {
            bail!("GGUF tensor blk.0.ffn_up.weight is missing or has no dimensions");
        };
        let embedding = Embedding {
            row_bytes: embd.data()?.len() / vocab,
            raw: embd.data()?.into_owned(),
            dtype: embd.dtype(),
            hidden,
            vocab,
        };
        // Not reserved from the header's count: a damaged count fails at its first missing layer.
        let mut layers = Vec::new();
        for i in 0..layers_n {
            let mut weight = |part: &str, want: &[usize]| -> anyhow::Result<Arc<QTensor>> {
                let name = format!("blk.{i}.{part}.weight");
                let t = tensor(&name)?;
                shaped(&name, &t, want)?;
                Ok(t)
            };
            layers.push(Layer {
                wq: weight("attn_q", &[q_rows, hidden])?,
                wk: weight("attn_k", &[kv_rows, hidden])?,
                wv: weight("attn_v", &[kv_rows, hidden])?,
                wo: QMatMul::from_arc(weight("attn_output", &[hidden, q_rows])?)?,
                w_gate: weight("ffn_gate", &[ffn, hidden])?,
                w_up: weight("ffn_up", &[ffn, hidden])?,
                w_down: QMatMul::from_arc(weight("ffn_down", &[hidden, ffn])?)?,
                attn_norm: vector(weight("attn_norm", &[hidden])?)?,
                ffn_norm: vector(weight("ffn_norm", &[hidden])?)?,
            });
        }
        let norm = tensor("output_norm.weight")?;
        shaped("output_norm.weight", &norm, &[hidden])?;
        let norm = vector(norm)?;
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
        }))
    }

    /// An empty KV cache for a new sequence.
    pub fn new_kv(&self) -> Kv {
        let layers = self.layers.len();
        Kv {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            len: 0,
            width: self.kv_heads * self.head_dim,
        }
    }

    /// Entries in the embedding matrix: token ids at or past it are refused.
    pub fn vocab_size(&self) -> usize {
        self.embedding.vocab
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

    /// Runs each feed's tokens after the positions its cache holds, the rows of every sequence
    /// through each projection together; returns, per feed, the next-token logits if it asked for
    /// them. On an error every cache is as it was before the call.
    pub fn forward(&self, feeds: &mut [Feed<'_>]) -> candle_core::Result<Vec<Option<Vec<f32>>>> {
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        let kvd = self.kv_heads * self.head_dim;
        for f in feeds.iter() {
            if f.tokens.is_empty() {
                candle_core::bail!("no tokens");
            }
            if f.kv.width != kvd || f.kv.k.len() != self.layers.len() {
                candle_core::bail!("the KV cache belongs to another model");
            }
            if f.kv.len + f.tokens.len() > self.context_length {
                candle_core::bail!(
                    "{} positions exceed the context of {}",
                    f.kv.len + f.tokens.len(),
                    self.context_length
                );
            }
        }
        let before: Vec<usize> = feeds.iter().map(|f| f.kv.len).collect();
        let result = self.forward_rows(feeds);
        if result.is_err() {
            for (f, len) in feeds.iter_mut().zip(before) {
                f.kv.truncate(len);
            }
        }
        result
    }

    fn forward_rows(&self, feeds: &mut [Feed<'_>]) -> candle_core::Result<Vec<Option<Vec<f32>>>> {
        let (hidden, hd, kvd) = (self.hidden, self.head_dim, self.kv_heads * self.head_dim);
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        // Each row's sequence and position; a sequence's rows are consecutive.
        let rows: Vec<(usize, usize)> = feeds
            .iter()
            .enumerate()
            .flat_map(|(s, f)| (0..f.tokens.len()).map(move |i| (s, f.kv.len + i)))
            .collect();
        let n = rows.len();
        let longest = rows.iter().map(|&(_, p)| p + 1).max().unwrap_or(1);

        let mut x = Vec::with_capacity(n * hidden);
        for f in feeds.iter() {
            for &t in f.tokens {
                x.extend(self.embedding.row(t)?);
            }
        }
        let mut xn = vec![0f32; n * hidden];
        let mut attn = vec![0f32; n * hidden];
        for (li, l) in self.layers.iter().enumerate() {
            xn.copy_from_slice(&x);
            for row in xn.chunks_exact_mut(hidden) {
                simd::rms_norm(row, &l.attn_norm, self.eps);
            }
            let mut qkv = project(&[&l.wq, &l.wk, &l.wv], &xn, n)?;
            let v = qkv.pop().unwrap_or_default();
            let mut k = qkv.pop().unwrap_or_default();
            let mut q = qkv.pop().unwrap_or_default();
            for (i, &(_, p)) in rows.iter().enumerate() {
                self.rope(&mut q[i * hidden..(i + 1) * hidden], p);
                self.rope(&mut k[i * kvd..(i + 1) * kvd], p);
            }
            let mut first = 0;
            for f in feeds.iter_mut() {
                let end = first + f.tokens.len();
                f.kv.k[li].extend_from_slice(&k[first * kvd..end * kvd]);
                f.kv.v[li].extend_from_slice(&v[first * kvd..end * kvd]);
                first = end;
            }

            // Causal attention: a row at position p sees its own sequence's positions 0..=p. One
            // work item per (row, KV head): the query heads sharing a KV head read each cached
            // row once. Items write disjoint, consecutive slices of `attn`, and run on candle's
            // worker threads.
            let caches: Vec<(&[f32], &[f32])> =
                feeds.iter().map(|f| (&f.kv.k[li][..], &f.kv.v[li][..])).collect();
            let outputs: Vec<std::sync::Mutex<&mut [f32]>> =
                attn.chunks_mut(group * hd).map(std::sync::Mutex::new).collect();
            candle_core::utils::barrier_pool().execute_chunked(n * self.kv_heads, |items| {
                let mut scores = vec![0f32; group * longest];
                for item in items {
                    let (i, kvh) = (item / self.kv_heads, item % self.kv_heads);
                    let (s, p) = rows[i];
                    let (k_cache, v_cache) = caches[s];
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
                        p + 1,
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
        for f in feeds.iter_mut() {
            f.kv.len += f.tokens.len();
        }

        // The LM head runs on the last row of each sequence that asked for logits.
        let mut last = Vec::new();
        let mut end = 0;
        for f in feeds.iter() {
            end += f.tokens.len();
            if f.logits {
                let row = &x[(end - 1) * hidden..end * hidden];
                last.extend_from_slice(row);
                let len = last.len();
                simd::rms_norm(&mut last[len - hidden..], &self.norm, self.eps);
            }
        }
        let wanted = last.len() / hidden;
        let mut logits = Vec::new();
        if wanted > 0 {
            logits = matmul_rows(&self.output, &last, wanted)?;
        }
        let vocab = logits.len() / wanted.max(1);
        let mut rows = logits.chunks_exact(vocab.max(1));
        Ok(feeds
            .iter()
            .map(|f| if f.logits { rows.next().map(<[f32]>::to_vec) } else { None })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::quantized_llama::ModelWeights;

    impl QLlama {
        /// One sequence's `tokens` after the positions `kv` holds; the next-token logits.
        fn forward_one(&self, kv: &mut Kv, tokens: &[u32]) -> candle_core::Result<Vec<f32>> {
            let mut feeds = [Feed { kv, tokens, logits: true }];
            Ok(self.forward(&mut feeds)?.pop().flatten().unwrap_or_default())
        }
    }

    /// The tiny q8_0 test model, written under a directory that lives as long as the first value.
    fn tiny_gguf(seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        crate::testmodel::make(&crate::testmodel::Options {
            out: dir.path().to_path_buf(),
            format: crate::testmodel::Format::Gguf,
            size: crate::testmodel::Size::Tiny,
            embedding: false,
            quant: crate::testmodel::Quant::Q8_0,
            seed,
        })
        .unwrap();
        let path = dir.path().join("model.gguf");
        (dir, path)
    }

    /// The same GGUF through both implementations: prompt, then token by token, then a
    /// rewind (a shorter position than the cache holds).
    #[test]
    fn matches_candle_quantized_llama() {
        let (_dir, path) = tiny_gguf(3);
        let open = || {
            let mut f = std::fs::File::open(&path).unwrap();
            let ct = Content::read(&mut f).unwrap();
            (ct, f)
        };
        let (ct, mut f) = open();
        let ours = QLlama::load(&ct, &mut f).unwrap().unwrap();
        let (ct, mut f) = open();
        let mut theirs = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        let close = |a: &[f32], b: &Tensor| {
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a.len(), b.len());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-3 * scale.max(1.0), "logits differ by {worst} (scale {scale})");
        };
        let prompt = [5u32, 17, 200, 3, 99, 42, 7];
        let input = |t: &[u32]| Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut kv = ours.new_kv();
        close(
            &ours.forward_one(&mut kv, &prompt).unwrap(),
            &theirs.forward(&input(&prompt), 0).unwrap(),
        );
        for (i, t) in [11u32, 12, 13, 300].iter().enumerate() {
            close(
                &ours.forward_one(&mut kv, &[*t]).unwrap(),
                &theirs.forward(&input(&[*t]), prompt.len() + i).unwrap(),
            );
        }
        // Rewind to after the prompt and continue differently: same as a fresh run.
        theirs.clear_kv_cache();
        theirs.forward(&input(&prompt), 0).unwrap();
        kv.truncate(prompt.len());
        close(
            &ours.forward_one(&mut kv, &[77]).unwrap(),
            &theirs.forward(&input(&[77]), prompt.len()).unwrap(),
        );
        // A copied prefix of a cache continues exactly as the original does.
        let mut kv = ours.new_kv();
        ours.forward_one(&mut kv, &prompt).unwrap();
        assert_eq!(kv.bytes(), 2 * 2 * prompt.len() * 32 * 4, "2 layers of K and V, 32 wide");
        let mut copy = kv.prefix(5);
        kv.truncate(5);
        assert_eq!(
            ours.forward_one(&mut kv, &prompt[5..]).unwrap(),
            ours.forward_one(&mut copy, &prompt[5..]).unwrap()
        );
        let before = kv.len();
        assert!(
            ours.forward_one(&mut kv, &[1_000_000]).is_err(),
            "a token outside the vocabulary is refused"
        );
        assert_eq!(kv.len(), before, "a refused step leaves the cache as it was");
        assert_eq!(
            ours.forward(&mut []).unwrap(),
            Vec::<Option<Vec<f32>>>::new(),
            "an empty batch"
        );
    }

    /// Sequences run together in one batch (a prompt chunk beside decode steps) get the same
    /// logits as each run alone, bit for bit: batching must not change any answer.
    #[test]
    fn a_batch_of_sequences_matches_each_sequence_alone() {
        let (_dir, path) = tiny_gguf(5);
        let mut f = std::fs::File::open(path).unwrap();
        let ct = Content::read(&mut f).unwrap();
        let model = QLlama::load(&ct, &mut f).unwrap().unwrap();
        let prompts: [&[u32]; 3] =
            [&[1, 2, 3, 4, 5, 6], &[9, 8, 7], &[40, 41, 42, 43, 44, 45, 46, 47]];
        let alone: Vec<Vec<f32>> = prompts
            .iter()
            .map(|p| {
                let mut kv = model.new_kv();
                model.forward_one(&mut kv, &p[..p.len() - 1]).unwrap();
                model.forward_one(&mut kv, &p[p.len() - 1..]).unwrap()
            })
            .collect();
        let mut kvs: Vec<Kv> = prompts.iter().map(|_| model.new_kv()).collect();
        // Step 1: the first two sequences' prompts less their last token; the third waits.
        // Step 2: the first two's last tokens (decode-like rows) beside the third's whole prompt.
        let [a, b, c] = &mut kvs[..] else { unreachable!() };
        let out = model
            .forward(&mut [
                Feed { kv: a, tokens: &prompts[0][..5], logits: false },
                Feed { kv: b, tokens: &prompts[1][..2], logits: false },
            ])
            .unwrap();
        assert_eq!(out, vec![None, None]);
        let out = model
            .forward(&mut [
                Feed { kv: a, tokens: &prompts[0][5..], logits: true },
                Feed { kv: b, tokens: &prompts[1][2..], logits: true },
                Feed { kv: c, tokens: &prompts[2][..7], logits: false },
            ])
            .unwrap();
        assert_eq!(out[0].as_ref(), Some(&alone[0]));
        assert_eq!(out[1].as_ref(), Some(&alone[1]));
        assert_eq!(out[2], None);
        let out =
            model.forward(&mut [Feed { kv: c, tokens: &prompts[2][7..], logits: true }]).unwrap();
        assert_eq!(out[0].as_ref(), Some(&alone[2]));
    }
}
