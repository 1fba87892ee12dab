//! Matrix products against q8_0 weights on CPUs with AVX2 but no VNNI: prompts (many rows) and
//! decode steps (one row).
//!
//! There, candle's CPU matmul computes each output element as its own dot product: every pair of
//! 32-value blocks reloads both operands, and converts the f16 scales through a function call
//! that makes the compiler save every vector register around it. Here each weight block, once
//! loaded, meets a tile of four activation rows held in registers; the scales are converted
//! inline; the activations are quantized once per input, however many projections read it (Q, K
//! and V; gate and up). A work item is a group of weight rows, walked tile by tile so that both
//! the tile's activations and the group's weights stay in L1, over a slab of activation rows that
//! fits in L2.
//!
//! Where the CPU has AVX-512 VNNI or AVX-VNNI, candle repacks q8_0 weights for `vpdpbusd`, which
//! is faster than any AVX2 kernel; [`preferred`] leaves those shapes to it. Other quantizations
//! stay with candle too. [`describe`] says what runs, for the benchmark.

use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QTensor};

/// Values per q8_0 block, and the block's bytes: an f16 scale, then 32 signed bytes.
const QK: usize = 32;
const BLOCK_BYTES: usize = 2 + QK;
/// Activation rows per register tile: each weight block loaded serves this many rows. Four
/// accumulators keep the loop inside AVX2's 16 registers; wider tiles (4×2, 3×2) spilled to the
/// stack and ran slower on the benchmark.
const RM: usize = 4;
/// Weight rows per work item: enough to make the item's bookkeeping small against its work when
/// there is a single activation row (decode).
const GROUP: usize = 8;

/// Activation rows quantized to q8_0 once, for every projection that reads them.
pub struct Quantized {
    qs: Vec<i8>,
    /// One scale per block, already rounded through f16 as llama.cpp and candle store it.
    d: Vec<f32>,
    rows: usize,
    blocks: usize,
}

/// Whether prompts and decode steps should use [`matmul`] for `n`×`k` weights of `dtype` on this CPU.
pub fn preferred(dtype: GgmlDType, n: usize, k: usize) -> bool {
    dtype == GgmlDType::Q8_0
        && avx2()
        && !(candle_vnni() && n.is_multiple_of(16) && k.is_multiple_of(256))
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
    let kernels = if preferred(dtype, 16, 256) {
        "alcove q8_0 tiles (AVX2), prompt and decode"
    } else if dtype == GgmlDType::Q8_0 && candle_vnni() {
        "candle q8_0 repacked for vpdpbusd"
    } else if dtype == GgmlDType::Q4K && (avx2() || candle_vnni()) {
        "candle q4_k repacked (x86)"
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

/// `rows` rows of `k` values each, quantized to q8_0 (`k` a multiple of 32).
pub fn quantize(x: &[f32], rows: usize) -> Quantized {
    let k = x.len() / rows.max(1);
    let blocks = k / QK;
    let mut q = Quantized { qs: vec![0; rows * k], d: vec![0.0; rows * blocks], rows, blocks };
    for ((src, qs), d) in x.chunks_exact(QK).zip(q.qs.chunks_exact_mut(QK)).zip(&mut q.d) {
        let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        for (o, v) in qs.iter_mut().zip(src) {
            *o = (v * inv).round() as i8;
        }
        *d = half::f16::from_f32(scale).to_f32();
    }
    q
}

/// `x · wᵀ` for q8_0 weights `w` (`n` rows of `k`): `n` values per row of `x`. `None` when the
/// weights are not q8_0 or the CPU lacks AVX2.
pub fn matmul(w: &QTensor, x: &Quantized) -> candle_core::Result<Option<Vec<f32>>> {
    if w.dtype() != GgmlDType::Q8_0 || !avx2() {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    if k != x.blocks * QK {
        candle_core::bail!("q8_0 matmul: weights are {n}×{k}, activations {} wide", x.blocks * QK);
    }
    let raw = w.data()?;
    if raw.len() != n * x.blocks * BLOCK_BYTES {
        candle_core::bail!("q8_0 matmul: {} bytes of weights for {n}×{k}", raw.len());
    }
    let m = x.rows;
    // Transposed result: each work item (a group of weight rows) owns those rows of `out_t`.
    let mut out_t = vec![0f32; n * m];
    let items: Vec<Mutex<&mut [f32]>> = out_t.chunks_mut(GROUP * m).map(Mutex::new).collect();
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
                    let tile = first..rows.end.min(first + RM);
                    for r in 0..weight_rows {
                        let j = group * GROUP + r;
                        tile_of(&raw, x, first, j, &mut out[r * m..][tile.clone()]);
                    }
                }
            }
        });
    }
    drop(items);
    let mut out = vec![0f32; m * n];
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    Ok(Some(out))
}

/// Activation rows `first..first + out.len()` (at most a tile) against weight row `j`.
fn tile_of(w: &[u8], x: &Quantized, first: usize, j: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `matmul` runs only where `avx2` found AVX2, FMA and F16C.
        #[allow(unsafe_code)]
        unsafe {
            avx2::tile(w, x, first, j, out)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, x, first, j, out);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK_BYTES, QK, Quantized, RM};

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
    pub(super) fn tile(w: &[u8], x: &Quantized, i0: usize, j: usize, out: &mut [f32]) {
        match <&mut [f32; RM]>::try_from(&mut *out) {
            Ok(full) => tile_fixed::<RM>(w, x, i0, j, full),
            Err(_) => {
                for (i, o) in out.iter_mut().enumerate() {
                    let mut one = [0f32];
                    tile_fixed::<1>(w, x, i0 + i, j, &mut one);
                    *o = one[0];
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile_fixed<const M: usize>(
        w: &[u8],
        x: &Quantized,
        i0: usize,
        j: usize,
        out: &mut [f32; M],
    ) {
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

    /// Against the same sums in f64 over the same quantized values (tight), and against the
    /// unquantized product (within quantization error), for shapes on and off the tile edges.
    #[test]
    fn matches_exact_sums_of_the_quantized_values() {
        let r = |i: usize| ((i as f32 * 0.7311).sin() * 3.1).fract();
        // 300 rows of 1024: two slabs, the second not a multiple of the tile.
        for (m, k, n) in
            [(1, 32, 1), (4, 64, 2), (5, 96, 7), (17, 256, 33), (64, 1024, 96), (301, 1024, 5)]
        {
            let x: Vec<f32> = (0..m * k).map(r).collect();
            let wf: Vec<f32> = (0..n * k).map(|i| r(i + 100_000)).collect();
            let w = QTensor::quantize(
                &Tensor::from_vec(wf.clone(), (n, k), &Device::Cpu).unwrap(),
                GgmlDType::Q8_0,
            )
            .unwrap();
            let q = quantize(&x, m);
            let Some(got) = matmul(&w, &q).unwrap() else {
                assert!(!avx2(), "the kernel did not run on an AVX2 CPU");
                eprintln!("this CPU has no AVX2: the q8_0 prompt kernel does not run here");
                return;
            };
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
}
