//! Matrix products on CPUs with AVX2 but no VNNI: against q8_0 weights for prompts (many rows)
//! and decode steps (one row), against q4_K weights for decode steps.
//!
//! There, candle's CPU matmul computes each output element as its own dot product: every pair of
//! blocks reloads both operands, and converts the f16 scales through a function call that makes
//! the compiler save every vector register around it. Here each weight block, once loaded (and,
//! for q4_K, its nibbles and 6-bit scales unpacked), meets a tile of up to four activation rows
//! held in registers; the scales are converted inline; the weights a couple of KiB ahead are
//! prefetched, since a decode step reads each weight once and would otherwise wait on memory for
//! most of each block; the activations are quantized once per input, however many projections
//! read it (Q, K and V; gate and up). A work item is a group of weight rows, walked tile by tile
//! so that both the tile's activations and the group's weights stay in L1, over a slab of
//! activation rows that fits in L2.
//!
//! Where the CPU has AVX-512 VNNI or AVX-VNNI, candle repacks q8_0 and q4_K weights for
//! `vpdpbusd`, which is faster than any AVX2 kernel; [`preferred`] leaves those shapes to it, and
//! q4_K prompts to candle's AVX2 repacked kernels. Other quantizations stay with candle too.
//! [`describe`] says what runs, for the benchmark.

use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QTensor};

/// Values per q8_0 block, and the block's bytes: an f16 scale, then 32 signed bytes.
const QK: usize = 32;
const BLOCK_BYTES: usize = 2 + QK;
/// Values per q4_K super-block, and its bytes: f16 `d` and `dmin`, twelve bytes holding eight
/// 6-bit scales and eight 6-bit mins (one of each per 32 values), then 256 4-bit values.
const QK_K: usize = 256;
const Q4K_BYTES: usize = 2 + 2 + 12 + QK_K / 2;
/// Activation rows per register tile: each weight block loaded serves this many rows. Four
/// accumulators keep the loop inside AVX2's 16 registers; wider tiles (4×2, 3×2) spilled to the
/// stack and ran slower on the benchmark.
const RM: usize = 4;
/// Weight rows per work item, for prompts: a tile's activations and this many rows' weights stay
/// in L1 together.
const GROUP: usize = 8;
/// Weight rows per work item for decode steps (fewer rows than a tile), which touch each weight
/// once: enough that taking and releasing the item, atomics that cost as much as the rows' work
/// at eight rows, is small against it.
const DECODE_GROUP: usize = 64;

/// Activation rows quantized once, for every projection that reads them: to q8_0 (blocks of 32)
/// against q8_0 weights, to q8_K (blocks of 256, as llama.cpp pairs with q4_K) against q4_K.
pub struct Quantized {
    qs: Vec<i8>,
    /// One scale per block: for q8_0 rounded through f16 as llama.cpp and candle store it; for
    /// q8_K an f32, as llama.cpp keeps it.
    d: Vec<f32>,
    /// q8_K only: the sum of each 32 quantized values, which q4_K's per-32 mins multiply.
    sums: Vec<i16>,
    rows: usize,
    /// Blocks per row, of `block` values each.
    blocks: usize,
    block: usize,
}

/// Whether [`matmul`] should multiply `m` rows by `n`×`k` weights of `dtype` on this CPU.
///
/// Against q4_K, only a few rows (decode steps): candle's repacked q4_K kernels ran prompts
/// faster (709 against 504 tokens/s at 64 rows, 587 against 483 at 4, on the benchmark's Xeon),
/// while for single rows this kernel, which prefetches the weights ahead, ran at 1.5× theirs.
pub fn preferred(dtype: GgmlDType, m: usize, n: usize, k: usize) -> bool {
    let vnni_shape = candle_vnni() && n.is_multiple_of(16) && k.is_multiple_of(256);
    match dtype {
        GgmlDType::Q8_0 => avx2() && !vnni_shape,
        GgmlDType::Q4K => avx2() && !vnni_shape && k.is_multiple_of(QK_K) && m < RM,
        _ => false,
    }
}

