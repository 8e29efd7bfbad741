//! InternVL checkpoints (VisualPRM-8B is an InternVL2.5-8B): a vision tower ([`VisionTower`]) and
//! a Llama-layout text model ([`Llama`]), from either of the two layouts they ship in:
//!
//! * **transformers** (`InternVLForConditionalGeneration`, `model_type: internvl`): `text_config`
//!   is a Llama/Qwen2 config; tensors `vision_tower.*`, `multi_modal_projector.*`,
//!   `language_model.model.*` + `language_model.lm_head.*` (or, as transformers names them in
//!   memory, `model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*` +
//!   `lm_head.*`).
//! * **InternVL's own** (`InternVLChatModel`, the remote-code checkpoints): `vision_config`
//!   (InternViT), `llm_config` (InternLM2, Qwen2 or Llama); tensors `vision_model.*`, `mlp1.*`,
//!   `language_model.*`. InternLM2 keeps q, k and v in one `wqkv` matrix, grouped per key/value
//!   head (that head's queries, then its key, then its value, `head_dim` rows each); it is split
//!   into Llama's three projections here, and `tok_embeddings`/`wo`/`w1`/`w3`/`w2`/
//!   `attention_norm`/`ffn_norm`/`output` are renamed to theirs.
//!
//! The safetensors files are memory-mapped; each tensor is read (renamed, split or stacked) when
//! the model asks for it and converted to the activation dtype, so loading holds no second copy
//! of the checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::LlamaConfig;
use super::head::HeadSpec;
use super::internvit::{VisionConfig, VisionTower};
use super::llama::Llama;
use super::Weights;
use crate::error::{Error, Result};

/// Which of the two layouts a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Transformers,
    InternVlChat,
}

/// What config.json says about an InternVL checkpoint.
#[derive(Debug, Clone)]
pub struct InternVlConfig {
    pub layout: Layout,
    pub text: LlamaConfig,
    /// The text model's own architecture (`InternLM2ForCausalLM`, `LlamaForCausalLM`, ...).
    pub text_architecture: String,
    pub vision: VisionConfig,
    /// `image_token_id` (transformers layout only; InternVL's own takes `<IMG_CONTEXT>`'s id
    /// from the tokenizer).
    pub image_token_id: Option<u32>,
}

fn field<'a>(v: &'a Value, path: &str, key: &str) -> Result<&'a Value> {
    v.get(key).filter(|x| !x.is_null()).ok_or_else(|| Error::Unsupported(format!("config.json: `{path}{key}` missing")))
}

fn usize_of(v: &Value, path: &str, key: &str) -> Result<usize> {
    let x = field(v, path, key)?;
    // `image_size` / `patch_size` may be a square [h, w] pair.
    let x = match x.as_array() {
        Some(a) if a.len() == 2 && a[0] == a[1] => &a[0],
        Some(_) => return Err(Error::Unsupported(format!("config.json: `{path}{key}` must be square, is {x}"))),
        None => x,
    };
    x.as_u64().map(|n| n as usize).ok_or_else(|| Error::Unsupported(format!("config.json: `{path}{key}` is not a number")))
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|x| x.as_str())
}

fn expect(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Unsupported(format!("InternVL {}", what())))
    }
}

