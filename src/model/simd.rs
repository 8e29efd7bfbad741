//! Elementwise f32 kernels on the CPU, each compiled for the widest vector unit the CPU has
//! (AVX-512, AVX2 + FMA, or the portable baseline), picked once at run time: the row reductions
//! of attention's online softmax and the gated MLP's SiLU product. The loops are written so the
//! compiler vectorises them: no branches in the hot loop, reductions over independent lanes.

/// The kernels for this CPU; cheap to copy.
#[derive(Clone, Copy)]
pub struct Kernels {
    max: unsafe fn(&[f32]) -> f32,
    exp_sub_sum: unsafe fn(&mut [f32], f32) -> f32,
    silu_mul: unsafe fn(&[f32], &[f32], &mut [f32]),
}

impl Kernels {
    /// The largest value of `row` (−∞ when empty).
    pub fn max(&self, row: &[f32]) -> f32 {
        // SAFETY: `kernels()` only picks variants whose target features the CPU has.
        unsafe { (self.max)(row) }
    }

    /// `x ← exp(x − m)` over the row; returns the sum of the new values (torch's flash-attention
    /// order and its fast `exp`).
    pub fn exp_sub_sum(&self, row: &mut [f32], m: f32) -> f32 {
        // SAFETY: as in `max`.
        unsafe { (self.exp_sub_sum)(row, m) }
    }

    /// `out ← silu(gate) · up`, elementwise; the three have one length.
    pub fn silu_mul(&self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        assert!(gate.len() == out.len() && up.len() == out.len(), "silu_mul lengths");
        // SAFETY: as in `max`.
        unsafe { (self.silu_mul)(gate, up, out) }
    }
}

macro_rules! variant {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            #[target_feature(enable = $features)]
            pub unsafe fn max(row: &[f32]) -> f32 {
                super::row_max(row)
            }

            #[target_feature(enable = $features)]
            pub unsafe fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
                super::exp_sub_sum(row, m)
            }

            #[target_feature(enable = $features)]
            pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
                super::silu_mul(gate, up, out)
            }

            pub const KERNELS: super::Kernels = super::Kernels { max, exp_sub_sum, silu_mul };
        }
    };
}

variant!(avx512, "avx512f,avx2,fma");
variant!(avx2, "avx2,fma");

/// The kernels for the CPU this runs on.
pub fn kernels() -> Kernels {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return avx512::KERNELS;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return avx2::KERNELS;
        }
    }
    Kernels { max: portable::max, exp_sub_sum: portable::exp_sub_sum, silu_mul: portable::silu_mul }
}

mod portable {
    pub unsafe fn max(row: &[f32]) -> f32 {
        super::row_max(row)
    }

    pub unsafe fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
        super::exp_sub_sum(row, m)
    }

    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        super::silu_mul(gate, up, out)
    }
}

/// Independent lanes let the compiler vectorise reductions it may not reorder.
const LANES: usize = 16;

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = if *x > *l { *x } else { *l };
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    lanes.iter().fold(tail, |a, &x| if x > a { x } else { a })
}

/// Lanes of torch's AVX-512 vectors, whose reductions `exp_sub_sum` follows.
const TORCH_LANES: usize = 16;

/// `x ← exp(x − m)` and their sum, as torch's CPU flash attention computes them on AVX-512
/// (`_exp_reduce_sum_fusion_kernel`): whole vectors of 16 through `exp_u20`, summed per lane in
/// order and the lanes added as a tree (lane i with i+8, then i+4, i+2, i+1); the remaining
/// values through libm's `expf`, added one by one after the tree.
#[inline(always)]
fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
    let whole = row.len() / TORCH_LANES * TORCH_LANES;
    let (vectors, tail) = row.split_at_mut(whole);
    let mut lanes = [0f32; TORCH_LANES];
    for c in vectors.chunks_exact_mut(TORCH_LANES) {
        for (l, x) in lanes.iter_mut().zip(c.iter_mut()) {
            *x = exp_u20(*x - m);
            *l += *x;
        }
    }
    for step in [8, 4, 2, 1] {
        let before = lanes;
        for (i, l) in lanes.iter_mut().enumerate() {
            *l = before[i] + before[i ^ step];
        }
    }
    let mut total = lanes[0];
    for x in tail {
        *x = (*x - m).exp();
        total += *x;
    }
    total
}

/// torch's fast vectorised e^x (`Vectorized<float>::exp_u20`, about 20 ulp), step for step:
/// clamp to f32's exponent range, n = ⌊x·log₂e + ½⌋ in an FMA, r = x − n·ln 2 in an FMA, a
/// degree-5 polynomial in FMAs, times 2^(n−1) built in the exponent bits (0 below the range),
/// times 2.
#[inline(always)]
pub fn exp_u20(x: f32) -> f32 {
    const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
    const LN2: f32 = f32::from_bits(0x3f31_7218);
    const LN_MIN: f32 = f32::from_bits(0xc2ae_ac50);
    const LN_MAX: f32 = f32::from_bits(0x42b1_7218);
    let below = x < LN_MIN;
    let src = x.min(LN_MAX).max(LN_MIN);
    let fx = src.mul_add(LOG2E, 0.5).floor();
    let r = (-fx).mul_add(LN2, src);
    let p = r.mul_add(0.008_289_290_59, 0.041_897_822_1);
    let p = r.mul_add(p, 0.166_676_521);
    let p = r.mul_add(p, 0.499_991_506);
    let p = r.mul_add(p, 0.999_999_701);
    let p = r.mul_add(p, 1.0);
    let pow = f32::from_bits((((fx - 1.0) as i32 + 127) << 23) as u32);
    let pow = if below { 0.0 } else { pow };
    p * pow * 2.0
}

