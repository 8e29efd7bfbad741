//! Linears summed in the order torch's CPU matmul sums them.
//!
//! torch's CPU f32 matmul (MKL's sgemm) splits the reduction dimension K into blocks and adds the
//! blocks' partial products in order; each block's products accumulate one after another (one
//! FMA chain per output). At depth the difference in summation order is what moved medprm off
//! transformers (issue 24): the per-layer drift starts at layer 1 and grows with the residual
//! stream. `k_blocks` gives torch's blocks, found by comparing `torch.nn.functional.linear` bit
//! for bit with each candidate order (torch 2.15, 2 threads, 4 or more rows; with 1–3 rows torch
//! takes another path that no block order reproduces): K ≤ 192 is one block; an even K below 384
//! is two halves; from 384 on, blocks of 192 with the remainder last. (An odd K between 192 and
//! 384 matched no split into two blocks; it is halved here too, the nearest we found.)
//!
//! RMSNorm likewise: transformers' `LlamaRMSNorm` squares, sums with torch's cascade sum (the
//! vectorised inner reduction of `SumKernel.cpp`: 8-lane vectors, as torch runs that kernel's
//! AVX2 build on AVX-512 CPUs too; four interleaved vector accumulators, levels of 16, lanes added
//! in order), divides by the width, and multiplies
//! by `1/sqrt(variance + eps)`; `rms_norm_f32` follows that order step by step.

use candle_core::{DType, Device, Result, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::cpu_f32::CpuF32;

/// Reduction block of torch's CPU f32 matmul from K = 2·`K_BLOCK` on; up to `K_BLOCK` the
/// products of a dot accumulate in one chain.
pub const K_BLOCK: usize = 192;

/// The reduction blocks of torch's CPU f32 matmul for a dot length `k`, as (start, len): one
/// block up to `K_BLOCK`, two halves below `2·K_BLOCK`, then blocks of `K_BLOCK` and the rest.
pub fn k_blocks(k: usize) -> Vec<(usize, usize)> {
    if k == 0 {
        return Vec::new();
    }
    if k <= K_BLOCK {
        return vec![(0, k)];
    }
    if k < 2 * K_BLOCK {
        let half = k / 2;
        return vec![(0, half), (half, k - half)];
    }
    (0..k).step_by(K_BLOCK).map(|s| (s, K_BLOCK.min(k - s))).collect()
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
    if k <= K_BLOCK {
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

/// Lanes of the vectors of torch's CPU sum kernel for f32: 8 (its AVX2 build, which it runs on
/// AVX-512 CPUs too; 16 lanes disagree with torch on a third of 576-wide rows).
const LANES: usize = 8;
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
pub(crate) mod tests {
    use super::*;

    #[test]
    fn cascade_sum_follows_torchs_order() {
        // Every order gives the same exact sum on small integers.
        let v: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        assert_eq!(cascade_sum(&v), v.iter().map(|&x| x as f64).sum::<f64>() as f32);
        // 64 values = 8 vectors of 8 lanes = 2 rows of 4 interleaved accumulators: accumulator k
        // holds vectors k and 4 + k; the accumulators are added in order, then the lanes.
        let v: Vec<f32> = (0..64).map(|i| if i % 8 == 7 { 1e8 } else { 3.0 }).collect();
        let mut want = 0f32;
        for l in 0..8 {
            let acc = |k: usize| v[k * 8 + l] + v[(4 + k) * 8 + l];
            want += ((acc(0) + acc(1)) + acc(2)) + acc(3);
        }
        assert_eq!(cascade_sum(&v), want);
        assert_ne!(want, v.iter().fold(0f32, |a, &b| a + b), "the example tells the orders apart");
    }

    #[test]
    fn blocks_follow_torchs_sgemm() {
        assert_eq!(k_blocks(64), vec![(0, 64)]);
        assert_eq!(k_blocks(192), vec![(0, 192)]);
        assert_eq!(k_blocks(256), vec![(0, 128), (128, 128)]);
        assert_eq!(k_blocks(300), vec![(0, 150), (150, 150)]);
        assert_eq!(k_blocks(384), vec![(0, 192), (192, 192)]);
        assert_eq!(k_blocks(400), vec![(0, 192), (192, 192), (384, 16)]);
        assert_eq!(k_blocks(576), vec![(0, 192), (192, 192), (384, 192)]);
        assert_eq!(k_blocks(4096).len(), 22);
        assert_eq!(k_blocks(4096)[21], (4032, 64));
        for k in [1, 191, 193, 383, 385, 1536, 14336] {
            let b = k_blocks(k);
            assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), k);
            assert!(b.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0) && b[0].0 == 0);
        }
    }

    /// `make_golden_torch_cpu.py`'s inputs: the same integer hash, the same f32 steps.
    pub(crate) fn hashed(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let h = ((i + seed * 1_000_003).wrapping_mul(2_654_435_761)) % (1 << 32);
                ((h >> 8) as f32 * 2f32.powi(-24) - 0.5) * 3.0
            })
            .collect()
    }

    #[test]
    fn linears_equal_torchs_cpu_matmul_bit_for_bit() {
        let g: serde_json::Value = serde_json::from_str(include_str!("../../tests/golden/torch-cpu.json")).unwrap();
        let (rows, out) = (g["rows"].as_u64().unwrap() as usize, g["out"].as_u64().unwrap() as usize);
        for case in g["cases"].as_array().unwrap() {
            let k = case["k"].as_u64().unwrap() as usize;
            let want: Vec<u32> = case["y_bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect();
            let y = linear_f32(&hashed(rows * k, 1), rows, k, &hashed(out * k, 2), out);
            let differ = y.iter().zip(&want).filter(|(a, b)| a.to_bits() != **b).count();
            assert_eq!(differ, 0, "k = {k}: {differ} of {} outputs differ from torch ({})", want.len(), g["torch"]);
        }
    }

    #[test]
    fn rms_norm_equals_transformers_bit_for_bit() {
        let g: serde_json::Value = serde_json::from_str(include_str!("../../tests/golden/torch-cpu.json")).unwrap();
        for width in [576usize, 64] {
            let want: Vec<u32> = g["rms_norm"][width.to_string()].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect();
            let x: Vec<f32> = hashed(64 * width, 7).iter().map(|v| v * 30.0).collect();
            let w: Vec<f32> = hashed(width, 8).iter().map(|v| v * 0.5 + 1.0).collect();
            let y = rms_norm_f32(&x, &w, 1e-5);
            let rows: Vec<usize> = (0..64).filter(|r| (0..width).any(|c| y[r * width + c].to_bits() != want[r * width + c])).collect();
            assert!(rows.is_empty(), "width {width}: rows {rows:?} differ from transformers ({})", g["torch"]);
        }
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