/// How activations are quantized against weights of `dtype` ([`quantize`]); the same for every
/// projection that shares an input, or those projections cannot share its quantization.
pub fn activation_block(dtype: GgmlDType) -> usize {
    if dtype == GgmlDType::Q4K { QK_K } else { QK }
}

/// Which kernels run prompts and decode steps for weights of `dtype` on this CPU.
pub fn describe(dtype: GgmlDType) -> String {
    let simd = if cfg!(target_arch = "aarch64") {
        "NEON"
    } else if candle_vnni() {
        "AVX-512 VNNI / AVX-VNNI"
    } else if avx2() {
        "AVX2+FMA"
    } else {
        "scalar"
    };
    let kernels = if preferred(dtype, 64, 16, 256) {
        "alcove q8_0 tiles (AVX2), prompt and decode"
    } else if preferred(dtype, 1, 16, 256) {
        "alcove q4_K×q8_K (AVX2) for decode, candle's repacked q4_k for prompts"
    } else if dtype == GgmlDType::Q8_0 && candle_vnni() {
        "candle q8_0 repacked for vpdpbusd"
    } else if dtype == GgmlDType::Q4K && candle_vnni() {
        "candle q4_k repacked for vpdpbusd"
    } else if dtype == GgmlDType::Q4K && avx2() {
        "candle q4_k repacked (AVX2)"
    } else {
        "candle matmul and gemv"
    };
    format!("{dtype:?} weights, {simd}: {kernels}")
}

