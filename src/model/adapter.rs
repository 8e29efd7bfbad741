//! PEFT LoRA adapters merged into the base weights at load (`--adapter DIR`): what
//! `PeftModel.from_pretrained(base, DIR).merge_and_unload()` computes.
//!
//! * `DIR/adapter_config.json`: `peft_type` LORA, `r`, `lora_alpha`, `use_rslora` (scale
//!   `alpha / sqrt(r)` instead of `alpha / r`), `task_type`; DoRA, `fan_in_fan_out`, LoRA
//!   biases, per-module rank or alpha patterns are refused rather than merged wrongly.
//! * `DIR/adapter_model.safetensors`: tensors named `base_model.model.<module>.lora_A.weight`
//!   (r, in) and `.lora_B.weight` (out, r); every linear `<module>.weight` becomes
//!   `W + scale · B A` (computed in f32). Any other tensor is a module saved whole
//!   (`modules_to_save`, e.g. the token classifier `score`) and replaces the base's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::head::HeadKind;
use crate::error::{Error, Result};

const PREFIX: &str = "base_model.model.";

#[derive(Debug, Deserialize)]
struct AdapterConfig {
    peft_type: Option<String>,
    task_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
}

/// A LoRA adapter directory, read and checked.
pub struct Adapter {
    dir: PathBuf,
    scale: f64,
    task_type: Option<String>,
    tensors: HashMap<String, Tensor>,
}

impl Adapter {
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::bad_file(&cfg_path, e))?;
        let c: AdapterConfig = serde_json::from_str(&text).map_err(|e| Error::bad_file(&cfg_path, e))?;
        let refuse = |what: &str| Err(Error::Unsupported(format!("{}: {what}", cfg_path.display())));
        if c.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            return refuse(&format!("peft_type `{}` (only LORA adapters are merged)", c.peft_type.unwrap_or_default()));
        }
        if c.use_dora {
            return refuse("DoRA adapters (use_dora)");
        }
        if c.fan_in_fan_out {
            return refuse("fan_in_fan_out adapters");
        }
        if c.bias.as_deref().is_some_and(|b| b != "none") {
            return refuse("adapters with trained biases (bias != \"none\")");
        }
        if !c.rank_pattern.is_empty() || !c.alpha_pattern.is_empty() {
            return refuse("per-module rank_pattern / alpha_pattern");
        }
        if c.r == 0 {
            return refuse("r = 0");
        }
        let scale = if c.use_rslora { c.lora_alpha / (c.r as f64).sqrt() } else { c.lora_alpha / c.r as f64 };
        let file = dir.join("adapter_model.safetensors");
        if !file.is_file() {
            return Err(Error::MissingFile(file));
        }
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| Error::bad_file(&file, e))?;
        Ok(Adapter { dir: dir.to_path_buf(), scale, task_type: c.task_type, tensors })
    }

    /// The head the adapter's task implies (`TOKEN_CLS`: the token classifier).
    pub fn implied_head(&self) -> Option<HeadKind> {
        match self.task_type.as_deref() {
            Some("TOKEN_CLS") => Some(HeadKind::Classifier),
            Some("CAUSAL_LM") => Some(HeadKind::LabelTokens),
            _ => None,
        }
    }

    /// `base_model.model.` stripped: the Hugging Face name in the base.
    fn base_name(key: &str) -> &str {
        key.strip_prefix(PREFIX).unwrap_or(key)
    }

    /// Merges the adapter into `base` (tensors by Hugging Face name, any float dtype; merged
    /// tensors keep their dtype).
    pub fn merge_into(&self, base: &mut HashMap<String, Tensor>) -> Result<()> {
        let bad = |reason: String| Error::bad_file(self.dir.join("adapter_model.safetensors"), reason);
        let mut merged = 0usize;
        for (key, a) in &self.tensors {
            let name = Self::base_name(key);
            if name.contains("lora_embedding") || name.contains("lora_magnitude") {
                return Err(bad(format!("`{key}`: only LoRA on linear layers is merged")));
            }
            if name.ends_with(".lora_B.weight") {
                continue;
            }
            let Some(module) = name.strip_suffix(".lora_A.weight") else {
                // A module saved whole (modules_to_save).
                let t = a.clone();
                if let Some(old) = base.get(name) {
                    if old.dims() != t.dims() {
                        return Err(bad(format!("`{key}` is {:?}, the base's `{name}` {:?}", t.dims(), old.dims())));
                    }
                }
                base.insert(name.to_string(), t);
                continue;
            };
            let b_key = format!("{PREFIX}{module}.lora_B.weight");
            let b = self.tensors.get(&b_key).or_else(|| self.tensors.get(&format!("{module}.lora_B.weight")));
            let b = b.ok_or_else(|| bad(format!("`{key}` has no `{b_key}`")))?;
            let w_name = format!("{module}.weight");
            let w = base.get(&w_name).ok_or_else(|| bad(format!("the base has no `{w_name}` for `{key}`")))?;
            let (out, inp) = w.dims2()?;
            let (r_a, in_a) = a.dims2()?;
            let (out_b, r_b) = b.dims2()?;
            if (in_a, out_b, r_a) != (inp, out, r_b) {
                return Err(bad(format!(
                    "`{module}`: lora_A {:?} and lora_B {:?} do not fit the base weight {:?}",
                    a.dims(),
                    b.dims(),
                    w.dims()
                )));
            }
            let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * self.scale)?;
            let new = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
            base.insert(w_name, new);
            merged += 1;
        }
        if merged == 0 {
            return Err(bad("no LoRA weights (`*.lora_A.weight`) in the adapter".into()));
        }
        tracing::info!(adapter = %self.dir.display(), merged, scale = self.scale, "LoRA adapter merged");
        Ok(())
    }
}

