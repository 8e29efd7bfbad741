//! Int8 matmul for GGUF linears on the CPU ([`super::GgufLinears::Int8`]).
//!
//! Weights are re-quantized once at load to int8 with one scale per output row (from the GGUF
//! blocks expanded to f32); each matmul quantizes its activations to int8 with one scale per
//! input row. A row of the output is then one integer dot product per column and one f32
//! multiply: `y[m, n] = (Σ_k xq[m, k] · wq[n, k]) · sx[m] · sw[n]`.
//!
//! With AVX-512 VNNI the dot products run on `vpdpbusd` (64 byte products per instruction, 4× an
//! f32 FMA's lanes): activations are stored as `u8 = q + 128` and the offset is taken back out
//! with the column sums of the weights; the weights are packed in panels of 16 columns × 4 inputs
//! per 64-byte vector. Without VNNI (or with `MEDPRM_DISABLE_VNNI=1`) a portable path computes the
//! same integer sums from row-major weights, so both give the same results bit for bit.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::dequant;

type Result<T> = candle_core::Result<T>;

/// Columns per packed panel (one 512-bit vector of i32 sums).
const PANEL: usize = 16;
/// Rows of a register tile of the VNNI kernel.
const MR: usize = 6;
/// Panels of a register tile (MR × NP accumulators: 24 of the 32 vector registers).
const NP: usize = 4;
/// Rows per parallel task.
const MC: usize = 8 * MR;

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

/// An (n, k) weight matrix in int8 with a scale per row, laid out for one [`Kernel`].
pub struct Int8Matrix {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of 4 (one `vpdpbusd` lane's bytes); the padding is zero.
    kp: usize,
    scales: Vec<f32>,
    /// `128 · Σ_k wq[n, k]` per row, padded with zeros to whole panels (VNNI only).
    offsets: Vec<i32>,
    data: Vec<i8>,
    kernel: Kernel,
}

impl Int8Matrix {
    /// A GGUF tensor (n, k), expanded to f32 and re-quantized per row.
    pub fn from_qtensor(q: &QTensor, kernel: Kernel) -> Result<Self> {
        let (n, k) = q.shape().dims2()?;
        let w = dequant::dequantize(q)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Int8Matrix::quantize(&w, n, k, kernel))
    }

    /// Row-major f32 weights (n, k), quantized per row: `wq = round(w · 127 / max|w|)`.
    pub fn quantize(w: &[f32], n: usize, k: usize, kernel: Kernel) -> Self {
        assert_eq!(w.len(), n * k, "weights of {n}×{k}");
        let mut rows = vec![0i8; n * k];
        let mut scales = vec![0f32; n];
        rows.par_chunks_mut(k.max(1)).zip(w.par_chunks(k.max(1))).zip(scales.par_iter_mut()).for_each(|((q, w), s)| {
            *s = quantize_row(w, q);
        });
        Int8Matrix::from_rows(rows, scales, n, k, kernel)
    }

    fn from_rows(rows: Vec<i8>, scales: Vec<f32>, n: usize, k: usize, kernel: Kernel) -> Self {
        let kp = k.div_ceil(4) * 4;
        match kernel {
            Kernel::Portable => Int8Matrix { n, k, kp, scales, offsets: vec![], data: rows, kernel },
            Kernel::Vnni => {
                let panels = n.div_ceil(PANEL);
                let mut data = vec![0i8; panels * PANEL * kp];
                let mut offsets = vec![0i32; panels * PANEL];
                for (j, row) in rows.chunks(k.max(1)).enumerate().take(n) {
                    let (p, lane) = (j / PANEL, j % PANEL);
                    for (i, &v) in row.iter().enumerate() {
                        data[(p * kp / 4 + i / 4) * 4 * PANEL + lane * 4 + i % 4] = v;
                    }
                    offsets[j] = 128 * row.iter().map(|&v| v as i32).sum::<i32>();
                }
                Int8Matrix { n, k, kp, scales, offsets, data, kernel }
            }
        }
    }

