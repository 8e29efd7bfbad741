//! vLLM's pooling protocol (`POST /pooling`, `/v1/pooling`) with STEP pooling: the caller has
//! built the whole prompt (no template, no documents); every position holding the profile's
//! step-tag token is scored, and each step answers `[p_neg, p_pos]` — vLLM's order for a
//! classifier-head PRM (Qwen2.5-Math-PRM), and for a label-token PRM configured with
//! `returned_token_ids` = [negative label, positive label] (vLLM keeps that order and takes a
//! softmax over the two; proto-docs/compat.md has the details and the common Math-Shepherd
//! configuration that reverses it). Errors on these routes use vLLM's shape,
//! `{"error": {"message", "type", "param", "code"}}`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::prompt::RawInput;

use super::super::error::ApiError;
use super::super::handlers::{observed_as, with_timing_headers, ApiJson};
use super::super::AppState;
use super::{model_name, response_id};

/// `input`: a prompt, a list of prompts, a list of token ids, or a list of such lists.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PoolingInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<TokenId>),
    IdLists(Vec<Vec<TokenId>>),
}

/// A token id: a JSON integer, or a number with no fractional part (`7.0`, which JSON Schema
/// counts as an integer and pydantic, behind vLLM, accepts).
#[derive(Debug, Clone, Copy)]
pub struct TokenId(u32);

impl utoipa::PartialSchema for TokenId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <u32 as utoipa::PartialSchema>::schema()
    }
}

impl ToSchema for TokenId {}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let id = match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u32::try_from(u).ok(),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64 => Some(f as u32),
            _ => None,
        };
        id.map(TokenId).ok_or_else(|| serde::de::Error::custom(format!("token id {n} is not an integer in 0..=4294967295")))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PoolingRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: PoolingInput,
    /// Only `token_classify` (or absent) is served.
    #[serde(default)]
    pub task: Option<String>,
    /// Only `float` (or absent).
    #[serde(default)]
    pub encoding_format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolingData {
    pub index: usize,
    /// `pooling`.
    pub object: String,
    /// `[p_neg, p_pos]` at every step tag of the input, in order.
    pub data: Vec<[f32; 2]>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
    /// Always null (vLLM sends the field).
    pub prompt_tokens_details: Option<serde_json::Value>,
    /// Always null (vLLM sends the field).
    pub completion_tokens_details: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolingResponse {
    /// `pool-…`.
    pub id: String,
    /// `list`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub data: Vec<PoolingData>,
    pub usage: PoolingUsage,
}

/// vLLM's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct VllmError {
    pub error: VllmErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VllmErrorDetail {
    pub message: String,
    /// `BadRequestError` (400, 413), `UnprocessableEntityError` (422), `AuthenticationError`,
    /// `NotFoundError`, `RateLimitError` (429), `ServiceUnavailableError`, `InternalServerError`.
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: u16,
}

/// The error responses of the pooling routes, in vLLM's shape (for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum PoolingErrors {
    #[response(status = 400, description = "Malformed JSON")]
    BadRequest(VllmError),
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(VllmError),
    #[response(status = 408, description = "Request body not received in time")]
    RequestTimeout(VllmError),
    #[response(status = 413, description = "Payload too large")]
    PayloadTooLarge(VllmError),
    #[response(status = 422, description = "Invalid input")]
    Validation(VllmError),
    #[response(status = 429, description = "Overloaded; see Retry-After")]
    Overloaded(VllmError),
    #[response(status = 503, description = "Model not ready")]
    NotReady(VllmError),
}

/// Our error in vLLM's shape (status and headers kept).
fn vllm_error(e: ApiError) -> Response {
    let status = e.status();
    let kind = match status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => "BadRequestError",
        StatusCode::UNPROCESSABLE_ENTITY => "UnprocessableEntityError",
        StatusCode::UNAUTHORIZED => "AuthenticationError",
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::TOO_MANY_REQUESTS => "RateLimitError",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
        _ => "InternalServerError",
    };
    let body = VllmError { error: VllmErrorDetail { message: e.message(), kind: kind.into(), param: None, code: status.as_u16() } };
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().extend(e.headers());
    resp
}

/// Step rewards of caller-built prompts under vLLM's `/v1` path: the same operation as `/pooling`.
#[utoipa::path(post, path = "/v1/pooling", request_body = PoolingRequest, tag = "compatibility",
    responses((status = 200, description = "`[p_neg, p_pos]` per step tag of each input", body = PoolingResponse), PoolingErrors))]
#[allow(dead_code)]
fn pooling_v1_doc() {}

/// Step rewards of caller-built prompts (vLLM `/pooling`, STEP pooling; also `/v1/pooling`).
#[utoipa::path(post, path = "/pooling", request_body = PoolingRequest, tag = "compatibility",
    responses((status = 200, description = "`[p_neg, p_pos]` per step tag of each input", body = PoolingResponse), PoolingErrors))]
#[tracing::instrument(skip_all, name = "pooling")]
pub async fn pooling(State(state): State<Arc<AppState>>, body: Result<ApiJson<PoolingRequest>, ApiError>) -> Response {
    observed_as(&state, "pooling", vllm_error, async {
        let start = std::time::Instant::now();
        let ApiJson(req) = body?;
        if let Some(t) = req.task.as_deref().filter(|t| *t != "token_classify") {
            return Err(ApiError::Validation(format!("task: `{t}` is not served here (token_classify only)")));
        }
        if let Some(f) = req.encoding_format.as_deref().filter(|f| *f != "float") {
            return Err(ApiError::Validation(format!("encoding_format: `{f}` is not supported (float only)")));
        }
        let inputs: Vec<RawInput> = match req.input {
            PoolingInput::Text(t) => vec![RawInput::Text(t)],
            PoolingInput::Texts(v) => v.into_iter().map(RawInput::Text).collect(),
            PoolingInput::Ids(ids) => vec![RawInput::Ids(ids.into_iter().map(|t| t.0).collect())],
            PoolingInput::IdLists(v) => v.into_iter().map(|ids| RawInput::Ids(ids.into_iter().map(|t| t.0).collect())).collect(),
        };
        if inputs.is_empty() {
            return Err(ApiError::Validation("input: must not be empty".into()));
        }
        let scored = state.infer.score_prompts(inputs).await?;
        let tokens: usize = scored.prompt_tokens.iter().sum();
        let body = PoolingResponse {
            id: response_id("pool"),
            object: "list".into(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
            model: model_name(&state, req.model),
            data: scored
                .scores
                .iter()
                .enumerate()
                .map(|(index, s)| PoolingData { index, object: "pooling".into(), data: s.iter().map(|&p| [1.0 - p, p]).collect() })
                .collect(),
            usage: PoolingUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                completion_tokens: 0,
                prompt_tokens_details: None,
                completion_tokens_details: None,
            },
        };
        Ok(with_timing_headers(Json(body).into_response(), &scored.timings, start))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_take_integral_numbers_only() {
        let ids = |json: &str| serde_json::from_str::<Vec<TokenId>>(json).map(|v| v.into_iter().map(|t| t.0).collect::<Vec<_>>());
        assert_eq!(ids("[0, 7, 7.0, 4294967295]").unwrap(), vec![0, 7, 7, u32::MAX]);
        for bad in ["[7.5]", "[-1]", "[4294967296]", "[1e300]", "[\"7\"]"] {
            assert!(ids(bad).is_err(), "{bad} accepted");
        }
    }
}
