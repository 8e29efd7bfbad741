//! Protocols that existing clients already speak, each translated to the same scoring core:
//! OpenRLHF's remote reward (`/get_reward`), vLLM's `/pooling`, and Cohere / Jina / TEI rerank.

pub mod openrlhf;
pub mod rerank;
pub mod pooling;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::AppState;

/// `<prefix>-<hex>`: unique within the process, unlikely to repeat across restarts.
pub fn response_id(prefix: &str) -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    format!("{prefix}-{:016x}{:04x}", nanos, SERIAL.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

/// The `model` a response names: the one the client asked for, else the loaded model.
fn model_name(state: &AppState, requested: Option<String>) -> String {
    requested.unwrap_or_else(|| state.infer.info().map(|i| i.model.clone()).unwrap_or_default())
}
