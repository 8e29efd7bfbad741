//! Request and response bodies of the REST API (documented in `proto-docs/openapi.json`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::aggregate::{Aggregation, Selection};
use crate::engine::ModelInfo;
use crate::infer::{CandidateRequest, Candidates, ImageRequest, JobRequest, Scored, ScoredCandidate};
use crate::retrieval::{Hit, IndexInfo, Mode};

pub use crate::infer::{Citation, DocumentsUsed, RetrieveOptions, Usage};

/// The schema of the texts the validator requires to be non-blank: a character other than the
/// whitespace it strips (Python's `str.strip` whitespace, [`crate::steps::py_strip`]).
pub const NON_BLANK: &str = r"[^\t\n\u000b\f\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// A count given as a JSON integer, or as a number with no fraction (`2.0`: JSON Schema calls it
/// an integer too).
pub fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    if let Some(u) = n.as_u64() {
        return usize::try_from(u).map(Some).map_err(|_| D::Error::custom(format!("{n} is too large")));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 18446744073709551616.0 => Ok(Some(f as usize)),
        _ => Err(D::Error::custom(format!("invalid value: {n}, expected a non-negative integer"))),
    }
}

/// A nested struct only from a JSON object (serde would also take an array of its fields).
pub fn object<'de, D: serde::Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(v) => from_object(v).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A list of structs, each only from a JSON object.
pub fn objects<'de, D: serde::Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    let items = Vec::<serde_json::Value>::deserialize(d)?;
    items.into_iter().enumerate().map(|(i, v)| from_object(v).map_err(|e| serde::de::Error::custom(format!("[{i}]: {e}")))).collect()
}

fn from_object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    if !v.is_object() {
        return Err(format!("invalid type: expected an object, got {v}"));
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Field schemas the derive cannot state (patterns on array items, several types at once).
pub mod rules {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    use utoipa::openapi::{Array, Object};

    fn text(nullable: bool, description: &str) -> ObjectBuilder {
        let t = if nullable { SchemaType::from_iter([Type::String, Type::Null]) } else { SchemaType::Type(Type::String) };
        ObjectBuilder::new().schema_type(t).min_length(Some(1)).pattern(Some(super::NON_BLANK)).description(Some(description))
    }

    pub fn question() -> Object {
        text(false, "The question, options included (`\"<stem>\\n\\n(A) ...\\n(B) ...\"`); not blank.").build()
    }

    pub fn solution() -> Object {
        text(
            true,
            "The solution as raw text, cut into steps by the profile's rule (`Step N:` markers for med-prm; `\\n\\nStep` for \
             meds3; blank lines for qwen2.5-math-prm, rlhflow-prm) (give `steps` or `solution`); not blank.",
        ).build()
    }

    pub fn query() -> Object {
        text(false, "The search text; not blank.").build()
    }

    pub fn steps() -> Array {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(text(false, "One step; not blank.").build())
            .min_items(Some(1))
            .description(Some("The solution as explicit steps (give `steps` or `solution`): at least one, none blank."))
            .build()
    }
}

/// Score every step of one solution.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[schema(schema_with = rules::question)]
    pub question: String,
    /// Evidence documents, most relevant first; the profile's token budget keeps a prefix of them.
    #[serde(default)]
    pub documents: Option<Vec<String>>,
    #[serde(default)]
    #[schema(schema_with = rules::steps)]
    pub steps: Option<Vec<String>>,
    #[serde(default)]
    #[schema(schema_with = rules::solution)]
    pub solution: Option<String>,
    /// Solution score reported as `score` (default: the profile's, `min` for med-prm).
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
    /// Retrieve the documents from the server's index (when `documents` is absent).
    #[serde(default, deserialize_with = "object")]
    pub retrieve: Option<RetrieveOptions>,
    /// Images of the question (vision profiles such as `visualprm`; a text-only model refuses
    /// them), at most the server's `--max-images`. Each goes where the question holds an
    /// `<image>` placeholder, in order; without placeholders they are put before the question.
    #[serde(default)]
    #[schema(nullable = false)]
    pub images: Vec<ImageData>,
}

/// An image, sent inline (the server never fetches a URL or reads a path).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageData {
    /// The file's bytes in base64 (standard alphabet).
    #[schema(min_length = 1)]
    pub data: String,
    /// `image/png`, `image/jpeg` or `application/dicom` (8/16-bit greyscale, uncompressed).
    #[schema(pattern = "^(image/png|image/jpeg|application/dicom)$")]
    pub media_type: String,
}

impl From<ImageData> for ImageRequest {
    fn from(i: ImageData) -> Self {
        ImageRequest { data: i.data, media_type: i.media_type }
    }
}

/// Search the guideline index.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrieveRequest {
    #[schema(schema_with = rules::query)]
    pub query: String,
    /// Documents to return, 1..=100 (default 5).
    #[serde(default, deserialize_with = "count")]
    #[schema(minimum = 1, maximum = 100)]
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