    /// The int8 rows, row-major (n, k).
    fn rows(&self) -> Vec<i8> {
        match self.kernel {
            Kernel::Portable => self.data.clone(),
            Kernel::Vnni => {
                let mut rows = vec![0i8; self.n * self.k];
                for (j, row) in rows.chunks_mut(self.k.max(1)).enumerate().take(self.n) {
                    let (p, lane) = (j / PANEL, j % PANEL);
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = self.data[(p * self.kp / 4 + i / 4) * 4 * PANEL + lane * 4 + i % 4];
                    }
                }
                rows
            }
        }
    }

    /// The rows of `a` then those of `b` (same inputs, same kernel) as one matrix: one
    /// activation quantization and one pass for both (the MLP's gate and up projections).
    pub fn stack(a: &Int8Matrix, b: &Int8Matrix) -> Int8Matrix {
        assert!(a.k == b.k && a.kernel == b.kernel, "stacked matrices share their inputs and kernel");
        let mut rows = a.rows();
        rows.extend(b.rows());
        let scales = a.scales.iter().chain(&b.scales).copied().collect();
        Int8Matrix::from_rows(rows, scales, a.n + b.n, a.k, a.kernel)
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Output features.
    pub fn rows_out(&self) -> usize {
        self.n
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

    /// `x` (rows, k), a contiguous f32 CPU tensor or any tensor copied to one.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("int8 matmul: input has {k} features, the weights {}", self.k)
        }
        let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let xs = x.flatten_all()?;
        let y = {
            let (storage, layout) = xs.storage_and_layout();
            match (&*storage, layout.contiguous_offsets()) {
                (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => self.matmul(&v[a..b], m),
                _ => self.matmul(&xs.to_vec1::<f32>()?, m),
            }
        };
        Tensor::from_vec(y, (m, self.n), &Device::Cpu)
    }

    /// Rows quantized to int8 (stored as `q + 128` for VNNI, as `q` otherwise), padded to `kp`
    /// with zeros, and their scales.
    fn quantize_activations(&self, x: &[f32], m: usize) -> (Vec<i8>, Vec<f32>) {
        let (k, kp) = (self.k, self.kp);
        let mut q = vec![0i8; m * kp];
        let mut s = vec![0f32; m];
        let offset = self.kernel == Kernel::Vnni;
        q.par_chunks_mut(kp.max(1)).zip(x.par_chunks(k.max(1))).zip(s.par_iter_mut()).for_each(|((q, x), s)| {
            *s = quantize_row(x, &mut q[..k]);
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
        let (n, k, kp) = (self.n, self.k, self.kp);
        out.par_chunks_mut(n.max(1)).zip(xq.par_chunks(kp.max(1))).zip(sx.par_iter()).for_each(|((y, xr), &s)| {
            for ((y, w), &sw) in y.iter_mut().zip(self.data.chunks(k.max(1))).zip(&self.scales) {
                *y = finish(dot_i8(&xr[..k], w), s, sw);
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    fn vnni(&self, xq: &[i8], sx: &[f32], m: usize, out: &mut [f32]) {
        let groups = self.n.div_ceil(PANEL * NP);
        let chunks = m.div_ceil(MC);
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
                // which has m × n elements; the reads stay inside `xq` (m × kp) and `data`.
                unsafe { vnni::tile(self, xq.as_ptr().add(r * self.kp), &sx[r..r + mr], mr, col0, panels, out_ptr.get().add(r * self.n)) };
                r += mr;
            }
        });
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn vnni(&self, _: &[i8], _: &[f32], _: usize, _: &mut [f32]) {
        unreachable!("VNNI matrices are only built on x86_64")
    }
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

/// `q = round(x · 127 / max|x|)`; returns the scale `max|x| / 127` (1 for an all-zero row).
fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let (max, finite) = x.iter().fold((0f32, true), |(a, f), &v| (a.max(v.abs()), f && v.is_finite()));
    if max == 0.0 || !finite {
        // A non-finite input makes the whole output row NaN, as an f32 matmul would.
        q.fill(0);
        return if finite { 1.0 } else { f32::NAN };
    }
    let inv = 127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * inv).round() as i8;
    }
    max / 127.0
}

/// The exact integer dot product of two int8 rows.
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// An output element from its integer sum, in the order the VNNI kernel computes it.
#[inline(always)]
fn finish(acc: i32, sx: f32, sw: f32) -> f32 {
    acc as f32 * sx * sw
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Int8Matrix, MR, NP, PANEL};

    /// Rows `mr` (≤ MR) of activations at `x` against panels `col0 / 16 ..` (`panels` ≤ NP),
    /// written to the output rows at `out` (row stride n).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI; `x` holds `mr` rows of `m.kp` bytes (u8 = q + 128); `out`
    /// holds `mr` rows of `m.n` f32 and no other thread writes these columns of these rows.
    pub unsafe fn tile(m: &Int8Matrix, x: *const i8, sx: &[f32], mr: usize, col0: usize, panels: usize, out: *mut f32) {
        match (mr, panels) {
            (6, 4) => kernel::<6, 4>(m, x, sx, col0, out),
            (5, 4) => kernel::<5, 4>(m, x, sx, col0, out),
            (4, 4) => kernel::<4, 4>(m, x, sx, col0, out),
            (3, 4) => kernel::<3, 4>(m, x, sx, col0, out),
            (2, 4) => kernel::<2, 4>(m, x, sx, col0, out),
            (1, 4) => kernel::<1, 4>(m, x, sx, col0, out),
            (_, 4) => unreachable!("at most {MR} rows"),
            (mr, p) => {
                // The last columns: fewer panels, one row at a time (rare: a width not a
                // multiple of 64).
                for r in 0..mr {
                    match p {
                        3 => kernel::<1, 3>(m, x.add(r * m.kp), &sx[r..], col0, out.add(r * m.n)),
                        2 => kernel::<1, 2>(m, x.add(r * m.kp), &sx[r..], col0, out.add(r * m.n)),
                        1 => kernel::<1, 1>(m, x.add(r * m.kp), &sx[r..], col0, out.add(r * m.n)),
                        _ => unreachable!("1 to {NP} panels"),
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const R: usize, const P: usize>(m: &Int8Matrix, x: *const i8, sx: &[f32], col0: usize, out: *mut f32) {
        let kp = m.kp;
        let panel0 = col0 / PANEL;
        let w = m.data.as_ptr();
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        for g in 0..kp / 4 {
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
        for (r, acc) in acc.iter().enumerate() {
            let s = _mm512_set1_ps(sx[r]);
            for (p, a) in acc.iter().enumerate() {
                let col = col0 + p * PANEL;
                let live = (m.n - col).min(PANEL);
                let mask: __mmask16 = if live == PANEL { !0 } else { (1u16 << live) - 1 };
                let off = _mm512_loadu_si512(m.offsets.as_ptr().add(col) as *const _);
                let sw = _mm512_maskz_loadu_ps(mask, m.scales.as_ptr().add(col));
                let y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(*a, off)), s), sw);
                _mm512_mask_storeu_ps(out.add(r * m.n + col), mask, y);
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

    /// Integer sums and scales from first principles: quantize both sides per row, dot.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            let (xr, sx) = naive_quantize(&x[i * k..(i + 1) * k]);
            for j in 0..n {
                let (wr, sw) = naive_quantize(&w[j * k..(j + 1) * k]);
                let mut acc = 0i64;
                for t in 0..k {
                    acc += xr[t] as i64 * wr[t] as i64;
                }
                out[i * n + j] = acc as i32 as f32 * sx * sw;
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
        // Shapes with partial register tiles, partial panels, k not a multiple of 4, and
        // extreme values (−127·−127 sums over long rows).
        for &(m, n, k) in &[(1, 1, 1), (7, 16, 32), (13, 70, 61), (50, 200, 576), (6, 64, 1536), (3, 130, 5)] {
            let x: Vec<f32> = (0..m * k).map(|i| noise(i * 3 + 1)).collect();
            let mut w: Vec<f32> = (0..n * k).map(|i| noise(i * 5 + 2) * 0.1).collect();
            w[0] = -0.1; // a row whose extreme is negative
            let want = reference(&x, &w, m, n, k);
            for kernel in kernels() {
                let q = Int8Matrix::quantize(&w, n, k, kernel);
                assert_eq!(q.matmul(&x, m), want, "{kernel:?} {m}×{n}×{k}");
            }
        }
        // All inputs at the extremes: the sums reach 127² · k.
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
            assert_eq!(a.rows(), Int8Matrix::quantize(&w[..n1 * k], n1, k, Kernel::Portable).data);
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
