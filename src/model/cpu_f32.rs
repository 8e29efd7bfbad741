//! Borrowing the data of a contiguous f32 CPU tensor, for the kernels that work on plain slices
//! (attention, the torch-order linears and RMSNorm, the int8 matmul).

use candle_core::{CpuStorage, Result, Storage, StorageRef, Tensor};

/// A contiguous f32 CPU tensor's data, borrowed.
pub struct CpuF32<'a> {
    storage: StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> CpuF32<'a> {
    pub fn new(t: &'a Tensor) -> Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the CPU kernels need contiguous tensors")
        };
        if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
            candle_core::bail!("the CPU kernels need f32 tensors on the CPU")
        }
        Ok(CpuF32 { storage, range: start..end })
    }

    pub fn get(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => unreachable!("checked in CpuF32::new"),
        }
    }
}
