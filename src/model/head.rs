//! Step heads: what turns the final (normed) hidden state at a scored position into the two step
//! logits `[positive, negative]`, so that p = softmax(logits)[0] for every head.
//!
//! * `label_tokens`: two rows of `lm_head` (or of the tied embedding), the positive and negative
//!   label tokens (Med-PRM, Math-Shepherd, RLHFlow). The full vocabulary is never multiplied.
//! * `classifier`: `score = Linear(hidden → 2)` with bias (transformers'
//!   `LlamaForTokenClassification` with `num_labels = 2`, MedS³); label 1 is the positive one.
//! * `score_mlp`: `score = Linear(h, h) → ReLU → Linear(h, 2)`, both with bias
//!   (`Qwen2ForProcessRewardModel`: `score.0`, `score.2`); label 1 is the positive one.
//!
//! Heads run in f32 whatever the activation dtype.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::config::LlamaConfig;
use super::llama::RowTable;
use super::Weights;
use crate::error::{Error, Result as LoadResult};

type Result<T> = candle_core::Result<T>;

/// The kind of head a profile names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    #[default]
    LabelTokens,
    Classifier,
    ScoreMlp,
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::LabelTokens => "label_tokens",
            HeadKind::Classifier => "classifier",
            HeadKind::ScoreMlp => "score_mlp",
        }
    }

    /// The head an architecture name implies, when it implies one.
    pub fn implied_by(architecture: &str) -> Option<HeadKind> {
        match architecture {
            "LlamaForTokenClassification" | "MistralForTokenClassification" | "Qwen2ForTokenClassification" => {
                Some(HeadKind::Classifier)
            }
            "Qwen2ForProcessRewardModel" => Some(HeadKind::ScoreMlp),
            "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" => Some(HeadKind::LabelTokens),
            _ => None,
        }
    }
}

/// What to load: the kind, and for `label_tokens` the ids of the positive and negative labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSpec {
    LabelTokens([u32; 2]),
    Classifier,
    ScoreMlp,
}

impl From<[u32; 2]> for HeadSpec {
    fn from(ids: [u32; 2]) -> Self {
        HeadSpec::LabelTokens(ids)
    }
}

/// A dense f32 linear layer, `x wᵀ + b`.
pub(super) struct Dense {
    /// (out, in), transposed once at load: (in, out).
    wt: Tensor,
    b: Tensor,
}

impl Dense {
    fn load(w: &Weights, name: &str, out: usize, inp: usize) -> LoadResult<Self> {
        for t in ["weight", "bias"] {
            if !w.contains(&format!("{name}.{t}")) {
                return Err(w.error(format!("`{name}.{t}` missing: the profile's head needs it")));
            }
        }
        let wt = w.get(&format!("{name}.weight"), (out, inp))?.to_dtype(DType::F32)?.t()?.contiguous()?;
        let b = w.get(&format!("{name}.bias"), out)?.to_dtype(DType::F32)?;
        Ok(Dense { wt, b })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.wt)?.broadcast_add(&self.b)
    }
}

pub(super) enum Head {
    /// (2, hidden): the positive and negative label rows.
    LabelTokens(Tensor),
    Classifier(Dense),
    ScoreMlp(Dense, Dense),
}

impl Head {
    /// Loads the head `spec` names; `embed` is the (vocab, hidden) embedding, for tied heads.
    pub(super) fn load(w: &Weights, cfg: &LlamaConfig, embed: &RowTable, spec: HeadSpec) -> LoadResult<Self> {
        let h = cfg.hidden_size;
        match spec {
            HeadSpec::LabelTokens(label_ids) => {
                let vocab = cfg.vocab_size;
                let lm_head;
                let full = if cfg.tie_word_embeddings {
                    embed
                } else if w.contains("lm_head.weight") {
                    // Only the two label rows are read (dequantized row by row when quantized).
                    lm_head = RowTable::load(w, "lm_head.weight", vocab, h)?;
                    &lm_head
                } else {
                    return Err(w.error("lm_head.weight missing and tie_word_embeddings is false"));
                };
                for id in label_ids {
                    if id as usize >= vocab {
                        return Err(Error::TokenizerMismatch(format!(
                            "label token id {id} is outside the model vocabulary ({vocab})"
                        )));
                    }
                }
                let idx = Tensor::new(&label_ids, w.device())?;
                Ok(Head::LabelTokens(full.rows(&idx)?.to_dtype(DType::F32)?))
            }
            HeadSpec::Classifier => Ok(Head::Classifier(Dense::load(w, "score", 2, h)?)),
            HeadSpec::ScoreMlp => Ok(Head::ScoreMlp(Dense::load(w, "score.0", h, h)?, Dense::load(w, "score.2", 2, h)?)),
        }
    }

