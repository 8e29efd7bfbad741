//! Model loading: a Hugging Face directory (config.json + safetensors, single or sharded) or a
//! GGUF file (quantized). Both produce the same [`llama::Llama`].

pub mod adapter;
pub mod attention;
pub mod config;
pub mod cpu_f32;
pub mod dequant;
pub mod simd;
pub mod gguf;
pub mod head;
pub mod internvit;
pub mod internvl;
pub mod llama;
pub mod mkl_vml;
pub mod numerics;
pub mod qmatmul;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use config::LlamaConfig;
use gguf::GgufFile;
use llama::Llama;

/// Where the weights of a model live.
#[derive(Debug, Clone)]
pub enum ModelFiles {
    /// A Hugging Face directory.
    HfDir { dir: PathBuf, safetensors: Vec<PathBuf> },
    /// A GGUF file (tokenizer.json / tokenizer_config.json may sit beside it).
    Gguf { file: PathBuf },
}

impl ModelFiles {
    /// Resolves a `--model` path: a `.gguf` file, a directory with `config.json`, or a directory
    /// holding exactly one `.gguf` file.
    pub fn resolve(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile(path.to_path_buf()));
        }
        if path.is_file() {
            return if path.extension().is_some_and(|e| e == "gguf") {
                Ok(ModelFiles::Gguf { file: path.to_path_buf() })
            } else {
                Err(Error::Unsupported(format!(
                    "{}: expected a .gguf file or a Hugging Face model directory",
                    path.display()
                )))
            };
        }
        if path.join("config.json").is_file() {
            return Ok(ModelFiles::HfDir { dir: path.to_path_buf(), safetensors: safetensors_files(path)? });
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::bad_file(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        match ggufs.as_slice() {
            [one] => Ok(ModelFiles::Gguf { file: one.clone() }),
            [] => Err(Error::MissingFile(path.join("config.json"))),
            _ => Err(Error::Unsupported(format!(
                "{}: several .gguf files; pass the one to load",
                path.display()
            ))),
        }
    }

    /// The directory that may hold tokenizer.json / tokenizer_config.json.
    pub fn dir(&self) -> &Path {
        match self {
            ModelFiles::HfDir { dir, .. } => dir,
            ModelFiles::Gguf { file } => file.parent().unwrap_or(Path::new(".")),
        }
    }

    pub fn format(&self) -> &'static str {
        match self {
            ModelFiles::HfDir { .. } => "safetensors",
            ModelFiles::Gguf { .. } => "gguf",
        }
    }
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::MissingFile(single));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::bad_file(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(&index, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::bad_file(&index, "no `weight_map` object"))?;
    let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::MissingFile(missing.clone()));
    }
    Ok(files)
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

pub fn device_name(d: &Device) -> &'static str {
    if d.is_cuda() {
        "cuda"
    } else if d.is_metal() {
        "metal"
    } else {
        "cpu"
    }
}

/// Reads the Llama config of a Hugging Face directory.
pub fn read_hf_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::bad_file(&path, e))?;
    LlamaConfig::from_hf_json(&text)
}

/// Loads HF safetensors weights with the step head `head` names.
pub fn load_hf(
    cfg: LlamaConfig,
    files: &[PathBuf],
    head: head::HeadSpec,
    dtype: DType,
    device: &Device,
) -> Result<Llama> {
    Llama::load(&Weights::safetensors(files, dtype, device)?, cfg, head)
}

/// Loads HF safetensors weights with a PEFT LoRA adapter merged in (the base is read into
/// memory, merged, then converted to `dtype`).
pub fn load_hf_adapted(
    cfg: LlamaConfig,
    files: &[PathBuf],
    adapter: &adapter::Adapter,
    head: head::HeadSpec,
    dtype: DType,
    device: &Device,
) -> Result<Llama> {
    for f in files {
        check_safetensors_header(f)?;
    }
    let mut tensors = adapter::load_all(files)?;
    adapter.merge_into(&mut tensors)?;
    Llama::load(&Weights::from_tensors(tensors, dtype, device), cfg, head)
}

/// Where [`Llama::load`] takes its tensors from. Tensors are asked for by their Hugging Face
/// name (`model.layers.{i}.self_attn.q_proj.weight`, ...); the GGUF source translates names to
/// llama.cpp's and decides whether linears stay quantized.
pub enum Weights<'a> {
    /// Safetensors files (or in-memory tensors), converted to the activation dtype.
    Hf { vb: VarBuilder<'a>, origin: PathBuf },
    /// A GGUF file: norms dequantized to f32; linears (and the embedding) as `linears` says.
    Gguf { file: &'a GgufFile, device: Device, linears: GgufLinears },
}

/// How the linears of a GGUF model run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufLinears {
    /// Expanded to f32 once at load: f32-gemm speed, 4 bytes per weight resident.
    Dequantized,
    /// Quantized in memory, through candle's quantized matmul kernels (the GPU default).
    Quantized,
    /// Quantized in memory, each expanded to f32 right before its matmul and dropped after:
    /// f32-gemm speed on prompt-sized batches with about the GGUF's size resident.
    Streamed,
    /// Re-quantized at load to int8, one scale per block of 32 inputs of a row; activations
    /// likewise at each matmul; integer dot products on AVX-512 VNNI where the CPU has it ([`qmatmul`]).
    Int8,
}

