//! Rerank protocols: Cohere (`/v2/rerank`), Jina and vLLM (`/v1/rerank`, `/rerank`) and TEI
//! (`/rerank` with `texts`). The query is the question, each document a candidate solution; the
//! relevance score is the profile's aggregate of its step scores. The documents run as one rank
//! request, so their shared question prefix runs once.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::infer::{CandidateRequest, Candidates, JobRequest, Scored};

use super::super::error::{ApiError, ScoringErrors};
use super::super::handlers::{observed, with_timing_headers, ApiJson};
use super::super::AppState;
use super::{model_name, response_id};

/// A document to rank: a string, or an object with `text` (Jina, Cohere v1).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object { text: String },
}

/// Cohere / Jina / vLLM rerank body, or TEI's (`texts` instead of `documents`). Fields other
/// clients send (`max_tokens_per_doc`, `truncate`, `raw_scores`, ...) are accepted and ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RerankRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// The question (options included).
    pub query: String,
    /// Candidate solutions (Cohere, Jina, vLLM).
    #[serde(default)]
    pub documents: Option<Vec<RerankDocument>>,
    /// Candidate solutions (TEI); the answer is then TEI's bare array.
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    /// Return only the best `top_n` (0, as vLLM allows: all).
    #[serde(default, deserialize_with = "crate::server::api::count")]
    #[schema(minimum = 0, maximum = 18446744073709551615_u64)]
    pub top_n: Option<usize>,
    /// Include each document's text in the results (default true).
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// TEI: include each text (default false).
    #[serde(default)]
    pub return_text: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RerankDocumentText {
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResult {
    /// Position in the request's `documents`.
    pub index: usize,
    /// The profile's aggregate of the document's step scores (0 without a step).
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocumentText>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RerankUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResponse {
    pub id: String,
    pub model: String,
    pub usage: RerankUsage,
    /// Best first.
    pub results: Vec<RerankResult>,
    pub meta: serde_json::Value,
}

/// TEI's answer: one entry per text, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiRank {
    pub index: usize,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

// `rerank` answers three paths; the two below exist for the OpenAPI document only.

/// Rank candidate solutions of one question (Jina / vLLM path of `/v2/rerank`).
#[utoipa::path(post, path = "/v1/rerank", request_body = RerankRequest, tag = "compatibility",
    responses((status = 200, description = "Documents, best first", body = RerankResponse), ScoringErrors))]
#[allow(dead_code)]
fn rerank_v1_doc() {}

/// Rank candidate solutions of one question (TEI / vLLM path of `/v2/rerank`; a body with
/// `texts` is answered with TEI's bare array of `TeiRank`).
#[utoipa::path(post, path = "/rerank", request_body = RerankRequest, tag = "compatibility",
    responses((status = 200, description = "Documents, best first; with `texts`: a bare array of TeiRank", body = RerankResponse), ScoringErrors))]
#[allow(dead_code)]
fn rerank_bare_doc() {}

/// Rank candidate solutions of one question (Cohere v2 rerank; also `/v1/rerank` and `/rerank`).
#[utoipa::path(post, path = "/v2/rerank", request_body = RerankRequest, tag = "compatibility",
    responses((status = 200, description = "Documents, best first", body = RerankResponse), ScoringErrors))]
#[tracing::instrument(skip_all, name = "rerank")]
pub async fn rerank(State(state): State<Arc<AppState>>, body: Result<ApiJson<RerankRequest>, ApiError>) -> Response {
    observed(&state, "rerank", async {
        let start = std::time::Instant::now();
        let ApiJson(req) = body?;
        let (field, texts, tei) = match (req.documents, req.texts) {
            (Some(_), Some(_)) => return Err(ApiError::Validation("texts: give either `documents` or `texts`, not both".into())),
            (Some(d), None) => {
                let texts = d.into_iter().map(|d| match d {
                    RerankDocument::Text(t) | RerankDocument::Object { text: t } => t,
                });
                ("documents", texts.collect::<Vec<_>>(), false)
            }
            (None, Some(t)) => ("texts", t, true),
            (None, None) => return Err(ApiError::Validation("documents: `documents` (or TEI's `texts`) is required".into())),
        };
        let request = JobRequest {
            name: "input".into(),
            question: req.query,
            candidates: Candidates::Many {
                field: field.into(),
                candidates: texts
                    .iter()
                    .map(|t| CandidateRequest { steps: None, solution: Some(t.clone()), answer: None })
                    .collect(),
            },
            documents: None,
            retrieve: None,
            aggregation: None,
            selection: None,
            top_n: req.top_n.filter(|&n| n > 0),
            images: vec![],
        };
        let scored = state.infer.score(state.infer.validate(request)?).await?;
        let timings = scored.timings;
        let body = if tei {
            let with_text = req.return_text.unwrap_or(false);
            let ranks: Vec<TeiRank> = order(&scored)
                .map(|(index, score)| TeiRank { index, score, text: with_text.then(|| texts[index].clone()) })
                .collect();
            Json(ranks).into_response()
        } else {
            let with_docs = req.return_documents.unwrap_or(true);
            let model = model_name(&state, req.model);
            Json(RerankResponse {
                id: response_id("rerank"),
                model,
                usage: RerankUsage { prompt_tokens: scored.usage.prompt_tokens, total_tokens: scored.usage.prompt_tokens },
                results: order(&scored)
                    .map(|(index, relevance_score)| RerankResult {
                        index,
                        relevance_score,
                        document: with_docs.then(|| RerankDocumentText { text: texts[index].clone() }),
                    })
                    .collect(),
                meta: serde_json::json!({"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}),
            })
            .into_response()
        };
        Ok(with_timing_headers(body, &timings, start))
    })
    .await
}

/// (request index, score) best first, cut to `top_n`; a document without a step scores 0.
fn order(s: &Scored) -> impl Iterator<Item = (usize, f32)> + '_ {
    s.ranking.order.iter().map(|&i| (i, s.ranking.scores[i].unwrap_or(0.0)))
}
