//! What the scoring core takes (a validated [`ScoreJob`]) and what it gives back ([`Scored`]).

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use crate::aggregate::{Aggregation, Ranking, Selection};
use crate::prompt::Solution;
use crate::retrieval::{Hit, Mode};

/// One question and its candidate solutions, validated: what [`super::Infer::score`] runs.
#[derive(Debug, Clone)]
pub struct ScoreJob {
    /// How errors name the job's prompt when it has one candidate (`input`, `query[2]`).
    pub name: String,
    pub question: String,
    pub candidates: Vec<Candidate>,
    pub documents: Documents,
    pub aggregation: Aggregation,
    pub selection: Selection,
    pub top_n: Option<usize>,
    /// The question's images (vision profiles only), in order.
    pub images: Vec<ImageInput>,
}

/// A caller's image: its bytes (base64-decoded, not yet read) and media type.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// How errors name it (`images[1]`).
    pub field: String,
    pub media_type: String,
    pub bytes: std::sync::Arc<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    /// How errors about this candidate name it (`body`, `candidates[3]`, `records[2].solutions[0]`).
    pub field: String,
    pub solution: Solution,
    /// The candidate's final answer as given; extracted from its steps when `None`.
    pub answer: Option<String>,
}

/// Where a job's documents come from.
#[derive(Debug, Clone)]
pub enum Documents {
    /// Supplied by the caller (possibly none).
    Caller(Vec<String>),
    /// One search of the guideline index, shared by every candidate.
    Retrieve { query: String, k: usize, mode: Mode },
}

/// A scored job: candidates in request order, their ranking, and what went into the prompts.
#[derive(Debug)]
pub struct Scored {
    /// The profile that scored it.
    pub profile: String,
    /// Leading steps of every candidate left out of its aggregates (the profile's `drop_steps`).
    pub drop_steps: usize,
    pub candidates: Vec<ScoredCandidate>,
    /// The job's aggregation and selection, as applied.
    pub aggregation: Aggregation,
    pub selection: Selection,
    pub ranking: Ranking,
    pub documents: DocumentsUsed,
    pub usage: Usage,
    pub timings: Timings,
}

#[derive(Debug)]
pub struct ScoredCandidate {
    /// The text of each scored step (without the tag).
    pub steps: Vec<String>,
    /// p(+) of each step.
    pub scores: Vec<f32>,
    pub prompt_tokens: usize,
    /// The given answer (trimmed), else the one its steps commit to.
    pub answer: Option<String>,
}

/// Prompts their caller built, scored ([`super::Infer::score_prompts`]).
#[derive(Debug)]
pub struct ScoredPrompts {
    /// p(+) at every step tag of each prompt, in input order.
    pub scores: Vec<Vec<f32>>,
    pub prompt_tokens: Vec<usize>,
    pub timings: Timings,
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

impl From<&Hit> for Citation {
    fn from(h: &Hit) -> Self {
        Citation { id: h.id.clone(), title: h.title.clone(), source: h.source.clone(), rank: h.rank, score: h.score }
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

/// Where a job's time went (the HTTP layer sends these as `x-*-time` headers).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub retrieval: Duration,
    pub tokenization: Duration,
    pub queue: Duration,
    pub inference: Duration,
    /// Tokens the forward passes computed (a shared prefix counted once).
    pub compute_tokens: usize,
    /// Candidates (sequences) the request scored.
    pub candidates: usize,
}
