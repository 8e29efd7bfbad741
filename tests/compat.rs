//! The compatibility routes driven by the clients people run: the `cohere` SDK (rerank, its typed
//! errors), OpenRLHF's remote-reward call and vLLM's `/pooling` body (reproduced with `requests`,
//! since `openrlhf` and `vllm` need CUDA), plus Jina- and TEI-style rerank. Every score must equal
//! what `/v1/score` or `/v1/rank` gives for the same content, and pooling must equal the HF
//! reference. The Python clients come pinned from `tests/clients/requirements.txt` in the venv that
//! `make test` builds (`$MEDPRM_CLIENT_PYTHON`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{client_python as python, golden, Server};
use serde_json::{json, Value};

/// Runs a client script with `stdin` as JSON and returns its JSON output.
fn client(script: &str, args: &[&str], stdin: &Value) -> Value {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the client");
    child.stdin.take().unwrap().write_all(stdin.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

const QUESTION: &str = "A 58-year-old with type 2 diabetes has an HbA1c of 8.1% on diet alone and an eGFR of 75. Which drug should be started first?\n\n(A) Metformin\n(B) Insulin glargine\n(C) Glibenclamide\n(D) Pioglitazone";

fn solutions() -> Vec<String> {
    vec![
        "Step 1: Guidelines recommend metformin as first-line therapy in type 2 diabetes without contraindications. Step 2: An eGFR of 75 does not limit metformin. Step 3: The answer is (A).".into(),
        "Step 1: An HbA1c above 8% needs insulin at once. Step 2: The answer is (B).".into(),
        "Step 1: Sulfonylureas lower glucose quickly. Step 2: Hypoglycaemia is rare with glibenclamide. Step 3: The answer is (C).".into(),
        "The answer is (A) because metformin is first line.".into(),
    ]
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = c.post(url).bearer_auth("k3y").json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[tokio::test]
async fn rerank_routes_equal_rank_and_cohere_sdk_parses_them() {
    let s = Server::ready(&["--api-key", "k3y"]).await;
    let c = reqwest::Client::new();
    let docs = solutions();
    let cands: Vec<Value> = docs.iter().map(|d| json!({"solution": d})).collect();
    let (st, rank) = post(&c, s.url("/v1/rank"), &json!({"question": QUESTION, "candidates": cands, "top_n": 3})).await;
    assert_eq!(st, 200, "{rank}");
    let want: Vec<(u64, f64)> = rank["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["index"].as_u64().unwrap(), c["score"].as_f64().unwrap()))
        .collect();
    assert_eq!(want.len(), 3);

    // The cohere SDK (ClientV2.rerank against /v2/rerank, bearer key as it sends it).
    let got = client("cohere_rerank.py", &[&s.url(""), "k3y", "ok"], &json!({"query": QUESTION, "documents": docs, "top_n": 3}));
    let results = got["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(got["id"].as_str().unwrap().starts_with("rerank-"));
    for (r, (i, score)) in results.iter().zip(&want) {
        assert_eq!(r["index"].as_u64().unwrap(), *i);
        assert!(close(r["relevance_score"].as_f64().unwrap(), *score, 1e-6), "{r} vs {score}");
    }

    // Jina / vLLM style: documents as {text} objects, documents returned.
    let jina_docs: Vec<Value> = docs.iter().map(|d| json!({"text": d})).collect();
    let (st, v) = post(&c, s.url("/v1/rerank"), &json!({"model": "m", "query": QUESTION, "documents": jina_docs, "top_n": 3})).await;
    let (st0, all) = post(&c, s.url("/v1/rerank"), &json!({"query": QUESTION, "documents": docs, "top_n": 0})).await;
    assert_eq!((st0, all["results"].as_array().unwrap().len()), (200, 4), "vLLM's top_n 0: all documents");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model"], "m");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"]);
    for (r, (i, score)) in v["results"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(r["index"].as_u64().unwrap(), *i);
        assert!(close(r["relevance_score"].as_f64().unwrap(), *score, 1e-6));
        assert_eq!(r["document"]["text"], docs[*i as usize].as_str());
    }

    // TEI style on /rerank: `texts` in, a bare array out (all texts, text only when asked).
    let (st, v) = post(&c, s.url("/rerank"), &json!({"query": QUESTION, "texts": docs, "return_text": true})).await;
    assert_eq!(st, 200, "{v}");
    let arr = v.as_array().expect("TEI answers a bare array");
    assert_eq!(arr.len(), 4);
    for (r, (i, score)) in arr.iter().zip(&want) {
        assert_eq!(r["index"].as_u64().unwrap(), *i);
        assert!(close(r["score"].as_f64().unwrap(), *score, 1e-6));
        assert_eq!(r["text"], docs[*i as usize].as_str());
    }

    // vLLM's bare `/rerank` path with `documents`: the Jina/Cohere shape, as on /v1/rerank.
    let (st, v) = post(&c, s.url("/rerank"), &json!({"model": "m", "query": QUESTION, "documents": jina_docs, "top_n": 3})).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.is_object() && v["results"].is_array(), "documents get the results object, not TEI's array: {v}");
    for (r, (i, score)) in v["results"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(r["index"].as_u64().unwrap(), *i);
        assert!(close(r["relevance_score"].as_f64().unwrap(), *score, 1e-6));
        assert_eq!(r["document"]["text"], docs[*i as usize].as_str());
    }

    // A wrong key is refused before any scoring.
    let r = c.post(s.url("/v2/rerank")).bearer_auth("nope").json(&json!({"query": "q", "documents": ["a"]})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn cohere_sdk_raises_its_typed_errors() {
    let s = Server::ready(&["--api-key", "k3y"]).await;
    let e = client("cohere_rerank.py", &[&s.url(""), "k3y", "422"], &json!({"query": QUESTION, "documents": []}));
    assert_eq!(e["error"], "UnprocessableEntityError", "{e}");
    assert_eq!(e["status"], 422);
    assert!(e["body"]["error"].as_str().unwrap().starts_with("documents:"), "{e}");
    drop(s);

    // A full server: two candidates held in the queue for up to 10 s occupy both permits (long
    // enough for the Python client to start on a loaded machine).
    let s = Server::ready(&["--api-key", "k3y", "--max-concurrent-requests", "2", "--max-candidates", "2",
                            "--max-queue-delay-ms", "10000", "--no-prefix-sharing"]).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/rank");
    let held = tokio::spawn(async move {
        let body = json!({"question": QUESTION, "candidates": [{"solution": "Step 1: a."}, {"solution": "Step 1: b."}]});
        post(&c, url, &body).await.0
    });
    // Wait until the held request is queued, not for a fixed time.
    let metrics = s.url("/metrics");
    for _ in 0..200 {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == "medprm_queue_size 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let e = client("cohere_rerank.py", &[&s.url(""), "k3y", "429"], &json!({"query": QUESTION, "documents": ["Step 1: c."]}));
    assert_eq!(e["error"], "TooManyRequestsError", "{e}");
    assert_eq!(e["retry_after"], "1");
    assert_eq!(held.await.unwrap(), 200, "the held request is served");
}

#[tokio::test]
async fn openrlhf_rewards_equal_score() {
    let s = Server::ready(&[]).await;
    let c = reqwest::Client::new();
    let prompt = |q: &str| {
        format!("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    };
    let sols = solutions();
    let prompts: Vec<String> = sols.iter().map(|_| prompt(QUESTION)).collect();
    let queries: Vec<String> = prompts.iter().zip(&sols).map(|(p, s)| format!("{p}{s}<|eot_id|>")).collect();
    // OpenRLHF's own call, with and without `prompts` (older clients), and an empty batch.
    let got = client("openrlhf_reward.py", &[&s.url("/get_reward")], &json!({"query": queries, "prompts": prompts, "labels": ["A", null, "A", "A"]}));
    let got_no_prompts = client("openrlhf_reward.py", &[&s.url("/get_reward")], &json!({"query": queries}));
    let resp = &got["response"];
    let keys: Vec<&str> = resp.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["rewards", "scores", "extra_logs"]);
    assert_eq!(resp["rewards"], resp["scores"]);
    // Samples may share a batch or not from one call to the next: equal within float noise.
    let floats = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>();
    for other in [&got["tensor"], &got_no_prompts["tensor"], &got_no_prompts["response"]["scores"]] {
        let (a, b) = (floats(other), floats(&resp["scores"]));
        assert!(a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| close(*x, *y, 1e-6)), "{other} vs {}", resp["scores"]);
    }
    for (i, sol) in sols.iter().enumerate() {
        let (st, v) = post(&c, s.url("/v1/score"), &json!({"question": QUESTION, "solution": sol})).await;
        assert_eq!(st, 200, "{v}");
        assert!(close(resp["scores"][i].as_f64().unwrap(), v["score"].as_f64().unwrap(), 1e-6), "{i}: {resp} vs {v}");
        let logs = &resp["extra_logs"];
        assert_eq!(logs["steps"][i].as_u64().unwrap() as usize, v["steps"].as_array().unwrap().len());
        assert!(close(logs["min_step_score"][i].as_f64().unwrap(), v["aggregates"]["min"].as_f64().unwrap(), 1e-6));
        assert!(close(logs["mean_step_score"][i].as_f64().unwrap(), v["aggregates"]["mean"].as_f64().unwrap(), 1e-6));
    }
    let empty = client("openrlhf_reward.py", &[&s.url("/get_reward")], &json!({"query": [], "prompts": [], "labels": []}));
    assert_eq!(empty["response"], json!({"rewards": [], "scores": [], "extra_logs": {"steps": [], "min_step_score": [], "mean_step_score": []}}));
}

#[tokio::test]
async fn vllm_pooling_equals_reference_and_score() {
    let s = Server::ready(&[]).await;
    let c = reqwest::Client::new();
    let g = golden();
    let case = g["cases"].as_array().unwrap().iter().find(|c| c["name"] == "model_card").unwrap().clone();
    let text = case["rendered_prompt"].as_str().unwrap();
    let ids = case["input_ids"].clone();
    let want: Vec<f64> = case["PRM_score_list"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // vLLM's documented call: a prompt string and a token-id list in one request.
    let got = client("vllm_pooling.py", &[&s.url("")], &json!({"model": "medprm", "input": [text, text]}));
    let by_ids = client("vllm_pooling.py", &[&s.url("")], &json!({"input": ids}));
    let r = &got["response"];
    assert!(r["id"].as_str().unwrap().starts_with("pool-"));
    assert_eq!(r["object"], "list");
    assert!(r["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(r["model"], "medprm");
    let n_ids = case["input_ids"].as_array().unwrap().len() as u64;
    assert_eq!(r["usage"], json!({"prompt_tokens": 2 * n_ids, "total_tokens": 2 * n_ids, "completion_tokens": 0,
                                  "prompt_tokens_details": null, "completion_tokens_details": null}));
    assert_eq!(by_ids["response"]["usage"]["prompt_tokens"], n_ids, "the text tokenizes to the reference ids");
    for (i, item) in r["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["object"], "pooling");
    }
    for pairs in [&r["data"][0]["data"], &r["data"][1]["data"], &by_ids["response"]["data"][0]["data"]] {
        let pairs = pairs.as_array().unwrap();
        assert_eq!(pairs.len(), want.len());
        for (p, w) in pairs.iter().zip(&want) {
            let (neg, pos) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            assert!(close(pos, *w, 1e-4), "p(+) {pos} vs reference {w}");
            assert!(close(neg + pos, 1.0, 1e-6));
        }
    }
    // vLLM's `/v1` path is the same operation.
    let (st, v1) = post(&c, s.url("/v1/pooling"), &json!({"model": "medprm", "input": [text, text]})).await;
    assert_eq!(st, 200, "{v1}");
    assert_eq!(v1["data"], r["data"], "/v1/pooling answers as /pooling");
    // The same content through /v1/score.
    let docs: Vec<String> = serde_json::from_value(case["related_docs"].clone()).unwrap();
    let steps: Vec<&str> = case["prm_processed_solution"].as_str().unwrap().split(" ки").map(str::trim).filter(|s| !s.is_empty()).collect();
    let body = json!({"question": case["question"], "documents": docs, "steps": steps});
    let (st, v) = post(&c, s.url("/v1/score"), &body).await;
    assert_eq!(st, 200, "{v}");
    for (p, step) in r["data"][0]["data"].as_array().unwrap().iter().zip(v["steps"].as_array().unwrap()) {
        assert!(close(p[1].as_f64().unwrap(), step["score"].as_f64().unwrap(), 1e-6));
    }
    // vLLM's error shape.
    let bad = client("vllm_pooling.py", &[&s.url("")], &json!({"input": [[1, 2, 999_999]]}));
    assert_eq!(bad["status"], 422);
    let e = &bad["response"]["error"];
    assert_eq!(e["type"], "UnprocessableEntityError");
    assert_eq!(e["code"], 422);
    assert!(e["message"].as_str().unwrap().contains("999999"), "{e}");
}
