//! Route handlers. Scoring requests: validate → permits (429 when full) → prompt building and
//! tokenization on a worker thread → queue → backend → aggregate / rank → response with timing
//! headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::aggregate::{best_of_n, extract_answer, majority_vote, weighted_vote, Aggregation, Selection};
use crate::prompt::{Prompt, Solution};
use crate::retrieval::{Hit, Mode};

use super::api::*;
use super::error::ApiError;
use super::queue::Job;
use super::AppState;

/// `Json<T>` whose rejections are our error JSON (400 syntax, 413 size, 422 shape).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(match rej {
                JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(format!("body: malformed JSON: {}", e.body_text())),
                JsonRejection::JsonDataError(e) => ApiError::Validation(format!("body: {}", e.body_text())),
                JsonRejection::MissingJsonContentType(_) => {
                    ApiError::BadRequest("content-type: expected `application/json`".into())
                }
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge("body: larger than the payload limit".into())
                }
                other => ApiError::BadRequest(format!("body: {}", other.body_text())),
            }),
        }
    }
}

/// Times of one scoring request, sent back as headers.
#[derive(Default)]
struct Timings {
    retrieval: Duration,
    tokenization: Duration,
    queue: Duration,
    inference: Duration,
    compute_tokens: usize,
}

fn with_timing_headers(mut resp: Response, t: &Timings, start: Instant) -> Response {
    let ms = |d: Duration| HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("ascii");
    let h = resp.headers_mut();
    h.insert("x-retrieval-time", ms(t.retrieval));
    h.insert("x-tokenization-time", ms(t.tokenization));
    h.insert("x-queue-time", ms(t.queue));
    h.insert("x-inference-time", ms(t.inference));
    h.insert("x-total-time", ms(start.elapsed()));
    h.insert("x-compute-tokens", HeaderValue::from(t.compute_tokens));
    resp
}

/// Where a scoring request's documents come from.
enum Docs {
    Caller(Vec<String>),
    Retrieve { query: String, k: usize, mode: Mode },
}

/// `documents`, `retrieve` or the server default; `steps_query` is the solution text added to
/// the query when `retrieve.include_steps` is allowed (/v1/score).
fn resolve_docs(
    state: &AppState,
    question: &str,
    documents: Option<Vec<String>>,
    retrieve: Option<RetrieveOptions>,
    steps_query: Option<Vec<String>>,
) -> Result<Docs, ApiError> {
    let opts = match (documents, retrieve) {
        (Some(_), Some(_)) => return Err(ApiError::Validation("retrieve: give either `documents` or `retrieve`, not both".into())),
        (Some(d), None) => return Ok(Docs::Caller(d)),
        (None, Some(o)) => o,
        (None, None) if state.cfg.retrieve_k > 0 => RetrieveOptions { k: None, mode: None, include_steps: false },
        (None, None) => return Ok(Docs::Caller(vec![])),
    };
    if state.cfg.index.is_none() {
        return Err(ApiError::Validation("retrieve: this server has no guideline index (start it with --index)".into()));
    }
    let k = opts.k.unwrap_or(if state.cfg.retrieve_k > 0 { state.cfg.retrieve_k } else { 5 });
    if k == 0 || k > crate::retrieval::MAX_K {
        return Err(ApiError::Validation(format!("retrieve.k: must be between 1 and {}", crate::retrieval::MAX_K)));
    }
    let query = match (opts.include_steps, steps_query) {
        (false, _) => crate::retrieval::query_for(question, &[], false),
        (true, Some(steps)) => crate::retrieval::query_for(question, &steps, true),
        (true, None) => {
            return Err(ApiError::Validation("retrieve.include_steps: only for /v1/score (rank candidates share one search)".into()))
        }
    };
    Ok(Docs::Retrieve { query, k, mode: opts.mode.unwrap_or(state.cfg.retrieve_mode) })
}

