//! Route handlers: each translates its JSON to a job for the scoring core ([`crate::infer`]) and
//! the result back; errors become [`ApiError`]s, timings become `x-*-time` headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::infer::{JobRequest, Scored, Timings};
use crate::metrics::{Metrics, Outcome};

use super::api::*;
use super::error::{ApiError, ScoringErrors};
use super::AppState;

/// `Json<T>` whose rejections are our error JSON (400 syntax, 413 size, 422 shape).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&read_json_body(req, state).await?).map(ApiJson)
    }
}

/// A JSON request's body, whole: 400 without a JSON content type, 413 over the payload limit,
/// 408 past `--body-timeout-s`.
async fn read_json_body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    if !json_content_type(req.headers()) {
        return Err(ApiError::BadRequest("content-type: expected `application/json`".into()));
    }
    // The whole body must arrive within --body-timeout-s (the RequestBodyTimeoutLayer bounds
    // each pause between its chunks by the same time).
    let limit = req.extensions().get::<BodyTimeout>().map_or(Duration::MAX, |t| t.0);
    let bytes = match tokio::time::timeout(limit, axum::body::Bytes::from_request(req, state)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::PayloadTooLarge("body: larger than the payload limit (--payload-limit)".into()))
        }
        Ok(Err(e)) if caused_by_timeout(&e) => return Err(ApiError::RequestTimeout),
        Ok(Err(e)) => return Err(ApiError::BadRequest(format!("body: {}", e.body_text()))),
        Err(_) => return Err(ApiError::RequestTimeout),
    };
    Ok(bytes)
}

/// A body as `T`: 400 for malformed JSON, 422 for the wrong shape.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body is a JSON object (serde would also fill a struct from an array).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b == b'[') {
        return Err(ApiError::Validation("body: invalid type: expected a JSON object, got an array".into()));
    }
    match Json::<T>::from_bytes(bytes) {
        Ok(Json(v)) => Ok(v),
        Err(rej) => Err(match rej {
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(format!("body: malformed JSON: {}", e.body_text())),
            JsonRejection::JsonDataError(e) => ApiError::Validation(format!("body: {}", e.body_text())),
            other => ApiError::BadRequest(format!("body: {}", other.body_text())),
        }),
    }
}

/// `application/json` or `application/<something>+json`, parameters allowed.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `--body-timeout-s`, carried to [`ApiJson`] as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn ms(d: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("ascii")
}

pub(crate) fn with_timing_headers(mut resp: Response, t: &Timings, start: Instant) -> Response {
    let h = resp.headers_mut();
    h.insert("x-retrieval-time", ms(t.retrieval));
    h.insert("x-tokenization-time", ms(t.tokenization));
    h.insert("x-queue-time", ms(t.queue));
    h.insert("x-inference-time", ms(t.inference));
    h.insert("x-total-time", ms(start.elapsed()));
    h.insert("x-compute-tokens", HeaderValue::from(t.compute_tokens));
    resp.extensions_mut().insert(ScoredCandidates(t.candidates));
    resp
}

/// Candidates a scoring response covered, for the access log (a response extension: never sent).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScoredCandidates(pub usize);

/// Runs a route's body and records its outcome in the metrics.
pub(crate) async fn observed(
    state: &AppState,
    endpoint: &'static str,
    body: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    observed_as(state, endpoint, IntoResponse::into_response, body).await
}

/// [`observed`] for a route whose errors take another shape (`render`).
pub(crate) async fn observed_as(
    state: &AppState,
    endpoint: &'static str,
    render: fn(ApiError) -> Response,
    body: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    let mut pending = Pending { metrics: state.infer.metrics(), endpoint, start: Instant::now(), done: false };
    let r = body.await;
    pending.done = true;
    let seconds = pending.start.elapsed().as_secs_f64();
    let m = state.infer.metrics();
    match r {
        Ok(v) => {
            m.record_request(endpoint, Outcome::Success, None, seconds);
            v
        }
        Err(e) => {
            m.record_request(endpoint, e.outcome(), Some(e.error_type()), seconds);
            if matches!(e, ApiError::Backend(_)) {
                tracing::error!(endpoint, error = ?e, "request failed in the backend");
            }
            render(e)
        }
    }
}

/// A request whose future is dropped before it ends: the client went away (hyper drops the
/// handler when the connection closes). Counted as `cancelled`, which is not a client error.
struct Pending<'a> {
    metrics: &'a Metrics,
    endpoint: &'static str,
    start: Instant,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            let seconds = self.start.elapsed().as_secs_f64();
            tracing::debug!(endpoint = self.endpoint, seconds, "client disconnected before the answer: request cancelled");
            self.metrics.record_request(self.endpoint, Outcome::Cancelled, None, seconds);
        }
    }
}

