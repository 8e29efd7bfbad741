//! Linears summed in the order torch's CPU matmul sums them.
//!
//! MKL/oneDNN (torch's CPU f32 matmul) splits the reduction dimension K into blocks and adds the
//! blocks' partial products in order; each block's products accumulate one after another. At
//! depth the difference in summation order is what moved medprm off transformers (issue 24):
//! the per-layer drift starts at layer 1 and grows with the residual stream. Splitting K the same
//! way — equal blocks of at most `MAX_K_BLOCK`, partial products added in block order — makes our
//! rounding follow torch's.
//!
//! RMSNorm likewise: transformers' `LlamaRMSNorm` squares, sums with torch's cascade sum (the
//! vectorised inner reduction of `SumKernel.cpp`: 16-lane vectors on AVX-512, four interleaved
//! vector accumulators, levels of 16, lanes added in order), divides by the width, and multiplies
//! by `1/sqrt(variance + eps)`; `rms_norm_f32` follows that order step by step.

use candle_core::{DType, Device, Result, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::cpu_f32::CpuF32;

/// Largest reduction block of torch's CPU f32 matmul.
pub const MAX_K_BLOCK: usize = 384;

/// The reduction blocks for a dot length `k`: equal blocks (the last may be shorter) of at most
/// `MAX_K_BLOCK`, as (start, len).
pub fn k_blocks(k: usize) -> Vec<(usize, usize)> {
    if k == 0 {
        return Vec::new();
    }
    let n = k.div_ceil(MAX_K_BLOCK);
    let size = k.div_ceil(n);
    (0..k).step_by(size).map(|s| (s, size.min(k - s))).collect()
}

/// `x · wᵀ` for f32 `x` (rows, k) and `w` (out, k) on the CPU, with K split as in `k_blocks`.
/// Returns `None` where the inputs are not f32 CPU tensors (the caller's plain matmul applies).
pub fn blocked_linear(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 || !x.device().is_cpu() || x.rank() != 2 {
        return Ok(None);
    }
    let (rows, k) = x.dims2()?;
    let (out, wk) = w.dims2()?;
    if wk != k {
        candle_core::bail!("linear: input width {k}, weight width {wk}");
    }
    if k <= MAX_K_BLOCK {
        return Ok(None);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let y = linear_f32(CpuF32::new(&x)?.get(), rows, k, CpuF32::new(&w)?.get(), out);
    Ok(Some(Tensor::from_vec(y, (rows, out), &Device::Cpu)?))
}

/// `x · wᵀ`, x (rows, k) and w (out, k) row-major: (rows, out), K split as in `k_blocks`.
pub fn linear_f32(x: &[f32], rows: usize, k: usize, w: &[f32], out: usize) -> Vec<f32> {
    assert!(x.len() == rows * k && w.len() == out * k, "linear_f32: shapes");
    let mut y = vec![0f32; rows * out];
    let par = match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    for (i, &(k0, kb)) in k_blocks(k).iter().enumerate() {
        // y (rows × out) = y + x[:, k0..k0+kb] (rows × kb) · w[:, k0..k0+kb]ᵀ (kb × out): the
        // block's products accumulate on their own, then are added to y (1·y + 1·block, exact
        // scalings), so the blocks' partial sums are added in block order without a scratch pass.
        // SAFETY: x row r, column k0+c (c < kb) is x[r·k + k0 + c] < rows·k; wᵀ row c, column o
        // is w[o·k + k0 + c] < out·k; y holds rows·out.
        unsafe {
            gemm(
                rows,
                out,
                kb,
                y.as_mut_ptr(),
                1,
                out as isize,
                i > 0,
                x.as_ptr().add(k0),
                1,
                k as isize,
                w.as_ptr().add(k0),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    y
}

/// Lanes of torch's CPU vectors for f32 on AVX-512 (its default kernels on such machines).
const LANES: usize = 16;
/// torch's `row_sum` interleaving (independent accumulators).
const ILP: usize = 4;
/// torch's `multi_row_sum` levels.
const LEVELS: usize = 4;

/// torch's `multi_row_sum` over `size` rows of `ILP` vectors: row `i`, accumulator `k` is the
/// vector at `v[(i·ILP + k)·LANES ..]`.
fn multi_row_sum(v: &[f32], size: usize) -> [[f32; LANES]; ILP] {
    let level_power = 4usize.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; LANES]; ILP]; LEVELS];
    let add_row = |a: &mut [[f32; LANES]; ILP], i: usize| {
        for (k, ak) in a.iter_mut().enumerate() {
            let base = (i * ILP + k) * LANES;
            for (l, x) in ak.iter_mut().enumerate() {
                *x += v[base + l];
            }
        }
    };
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                for l in 0..LANES {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0;
                }
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        add_row(&mut acc[0], i);
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            for l in 0..LANES {
                acc[0][k][l] += acc[j][k][l];
            }
        }
    }
    acc[0]
}

