//! Guideline search for the scoring core and `/v1/retrieve`: on a worker thread, through an LRU
//! cache keyed by (query, mode, k).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::retrieval::{Hit, Mode, Retriever};

use super::validate::DEFAULT_K;
use super::Infer;

/// Search results by (query, mode, k).
pub type RetrievalCache = Mutex<lru::LruCache<(String, Mode, usize), Arc<Vec<Hit>>>>;

pub fn cache(entries: usize) -> RetrievalCache {
    Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(entries.max(1)).expect("positive")))
}

impl Infer {
    /// A search request (`/v1/retrieve`): `k` defaults to 5, `mode` to the server's.
    pub async fn retrieve(&self, query: String, k: Option<usize>, mode: Option<Mode>) -> Result<Arc<Vec<Hit>>> {
        self.require_index("retrieve")?;
        if crate::steps::py_strip(&query).is_empty() {
            return Err(Error::input("query", "must not be empty"));
        }
        let k = k.unwrap_or(DEFAULT_K);
        crate::retrieval::check_k(k, "k")?;
        self.search(query, k, mode.unwrap_or(self.config().retrieve_mode)).await
    }

    /// Searches the index (through the cache): the embedded index on a worker thread; for
    /// PostgreSQL the query is embedded on a worker thread and the database awaited.
    pub(super) async fn search(&self, query: String, k: usize, mode: Mode) -> Result<Arc<Vec<Hit>>> {
        let retriever = self.retriever().cloned().ok_or(Error::NotReady)?;
        let metrics = self.metrics();
        let key = (query, mode, k);
        if let Some(hits) = self.retrieval_cache.lock().ok().and_then(|mut c| c.get(&key).cloned()) {
            metrics.retrieval_cache.with_label_values(&["hit"]).inc();
            return Ok(hits);
        }
        metrics.retrieval_cache.with_label_values(&["miss"]).inc();
        let t = Instant::now();
        let q = key.0.clone();
        let stopped = || Error::Backend("retrieval worker stopped".into());
        let hits = match retriever {
            Retriever::Embedded(index) => self.workers.run(move || index.search(&q, k, mode)).await.ok_or_else(stopped)??,
            Retriever::Postgres(pg) => {
                let vector = match mode {
                    Mode::Bm25 => None,
                    _ => {
                        let p = pg.clone();
                        let q = q.clone();
                        Some(self.workers.run(move || p.embedder().embed(&q)).await.ok_or_else(stopped)??)
                    }
                };
                let found = pg.search(&q, vector, k, mode).await?;
                if let Some(w) = found.bm25 {
                    metrics.retrieval_bm25_rounds.observe(w.rounds as f64);
                    metrics.retrieval_bm25_chunks_scored.observe(w.chunks_scored as f64);
                    if !w.proven {
                        metrics.retrieval_bm25_unproven.inc();
                    }
                }
                found.hits
            }
        };
        metrics.retrieval_duration.observe(t.elapsed().as_secs_f64());
        let hits = Arc::new(hits);
        if let Ok(mut c) = self.retrieval_cache.lock() {
            c.put(key, hits.clone());
        }
        Ok(hits)
    }
}
