//! The other PRM formats over HTTP: the real binary serving the MedS³ and Qwen test checkpoints
//! (profile picked from the architecture) and the Llama-3.1 test model as an RLHFlow PRM;
//! responses naming the profile, documents refused.

mod common;

use common::Server;
use serde_json::{json, Value};

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.expect("json body"))
}

fn golden(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn meds3_serves_rank_with_its_votes_and_refuses_documents() {
    let dir = medprm::tools::prm_models::ensure_meds3().unwrap();
    let s = Server::start_model(&dir, &[]);
    s.wait_ready().await;
    let c = reqwest::Client::new();
    let info: Value = c.get(s.url("/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["model"]["profile"], "meds3", "{info}");
    assert_eq!(info["model"]["head"], "classifier");
    assert_eq!(info["model"]["prompt_format"], "per_step_segments");

    let g = golden(include_str!("golden/meds3.json"));
    let cases = g["cases"].as_array().unwrap();
    let group = &g["rank_groups"][0];
    let members: Vec<&Value> =
        group["cases"].as_array().unwrap().iter().map(|n| cases.iter().find(|c| c["name"] == *n).unwrap()).collect();
    let body = json!({
        "question": members[0]["question"],
        "candidates": members.iter().map(|m| json!({"solution": m["solution"], "answer": m["answer"]})).collect::<Vec<_>>(),
    });
    let (status, v) = post(&c, s.url("/v1/rank"), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["profile"], "meds3");
    assert_eq!(v["selection"], "min_vote_sum", "the profile's default selection");
    assert_eq!(v["selected"]["index"], group["min_vote_sum"]);
    for cand in v["candidates"].as_array().unwrap() {
        let want = &members[cand["index"].as_u64().unwrap() as usize]["step_values"];
        let got: Vec<f64> = cand["steps"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect();
        let want: Vec<f64> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-4), "{got:?} vs {want:?}");
        // Step 0 is left out of the aggregates.
        let min_rest = want[1..].iter().copied().fold(f64::INFINITY, f64::min);
        assert!((cand["score"].as_f64().unwrap() - min_rest).abs() <= 1e-4);
    }
    let body = json!({"question": members[0]["question"], "candidates": [{"solution": members[1]["solution"], "answer": "B"}],
                      "selection": "vote_sum"});
    let (status, v) = post(&c, s.url("/v1/rank"), &body).await;
    assert_eq!((status, &v["selection"]), (200, &json!("vote_sum")), "{v}");

    let body = json!({"question": "q", "solution": "Step 0: a\n\nStep 1: b", "documents": ["a guideline"]});
    let (status, v) = post(&c, s.url("/v1/score"), &body).await;
    assert_eq!(status, 422, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("meds3") && msg.contains("documents"), "{msg}");
    let (status, v) = post(&c, s.url("/v1/score"), &json!({"question": "q", "solution": "Step 0: a\n\nStep 1: b"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["profile"], "meds3");
    assert_eq!(v["steps"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn qwen_prm_serves_score_at_its_separators() {
    let dir = medprm::tools::prm_models::ensure_qwen().unwrap();
    let s = Server::start_model(&dir, &["--profile", "qwen2.5-math-prm"]);
    s.wait_ready().await;
    let c = reqwest::Client::new();
    let g = golden(include_str!("golden/qwen2.5-math-prm.json"));
    let case = &g["cases"][0];
    let (status, v) = post(&c, s.url("/v1/score"), &json!({"question": case["question"], "steps": case["steps"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["profile"], "qwen2.5-math-prm");
    let got: Vec<f64> = v["steps"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect();
    let want: Vec<f64> = case["step_values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-4), "{got:?} vs {want:?}");
    assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, case["input_ids"].as_array().unwrap().len());
}

#[tokio::test]
async fn rlhflow_serves_rank_over_turns_with_its_mean() {
    let s = Server::ready(&["--profile", "rlhflow-prm"]).await;
    let c = reqwest::Client::new();
    let g = golden(include_str!("golden/rlhflow-prm.json"));
    let cases = g["cases"].as_array().unwrap();
    let group = &g["rank_groups"][0];
    let members: Vec<&Value> =
        group["cases"].as_array().unwrap().iter().map(|n| cases.iter().find(|c| c["name"] == *n).unwrap()).collect();
    let body = json!({
        "question": members[0]["question"],
        "candidates": members.iter().map(|m| json!({"steps": m["steps"]})).collect::<Vec<_>>(),
    });
    let (status, v) = post(&c, s.url("/v1/rank"), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((&v["profile"], &v["aggregation"]), (&json!("rlhflow-prm"), &json!("mean")));
    assert_eq!(v["selected"]["index"], group["best_of_n"]);
    for cand in v["candidates"].as_array().unwrap() {
        let want: Vec<f64> = members[cand["index"].as_u64().unwrap() as usize]["step_values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let got: Vec<f64> = cand["steps"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-4), "{got:?} vs {want:?}");
    }
}