/// Searches the index (through the LRU cache) on a worker thread.
async fn search(state: &Arc<AppState>, query: String, k: usize, mode: Mode) -> Result<Arc<Vec<Hit>>, ApiError> {
    let index = state.index.get().cloned().ok_or(ApiError::NotReady)?;
    let key = (query, mode, k);
    if let Some(hits) = state.retrieval_cache.lock().ok().and_then(|mut c| c.get(&key).cloned()) {
        state.metrics.retrieval_cache.with_label_values(&["hit"]).inc();
        return Ok(hits);
    }
    state.metrics.retrieval_cache.with_label_values(&["miss"]).inc();
    let t = Instant::now();
    let q = key.0.clone();
    let hits = state
        .workers
        .run(move || index.search(&q, k, mode))
        .await
        .ok_or_else(|| ApiError::Backend("retrieval worker stopped".into()))??;
    state.metrics.retrieval_duration.observe(t.elapsed().as_secs_f64());
    let hits = Arc::new(hits);
    if let Ok(mut c) = state.retrieval_cache.lock() {
        c.put(key, hits.clone());
    }
    Ok(hits)
}

/// What scoring a request produced.
struct Scored {
    prompts: Vec<Prompt>,
    scores: Vec<Vec<f32>>,
    documents: DocumentsUsed,
    timings: Timings,
}

/// Builds the prompts of all candidates and runs them through the queue.
async fn score_candidates(
    state: &Arc<AppState>,
    question: String,
    docs: Docs,
    solutions: Vec<(String, Solution)>,
) -> Result<Scored, ApiError> {
    let builder = state.builder().ok_or(ApiError::NotReady)?;
    let retrieving = matches!(docs, Docs::Retrieve { .. });
    if !builder.profile.uses_documents && (retrieving || matches!(&docs, Docs::Caller(d) if !d.is_empty())) {
        return Err(ApiError::Validation(format!(
            "documents: profile `{}` does not use documents",
            builder.profile.name
        )));
    }
    let n = solutions.len();
    // Permits are counted in candidates; a full server refuses at once.
    let permit = state.permits.clone().try_acquire_many_owned(n as u32).map_err(|_| ApiError::Overloaded)?;
    state.metrics.in_flight_candidates.add(n as i64);
    let _release = InFlight(state.clone(), n);

    let t_retrieval = Instant::now();
    let (documents, hits) = match docs {
        Docs::Caller(d) => (d, None),
        Docs::Retrieve { query, k, mode } => {
            let hits = search(state, query, k, mode).await?;
            (hits.iter().map(|h| h.text.clone()).collect(), Some(hits))
        }
    };
    let retrieval_time = if hits.is_some() { t_retrieval.elapsed() } else { Duration::ZERO };
    let t0 = Instant::now();
    let b = builder.clone();
    let supplied = documents.len();
    let built = state
        .workers
        .run(move || -> Result<_, ApiError> {
            let ctx = b.context(&question, &documents)?;
            let prompts = solutions
                .iter()
                .map(|(field, s)| {
                    b.prompt(&ctx, s).map_err(|e| match e {
                        crate::error::Error::Input { field: f, reason } => ApiError::Validation(format!("{field}.{f}: {reason}")),
                        other => ApiError::from(other),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ctx.n_docs_kept, ctx.document_tokens, prompts))
        })
        .await
        .ok_or_else(|| ApiError::Backend("tokenization worker stopped".into()))??;
    let (kept, doc_tokens, prompts) = built;
    let shared_prefix = if state.cfg.no_prefix_sharing {
        0
    } else {
        crate::prompt::shared_prefix_len(&prompts.iter().collect::<Vec<_>>())
    };
    let mut timings = Timings { tokenization: t0.elapsed(), retrieval: retrieval_time, ..Default::default() };
    state.metrics.tokenization_duration.observe(timings.tokenization.as_secs_f64());
    for (i, p) in prompts.iter().enumerate() {
        if p.ids.len() > state.cfg.max_input_tokens {
            let field = if n == 1 { "input".to_string() } else { format!("candidates[{i}]") };
            return Err(ApiError::Validation(format!(
                "{field}: the prompt has {} tokens, more than --max-input-tokens {}",
                p.ids.len(),
                state.cfg.max_input_tokens
            )));
        }
    }
    timings.compute_tokens = prompts.iter().map(|p| p.ids.len()).sum::<usize>() - shared_prefix * n.saturating_sub(1);
    state.metrics.input_tokens.observe(timings.compute_tokens as f64);
    state.metrics.candidates.observe(n as f64);
    state.metrics.steps.observe(prompts.iter().map(|p| p.tag_rows.len()).sum::<usize>() as f64);

    let (tx, rx) = tokio::sync::oneshot::channel();
    state.queue.append(Job { prompts, shared_prefix, enqueued: Instant::now(), reply: tx });
    // If this future is dropped (client gone), `rx` closes and the queue skips the job.
    let result = rx.await.map_err(|_| ApiError::Backend("the model backend stopped".into()))?;
    drop(permit);
    timings.queue = result.queue_time;
    timings.inference = result.inference_time;
    let scores = result.scores.map_err(ApiError::Backend)?;
    let budget = builder.profile.document_budget();
    Ok(Scored {
        prompts: result.prompts,
        scores,
        documents: DocumentsUsed {
            source: match (&hits, supplied) {
                (Some(_), _) => "retrieval",
                (None, 0) => "none",
                (None, _) => "caller",
            }
            .into(),
            citations: hits
                .iter()
                .flat_map(|h| h.iter().take(kept))
                .map(|h| Citation { id: h.id.clone(), title: h.title.clone(), source: h.source.clone(), rank: h.rank, score: h.score })
                .collect(),
            supplied,
            kept,
            tokens: doc_tokens,
            budget,
        },
        timings,
    })
}

/// Keeps the in-flight gauge right however the request ends.
struct InFlight(Arc<AppState>, usize);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight_candidates.sub(self.1 as i64);
    }
}