/// A scoring route: its JSON → a validated job → the core → its JSON, with timing headers.
///
/// When every candidate permit is taken the core refuses any request (each has at least one
/// candidate), so the body is then read but not parsed or validated: a refusal under overload
/// costs the least the connection allows. (The in-flight gauge never exceeds the permits taken,
/// so this never refuses a request the core would admit.)
async fn scoring<B, R>(state: &AppState, endpoint: &'static str, req: Request) -> Response
where
    B: Into<JobRequest> + serde::de::DeserializeOwned,
    R: From<Scored> + Serialize,
{
    observed(state, endpoint, async {
        let start = Instant::now();
        let bytes = read_json_body(req, &()).await?;
        if state.infer.metrics().in_flight_candidates.get() >= state.cfg.max_concurrent_requests as i64 {
            return Err(ApiError::Overloaded);
        }
        let req: B = parse_json(&bytes)?;
        let job = state.infer.validate(req.into())?;
        let scored = state.infer.score(job).await?;
        let timings = scored.timings;
        Ok(with_timing_headers(Json(R::from(scored)).into_response(), &timings, start))
    })
    .await
}

/// Score every step of one solution.
#[utoipa::path(post, path = "/v1/score", request_body = ScoreRequest, tag = "scoring",
    responses(
        (status = 200, description = "Step scores", body = ScoreResponse,
         headers(("x-tokenization-time" = String), ("x-queue-time" = String), ("x-inference-time" = String),
                 ("x-total-time" = String), ("x-compute-tokens" = String))),
        ScoringErrors,
    ))]
#[tracing::instrument(skip_all, name = "score")]
pub async fn score(State(state): State<Arc<AppState>>, req: Request) -> Response {
    scoring::<ScoreRequest, ScoreResponse>(&state, "score", req).await
}

/// Rank N candidate solutions of one question.
#[utoipa::path(post, path = "/v1/rank", request_body = RankRequest, tag = "scoring",
    responses(
        (status = 200, description = "Candidates sorted by score and the selection", body = RankResponse,
         headers(("x-tokenization-time" = String), ("x-queue-time" = String), ("x-inference-time" = String),
                 ("x-total-time" = String), ("x-compute-tokens" = String))),
        ScoringErrors,
    ))]
#[tracing::instrument(skip_all, name = "rank")]
pub async fn rank(State(state): State<Arc<AppState>>, req: Request) -> Response {
    scoring::<RankRequest, RankResponse>(&state, "rank", req).await
}

/// Search the guideline index (BM25, dense or hybrid).
#[utoipa::path(post, path = "/v1/retrieve", request_body = RetrieveRequest, tag = "retrieval",
    responses(
        (status = 200, description = "Documents, best first", body = RetrieveResponse, headers(("x-retrieval-time" = String))),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = super::error::ErrorBody),
        (status = 422, description = "Invalid input, or no index on this server", body = super::error::ErrorBody),
        (status = 503, description = "Index not open yet", body = super::error::ErrorBody),
    ))]
#[tracing::instrument(skip_all, name = "retrieve")]
pub async fn retrieve(State(state): State<Arc<AppState>>, body: Result<ApiJson<RetrieveRequest>, ApiError>) -> Response {
    observed(&state, "retrieve", async {
        let start = Instant::now();
        let ApiJson(req) = body?;
        let hits = state.infer.retrieve(req.query, req.k, req.mode).await?;
        let mut resp = Json(RetrieveResponse { documents: hits.as_ref().clone() }).into_response();
        resp.headers_mut().insert("x-retrieval-time", ms(start.elapsed()));
        Ok(resp)
    })
    .await
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into() })
}

/// Readiness: the model is loaded and warmed up (and the retrieval database answers).
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = HealthResponse), (status = 503, body = super::error::ErrorBody)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if !state.infer.is_ready() {
        return ApiError::NotReady.into_response();
    }
    if let Some(r) = state.infer.retriever() {
        if let Err(e) = r.check().await {
            return ApiError::from(e).into_response();
        }
    }
    Json(HealthResponse { status: "ready".into() }).into_response()
}

/// Model, profile, dtype, device, limits and version.
#[utoipa::path(get, path = "/info", tag = "operations", responses((status = 200, body = InfoResponse)))]
pub async fn info(State(state): State<Arc<AppState>>) -> Json<InfoResponse> {
    let c = &state.cfg;
    Json(InfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        ready: state.infer.is_ready(),
        model: state.infer.info().cloned(),
        limits: Limits {
            max_batch_tokens: c.max_batch_tokens,
            max_batch_requests: c.max_batch_requests,
            max_queue_delay_ms: c.max_queue_delay_ms,
            max_concurrent_requests: c.max_concurrent_requests,
            max_input_tokens: c.max_input_tokens,
            max_candidates: c.max_candidates,
            payload_limit: c.payload_limit(),
            tokenization_workers: c.tokenization_workers,
            prefix_sharing: !c.no_prefix_sharing,
        },
        auth: c.api_key.is_some(),
        documents_source: if c.retrieval() { "caller+retrieval" } else { "caller" }.into(),
        retrieval_backend: state.infer.retriever().map(|r| r.backend().to_string()),
        index: state.infer.retriever().map(|i| i.info()),
        default_retrieve_k: c.retrieve_k,
    })
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4"));
    (headers, state.infer.metrics().render()).into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("path: no route for {}", uri.path()))
}
