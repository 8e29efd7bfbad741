//! PRM profiles: everything that differs between PRM families is data here (prompt format, head,
//! step tag, label tokens, system prompt, prompt layout, template source, step split rule,
//! document budget, aggregation and selection), not code paths. Built-in profiles live in
//! `profiles/*.json`; `--profile FILE.json` loads another.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregation, Selection};
use crate::error::{Error, Result};
pub use crate::model::head::HeadKind;

/// How a solution is laid out in the prompt and where its steps are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// Med-PRM / Math-Shepherd: the step tag after every step, inside the user message
    /// (`user_format`); the prompt is tokenized as one text; scored at each tag.
    #[default]
    Tagged,
    /// Qwen2.5-Math-PRM: system + user (the question) + an assistant message holding the steps,
    /// each followed by the step tag (the separator token); rendered without a generation prompt,
    /// tokenized as one text; scored at each separator.
    Separator,
    /// MedS³: the chat template over the question with a generation prompt, tokenized without
    /// added special tokens; then each step (+ `step_suffix`) tokenized on its own and appended;
    /// scored at the last token of each step.
    PerStepSegments,
    /// RLHFlow: every step is a user turn (the first one `user_format` with the question), every
    /// assistant turn answers the positive label; scored at the token before each assistant
    /// answer (the one that predicts it).
    MultiTurn,
}

impl PromptFormat {
    pub fn name(self) -> &'static str {
        match self {
            PromptFormat::Tagged => "tagged",
            PromptFormat::Separator => "separator",
            PromptFormat::PerStepSegments => "per_step_segments",
            PromptFormat::MultiTurn => "multi_turn",
        }
    }
}

fn yes() -> bool {
    true
}

fn default_user_format() -> String {
    "{question}".into()
}

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
    /// Prompt layout (default `tagged`).
    #[serde(default)]
    pub format: PromptFormat,
    /// What turns a hidden state into the two step logits (default `label_tokens`).
    #[serde(default)]
    pub head: HeadKind,
    /// Text appended after every step; the token that ends it is scored (`tagged`, `separator`;
    /// empty for the other formats).
    #[serde(default)]
    pub step_tag: String,
    /// Label tokens (head `label_tokens` only): p = softmax([l(positive), l(negative)])[0].
    #[serde(default)]
    pub positive_label: String,
    #[serde(default)]
    pub negative_label: String,
    pub system_prompt: Option<String>,
    pub template: TemplateSource,
    /// With `template: model`: a built-in chat template (`templates/NAME.jinja`) rendered
    /// instead of the one the model ships (VisualPRM: InternVL's own checkpoints ship an
    /// InternLM2 template that writes BOS itself and no default system message).
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Per kept document; `{n}` is its 1-based number, `{text}` its text.
    pub document_format: String,
    /// `{documents}`, `{question}`, `{solution}` (`tagged`; the first user turn of `multi_turn`,
    /// with its first step as `{solution}`); the user message of `separator` and
    /// `per_step_segments` (`{question}` only).
    #[serde(default = "default_user_format")]
    pub user_format: String,
    /// The shared part of a rank request's prompts ends with this text (prefix sharing).
    pub shared_prefix_marker: Option<String>,
    /// Between tagged steps (and after the preamble).
    pub step_separator: String,
    /// Put before an explicit step that has no `Step N:` marker; `{n}` is its 1-based number.
    pub step_prefix: Option<String>,
    /// How a raw solution text is cut into steps: `None` is the Med-PRM rule (`Step N:` markers);
    /// otherwise the text is split on this string.
    #[serde(default)]
    pub split_on: Option<String>,
    /// With `split_on`: put before every piece that does not start with it (MedS³: `"Step"`).
    #[serde(default)]
    pub split_restore: Option<String>,
    /// With `split_on`: keep blank pieces as steps (VisualPRM's `str.split` keeps them and
    /// scores them); otherwise they are dropped.
    #[serde(default)]
    pub keep_empty_steps: bool,
    /// Whether prompt text is tokenized with the tokenizer's special tokens (BOS for Llama):
    /// Med-PRM's double BOS comes from this; MedS³ and RLHFlow tokenize without them.
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// `per_step_segments`: appended to every step before it is tokenized on its own.
    #[serde(default)]
    pub step_suffix: String,
    /// Leading steps that are scored and reported but left out of every aggregate and selection
    /// (MedS³'s root step 0).
    #[serde(default)]
    pub drop_steps: usize,
    pub uses_documents: bool,
    pub max_token_len: usize,
    pub doc_reserve: usize,
    pub aggregation: Aggregation,
    /// Selection when a rank request names none (default `best_of_n`).
    #[serde(default)]
    pub selection: Selection,
    /// How images enter the question (vision PRMs only; a profile without it takes no images).
    #[serde(default)]
    pub image: Option<ImagePrompt>,
}

/// InternVL's image layout: each image is cut into tiles and written into the question as
/// `start` + `context` × (tiles × tokens per tile) + `end`; the vision tower's features replace
/// the `context` tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePrompt {
    /// Where the caller puts an image in the question (`<image>`); the i-th placeholder is the
    /// i-th image.
    pub placeholder: String,
    /// Put before a question that has no placeholder, once per image: `{n}` is the image's
    /// 1-based number. `single_prefix` when there is one image, `multi_prefix` otherwise.
    pub single_prefix: String,
    pub multi_prefix: String,
    pub start: String,
    pub context: String,
    pub end: String,
    /// Dynamic tiling: at least `min_tiles` and at most `max_tiles` tiles (before the thumbnail).
    pub min_tiles: usize,
    pub max_tiles: usize,
    /// A whole-image thumbnail tile after the others when there is more than one.
    pub use_thumbnail: bool,
}

