//! Int8 matmul for GGUF linears on the CPU ([`super::GgufLinears::Int8`]).
//!
//! Weights are re-quantized once at load to int8 with one scale per block of 32 inputs of a row
//! (the size of the GGUF blocks, expanded to f32 first); each matmul quantizes its activations the
//! same way. An output is then a sum over blocks of one integer dot product of 32 pairs times the
//! two blocks' scales: `y[m, n] = Σ_b (Σ_{k∈b} xq[m, k] · wq[n, k]) · (sw[n, b] · sx[m, b])`.
//! Scales per block, not per row, keep the few large activation features of a transformer from
//! flattening every other feature of their row to a handful of levels.
//!
//! With AVX-512 VNNI the dot products run on `vpdpbusd` (64 byte products per instruction, 4× an
//! f32 FMA's lanes): activations are stored as `u8 = q + 128` and the offset is taken back out
//! with the blocks' column sums of the weights; the weights are packed in panels of 16 columns ×
//! 4 inputs per 64-byte vector. Without VNNI (or with `MEDPRM_DISABLE_VNNI=1`) a portable path
//! computes the same integer sums from row-major weights and adds the blocks up in the same
//! order, so both give the same results bit for bit.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::cpu_f32::CpuF32;
use super::dequant;

type Result<T> = candle_core::Result<T>;

/// Inputs per quantization block (one scale per block of a weight row or an activation row).
pub const BLOCK: usize = 32;
/// Columns per packed panel (one 512-bit vector of i32 sums).
const PANEL: usize = 16;
/// Rows of a register tile of the VNNI kernel.
const MR: usize = 4;
/// Panels of a register tile: MR × NP integer and MR × NP f32 accumulators (24 of the 32
/// vector registers).
const NP: usize = 3;
/// Rows per parallel task.
const MC: usize = 12 * MR;

/// The integer dot-product kernel the matrices are laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI (`vpdpbusd`) on packed panels.
    Vnni,
    /// Plain Rust on row-major weights, for CPUs without VNNI.
    Portable,
}

impl Kernel {
    /// The kernel for this CPU, unless `MEDPRM_DISABLE_VNNI` is set to a non-empty value other
    /// than `0` (then the portable one).
    pub fn detect() -> Kernel {
        Kernel::choose(std::env::var("MEDPRM_DISABLE_VNNI").ok().as_deref(), vnni_available())
    }

    fn choose(disable: Option<&str>, vnni: bool) -> Kernel {
        let disabled = disable.is_some_and(|v| !v.is_empty() && v != "0");
        if vnni && !disabled {
            Kernel::Vnni
        } else {
            Kernel::Portable
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Vnni => "VNNI",
            Kernel::Portable => "portable",
        }
    }
}

/// Whether this CPU has the AVX-512 features the VNNI kernel uses.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An (n, k) weight matrix in int8 with a scale per block of a row, laid out for one [`Kernel`].
pub struct Int8Matrix {
    n: usize,
    k: usize,
    /// `k` rounded up to whole blocks; the padding is zero.
    kp: usize,
    /// Portable: row-major (n, kp). VNNI: panels of 16 rows, each (kp / 4) vectors of 16 × 4.
    data: Vec<i8>,
    /// Portable: (n, blocks). VNNI: per panel, (blocks, 16), zero past the last row.
    scales: Vec<f32>,
    /// VNNI only, laid out as `scales`: `128 · Σ_{k∈b} wq[n, k]`, the activation offset's share.
    offsets: Vec<i32>,
    kernel: Kernel,
}

