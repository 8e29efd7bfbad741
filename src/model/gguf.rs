//! GGUF checkpoints (llama.cpp layout): config from the metadata, quantized linears, the tokenizer
//! and chat template from the metadata when no tokenizer files sit beside the file.
//!
//! llama.cpp permutes the rows of q/k at conversion so that rotary pairs are interleaved; we keep
//! the weights as they are and rotate interleaved pairs ([`RopeStyle::Interleaved`]).
//! [`convert_to_hf`] undoes the permutation when writing a Hugging Face directory. The model asks
//! for tensors by Hugging Face name; [`gguf_name`] translates them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Shape, Tensor};

use super::config::{LlamaConfig, RopeScaling, RopeStyle};
use super::llama::Llama;
use super::Weights;
use crate::error::{Error, Result};

pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = File::open(path).map_err(|e| Error::bad_file(path, e))?;
        let content = gguf_file::Content::read(&mut f).map_err(|e| Error::bad_file(path, format!("not a valid GGUF file: {e}")))?;
        Ok(GgufFile { path: path.to_path_buf(), content })
    }

    fn md(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    fn md_u32(&self, key: &str) -> Result<usize> {
        self.md(key)
            .ok_or_else(|| Error::bad_file(&self.path, format!("GGUF metadata `{key}` missing")))?
            .to_u32()
            .map(|v| v as usize)
            .map_err(|e| Error::bad_file(&self.path, format!("GGUF metadata `{key}`: {e}")))
    }

    pub fn chat_template(&self) -> Option<String> {
        self.md("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned()
    }

    pub fn architecture(&self) -> String {
        self.md("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default()
    }

    fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let mut f = File::open(&self.path).map_err(|e| Error::bad_file(&self.path, e))?;
        self.content
            .tensor(&mut f, name, device)
            .map_err(|e| Error::bad_file(&self.path, format!("tensor `{name}`: {e}")))
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture();
        if arch != "llama" {
            return Err(Error::Unsupported(format!("GGUF architecture `{arch}` (supported: llama)")));
        }
        let heads = self.md_u32("llama.attention.head_count")?;
        let kv_heads = self.md_u32("llama.attention.head_count_kv").unwrap_or(heads);
        let hidden = self.md_u32("llama.embedding_length")?;
        let head_dim = self.md_u32("llama.rope.dimension_count").unwrap_or(hidden / heads);
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| Error::bad_file(&self.path, "tensor `token_embd.weight` missing"))?;
        let f = |k: &str, d: f64| self.md(k).and_then(|v| v.to_f32().ok()).map(|v| v as f64).unwrap_or(d);
        let rope_scaling = match self.md("llama.rope.scaling.type").and_then(|v| v.to_string().ok()).map(|s| s.as_str()) {
            Some("linear") => RopeScaling::Linear { factor: f("llama.rope.scaling.factor", 1.0) as f32 },
            _ => RopeScaling::None,
        };
        Ok(LlamaConfig {
            hidden_size: hidden,
            intermediate_size: self.md_u32("llama.feed_forward_length")?,
            num_layers: self.md_u32("llama.block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: f("llama.rope.freq_base", 10_000.0) as f32,
            rope_scaling,
            rope_style: RopeStyle::Interleaved,
            vocab_size: vocab,
            max_position_embeddings: self.md_u32("llama.context_length").unwrap_or(4096),
            tie_word_embeddings: !self.has("output.weight"),
            attention_bias: false,
            o_proj_bias: false,
            mlp_bias: false,
            sliding_window: None,
            architecture: "llama (gguf)".into(),
        })
    }

    /// llama3-style frequency factors stored as a tensor by llama.cpp (`rope_freqs.weight`).
    pub fn rope_freq_factors(&self) -> Result<Option<Vec<f32>>> {
        if !self.has("rope_freqs.weight") {
            return Ok(None);
        }
        let t = self.qtensor("rope_freqs.weight", &Device::Cpu)?.dequantize(&Device::Cpu)?;
        Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
    }

    /// Bytes the linear weights take once dequantized to f32.
    pub fn dequantized_linear_bytes(&self) -> usize {
        self.content
            .tensor_infos
            .iter()
            .filter(|(n, _)| n.starts_with("blk.") && !n.ends_with("norm.weight"))
            .map(|(_, t)| t.shape.elem_count() * 4)
            .sum()
    }

    /// The tensor holding Hugging Face tensor `hf` (translated by [`gguf_name`]), checked to
    /// have the shape the model expects.
    pub(crate) fn hf_tensor(&self, hf: &str, shape: &Shape, device: &Device) -> Result<QTensor> {
        let name = gguf_name(hf).ok_or_else(|| Error::bad_file(&self.path, format!("no GGUF name for tensor `{hf}`")))?;
        if let Some(info) = self.content.tensor_infos.get(&name) {
            if info.shape.dims() != shape.dims() {
                return Err(Error::bad_file(
                    &self.path,
                    format!("tensor `{name}` has shape {:?}, expected {:?}", info.shape.dims(), shape.dims()),
                ));
            }
        }
        self.qtensor(&name, device)
    }

    pub(crate) fn has_hf(&self, hf: &str) -> bool {
        gguf_name(hf).is_some_and(|n| self.has(&n))
    }

    fn reject_biases(&self) -> Result<()> {
        match ["blk.0.attn_q.bias", "blk.0.ffn_up.bias"].into_iter().find(|b| self.has(b)) {
            Some(bias) => Err(Error::Unsupported(format!("GGUF with biases ({bias})"))),
            None => Ok(()),
        }
    }

    /// Loads the weights. Norms are dequantized to f32; the linears (and the embedding) as
    /// `linears` says (f32 gemm is several times faster than candle's quantized CPU kernels on
    /// prompt-sized batches, which is all a reward model runs).
    pub fn load(&self, cfg: LlamaConfig, label_ids: [u32; 2], device: &Device, linears: super::GgufLinears) -> Result<Llama> {
        self.reject_biases()?;
        Llama::load(&Weights::Gguf { file: self, device: device.clone(), linears }, cfg, label_ids)
    }

    /// The tokenizer held in the GGUF metadata (byte-level BPE vocabularies).
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        use candle_core::quantized::tokenizer::TokenizerFromGguf;
        let mut tok = tokenizers::Tokenizer::from_gguf(&self.content)
            .map_err(|e| Error::bad_file(&self.path, format!("tokenizer from GGUF metadata: {e}")))?;
        let pre = self.md("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if pre == "smollm" {
            // SmolLM's tokenizer splits digits individually before the GPT-2 byte-level split.
            use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence};
            let seq = Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]);
            tok.with_pre_tokenizer(Some(seq));
        }
        Ok(tok)
    }

    /// bos / eos token strings, for the chat template.
    pub fn special_token(&self, key: &str) -> Option<String> {
        let id = self.md(key)?.to_u32().ok()? as usize;
        let toks = self.md("tokenizer.ggml.tokens")?.to_vec().ok()?;
        toks.get(id)?.to_string().ok().cloned()
    }
}

