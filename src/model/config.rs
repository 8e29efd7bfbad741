//! Llama-family configuration: parsed from a Hugging Face `config.json` or from GGUF metadata.

use serde::Deserialize;

use crate::error::{Error, Result};

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face layout: dimension i rotates with i + d/2 (`rotate_half`).
    Half,
    /// GGUF layout (llama.cpp permutes q/k at conversion): dimension 2i rotates with 2i + 1.
    Interleaved,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// `rope_type = "llama3"` (Llama-3.1 and later).
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: f32 },
    /// `rope_type = "linear"`: positions divided by `factor`.
    Linear { factor: f32 },
    /// `rope_type = "dynamic"` (dynamic NTK, InternLM2.5): the frequencies change only for
    /// sequences longer than `max_position_embeddings`; shorter ones rotate unscaled, and the
    /// engine refuses longer ones.
    Dynamic { factor: f32 },
}

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections.
    pub attention_bias: bool,
    /// A bias on the attention output projection (Llama's `attention_bias` covers it; Qwen2 has
    /// q/k/v biases only).
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    /// Architecture name as found in the checkpoint (for /info).
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5's single place for the rotary settings (`rope_theta`, `rope_type`, and the
    /// scaling parameters), replacing `rope_theta` + `rope_scaling`.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    vocab_size: usize,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

const SUPPORTED: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "LlamaForTokenClassification",
    "MistralForTokenClassification",
    "Qwen2ForCausalLM",
    "Qwen2ForTokenClassification",
    "Qwen2ForProcessRewardModel",
];

