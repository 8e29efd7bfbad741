//! Linears summed in the order torch's CPU matmul sums them.
//!
//! MKL/oneDNN (torch's CPU f32 matmul) splits the reduction dimension K into blocks and adds the
//! blocks' partial products in order; each block's products accumulate one after another. At
//! depth the difference in summation order is what moved medprm off transformers (issue 24):
//! the per-layer drift starts at layer 1 and grows with the residual stream. Splitting K the same
//! way — equal blocks of at most `MAX_K_BLOCK`, partial products added in block order — makes our
//! rounding follow torch's.

use candle_core::{DType, Device, Result, Storage, Tensor};
use candle_core::cpu_backend::CpuStorage;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

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
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let y = {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(wv))) = (&*xs, &*ws) else {
            return Ok(None);
        };
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            return Ok(None);
        };
        linear_f32(&xv[x0..x1], rows, k, &wv[w0..w1], out)
    };
    Ok(Some(Tensor::from_vec(y, (rows, out), &Device::Cpu)?))
}

/// `x · wᵀ`, x (rows, k) and w (out, k) row-major: (rows, out), K split as in `k_blocks`.
pub fn linear_f32(x: &[f32], rows: usize, k: usize, w: &[f32], out: usize) -> Vec<f32> {
    assert!(x.len() == rows * k && w.len() == out * k, "linear_f32: shapes");
    let mut y = vec![0f32; rows * out];
    let mut part = Vec::new();
    let par = match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    for (i, &(k0, kb)) in k_blocks(k).iter().enumerate() {
        let dst: &mut [f32] = if i == 0 {
            &mut y
        } else {
            part.resize(rows * out, 0f32);
            &mut part
        };
        // dst (rows × out) = x[:, k0..k0+kb] (rows × kb) · w[:, k0..k0+kb]ᵀ (kb × out).
        // SAFETY: x row r, column k0+c (c < kb) is x[r·k + k0 + c] < rows·k; wᵀ row c, column o
        // is w[o·k + k0 + c] < out·k; dst holds rows·out.
        unsafe {
            gemm(
                rows,
                out,
                kb,
                dst.as_mut_ptr(),
                1,
                out as isize,
                false,
                x.as_ptr().add(k0),
                1,
                k as isize,
                w.as_ptr().add(k0),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        if i > 0 {
            y.par_iter_mut().zip(part.par_iter()).for_each(|(a, b)| *a += *b);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

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
