//! Retrieval over a clinical guideline corpus: the documents a PRM prompt is built from.
//!
//! * [`corpus`] reads an open-medicine-style markdown tree (one folder per guideline, one file per
//!   section, `registry.json` for the metadata) or a JSONL corpus, and cuts it into chunks of at
//!   most [`MAX_CHUNK_TOKENS`] word pieces of the embedder's tokenizer.
//! * [`embed`] is the sentence embedder (a BERT encoder such as all-MiniLM-L6-v2, mean pooling
//!   over the attention mask, L2-normalised).
//! * [`index`] writes and opens the on-disk index: chunks, a one-segment tantivy BM25 index, the
//!   embedding matrix and a manifest.
//! * [`search`] answers queries by BM25, by exact dense cosine, or by reciprocal rank fusion of
//!   both per section ([`Mode::Hybrid`], the default).
//! * [`postgres`] answers the same searches from PostgreSQL + pgvector (many replicas, one
//!   corpus of millions of chunks); [`retriever`] is the one interface serving uses over both.
//! * [`eval`] measures recall@k, MRR and latency of each mode on a labelled question set.
//!
//! Every [`Hit::text`] is rendered the way Med-PRM's documents look (the MedRAG/StatPearls chunk
//! shape), `"<title> -- <section>. <text>"`, so it can go into the prompt unchanged.

pub mod cli;
pub mod corpus;
pub mod embed;
pub mod eval;
pub mod import;
pub mod index;
pub mod postgres;
pub mod retriever;
pub mod search;

use serde::{Deserialize, Serialize};
use crate::error::{Error, Result};

pub use index::{build_index, import_index, Index};
pub use retriever::Retriever;

/// Token cap of one chunk (rendered text, word pieces of the embedder's tokenizer, no special
/// tokens). all-MiniLM-L6-v2 reads at most 256 tokens, so every chunk is embedded whole.
pub const MAX_CHUNK_TOKENS: usize = 256;

/// Largest `k` a search may ask for.
pub const MAX_K: usize = 100;

/// The one rule for a search's `k` (1..=[`MAX_K`]); `field` names it in the error.
pub fn check_k(k: usize, field: &str) -> Result<()> {
    if (1..=MAX_K).contains(&k) {
        Ok(())
    } else {
        Err(Error::input(field, format!("must be between 1 and {MAX_K}, got {k}")))
    }
}

/// How a query is matched against the chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Lexical: BM25 over stemmed words (tantivy).
    Bm25,
    /// Semantic: cosine similarity of sentence embeddings.
    Dense,
    /// Reciprocal rank fusion of the BM25 and dense rankings, per section.
    #[default]
    Hybrid,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Bm25, Mode::Dense, Mode::Hybrid];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bm25 => "bm25",
            Mode::Dense => "dense",
            Mode::Hybrid => "hybrid",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Hit {
    /// Stable chunk id: `<guideline-id>/<section-file-stem>#<n>` (JSONL corpora: `<id>#<n>`).
    pub id: String,
    /// Title of the guideline (JSONL: of the record).
    pub title: String,
    /// The document as it goes into the PRM prompt: `"<title> -- <section>. <text>"`.
    pub text: String,
    /// Where the chunk comes from: `<guideline-id>/<section-file>` (JSONL: the record's `source`,
    /// else its id).
    pub source: String,
    /// BM25 score, cosine similarity, or reciprocal-rank-fusion score, by mode.
    pub score: f32,
    /// 1-based position in the result list.
    pub rank: usize,
    /// Guideline id from the registry (JSONL: the record id).
    pub guideline: String,
    /// Section heading (JSONL: the record's `section`, else empty).
    pub section: String,
    pub organisation: Option<String>,
    pub year: Option<i32>,
    pub doi: Option<String>,
}

/// What an index holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexInfo {
    /// Number of chunks.
    pub chunks: usize,
    /// The corpus path the index was built from.
    pub corpus: String,
    /// Name of the sentence embedder.
    pub embedder: String,
    /// Embedding dimension.
    pub dimension: usize,
}

/// The retrieval query for a question, Med-PRM's practice: the question itself (stem and
/// options), optionally followed by the solution steps so that documents about the reasoning
/// are found too.
pub fn query_for(question: &str, steps: &[String], include_steps: bool) -> String {
    let mut q = question.trim().to_string();
    if include_steps {
        for s in steps {
            let s = s.trim();
            if !s.is_empty() {
                q.push('\n');
                q.push_str(s);
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_for_appends_steps_only_when_asked() {
        let steps = vec!["Step one. ".to_string(), "  ".to_string(), "Step two.".to_string()];
        assert_eq!(query_for(" Q? ", &steps, false), "Q?");
        assert_eq!(query_for(" Q? ", &steps, true), "Q?\nStep one.\nStep two.");
    }

    #[test]
    fn mode_names() {
        assert_eq!(serde_json::to_string(&Mode::Bm25).unwrap(), "\"bm25\"");
        assert_eq!(serde_json::from_str::<Mode>("\"hybrid\"").unwrap(), Mode::Hybrid);
        assert_eq!(Mode::default(), Mode::Hybrid);
        use clap::ValueEnum;
        assert_eq!(Mode::from_str("dense", false).unwrap(), Mode::Dense);
    }
}
