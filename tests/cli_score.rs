//! `medprm score` end to end on the test model: a Med-PRM test-set style JSONL in, the official
//! field names out (every input field kept), scores equal to the reference, and the summary.

use std::process::Command;

use serde_json::{json, Value};

fn golden_cases() -> Vec<Value> {
    let g: Value = serde_json::from_str(include_str!("golden/med-prm.json")).unwrap();
    g["cases"].as_array().unwrap().clone()
}

#[test]
fn score_writes_official_fields_and_summary() {
    let model = medprm::tools::testmodel::ensure().expect("test model");
    let cases = golden_cases();
    let pick = |n: &str| cases.iter().find(|c| c["name"] == n).unwrap().clone();
    let group: Vec<Value> = (0..4).map(|j| pick(&format!("rank_group_{j}"))).collect();
    let blank = pick("blank_solution");
    let raw = pick("no_step_marker");
    // Record 1: the rank group as one question with four solutions (answers and correctness).
    let rec1 = json!({
        "question": group[0]["question"], "related_docs": group[0]["related_docs"],
        "correct_answer": "B", "data_source": "med_qa", "extra_field": {"kept": true},
        "solutions": group.iter().enumerate().map(|(j, c)| {
            let answer = ["A", "B", "B", "C"][j];
            let score = if answer == "B" { 1 } else { 0 };
            json!({"prm_processed_solution": c["prm_processed_solution"], "answer": answer, "score": score})
        }).collect::<Vec<_>>()
    });
    // Record 2: a raw solution and a blank one (no steps: scores null), no documents field.
    let rec2 = json!({
        "question": raw["question"], "correct_answer": "B", "data_source": "medmcqa",
        "solutions": [{"solution": raw["solution"]}, {"solution": blank["solution"], "answer": "A"}]
    });
    let dir = std::env::temp_dir().join(format!("medprm-cli-score-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    std::fs::write(&input, format!("{rec1}\n{rec2}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["score", "--model"])
        .arg(&model)
        .args(["--input"]).arg(&input)
        .args(["--output"]).arg(&output)
        .arg("--quiet")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["extra_field"], json!({"kept": true}));
    assert_eq!(lines[0]["_n_docs_kept"], json!(2));
    for (sol, c) in lines[0]["solutions"].as_array().unwrap().iter().zip(&group) {
        let got = sol["PRM_score_list"].as_array().unwrap();
        let want = c["PRM_score_list"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() <= 1e-4);
        }
        assert!((sol["PRM_min_score"].as_f64().unwrap() - c["PRM_min_score"].as_f64().unwrap()).abs() <= 1e-4);
        assert!((sol["PRM_score"].as_f64().unwrap() - c["PRM_score"].as_f64().unwrap()).abs() <= 1e-4);
        assert!(sol.get("answer").is_some() && sol.get("score").is_some(), "input fields kept");
    }
    let sols2 = lines[1]["solutions"].as_array().unwrap();
    assert_eq!(sols2[0]["PRM_score_list"].as_array().unwrap().len(), 1);
    assert_eq!(sols2[1]["PRM_score_list"], json!([]));
    assert_eq!(sols2[1]["PRM_min_score"], Value::Null);
    assert_eq!(sols2[1]["PRM_score"], Value::Null);
    // Best-of-N picks the reference's candidate (index 1, answer B, correct).
    assert_eq!(lines[0]["_best_of_n"], json!(1));
    assert!(stderr.contains("solutions/s") && stderr.contains("tokens/s"), "{stderr}");
    // med_qa: Best-of-N picks candidate 1 (correct); majority vote over A,B,B,C is B (correct).
    let row = stderr.lines().find(|l| l.starts_with("med_qa")).expect("med_qa row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1..], ["1", "100.00", "100.00", "100.00"], "{row}");
    // medmcqa: the raw solution's extracted answer is B (correct); the blank one cannot be picked.
    let row = stderr.lines().find(|l| l.starts_with("medmcqa")).expect("medmcqa row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[2], "100.00", "{row}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn score_reports_bad_input_by_field() {
    let model = medprm::tools::testmodel::ensure().expect("test model");
    let dir = std::env::temp_dir().join(format!("medprm-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.json");
    std::fs::write(&input, r#"[{"question": "Q?", "solutions": [{"text": "no solution field"}]}]"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["score", "--quiet", "--model"]).arg(&model)
        .args(["--input"]).arg(&input)
        .args(["--output"]).arg(dir.join("out.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("records[0].solutions[0]"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn score_checks_the_input_before_loading_the_model() {
    let dir = std::env::temp_dir().join(format!("medprm-cli-early-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, content: &str| {
        let input = dir.join(name);
        std::fs::write(&input, content).unwrap();
        // The model does not exist: only an error about the input proves the input came first.
        let out = Command::new(env!("CARGO_BIN_EXE_medprm"))
            .args(["score", "--quiet", "--model"]).arg(dir.join("no-such-model"))
            .args(["--input"]).arg(&input)
            .args(["--output"]).arg(dir.join("out.jsonl"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // A single JSON object is one record; its missing question is named.
    let e = run("one.json", r#"{"solutions": [{"solution": "Step 1: x."}]}"#);
    assert!(e.contains("records[0].question"), "{e}");
    // JSONL: the second record's bad document.
    let e = run("two.jsonl", "{\"question\": \"Q?\", \"solutions\": []}\n{\"question\": \"Q?\", \"related_docs\": [1]}\n");
    assert!(e.contains("records[1].related_docs[0]"), "{e}");
    // A record without solutions, or with solutions that are no array.
    let e = run("nosol.jsonl", "{\"question\": \"Q?\", \"solutions\": []}\n{\"question\": \"Q?\"}\n");
    assert!(e.contains("records[1].solutions: missing"), "{e}");
    let e = run("strsol.json", r#"[{"question": "Q?", "solutions": "Step 1: x."}]"#);
    assert!(e.contains("records[0].solutions: not an array"), "{e}");
    // Something that is not a record.
    let e = run("num.jsonl", "3\n");
    assert!(e.contains("records[0]: not a JSON object"), "{e}");
    // With good records, the missing model is what fails.
    let e = run("ok.json", r#"{"question": "Q?", "solutions": [{"solution": "Step 1: x."}]}"#);
    assert!(e.contains("no-such-model"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The README's `medprm score` example input (`data/examples/medqa-sample.json`) scores as is: every
/// record and solution comes back with the official fields, and the summary has its data sources.
#[test]
fn the_example_file_scores() {
    let model = medprm::tools::testmodel::ensure().expect("test model");
    let input = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/examples/medqa-sample.json");
    let want = medprm::cli::read_records(&input).unwrap();
    let dir = std::env::temp_dir().join(format!("medprm-cli-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("scored.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["score", "--model"]).arg(&model)
        .args(["--input"]).arg(&input)
        .args(["--output"]).arg(&output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), want.len());
    for (got, rec) in lines.iter().zip(&want) {
        assert_eq!(got["question"], rec["question"]);
        let sols = got["solutions"].as_array().unwrap();
        assert_eq!(sols.len(), rec["solutions"].as_array().unwrap().len());
        for s in sols {
            let steps = s["PRM_score_list"].as_array().unwrap();
            assert!(steps.len() >= 5, "every example solution has at least 5 steps: {s}");
            assert!(steps.iter().all(|p| (0.0..=1.0).contains(&p.as_f64().unwrap())));
        }
    }
    for source in ["model_card", "med_qa"] {
        assert!(stderr.lines().any(|l| l.starts_with(source)), "no summary row for {source}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