#[inline(always)]
fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = *g / (1.0 + exp(-*g)) * *u;
    }
}

/// e^x in the steps of SLEEF's `expf_u10` (torch's vectorised `exp`, which its SiLU uses), so
/// that the gated MLP rounds as transformers' does on the CPU: x = q·ln 2 + s with q = rint(x/ln 2)
/// and ln 2 in two parts, a degree-6 polynomial for e^s in FMAs, times 2^q applied in two halves
/// (exact down to the subnormals). Below −104 the result is 0, above 100 it is +∞. Branch-free so
/// that it vectorises; the FMAs are fused where the CPU has them (the AVX2/AVX-512 variants).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_751_953_125;
    const LN2_LO: f32 = 1.428_606_765_330_187e-6;
    // 1.5 · 2²³: adding it rounds to the nearest integer (ties to even), kept in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-104.0, 100.0);
    let t = xc * LOG2E + ROUND;
    let q = t - ROUND;
    let qi = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let s = q.mul_add(-LN2_HI, xc);
    let s = q.mul_add(-LN2_LO, s);
    let u: f32 = 1.985_276_176_128_536_5e-4;
    let u = u.mul_add(s, 1.393_043_552_525_341_5e-3);
    let u = u.mul_add(s, 8.333_360_776_305_199e-3);
    let u = u.mul_add(s, 4.166_648_536_920_547_5e-2);
    let u = u.mul_add(s, 1.666_666_716_337_204e-1);
    let u = u.mul_add(s, 0.5);
    let u = 1.0 + (s * s).mul_add(u, s);
    let half = qi >> 1;
    let pow2 = |e: i32| f32::from_bits(((e + 127) << 23) as u32);
    let scaled = u * pow2(half) * pow2(qi - half);
    if x < -104.0 {
        0.0
    } else if x > 100.0 {
        f32::INFINITY
    } else {
        scaled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0f32;
        for i in 0..400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-105.0), 0.0);
        assert!(exp(-100.0) > 0.0, "subnormal results are kept");
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn silu_equals_torchs_cpu_silu_bit_for_bit() {
        let g: serde_json::Value = serde_json::from_str(include_str!("../../tests/golden/torch-cpu.json")).unwrap();
        let mut x: Vec<f32> = crate::model::numerics::tests::hashed(4096, 3).iter().map(|v| v * 12.0).collect();
        x.extend(g["silu"]["extremes"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32));
        let want: Vec<u32> = g["silu"]["y_bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect();
        assert_eq!(want.len(), x.len());
        let one = vec![1f32; x.len()];
        let mut variants = vec![("portable", Kernels { max: portable::max, exp_sub_sum: portable::exp_sub_sum, silu_mul: portable::silu_mul })];
        variants.push(("this CPU's", kernels()));
        for (name, k) in variants {
            let mut out = vec![0f32; x.len()];
            k.silu_mul(&x, &one, &mut out);
            let differ: Vec<(f32, f32, f32)> =
                x.iter().zip(&out).zip(&want).filter(|((_, o), w)| o.to_bits() != **w).map(|((x, o), w)| (*x, *o, f32::from_bits(*w))).take(5).collect();
            assert!(differ.is_empty(), "{name} silu differs from torch ({}) at (x, ours, torch) {differ:?}", g["torch"]);
        }
    }

    #[test]
    fn every_variant_agrees_with_the_scalar_definitions() {
        let row: Vec<f32> = (0..203).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let mut variants = vec![Kernels { max: portable::max, exp_sub_sum: portable::exp_sub_sum, silu_mul: portable::silu_mul }];
        variants.push(kernels());
        for k in variants {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(k.max(&row), m);
            assert_eq!(k.max(&[]), f32::NEG_INFINITY);
            let mut e = row.clone();
            e[3] = f32::NEG_INFINITY; // a masked score
            let total = k.exp_sub_sum(&mut e, m);
            let want: Vec<f32> = row.iter().enumerate().map(|(i, x)| if i == 3 { 0.0 } else { (x - m).exp() }).collect();
            for (a, b) in e.iter().zip(&want) {
                assert!((a - b).abs() <= 3e-6 * b.max(1e-30), "{a} vs {b}");
            }
            assert!((total - want.iter().sum::<f32>()).abs() < 1e-5 * total);
            let up: Vec<f32> = row.iter().map(|x| x * 0.5 + 1.0).collect();
            let mut out = vec![0.0; row.len()];
            k.silu_mul(&row, &up, &mut out);
            for ((o, g), u) in out.iter().zip(&row).zip(&up) {
                let want = g / (1.0 + (-g).exp()) * u;
                assert!((o - want).abs() <= 1e-6 * want.abs().max(1.0), "{o} vs {want}");
            }
        }
    }
}
