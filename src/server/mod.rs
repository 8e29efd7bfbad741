//! `medprm serve`: the HTTP service.
//!
//! The listener starts at once (so `/health` answers while the model loads); a backend thread
//! loads the model, runs a warm-up batch and only then turns `/ready` green. Requests flow
//! handler → tokenization worker → queue thread → backend thread → handler.

pub mod api;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod queue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;
use utoipa::OpenApi;

use crate::engine::{Engine, LoadOptions, ModelInfo};
use crate::prompt::PromptBuilder;

use error::ApiError;
use metrics::Metrics;
use queue::{BatchConfig, Queue};

/// `medprm serve` flags; every one can also be set with its `MEDPRM_*` environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// Model: a Hugging Face directory (config.json, tokenizer files, safetensors) or a GGUF file.
    #[arg(long, env = "MEDPRM_MODEL")]
    pub model: PathBuf,
    /// PRM profile: a built-in name (med-prm, math-shepherd) or a profile JSON file.
    #[arg(long, env = "MEDPRM_PROFILE", default_value = "med-prm")]
    pub profile: String,
    /// Address to listen on.
    #[arg(long, env = "MEDPRM_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free port; the chosen one is printed).
    #[arg(long, env = "MEDPRM_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Weight/activation dtype for safetensors models: f32, f16 or bf16.
    #[arg(long, env = "MEDPRM_DTYPE", default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Device: cpu, cuda (a build with `--features cuda`) or auto.
    #[arg(long, env = "MEDPRM_DEVICE", default_value = "cpu")]
    pub device: String,
    /// GGUF linears: auto (dequantized on CPU up to 8 GiB), quantized or dequantized.
    #[arg(long, env = "MEDPRM_GGUF_MATMUL", default_value = "auto", value_parser = ["auto", "quantized", "dequantized"])]
    pub gguf_matmul: String,
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
    /// Log as JSON lines.
    #[arg(long, env = "MEDPRM_JSON_LOGS")]
    pub json_logs: bool,
    /// Wait this long before the warm-up (lets probes and tests observe the not-ready state).
    #[arg(long, env = "MEDPRM_WARMUP_DELAY_MS", default_value_t = 0)]
    pub warmup_delay_ms: u64,
}

impl ServeConfig {
    fn load_options(&self) -> crate::error::Result<LoadOptions> {
        LoadOptions::from_flags(&self.model, &self.profile, &self.dtype, &self.device, &self.gguf_matmul)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_batch_tokens > 0, "--max-batch-tokens must be positive");
        anyhow::ensure!(self.max_batch_requests > 0, "--max-batch-requests must be positive");
        anyhow::ensure!(self.max_candidates > 0, "--max-candidates must be positive");
        anyhow::ensure!(self.tokenization_workers > 0, "--tokenization-workers must be positive");
        anyhow::ensure!(self.retrieve_k == 0 || self.index.is_some(), "--retrieve-k needs --index");
        anyhow::ensure!(self.retrieve_k <= crate::retrieval::MAX_K, "--retrieve-k must be at most {}", crate::retrieval::MAX_K);
        anyhow::ensure!(
            self.max_candidates <= self.max_concurrent_requests,
            "--max-candidates ({}) must not exceed --max-concurrent-requests ({})",
            self.max_candidates,
            self.max_concurrent_requests
        );
        Ok(())
    }
}

type Task = Box<dyn FnOnce() + Send>;

/// Threads for prompt building and tokenization (CPU work kept off the async runtime).
pub struct Workers {
    tx: Mutex<Sender<Task>>,
}

impl Workers {
    pub fn new(n: usize) -> Self {
        let (tx, rx) = channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("medprm-tokenize-{i}"))
                .spawn(move || loop {
                    let task = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match task {
                        Ok(t) => t(),
                        Err(_) => return,
                    }
                })
                .expect("spawn tokenization worker");
        }
        Workers { tx: Mutex::new(tx) }
    }

    /// Runs `f` on a worker; `None` if the worker panicked.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move || {
            if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        self.tx.lock().ok()?.send(task).ok()?;
        rx.await.ok()
    }
}

/// Search results by (query, mode, k).
pub type RetrievalCache = Mutex<lru::LruCache<(String, crate::retrieval::Mode, usize), Arc<Vec<crate::retrieval::Hit>>>>;

