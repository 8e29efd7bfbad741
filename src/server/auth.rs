//! `--api-key`: bearer-token check on the /v1 routes, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    if let Some(key) = &state.cfg.api_key {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| key_matches(given.as_bytes(), key.as_bytes()));
        if !ok {
            // The label the route's own metrics use: `/v2/rerank` → `rerank`.
            let path = req.uri().path().trim_start_matches('/');
            let endpoint = path.strip_prefix("v1/").or_else(|| path.strip_prefix("v2/")).unwrap_or(path).to_string();
            let e = ApiError::Unauthorized;
            state.infer.metrics().record_request(&endpoint, e.outcome(), Some(e.error_type()), start.elapsed().as_secs_f64());
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Compares in time that depends on the given key's length only: neither the configured key's
/// bytes nor its length show in the timing. `key` is never empty (checked at start-up).
fn key_matches(given: &[u8], key: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let mut ok = (given.len() as u64).ct_eq(&(key.len() as u64));
    for (i, g) in given.iter().enumerate() {
        ok &= g.ct_eq(&key[i % key.len()]);
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_matches_whole_keys_only() {
        assert!(super::key_matches(b"s3cret", b"s3cret"));
        assert!(!super::key_matches(b"s3cre", b"s3cret"));
        assert!(!super::key_matches(b"s3crets3cret", b"s3cret"), "a repeated key is not the key");
        assert!(!super::key_matches(b"s3creT", b"s3cret"));
        assert!(!super::key_matches(b"", b"s3cret"));
    }
}