/// ceil(log2(n)), 0 for n ≤ 1 (torch's `CeilLog2`).
fn ceil_log2(n: usize) -> usize {
    if n <= 1 { 0 } else { (usize::BITS - (n - 1).leading_zeros()) as usize }
}

/// The sum of `v` as torch's CPU sum over a contiguous f32 row adds it (`vectorized_inner_sum`).
pub fn cascade_sum(v: &[f32]) -> f32 {
    let n = v.len();
    if n < LANES {
        // torch's scalar path (`row_sum` over single floats).
        let size_ilp = n / ILP;
        let mut p = [0f32; ILP];
        for i in 0..size_ilp {
            for (k, pk) in p.iter_mut().enumerate() {
                *pk += v[i * ILP + k];
            }
        }
        for &x in &v[size_ilp * ILP..] {
            p[0] += x;
        }
        return p[0] + p[1] + p[2] + p[3];
    }
    let vec_size = n / LANES;
    let size_ilp = vec_size / ILP;
    let mut parts = multi_row_sum(v, size_ilp);
    for i in size_ilp * ILP..vec_size {
        for l in 0..LANES {
            parts[0][l] += v[i * LANES + l];
        }
    }
    for k in 1..ILP {
        for l in 0..LANES {
            parts[0][l] += parts[k][l];
        }
    }
    let mut total = 0f32;
    for &x in &v[vec_size * LANES..] {
        total += x;
    }
    for &x in &parts[0] {
        total += x;
    }
    total
}

/// transformers' `LlamaRMSNorm` in f32, row by row: `w · (x · 1/sqrt(sum(x²)/n + eps))`.
pub fn rms_norm_f32(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut out = vec![0f32; x.len()];
    // One buffer of squares per worker, reused row after row.
    out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each_init(|| vec![0f32; n], |sq, (o, r)| {
        for (s, &a) in sq.iter_mut().zip(r) {
            *s = a * a;
        }
        let var = cascade_sum(sq) / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, &a), &g) in o.iter_mut().zip(r).zip(w) {
            *o = g * (a * inv);
        }
    });
    out
}

/// `rms_norm_f32` for f32 CPU tensors (rows, n) and weight (n); `None` otherwise.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let n = w.dim(0)?;
    if x.dim(x.rank() - 1)? != n {
        return Ok(None);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let y = rms_norm_f32(CpuF32::new(&x)?.get(), CpuF32::new(&w)?.get(), eps);
    Ok(Some(Tensor::from_vec(y, x.shape().clone(), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cascade_sum_follows_torchs_order() {
        // Every order gives the same exact sum on small integers.
        let v: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        assert_eq!(cascade_sum(&v), v.iter().map(|&x| x as f64).sum::<f64>() as f32);
        // 64 values: lanes l of the four vectors added first ((v0+v16)+v32)+v48, then lanes in order.
        let v: Vec<f32> = (0..64).map(|i| if i % 16 == 15 { 1e8 } else { 3.0 }).collect();
        let mut want = 0f32;
        for l in 0..16 {
            want += ((v[l] + v[16 + l]) + v[32 + l]) + v[48 + l];
        }
        assert_eq!(cascade_sum(&v), want);
        assert_ne!(want, v.iter().fold(0f32, |a, &b| a + b), "the example tells the orders apart");
    }

    #[test]
    fn blocks_are_equal_and_at_most_384() {
        assert_eq!(k_blocks(384), vec![(0, 384)]);
        assert_eq!(k_blocks(576), vec![(0, 288), (288, 288)]);
        assert_eq!(k_blocks(1536), vec![(0, 384), (384, 384), (768, 384), (1152, 384)]);
        assert_eq!(k_blocks(1000), vec![(0, 334), (334, 334), (668, 332)]);
    }

    #[test]
    fn blocked_product_sums_block_partials_in_order() {
        let (rows, k, out) = (3, 1000, 5);
        let x: Vec<f32> = (0..rows * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let w: Vec<f32> = (0..out * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021).collect();
        let y = linear_f32(&x, rows, k, &w, out);
        for r in 0..rows {
            for o in 0..out {
                // Each block's dot in f64, rounded to f32, then the blocks added in f32 in order:
                // matches up to the rounding inside a block, far tighter than a loose tolerance.
                let mut acc = 0f32;
                for (k0, kb) in k_blocks(k) {
                    let p: f64 = (k0..k0 + kb).map(|c| x[r * k + c] as f64 * w[o * k + c] as f64).sum();
                    acc += p as f32;
                }
                assert!((y[r * out + o] - acc).abs() <= 1e-4 * acc.abs().max(1.0), "{r},{o}: {} vs {acc}", y[r * out + o]);
            }
        }
        let t = blocked_linear(
            &Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap(),
            &Tensor::from_vec(w.clone(), (out, k), &Device::Cpu).unwrap(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), y);
    }
}
