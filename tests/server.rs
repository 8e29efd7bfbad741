//! The HTTP service end to end: the real binary on 127.0.0.1 with the generated test model.

mod common;

use std::time::Duration;

use common::{golden, Server};
use serde_json::{json, Value};

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = c.post(url).json(body).send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v = r.json::<Value>().await.expect("json body");
    (status, headers, v)
}

fn scores_of(v: &Value) -> Vec<f64> {
    v["steps"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect()
}

/// Raw-solution golden cases as /v1/score bodies (the reference's scores come with them).
fn raw_cases() -> Vec<Value> {
    golden()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("solution").is_some() && c["PRM_score_list"].as_array().unwrap().len() > 0)
        .cloned()
        .collect()
}

#[tokio::test]
async fn http_scores_equal_the_reference_and_the_offline_path() {
    let s = Server::ready(&[]).await;
    let c = reqwest::Client::new();
    let cases = raw_cases();
    assert!(cases.len() >= 5);
    for case in &cases {
        let body = json!({"question": case["question"], "documents": case["related_docs"], "solution": case["solution"]});
        let (status, headers, v) = post(&c, s.url("/v1/score"), &body).await;
        assert_eq!(status, 200, "{v}");
        for h in ["x-queue-time", "x-inference-time", "x-tokenization-time", "x-total-time", "x-compute-tokens"] {
            assert!(headers.contains_key(h), "missing header {h}");
        }
        let want: Vec<f64> = case["PRM_score_list"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let got = scores_of(&v);
        assert_eq!(got.len(), want.len(), "{}", case["name"]);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4, "{}: {g} vs {w}", case["name"]);
        }
        assert_eq!(v["documents"]["kept"], case["n_docs_kept"], "{}", case["name"]);
        assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, case["input_ids"].as_array().unwrap().len());
        assert!((v["score"].as_f64().unwrap() - case["PRM_min_score"].as_f64().unwrap()).abs() <= 1e-4);
    }
}

/// Mixed-size requests: single scores and rank requests of 1..6 candidates.
fn mixed_requests() -> Vec<(&'static str, Value)> {
    let cases = raw_cases();
    let mut out = Vec::new();
    for i in 0..32 {
        let case = &cases[i % cases.len()];
        if i % 3 == 0 {
            out.push(("/v1/score", json!({"question": case["question"], "documents": case["related_docs"], "solution": case["solution"]})));
        } else {
            let n = 1 + i % 6;
            let cands: Vec<Value> = (0..n).map(|j| json!({"solution": cases[(i + j) % cases.len()]["solution"]})).collect();
            out.push(("/v1/rank", json!({"question": case["question"], "documents": case["related_docs"], "candidates": cands})));
        }
    }
    out
}

fn all_scores(v: &Value) -> Vec<(u64, Vec<f64>)> {
    match v.get("candidates") {
        Some(cands) => {
            let mut c: Vec<(u64, Vec<f64>)> =
                cands.as_array().unwrap().iter().map(|c| (c["index"].as_u64().unwrap(), scores_of(c))).collect();
            c.sort_by_key(|x| x.0);
            c
        }
        None => vec![(0, scores_of(v))],
    }
}

#[tokio::test]
async fn concurrent_batched_requests_score_like_sequential_ones() {
    let s = Server::ready(&["--max-queue-delay-ms", "30", "--max-batch-tokens", "20000"]).await;
    let c = reqwest::Client::new();
    let reqs = mixed_requests();
    let mut sequential = Vec::new();
    for (path, body) in &reqs {
        let (st, _, v) = post(&c, s.url(path), body).await;
        assert_eq!(st, 200, "{v}");
        sequential.push(all_scores(&v));
    }
    let futs = reqs.iter().map(|(path, body)| {
        let c = c.clone();
        let url = s.url(path);
        let body = body.clone();
        async move { post(&c, url, &body).await }
    });
    let concurrent = futures_join_all(futs).await;
    for (i, ((st, _, v), seq)) in concurrent.iter().zip(&sequential).enumerate() {
        assert_eq!(*st, 200, "{v}");
        let got = all_scores(v);
        assert_eq!(got.len(), seq.len());
        for ((_, g), (_, w)) in got.iter().zip(seq) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() <= 1e-5, "request {i}: batched {a} vs alone {b}");
            }
        }
    }
    // Requests were really batched together.
    let m = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let metric = |name: &str| -> f64 {
        m.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()).unwrap().parse().unwrap()
    };
    let mean_batch = metric("medprm_batch_size_sum") / metric("medprm_batch_size_count");
    assert!(mean_batch > 1.5, "mean batch size {mean_batch}");
}