/// Every tensor of safetensors files, by name.
pub fn load_all(files: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for f in files {
        out.extend(candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| Error::bad_file(f, e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, cfg: serde_json::Value, tensors: &[(&str, Tensor)]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        let map: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
        candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors")).unwrap();
    }

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn merges_w_plus_scaled_b_a_and_replaces_saved_modules() {
        let dir = std::env::temp_dir().join(format!("medprm-adapter-test-{}", std::process::id()));
        write(
            &dir,
            serde_json::json!({"peft_type": "LORA", "task_type": "TOKEN_CLS", "r": 1, "lora_alpha": 2, "bias": "none"}),
            &[
                ("base_model.model.q.lora_A.weight", t(&[1., 2.], &[1, 2])),
                ("base_model.model.q.lora_B.weight", t(&[3., -1.], &[2, 1])),
                ("base_model.model.score.weight", t(&[7., 8.], &[1, 2])),
            ],
        );
        let a = Adapter::open(&dir).unwrap();
        assert_eq!(a.implied_head(), Some(HeadKind::Classifier));
        let mut base = HashMap::new();
        base.insert("q.weight".to_string(), t(&[1., 0., 0., 1.], &[2, 2]));
        a.merge_into(&mut base).unwrap();
        // W + 2 · [[3, 6], [-1, -2]]
        assert_eq!(base["q.weight"].to_vec2::<f32>().unwrap(), vec![vec![7., 12.], vec![-2., -3.]]);
        assert_eq!(base["score.weight"].to_vec2::<f32>().unwrap(), vec![vec![7., 8.]]);
        // A target the base lacks is named.
        let mut empty = HashMap::new();
        let e = a.merge_into(&mut empty).unwrap_err().to_string();
        assert!(e.contains("`q.weight`"), "{e}");
        write(&dir, serde_json::json!({"peft_type": "LORA", "r": 1, "lora_alpha": 2, "use_dora": true}), &[]);
        assert!(Adapter::open(&dir).err().unwrap().to_string().contains("DoRA"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
