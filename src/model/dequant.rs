//! Dequantizing GGUF tensors on all cores, for linears that stay quantized in memory and are
//! expanded to f32 right before their matmul ([`super::GgufLinears::Streamed`]): a batch of
//! prompt tokens then runs at f32-gemm speed while the model takes about its GGUF size.

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

type Result<T> = candle_core::Result<T>;

/// Blocks per parallel task.
const BLOCKS_PER_TASK: usize = 512;

/// `q` as an f32 tensor of the same shape on the CPU, dequantized in parallel.
pub fn dequantize(q: &QTensor) -> Result<Tensor> {
    let n = q.shape().elem_count();
    let data = q.data()?;
    let mut out = vec![0f32; n];
    match q.dtype() {
        GgmlDType::Q4_0 => expand::<k_quants::BlockQ4_0>(&data, &mut out)?,
        GgmlDType::Q4_1 => expand::<k_quants::BlockQ4_1>(&data, &mut out)?,
        GgmlDType::Q5_0 => expand::<k_quants::BlockQ5_0>(&data, &mut out)?,
        GgmlDType::Q5_1 => expand::<k_quants::BlockQ5_1>(&data, &mut out)?,
        GgmlDType::Q8_0 => expand::<k_quants::BlockQ8_0>(&data, &mut out)?,
        GgmlDType::Q2K => expand::<k_quants::BlockQ2K>(&data, &mut out)?,
        GgmlDType::Q3K => expand::<k_quants::BlockQ3K>(&data, &mut out)?,
        GgmlDType::Q4K => expand::<k_quants::BlockQ4K>(&data, &mut out)?,
        GgmlDType::Q5K => expand::<k_quants::BlockQ5K>(&data, &mut out)?,
        GgmlDType::Q6K => expand::<k_quants::BlockQ6K>(&data, &mut out)?,
        // Types without a parallel path here (f32, f16, bf16, q8_1, q8_k) go through candle.
        _ => return q.dequantize(&Device::Cpu),
    }
    Tensor::from_vec(out, q.shape(), &Device::Cpu)
}

fn expand<T: GgmlType + Sync>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let size = std::mem::size_of::<T>();
    if bytes.len() % size != 0 || bytes.as_ptr() as usize % std::mem::align_of::<T>() != 0 {
        candle_core::bail!("quantized data of {} bytes is not a whole, aligned number of {:?} blocks", bytes.len(), T::DTYPE)
    }
    // SAFETY: the bytes are a GGUF tensor's blocks of type T (checked: whole blocks, aligned),
    // and the block types are plain data with no invalid bit patterns.
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) };
    if blocks.len() * T::BLCK_SIZE != out.len() {
        candle_core::bail!("{} {:?} blocks do not hold {} values", blocks.len(), T::DTYPE, out.len())
    }
    out.par_chunks_mut(BLOCKS_PER_TASK * T::BLCK_SIZE)
        .zip(blocks.par_chunks(BLOCKS_PER_TASK))
        .for_each(|(o, b)| T::to_float(b, o));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_dequantization_equals_candles() {
        let n: usize = 256 * 1100; // more than one task of the largest block size
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
        let t = Tensor::from_vec(v, (1100, 256), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::F16] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let ours = dequantize(&q).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let theirs = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(ours, theirs, "{dtype:?}");
        }
    }
}
