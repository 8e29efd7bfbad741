//! Command-line arguments shared by every subcommand that loads a model (`serve`, `score`,
//! `bench engine`, `bench prefix`): one definition, each flag also read from its `MEDPRM_*`
//! environment variable.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::engine::LoadOptions;
use crate::error::{Error, Result};
use crate::model::GgufLinears;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face directory (config.json, tokenizer files, safetensors) or a GGUF file.
    #[arg(long, env = "MEDPRM_MODEL")]
    pub model: PathBuf,
    /// PRM profile: a built-in name (med-prm, math-shepherd, meds3, qwen2.5-math-prm,
    /// rlhflow-prm) or a profile JSON file. Default: the one the model's architecture implies
    /// (LlamaForTokenClassification: meds3; Qwen2ForProcessRewardModel: qwen2.5-math-prm), else
    /// med-prm.
    #[arg(long, env = "MEDPRM_PROFILE")]
    pub profile: Option<String>,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) merged
    /// into the --model base at load (MedS³'s TOKEN_CLS LoRA: the profile defaults to meds3).
    #[arg(long, env = "MEDPRM_ADAPTER")]
    pub adapter: Option<PathBuf>,
    /// Activation/weight dtype for safetensors models (GGUF always runs f32 activations).
    #[arg(long, env = "MEDPRM_DTYPE", default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Device: cpu, cuda (needs a build with `--features cuda`) or auto.
    #[arg(long, env = "MEDPRM_DEVICE", default_value = "cpu")]
    pub device: String,
    /// GGUF linears: `dequantized` (expanded to f32 at load: fastest in f32, 4 bytes per weight),
    /// `streamed` (kept quantized, each expanded right before its matmul: f32-gemm speed at about
    /// the GGUF's size), `quantized` (candle's quantized kernels), `int8` (re-quantized to int8 with a
    /// scale per block of 32 inputs, activations likewise: AVX-512 VNNI dot products where the CPU
    /// has them, about 1 byte per weight; scores within a few 1e-2 of f32) or `auto` (on CPU dequantized up to 4 GiB of
    /// f32 linears, streamed above; quantized on GPU).
    #[arg(long, env = "MEDPRM_GGUF_MATMUL", default_value = "auto", value_parser = ["auto", "quantized", "dequantized", "streamed", "int8"])]
    pub gguf_matmul: String,
    /// Intel MKL's runtime library (`libmkl_rt.so.2`; `make mkl` fetches it): the rotary
    /// embedding's cos/sin then come from MKL's vector math, as PyTorch computes them on x86, so
    /// f32 CPU scores follow transformers' bit for bit at depth. Default: the C library's cos/sin
    /// (the last bit differs on about 5% of angles).
    #[arg(long, env = "MEDPRM_MKL_VML")]
    pub mkl_vml: Option<PathBuf>,
}

impl ModelArgs {
    /// The flags as load options (each spelling checked, errors naming the flag).
    pub fn options(&self) -> Result<LoadOptions> {
        let mut o = LoadOptions::new(&self.model, "");
        o.profile = self.profile.clone();
        o.adapter = self.adapter.clone();
        o.dtype = parse_dtype(&self.dtype)?;
        o.device = select_device(&self.device)?;
        o.mkl_vml = self.mkl_vml.clone();
        o.gguf_linears = match self.gguf_matmul.as_str() {
            "auto" => None,
            "quantized" => Some(GgufLinears::Quantized),
            "dequantized" => Some(GgufLinears::Dequantized),
            "streamed" => Some(GgufLinears::Streamed),
            "int8" => Some(GgufLinears::Int8),
            other => {
                return Err(Error::input("gguf_matmul", format!("`{other}` is not one of auto, quantized, dequantized, streamed, int8")))
            }
        };
        Ok(o)
    }
}

/// Parses a dtype name.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::input("dtype", format!("`{other}` is not one of f32, f16, bf16"))),
    }
}

/// The device to run on: CUDA 0 when built with `cuda` and asked for, else CPU.
pub fn select_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Device::new_cuda(0).map_err(|e| Error::Unsupported(format!("cuda device: {e}"))),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        other => Err(Error::input("device", format!("`{other}` is not one of cpu, cuda, auto"))),
    }
}

