//! The tokenizer of a model, with what prompt building needs from it: the chat template and
//! special-token strings from `tokenizer_config.json` (or GGUF metadata), and the texts that the
//! tokenizer turns into added tokens wherever they appear (to neutralise them in caller text).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

pub struct PrmTokenizer {
    inner: Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Contents of the added tokens (special or not), longest first.
    pub added_texts: Vec<String>,
}

/// Token ids of an encoded text and the byte span of every token in that text
/// (tokens added by the post-processor, like BOS, have an empty span).
pub struct Encoded {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl PrmTokenizer {
    /// `tokenizer.json` (+ `tokenizer_config.json` when present) from a directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::MissingFile(path));
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| Error::bad_file(&path, e))?;
        let mut t = Self::new(inner);
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::bad_file(&cfg_path, e))?;
            let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(&cfg_path, e))?;
            t.chat_template = match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|e| e.get("template"))
                    .and_then(|s| s.as_str())
                    .map(String::from),
                _ => None,
            };
            t.bos_token = token_string(cfg.get("bos_token"));
            t.eos_token = token_string(cfg.get("eos_token"));
        }
        Ok(t)
    }

    /// Wraps a tokenizer; truncation and padding are switched off (Hugging Face resets them per
    /// call; a stored setting would silently cut prompts).
    pub fn new(mut inner: Tokenizer) -> Self {
        inner.with_truncation(None).expect("disabling truncation cannot fail");
        inner.with_padding(None);
        let mut added_texts: Vec<String> =
            inner.get_added_tokens_decoder().values().map(|t| t.content.clone()).filter(|c| !c.is_empty()).collect();
        added_texts.sort_by_key(|s| std::cmp::Reverse(s.len()));
        added_texts.dedup();
        PrmTokenizer { inner, chat_template: None, bos_token: None, eos_token: None, added_texts }
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes one string with the post-processor's special tokens (BOS for Llama).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self.inner.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    /// Encodes one string without special tokens (`add_special_tokens=False`).
    pub fn encode_plain(&self, text: &str) -> Result<Encoded> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    /// Number of tokens of a text without special tokens.
    pub fn count(&self, text: &str) -> Result<usize> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.len())
    }

    /// The id of a text that must encode to exactly one token (label tokens).
    pub fn single_token(&self, text: &str) -> Option<u32> {
        let enc = self.inner.encode(text, false).ok()?;
        match enc.get_ids() {
            [id] => Some(*id),
            _ => None,
        }
    }

    /// The id of a label token, as the PRMs' reference code resolves it
    /// (`tokenizer.convert_tokens_to_ids("+")`): the label string looked up in the vocabulary
    /// (added tokens included), not encoded; a SentencePiece-style tokenizer encodes `"+"` as
    /// `▁+`, another token. A label that is no vocabulary entry but encodes to exactly one
    /// token resolves to that token: Med-PRM's `" +"`, which a byte-level BPE spells `Ġ+`.
    pub fn label_token(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text).or_else(|| self.single_token(text))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SentencePiece-style tokenizer (Metaspace pre-tokenizer, `▁` prepended): encoding `"+"`
    /// gives `▁+`, while `"+"` is a vocabulary entry of its own.
    fn sentencepiece_style() -> PrmTokenizer {
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "+": 1, "-": 2, "\u{2581}+": 3, "\u{2581}-": 4, "\u{2581}a": 5}, "unk_token": "<unk>"}
        });
        PrmTokenizer::new(Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn label_tokens_are_looked_up_in_the_vocabulary_not_encoded() {
        let t = sentencepiece_style();
        // The premise: encoding "+" reads another token.
        assert_eq!(t.single_token("+"), Some(3));
        assert_eq!(t.id_to_token(3).as_deref(), Some("\u{2581}+"));
        // The label resolves to the vocabulary entry "+", as convert_tokens_to_ids("+").
        assert_eq!(t.label_token("+"), Some(1));
        assert_eq!(t.label_token("-"), Some(2));
        assert_eq!(t.label_token("\u{2581}+"), Some(3));
        // No entry and more than one token: no label.
        assert_eq!(t.label_token("+ a"), None);
    }
}
