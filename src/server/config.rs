//! `medprm serve` flags; every one can also be set with its `MEDPRM_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use crate::args::ModelArgs;
use crate::infer::{BatchConfig, InferConfig};

/// `--max-candidates` unless set (the committed OpenAPI document states it).
pub const DEFAULT_MAX_CANDIDATES: usize = 64;
/// `--payload-limit` when not given, for a text-only model and for one that reads images.
pub const TEXT_PAYLOAD_LIMIT: usize = 2_000_000;
pub const IMAGE_PAYLOAD_LIMIT: usize = 32_000_000;

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
    /// Images per request (vision models; more: 422).
    #[arg(long, env = "MEDPRM_MAX_IMAGES", default_value_t = 4)]
    pub max_images: usize,
    /// Pixels (width × height) per image, read from the file's header before any decoding
    /// (more: 413).
    #[arg(long, env = "MEDPRM_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Candidates per rank request.
    #[arg(long, env = "MEDPRM_MAX_CANDIDATES", default_value_t = DEFAULT_MAX_CANDIDATES)]
    pub max_candidates: usize,
    /// Largest request body in bytes (larger: 413). Default: 2000000, or 32000000 when the model
    /// reads images (an InternVL checkpoint: base64 images make bodies large).
    #[arg(long, env = "MEDPRM_PAYLOAD_LIMIT")]
    pub payload_limit: Option<usize>,
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
    /// Where retrieval searches: `embedded` (the --index directory, in this process) or
    /// `postgres` (a corpus loaded by `medprm index --backend postgres`, at --database-url).
    #[arg(long, env = "MEDPRM_RETRIEVAL_BACKEND", value_enum, default_value = "embedded")]
    pub retrieval_backend: RetrievalBackend,
    /// PostgreSQL connection string (`postgres://user:password@host:port/db`) of the corpus, for
    /// --retrieval-backend postgres.
    #[arg(long, env = "MEDPRM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections to the retrieval database (--retrieval-backend postgres).
    #[arg(long, env = "MEDPRM_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,
    /// Longest a retrieval query may run on the database, and longest a request waits for a
    /// database connection (ms); then the request gets 503 with Retry-After.
    #[arg(long, env = "MEDPRM_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    pub db_statement_timeout_ms: u64,
    /// BM25 on the retrieval database scores the chunks holding one of the query's rarest terms
    /// (and those holding two or three of its rarest terms together), smallest first, while the
    /// chunks expected add up to at most this many. A query whose terms all fit is ranked
    /// exactly; a larger budget is closer to exact and slower (each chunk scored costs tens of
    /// microseconds of database time; a search reads at most twice the budget).
    #[arg(long, env = "MEDPRM_DB_BM25_BUDGET", default_value_t = crate::retrieval::postgres::DEFAULT_BM25_BUDGET)]
    pub db_bm25_budget: u64,
    /// Sentence embedder for the queries of --retrieval-backend postgres: the model the database
    /// corpus was embedded with (checked at start); unset: the fetched all-MiniLM-L6-v2.
    #[arg(long, env = "MEDPRM_EMBEDDER")]
    pub embedder: Option<PathBuf>,
    /// Retrieve this many documents for scoring requests that carry no `documents` (0: only
    /// when a request asks with `retrieve`). Needs --index or --retrieval-backend postgres.
    #[arg(long, env = "MEDPRM_RETRIEVE_K", default_value_t = 0)]
    pub retrieve_k: usize,
    /// Retrieval mode for requests that do not name one: bm25, dense or hybrid.
    #[arg(long, env = "MEDPRM_RETRIEVE_MODE", value_enum, default_value = "hybrid")]
    pub retrieve_mode: crate::retrieval::Mode,
    /// Entries of the retrieval cache, keyed by (query, mode, k).
    #[arg(long, env = "MEDPRM_RETRIEVE_CACHE", default_value_t = 1024)]
    pub retrieve_cache: usize,
    /// Log as JSON lines (plain text otherwise, with colours only on a terminal). Either way one
    /// `medprm::access` line per request at info: method, path, status, ms, compute tokens,
    /// candidates, never request text.
    #[arg(long, env = "MEDPRM_JSON_LOGS")]
    pub json_logs: bool,
    /// After SIGTERM: seconds the requests in flight may take to finish; then the process exits
    /// whatever connections are still open (idle, or sending their headers slowly), with status 1
    /// if requests were cut, else 0.
    #[arg(long, env = "MEDPRM_SHUTDOWN_TIMEOUT_S", default_value_t = 70)]
    pub shutdown_timeout_s: u64,
    /// Seconds a client has to send a complete request head, counted from when the server starts
    /// waiting for one (the connection opened, or the previous response was sent); then the
    /// connection is closed. Bounds slow-header (slowloris) clients.
    #[arg(long, env = "MEDPRM_HEADER_READ_TIMEOUT_S", default_value_t = 10)]
    pub header_read_timeout_s: u64,
    /// Seconds an idle keep-alive connection stays open after its last response (0: no
    /// keep-alive, every response closes its connection). At most --header-read-timeout-s.
    #[arg(long, env = "MEDPRM_KEEP_ALIVE_TIMEOUT_S", default_value_t = 5)]
    pub keep_alive_timeout_s: u64,
    /// Seconds a request body may take to arrive, and the longest pause between two of its
    /// chunks (slower: 408).
    #[arg(long, env = "MEDPRM_BODY_TIMEOUT_S", default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Open client connections at most; further connections wait in the listen backlog until one
    /// closes (bounds the descriptors a client can hold).
    #[arg(long, env = "MEDPRM_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// For tests only, never in production: a request whose text contains `MEDPRM_FAULT_PANIC`
    /// makes the model panic on it (the server must answer it alone with an error and go on).
    #[arg(long, env = "MEDPRM_FAULT_INJECTION")]
    pub fault_injection: bool,
    /// Wait this long before the warm-up (lets probes and tests observe the not-ready state).
    #[arg(long, env = "MEDPRM_WARMUP_DELAY_MS", default_value_t = 0)]
    pub warmup_delay_ms: u64,
}