fn step_scores(p: &Prompt, scores: &[f32]) -> Vec<StepScore> {
    p.steps.iter().zip(scores).enumerate().map(|(index, (text, &score))| StepScore { index, text: text.clone(), score }).collect()
}

fn default_aggregation(state: &AppState) -> Aggregation {
    state.builder().map(|b| b.profile.aggregation).unwrap_or_default()
}

/// Records the outcome of a scoring endpoint.
fn observe<T: IntoResponse>(state: &AppState, endpoint: &str, start: Instant, r: Result<T, ApiError>) -> Response {
    state.metrics.request_duration.with_label_values(&[endpoint]).observe(start.elapsed().as_secs_f64());
    match r {
        Ok(v) => {
            state.metrics.successes.with_label_values(&[endpoint]).inc();
            v.into_response()
        }
        Err(e) => {
            state.metrics.failures.with_label_values(&[endpoint, e.error_type()]).inc();
            if matches!(e, ApiError::Backend(_)) {
                tracing::error!(endpoint, error = ?e, "request failed in the backend");
            }
            e.into_response()
        }
    }
}

/// Score every step of one solution.
#[utoipa::path(post, path = "/v1/score", request_body = ScoreRequest, tag = "scoring",
    responses(
        (status = 200, description = "Step scores", body = ScoreResponse,
         headers(("x-tokenization-time" = String), ("x-queue-time" = String), ("x-inference-time" = String),
                 ("x-total-time" = String), ("x-compute-tokens" = String))),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = super::error::ErrorBody),
        (status = 413, description = "Payload too large", body = super::error::ErrorBody),
        (status = 422, description = "Invalid input", body = super::error::ErrorBody),
        (status = 429, description = "Overloaded; see Retry-After", body = super::error::ErrorBody),
        (status = 503, description = "Model not ready", body = super::error::ErrorBody),
    ))]
