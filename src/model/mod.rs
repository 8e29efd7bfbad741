//! Model loading: a Hugging Face directory (config.json + safetensors, single or sharded) or a
//! GGUF file (quantized). Both produce the same [`llama::Llama`].

pub mod config;
pub mod gguf;
pub mod llama;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use config::LlamaConfig;
use llama::{Layer, LabelHead, Linear, Llama};

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

/// Parses a dtype name.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::input("dtype", format!("`{other}` is not one of f32, f16, bf16"))),
    }
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
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

/// Loads HF safetensors weights; `label_ids` selects the two `lm_head` rows kept.
pub fn load_hf(
    cfg: LlamaConfig,
    files: &[PathBuf],
    label_ids: [u32; 2],
    dtype: DType,
    device: &Device,
) -> Result<Llama> {
    for f in files {
        check_safetensors_header(f)?;
    }
    // SAFETY: the files are memory-mapped read-only; they must not change while loaded.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
        .map_err(|e| Error::bad_file(&files[0], e))?;
    let named = |e: candle_core::Error| Error::bad_file(&files[0], e);
    let h = cfg.hidden_size;
    let (qd, kvd) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let m = vb.pp("model");
    let embed = m.get((cfg.vocab_size, h), "embed_tokens.weight").map_err(named)?;
    let linear = |vb: &VarBuilder, out: usize, inp: usize, bias: bool| -> Result<Linear> {
        let weight = vb.get((out, inp), "weight").map_err(named)?;
        let bias = if bias { Some(vb.get(out, "bias").map_err(named)?) } else { None };
        Ok(Linear::Dense { weight, bias })
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let l = m.pp(format!("layers.{i}"));
        let a = l.pp("self_attn");
        let p = l.pp("mlp");
        layers.push(Layer {
            attn_norm: l.get(h, "input_layernorm.weight").map_err(named)?,
            q: linear(&a.pp("q_proj"), qd, h, cfg.attention_bias)?,
            k: linear(&a.pp("k_proj"), kvd, h, cfg.attention_bias)?,
            v: linear(&a.pp("v_proj"), kvd, h, cfg.attention_bias)?,
            o: linear(&a.pp("o_proj"), h, qd, cfg.attention_bias)?,
            mlp_norm: l.get(h, "post_attention_layernorm.weight").map_err(named)?,
            gate: linear(&p.pp("gate_proj"), cfg.intermediate_size, h, cfg.mlp_bias)?,
            up: linear(&p.pp("up_proj"), cfg.intermediate_size, h, cfg.mlp_bias)?,
            down: linear(&p.pp("down_proj"), h, cfg.intermediate_size, cfg.mlp_bias)?,
        });
    }
    let norm = m.get(h, "norm.weight").map_err(named)?;
    let head_full = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
        if !cfg.tie_word_embeddings {
            return Err(Error::bad_file(&files[0], "lm_head.weight missing and tie_word_embeddings is false"));
        }
        embed.clone()
    } else {
        vb.get((cfg.vocab_size, h), "lm_head.weight").map_err(named)?
    };
    let head = label_head(&head_full, label_ids, cfg.vocab_size)?;
    Ok(Llama::new(cfg, embed, layers, norm, head, dtype, device.clone()))
}

/// Picks the two label rows of an `lm_head` matrix (vocab, hidden) as f32.
pub fn label_head(head: &Tensor, label_ids: [u32; 2], vocab: usize) -> Result<LabelHead> {
    for id in label_ids {
        if id as usize >= vocab {
            return Err(Error::TokenizerMismatch(format!("label token id {id} is outside the model vocabulary ({vocab})")));
        }
    }
    let idx = Tensor::new(&label_ids, head.device())?;
    Ok(LabelHead { rows: head.index_select(&idx, 0)?.to_dtype(DType::F32)? })
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