/// Where retrieval searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RetrievalBackend {
    /// The --index directory, loaded into this process.
    Embedded,
    /// A PostgreSQL + pgvector database (--database-url).
    Postgres,
}

impl ServeConfig {
    /// Whether this server retrieves documents (an index, or a database corpus).
    pub fn retrieval(&self) -> bool {
        match self.retrieval_backend {
            RetrievalBackend::Embedded => self.index.is_some(),
            RetrievalBackend::Postgres => true,
        }
    }

    /// The database settings of --retrieval-backend postgres (`None` for embedded).
    pub fn pg_options(&self) -> Option<crate::retrieval::postgres::PgOptions> {
        (self.retrieval_backend == RetrievalBackend::Postgres).then(|| crate::retrieval::postgres::PgOptions {
            url: self.database_url.clone().unwrap_or_default(),
            pool_size: self.db_pool_size,
            statement_timeout: Duration::from_millis(self.db_statement_timeout_ms),
            bm25_budget: self.db_bm25_budget,
        })
    }

    /// The body limit in force: `--payload-limit`, else the default for the model's kind (read
    /// from its config.json; an unreadable one is reported by the loader, not here).
    pub fn payload_limit(&self) -> usize {
        self.payload_limit.unwrap_or_else(|| {
            let dir = &self.model.model;
            match dir.is_dir().then(|| crate::model::internvl::InternVlConfig::read(dir)) {
                Some(Ok(Some(_))) => IMAGE_PAYLOAD_LIMIT,
                _ => TEXT_PAYLOAD_LIMIT,
            }
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_batch_tokens > 0, "--max-batch-tokens must be positive");
        anyhow::ensure!(self.max_batch_requests > 0, "--max-batch-requests must be positive");
        anyhow::ensure!(self.max_candidates > 0, "--max-candidates must be positive");
        anyhow::ensure!(self.tokenization_workers > 0, "--tokenization-workers must be positive");
        anyhow::ensure!(self.retrieve_k == 0 || self.retrieval(), "--retrieve-k needs --index (or --retrieval-backend postgres)");
        match self.retrieval_backend {
            RetrievalBackend::Embedded => {
                anyhow::ensure!(self.database_url.is_none(), "--database-url needs --retrieval-backend postgres");
                anyhow::ensure!(
                    self.embedder.is_none(),
                    "--embedder is for --retrieval-backend postgres (an --index names its own embedder)"
                );
            }
            RetrievalBackend::Postgres => {
                anyhow::ensure!(self.index.is_none(), "--index is the embedded backend's; --retrieval-backend postgres reads --database-url");
                anyhow::ensure!(self.database_url.is_some(), "--retrieval-backend postgres needs --database-url (or MEDPRM_DATABASE_URL)");
                anyhow::ensure!(self.db_pool_size > 0, "--db-pool-size must be positive");
                anyhow::ensure!(self.db_statement_timeout_ms > 0, "--db-statement-timeout-ms must be positive");
                if let Some(o) = self.pg_options() {
                    o.config().map_err(|e| anyhow::anyhow!("--{e}").context("bad --database-url"))?;
                }
            }
        }
        anyhow::ensure!(self.api_key.as_deref() != Some(""), "--api-key must not be empty");
        anyhow::ensure!(self.header_read_timeout_s > 0, "--header-read-timeout-s must be positive");
        anyhow::ensure!(self.body_timeout_s > 0, "--body-timeout-s must be positive");
        anyhow::ensure!(self.max_connections > 0, "--max-connections must be positive");
        anyhow::ensure!(
            self.keep_alive_timeout_s <= self.header_read_timeout_s,
            "--keep-alive-timeout-s ({}) must not exceed --header-read-timeout-s ({}): the wait for the next request head \
             counts from the end of the previous response",
            self.keep_alive_timeout_s,
            self.header_read_timeout_s
        );
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
                fault_injection: self.fault_injection,
            },
            max_concurrent_candidates: self.max_concurrent_requests,
            max_candidates: self.max_candidates,
            max_input_tokens: self.max_input_tokens,
            tokenization_workers: self.tokenization_workers,
            prefix_sharing: !self.no_prefix_sharing,
            retrieval: self.retrieval(),
            retrieve_k: self.retrieve_k,
            retrieve_mode: self.retrieve_mode,
            retrieve_cache: self.retrieve_cache,
            max_images: self.max_images,
            max_image_pixels: self.max_image_pixels,
        }
    }
}