    /// `[positive, negative]` logits for each row of `hidden` (rows, hidden).
    pub(super) fn logits(&self, hidden: &Tensor) -> Result<Vec<[f32; 2]>> {
        let x = hidden.to_dtype(DType::F32)?;
        let (out, positive) = match self {
            Head::LabelTokens(rows) => (x.matmul(&rows.t()?)?, 0),
            Head::Classifier(score) => (score.forward(&x)?, 1),
            Head::ScoreMlp(first, second) => (second.forward(&first.forward(&x)?.relu()?)?, 1),
        };
        Ok(out.to_vec2::<f32>()?.into_iter().map(|l| [l[positive], l[1 - positive]]).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;
    use crate::model::config::{RopeScaling, RopeStyle};

    fn cfg() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 2,
            intermediate_size: 4,
            num_layers: 0,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            rope_style: RopeStyle::Half,
            vocab_size: 3,
            max_position_embeddings: 16,
            tie_word_embeddings: true,
            attention_bias: false,
            o_proj_bias: false,
            mlp_bias: false,
            sliding_window: None,
            architecture: "test".into(),
        }
    }

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn table(v: &[f32], shape: &[usize]) -> RowTable {
        RowTable::Dense(t(v, shape))
    }

    #[test]
    fn heads_compute_by_hand() {
        let embed = table(&[1., 0., 0., 1., 1., 1.], &[3, 2]);
        let mut w = HashMap::new();
        w.insert("score.weight".to_string(), t(&[1., 2., -1., 0.5], &[2, 2]));
        w.insert("score.bias".to_string(), t(&[0.25, -0.5], &[2]));
        w.insert("score.0.weight".to_string(), t(&[1., 0., 0., -1.], &[2, 2]));
        w.insert("score.0.bias".to_string(), t(&[0., 0.5], &[2]));
        w.insert("score.2.weight".to_string(), t(&[1., 1., 2., -1.], &[2, 2]));
        w.insert("score.2.bias".to_string(), t(&[0.1, 0.2], &[2]));
        let w = Weights::from_tensors(w, DType::F32, &Device::Cpu);
        let x = t(&[2., 3.], &[1, 2]);
        let label = Head::load(&w, &cfg(), &embed, HeadSpec::LabelTokens([2, 0])).unwrap();
        assert_eq!(label.logits(&x).unwrap(), vec![[5., 2.]]);
        // score(x) = [2 + 6 + 0.25, -2 + 1.5 - 0.5] = [8.25, -1]; label 1 first.
        let cls = Head::load(&w, &cfg(), &embed, HeadSpec::Classifier).unwrap();
        assert_eq!(cls.logits(&x).unwrap(), vec![[-1., 8.25]]);
        // relu([2, -3 + 0.5]) = [2, 0]; then [2 + 0.1, 4 + 0.2].
        let mlp = Head::load(&w, &cfg(), &embed, HeadSpec::ScoreMlp).unwrap();
        let l = mlp.logits(&x).unwrap();
        assert!((l[0][0] - 4.2).abs() < 1e-6 && (l[0][1] - 2.1).abs() < 1e-6, "{l:?}");
    }

    #[test]
    fn a_missing_head_tensor_is_named() {
        let w = Weights::from_tensors(HashMap::new(), DType::F32, &Device::Cpu);
        let embed = table(&[0.; 6], &[3, 2]);
        let e = Head::load(&w, &cfg(), &embed, HeadSpec::Classifier).err().unwrap().to_string();
        assert!(e.contains("`score.weight` missing"), "{e}");
        let e = Head::load(&w, &cfg(), &embed, HeadSpec::ScoreMlp).err().unwrap().to_string();
        assert!(e.contains("`score.0.weight` missing"), "{e}");
    }
}
