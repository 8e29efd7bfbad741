//! A client for one OpenAI-compatible endpoint: a concurrency limit, request timeouts, retries
//! with exponential backoff on 429, 5xx, connection errors and unusable answers (honouring
//! `Retry-After`), and request/token accounting. The run's request and cost limits are checked
//! before every request is sent.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Why a call gave up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The run's `--max-requests` or `--budget` is reached: nothing more is sent.
    #[error("stopped: {0}")]
    Stopped(String),
    /// The endpoint has no such route (404/405).
    #[error("{url}: {status} (no such endpoint)")]
    NotFound { url: String, status: u16 },
    /// A refusal that a retry would not change (400, 401, ...).
    #[error("{url}: HTTP {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    /// The label store could not be read or written, or a task of the job failed.
    #[error("{0}")]
    Store(String),
    /// Every attempt failed (the last reason).
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    Exhausted { url: String, attempts: u32, last: String },
}

/// Limits of the whole run, shared by every endpoint.
#[derive(Debug, Default)]
pub struct Budget {
    pub max_requests: Option<u64>,
    /// Dollars, with `price_per_mtok` per million tokens (prompt + completion).
    pub max_cost: Option<f64>,
    pub price_per_mtok: f64,
    sent: AtomicU64,
    tokens: AtomicU64,
}

impl Budget {
    pub fn new(max_requests: Option<u64>, max_cost: Option<f64>, price_per_mtok: f64) -> Budget {
        Budget { max_requests, max_cost, price_per_mtok, ..Default::default() }
    }

    /// Takes one request from the budget, or says why not.
    fn take(&self) -> Result<(), CallError> {
        if let Some(c) = self.max_cost {
            let spent = self.cost();
            if spent >= c {
                return Err(CallError::Stopped(format!("--budget ${c} reached (estimated ${spent:.4})")));
            }
        }
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = self.max_requests {
            if n >= m {
                self.sent.fetch_sub(1, Ordering::SeqCst);
                return Err(CallError::Stopped(format!("--max-requests {m} reached")));
            }
        }
        Ok(())
    }

    fn add_tokens(&self, t: u64) {
        self.tokens.fetch_add(t, Ordering::SeqCst);
    }