impl InternVlConfig {
    /// `None` when config.json is not an InternVL checkpoint's.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::bad_file(&path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e))?;
        let arch = v.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()).unwrap_or("");
        let model_type = str_of(&v, "model_type").unwrap_or("");
        if arch == "InternVLForConditionalGeneration" || model_type == "internvl" {
            Self::transformers(&v).map(Some)
        } else if arch == "InternVLChatModel" || model_type == "internvl_chat" {
            Self::internvl_chat(&v).map(Some)
        } else {
            Ok(None)
        }
    }

    fn transformers(v: &Value) -> Result<Self> {
        let t = field(v, "", "text_config")?;
        let mut text_json = t.clone();
        if text_json.get("architectures").is_none() {
            let arch = match str_of(t, "model_type") {
                Some("qwen2") => "Qwen2ForCausalLM",
                _ => "LlamaForCausalLM",
            };
            text_json["architectures"] = serde_json::json!([arch]);
        }
        let text = LlamaConfig::from_hf_json(&text_json.to_string())?;
        let vc = field(v, "", "vision_config")?;
        let p = "vision_config.";
        expect(str_of(vc, "norm_type").unwrap_or("layer_norm") == "layer_norm", || "vision norm_type other than layer_norm (InternViT-6B) is not supported".into())?;
        expect(!vc.get("use_qk_norm").and_then(|x| x.as_bool()).unwrap_or(false), || "vision use_qk_norm (InternViT-6B) is not supported".into())?;
        expect(vc.get("use_mean_pooling").and_then(|x| x.as_bool()).unwrap_or(true), || "vision use_mean_pooling = false (a final LayerNorm) is not supported".into())?;
        expect(str_of(vc, "hidden_act").unwrap_or("gelu") == "gelu", || "vision hidden_act other than gelu is not supported".into())?;
        expect(str_of(v, "projector_hidden_act").unwrap_or("gelu") == "gelu", || "projector_hidden_act other than gelu is not supported".into())?;
        expect(v.get("vision_feature_layer").and_then(|x| x.as_i64()).unwrap_or(-1) == -1, || "vision_feature_layer other than -1 is not supported".into())?;
        expect(str_of(v, "vision_feature_select_strategy").unwrap_or("default") == "default", || "vision_feature_select_strategy other than default is not supported".into())?;
        let vision = VisionConfig {
            hidden_size: usize_of(vc, p, "hidden_size")?,
            num_layers: usize_of(vc, p, "num_hidden_layers")?,
            num_heads: usize_of(vc, p, "num_attention_heads")?,
            intermediate_size: usize_of(vc, p, "intermediate_size")?,
            image_size: usize_of(vc, p, "image_size")?,
            patch_size: usize_of(vc, p, "patch_size")?,
            layer_norm_eps: vc.get("layer_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            downsample_ratio: v.get("downsample_ratio").and_then(|x| x.as_f64()).unwrap_or(0.5),
            text_hidden_size: text.hidden_size,
        };
        let image_token_id = v.get("image_token_id").and_then(|x| x.as_u64()).map(|x| x as u32);
        Ok(InternVlConfig { layout: Layout::Transformers, text_architecture: text.architecture.clone(), text, vision, image_token_id })
    }

    fn internvl_chat(v: &Value) -> Result<Self> {
        let llm = field(v, "", "llm_config")?;
        let llm_arch = llm.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()).unwrap_or("").to_string();
        let mut text_json = llm.clone();
        if llm_arch.starts_with("InternLM2") {
            // InternLM2's config is Llama's with its own names for a few fields.
            expect(!llm.get("bias").and_then(|x| x.as_bool()).unwrap_or(false), || "InternLM2 with bias = true is not supported".into())?;
            text_json["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
            text_json["model_type"] = serde_json::json!("llama");
            text_json["attention_bias"] = serde_json::json!(false);
        }
        let mut text = LlamaConfig::from_hf_json(&text_json.to_string())?;
        text.architecture = llm_arch.clone();
        let vc = field(v, "", "vision_config")?;
        let p = "vision_config.";
        expect(str_of(vc, "norm_type").unwrap_or("layer_norm") == "layer_norm", || "vision norm_type other than layer_norm (InternViT-6B) is not supported".into())?;
        expect(!vc.get("qk_normalization").and_then(|x| x.as_bool()).unwrap_or(false), || "vision qk_normalization (InternViT-6B) is not supported".into())?;
        expect(str_of(vc, "hidden_act").unwrap_or("gelu") == "gelu", || "vision hidden_act other than gelu is not supported".into())?;
        expect(str_of(v, "ps_version").unwrap_or("v2") == "v2", || "ps_version v1 (the older pixel shuffle) is not supported".into())?;
        expect(v.get("select_layer").and_then(|x| x.as_i64()).unwrap_or(-1) == -1, || "select_layer other than -1 is not supported".into())?;
        let image_size = usize_of(vc, p, "image_size")?;
        if let Some(force) = v.get("force_image_size").and_then(|x| x.as_u64()) {
            expect(force as usize == image_size, || format!("force_image_size {force} differs from the vision image_size {image_size} (position embeddings would need interpolating)"))?;
        }
        let vision = VisionConfig {
            hidden_size: usize_of(vc, p, "hidden_size")?,
            num_layers: usize_of(vc, p, "num_hidden_layers")?,
            num_heads: usize_of(vc, p, "num_attention_heads")?,
            intermediate_size: usize_of(vc, p, "intermediate_size")?,
            image_size,
            patch_size: usize_of(vc, p, "patch_size")?,
            layer_norm_eps: vc.get("layer_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            downsample_ratio: v.get("downsample_ratio").and_then(|x| x.as_f64()).unwrap_or(0.5),
            text_hidden_size: text.hidden_size,
        };
        Ok(InternVlConfig { layout: Layout::InternVlChat, text_architecture: llm_arch, text, vision, image_token_id: None })
    }
}

/// Where one tensor that [`Llama::load`] (`model.*`, `lm_head.*`) or [`VisionTower::load`]
/// (`vision_model.*`, `mlp1.*`) asks for comes from in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A stored tensor, as it is.
    Stored(String),
    /// Rows of InternLM2's fused `wqkv`: 0 the queries, 1 the keys, 2 the values.
    WqkvPart(String, usize),
    /// transformers' separate vision q, k and v projections, stacked into InternViT's `qkv`.
    Stacked([String; 3]),
}