#[tracing::instrument(skip_all, name = "score")]
pub async fn score(State(state): State<Arc<AppState>>, body: Result<ApiJson<ScoreRequest>, ApiError>) -> Response {
    let start = Instant::now();
    state.metrics.requests.with_label_values(&["score"]).inc();
    let r = async {
        let ApiJson(req) = body?;
        if !state.is_ready() {
            return Err(ApiError::NotReady);
        }
        let solution = solution_of(req.steps, req.solution, "body")?;
        let aggregation = req.aggregation.unwrap_or_else(|| default_aggregation(&state));
        let steps_query = match &solution {
            Solution::Steps(s) => s.clone(),
            Solution::Raw(t) | Solution::Tagged(t) => crate::steps::split_solution(t).steps,
        };
        let docs = resolve_docs(&state, &req.question, req.documents, req.retrieve, Some(steps_query))?;
        let scored = score_candidates(&state, req.question, docs, vec![("body".into(), solution)]).await?;
        let (p, s) = (&scored.prompts[0], &scored.scores[0]);
        let resp = ScoreResponse {
            steps: step_scores(p, s),
            aggregates: Aggregates::of(s),
            aggregation,
            score: aggregation.apply(s),
            answer: extract_answer(&p.steps.join(" ")),
            documents: scored.documents,
            usage: Usage { prompt_tokens: p.ids.len(), candidates: 1, steps: s.len() },
        };
        Ok(with_timing_headers(Json(resp).into_response(), &scored.timings, start))
    }
    .await;
    observe(&state, "score", start, r)
}

/// Rank N candidate solutions of one question.
#[utoipa::path(post, path = "/v1/rank", request_body = RankRequest, tag = "scoring",
    responses(
        (status = 200, description = "Candidates sorted by score and the selection", body = RankResponse,
         headers(("x-tokenization-time" = String), ("x-queue-time" = String), ("x-inference-time" = String),
                 ("x-total-time" = String), ("x-compute-tokens" = String))),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = super::error::ErrorBody),
        (status = 413, description = "Payload too large", body = super::error::ErrorBody),
        (status = 422, description = "Invalid input", body = super::error::ErrorBody),
        (status = 429, description = "Overloaded; see Retry-After", body = super::error::ErrorBody),
        (status = 503, description = "Model not ready", body = super::error::ErrorBody),
    ))]
