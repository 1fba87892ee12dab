//! The few vector loops of the CPU decode path (dot products, axpy, exp), written once as plain
//! Rust and compiled twice: for the build's baseline and, chosen at run time, for AVX2+FMA, so a
//! portable binary still runs them 8 lanes wide on the machines that have it.

/// The sum of eight lanes, pairwise as a vector reduction adds them (every 8-lane loop here ends
/// with it, so a value does not depend on which loop produced it).
#[inline(always)]
fn lanes_sum(acc: &[f32; 8]) -> f32 {
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7])
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes: one AVX register, and short rows (a head is 64 or 128 wide) still fill it.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    lanes_sum(&acc) + tail
}

#[inline(always)]
fn axpy_body(out: &mut [f32], alpha: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// e^x to about 1e-7 relative error near 0 (1e-5 at the ends of the f32 range): 2^(x·log2 e) split into the nearest integer power, set in
/// the exponent bits, and a fraction in [-½, ½], from its Taylor series. Branch-free, so it
/// vectorises; inputs are clamped to the range where the result is a normal f32.
#[inline(always)]
fn exp_one(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E;
    let n = (t + 0.5).floor();
    let f = t - n;
    let p = 1.525_273_4e-5f32;
    let p = p * f + 1.540_353_1e-4;
    let p = p * f + 1.333_355_8e-3;
    let p = p * f + 9.618_129e-3;
    let p = p * f + 5.550_411e-2;
    let p = p * f + 2.402_265e-1;
    let p = p * f + std::f32::consts::LN_2;
    let p = p * f + 1.0;
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

#[inline(always)]
fn softmax_body(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // The exponentials in a loop of their own, and their sum in eight lanes: a single running
    // sum is a reduction the compiler may not reorder, which kept the whole loop scalar.
    for x in xs.iter_mut() {
        *x = exp_one(*x - max);
    }
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for j in 0..8 {
            lanes[j] += c[j];
        }
    }
    let inv = 1.0 / (lanes_sum(&lanes) + tail);
    for x in xs.iter_mut() {
        *x *= inv;
    }
}

#[inline(always)]
fn silu_mul_body(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_one(-*g)) * u;
    }
}

