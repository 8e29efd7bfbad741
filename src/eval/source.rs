//! Where scores come from: a running medprm (`--url`, through `/v1/rank` and `/v1/score`, so
//! the deployment is measured as it is, retrieval included) or a model loaded in process
//! (`--model`, through the same validation and scoring core as the server and `medprm score`).
//! Both take the same JSON request bodies and give the same JSON responses, so one parser reads
//! either and one cache serves both.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::infer::{BatchConfig, Infer, InferConfig};
use crate::server::api::{RankRequest, RankResponse, ScoreRequest, ScoreResponse};

/// A request the scorer would not answer: the status (HTTP, or 422-like for in-process input
/// errors) and its message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub status: Option<u16>,
    pub error: String,
}

impl Refusal {
    /// Worth asking again (overloaded, not ready, connection trouble).
    fn transient(&self) -> bool {
        matches!(self.status, None | Some(429) | Some(503))
    }
}

pub enum Source {
    Url { base: String, client: reqwest::Client, api_key: Option<String> },
    Model { infer: Arc<Infer> },
}

impl Source {
    pub fn url(base: &str, api_key: Option<String>) -> Result<Source> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| Error::Backend(format!("HTTP client: {e}")))?;
        Ok(Source::Url { base: base.trim_end_matches('/').to_string(), client, api_key })
    }

    /// The scoring core of `medprm score` (no request limits), started on `engine`.
    pub fn model(engine: crate::engine::Engine, max_batch_tokens: usize) -> Source {
        let cfg = InferConfig {
            batch: BatchConfig { max_batch_tokens, max_batch_requests: usize::MAX, max_queue_delay: Duration::ZERO, fault_injection: false },
            max_concurrent_candidates: tokio::sync::Semaphore::MAX_PERMITS,
            max_candidates: usize::MAX,
            max_input_tokens: usize::MAX,
            tokenization_workers: 1,
            prefix_sharing: true,
            retrieval: false,
            retrieve_k: 0,
            retrieve_mode: Default::default(),
            retrieve_cache: 1,
            max_images: usize::MAX,
            max_image_pixels: 1 << 28,
        };
        let infer = Infer::new(cfg, Arc::new(crate::metrics::Metrics::new()));
        // The backend thread owns the engine until the process ends.
        infer.start(engine);
        Source::Model { infer: Arc::new(infer) }
    }

    /// What is scoring (`/info` of the server, or the loaded model's info): in metrics.json, the
    /// report and the cache key.
    pub async fn info(&self) -> Result<Value> {
        match self {
            Source::Url { base, client, api_key } => {
                let mut req = client.get(format!("{base}/info"));
                if let Some(k) = api_key {
                    req = req.bearer_auth(k);
                }
                let r = req.send().await.map_err(|e| Error::Backend(format!("{base}/info: {e}")))?;
                let status = r.status();
                let v: Value = r.json().await.map_err(|e| Error::Backend(format!("{base}/info: {e}")))?;
                if !status.is_success() {
                    return Err(Error::Backend(format!("{base}/info: HTTP {status}: {v}")));
                }
                if v.get("ready") == Some(&Value::Bool(false)) {
                    return Err(Error::Backend(format!("{base} is not ready (the model is loading): try again when /ready answers 200")));
                }
                Ok(v)
            }
            Source::Model { infer } => Ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "in_process": true,
                "model": infer.info(),
                "documents_source": "caller",
            })),
        }
    }

    /// The part of [`Source::info`] the scores depend on (the cache key's identity).
    pub fn identity(info: &Value) -> String {
        json!({"model": info.get("model"), "index": info.get("index"), "default_retrieve_k": info.get("default_retrieve_k")}).to_string()
    }

    /// One request (`/v1/rank` or `/v1/score`), retried while the answer is transient
    /// (429, 503, connection errors) up to five times.
    pub async fn call(&self, endpoint: &str, body: &Value) -> std::result::Result<Value, Refusal> {
        let mut wait = Duration::from_millis(250);
        let mut last = None;
        for _ in 0..5 {
            match self.call_once(endpoint, body).await {
                Ok(v) => return Ok(v),
                Err(r) if r.transient() => {
                    last = Some(r);
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(r) => return Err(r),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn call_once(&self, endpoint: &str, body: &Value) -> std::result::Result<Value, Refusal> {
        match self {
            Source::Url { base, client, api_key } => {
                let mut req = client.post(format!("{base}{endpoint}")).json(body);
                if let Some(k) = api_key {
                    req = req.bearer_auth(k);
                }
                let r = req.send().await.map_err(|e| Refusal { status: None, error: e.to_string() })?;
                let status = r.status().as_u16();
                let text = r.text().await.map_err(|e| Refusal { status: Some(status), error: e.to_string() })?;
                if status != 200 {
                    let msg = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                        .unwrap_or(text);
                    return Err(Refusal { status: Some(status), error: msg });
                }
                serde_json::from_str(&text).map_err(|e| Refusal { status: Some(status), error: format!("not JSON: {e}") })
            }
            Source::Model { infer } => {
                let refuse = |e: Error| {
                    let status = match &e {
                        Error::Input { .. } | Error::Profile { .. } => 422,
                        Error::TooLarge { .. } => 413,
                        Error::Overloaded => 429,
                        Error::NotReady => 503,
                        _ => 424,
                    };
                    Refusal { status: Some(status), error: e.to_string() }
                };
                let bad = |e: serde_json::Error| Refusal { status: Some(422), error: e.to_string() };
                let out = if endpoint == "/v1/rank" {
                    let req: RankRequest = serde_json::from_value(body.clone()).map_err(bad)?;
                    let job = infer.validate(req.into()).map_err(refuse)?;
                    serde_json::to_value(RankResponse::from(infer.score(job).await.map_err(refuse)?))
                } else {
                    let req: ScoreRequest = serde_json::from_value(body.clone()).map_err(bad)?;
                    let job = infer.validate(req.into()).map_err(refuse)?;
                    serde_json::to_value(ScoreResponse::from(infer.score(job).await.map_err(refuse)?))
                };
                out.map_err(|e| Refusal { status: Some(500), error: e.to_string() })
            }
        }
    }
}
