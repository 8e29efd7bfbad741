//! Command-line arguments shared by every subcommand that loads a model (`serve`, `score`,
//! `bench engine`, `bench prefix`): one definition, each flag also read from its `MEDPRM_*`
//! environment variable.

use std::path::PathBuf;

use crate::engine::LoadOptions;
use crate::error::Result;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face directory (config.json, tokenizer files, safetensors) or a GGUF file.
    #[arg(long, env = "MEDPRM_MODEL")]
    pub model: PathBuf,
    /// PRM profile: a built-in name (med-prm, math-shepherd) or a profile JSON file.
    #[arg(long, env = "MEDPRM_PROFILE", default_value = "med-prm")]
    pub profile: String,
    /// Activation/weight dtype for safetensors models (GGUF always runs f32 activations).
    #[arg(long, env = "MEDPRM_DTYPE", default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Device: cpu, cuda (needs a build with `--features cuda`) or auto.
    #[arg(long, env = "MEDPRM_DEVICE", default_value = "cpu")]
    pub device: String,
    /// GGUF linears: `dequantized` (f32 gemm, fastest on CPU), `quantized` (candle's quantized
    /// kernels, least memory) or `auto` (dequantized on CPU up to 8 GiB of f32 weights).
    #[arg(long, env = "MEDPRM_GGUF_MATMUL", default_value = "auto", value_parser = ["auto", "quantized", "dequantized"])]
    pub gguf_matmul: String,
}

impl ModelArgs {
    pub fn options(&self) -> Result<LoadOptions> {
        LoadOptions::from_flags(&self.model, &self.profile, &self.dtype, &self.device, &self.gguf_matmul)
    }
}