/// Attention of the query heads that share one KV head (`queries`: their rows, `head_dim`
/// each) over the first `seen` cached positions; row `t` of the caches starts at
/// `t * stride + offset`, `hd` wide. `scores` is scratch of at least `queries.len() / head_dim * seen`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_body(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    offset: usize,
    hd: usize,
    seen: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    // Common head widths get a version whose per-head accumulators live in registers.
    match hd {
        64 => attend_fixed::<64>(queries, keys, values, stride, offset, seen, scale, scores, out),
        128 => attend_fixed::<128>(queries, keys, values, stride, offset, seen, scale, scores, out),
        _ => attend_any(queries, keys, values, stride, offset, hd, seen, scale, scores, out),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_fixed<const HD: usize>(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    offset: usize,
    seen: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = queries.len() / HD;
    let row = |t: usize| -> &[f32; HD] { fixed_row(keys, t * stride + offset) };
    let score = |acc: &[f32; 8]| lanes_sum(acc) * scale;
    // Four keys at a time: four independent chains of multiply-adds, where one key alone is a
    // chain of HD/8 dependent ones that waits on each one's latency. Each score is summed in the
    // same order either way, so it does not depend on which keys were grouped.
    let mut t = 0;
    while t + 4 <= seen {
        let ks = [row(t), row(t + 1), row(t + 2), row(t + 3)];
        for g in 0..group {
            let q: &[f32; HD] = fixed_row(queries, g * HD);
            let mut acc = [[0f32; 8]; 4];
            for c in 0..HD / 8 {
                for (a, key) in acc.iter_mut().zip(&ks) {
                    for j in 0..8 {
                        a[j] += q[c * 8 + j] * key[c * 8 + j];
                    }
                }
            }
            for (u, a) in acc.iter().enumerate() {
                scores[g * seen + t + u] = score(a);
            }
        }
        t += 4;
    }
    for t in t..seen {
        let key = row(t);
        for g in 0..group {
            let q: &[f32; HD] = fixed_row(queries, g * HD);
            let mut acc = [0f32; 8];
            for c in 0..HD / 8 {
                for j in 0..8 {
                    acc[j] += q[c * 8 + j] * key[c * 8 + j];
                }
            }
            scores[g * seen + t] = score(&acc);
        }
    }
    for g in 0..group {
        softmax_body(&mut scores[g * seen..(g + 1) * seen]);
        let mut acc = [0f32; HD];
        for t in 0..seen {
            let p = scores[g * seen + t];
            let value: &[f32; HD] =
                values[t * stride + offset..][..HD].try_into().expect("HD wide");
            for j in 0..HD {
                acc[j] += p * value[j];
            }
        }
        out[g * HD..(g + 1) * HD].copy_from_slice(&acc);
    }
}

/// `HD` values of `xs` from `at`, as an array, so loops over it have a length known at compile
/// time.
#[inline(always)]
fn fixed_row<const HD: usize>(xs: &[f32], at: usize) -> &[f32; HD] {
    xs[at..][..HD].try_into().expect("HD wide")
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_any(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    offset: usize,
    hd: usize,
    seen: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = queries.len() / hd;
    for t in 0..seen {
        let key = &keys[t * stride + offset..t * stride + offset + hd];
        for (g, q) in queries.chunks_exact(hd).enumerate() {
            scores[g * seen + t] = dot_body(q, key) * scale;
        }
    }
    for g in 0..group {
        softmax_body(&mut scores[g * seen..(g + 1) * seen]);
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for t in 0..seen {
        let value = &values[t * stride + offset..t * stride + offset + hd];
        for (g, o) in out.chunks_exact_mut(hd).enumerate() {
            axpy_body(o, scores[g * seen + t], value);
        }
    }
}

macro_rules! dispatch {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident;)*) => {
        $(
            #[allow(clippy::too_many_arguments)]
            pub fn $name($($arg: $ty),*) $(-> $ret)? {
                #[cfg(target_arch = "x86_64")]
                {
                    #[allow(clippy::too_many_arguments)]
                    #[target_feature(enable = "avx2,fma")]
                    fn wide($($arg: $ty),*) $(-> $ret)? {
                        $body($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        // SAFETY: the CPU was just found to support the features `wide` is compiled for.
                        #[allow(unsafe_code)]
                        return unsafe { wide($($arg),*) };
                    }
                }
                $body($($arg),*)
            }
        )*
    };
}

dispatch! {
    fn dot(a: &[f32], b: &[f32]) -> f32 => dot_body;
    fn silu_mul(gate: &mut [f32], up: &[f32]) => silu_mul_body;
    fn attend(queries: &[f32], keys: &[f32], values: &[f32], stride: usize, offset: usize, hd: usize, seen: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) => attend_body;
}

/// `x · w / rms(x)`, in place.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let scale = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v *= scale * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -870..880 {
            let x = i as f32 / 10.0;
            let (got, want) = (exp_one(x), x.exp());
            // Range reduction in f32 costs precision for large |x|; softmax inputs are near 0.
            let tolerance = if x.abs() < 10.0 { 1e-6 } else { 1e-5 };
            assert!(((got - want) / want).abs() < tolerance, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp_one(-1000.0), exp_one(-87.0), "clamped");
    }

    #[test]
    fn vector_ops_match_scalar_ones() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-5);
        let mut out = b.clone();
        axpy_body(&mut out, 2.0, &a);
        assert!(
            out.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| (o - (y + 2.0 * x)).abs() < 1e-6)
        );
        let mut s = vec![1.0, 2.0, 3.0];
        softmax_body(&mut s);
        let e: Vec<f32> = [1f32, 2., 3.].iter().map(|x| x.exp()).collect();
        let total: f32 = e.iter().sum();
        assert!(s.iter().zip(&e).all(|(p, x)| (p - x / total).abs() < 1e-6));
        let mut g = vec![-2.0, 0.0, 3.0];
        silu_mul(&mut g, &[1.0, 5.0, 2.0]);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert!(
            (g[0] - silu(-2.0)).abs() < 1e-6
                && g[1] == 0.0
                && (g[2] - 2.0 * silu(3.0)).abs() < 1e-5
        );
    }

    #[test]
    fn register_blocked_attention_matches_the_generic_one() {
        for hd in [64usize, 128] {
            let (group, seen, stride) = (4, 37, 3 * hd);
            let r = |i: usize| ((i as f32 * 0.731).sin() * 1.7).fract();
            let queries: Vec<f32> = (0..group * hd).map(r).collect();
            let keys: Vec<f32> = (0..seen * stride).map(|i| r(i + 5000)).collect();
            let values: Vec<f32> = (0..seen * stride).map(|i| r(i + 9000)).collect();
            let (mut s1, mut s2) = (vec![0f32; group * seen], vec![0f32; group * seen]);
            let (mut o1, mut o2) = (vec![0f32; group * hd], vec![1f32; group * hd]);
            attend(&queries, &keys, &values, stride, hd, hd, seen, 0.125, &mut s1, &mut o1);
            attend_any(&queries, &keys, &values, stride, hd, hd, seen, 0.125, &mut s2, &mut o2);
            assert!(o1.iter().zip(&o2).all(|(a, b)| (a - b).abs() < 1e-5), "head width {hd}");
            assert!(o1.iter().any(|v| v.abs() > 1e-3));
        }
    }
}