/// Hugging Face names of a layer's tensors (after `model.layers.{i}.`) and llama.cpp's (after
/// `blk.{i}.`).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];
/// The same for the tensors outside the layers.
const TOP_NAMES: [(&str, &str); 3] =
    [("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")];

/// The llama.cpp name of a Hugging Face tensor: `model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`.
pub fn gguf_name(hf: &str) -> Option<String> {
    translate(hf, true)
}

/// The Hugging Face name of a llama.cpp tensor (the inverse of [`gguf_name`]).
pub fn hf_name(gguf: &str) -> Option<String> {
    translate(gguf, false)
}

fn translate(name: &str, to_gguf: bool) -> Option<String> {
    let (from_layers, to_layers) = if to_gguf { ("model.layers.", "blk.") } else { ("blk.", "model.layers.") };
    let pick = |table: &[(&'static str, &'static str)], key: &str| {
        table.iter().find_map(|&(hf, gg)| {
            let (from, to) = if to_gguf { (hf, gg) } else { (gg, hf) };
            (from == key).then_some(to)
        })
    };
    let (base, kind) = name.rsplit_once('.')?;
    let base = match base.strip_prefix(from_layers) {
        Some(rest) => {
            let (i, part) = rest.split_once('.')?;
            format!("{to_layers}{i}.{}", pick(&LAYER_NAMES, part)?)
        }
        None => pick(&TOP_NAMES, base)?.to_string(),
    };
    Some(format!("{base}.{kind}"))
}

/// Writes a Hugging Face directory (f32 safetensors, config.json, tokenizer files) holding the
/// dequantized weights of a GGUF file, with q/k rows put back in Hugging Face order.
pub fn convert_to_hf(gguf: &GgufFile, out: &Path) -> Result<()> {
    let cfg = gguf.config()?;
    gguf.reject_biases()?;
    if gguf.has("rope_freqs.weight") {
        return Err(Error::Unsupported("converting GGUF files with rope_freqs.weight".into()));
    }
    let dev = Device::Cpu;
    std::fs::create_dir_all(out).map_err(|e| Error::bad_file(out, e))?;
    let unpermute = |t: Tensor, heads: usize| -> Result<Tensor> {
        let (rows, cols) = t.dims2()?;
        Ok(t.reshape((heads, rows / heads / 2, 2, cols))?.transpose(1, 2)?.reshape((rows, cols))?)
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in gguf.content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else { continue };
        let t = gguf.qtensor(name, &dev)?.dequantize(&dev)?;
        let t = if hf.ends_with("q_proj.weight") {
            unpermute(t, cfg.num_heads)?
        } else if hf.ends_with("k_proj.weight") {
            unpermute(t, cfg.num_kv_heads)?
        } else {
            t
        };
        tensors.insert(hf, t.contiguous()?);
    }
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;

    let mut config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "vocab_size": cfg.vocab_size,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    if let RopeScaling::Linear { factor } = cfg.rope_scaling {
        config["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor});
    }
    write_json(&out.join("config.json"), &config)?;

    let tok = gguf.tokenizer()?;
    tok.save(out.join("tokenizer.json"), true).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tcfg = serde_json::json!({});
    if let Some(t) = gguf.chat_template() {
        tcfg["chat_template"] = t.into();
    }
    if let Some(b) = gguf.special_token("tokenizer.ggml.bos_token_id") {
        tcfg["bos_token"] = b.into();
    }
    if let Some(e) = gguf.special_token("tokenizer.ggml.eos_token_id") {
        tcfg["eos_token"] = e.into();
    }
    write_json(&out.join("tokenizer_config.json"), &tcfg)?;
    Ok(())
}

pub(crate) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::bad_file(path, e))?;
    std::fs::write(path, text).map_err(|e| Error::bad_file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_translate_both_ways() {
        assert_eq!(gguf_name("model.layers.12.self_attn.q_proj.weight").as_deref(), Some("blk.12.attn_q.weight"));
        assert_eq!(gguf_name("model.layers.0.mlp.up_proj.bias").as_deref(), Some("blk.0.ffn_up.bias"));
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        for (hf, _) in LAYER_NAMES {
            let name = format!("model.layers.3.{hf}.weight");
            assert_eq!(hf_name(&gguf_name(&name).unwrap()), Some(name));
        }
        for (hf, gg) in TOP_NAMES {
            assert_eq!(hf_name(&format!("{gg}.weight")), Some(format!("{hf}.weight")));
        }
    }
}