/// Chat templates a profile can name in `chat_template`.
const TEMPLATES: &[(&str, &str)] = &[("internvl2_5", include_str!("../templates/internvl2_5.jinja"))];

/// A built-in chat template by name.
pub fn builtin_template(name: &str) -> Option<&'static str> {
    TEMPLATES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

const BUILTIN: &[(&str, &str)] = &[
    ("med-prm", include_str!("../profiles/med-prm.json")),
    ("math-shepherd", include_str!("../profiles/math-shepherd.json")),
    ("meds3", include_str!("../profiles/meds3.json")),
    ("qwen2.5-math-prm", include_str!("../profiles/qwen2.5-math-prm.json")),
    ("rlhflow-prm", include_str!("../profiles/rlhflow-prm.json")),
    ("visualprm", include_str!("../profiles/visualprm.json")),
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
        let tagged = matches!(self.format, PromptFormat::Tagged | PromptFormat::Separator);
        if tagged && self.step_tag.trim().is_empty() {
            return bad("step_tag is empty");
        }
        if !tagged && !self.step_tag.is_empty() {
            return bad("step_tag is only for the `tagged` and `separator` formats");
        }
        let needs_solution = matches!(self.format, PromptFormat::Tagged | PromptFormat::MultiTurn);
        if !self.user_format.contains("{question}") || needs_solution != self.user_format.contains("{solution}") {
            return bad(if needs_solution {
                "user_format must contain {question} and {solution}"
            } else {
                "user_format must contain {question} and not {solution} (the steps have their own place in this format)"
            });
        }
        if tagged && self.system_prompt.as_deref().is_some_and(|s| s.contains(self.step_tag.as_str())) {
            return bad("system_prompt contains the step tag");
        }
        if (self.head == HeadKind::LabelTokens) == (self.positive_label.is_empty() || self.negative_label.is_empty()) {
            return bad("positive_label and negative_label are required by the `label_tokens` head and only by it");
        }
        if self.format != PromptFormat::Tagged && self.template == TemplateSource::None {
            return bad("this format renders the model's chat template (`template`: `model`)");
        }
        if self.format != PromptFormat::Tagged && self.uses_documents {
            return bad("only the `tagged` format has a place for documents");
        }
        if self.split_on.as_deref() == Some("") || (self.split_restore.is_some() && self.split_on.is_none()) {
            return bad("split_on must be non-empty, and split_restore needs split_on");
        }
        if self.format == PromptFormat::PerStepSegments && self.split_on.is_none() {
            return bad("the `per_step_segments` format needs split_on");
        }
        if self.doc_reserve > self.max_token_len {
            return bad("doc_reserve is larger than max_token_len");
        }
        if let Some(t) = &self.chat_template {
            if builtin_template(t).is_none() || self.template != TemplateSource::Model {
                return bad("chat_template must name a built-in template (internvl2_5) and needs `template`: `model`");
            }
        }
        if let Some(im) = &self.image {
            if im.placeholder.is_empty() || im.context.is_empty() {
                return bad("image.placeholder and image.context must not be empty");
            }
            if im.min_tiles == 0 || im.min_tiles > im.max_tiles {
                return bad("image tiles need 1 <= min_tiles <= max_tiles");
            }
            if !im.single_prefix.contains(&im.placeholder) || !im.multi_prefix.contains(&im.placeholder) {
                return bad("image.single_prefix and image.multi_prefix must contain the placeholder");
            }
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
        assert_eq!((m.format, m.head, m.drop_steps), (PromptFormat::Tagged, HeadKind::LabelTokens, 0));
        let s = Profile::load("math-shepherd").unwrap();
        assert!(s.system_prompt.is_none());
        assert!(!s.uses_documents);
        let q = Profile::load("qwen2.5-math-prm").unwrap();
        assert_eq!((q.format, q.head, q.step_tag.as_str()), (PromptFormat::Separator, HeadKind::ScoreMlp, "<extra_0>"));
        let d = Profile::load("meds3").unwrap();
        assert_eq!((d.format, d.head, d.drop_steps), (PromptFormat::PerStepSegments, HeadKind::Classifier, 1));
        assert_eq!(d.selection, Selection::MinVoteSum);
        let r = Profile::load("rlhflow-prm").unwrap();
        assert_eq!((r.format, r.head, r.positive_label.as_str()), (PromptFormat::MultiTurn, HeadKind::LabelTokens, "+"));
    }

    #[test]
    fn inconsistent_profiles_are_refused() {
        let base: serde_json::Value = serde_json::from_str(include_str!("../profiles/meds3.json")).unwrap();
        let check = |patch: serde_json::Value, want: &str| {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let p: Profile = serde_json::from_value(v).unwrap();
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        check(serde_json::json!({"step_tag": "<x>"}), "step_tag is only for");
        check(serde_json::json!({"positive_label": "+", "negative_label": "-"}), "only by it");
        check(serde_json::json!({"uses_documents": true}), "place for documents");
        check(serde_json::json!({"user_format": "{question} {solution}"}), "not {solution}");
        check(serde_json::json!({"split_on": null, "split_restore": null}), "needs split_on");
        check(serde_json::json!({"format": "separator"}), "step_tag is empty");
    }

    #[test]
    fn unknown_profile_is_an_input_error() {
        let e = Profile::load("nope").unwrap_err().to_string();
        assert!(e.contains("med-prm"), "{e}");
    }
}
