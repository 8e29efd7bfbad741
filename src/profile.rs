//! PRM profiles: everything that differs between PRM families is data here (step tag, label
//! tokens, system prompt, prompt layout, template source, document budget, aggregation), not code
//! paths. Built-in profiles live in `profiles/*.json`; `--profile FILE.json` loads another.

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregation;
use crate::error::{Error, Result};

/// Where the chat template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateSource {
    /// The model's own template (`tokenizer_config.json` or GGUF metadata), rendered with a system
    /// message (when the profile has one), the user message and `add_generation_prompt=True`.
    Model,
    /// No chat template: the prompt is the user text alone.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Text appended after every step; the token that ends it is scored.
    pub step_tag: String,
    pub positive_label: String,
    pub negative_label: String,
    pub system_prompt: Option<String>,
    pub template: TemplateSource,
    /// Per kept document; `{n}` is its 1-based number, `{text}` its text.
    pub document_format: String,
    /// `{documents}`, `{question}`, `{solution}`.
    pub user_format: String,
    /// The shared part of a rank request's prompts ends with this text (prefix sharing).
    pub shared_prefix_marker: Option<String>,
    /// Between tagged steps (and after the preamble).
    pub step_separator: String,
    /// Put before an explicit step that has no `Step N:` marker; `{n}` is its 1-based number.
    pub step_prefix: Option<String>,
    pub uses_documents: bool,
    pub max_token_len: usize,
    pub doc_reserve: usize,
    pub aggregation: Aggregation,
}

const BUILTIN: &[(&str, &str)] = &[
    ("med-prm", include_str!("../profiles/med-prm.json")),
    ("math-shepherd", include_str!("../profiles/math-shepherd.json")),
];

impl Profile {
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in profile by name, or a profile JSON file by path.
    pub fn load(name_or_path: &str) -> Result<Self> {
        let text = match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => t.to_string(),
            None => {
                let p = std::path::Path::new(name_or_path);
                if !p.is_file() {
                    return Err(Error::input(
                        "profile",
                        format!("`{name_or_path}` is neither a built-in profile ({}) nor a file", Self::builtin_names().join(", ")),
                    ));
                }
                std::fs::read_to_string(p).map_err(|e| Error::bad_file(p, e))?
            }
        };
        let p: Profile = serde_json::from_str(&text)
            .map_err(|e| Error::Profile { profile: name_or_path.into(), reason: e.to_string() })?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Err(Error::Profile { profile: self.name.clone(), reason: reason.into() });
        if self.step_tag.trim().is_empty() {
            return bad("step_tag is empty");
        }
        if !self.user_format.contains("{solution}") || !self.user_format.contains("{question}") {
            return bad("user_format must contain {question} and {solution}");
        }
        if self.system_prompt.as_deref().is_some_and(|s| s.contains(self.step_tag.as_str())) {
            return bad("system_prompt contains the step tag");
        }
        if self.doc_reserve > self.max_token_len {
            return bad("doc_reserve is larger than max_token_len");
        }
        Ok(())
    }

    /// Tokens the documents may use: `max_token_len - doc_reserve`.
    pub fn document_budget(&self) -> usize {
        self.max_token_len - self.doc_reserve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_load() {
        let m = Profile::load("med-prm").unwrap();
        assert_eq!(m.document_budget(), 3072);
        assert!(m.system_prompt.as_ref().unwrap().ends_with("after that step. "));
        let s = Profile::load("math-shepherd").unwrap();
        assert!(s.system_prompt.is_none());
        assert!(!s.uses_documents);
    }

    #[test]
    fn unknown_profile_is_an_input_error() {
        let e = Profile::load("nope").unwrap_err().to_string();
        assert!(e.contains("med-prm"), "{e}");
    }
}
