//! OpenRLHF's remote reward model protocol: `POST /get_reward` with `{"query": [...],
//! "prompts": [...], "labels": [...]}` → `{"rewards": [...], "scores": [...], "extra_logs": {...}}`.
//!
//! `query[i]` is the policy's prompt and response as one string, chat markup included. The
//! response is `query[i]` minus its `prompts[i]` prefix (without `prompts`: what follows the last
//! assistant header); the question is the prompt's last user turn with the Llama-3 or ChatML
//! markup removed (detected from the text). Each sample is one scoring job through the core;
//! the reward is the profile's aggregate of the response's step scores.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use utoipa::ToSchema;

use crate::infer::{CandidateRequest, Candidates, JobRequest};

use super::super::error::{ApiError, ScoringErrors};
use super::super::handlers::{observed, ApiJson};
use super::super::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct GetRewardRequest {
    /// Prompt + response of each sample, as the policy's chat template rendered them.
    pub query: Vec<String>,
    /// The prompt of each sample (a prefix of its `query`).
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    /// Reference answers (accepted, not used: a PRM scores the steps).
    #[serde(default)]
    pub labels: Option<Vec<Option<String>>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetRewardResponse {
    /// The reward of each sample: the profile's aggregate of its step scores (0 without a step).
    pub rewards: Vec<f32>,
    /// The same values (newer OpenRLHF clients read `scores`).
    pub scores: Vec<f32>,
    pub extra_logs: ExtraLogs,
}

/// Per-sample figures, each aligned with `query`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtraLogs {
    pub steps: Vec<usize>,
    pub min_step_score: Vec<f32>,
    pub mean_step_score: Vec<f32>,
}

/// Chat markups a policy prompt may carry: (user turn start, assistant header, turn end).
const MARKUPS: [(&str, &str, &str); 2] = [
    ("<|start_header_id|>user<|end_header_id|>", "<|start_header_id|>assistant<|end_header_id|>", "<|eot_id|>"),
    ("<|im_start|>user", "<|im_start|>assistant", "<|im_end|>"),
];

/// Special-token text that may close a response or pad it.
const TRAILERS: [&str; 6] = ["<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>", "<pad>"];

/// (question, response) of one sample.
pub fn split_sample(query: &str, prompt: Option<&str>) -> (String, String) {
    let (prompt, response) = match prompt {
        Some(p) => (p, query.strip_prefix(p).unwrap_or(query)),
        None => match MARKUPS.iter().filter_map(|(_, a, _)| query.rfind(a).map(|i| (i, a.len()))).max() {
            Some((i, len)) => (&query[..i], &query[i + len..]),
            None => ("", query),
        },
    };
    (question_of(prompt), clean_response(response))
}

/// The prompt's last user turn without markup (the whole prompt when it has no known markup).
fn question_of(prompt: &str) -> String {
    for (user, _, end) in MARKUPS {
        if let Some(i) = prompt.rfind(user) {
            let turn = &prompt[i + user.len()..];
            let turn = turn.find(end).map_or(turn, |e| &turn[..e]);
            return turn.trim().to_string();
        }
    }
    prompt.trim().to_string()
}

fn clean_response(r: &str) -> String {
    let mut r = r.trim();
    while let Some(t) = TRAILERS.iter().find(|t| r.ends_with(**t)) {
        r = r[..r.len() - t.len()].trim_end();
    }
    r.trim().to_string()
}

/// Rewards of OpenRLHF samples.
#[utoipa::path(post, path = "/get_reward", request_body = GetRewardRequest, tag = "compatibility",
    responses((status = 200, description = "One reward per sample", body = GetRewardResponse), ScoringErrors))]
#[tracing::instrument(skip_all, name = "get_reward")]
pub async fn get_reward(State(state): State<Arc<AppState>>, body: Result<ApiJson<GetRewardRequest>, ApiError>) -> Response {
    observed(&state.clone(), "get_reward", async move {
        let ApiJson(req) = body?;
        if let Some(p) = &req.prompts {
            if p.len() != req.query.len() {
                return Err(ApiError::Validation(format!("prompts: {} prompts for {} queries", p.len(), req.query.len())));
            }
        }
        // Validate every sample before scoring any; an empty response scores 0 without the model.
        let mut jobs = Vec::with_capacity(req.query.len());
        for (i, q) in req.query.iter().enumerate() {
            let (question, response) = split_sample(q, req.prompts.as_ref().map(|p| p[i].as_str()));
            if response.is_empty() {
                continue;
            }
            let request = JobRequest {
                name: format!("query[{i}]"),
                question,
                candidates: Candidates::One {
                    field: format!("query[{i}]"),
                    candidate: CandidateRequest { steps: None, solution: Some(response), answer: None },
                },
                documents: None,
                retrieve: None,
                aggregation: None,
                selection: None,
                top_n: None,
                images: vec![],
            };
            jobs.push((i, state.infer.validate(request)?));
        }
        let mut set = JoinSet::new();
        for (i, job) in jobs {
            let st = state.clone();
            set.spawn(async move { (i, st.infer.score(job).await) });
        }
        let n = req.query.len();
        let (mut rewards, mut logs) = (vec![0.0; n], ExtraLogs { steps: vec![0; n], min_step_score: vec![0.0; n], mean_step_score: vec![0.0; n] });
        while let Some(done) = set.join_next().await {
            let (i, scored) = done.map_err(|e| ApiError::Backend(format!("scoring task failed: {e}")))?;
            let scored = scored?;
            let c = &scored.candidates[0];
            rewards[i] = scored.ranking.scores[0].unwrap_or(0.0);
            logs.steps[i] = c.scores.len();
            logs.min_step_score[i] = crate::aggregate::Aggregation::Min.apply(&c.scores).unwrap_or(0.0);
            logs.mean_step_score[i] = crate::aggregate::Aggregation::Mean.apply(&c.scores).unwrap_or(0.0);
        }
        Ok(Json(GetRewardResponse { scores: rewards.clone(), rewards, extra_logs: logs }).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_llama3_and_chatml_samples() {
        let p = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhich drug?\n\n(A) x\n(B) y<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        let q = format!("{p}Step 1: x is first line. Step 2: The answer is (A).<|eot_id|>");
        let want = ("Which drug?\n\n(A) x\n(B) y".to_string(), "Step 1: x is first line. Step 2: The answer is (A).".to_string());
        assert_eq!(split_sample(&q, Some(p)), want);
        assert_eq!(split_sample(&q, None), want, "split at the last assistant header");
        let p = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2?<|im_end|>\n<|im_start|>assistant\n";
        let q = format!("{p}Step 1: a.<|im_end|><|endoftext|>");
        assert_eq!(split_sample(&q, None), ("Q2?".into(), "Step 1: a.".into()));
        assert_eq!(split_sample("plain question plain answer", Some("plain question")), ("plain question".into(), "plain answer".into()));
    }
}
