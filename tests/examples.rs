//! The example clients of `proto-docs/examples/` run as a reader would run them (README and
//! api-guide): the pinned packages of `proto-docs/examples/requirements.txt` (in the client venv
//! that `make client-venv` builds), the server's URL from `$MEDPRM_URL` or `--url`, against the real
//! binary. What they print must be what the server answers.

mod common;

use std::process::{Command, Output};

use common::{client_python, Server};
use serde_json::{json, Value};

fn example(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let path = format!("{}/proto-docs/examples/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(client_python());
    cmd.arg(&path).args(args).env_remove("MEDPRM_URL").env_remove("MEDPRM_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the example")
}

fn stdout_ok(script: &str, out: &Output) -> String {
    assert!(out.status.success(), "{script} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A task file for `--input`; the test also sends it to `/v1/rank` itself and compares.
const TASK: &str = r#"{
  "question": "First-line drug for type 2 diabetes with an eGFR of 75?\n\n(A) Metformin\n(B) Insulin glargine",
  "documents": ["ADA 2024: metformin is the preferred initial agent for type 2 diabetes."],
  "candidates": [
    "Step 1: Insulin always comes first. Step 2: The answer is (B).",
    "Step 1: Metformin is first line and an eGFR of 75 allows it. Step 2: The answer is (A).",
    {"steps": ["Metformin is first line.", "The answer is (A)."]}
  ]
}"#;

#[tokio::test]
async fn best_of_n_example_prints_what_the_server_ranks() {
    let s = Server::ready(&["--api-key", "k3y"]).await;
    let dir = std::env::temp_dir().join(format!("medprm-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("task.json");
    std::fs::write(&input, TASK).unwrap();
    let input = input.to_str().unwrap();

    // What the server answers for the task, asked directly.
    let task: Value = serde_json::from_str(TASK).unwrap();
    let cands: Vec<Value> =
        task["candidates"].as_array().unwrap().iter().map(|c| if c.is_string() { json!({"solution": c}) } else { c.clone() }).collect();
    let body = json!({"question": task["question"], "documents": task["documents"], "candidates": cands, "selection": "best_of_n"});
    let r = reqwest::Client::new().post(s.url("/v1/rank")).bearer_auth("k3y").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let want: Value = r.json().await.unwrap();

    // URL from $MEDPRM_URL, key from $MEDPRM_API_KEY, raw response.
    let out = example("best_of_n.py", &["--input", input, "--json"], &[("MEDPRM_URL", &s.url("")), ("MEDPRM_API_KEY", "k3y")]);
    let got: Value = serde_json::from_str(&stdout_ok("best_of_n.py", &out)).expect("--json prints the response");
    assert_eq!(got["selected"]["index"], want["selected"]["index"], "{got}");
    let order = |v: &Value| v["candidates"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(order(&got), order(&want));
    for (g, w) in got["candidates"].as_array().unwrap().iter().zip(want["candidates"].as_array().unwrap()) {
        assert!((g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs() <= 1e-6, "{g} vs {w}");
    }

    // URL and key as flags, the table a reader sees: the selected line names the server's pick.
    let out = example("best_of_n.py", &["--url", &s.url(""), "--api-key", "k3y", "--input", input], &[]);
    let text = stdout_ok("best_of_n.py", &out);
    let sel = &want["selected"];
    let line = format!("selected: candidate {}  answer={}", sel["index"], sel["answer"].as_str().unwrap());
    assert!(text.contains(&line), "`{line}` not in:\n{text}");
    assert!(text.starts_with("3 candidates, selection=best_of_n, aggregation=min, documents kept 1/1"), "{text}");

    // The built-in example runs too (no --input), and a wrong key is reported, not retried.
    let out = example("best_of_n.py", &["--json"], &[("MEDPRM_URL", &s.url("")), ("MEDPRM_API_KEY", "k3y")]);
    let builtin: Value = serde_json::from_str(&stdout_ok("best_of_n.py", &out)).unwrap();
    assert_eq!(builtin["usage"]["candidates"], 3);
    let out = example("best_of_n.py", &[], &[("MEDPRM_URL", &s.url("")), ("MEDPRM_API_KEY", "wrong")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401 unauthorized"), "{}", String::from_utf8_lossy(&out.stderr));

    // Without $MEDPRM_URL it goes to the documented default, where nothing of ours listens here
    // only if 8080 is free: checked through --help instead of a connection attempt.
    let out = example("best_of_n.py", &["--help"], &[]);
    let help = stdout_ok("best_of_n.py", &out);
    assert!(help.contains("$MEDPRM_URL") && help.contains("http://127.0.0.1:8080"), "{help}");
    let _ = std::fs::remove_dir_all(&dir);
}