#[tracing::instrument(skip_all, name = "rank")]
pub async fn rank(State(state): State<Arc<AppState>>, body: Result<ApiJson<RankRequest>, ApiError>) -> Response {
    let start = Instant::now();
    state.metrics.requests.with_label_values(&["rank"]).inc();
    let r = async {
        let ApiJson(req) = body?;
        if !state.is_ready() {
            return Err(ApiError::NotReady);
        }
        if req.candidates.is_empty() {
            return Err(ApiError::Validation("candidates: must not be empty".into()));
        }
        if req.candidates.len() > state.cfg.max_candidates {
            return Err(ApiError::Validation(format!(
                "candidates: {} candidates, more than --max-candidates {}",
                req.candidates.len(),
                state.cfg.max_candidates
            )));
        }
        if req.top_n == Some(0) {
            return Err(ApiError::Validation("top_n: must be at least 1".into()));
        }
        let aggregation = req.aggregation.unwrap_or_else(|| default_aggregation(&state));
        let selection = req.selection.unwrap_or_default();
        let mut given_answers = Vec::with_capacity(req.candidates.len());
        let mut solutions = Vec::with_capacity(req.candidates.len());
        for (i, c) in req.candidates.into_iter().enumerate() {
            let field = format!("candidates[{i}]");
            solutions.push((field.clone(), solution_of(c.steps, c.solution, &field)?));
            given_answers.push(c.answer);
        }
        let n = solutions.len();
        let docs = resolve_docs(&state, &req.question, req.documents, req.retrieve, None)?;
        let scored = score_candidates(&state, req.question, docs, solutions).await?;
        let answers: Vec<Option<String>> = given_answers
            .into_iter()
            .zip(&scored.prompts)
            .map(|(a, p)| a.map(|a| a.trim().to_string()).or_else(|| extract_answer(&p.steps.join(" "))))
            .collect();
        let agg: Vec<Option<f32>> = scored.scores.iter().map(|s| aggregation.apply(s)).collect();
        let selected = match selection {
            Selection::BestOfN => best_of_n(&agg),
            Selection::MajorityVote => majority_vote(&answers).map(|(a, first)| {
                // The best-scored candidate with the winning answer (first seen on ties).
                best_of_n(&answers.iter().zip(&agg).map(|(x, s)| if *x == a { *s } else { None }).collect::<Vec<_>>())
                    .unwrap_or(first)
            }),
            Selection::WeightedVote => weighted_vote(&answers, &agg).map(|(_, i)| i),
        }
        .map(|i| Selected { index: i, answer: answers[i].clone(), score: agg[i] });
        let mut order: Vec<usize> = (0..n).collect();
        // Best first; unscored last; ties keep request order (stable sort).
        order.sort_by(|&a, &b| match (agg[a], agg[b]) {
            (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        order.truncate(req.top_n.unwrap_or(n));
        let candidates = order
            .into_iter()
            .map(|i| RankedCandidate {
                index: i,
                score: agg[i],
                steps: step_scores(&scored.prompts[i], &scored.scores[i]),
                aggregates: Aggregates::of(&scored.scores[i]),
                answer: answers[i].clone(),
            })
            .collect();
        let usage = Usage {
            prompt_tokens: scored.prompts.iter().map(|p| p.ids.len()).sum(),
            candidates: n,
            steps: scored.scores.iter().map(Vec::len).sum(),
        };
        let resp = RankResponse { candidates, selected, selection, aggregation, documents: scored.documents, usage };
        Ok(with_timing_headers(Json(resp).into_response(), &scored.timings, start))
    }
    .await;
    observe(&state, "rank", start, r)
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
    let start = Instant::now();
    state.metrics.requests.with_label_values(&["retrieve"]).inc();
    let r = async {
        let ApiJson(req) = body?;
        if state.cfg.index.is_none() {
            return Err(ApiError::Validation("retrieve: this server has no guideline index (start it with --index)".into()));
        }
        if req.query.trim().is_empty() {
            return Err(ApiError::Validation("query: must not be empty".into()));
        }
        let k = req.k.unwrap_or(5);
        if k == 0 || k > crate::retrieval::MAX_K {
            return Err(ApiError::Validation(format!("k: must be between 1 and {}", crate::retrieval::MAX_K)));
        }
        let hits = search(&state, req.query, k, req.mode.unwrap_or(state.cfg.retrieve_mode)).await?;
        let resp = RetrieveResponse { documents: hits.as_ref().clone() };
        let mut resp = Json(resp).into_response();
        let ms = format!("{:.3}", start.elapsed().as_secs_f64() * 1e3);
        resp.headers_mut().insert("x-retrieval-time", HeaderValue::from_str(&ms).expect("ascii"));
        Ok(resp)
    }
    .await;
    observe(&state, "retrieve", start, r)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into() })
}

/// Readiness: the model is loaded and warmed up.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = HealthResponse), (status = 503, body = super::error::ErrorBody)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        Json(HealthResponse { status: "ready".into() }).into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// Model, profile, dtype, device, limits and version.
#[utoipa::path(get, path = "/info", tag = "operations", responses((status = 200, body = InfoResponse)))]
pub async fn info(State(state): State<Arc<AppState>>) -> Json<InfoResponse> {
    let c = &state.cfg;
    Json(InfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        ready: state.is_ready(),
        model: state.info.get().cloned(),
        limits: Limits {
            max_batch_tokens: c.max_batch_tokens,
            max_batch_requests: c.max_batch_requests,
            max_queue_delay_ms: c.max_queue_delay_ms,
            max_concurrent_requests: c.max_concurrent_requests,
            max_input_tokens: c.max_input_tokens,
            max_candidates: c.max_candidates,
            payload_limit: c.payload_limit,
            tokenization_workers: c.tokenization_workers,
            prefix_sharing: !c.no_prefix_sharing,
        },
        auth: c.api_key.is_some(),
        documents_source: if c.index.is_some() { "caller+retrieval" } else { "caller" }.into(),
        index: state.index.get().map(|i| i.info()),
        default_retrieve_k: c.retrieve_k,
    })
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4"));
    (headers, state.metrics.render()).into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("path: no route for {}", uri.path()))
}