    /// Estimated dollars spent by this run's requests.
    pub fn cost(&self) -> f64 {
        self.tokens.load(Ordering::SeqCst) as f64 * self.price_per_mtok / 1e6
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// Counters of one stage (policy rollouts, one judge).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent (each attempt counts).
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    /// Calls that gave up.
    pub failures: AtomicU64,
    /// Answers taken from the store instead of the endpoint.
    pub cached: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

/// Retry settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub timeout: Duration,
    /// First backoff; doubled on every retry, capped by `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

pub struct Endpoint {
    /// "policy", "judge <name>".
    pub stage: String,
    /// The base URL (without `/v1`).
    pub base: String,
    pub model: String,
    http: reqwest::Client,
    permits: tokio::sync::Semaphore,
    retry: RetryPolicy,
    budget: Arc<Budget>,
    pub stats: Stats,
    /// 0 unknown, 1 `/v1/completions` answers, 2 it does not (use chat).
    completions: AtomicU8,
    /// The endpoint refused `n` > 1: one choice per request.
    single: std::sync::atomic::AtomicBool,
}

/// The usage of an answer: (prompt, completion) tokens.
pub fn usage_of(v: &Value) -> (u64, u64) {
    let u = v.get("usage");
    let n = |k: &str| u.and_then(|u| u.get(k)).and_then(|x| x.as_u64()).unwrap_or(0);
    (n("prompt_tokens"), n("completion_tokens"))
}

/// `Retry-After`: seconds or an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// Strips a trailing `/` and `/v1` so that paths can be appended.
pub fn base_url(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

impl Endpoint {
    pub fn new(stage: &str, url: &str, model: String, concurrency: usize, retry: RetryPolicy, budget: Arc<Budget>) -> Endpoint {
        let http = reqwest::Client::builder().timeout(retry.timeout).build().expect("reqwest client");
        Endpoint {
            stage: stage.into(),
            base: base_url(url),
            model,
            http,
            permits: tokio::sync::Semaphore::new(concurrency.max(1)),
            retry,
            budget,
            stats: Stats::default(),
            completions: AtomicU8::new(0),
            single: Default::default(),
        }
    }

    /// The first model of `GET /v1/models` (for endpoints whose model was not named).
    pub async fn discover_model(&self) -> Result<String, String> {
        let url = format!("{}/v1/models", self.base);
        let r = self.http.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
        let v: Value = r.json().await.map_err(|e| format!("{url}: {e}"))?;
        v.get("data")
            .and_then(|d| d.get(0))
            .and_then(|m| m.get("id"))
            .and_then(|i| i.as_str())
            .map(String::from)
            .ok_or_else(|| format!("{url}: no model listed"))
    }

    /// Whether `/v1/completions` is known to be absent.
    pub fn chat_only(&self) -> bool {
        self.completions.load(Ordering::SeqCst) == 2
    }

    pub fn mark_chat_only(&self) {
        if self.completions.swap(2, Ordering::SeqCst) != 2 {
            tracing::warn!("{}: {}/v1/completions is absent: rollouts go through chat completions with an assistant prefill", self.stage, self.base);
        }
    }

    /// Whether the endpoint refused `n` > 1.
    pub fn single_choice(&self) -> bool {
        self.single.load(Ordering::SeqCst)
    }

    pub fn mark_single_choice(&self) {
        if !self.single.swap(true, Ordering::SeqCst) {
            tracing::warn!("{}: {} refused `n` > 1: one rollout per request from now on", self.stage, self.base);
        }
    }

    /// POSTs `body` to `path` until `check` accepts the answer, retrying what may pass later.
    /// Returns the checked value and the answer's JSON.
    pub async fn post<T>(&self, path: &str, body: &Value, check: impl Fn(&Value) -> Result<T, String>) -> Result<(T, Value), CallError> {
        let url = format!("{}{path}", self.base);
        let mut last;
        let mut attempt = 0u32;
        loop {
            let mut wait = None;
            {
                let _permit = self.permits.acquire().await.expect("semaphore never closed");
                self.budget.take()?;
                self.stats.requests.fetch_add(1, Ordering::SeqCst);
                match self.http.post(&url).json(body).send().await {
                    Err(e) => last = if e.is_timeout() { format!("timed out after {:?}", self.retry.timeout) } else { format!("connection: {e}") },
                    Ok(r) => {
                        let status = r.status();
                        let after = retry_after(r.headers());
                        let text = r.text().await.unwrap_or_default();
                        if status.is_success() {
                            match serde_json::from_str::<Value>(&text) {
                                Ok(v) => {
                                    let (p, c) = usage_of(&v);
                                    self.stats.prompt_tokens.fetch_add(p, Ordering::SeqCst);
                                    self.stats.completion_tokens.fetch_add(c, Ordering::SeqCst);
                                    self.budget.add_tokens(p + c);
                                    match check(&v) {
                                        Ok(t) => return Ok((t, v)),
                                        Err(e) => last = format!("unusable answer: {e}"),
                                    }
                                }
                                Err(e) => last = format!("not JSON ({e}): {}", snippet(&text)),
                            }
                        } else if status.as_u16() == 404 || status.as_u16() == 405 {
                            return Err(CallError::NotFound { url, status: status.as_u16() });
                        } else if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
                            last = format!("HTTP {status}: {}", snippet(&text));
                            wait = after;
                        } else {
                            self.stats.failures.fetch_add(1, Ordering::SeqCst);
                            return Err(CallError::Refused { url, status: status.as_u16(), body: snippet(&text) });
                        }
                    }
                }
            }
            if attempt >= self.retry.max_retries {
                self.stats.failures.fetch_add(1, Ordering::SeqCst);
                return Err(CallError::Exhausted { url, attempts: attempt + 1, last });
            }
            let backoff = self.retry.backoff.saturating_mul(1 << attempt.min(16)).min(self.retry.max_backoff);
            // The server's Retry-After replaces our backoff (up to five minutes).
            let wait = wait.map_or(backoff, |w| w.min(Duration::from_secs(300)));
            tracing::debug!("{}: {url}: {last}; retrying in {wait:?}", self.stage);
            self.stats.retries.fetch_add(1, Ordering::SeqCst);
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }
}

fn snippet(t: &str) -> String {
    let t = t.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

/// The texts of an answer's choices: `text` (completions) or `message.content` (chat).
pub fn choice_texts(v: &Value) -> Result<Vec<String>, String> {
    let choices = v.get("choices").and_then(|c| c.as_array()).ok_or("no `choices` array")?;
    if choices.is_empty() {
        return Err("`choices` is empty".into());
    }
    choices
        .iter()
        .map(|c| {
            c.get("text")
                .and_then(|t| t.as_str())
                .or_else(|| c.get("message").and_then(|m| m.get("content")).and_then(|t| t.as_str()))
                .map(String::from)
                .ok_or_else(|| "a choice without `text` or `message.content`".to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_retry_after() {
        assert_eq!(base_url("http://h:1/v1/"), "http://h:1");
        assert_eq!(base_url("http://h:1"), "http://h:1");
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert("retry-after", httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn budget_stops_at_the_limit() {
        let b = Budget::new(Some(2), None, 0.0);
        assert!(b.take().is_ok() && b.take().is_ok());
        assert!(matches!(b.take(), Err(CallError::Stopped(_))));
        assert_eq!(b.sent(), 2);
        let b = Budget::new(None, Some(0.01), 10.0);
        b.add_tokens(999);
        assert!(b.take().is_ok());
        b.add_tokens(1);
        assert!(matches!(b.take(), Err(CallError::Stopped(_))));
    }

    #[test]
    fn choices() {
        let v = serde_json::json!({"choices": [{"text": "a"}, {"message": {"content": "b"}}]});
        assert_eq!(choice_texts(&v).unwrap(), vec!["a", "b"]);
        assert!(choice_texts(&serde_json::json!({"choices": []})).is_err());
        assert!(choice_texts(&serde_json::json!({"error": "x"})).is_err());
    }
}