/// The canonical name of every tensor and where it comes from, from the stored names alone
/// (nothing is read).
fn plan(cfg: &InternVlConfig, stored: impl IntoIterator<Item = String>) -> Result<HashMap<String, Source>> {
    let mut out = HashMap::new();
    let mut qkv: HashMap<String, [Option<String>; 3]> = HashMap::new();
    for original in stored {
        let name = original.strip_prefix("model.").filter(|n| !n.starts_with("layers.")).unwrap_or(&original).to_string();
        let renamed = match cfg.layout {
            Layout::Transformers => {
                if let Some(rest) = name.strip_prefix("language_model.") {
                    // `language_model.model.x` / `language_model.lm_head` (saved), or
                    // `language_model.x` (transformers' in-memory names, after `model.`).
                    match rest.strip_prefix("model.") {
                        Some(r) => format!("model.{r}"),
                        None if rest.starts_with("lm_head.") => rest.to_string(),
                        None => format!("model.{rest}"),
                    }
                } else if let Some(rest) = name.strip_prefix("vision_tower.") {
                    match vision_name(rest) {
                        VisionName::Plain(n) => n,
                        VisionName::Qkv(layer, part, kind) => {
                            qkv.entry(format!("vision_model.encoder.layers.{layer}.attn.qkv.{kind}")).or_default()[part] = Some(original);
                            continue;
                        }
                        VisionName::Unknown => return Err(Error::Unsupported(format!("InternVL tensor `{name}` is not known"))),
                    }
                } else if let Some(rest) = name.strip_prefix("multi_modal_projector.") {
                    rest.replacen("layer_norm.", "mlp1.0.", 1).replacen("linear_1.", "mlp1.1.", 1).replacen("linear_2.", "mlp1.3.", 1)
                } else {
                    name
                }
            }
            Layout::InternVlChat => match name.strip_prefix("language_model.") {
                Some(rest) if cfg.text_architecture.starts_with("InternLM2") => {
                    out.extend(internlm2_names(rest, &original)?);
                    continue;
                }
                Some(rest) => rest.to_string(),
                None => name,
            },
        };
        out.insert(renamed, Source::Stored(original));
    }
    for (name, parts) in qkv {
        match parts {
            [Some(q), Some(k), Some(v)] => {
                out.insert(name, Source::Stacked([q, k, v]));
            }
            _ => return Err(Error::Unsupported(format!("InternVL vision `{name}`: q, k and v are not all present"))),
        }
    }
    Ok(out)
}