pub struct AppState {
    pub cfg: ServeConfig,
    pub index: OnceLock<Arc<crate::retrieval::Index>>,
    pub retrieval_cache: RetrievalCache,
    builder: OnceLock<Arc<PromptBuilder>>,
    pub info: OnceLock<ModelInfo>,
    ready: AtomicBool,
    pub permits: Arc<Semaphore>,
    pub queue: Queue,
    pub workers: Workers,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn builder(&self) -> Option<Arc<PromptBuilder>> {
        self.builder.get().cloned()
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "medprm", description = "Process reward model serving for medical reasoning: per-step rewards and Best-of-N ranking."),
    paths(handlers::score, handlers::rank, handlers::retrieve, handlers::health, handlers::ready, handlers::info, handlers::metrics),
    components(schemas(error::ErrorBody)),
    tags((name = "scoring", description = "Step rewards and Best-of-N"), (name = "retrieval", description = "Guideline search"),
         (name = "operations", description = "Probes, info and metrics"))
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (what `proto-docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.to_pretty_json().expect("serializable OpenAPI") + "\n"
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.cfg.api_key {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.as_bytes(), key.as_bytes()));
        if !ok {
            let endpoint = req.uri().path().trim_start_matches("/v1/").to_string();
            state.metrics.failures.with_label_values(&[endpoint.as_str(), "unauthorized"]).inc();
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn router(state: Arc<AppState>) -> Router {
    let scoring = Router::new()
        .route("/v1/score", post(handlers::score))
        .route("/v1/rank", post(handlers::rank))
        .route("/v1/retrieve", post(handlers::retrieve))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(scoring)
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/info", get(handlers::info))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(|| async { ([("content-type", "application/json")], openapi_json()) }))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs"))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(state.cfg.payload_limit))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| tracing::info_span!("http", method = %req.method(), path = %req.uri().path()))
                // Error statuses are answers to clients (counted in medprm_request_failure), not
                // server faults; backend failures are logged where they happen.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// Loads the model, warms it up and runs the backend loop (on its own thread).
fn start_backend(state: Arc<AppState>) {
    std::thread::Builder::new()
        .name("medprm-backend".into())
        .spawn(move || {
            if let Some(dir) = &state.cfg.index {
                let t = Instant::now();
                match crate::retrieval::Index::open(dir) {
                    Ok(ix) => {
                        let i = ix.info();
                        tracing::info!(index = %dir.display(), chunks = i.chunks, embedder = %i.embedder,
                                       seconds = t.elapsed().as_secs_f64(), "guideline index opened");
                        let _ = state.index.set(Arc::new(ix));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open the index");
                        eprintln!("error: cannot open the index: {e}");
                        std::process::exit(2);
                    }
                }
            } else {
                tracing::info!("no --index: scoring uses caller-supplied documents only");
            }
            let t = Instant::now();
            let engine = match state.cfg.load_options().and_then(|o| Engine::load(&o)) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "cannot load the model");
                    eprintln!("error: cannot load the model: {e}");
                    std::process::exit(2);
                }
            };
            let i = &engine.info;
            tracing::info!(model = %i.model, format = %i.format, profile = %i.profile, dtype = %i.dtype, device = %i.device,
                           seconds = t.elapsed().as_secs_f64(), "model loaded");
            state.metrics.model_info.with_label_values(&[&i.model, &i.profile, &i.format, &i.dtype, &i.device]).set(1.0);
            let _ = state.info.set(engine.info.clone());
            let _ = state.builder.set(engine.builder.clone());
            std::thread::sleep(Duration::from_millis(state.cfg.warmup_delay_ms));
            let t = Instant::now();
            match crate::bench::synthetic_prompt(&engine, 256.min(state.cfg.max_input_tokens), 4).and_then(|p| engine.score(&[&p])) {
                Ok(_) => tracing::info!(seconds = t.elapsed().as_secs_f64(), "warm-up done"),
                Err(e) => {
                    tracing::error!(error = %e, "warm-up failed");
                    eprintln!("error: warm-up failed: {e}");
                    std::process::exit(2);
                }
            }
            state.metrics.backend_up.set(1);
            state.metrics.ready.set(1);
            state.ready.store(true, Ordering::Release);
            let cfg = BatchConfig {
                max_batch_tokens: state.cfg.max_batch_tokens,
                max_batch_requests: state.cfg.max_batch_requests,
                max_queue_delay: Duration::from_millis(state.cfg.max_queue_delay_ms),
            };
            queue::backend_loop(engine, state.queue.clone(), cfg, state.metrics.clone());
            state.metrics.backend_up.set(0);
        })
        .expect("spawn backend thread");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal: finishing in-flight requests");
}

pub fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    let metrics = Arc::new(Metrics::new());
    let batch = BatchConfig {
        max_batch_tokens: cfg.max_batch_tokens,
        max_batch_requests: cfg.max_batch_requests,
        max_queue_delay: Duration::from_millis(cfg.max_queue_delay_ms),
    };
    let state = Arc::new(AppState {
        permits: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
        queue: Queue::spawn(batch, metrics.clone()),
        workers: Workers::new(cfg.tokenization_workers),
        builder: OnceLock::new(),
        info: OnceLock::new(),
        index: OnceLock::new(),
        retrieval_cache: Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(cfg.retrieve_cache.max(1)).expect("positive"),
        )),
        ready: AtomicBool::new(false),
        metrics,
        cfg,
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", state.cfg.host, state.cfg.port).parse()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        // Parsed by tests and scripts: keep the format.
        println!("medprm listening on http://{local}");
        tracing::info!(%local, "listening; loading the model");
        start_backend(state.clone());
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}
