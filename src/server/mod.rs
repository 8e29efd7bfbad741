//! `medprm serve`: the HTTP layer over the scoring core ([`crate::infer`]).
//!
//! The listener starts at once (so `/health` answers while the model loads); [`backend`] loads
//! the model, warms it up and hands it to the core, which then turns `/ready` green. Handlers
//! translate JSON to a job and the result back; everything between lives in `infer`.

pub mod api;
pub mod auth;
pub mod backend;
pub mod compat;
pub mod config;
pub mod conn;
pub mod error;
pub mod handlers;
pub mod router;
mod trim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::infer::Infer;
use crate::metrics::Metrics;

pub use config::ServeConfig;
pub use router::{openapi_json, router};

pub struct AppState {
    pub cfg: ServeConfig,
    pub infer: Infer,
}

/// Waits for SIGTERM or Ctrl-C, tells the server to shut down (stop accepting, close idle and
/// half-open connections, finish the requests in flight) and arms the deadline: whatever still
/// holds the server `timeout` later (a slow request) does not keep the process alive.
async fn shutdown_with_deadline(timeout: Duration, metrics: Arc<Metrics>, tx: tokio::sync::watch::Sender<bool>) {
    shutdown_signal().await;
    tracing::info!("shutdown signal: finishing in-flight requests");
    let _ = tx.send(true);
    tokio::time::sleep(timeout).await;
    let in_flight = metrics.in_flight_candidates.get();
    if in_flight > 0 {
        tracing::error!(in_flight, "shutdown deadline reached: exiting with candidates still in flight");
        std::process::exit(1);
    }
    tracing::info!("shutdown deadline reached: closing the connections still open (no request in flight)");
    std::process::exit(0);
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
}

pub fn run(mut cfg: ServeConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    // Fixed once: the router's body limit and /info report the same number.
    cfg.payload_limit = Some(cfg.payload_limit());
    let infer = Infer::new(cfg.infer_config(), Arc::new(Metrics::new()));
    let state = Arc::new(AppState { infer, cfg });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", state.cfg.host, state.cfg.port).parse()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        // Parsed by tests and scripts: keep the format.
        println!("medprm listening on http://{local}");
        tracing::info!(%local, "listening; loading the model");
        backend::start(state.clone());
        trim::spawn();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(shutdown_with_deadline(Duration::from_secs(state.cfg.shutdown_timeout_s), state.infer.metrics().clone(), tx));
        let limits = conn::ConnLimits {
            header_read_timeout: Duration::from_secs(state.cfg.header_read_timeout_s),
            keep_alive_timeout: Duration::from_secs(state.cfg.keep_alive_timeout_s),
            max_connections: state.cfg.max_connections,
        };
        let metrics = state.infer.metrics().clone();
        conn::serve(listener, router(state), limits, metrics, rx).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}