/// One candidate solution of a rank request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    #[serde(default)]
    #[schema(schema_with = rules::steps)]
    pub steps: Option<Vec<String>>,
    #[serde(default)]
    #[schema(schema_with = rules::solution)]
    pub solution: Option<String>,
    /// The candidate's final answer (for votes); extracted from the text when absent.
    #[serde(default)]
    pub answer: Option<String>,
}

/// Rank N candidate solutions of one question (Best-of-N).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    #[schema(schema_with = rules::question)]
    pub question: String,
    #[serde(default)]
    pub documents: Option<Vec<String>>,
    /// The candidate solutions: at least one, at most the server's `--max-candidates`.
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "objects")]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
    /// How `selected` is chosen (default: the profile's: `best_of_n`, `min_vote_sum` for meds3).
    #[serde(default)]
    pub selection: Option<Selection>,
    /// Return only the best `top_n` candidates (all are scored); at least 1.
    #[serde(default, deserialize_with = "count")]
    #[schema(minimum = 1, maximum = 18446744073709551615_u64)]
    pub top_n: Option<usize>,
    /// Retrieve the documents from the server's index (when `documents` is absent); one search
    /// shared by all candidates.
    #[serde(default, deserialize_with = "object")]
    pub retrieve: Option<RetrieveOptions>,
    /// Images of the question, shared by all candidates (see `ScoreRequest.images`).
    #[serde(default)]
    #[schema(nullable = false)]
    pub images: Vec<ImageData>,
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
    /// The aggregates of `scores` without their first `drop` steps (the profile's `drop_steps`).
    pub fn without(scores: &[f32], drop: usize) -> Self {
        Self::of(&scores[drop.min(scores.len())..])
    }

    pub fn of(scores: &[f32]) -> Self {
        Aggregates {
            min: Aggregation::Min.apply(scores),
            last: Aggregation::Last.apply(scores),
            mean: Aggregation::Mean.apply(scores),
            prod: Aggregation::Prod.apply(scores),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreResponse {
    /// The PRM profile that scored the request.
    pub profile: String,
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
    /// The PRM profile that scored the request.
    pub profile: String,
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
    /// Where retrieval searches: `embedded` (an index directory) or `postgres` (a shared
    /// database); null when the server retrieves nothing.
    pub retrieval_backend: Option<String>,
    /// The guideline index, when the server has one: its chunks, corpus, embedder and dimension.
    pub index: Option<IndexInfo>,
    /// Documents retrieved for requests without `documents` (0: only when a request asks).
    pub default_retrieve_k: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
}

impl From<ScoreRequest> for JobRequest {
    fn from(r: ScoreRequest) -> Self {
        JobRequest {
            name: "input".into(),
            question: r.question,
            candidates: Candidates::One {
                field: "body".into(),
                candidate: CandidateRequest { steps: r.steps, solution: r.solution, answer: None },
            },
            documents: r.documents,
            retrieve: r.retrieve,
            aggregation: r.aggregation,
            selection: None,
            top_n: None,
            images: r.images.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<RankRequest> for JobRequest {
    fn from(r: RankRequest) -> Self {
        JobRequest {
            name: "input".into(),
            question: r.question,
            candidates: Candidates::Many {
                field: "candidates".into(),
                candidates: r
                    .candidates
                    .into_iter()
                    .map(|c| CandidateRequest { steps: c.steps, solution: c.solution, answer: c.answer })
                    .collect(),
            },
            documents: r.documents,
            retrieve: r.retrieve,
            aggregation: r.aggregation,
            selection: r.selection,
            top_n: r.top_n,
            images: r.images.into_iter().map(Into::into).collect(),
        }
    }
}

fn step_scores(c: &ScoredCandidate) -> Vec<StepScore> {
    c.steps.iter().zip(&c.scores).enumerate().map(|(index, (text, &score))| StepScore { index, text: text.clone(), score }).collect()
}

impl From<Scored> for ScoreResponse {
    fn from(s: Scored) -> Self {
        let c = &s.candidates[0];
        ScoreResponse {
            profile: s.profile.clone(),
            steps: step_scores(c),
            aggregates: Aggregates::without(&c.scores, s.drop_steps),
            aggregation: s.aggregation,
            score: s.ranking.scores[0],
            answer: c.answer.clone(),
            documents: s.documents,
            usage: s.usage,
        }
    }
}

impl From<Scored> for RankResponse {
    fn from(s: Scored) -> Self {
        let (c, r) = (&s.candidates, &s.ranking);
        RankResponse {
            profile: s.profile.clone(),
            candidates: r
                .order
                .iter()
                .map(|&i| RankedCandidate {
                    index: i,
                    score: r.scores[i],
                    steps: step_scores(&c[i]),
                    aggregates: Aggregates::without(&c[i].scores, s.drop_steps),
                    answer: c[i].answer.clone(),
                })
                .collect(),
            selected: r.selected.map(|i| Selected { index: i, answer: c[i].answer.clone(), score: r.scores[i] }),
            selection: s.selection,
            aggregation: s.aggregation,
            documents: s.documents,
            usage: s.usage,
        }
    }
}