enum VisionName {
    Plain(String),
    /// (layer, 0 = q / 1 = k / 2 = v, "weight" | "bias").
    Qkv(usize, usize, &'static str),
    Unknown,
}

/// transformers' InternViT names (after `vision_tower.`) → InternVL's.
fn vision_name(rest: &str) -> VisionName {
    let plain = |s: String| VisionName::Plain(format!("vision_model.{s}"));
    match rest {
        "embeddings.cls_token" => return plain("embeddings.class_embedding".into()),
        "embeddings.position_embeddings" => return plain("embeddings.position_embedding".into()),
        "embeddings.patch_embeddings.projection.weight" => return plain("embeddings.patch_embedding.weight".into()),
        "embeddings.patch_embeddings.projection.bias" => return plain("embeddings.patch_embedding.bias".into()),
        _ => {}
    }
    let Some(layer_rest) = rest.strip_prefix("encoder.layer.") else { return VisionName::Unknown };
    let Some((layer, tail)) = layer_rest.split_once('.') else { return VisionName::Unknown };
    let Ok(layer) = layer.parse::<usize>() else { return VisionName::Unknown };
    let kind = if tail.ends_with(".weight") { "weight" } else { "bias" };
    let to = match tail {
        "attention.q_proj.weight" | "attention.q_proj.bias" => return VisionName::Qkv(layer, 0, kind),
        "attention.k_proj.weight" | "attention.k_proj.bias" => return VisionName::Qkv(layer, 1, kind),
        "attention.v_proj.weight" | "attention.v_proj.bias" => return VisionName::Qkv(layer, 2, kind),
        "lambda_1" => "ls1".to_string(),
        "lambda_2" => "ls2".to_string(),
        t => {
            let t = t
                .replacen("attention.projection_layer.", "attn.proj.", 1)
                .replacen("layernorm_before.", "norm1.", 1)
                .replacen("layernorm_after.", "norm2.", 1);
            if !(t.starts_with("attn.proj.") || t.starts_with("norm1.") || t.starts_with("norm2.") || t.starts_with("mlp.fc")) {
                return VisionName::Unknown;
            }
            t
        }
    };
    plain(format!("encoder.layers.{layer}.{to}"))
}

/// One InternLM2 tensor (name after `language_model.`, stored as `stored`) under Llama's names;
/// `wqkv` becomes three.
fn internlm2_names(rest: &str, stored: &str) -> Result<Vec<(String, Source)>> {
    let one = |n: &str| Ok(vec![(n.to_string(), Source::Stored(stored.to_string()))]);
    match rest {
        "model.tok_embeddings.weight" => return one("model.embed_tokens.weight"),
        "output.weight" => return one("lm_head.weight"),
        "model.norm.weight" => return one(rest),
        _ => {}
    }
    let Some(layer_rest) = rest.strip_prefix("model.layers.") else {
        return Err(Error::Unsupported(format!("InternLM2 tensor `{rest}` is not known")));
    };
    let (layer, tail) = layer_rest.split_once('.').unwrap_or((layer_rest, ""));
    let l = |s: &str| format!("model.layers.{layer}.{s}");
    let llama = match tail {
        "attention.wqkv.weight" => {
            return Ok(["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(part, p)| (l(&format!("self_attn.{p}.weight")), Source::WqkvPart(stored.to_string(), part)))
                .collect())
        }
        "attention.wo.weight" => "self_attn.o_proj.weight",
        "feed_forward.w1.weight" => "mlp.gate_proj.weight",
        "feed_forward.w3.weight" => "mlp.up_proj.weight",
        "feed_forward.w2.weight" => "mlp.down_proj.weight",
        "attention_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return Err(Error::Unsupported(format!("InternLM2 tensor `{rest}` is not known"))),
    };
    one(&l(llama))
}

/// Part `part` (0 q, 1 k, 2 v) of an InternLM2 `wqkv` matrix, packed per key/value head: that
/// head's `g` queries, then its key, then its value, `head_dim` rows each.
fn split_wqkv(cfg: &LlamaConfig, name: &str, t: &Tensor, part: usize) -> Result<Tensor> {
    let (kv, d) = (cfg.num_kv_heads, cfg.head_dim);
    let g = cfg.num_heads / kv;
    let hidden = t.dim(1)?;
    if t.dim(0)? != kv * (g + 2) * d {
        return Err(Error::Unsupported(format!(
            "InternLM2 `{name}` has {} rows, expected {} ({kv} key/value heads × ({g} queries + 2) × {d})",
            t.dim(0)?,
            kv * (g + 2) * d
        )));
    }
    let grouped = t.reshape((kv, g + 2, d, hidden))?;
    let (start, len) = [(0, g), (g, 1), (g + 1, 1)][part];
    Ok(grouped.narrow(1, start, len)?.contiguous()?.reshape((kv * len * d, hidden))?)
}

/// The checkpoint's files, memory-mapped, read tensor by tensor under the canonical names of
/// [`plan`] as the model asks for them: nothing is held beyond the tensor being converted.
struct Checkpoint {
    files: candle_core::safetensors::MmapedSafetensors,
    plan: HashMap<String, Source>,
    text: LlamaConfig,
}

impl Checkpoint {
    fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let load = |n: &str| self.files.load(n, &Device::Cpu);
        match self.plan.get(name) {
            None => Err(candle_core::Error::CannotFindTensor { path: name.to_string() }.bt()),
            Some(Source::Stored(n)) => load(n),
            Some(Source::WqkvPart(n, part)) => {
                split_wqkv(&self.text, n, &load(n)?, *part).map_err(|e| candle_core::Error::Msg(e.to_string()))
            }
            Some(Source::Stacked([q, k, v])) => Tensor::cat(&[load(q)?, load(k)?, load(v)?], 0),
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for Checkpoint {
    fn get(&self, shape: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.read(name)?;
        if t.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape { msg: format!("shape mismatch for {name}"), expected: shape, got: t.shape().clone() }.bt());
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.plan.contains_key(name)
    }
}

/// Loads both halves of an InternVL checkpoint from its memory-mapped safetensors files.
pub fn load(cfg: &InternVlConfig, files: &[PathBuf], head: HeadSpec, dtype: DType, device: &Device) -> Result<(Llama, VisionTower)> {
    let origin = files.first().cloned().unwrap_or_else(|| PathBuf::from("<none>"));
    for f in files {
        super::check_safetensors_header(f)?;
    }
    // SAFETY: the files are memory-mapped read-only; they must not change while loaded.
    let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }.map_err(|e| Error::bad_file(&origin, e))?;
    let plan = plan(cfg, mapped.tensors().into_iter().map(|(name, _)| name))?;
    let checkpoint = Checkpoint { files: mapped, plan, text: cfg.text.clone() };
    // One source for both halves; errors name the checkpoint's (first) file.
    let w = Weights::Hf { vb: candle_nn::VarBuilder::from_backend(Box::new(checkpoint), dtype, device.clone()), origin };
    let vision = VisionTower::load(&w, cfg.vision.clone())?;
    let llama = Llama::load(&w, cfg.text.clone(), head)?;
    Ok((llama, vision))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The InternLM2 packing: per key/value head its `g` query heads, its key, its value.
    #[test]
    fn wqkv_splits_per_key_value_group() {
        let json = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10}"#;
        let cfg = LlamaConfig::from_hf_json(json).unwrap();
        let (kv, g, d, h) = (2, 2, 1, 4);
        // Row r of wqkv is filled with r.
        let rows = kv * (g + 2) * d;
        let data: Vec<f32> = (0..rows).flat_map(|r| std::iter::repeat(r as f32).take(h)).collect();
        let t = Tensor::from_vec(data, (rows, h), &Device::Cpu).unwrap();
        let names = internlm2_names("model.layers.0.attention.wqkv.weight", "language_model.model.layers.0.attention.wqkv.weight").unwrap();
        assert_eq!(names[0], ("model.layers.0.self_attn.q_proj.weight".into(), Source::WqkvPart("language_model.model.layers.0.attention.wqkv.weight".into(), 0)));
        assert_eq!(names[2].0, "model.layers.0.self_attn.v_proj.weight");
        let col = |part: usize| split_wqkv(&cfg, "wqkv", &t, part).unwrap().narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Group 0: rows 0, 1 (queries), 2 (key), 3 (value); group 1: rows 4, 5, 6, 7.
        assert_eq!(col(0), vec![0.0, 1.0, 4.0, 5.0]);
        assert_eq!(col(1), vec![2.0, 6.0]);
        assert_eq!(col(2), vec![3.0, 7.0]);
    }

    #[test]
    fn transformers_vision_names_map_to_internvl_names() {
        let n = |s: &str| match vision_name(s) {
            VisionName::Plain(p) => p,
            VisionName::Qkv(l, p, k) => format!("qkv {l} {p} {k}"),
            VisionName::Unknown => "?".into(),
        };
        assert_eq!(n("embeddings.cls_token"), "vision_model.embeddings.class_embedding");
        assert_eq!(n("encoder.layer.3.attention.k_proj.bias"), "qkv 3 1 bias");
        assert_eq!(n("encoder.layer.0.lambda_2"), "vision_model.encoder.layers.0.ls2");
        assert_eq!(n("encoder.layer.1.layernorm_after.weight"), "vision_model.encoder.layers.1.norm2.weight");
        assert_eq!(n("encoder.layer.1.mlp.fc2.bias"), "vision_model.encoder.layers.1.mlp.fc2.bias");
        assert_eq!(n("encoder.layer.1.attention.q_norm.weight"), "?");
    }
}