impl GgufLinears {
    pub fn name(self) -> &'static str {
        match self {
            GgufLinears::Dequantized => "dequantized",
            GgufLinears::Quantized => "quantized",
            GgufLinears::Streamed => "streamed",
            GgufLinears::Int8 => "int8",
        }
    }
}

impl Weights<'static> {
    /// Memory-maps safetensors files (one, or the shards of an index) in `dtype`.
    pub fn safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        for f in files {
            check_safetensors_header(f)?;
        }
        // SAFETY: the files are memory-mapped read-only; they must not change while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
            .map_err(|e| Error::bad_file(&files[0], e))?;
        Ok(Weights::Hf { vb, origin: files[0].clone() })
    }

    /// Tensors held in memory, by Hugging Face name (tests, tools).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Weights::Hf { vb: VarBuilder::from_tensors(tensors, dtype, device), origin: "<memory>".into() }
    }
}

impl Weights<'_> {
    /// The activation dtype of a model made from these weights (f32 for GGUF).
    pub fn dtype(&self) -> DType {
        match self {
            Weights::Hf { vb, .. } => vb.dtype(),
            Weights::Gguf { .. } => DType::F32,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Weights::Hf { vb, .. } => vb.device(),
            Weights::Gguf { device, .. } => device,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Weights::Hf { vb, .. } => vb.contains_tensor(name),
            Weights::Gguf { file, .. } => file.has_hf(name),
        }
    }

    /// A dense tensor of the given shape, in the activation dtype.
    pub fn get(&self, name: &str, shape: impl Into<Shape>) -> Result<Tensor> {
        match self {
            Weights::Hf { vb, origin } => vb.get(shape, name).map_err(|e| Error::bad_file(origin, e)),
            Weights::Gguf { file, device, .. } => Ok(file.hf_tensor(name, &shape.into(), device)?.dequantize(device)?),
        }
    }

    /// A tensor that stays quantized (the linears and embedding of a GGUF file not dequantized
    /// at load), with how its linears run; `None` where tensors are dense (then [`Weights::get`]
    /// it). Tensors stored unquantized (f32, f16) are dense too.
    pub fn quantized(&self, name: &str, shape: impl Into<Shape>) -> Result<Option<(QTensor, GgufLinears)>> {
        match self {
            Weights::Gguf { file, device, linears } if *linears != GgufLinears::Dequantized => {
                let q = file.hf_tensor(name, &shape.into(), device)?;
                let dense = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
                Ok((!dense).then_some((q, *linears)))
            }
            _ => Ok(None),
        }
    }

    /// Per-dimension divisors of the rotary frequencies (llama.cpp's `rope_freqs.weight`, how
    /// GGUF files carry llama3 scaling); Hugging Face configs describe the scaling instead.
    pub fn rope_freq_factors(&self) -> Result<Option<Vec<f32>>> {
        match self {
            Weights::Hf { .. } => Ok(None),
            Weights::Gguf { file, .. } => file.rope_freq_factors(),
        }
    }

    /// An error naming the file the weights come from.
    pub fn error(&self, reason: impl ToString) -> Error {
        match self {
            Weights::Hf { origin, .. } => Error::bad_file(origin, reason),
            Weights::Gguf { file, .. } => Error::bad_file(&file.path, reason),
        }
    }
}

/// Reads a safetensors header so truncated or non-safetensors files fail with the file's name.
fn check_safetensors_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::bad_file(path, e))?;
    let total = f.metadata().map_err(|e| Error::bad_file(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| Error::bad_file(path, "not a safetensors file (shorter than 8 bytes)"))?;
    let n = u64::from_le_bytes(n);
    if n == 0 || n > 100_000_000 || 8 + n > total {
        return Err(Error::bad_file(path, "not a safetensors file (bad header length)"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::bad_file(path, e))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| Error::bad_file(path, format!("bad safetensors header: {e}")))?;
    let data_len = total - 8 - n;
    if let Some(obj) = json.as_object() {
        for (name, t) in obj {
            if let Some(end) = t.get("data_offsets").and_then(|o| o.get(1)).and_then(|e| e.as_u64()) {
                if end > data_len {
                    return Err(Error::bad_file(path, format!("truncated: tensor `{name}` ends past the end of the file")));
                }
            }
        }
    }
    Ok(())
}
