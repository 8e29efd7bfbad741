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

    /// `x ← exp(x − m)` over the row; returns the sum of the new values.
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

#[inline(always)]
fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - m);
            *l += *x;
        }
    }
    let mut total = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - m);
        total += *x;
    }
    lanes.iter().sum::<f32>() + total
}

#[inline(always)]
fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = *g / (1.0 + exp(-*g)) * *u;
    }
}

/// e^x to about 1 ulp, branch-free so that it vectorises: x = n·ln 2 + r with |r| ≤ ln 2 / 2,
/// a degree-6 minimax polynomial for e^r (Cephes' coefficients), times 2^n built in the exponent
/// bits. Below −87 (under f32's normal range) the result is 0; above 88 it stays at e^88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    let scaled = e * f32::from_bits(((ni + 127) << 23) as u32);
    if x < -87.0 {
        0.0
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
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(1000.0).is_finite());
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
                assert!((a - b).abs() <= 3e-7 * b.max(1e-30), "{a} vs {b}");
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
