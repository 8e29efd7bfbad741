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
          compat::pooling::pooling, compat::pooling::pooling_v1_doc),
    components(schemas(error::ErrorBody, compat::rerank::TeiRank, compat::pooling::VllmError)),
    tags((name = "scoring", description = "Step rewards and Best-of-N"), (name = "retrieval", description = "Guideline search"),
         (name = "operations", description = "Probes, info and metrics"),
         (name = "compatibility", description = "Protocols of existing clients: OpenRLHF, vLLM pooling, Cohere/Jina/TEI rerank"))
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON for a server with the default limits (what
/// `proto-docs/openapi.json` holds).
pub fn openapi_json() -> String {
    openapi_json_for(super::config::DEFAULT_MAX_CANDIDATES, None, None)
}

/// The OpenAPI document of a server that takes at most `max_candidates` per rank request and
/// `max_images` images per request (`Some(0)`: a text-only model is loaded; `None`: unknown,
/// the document states no image count); `pooling`: what `/pooling` accepts under the loaded
/// model (vocabulary, token ids allowed), stated when known.
pub fn openapi_json_for(max_candidates: usize, max_images: Option<usize>, pooling: Option<crate::prompt::RawPromptRules>) -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    let mut v = serde_json::to_value(&doc).expect("serializable OpenAPI");
    state_rules(&mut v, max_candidates);
    if let Some(n) = max_images {
        for name in ["ScoreRequest", "RankRequest"] {
            v["components"]["schemas"][name]["properties"]["images"]["maxItems"] = serde_json::json!(n);
        }
    }
    pooling_rules(&mut v, pooling);
    serde_json::to_string_pretty(&v).expect("serializable OpenAPI") + "\n"
}

/// The validator's rules the derived schemas cannot state, added to the document: `steps` and
/// `solution` exclude each other (exactly one, not null), so do `documents` and `retrieve`;
/// rank requests take at most `--max-candidates` and no `retrieve.include_steps`.
fn state_rules(doc: &mut serde_json::Value, max_candidates: usize) {
    use serde_json::json;
    // A rerank body with TEI's `texts` is answered with TEI's bare array.
    for path in ["/rerank", "/v1/rerank", "/v2/rerank"] {
        doc["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"] = json!({"oneOf": [
            {"$ref": "#/components/schemas/RerankResponse"},
            {"type": "array", "items": {"$ref": "#/components/schemas/TeiRank"}, "description": "With `texts` (TEI)."}
        ]});
    }
    let schemas = &mut doc["components"]["schemas"];
    let one_solution = json!([
        {"required": ["steps"], "properties": {"steps": {"type": "array"}}},
        {"required": ["solution"], "properties": {"solution": {"type": "string"}}}
    ]);
    let not_both_documents_and_retrieve = json!({
        "required": ["documents", "retrieve"],
        "properties": {"documents": {"type": "array"}, "retrieve": {"type": "object"}}
    });
    for name in ["ScoreRequest", "Candidate"] {
        schemas[name]["oneOf"] = one_solution.clone();
    }
    for name in ["ScoreRequest", "RankRequest"] {
        schemas[name]["not"] = not_both_documents_and_retrieve.clone();
    }
    // Rerank: the query is the question; the candidates come as `documents` or TEI's `texts`
    // (one of them), each a non-blank solution, at most --max-candidates.
    let non_blank = json!({"type": "string", "minLength": 1, "pattern": super::api::NON_BLANK});
    schemas["RerankDocument"] = json!({
        "oneOf": [non_blank.clone(), {"type": "object", "required": ["text"], "properties": {"text": non_blank.clone()}}],
        "description": "A document to rank: a string, or an object with `text` (Jina, Cohere v1); not blank."
    });
    let rerank = &mut schemas["RerankRequest"];
    rerank["properties"]["query"] = json!({"type": "string", "minLength": 1, "pattern": super::api::NON_BLANK,
                                           "description": "The question (options included); not blank."});
    for (field, items) in [("documents", json!({"$ref": "#/components/schemas/RerankDocument"})), ("texts", non_blank)] {
        let p = &mut rerank["properties"][field];
        p["items"] = items;
        p["minItems"] = json!(1);
        p["maxItems"] = json!(max_candidates);
    }
    rerank["oneOf"] = json!([
        {"required": ["documents"], "properties": {"documents": {"type": "array"}}},
        {"required": ["texts"], "properties": {"texts": {"type": "array"}}}
    ]);
    let rank = &mut schemas["RankRequest"]["properties"];
    rank["candidates"]["maxItems"] = json!(max_candidates);
    rank["retrieve"] = json!({
        "oneOf": [
            {"type": "null"},
            {"allOf": [{"$ref": "#/components/schemas/RetrieveOptions"}, {"type": "object", "properties": {"include_steps": {"const": false}}}]}
        ],
        "description": "Retrieve the documents from the server's index (when `documents` is absent); one search shared by all candidates, so `include_steps` (a /v1/score option) must be false."
    });
}

