//! Request and response bodies of the REST API (documented in `proto-docs/openapi.json`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::aggregate::{Aggregation, Selection};
use crate::engine::ModelInfo;
use crate::prompt::Solution;
use crate::retrieval::{Hit, IndexInfo, Mode};

use super::error::ApiError;

/// Score every step of one solution.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// The question, options included (`"<stem>\n\n(A) ...\n(B) ..."`).
    pub question: String,
    /// Evidence documents, most relevant first; the profile's token budget keeps a prefix of them.
    #[serde(default)]
    pub documents: Option<Vec<String>>,
    /// The solution as explicit steps (give `steps` or `solution`).
    #[serde(default)]
    pub steps: Option<Vec<String>>,
    /// The solution as raw text, cut into steps at `Step N:` markers (give `steps` or `solution`).
    #[serde(default)]
    pub solution: Option<String>,
    /// Solution score reported as `score` (default: the profile's, `min` for med-prm).
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
    /// Retrieve the documents from the server's index (when `documents` is absent).
    #[serde(default)]
    pub retrieve: Option<RetrieveOptions>,
}

/// Retrieval for a scoring request: one search per request, shared by all its candidates.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrieveOptions {
    /// Documents to retrieve before the budget keeps a prefix of them (default: the server's
    /// `--retrieve-k`, else 5).
    #[serde(default)]
    pub k: Option<usize>,
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Add the solution's steps to the query (the question alone is Med-PRM's practice);
    /// /v1/score only.
    #[serde(default)]
    pub include_steps: bool,
}

/// Search the guideline index.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrieveRequest {
    pub query: String,
    /// 1..=100 (default 5).
    #[serde(default)]
    pub k: Option<usize>,
    /// Default `hybrid`.
    #[serde(default)]
    pub mode: Option<Mode>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetrieveResponse {
    /// Best first; each with its text as the PRM prompt holds it, its source and metadata.
    pub documents: Vec<Hit>,
}

/// A retrieved document the budget kept: what a caller can cite.
#[derive(Debug, Serialize, ToSchema)]
pub struct Citation {
    pub id: String,
    pub title: String,
    pub source: String,
    pub rank: usize,
    pub score: f32,
}

/// One candidate solution of a rank request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    #[serde(default)]
    pub steps: Option<Vec<String>>,
    #[serde(default)]
    pub solution: Option<String>,
    /// The candidate's final answer (for votes); extracted from the text when absent.
    #[serde(default)]
    pub answer: Option<String>,
}

/// Rank N candidate solutions of one question (Best-of-N).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    pub question: String,
    #[serde(default)]
    pub documents: Option<Vec<String>>,
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
    /// How `selected` is chosen (default `best_of_n`).
    #[serde(default)]
    pub selection: Option<Selection>,
    /// Return only the best `top_n` candidates (all are scored).
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Retrieve the documents from the server's index (when `documents` is absent); one search
    /// shared by all candidates.
    #[serde(default)]
    pub retrieve: Option<RetrieveOptions>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepScore {
    pub index: usize,
    pub text: String,
    /// p(+) of this step.
    pub score: f32,
}

/// Every aggregate of the step scores (null when the solution has no step).
#[derive(Debug, Serialize, ToSchema)]
pub struct Aggregates {
    pub min: Option<f32>,
    pub last: Option<f32>,
    pub mean: Option<f32>,
    pub prod: Option<f32>,
}

impl Aggregates {
    pub fn of(scores: &[f32]) -> Self {
        Aggregates {
            min: Aggregation::Min.apply(scores),
            last: Aggregation::Last.apply(scores),
            mean: Aggregation::Mean.apply(scores),
            prod: Aggregation::Prod.apply(scores),
        }
    }
}

/// The documents the budget kept (a prefix of those supplied or retrieved).
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentsUsed {
    /// `caller`, `retrieval` or `none`.
    pub source: String,
    /// Kept retrieved documents, in prompt order (empty for caller documents).
    pub citations: Vec<Citation>,
    /// Documents supplied or retrieved before the budget.
    pub supplied: usize,
    pub kept: usize,
    /// Tokens the kept documents use (each counted with its +1), out of `budget`.
    pub tokens: usize,
    pub budget: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Prompt tokens of all candidates (a shared prefix counted for each; `x-compute-tokens`
    /// counts it once).
    pub prompt_tokens: usize,
    pub candidates: usize,
    pub steps: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreResponse {
    pub steps: Vec<StepScore>,
    pub aggregates: Aggregates,
    pub aggregation: Aggregation,
    /// The chosen aggregate (null when the solution has no step).
    pub score: Option<f32>,
    pub answer: Option<String>,
    pub documents: DocumentsUsed,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RankedCandidate {
    /// Position in the request.
    pub index: usize,
    pub score: Option<f32>,
    pub steps: Vec<StepScore>,
    pub aggregates: Aggregates,
    pub answer: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Selected {
    /// Request index of the chosen candidate (for votes: the best-scored candidate with the
    /// winning answer).
    pub index: usize,
    pub answer: Option<String>,
    pub score: Option<f32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RankResponse {
    /// Sorted by score, best first (ties keep request order; unscored last).
    pub candidates: Vec<RankedCandidate>,
    /// Null when no candidate could be selected (no candidate has a step).
    pub selected: Option<Selected>,
    pub selection: Selection,
    pub aggregation: Aggregation,
    pub documents: DocumentsUsed,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    pub max_batch_tokens: usize,
    pub max_batch_requests: usize,
    pub max_queue_delay_ms: u64,
    pub max_concurrent_requests: usize,
    pub max_input_tokens: usize,
    pub max_candidates: usize,
    pub payload_limit: usize,
    pub tokenization_workers: usize,
    /// Whether rank requests share their question+documents prefix across candidates.
    pub prefix_sharing: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InfoResponse {
    pub version: String,
    pub ready: bool,
    /// Null while the model loads.
    pub model: Option<ModelInfo>,
    pub limits: Limits,
    pub auth: bool,
    /// Where documents come from: `caller` (supplied in requests only) or `caller+retrieval`.
    pub documents_source: String,
    /// The guideline index, when the server has one.
    pub index: Option<IndexInfo>,
    /// Documents retrieved for requests without `documents` (0: only when a request asks).
    pub default_retrieve_k: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
}

/// A caller's solution: exactly one of `steps` or `solution`.
pub fn solution_of(steps: Option<Vec<String>>, solution: Option<String>, field: &str) -> Result<Solution, ApiError> {
    match (steps, solution) {
        (Some(_), Some(_)) => Err(ApiError::Validation(format!("{field}: give either `steps` or `solution`, not both"))),
        (None, None) => Err(ApiError::Validation(format!("{field}: `steps` or `solution` is required"))),
        (Some(s), None) if s.is_empty() => Err(ApiError::Validation(format!("{field}.steps: must not be empty"))),
        (Some(s), None) => Ok(Solution::Steps(s)),
        (None, Some(t)) if t.trim().is_empty() => Err(ApiError::Validation(format!("{field}.solution: must not be empty"))),
        (None, Some(t)) => Ok(Solution::Raw(t)),
    }
}