/// Whether the CPU can run [`matmul`] at all (every AVX2 CPU also has F16C).
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Candle's own choice of its VNNI kernels (`repack_x86::level`), including its switch to treat
/// the CPU as AVX2-only, which the benchmark uses to measure that case on a VNNI machine.
fn candle_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        std::env::var("MISTRALRS_FORCE_AVX2").as_deref() != Ok("1")
            && ((has!("avx512f") && has!("avx512vnni")) || has!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `rows` rows of `k` values each, quantized in blocks of `block` values ([`activation_block`];
/// `k` a multiple of it).
pub fn quantize(x: &[f32], rows: usize, block: usize) -> Quantized {
    let k = x.len() / rows.max(1);
    let blocks = k / block;
    let mut q = Quantized {
        qs: vec![0; rows * k],
        d: vec![0.0; rows * blocks],
        sums: Vec::new(),
        rows,
        blocks,
        block,
    };
    for ((src, qs), d) in x.chunks_exact(block).zip(q.qs.chunks_exact_mut(block)).zip(&mut q.d) {
        let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        for (o, v) in qs.iter_mut().zip(src) {
            *o = (v * inv).round() as i8;
        }
        *d = if block == QK { half::f16::from_f32(scale).to_f32() } else { scale };
    }
    if block == QK_K {
        q.sums = q.qs.chunks_exact(QK).map(|c| c.iter().map(|&v| i16::from(v)).sum()).collect();
    }
    q
}

/// `x · wᵀ` for q8_0 or q4_K weights `w` (`n` rows of `k`): `n` values per row of `x`. `None`
/// when the weights are of another type, `x` was quantized for another type, or the CPU lacks
/// AVX2.
pub fn matmul(w: &QTensor, x: &Quantized) -> candle_core::Result<Option<Vec<f32>>> {
    let (block_bytes, kernel) = match w.dtype() {
        GgmlDType::Q8_0 => (BLOCK_BYTES, Kernel::Q8_0),
        GgmlDType::Q4K => (Q4K_BYTES, Kernel::Q4K),
        _ => return Ok(None),
    };
    if !avx2() || x.block != activation_block(w.dtype()) {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    if k != x.blocks * x.block {
        candle_core::bail!(
            "quantized matmul: weights are {n}×{k}, activations {} wide",
            x.blocks * x.block
        );
    }
    let raw = w.data()?;
    if raw.len() != n * x.blocks * block_bytes {
        candle_core::bail!(
            "quantized matmul: {} bytes of {:?} weights for {n}×{k}",
            raw.len(),
            w.dtype()
        );
    }
    let m = x.rows;
    // Transposed result: each work item (a group of weight rows) owns those rows of `out_t`.
    let mut out_t = vec![0f32; n * m];
    let group_rows = if m < RM { DECODE_GROUP } else { GROUP };
    let items: Vec<Mutex<&mut [f32]>> = out_t.chunks_mut(group_rows * m).map(Mutex::new).collect();
    // Activation rows in slabs of about 256 KiB, so the rows a worker sweeps for each weight row
    // stay in its L2 cache; a long prompt then reads the weights once per slab.
    let slab = ((256 << 10) / k).max(RM) / RM * RM;
    for first in (0..m).step_by(slab) {
        let rows = first..m.min(first + slab);
        candle_core::utils::barrier_pool().execute_chunked(items.len(), |range| {
            for group in range {
                let mut out = items[group].lock().unwrap_or_else(|e| e.into_inner());
                let weight_rows = out.len() / m;
                // Tile by tile, every weight row of the group: the tile's activations and the
                // group's weights both stay in L1.
                for first in rows.clone().step_by(RM) {
                    let tile_rows = first..rows.end.min(first + RM);
                    for r in 0..weight_rows {
                        let j = group * group_rows + r;
                        tile(kernel, &raw, x, first, j, &mut out[r * m..][tile_rows.clone()]);
                    }
                }
            }
        });
    }
    drop(items);
    // Back to row-major, a group of weight rows at a time: each output row gets the group's
    // values as one contiguous run (one value at a time would touch a cache line per value).
    let mut out = vec![0f32; m * n];
    for (g, group) in out_t.chunks(group_rows * m).enumerate() {
        let width = group.len() / m;
        for (i, row) in out.chunks_exact_mut(n).enumerate() {
            for (r, o) in row[g * group_rows..][..width].iter_mut().enumerate() {
                *o = group[r * m + i];
            }
        }
    }
    Ok(Some(out))
}

/// The kernel a weight type runs.
#[derive(Clone, Copy)]
enum Kernel {
    Q8_0,
    Q4K,
}

/// Activation rows `first..first + out.len()` (at most a tile) against weight row `j`.
fn tile(kernel: Kernel, w: &[u8], x: &Quantized, first: usize, j: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `matmul` runs only where `avx2` found AVX2, FMA and F16C.
        #[allow(unsafe_code)]
        unsafe {
            avx2::tile(kernel, w, x, first, j, out)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (kernel, w, x, first, j, out);
}

/// A q4_K block's eight 6-bit scales and eight 6-bit mins, from its twelve packed bytes: bytes
/// 0–3 hold scales 0–3 (low six bits) and the top bits of scales 4–7; bytes 4–7 the same for the
/// mins; bytes 8–11 the low four bits of scales 4–7 (low nibble) and of mins 4–7 (high nibble).
/// Inlined: a call inside the kernel's loop would make the compiler save every vector register
/// around it.
#[inline(always)]
fn q4k_scales(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| {
        u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let scales_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let join = |lo: u32, hi: u32| {
        let (lo, hi) = (lo.to_le_bytes(), hi.to_le_bytes());
        [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
    };
    (join(w0 & LOW6, scales_hi), join(w1 & LOW6, mins_hi))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK_BYTES, Kernel, Q4K_BYTES, QK, QK_K, Quantized, RM, q4k_scales};

    /// How far ahead of the weight block in hand the kernels ask for weights: decode reads each
    /// weight once, and waiting on memory would otherwise dominate a block's work. Ahead is this
    /// row's later blocks or the next row's, which follows it in memory.
    const PREFETCH_BYTES: usize = 2048;

    #[target_feature(enable = "avx2,fma,f16c")]
    fn load(bytes: &[u8]) -> __m256i {
        assert!(bytes.len() >= 32);
        // SAFETY: 32 readable bytes (asserted); the load has no alignment requirement.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_loadu_si256(bytes.as_ptr().cast())
        }
    }

    /// Inline, unlike `half`'s conversion: a call inside the kernel's loop would make the
    /// compiler save every vector register around it (they are all caller-saved).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_to_f32(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Rows `i0..i0 + out.len()` against weight row `j`. The full tile's size is fixed at
    /// compile time so its accumulators stay in registers; the last, shorter tile goes row by
    /// row through the same code.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn tile(
        kernel: Kernel,
        w: &[u8],
        x: &Quantized,
        i0: usize,
        j: usize,
        out: &mut [f32],
    ) {
        match <&mut [f32; RM]>::try_from(&mut *out) {
            Ok(full) => fixed::<RM>(kernel, w, x, i0, j, full),
            Err(_) => {
                for (i, o) in out.iter_mut().enumerate() {
                    let mut one = [0f32];
                    fixed::<1>(kernel, w, x, i0 + i, j, &mut one);
                    *o = one[0];
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn fixed<const M: usize>(
        kernel: Kernel,
        w: &[u8],
        x: &Quantized,
        i0: usize,
        j: usize,
        out: &mut [f32; M],
    ) {
        match kernel {
            Kernel::Q8_0 => q8_0_tile::<M>(w, x, i0, j, out),
            Kernel::Q4K => q4k_tile::<M>(w, x, i0, j, out),
        }
    }

    /// q8_0 weight row `j` against q8_0 activation rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_tile<const M: usize>(w: &[u8], x: &Quantized, i0: usize, j: usize, out: &mut [f32; M]) {
        let kb = x.blocks;
        let qs: &[u8] = bytemuck_i8(&x.qs);
        let rows: [(&[u8], &[f32]); M] = std::array::from_fn(|i| {
            (&qs[(i0 + i) * kb * QK..][..kb * QK], &x.d[(i0 + i) * kb..][..kb])
        });
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); M];
        for (b, block) in
            w[j * kb * BLOCK_BYTES..][..kb * BLOCK_BYTES].chunks_exact(BLOCK_BYTES).enumerate()
        {
            _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(PREFETCH_BYTES).cast());
            let wd = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
            let wq = load(&block[2..]);
            let wabs = _mm256_sign_epi8(wq, wq);
            for (acc, (q, d)) in acc.iter_mut().zip(&rows) {
                let a = load(&q[b * QK..][..QK]);
                // |w| · (a with w's sign) = w · a, with the unsigned operand maddubs needs;
                // |w| ≤ 127 keeps each pair sum inside i16.
                let products = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(a, wq));
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
                *acc = _mm256_fmadd_ps(sums, _mm256_set1_ps(d[b] * wd), *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum(acc);
        }
    }

    /// q4_K weight row `j` against q8_K activation rows. Each 32 values of a q4_K block are `d·scale·q − dmin·min` (q a nibble), so against
    /// activations `a` of scale `da` the block contributes
    /// `da·(d·Σ scale·(q·a) − dmin·Σ min·Σa)`; the sums of `a` per 32 were taken when quantizing.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4k_tile<const M: usize>(w: &[u8], x: &Quantized, i0: usize, j: usize, out: &mut [f32; M]) {
        let kb = x.blocks;
        let qs: &[u8] = bytemuck_i8(&x.qs);
        let rows: [(&[u8], &[f32], &[i16]); M] = std::array::from_fn(|i| {
            let r = i0 + i;
            (
                &qs[r * kb * QK_K..][..kb * QK_K],
                &x.d[r * kb..][..kb],
                &x.sums[r * kb * 8..][..kb * 8],
            )
        });
        let nibble = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); M];
        for (b, block) in
            w[j * kb * Q4K_BYTES..][..kb * Q4K_BYTES].chunks_exact(Q4K_BYTES).enumerate()
        {
            let ahead = block.as_ptr().wrapping_add(PREFETCH_BYTES);
            for line in [0, 64, 128] {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
            }
            let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
            let dmin = f16_to_f32(u16::from_le_bytes([block[2], block[3]]));
            let (scales, mins) = q4k_scales(&block[4..16]);
            let mins = _mm_cvtepu8_epi16(_mm_set_epi64x(0, i64::from_le_bytes(mins)));
            // The eight scales in the low bytes of both halves, for vpshufb to spread one of
            // them over every 16-bit lane (a shuffle, where a broadcast from a general register
            // takes three instructions).
            let scales = _mm256_broadcastsi128_si256(_mm_set_epi64x(0, i64::from_le_bytes(scales)));
            let mut sumi = [_mm256_setzero_si256(); M];
            // Each 32 bytes hold 64 values: the low nibbles are one group of 32, the high
            // nibbles the next.
            for (c, packed) in block[16..].chunks_exact(32).enumerate() {
                let packed = load(packed);
                let lo = _mm256_and_si256(packed, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
                // In every 16-bit lane: scale 2c (or 2c + 1) as its low byte, and a zero high
                // byte, which vpshufb gives for a control byte with its top bit set.
                let spread = |g: usize| _mm256_set1_epi16(g as i16 | i16::MIN);
                let s_lo = _mm256_shuffle_epi8(scales, spread(2 * c));
                let s_hi = _mm256_shuffle_epi8(scales, spread(2 * c + 1));
                for (sumi, (q, _, _)) in sumi.iter_mut().zip(&rows) {
                    let a = &q[b * QK_K + c * 64..][..64];
                    // Nibbles are unsigned, as maddubs needs; 2·15·127 fits in i16.
                    let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(a)), s_lo);
                    let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(&a[32..])), s_hi);
                    *sumi = _mm256_add_epi32(*sumi, _mm256_add_epi32(p_lo, p_hi));
                }
            }
            for ((acc, sumi), (_, da, sums)) in acc.iter_mut().zip(sumi).zip(&rows) {
                let sums: &[i16] = &sums[b * 8..][..8];
                // SAFETY: eight i16 (sixteen bytes) are readable; no alignment is required.
                #[allow(unsafe_code)]
                let sums = unsafe { _mm_loadu_si128(sums.as_ptr().cast()) };
                let min_terms =
                    _mm256_cvtepi32_ps(_mm256_zextsi128_si256(_mm_madd_epi16(mins, sums)));
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * da[b]), _mm256_cvtepi32_ps(sumi), *acc);
                *acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da[b]), min_terms, *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum(acc);
        }
    }

    fn bytemuck_i8(v: &[i8]) -> &[u8] {
        // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid
        // for both.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(v.as_ptr().cast(), v.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Activations `x` (`m`×`k`), weights `wf` (`n`×`k`) quantized to `dtype` as `w`, the
    /// activations quantized for it as `q`, and the kernel's product `got`.
    struct Case {
        x: Vec<f32>,
        wf: Vec<f32>,
        w: QTensor,
        q: Quantized,
        got: Vec<f32>,
    }

    /// `None` only on a CPU without AVX2, where the kernels do not run (and must not claim to).
    fn case(m: usize, k: usize, n: usize, dtype: GgmlDType) -> Option<Case> {
        let r = |i: usize| ((i as f32 * 0.7311).sin() * 3.1).fract();
        let x: Vec<f32> = (0..m * k).map(r).collect();
        let wf: Vec<f32> = (0..n * k).map(|i| r(i + 100_000)).collect();
        let w =
            QTensor::quantize(&Tensor::from_vec(wf.clone(), (n, k), &Device::Cpu).unwrap(), dtype)
                .unwrap();
        let q = quantize(&x, m, activation_block(dtype));
        let Some(got) = matmul(&w, &q).unwrap() else {
            assert!(!avx2(), "the {dtype:?} kernel did not run on an AVX2 CPU");
            eprintln!("this CPU has no AVX2: the {dtype:?} kernel does not run here");
            return None;
        };
        Some(Case { x, wf, w, q, got })
    }

    /// Against the same sums in f64 over the same quantized values (tight), and against the
    /// unquantized product (within quantization error), for shapes on and off the tile edges.
    #[test]
    fn matches_exact_sums_of_the_quantized_values() {
        // 300 rows of 1024: two slabs, the second not a multiple of the tile.
        for (m, k, n) in
            [(1, 32, 1), (4, 64, 2), (5, 96, 7), (17, 256, 33), (64, 1024, 96), (301, 1024, 5)]
        {
            let Some(Case { x, wf, w, q, got }) = case(m, k, n, GgmlDType::Q8_0) else { return };
            let raw = w.data().unwrap();
            let kb = k / QK;
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut float) = (0f64, 0f64);
                    for b in 0..kb {
                        let block = &raw[(j * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                        let wd = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                        let dot: i64 = (0..QK)
                            .map(|t| block[2 + t] as i8 as i64 * q.qs[(i * kb + b) * QK + t] as i64)
                            .sum();
                        exact += dot as f64 * wd as f64 * q.d[i * kb + b] as f64;
                    }
                    for t in 0..k {
                        float += x[i * k + t] as f64 * wf[j * k + t] as f64;
                    }
                    let v = got[i * n + j] as f64;
                    assert!(
                        (v - exact).abs() <= 1e-5 * exact.abs().max(1.0),
                        "{m}×{k}×{n} at {i},{j}: {v} against {exact}"
                    );
                    assert!(
                        (v - float).abs() <= 0.02 * (k as f64).sqrt(),
                        "{m}×{k}×{n} at {i},{j}: {v} against unquantized {float}"
                    );
                }
            }
        }
    }

    /// q4_K weights against q8_K activations: against the same sums in f64 over the dequantized
    /// weights and activations, and against the unquantized product.
    #[test]
    fn q4k_matches_exact_sums_of_the_quantized_values() {
        for (m, k, n) in [(1, 256, 1), (4, 512, 2), (5, 256, 7), (17, 768, 33), (301, 1024, 5)] {
            let Some(Case { x, wf, w, q, got }) = case(m, k, n, GgmlDType::Q4K) else { return };
            let wd: Vec<f32> =
                w.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut size, mut float) = (0f64, 0f64, 0f64);
                    for t in 0..k {
                        let a = q.qs[i * k + t] as f64 * q.d[i * (k / QK_K) + t / QK_K] as f64;
                        exact += a * wd[j * k + t] as f64;
                        size += (a * wd[j * k + t] as f64).abs();
                        float += x[i * k + t] as f64 * wf[j * k + t] as f64;
                    }
                    let v = got[i * n + j] as f64;
                    assert!(
                        (v - exact).abs() <= 1e-5 * size.max(1.0),
                        "{m}×{k}×{n} at {i},{j}: {v} against {exact}"
                    );
                    assert!(
                        (v - float).abs() <= 0.1 * (k as f64).sqrt(),
                        "{m}×{k}×{n} at {i},{j}: {v} against unquantized {float}"
                    );
                }
            }
        }
    }

    /// Mixed-up scale bytes would pass the product test only by luck; check the unpacking
    /// against the format's definition, byte by byte, for every bit pattern position.
    #[test]
    fn q4k_scales_unpack_as_the_format_defines() {
        for seed in 0..64u32 {
            let packed: Vec<u8> = (0..12u32)
                .map(|i| (i.wrapping_mul(97).wrapping_add(seed * 31) ^ (seed << 3)) as u8)
                .collect();
            let (scales, mins) = q4k_scales(&packed);
            for j in 0..8 {
                let (sc, mn) = if j < 4 {
                    (packed[j] & 63, packed[j + 4] & 63)
                } else {
                    (
                        (packed[j + 4] & 0xf) | ((packed[j - 4] >> 6) << 4),
                        (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
                    )
                };
                assert_eq!((scales[j], mins[j]), (sc, mn), "group {j} of {packed:?}");
            }
        }
    }
}
