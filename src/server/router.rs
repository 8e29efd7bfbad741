//! Routes, middleware and the OpenAPI document.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use utoipa::OpenApi;

use super::{auth, compat, error, handlers, AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "medprm", description = "Process reward model serving for medical reasoning: per-step rewards and Best-of-N ranking."),
    paths(handlers::score, handlers::rank, handlers::retrieve, handlers::health, handlers::ready, handlers::info, handlers::metrics,
          compat::openrlhf::get_reward, compat::rerank::rerank, compat::rerank::rerank_v1_doc, compat::rerank::rerank_bare_doc,
          compat::pooling::pooling),
    components(schemas(error::ErrorBody, compat::rerank::TeiRank)),
    tags((name = "scoring", description = "Step rewards and Best-of-N"), (name = "retrieval", description = "Guideline search"),
         (name = "operations", description = "Probes, info and metrics"),
         (name = "compatibility", description = "Protocols of existing clients: OpenRLHF, vLLM pooling, Cohere/Jina/TEI rerank"))
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (what `proto-docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.to_pretty_json().expect("serializable OpenAPI") + "\n"
}

/// A 404 without a body (Swagger UI's, under /docs) gets the JSON error every other route gives.
async fn json_not_found(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if resp.status() == StatusCode::NOT_FOUND && resp.headers().get(header::CONTENT_TYPE).is_none() {
        return handlers::not_found(path.parse().unwrap_or_default()).await.into_response();
    }
    resp
}

pub fn router(state: Arc<AppState>) -> Router {
    let scoring = Router::new()
        .route("/v1/score", post(handlers::score))
        .route("/v1/rank", post(handlers::rank))
        .route("/v1/retrieve", post(handlers::retrieve))
        .route("/get_reward", post(compat::openrlhf::get_reward))
        .route("/pooling", post(compat::pooling::pooling))
        .route("/v1/pooling", post(compat::pooling::pooling))
        .route("/v2/rerank", post(compat::rerank::rerank))
        .route("/v1/rerank", post(compat::rerank::rerank))
        .route("/rerank", post(compat::rerank::rerank))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .merge(scoring)
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/info", get(handlers::info))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(|| async { ([("content-type", "application/json")], openapi_json()) }))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs"))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn(json_not_found))
        .layer(DefaultBodyLimit::max(state.cfg.payload_limit))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| tracing::info_span!("http", method = %req.method(), path = %req.uri().path()))
                // The access log: one line per request, never any request text.
                .on_response(|resp: &Response, latency: Duration, _: &tracing::Span| {
                    let tokens = resp.headers().get("x-compute-tokens").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info!(target: "medprm::access", status = resp.status().as_u16(),
                                   ms = format!("{:.1}", latency.as_secs_f64() * 1e3), tokens, "request");
                })
                // Error statuses are answers to clients (counted in medprm_request_failure), not
                // server faults; backend failures are logged where they happen.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}