impl LlamaConfig {
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| Error::Unsupported(format!("config.json: {e}")))?;
        let arch = c
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| c.model_type.clone())
            .unwrap_or_default();
        let known = SUPPORTED.contains(&arch.as_str())
            || matches!(c.model_type.as_deref(), Some("llama") | Some("mistral") | Some("qwen2"));
        if !known {
            return Err(Error::Unsupported(format!(
                "architecture `{arch}` (supported: {})",
                SUPPORTED.join(", ")
            )));
        }
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        if c.num_attention_heads == 0 || num_kv_heads == 0 || c.num_attention_heads % num_kv_heads != 0 {
            return Err(Error::Unsupported(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                c.num_attention_heads
            )));
        }
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        let rope_scaling = parse_rope_scaling(c.rope_scaling.as_ref().or(c.rope_parameters.as_ref()))?;
        let rope_theta = c
            .rope_theta
            .or_else(|| c.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()));
        // Qwen2: q/k/v always carry biases, the output projection never; its `sliding_window`
        // applies only with `use_sliding_window` (and then to some layers only: not supported).
        let qwen2 = c.model_type.as_deref() == Some("qwen2") || arch.starts_with("Qwen2");
        let sliding_window = if qwen2 {
            if c.use_sliding_window == Some(true) {
                return Err(Error::Unsupported("Qwen2 with use_sliding_window = true".into()));
            }
            None
        } else {
            c.sliding_window
        };
        let attention_bias = if qwen2 { true } else { c.attention_bias.unwrap_or(false) };
        Ok(LlamaConfig {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0) as f32,
            rope_scaling,
            rope_style: RopeStyle::Half,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            o_proj_bias: attention_bias && !qwen2,
            mlp_bias: c.mlp_bias.unwrap_or(false),
            sliding_window,
            architecture: arch,
        })
    }

    /// Inverse frequencies of the rotary embedding, computed in f32 in the same order of
    /// operations as Hugging Face transformers (so positions in the thousands stay bit-close).
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base = self.rope_theta;
        // As transformers: the exponent i/dim in f32, base^exponent correctly rounded to f32
        // (what torch's f32 pow gives; a platform's f32 `powf` need not be correctly rounded,
        // and an ulp of a frequency turns the angle by ~1e-4 rad at position 3000), then 1/x.
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0f32 / (base as f64).powf((i as f32 / dim as f32) as f64) as f32)
            .collect();
        match self.rope_scaling {
            RopeScaling::None | RopeScaling::Linear { .. } | RopeScaling::Dynamic { .. } => inv,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                inv.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_freq_wavelen { f / factor } else { f };
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                        let medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
                        if medium { smoothed } else { scaled }
                    })
                    .collect()
            }
        }
    }

    /// Number of weights in the transformer (embedding counted once), for FLOP estimates.
    pub fn matmul_params(&self) -> usize {
        let h = self.hidden_size;
        let kv = self.num_kv_heads * self.head_dim;
        let q = self.num_heads * self.head_dim;
        self.num_layers * (h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size)
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>) -> Result<RopeScaling> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(RopeScaling::None) };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f32> {
        v.get(k)
            .and_then(|x| x.as_f64())
            .map(|x| x as f32)
            .ok_or_else(|| Error::Unsupported(format!("rope_scaling.{k} missing for rope_type `{kind}`")))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        "dynamic" => Ok(RopeScaling::Dynamic { factor: num("factor")? }),
        other => Err(Error::Unsupported(format!("rope_scaling type `{other}` (supported: llama3, linear)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA31: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,
      "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rms_norm_eps":1e-5,
      "rope_theta":500000.0,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
      "original_max_position_embeddings":8192,"rope_type":"llama3"},"max_position_embeddings":131072,
      "vocab_size":128257,"tie_word_embeddings":false}"#;

    #[test]
    fn parses_llama31() {
        let c = LlamaConfig::from_hf_json(LLAMA31).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.num_kv_heads, 8);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        let f = c.inv_freq();
        assert_eq!(f.len(), 64);
        // Highest frequency untouched, lowest divided by the factor.
        assert_eq!(f[0], 1.0);
        let plain = 1.0f32 / 500000f32.powf(126.0 / 128.0);
        assert!((f[63] - plain / 8.0).abs() < 1e-12);
    }

    #[test]
    fn llama3_frequencies_are_bit_identical_to_transformers() {
        // transformers 5.23 / torch 2.15, ROPE_INIT_FUNCTIONS["llama3"] of this config at head_dim
        // 64 (SmolLM2's width), as f32 bits (numpy's f32 power misses 7 of these by an ulp).
        const HF: [u32; 32] = [
            0x3f800000, 0x3f29e1c6, 0x3ee177bc, 0x3e959ee3, 0x3e4693b0, 0x3e03c6a0, 0x3daee4ad, 0x3d681e67,
            0x3d1a08c8, 0x3ccc6f49, 0x3c87a9c3, 0x3c340d6d, 0x3beef74f, 0x3b9e9402, 0x3b527720, 0x3ab3d11d,
            0x3a0995d2, 0x393b2dd2, 0x38a3418d, 0x3858ac81, 0x380fc8f8, 0x37bed4f4, 0x377d45c3, 0x3728126b,
            0x36df10c4, 0x369406cb, 0x36447610, 0x36025f34, 0x35ad07a7, 0x3565a54d, 0x351864a7, 0x34ca41b0,
        ];
        let mut c = LlamaConfig::from_hf_json(LLAMA31).unwrap();
        c.head_dim = 64;
        let bits: Vec<u32> = c.inv_freq().iter().map(|f| f.to_bits()).collect();
        assert_eq!(bits, HF);
    }

    #[test]
    fn qwen2_has_qkv_biases_only_and_no_window() {
        let t = r#"{"architectures":["Qwen2ForProcessRewardModel"],"model_type":"qwen2","hidden_size":3584,
          "intermediate_size":18944,"num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,
          "rms_norm_eps":1e-6,"rope_theta":10000.0,"sliding_window":4096,"use_sliding_window":false,
          "max_position_embeddings":4096,"vocab_size":152064,"tie_word_embeddings":false}"#;
        let c = LlamaConfig::from_hf_json(t).unwrap();
        assert!(c.attention_bias && !c.o_proj_bias);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.architecture, "Qwen2ForProcessRewardModel");
        let l = LlamaConfig::from_hf_json(&LLAMA31.replace("\"rope_theta\"", "\"attention_bias\":true,\"rope_theta\"")).unwrap();
        assert!(l.attention_bias && l.o_proj_bias);
    }

    #[test]
    fn rejects_unknown_architecture() {
        let t = LLAMA31.replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
        let e = LlamaConfig::from_hf_json(&t).unwrap_err().to_string();
        assert!(e.contains("GPTNeoXForCausalLM"), "{e}");
    }
}