/// The pooling routes' rules: `task` and `encoding_format` take one value each; `input` is not
/// an empty list (an empty string is a prompt of the tokenizer's special tokens); once a model is loaded, token ids lie inside its
/// vocabulary, ids are refused where the step tag is not one token, and a profile without a
/// step tag accepts no caller-built prompt at all.
fn pooling_rules(doc: &mut serde_json::Value, rules: Option<crate::prompt::RawPromptRules>) {
    use serde_json::json;
    let schemas = &mut doc["components"]["schemas"];
    let request = &mut schemas["PoolingRequest"]["properties"];
    request["task"]["enum"] = json!(["token_classify", null]);
    request["encoding_format"]["enum"] = json!(["float", null]);
    let mut id = json!({"type": "integer", "format": "int32", "minimum": 0});
    if let Some(r) = rules {
        id["maximum"] = json!(r.vocab_size.saturating_sub(1));
    }
    let text = json!({"type": "string"});
    let ids = json!({"type": "array", "items": id, "minItems": 1});
    let mut forms = vec![text.clone(), json!({"type": "array", "items": text, "minItems": 1})];
    if rules.is_none_or(|r| r.ids_allowed) {
        forms.push(ids.clone());
        forms.push(json!({"type": "array", "items": ids, "minItems": 1}));
    }
    if let Some(all) = schemas.as_object_mut() {
        all.shift_remove("TokenId"); // stated inline above (keeps the order of the rest)
    }
    let described = schemas["PoolingInput"]["description"].clone();
    schemas["PoolingInput"] = json!({"oneOf": forms, "description": described});
    if rules.is_some_and(|r| !r.has_step_tag) {
        schemas["PoolingInput"] = json!({"not": {}, "description": "The loaded profile has no step tag: no caller-built prompt can be scored."});
    }
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
    let body_timeout = Duration::from_secs(state.cfg.body_timeout_s);
    let max_candidates = state.cfg.max_candidates;
    let openapi_state = state.clone();
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
        .route(
            "/openapi.json",
            get(move || async move {
                // Images: as many as --max-images once a vision model is loaded; none for a
                // text-only model (its server refuses them).
                let max_images = openapi_state.infer.info().map(|i| if i.vision.is_some() { openapi_state.cfg.max_images } else { 0 });
                ([("content-type", "application/json")], openapi_json_for(max_candidates, max_images, openapi_state.infer.raw_prompt_rules()))
            }),
        )
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs"))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn(json_not_found))
        .layer(DefaultBodyLimit::max(state.cfg.payload_limit()))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_timeout))
        .layer(axum::Extension(handlers::BodyTimeout(body_timeout)))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| tracing::info_span!("http", method = %req.method(), path = %req.uri().path()))
                // The access log: one line per request, never any request text.
                .on_response(|resp: &Response, latency: Duration, _: &tracing::Span| {
                    let tokens = resp.headers().get("x-compute-tokens").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let candidates = resp.extensions().get::<handlers::ScoredCandidates>().map_or_else(|| "-".to_string(), |c| c.0.to_string());
                    tracing::info!(target: "medprm::access", status = resp.status().as_u16(),
                                   ms = format!("{:.1}", latency.as_secs_f64() * 1e3), tokens, candidates = %candidates, "request");
                })
                // Error statuses are answers to clients (counted in medprm_request_failure), not
                // server faults; backend failures are logged where they happen.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::RawPromptRules;

    fn pooling_input(rules: Option<RawPromptRules>) -> serde_json::Value {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json_for(8, None, rules)).unwrap();
        assert!(doc["components"]["schemas"].get("TokenId").is_none());
        doc["components"]["schemas"]["PoolingInput"].clone()
    }

    #[test]
    fn the_pooling_input_states_the_loaded_models_rules() {
        let unknown = pooling_input(None);
        assert_eq!(unknown["oneOf"].as_array().unwrap().len(), 4);
        assert!(unknown["oneOf"][2]["items"].get("maximum").is_none());
        let rules = RawPromptRules { has_step_tag: true, ids_allowed: true, vocab_size: 100 };
        let loaded = pooling_input(Some(rules));
        assert_eq!(loaded["oneOf"][2]["items"]["maximum"], 99);
        assert_eq!(loaded["oneOf"][3]["items"]["items"]["maximum"], 99);
        assert_eq!(loaded["oneOf"][3]["minItems"], 1);
        let text_only = pooling_input(Some(RawPromptRules { ids_allowed: false, ..rules }));
        assert!(text_only["oneOf"].as_array().unwrap().iter().all(|f| f["type"] == "string" || f["items"]["type"] == "string"));
        let untagged = pooling_input(Some(RawPromptRules { has_step_tag: false, ..rules }));
        assert_eq!(untagged["not"], serde_json::json!({}));
    }
}