/// Runs the futures concurrently (each on its own task) and returns their outputs in order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn a_flood_gets_429_while_accepted_requests_complete() {
    let s = Server::ready(&["--max-concurrent-requests", "6", "--max-candidates", "3"]).await;
    let c = reqwest::Client::new();
    let case = &raw_cases()[1];
    let body = json!({"question": case["question"], "documents": case["related_docs"],
                      "candidates": [{"solution": case["solution"]}, {"solution": case["solution"]}, {"solution": case["solution"]}]});
    let futs = (0..24).map(|_| {
        let c = c.clone();
        let url = s.url("/v1/rank");
        let body = body.clone();
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            let st = r.status().as_u16();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (st, retry, r.json::<Value>().await.unwrap())
        }
    });
    let res = futures_join_all(futs).await;
    let ok = res.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<_> = res.iter().filter(|r| r.0 == 429).collect();
    assert!(ok >= 2, "some requests are accepted ({ok})");
    assert!(!limited.is_empty(), "a flood beyond the permits gets 429");
    assert_eq!(ok + limited.len(), res.len(), "only 200 or 429: {:?}", res.iter().map(|r| r.0).collect::<Vec<_>>());
    for r in &limited {
        assert_eq!(r.1.as_deref(), Some("1"));
        assert_eq!(r.2["error_type"], "overloaded");
    }
    for r in res.iter().filter(|r| r.0 == 200) {
        assert_eq!(r.2["candidates"].as_array().unwrap().len(), 3);
    }
    // After the flood the permits are all back.
    let (st, _, _) = post(&c, s.url("/v1/rank"), &body).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn a_disconnected_client_does_not_block_or_corrupt_others() {
    let s = Server::ready(&["--max-queue-delay-ms", "50"]).await;
    let c = reqwest::Client::new();
    let cases = raw_cases();
    let long = cases.iter().max_by_key(|c| c["input_ids"].as_array().unwrap().len()).unwrap();
    let heavy = json!({"question": long["question"], "documents": long["related_docs"],
                       "candidates": (0..6).map(|_| json!({"solution": long["solution"]})).collect::<Vec<_>>()});
    // Clients that give up after 20 ms.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(20)).build().unwrap();
    for _ in 0..3 {
        let r = impatient.post(s.url("/v1/rank")).json(&heavy).send().await;
        assert!(r.is_err(), "the impatient client should time out");
    }
    let case = &cases[0];
    let body = json!({"question": case["question"], "documents": case["related_docs"], "solution": case["solution"]});
    let (st, _, v) = post(&c, s.url("/v1/score"), &body).await;
    assert_eq!(st, 200);
    let want: Vec<f64> = case["PRM_score_list"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    for (g, w) in scores_of(&v).iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4);
    }
    let r = c.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn expect_error(req: reqwest::RequestBuilder, status: u16, error_type: &str, mentions: &str) {
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error_type"], error_type, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains(mentions), "error `{msg}` should mention `{mentions}`");
}