impl Int8Matrix {
    /// A GGUF tensor (n, k), expanded to f32 and re-quantized.
    pub fn from_qtensor(q: &QTensor, kernel: Kernel) -> Result<Self> {
        let (n, k) = q.shape().dims2()?;
        let w = dequant::dequantize(q)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Int8Matrix::quantize(&w, n, k, kernel))
    }

    /// Row-major f32 weights (n, k), quantized per block of a row.
    pub fn quantize(w: &[f32], n: usize, k: usize, kernel: Kernel) -> Self {
        assert_eq!(w.len(), n * k, "weights of {n}×{k}");
        let kp = k.div_ceil(BLOCK) * BLOCK;
        let mut rows = vec![0i8; n * kp];
        let mut scales = vec![0f32; n * kp / BLOCK];
        if k > 0 {
            rows.par_chunks_mut(kp).zip(w.par_chunks(k)).zip(scales.par_chunks_mut(kp / BLOCK)).for_each(|((q, w), s)| {
                quantize_row(w, q, s);
            });
        }
        Int8Matrix::from_rows(rows, scales, n, k, kernel)
    }

    /// From quantized rows (n, kp) and their scales (n, blocks).
    fn from_rows(rows: Vec<i8>, scales: Vec<f32>, n: usize, k: usize, kernel: Kernel) -> Self {
        let kp = k.div_ceil(BLOCK) * BLOCK;
        let blocks = kp / BLOCK;
        match kernel {
            Kernel::Portable => Int8Matrix { n, k, kp, data: rows, scales, offsets: vec![], kernel },
            Kernel::Vnni => {
                let panels = n.div_ceil(PANEL);
                let mut data = vec![0i8; panels * PANEL * kp];
                let mut packed_scales = vec![0f32; panels * blocks * PANEL];
                let mut offsets = vec![0i32; panels * blocks * PANEL];
                for j in 0..n {
                    let (p, lane) = (j / PANEL, j % PANEL);
                    let row = &rows[j * kp..(j + 1) * kp];
                    for (i, &v) in row.iter().enumerate() {
                        data[packed_index(p, lane, i, kp)] = v;
                    }
                    for (b, block) in row.chunks(BLOCK).enumerate() {
                        let at = (p * blocks + b) * PANEL + lane;
                        packed_scales[at] = scales[j * blocks + b];
                        offsets[at] = 128 * block.iter().map(|&v| v as i32).sum::<i32>();
                    }
                }
                Int8Matrix { n, k, kp, data, scales: packed_scales, offsets, kernel }
            }
        }
    }

    /// The quantized rows (n, kp) and their scales (n, blocks).
    fn rows(&self) -> (Vec<i8>, Vec<f32>) {
        match self.kernel {
            Kernel::Portable => (self.data.clone(), self.scales.clone()),
            Kernel::Vnni => {
                let blocks = self.kp / BLOCK;
                let mut rows = vec![0i8; self.n * self.kp];
                let mut scales = vec![0f32; self.n * blocks];
                for j in 0..self.n {
                    let (p, lane) = (j / PANEL, j % PANEL);
                    for (i, v) in rows[j * self.kp..(j + 1) * self.kp].iter_mut().enumerate() {
                        *v = self.data[packed_index(p, lane, i, self.kp)];
                    }
                    for b in 0..blocks {
                        scales[j * blocks + b] = self.scales[(p * blocks + b) * PANEL + lane];
                    }
                }
                (rows, scales)
            }
        }
    }

    /// The rows of `a` then those of `b` (same inputs, same kernel) as one matrix: one
    /// activation quantization and one pass for both (the MLP's gate and up projections).
    pub fn stack(a: &Int8Matrix, b: &Int8Matrix) -> Int8Matrix {
        assert!(a.k == b.k && a.kernel == b.kernel, "stacked matrices share their inputs and kernel");
        let (mut rows, mut scales) = a.rows();
        let (rb, sb) = b.rows();
        rows.extend(rb);
        scales.extend(sb);
        Int8Matrix::from_rows(rows, scales, a.n + b.n, a.k, a.kernel)
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `x · wᵀ` for `x` (m, k) row-major: (m, n) row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "activations of {m}×{}", self.k);
        let (xq, sx) = self.quantize_activations(x, m);
        let mut out = vec![0f32; m * self.n];
        match self.kernel {
            Kernel::Portable => self.portable(&xq, &sx, &mut out),
            Kernel::Vnni => self.vnni(&xq, &sx, m, &mut out),
        }
        out
    }

    /// `x` (rows, k) on the CPU: (rows, n) in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("int8 matmul: input has {k} features, the weights {}", self.k)
        }
        let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let y = self.matmul(CpuF32::new(&x)?.get(), m);
        Tensor::from_vec(y, (m, self.n), &Device::Cpu)
    }

    /// Rows quantized per block (stored as `q + 128` for VNNI, as `q` otherwise), padded to
    /// `kp` with zeros, and their scales (m, blocks).
    fn quantize_activations(&self, x: &[f32], m: usize) -> (Vec<i8>, Vec<f32>) {
        let (k, kp) = (self.k, self.kp);
        let mut q = vec![0i8; m * kp];
        let mut s = vec![0f32; m * kp / BLOCK];
        if k == 0 {
            return (q, s);
        }
        let offset = self.kernel == Kernel::Vnni;
        q.par_chunks_mut(kp).zip(x.par_chunks(k)).zip(s.par_chunks_mut(kp / BLOCK)).for_each(|((q, x), s)| {
            quantize_row(x, q, s);
            if offset {
                // u8 = q + 128, kept in the i8 buffer's bits (flipping the top bit).
                for v in q.iter_mut() {
                    *v = (*v as u8 ^ 0x80) as i8;
                }
            }
        });
        (q, s)
    }

    fn portable(&self, xq: &[i8], sx: &[f32], out: &mut [f32]) {
        let (n, kp) = (self.n, self.kp);
        let blocks = kp / BLOCK;
        if n == 0 || kp == 0 {
            return;
        }
        out.par_chunks_mut(n).zip(xq.par_chunks(kp)).zip(sx.par_chunks(blocks)).for_each(|((y, xr), sx)| {
            for ((y, w), sw) in y.iter_mut().zip(self.data.chunks(kp)).zip(self.scales.chunks(blocks)) {
                let mut acc = 0f32;
                for (b, (xb, wb)) in xr.chunks(BLOCK).zip(w.chunks(BLOCK)).enumerate() {
                    acc = add_block(acc, dot_i8(xb, wb), sw[b], sx[b]);
                }
                *y = acc;
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    fn vnni(&self, xq: &[i8], sx: &[f32], m: usize, out: &mut [f32]) {
        let groups = self.n.div_ceil(PANEL * NP);
        let chunks = m.div_ceil(MC);
        let blocks = self.kp / BLOCK;
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..chunks * groups).into_par_iter().for_each(|t| {
            let (c, g) = (t / groups, t % groups);
            let rows = c * MC..((c + 1) * MC).min(m);
            let col0 = g * PANEL * NP;
            let panels = (self.n - col0).div_ceil(PANEL).min(NP);
            let mut r = rows.start;
            while r < rows.end {
                let mr = (rows.end - r).min(MR);
                // SAFETY: `Kernel::Vnni` matrices are only built where `vnni_available()` (or
                // by tests that check it); tasks write disjoint (row, column) blocks of `out`,
                // which has m × n elements; the reads stay inside `xq` (m × kp) and the matrix.
                unsafe {
                    vnni::tile(self, xq.as_ptr().add(r * self.kp), &sx[r * blocks..(r + mr) * blocks], mr, col0, panels, out_ptr.get().add(r * self.n))
                };
                r += mr;
            }
        });
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn vnni(&self, _: &[i8], _: &[f32], _: usize, _: &mut [f32]) {
        unreachable!("VNNI matrices are only built on x86_64")
    }
}

/// Where input `i` of row `lane` of panel `p` sits in the packed weights.
fn packed_index(p: usize, lane: usize, i: usize, kp: usize) -> usize {
    (p * kp / 4 + i / 4) * 4 * PANEL + lane * 4 + i % 4
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks sharing it write disjoint parts of one buffer that outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Quantizes `x` (k values) into `q` (k rounded up to blocks, the rest zero) block by block:
/// `q = round(x · 127 / max|x|)`, scale `max|x| / 127` (1 for an all-zero block, NaN for a
/// block holding a non-finite value, so that the output is NaN as an f32 matmul's would be).
fn quantize_row(x: &[f32], q: &mut [i8], scales: &mut [f32]) {
    for ((xb, qb), s) in x.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(scales.iter_mut()) {
        let (max, finite) = xb.iter().fold((0f32, true), |(a, f), &v| (a.max(v.abs()), f && v.is_finite()));
        if max == 0.0 || !finite {
            qb.fill(0);
            *s = if finite { 1.0 } else { f32::NAN };
            continue;
        }
        let inv = 127.0 / max;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * inv).round() as i8;
        }
        *s = max / 127.0;
    }
}

/// The exact integer dot product of two int8 blocks.
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// A block's share added to an output, in the order the VNNI kernel computes it.
#[inline(always)]
fn add_block(acc: f32, dot: i32, sw: f32, sx: f32) -> f32 {
    acc + dot as f32 * (sw * sx)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Int8Matrix, BLOCK, MR, NP, PANEL};

    /// Rows `mr` (≤ MR) of activations at `x` (scales `sx`, (mr, blocks)) against panels
    /// `col0 / 16 ..` (`panels` ≤ NP), written to the output rows at `out` (row stride n).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI; `x` holds `mr` rows of `m.kp` bytes (u8 = q + 128); `out`
    /// holds `mr` rows of `m.n` f32 and no other thread writes these columns of these rows.
    pub unsafe fn tile(m: &Int8Matrix, x: *const i8, sx: &[f32], mr: usize, col0: usize, panels: usize, out: *mut f32) {
        let blocks = m.kp / BLOCK;
        match (mr, panels) {
            (4, 3) => kernel::<4, 3>(m, x, sx, col0, out),
            (3, 3) => kernel::<3, 3>(m, x, sx, col0, out),
            (2, 3) => kernel::<2, 3>(m, x, sx, col0, out),
            (1, 3) => kernel::<1, 3>(m, x, sx, col0, out),
            (_, 3) => unreachable!("at most {MR} rows"),
            (mr, p) => {
                // The last columns of a width not a multiple of 48: one row at a time.
                for r in 0..mr {
                    let (x, sx, out) = (x.add(r * m.kp), &sx[r * blocks..], out.add(r * m.n));
                    match p {
                        2 => kernel::<1, 2>(m, x, sx, col0, out),
                        1 => kernel::<1, 1>(m, x, sx, col0, out),
                        _ => unreachable!("1 to {NP} panels"),
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const R: usize, const P: usize>(m: &Int8Matrix, x: *const i8, sx: &[f32], col0: usize, out: *mut f32) {
        let kp = m.kp;
        let blocks = kp / BLOCK;
        let panel0 = col0 / PANEL;
        let w = m.data.as_ptr();
        let mut sum = [[_mm512_setzero_ps(); P]; R];
        for b in 0..blocks {
            let mut acc = [[_mm512_setzero_si512(); P]; R];
            for g in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                let mut wv = [_mm512_setzero_si512(); P];
                for (p, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(w.add(((panel0 + p) * kp / 4 + g) * 4 * PANEL) as *const _);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32((x.add(r * kp + g * 4) as *const i32).read_unaligned());
                    for (a, v) in acc.iter_mut().zip(&wv) {
                        *a = _mm512_dpbusd_epi32(*a, xv, *v);
                    }
                }
            }
            for p in 0..P {
                let at = ((panel0 + p) * blocks + b) * PANEL;
                let off = _mm512_loadu_si512(m.offsets.as_ptr().add(at) as *const _);
                let sw = _mm512_loadu_ps(m.scales.as_ptr().add(at));
                for r in 0..R {
                    let s = _mm512_mul_ps(sw, _mm512_set1_ps(*sx.get_unchecked(r * blocks + b)));
                    let d = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][p], off));
                    sum[r][p] = _mm512_add_ps(sum[r][p], _mm512_mul_ps(d, s));
                }
            }
        }
        for (r, sum) in sum.iter().enumerate() {
            for (p, y) in sum.iter().enumerate() {
                let col = col0 + p * PANEL;
                let live = (m.n - col).min(PANEL);
                let mask: __mmask16 = if live == PANEL { !0 } else { (1u16 << live) - 1 };
                _mm512_mask_storeu_ps(out.add(r * m.n + col), mask, *y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random f32 in [-1, 1).
    fn noise(i: usize) -> f32 {
        let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        h as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// From first principles: each block of 32 of a row quantized on its own, exact integer
    /// dot products per block, the blocks' shares added in order.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut y = 0f32;
                for b0 in (0..k).step_by(BLOCK) {
                    let b1 = (b0 + BLOCK).min(k);
                    let (xq, sx) = naive_quantize(&x[i * k + b0..i * k + b1]);
                    let (wq, sw) = naive_quantize(&w[j * k + b0..j * k + b1]);
                    let dot: i64 = xq.iter().zip(&wq).map(|(a, b)| (a * b) as i64).sum();
                    y += dot as i32 as f32 * (sw * sx);
                }
                out[i * n + j] = y;
            }
        }
        out
    }

    fn naive_quantize(v: &[f32]) -> (Vec<i32>, f32) {
        let max = v.iter().map(|x| x.abs()).fold(0f32, f32::max);
        if max == 0.0 {
            return (vec![0; v.len()], 1.0);
        }
        (v.iter().map(|x| (x * (127.0 / max)).round() as i32).collect(), max / 127.0)
    }

    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Portable];
        if vnni_available() {
            k.push(Kernel::Vnni);
        } else {
            eprintln!("this CPU has no AVX-512 VNNI: only the portable kernel is tested");
        }
        k
    }

    #[test]
    fn every_kernel_computes_the_exact_integer_dot_products() {
        // Shapes with partial register tiles, partial panels and partial blocks.
        for &(m, n, k) in &[(1, 1, 1), (7, 16, 32), (13, 70, 61), (50, 200, 576), (6, 64, 1536), (3, 130, 5), (49, 48, 96)] {
            let x: Vec<f32> = (0..m * k).map(|i| noise(i * 3 + 1)).collect();
            let mut w: Vec<f32> = (0..n * k).map(|i| noise(i * 5 + 2) * 0.1).collect();
            w[0] = -0.1; // a row whose extreme is negative
            let want = reference(&x, &w, m, n, k);
            for kernel in kernels() {
                let q = Int8Matrix::quantize(&w, n, k, kernel);
                assert_eq!(q.matmul(&x, m), want, "{kernel:?} {m}×{n}×{k}");
            }
        }
        // All inputs at the extremes: each block's sum reaches ±127² · 32.
        let (m, n, k) = (7, 33, 1024);
        let x: Vec<f32> = (0..m * k).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
        let w: Vec<f32> = (0..n * k).map(|i| if i % 3 == 0 { -2.0 } else { 2.0 }).collect();
        for kernel in kernels() {
            assert_eq!(Int8Matrix::quantize(&w, n, k, kernel).matmul(&x, m), reference(&x, &w, m, n, k), "{kernel:?}");
        }
    }

    #[test]
    fn zero_rows_and_zero_weights_give_zeros() {
        let (m, n, k) = (3, 20, 40);
        let mut x: Vec<f32> = (0..m * k).map(noise).collect();
        x[k..2 * k].fill(0.0);
        let mut w: Vec<f32> = (0..n * k).map(|i| noise(i + 9)).collect();
        w[..k].fill(0.0);
        for kernel in kernels() {
            let y = Int8Matrix::quantize(&w, n, k, kernel).matmul(&x, m);
            assert!(y[n..2 * n].iter().all(|&v| v == 0.0), "{kernel:?}");
            assert!((0..m).all(|i| y[i * n] == 0.0), "{kernel:?}");
            assert!(y.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn int8_products_stay_close_to_f32() {
        let (m, n, k) = (9, 48, 256);
        let x: Vec<f32> = (0..m * k).map(noise).collect();
        let w: Vec<f32> = (0..n * k).map(|i| noise(i + 77)).collect();
        for kernel in kernels() {
            let y = Int8Matrix::quantize(&w, n, k, kernel).matmul(&x, m);
            for i in 0..m {
                for j in 0..n {
                    let exact: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                    // Each product is off by about 1/127 of its operands' ranges.
                    assert!((y[i * n + j] - exact).abs() < 0.02 * (k as f32).sqrt(), "{kernel:?} ({i},{j}): {} vs {exact}", y[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn stacking_equals_quantizing_the_stacked_rows() {
        let (n1, n2, k) = (24, 40, 68);
        let w: Vec<f32> = (0..(n1 + n2) * k).map(|i| noise(i + 5)).collect();
        let x: Vec<f32> = (0..5 * k).map(|i| noise(i + 11)).collect();
        for kernel in kernels() {
            let a = Int8Matrix::quantize(&w[..n1 * k], n1, k, kernel);
            let b = Int8Matrix::quantize(&w[n1 * k..], n2, k, kernel);
            let both = Int8Matrix::quantize(&w, n1 + n2, k, kernel);
            assert_eq!(Int8Matrix::stack(&a, &b).matmul(&x, 5), both.matmul(&x, 5), "{kernel:?}");
            let portable = Int8Matrix::quantize(&w[..n1 * k], n1, k, Kernel::Portable);
            assert_eq!(a.rows(), (portable.data, portable.scales));
        }
    }

    #[test]
    fn the_environment_can_force_the_portable_kernel() {
        assert_eq!(Kernel::choose(None, true), Kernel::Vnni);
        assert_eq!(Kernel::choose(Some("0"), true), Kernel::Vnni);
        assert_eq!(Kernel::choose(Some(""), true), Kernel::Vnni);
        assert_eq!(Kernel::choose(Some("1"), true), Kernel::Portable);
        assert_eq!(Kernel::choose(None, false), Kernel::Portable);
    }
}
