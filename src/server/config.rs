//! `medprm serve` flags; every one can also be set with its `MEDPRM_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use crate::args::ModelArgs;
use crate::infer::{BatchConfig, InferConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, env = "MEDPRM_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free port; the chosen one is printed).
    #[arg(long, env = "MEDPRM_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Padded tokens per forward pass (longest prompt × sequences).
    #[arg(long, env = "MEDPRM_MAX_BATCH_TOKENS", default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Sequences (candidates) per forward pass.
    #[arg(long, env = "MEDPRM_MAX_BATCH_REQUESTS", default_value_t = 64)]
    pub max_batch_requests: usize,
    /// How long a batch that is not full may wait for more requests (ms).
    #[arg(long, env = "MEDPRM_MAX_QUEUE_DELAY_MS", default_value_t = 0)]
    pub max_queue_delay_ms: u64,
    /// Candidates in flight (queued or running) before requests get 429.
    #[arg(long, env = "MEDPRM_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Longest prompt accepted, in tokens (longer: 422).
    #[arg(long, env = "MEDPRM_MAX_INPUT_TOKENS", default_value_t = 8192)]
    pub max_input_tokens: usize,
    /// Candidates per rank request.
    #[arg(long, env = "MEDPRM_MAX_CANDIDATES", default_value_t = 64)]
    pub max_candidates: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, env = "MEDPRM_PAYLOAD_LIMIT", default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// Threads that build and tokenize prompts.
    #[arg(long, env = "MEDPRM_TOKENIZATION_WORKERS", default_value_t = 2)]
    pub tokenization_workers: usize,
    /// Require `Authorization: Bearer <key>` on the /v1 routes (health, ready, info, metrics stay open).
    #[arg(long, env = "MEDPRM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Score every candidate of a rank request whole instead of running the shared
    /// question+documents prefix once (for comparison).
    #[arg(long, env = "MEDPRM_NO_PREFIX_SHARING")]
    pub no_prefix_sharing: bool,
    /// Guideline index built by `medprm index`: enables retrieval (`/v1/retrieve`, and `retrieve`
    /// in scoring requests). Without it the server scores caller-supplied documents only.
    #[arg(long, env = "MEDPRM_INDEX")]
    pub index: Option<PathBuf>,
    /// Retrieve this many documents for scoring requests that carry no `documents` (0: only
    /// when a request asks with `retrieve`). Needs --index.
    #[arg(long, env = "MEDPRM_RETRIEVE_K", default_value_t = 0)]
    pub retrieve_k: usize,
    /// Retrieval mode for requests that do not name one: bm25, dense or hybrid.
    #[arg(long, env = "MEDPRM_RETRIEVE_MODE", value_enum, default_value = "hybrid")]
    pub retrieve_mode: crate::retrieval::Mode,
    /// Entries of the retrieval cache, keyed by (query, mode, k).
    #[arg(long, env = "MEDPRM_RETRIEVE_CACHE", default_value_t = 1024)]
    pub retrieve_cache: usize,
    /// Log as JSON lines (plain text otherwise, with colours only on a terminal). Either way one
    /// `medprm::access` line per request at info: method, path, status, ms, compute tokens, never
    /// request text.
    #[arg(long, env = "MEDPRM_JSON_LOGS")]
    pub json_logs: bool,
    /// After SIGTERM: seconds the requests in flight may take to finish; then the process exits
    /// whatever connections are still open (idle, or sending their headers slowly), with status 1
    /// if requests were cut, else 0.
    #[arg(long, env = "MEDPRM_SHUTDOWN_TIMEOUT_S", default_value_t = 70)]
    pub shutdown_timeout_s: u64,
    /// Wait this long before the warm-up (lets probes and tests observe the not-ready state).
    #[arg(long, env = "MEDPRM_WARMUP_DELAY_MS", default_value_t = 0)]
    pub warmup_delay_ms: u64,
}

impl ServeConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_batch_tokens > 0, "--max-batch-tokens must be positive");
        anyhow::ensure!(self.max_batch_requests > 0, "--max-batch-requests must be positive");
        anyhow::ensure!(self.max_candidates > 0, "--max-candidates must be positive");
        anyhow::ensure!(self.tokenization_workers > 0, "--tokenization-workers must be positive");
        anyhow::ensure!(self.retrieve_k == 0 || self.index.is_some(), "--retrieve-k needs --index");
        anyhow::ensure!(self.api_key.as_deref() != Some(""), "--api-key must not be empty");
        if self.retrieve_k > 0 {
            crate::retrieval::check_k(self.retrieve_k, "--retrieve-k")?;
        }
        anyhow::ensure!(
            self.max_candidates <= self.max_concurrent_requests,
            "--max-candidates ({}) must not exceed --max-concurrent-requests ({})",
            self.max_candidates,
            self.max_concurrent_requests
        );
        Ok(())
    }

    /// The scoring core's limits and defaults.
    pub fn infer_config(&self) -> InferConfig {
        InferConfig {
            batch: BatchConfig {
                max_batch_tokens: self.max_batch_tokens,
                max_batch_requests: self.max_batch_requests,
                max_queue_delay: Duration::from_millis(self.max_queue_delay_ms),
            },
            max_concurrent_candidates: self.max_concurrent_requests,
            max_candidates: self.max_candidates,
            max_input_tokens: self.max_input_tokens,
            tokenization_workers: self.tokenization_workers,
            prefix_sharing: !self.no_prefix_sharing,
            retrieval: self.index.is_some(),
            retrieve_k: self.retrieve_k,
            retrieve_mode: self.retrieve_mode,
            retrieve_cache: self.retrieve_cache,
        }
    }
}