#[tokio::test]
async fn every_error_has_its_status_and_json_shape() {
    let s = Server::ready(&["--max-candidates", "2", "--max-input-tokens", "400", "--payload-limit", "20000"]).await;
    let c = reqwest::Client::new();
    let score = s.url("/v1/score");
    let rank = s.url("/v1/rank");
    expect_error(c.post(&score).header("content-type", "application/json").body("{not json"), 400, "bad_request", "malformed JSON").await;
    expect_error(c.post(&score).body("{}"), 400, "bad_request", "content-type").await;
    let big = "x".repeat(30_000);
    expect_error(c.post(&score).json(&json!({"question": big, "steps": ["a"]})), 413, "payload_too_large", "payload limit").await;
    expect_error(c.post(&score).json(&json!({"steps": ["a"]})), 422, "validation", "question").await;
    expect_error(c.post(&score).json(&json!({"question": "  ", "steps": ["a"]})), 422, "validation", "question").await;
    expect_error(c.post(&score).json(&json!({"question": "Q", "steps": []})), 422, "validation", "steps").await;
    expect_error(c.post(&score).json(&json!({"question": "Q", "steps": ["ok", " "]})), 422, "validation", "steps[1]").await;
    expect_error(c.post(&score).json(&json!({"question": "Q"})), 422, "validation", "steps").await;
    expect_error(c.post(&score).json(&json!({"question": "Q", "steps": ["a"], "solution": "b"})), 422, "validation", "either").await;
    expect_error(c.post(&score).json(&json!({"question": "Q", "steps": "a"})), 422, "validation", "steps").await;
    expect_error(c.post(&score).json(&json!({"question": "Q", "steps": ["a"], "bogus": 1})), 422, "validation", "bogus").await;
    expect_error(c.post(&score).json(&json!({"question": "Q", "steps": ["a"], "aggregation": "median"})), 422, "validation", "aggregation").await;
    let long_doc = "Sepsis is a dysregulated host response to infection. ".repeat(60);
    expect_error(c.post(&score).json(&json!({"question": "Q", "documents": [long_doc], "steps": ["a"]})), 422, "validation", "max-input-tokens").await;
    expect_error(c.post(&rank).json(&json!({"question": "Q", "candidates": []})), 422, "validation", "candidates").await;
    let three = json!({"question": "Q", "candidates": [{"steps": ["a"]}, {"steps": ["b"]}, {"steps": ["c"]}]});
    expect_error(c.post(&rank).json(&three), 422, "validation", "max-candidates").await;
    expect_error(c.post(&rank).json(&json!({"question": "Q", "candidates": [{"steps": ["a"]}, {}]})), 422, "validation", "candidates[1]").await;
    expect_error(c.post(&rank).json(&json!({"question": "Q", "candidates": [{"steps": ["a"]}], "top_n": 0})), 422, "validation", "top_n").await;
    expect_error(c.get(s.url("/v2/nothing")), 404, "not_found", "/v2/nothing").await;
    // The server is still fine.
    let (st, _, _) = post(&c, score, &json!({"question": "Q", "steps": ["a"]})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn api_key_guards_the_model_routes_only() {
    let s = Server::ready(&["--api-key", "s3cret"]).await;
    let c = reqwest::Client::new();
    let body = json!({"question": "Q", "steps": ["a"]});
    expect_error(c.post(s.url("/v1/score")).json(&body), 401, "unauthorized", "bearer").await;
    expect_error(c.post(s.url("/v1/score")).bearer_auth("wrong").json(&body), 401, "unauthorized", "bearer").await;
    let r = c.post(s.url("/v1/score")).bearer_auth("s3cret").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for p in ["/health", "/ready", "/info", "/metrics"] {
        assert_eq!(c.get(s.url(p)).send().await.unwrap().status(), 200, "{p}");
    }
}

#[tokio::test]
async fn ready_is_503_until_warm_up_ends() {
    let s = Server::start(&["--warmup-delay-ms", "1500"]);
    let c = reqwest::Client::new();
    // Alive at once, not ready.
    let mut saw_not_ready = false;
    for _ in 0..40 {
        if let Ok(r) = c.get(s.url("/health")).send().await {
            assert_eq!(r.status(), 200);
            let r = c.get(s.url("/ready")).send().await.unwrap();
            if r.status() == 503 {
                saw_not_ready = true;
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error_type"], "not_ready");
                let r = c.post(s.url("/v1/score")).json(&json!({"question": "Q", "steps": ["a"]})).send().await.unwrap();
                assert_eq!(r.status(), 503);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(saw_not_ready);
    s.wait_ready().await;
    let info: Value = c.get(s.url("/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["ready"], true);
    assert_eq!(info["model"]["profile"], "med-prm");
    assert_eq!(info["model"]["label_token_ids"], json!([489, 482]));
    assert_eq!(info["limits"]["max_candidates"], 64);
}

#[tokio::test]
async fn metrics_and_openapi_are_served() {
    let s = Server::ready(&[]).await;
    let c = reqwest::Client::new();
    let (st, _, _) = post(&c, s.url("/v1/score"), &json!({"question": "Q", "steps": ["a", "b"]})).await;
    assert_eq!(st, 200);
    let m = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "medprm_request_count", "medprm_request_success", "medprm_request_duration_seconds", "medprm_tokenization_duration_seconds",
        "medprm_queue_duration_seconds", "medprm_inference_duration_seconds", "medprm_input_tokens", "medprm_candidates_per_request",
        "medprm_steps_per_request", "medprm_queue_size", "medprm_queue_tokens", "medprm_batch_size", "medprm_batch_tokens",
        "medprm_batch_padding_ratio", "medprm_backend_up 1", "medprm_ready 1", "medprm_model_info",
    ] {
        assert!(m.contains(name), "metric {name} missing");
    }
    let mut served: Value = c.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    // A running server states how many images its model takes (none: a text-only PRM); the
    // committed document is model-independent.
    for name in ["ScoreRequest", "RankRequest"] {
        let images = served["components"]["schemas"][name]["properties"]["images"].as_object_mut().unwrap();
        assert_eq!(images.remove("maxItems"), Some(json!(0)), "{name}.images: a text-only model takes no image");
    }
    // ...and the largest token id /pooling takes: the tokenizer's vocabulary (all 4 forms of input).
    let forms = served["components"]["schemas"]["PoolingInput"]["oneOf"].as_array_mut().unwrap();
    let vocab_max = forms[2]["items"]["maximum"].as_u64().expect("/pooling token ids state their maximum");
    assert!(vocab_max > 1000, "largest token id {vocab_max}");
    assert_eq!(forms[2]["items"].as_object_mut().unwrap().remove("maximum"), Some(json!(vocab_max)));
    assert_eq!(forms[3]["items"]["items"].as_object_mut().unwrap().remove("maximum"), Some(json!(vocab_max)));
    let committed: Value = serde_json::from_str(include_str!("../proto-docs/openapi.json")).unwrap();
    assert!(served == committed, "proto-docs/openapi.json drifted from the code: regenerate it with `medprm openapi > proto-docs/openapi.json`");
    assert_eq!(c.get(s.url("/docs/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut s = Server::ready(&[]).await;
    let c = reqwest::Client::new();
    let cases = raw_cases();
    let long = cases.iter().max_by_key(|c| c["input_ids"].as_array().unwrap().len()).unwrap();
    let body = json!({"question": long["question"], "documents": long["related_docs"],
                      "candidates": (0..4).map(|_| json!({"solution": long["solution"]})).collect::<Vec<_>>()});
    let url = s.url("/v1/rank");
    let inflight = tokio::spawn(async move { c.post(url).json(&body).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.terminate();
    let status = inflight.await.unwrap().expect("in-flight request answered");
    assert_eq!(status, 200);
    let code = tokio::task::spawn_blocking(move || {
        let st = s.child.wait().unwrap();
        st.code()
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn rank_with_prefix_sharing_equals_rank_without() {
    let shared = Server::ready(&[]).await;
    let plain = Server::ready(&["--no-prefix-sharing"]).await;
    let c = reqwest::Client::new();
    let cases = raw_cases();
    let base = cases.iter().find(|c| c["name"] == "docs_overflow_budget").unwrap();
    let cands: Vec<Value> = cases.iter().take(5).map(|c| json!({"solution": c["solution"]})).collect();
    let body = json!({"question": base["question"], "documents": base["related_docs"], "candidates": cands});
    let (s1, h1, v1) = post(&c, shared.url("/v1/rank"), &body).await;
    let (s2, h2, v2) = post(&c, plain.url("/v1/rank"), &body).await;
    assert_eq!((s1, s2), (200, 200));
    let (a, b) = (all_scores(&v1), all_scores(&v2));
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= 1e-5, "shared {p} vs whole {q}");
        }
    }
    assert_eq!(v1["selected"]["index"], v2["selected"]["index"]);
    assert_eq!(v1["selected"]["answer"], v2["selected"]["answer"]);
    assert!((v1["selected"]["score"].as_f64().unwrap() - v2["selected"]["score"].as_f64().unwrap()).abs() <= 1e-5);
    assert_eq!(v1["usage"], v2["usage"]);
    // The shared prefix is computed once: far fewer compute tokens.
    let tokens = |h: &reqwest::header::HeaderMap| h["x-compute-tokens"].to_str().unwrap().parse::<usize>().unwrap();
    assert!(tokens(&h1) * 2 < tokens(&h2), "{} vs {}", tokens(&h1), tokens(&h2));
    let info: Value = c.get(plain.url("/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["limits"]["prefix_sharing"], false);
}

#[tokio::test]
async fn sigterm_ends_with_idle_and_slow_connections_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = Server::ready(&["--shutdown-timeout-s", "2"]).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    // A keep-alive connection left idle after one answer, and one sending its headers slowly.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: medprm\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/score HTTP/1.1\r\nHost: medprm\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    s.terminate();
    let code = tokio::task::spawn_blocking(move || s.child.wait().unwrap().code()).await.unwrap();
    assert_eq!(code, Some(0), "nothing was in flight");
    assert!(t.elapsed() < Duration::from_secs(10), "exited after {:?}", t.elapsed());
    drop((idle, slow));
}

#[tokio::test]
async fn far_over_limit_input_is_refused_by_a_bounded_probe() {
    // Under the payload limit, far over --max-input-tokens: refused before the whole list is
    // tokenized (the message gives a lower bound), and the server serves the next request.
    let s = Server::ready(&["--max-input-tokens", "512"]).await;
    let c = reqwest::Client::new();
    let step = "The patient has stage 3b chronic kidney disease with diabetes, so an ACE inhibitor is indicated.";
    let steps: Vec<&str> = (0..15_000).map(|_| step).collect();
    let score = s.url("/v1/score");
    expect_error(c.post(&score).json(&json!({"question": "Q?", "steps": steps})), 422, "validation", "more than").await;
    let r = c.post(&score).json(&json!({"question": "Q?", "steps": ["a"]})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The same text as a question, and in a rank candidate, is named by its field.
    let big = steps.join(" ");
    expect_error(c.post(&score).json(&json!({"question": big, "steps": ["a"]})), 422, "validation", "question:").await;
    let rank = json!({"question": "Q?", "candidates": [{"steps": ["a"]}, {"solution": big}]});
    expect_error(c.post(s.url("/v1/rank")).json(&rank), 422, "validation", "candidates[1]:").await;
}

#[tokio::test]
async fn every_request_is_counted_once_by_outcome() {
    // Requests wait up to 1.5 s for a batch to fill, so one can be held in flight.
    let s = Server::ready(&["--api-key", "k", "--max-concurrent-requests", "2", "--max-candidates", "2", "--max-queue-delay-ms", "1500"]).await;
    let c = reqwest::Client::new();
    let score = s.url("/v1/score");
    let metrics_text = || async { reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap() };
    let value = |m: &str, start: &str| -> f64 {
        m.lines().find(|l| l.starts_with(start)).and_then(|l| l.split_whitespace().last()).map_or(0.0, |v| v.parse().unwrap())
    };
    let wait_for = |start: &'static str, want: f64| {
        let metrics_text = &metrics_text;
        async move {
            for _ in 0..2000 {
                if value(&metrics_text().await, start) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("{start} never reached {want}");
        }
    };
    let ok = json!({"question": "Q", "steps": ["a"]});
    // success
    assert_eq!(c.post(&score).bearer_auth("k").json(&ok).send().await.unwrap().status(), 200);
    // client_error
    expect_error(c.post(&score).bearer_auth("k").json(&json!({"question": "Q", "steps": []})), 422, "validation", "steps").await;
    // unauthorized
    expect_error(c.post(&score).json(&ok), 401, "unauthorized", "bearer").await;
    // overloaded: a two-candidate rank holds both permits while it waits for its batch.
    let rank = tokio::spawn({
        let (c, url) = (c.clone(), s.url("/v1/rank"));
        async move {
            let body = json!({"question": "Q", "candidates": [{"steps": ["a"]}, {"steps": ["b"]}]});
            c.post(url).bearer_auth("k").json(&body).send().await.unwrap().status().as_u16()
        }
    });
    wait_for("medprm_in_flight_candidates ", 2.0).await;
    expect_error(c.post(&score).bearer_auth("k").json(&ok), 429, "overloaded", "overloaded").await;
    assert_eq!(rank.await.unwrap(), 200);
    // cancelled: the client closes its connection while its request waits in the queue.
    {
        use tokio::io::AsyncWriteExt;
        let addr = s.url.trim_start_matches("http://").to_string();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let body = ok.to_string();
        let req = format!(
            "POST /v1/score HTTP/1.1\r\nHost: medprm\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        wait_for("medprm_in_flight_candidates ", 1.0).await;
        drop(conn);
    }
    wait_for("medprm_request_count{endpoint=\"score\",outcome=\"cancelled\"}", 1.0).await;
    let m = metrics_text().await;
    let count = |e: &str, o: &str| value(&m, &format!("medprm_request_count{{endpoint=\"{e}\",outcome=\"{o}\"}}"));
    let durations = |e: &str, o: &str| value(&m, &format!("medprm_request_duration_seconds_count{{endpoint=\"{e}\",outcome=\"{o}\"}}"));
    let want = [("score", "success", 1.0), ("score", "client_error", 1.0), ("score", "unauthorized", 1.0), ("score", "overloaded", 1.0),
                ("score", "cancelled", 1.0), ("rank", "success", 1.0), ("score", "server_error", 0.0)];
    for (e, o, n) in want {
        assert_eq!(count(e, o), n, "{e} {o}:\n{m}");
        assert_eq!(durations(e, o), n, "duration of {e} {o}");
    }
    let total: f64 = m.lines().filter(|l| l.starts_with("medprm_request_count{")).map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap()).sum();
    let succeeded: f64 = m.lines().filter(|l| l.starts_with("medprm_request_success{")).map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap()).sum();
    let failed: f64 = m.lines().filter(|l| l.starts_with("medprm_request_failure{")).map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap()).sum();
    assert_eq!(total, 6.0, "each request counted once:\n{m}");
    assert_eq!(succeeded + failed, total);
    assert_eq!(value(&m, "medprm_request_failure{endpoint=\"score\",error_type=\"cancelled\"}"), 1.0);
}

#[tokio::test]
async fn the_access_log_line_names_status_tokens_and_candidates_never_request_text() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let model = medprm::tools::testmodel::ensure().expect("test model");
    let mut child = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["serve", "--model"])
        .arg(&model)
        .args(["--host", "127.0.0.1", "--port", "0", "--json-logs"])
        .env("RUST_LOG", "medprm::access=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn medprm serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let base = first.trim().strip_prefix("medprm listening on ").expect("listen line").to_string();
    let s = Server { child, url: base };
    s.wait_ready().await;
    let c = reqwest::Client::new();
    let case = &raw_cases()[1];
    let secret = "Zanzibar-7731";
    let body = json!({"question": format!("{} {secret}", case["question"].as_str().unwrap()),
                      "candidates": [{"solution": case["solution"]}, {"solution": case["solution"]}]});
    let (st, h, _) = post(&c, s.url("/v1/rank"), &body).await;
    assert_eq!(st, 200);
    let tokens = h["x-compute-tokens"].to_str().unwrap().to_string();
    let (st, _, _) = post(&c, s.url("/v1/rank"), &json!({"question": secret, "candidates": []})).await;
    assert_eq!(st, 422);
    s.terminate();
    let mut s = s;
    let mut log = String::new();
    std::io::Read::read_to_string(s.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["target"] == "medprm::access").collect();
    // The probes of `wait_ready` are 200s without tokens; the rank is the one scored 200.
    let scored = lines.iter().find(|v| v["fields"]["status"] == 200 && v["fields"]["tokens"] != "-").unwrap_or_else(|| panic!("no access line for the rank: {log}"));
    assert_eq!(scored["fields"]["candidates"], "2", "{scored}");
    assert_eq!(scored["fields"]["tokens"], tokens.as_str(), "{scored}");
    let refused = lines.iter().find(|v| v["fields"]["status"] == 422).unwrap_or_else(|| panic!("no access line for the 422: {log}"));
    assert_eq!(refused["fields"]["candidates"], "-", "{refused}");
    assert!(!log.contains(secret), "request text reached the log: {log}");
}
