//! Backend start-up, on its own thread: open the index, load the model, warm it up, then hand
//! the engine to the scoring core (which turns `/ready` green). A failure here ends the process
//! with a message: a server without its model or index is of no use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;

use super::AppState;

/// Tokens and steps of the warm-up prompt (capped by `--max-input-tokens`).
const WARMUP_TOKENS: usize = 256;
const WARMUP_STEPS: usize = 4;

pub fn start(state: Arc<AppState>) {
    // The database pool lives on the server's runtime; the loader thread connects through it.
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("medprm-loader".into())
        .spawn(move || {
            let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
                tracing::error!(error = %e, "{what}");
                eprintln!("error: {what}: {e}");
                std::process::exit(2);
            };
            if let Some(dir) = &state.cfg.index {
                let t = Instant::now();
                match crate::retrieval::Index::open(dir) {
                    Ok(ix) => {
                        let i = ix.info();
                        tracing::info!(index = %dir.display(), chunks = i.chunks, embedder = %i.embedder,
                                       seconds = t.elapsed().as_secs_f64(), "guideline index opened");
                        state.infer.set_index(ix);
                    }
                    Err(e) => fail("cannot open the index", &e),
                }
            } else if let Some(opts) = state.cfg.pg_options() {
                let t = Instant::now();
                let embedder = match &state.cfg.embedder {
                    Some(p) => Ok(p.clone()),
                    None => crate::assets::asset(crate::retrieval::cli::DEFAULT_EMBEDDER),
                };
                let connected = embedder.and_then(|e| rt.block_on(crate::retrieval::postgres::Postgres::connect(&opts, &e)));
                match connected {
                    Ok(pg) => {
                        let i = pg.info();
                        tracing::info!(chunks = i.chunks, embedder = %i.embedder, seconds = t.elapsed().as_secs_f64(),
                                       "guideline corpus on PostgreSQL connected");
                        state.infer.set_retriever(crate::retrieval::Retriever::Postgres(Arc::new(pg)));
                    }
                    Err(e) => fail("cannot use the retrieval database (--database-url)", &e),
                }
            } else {
                tracing::info!("no --index: scoring uses caller-supplied documents only");
            }
            let t = Instant::now();
            let loading = format!("loading model {}", state.cfg.model.model.display());
            let engine = match crate::progress::activity(&loading, false, || state.cfg.model.options().and_then(|o| Engine::load(&o))) {
                Ok(e) => e,
                Err(e) => fail("cannot load the model", &e),
            };
            let i = &engine.info;
            tracing::info!(model = %i.model, format = %i.format, profile = %i.profile, dtype = %i.dtype, device = %i.device,
                           seconds = t.elapsed().as_secs_f64(), "model loaded");
            state.infer.set_model(&engine);
            std::thread::sleep(Duration::from_millis(state.cfg.warmup_delay_ms));
            let t = Instant::now();
            let warmup = crate::progress::activity("warm-up batch", false, || {
                crate::assets::synthetic_prompt(&engine, WARMUP_TOKENS.min(state.cfg.max_input_tokens), WARMUP_STEPS)
                    .and_then(|p| engine.score(&[&p]))
            });
            match warmup {
                Ok(_) => tracing::info!(seconds = t.elapsed().as_secs_f64(), "warm-up done"),
                Err(e) => fail("warm-up failed", &e),
            }
            state.infer.start(engine);
        })
        .expect("spawn loader thread");
}
