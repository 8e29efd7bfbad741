//! Parity at depth: `medprm score` (the real binary) on the deep test model (24 layers,
//! Hugging Face's initialisation scale, `gen-test-model --kind med-prm-deep`, regenerated
//! bit-identically) and ~3k-token Med-PRM prompts, shared prefix and whole prompts, against
//! transformers' sdpa scores: every step within the 1e-4 contract and within `SPREAD_FACTOR`
//! times the reference's own sdpa/eager spread (`tests/golden/med-prm-deep.json`,
//! scripts/golden/make_golden_deep.py). Measured: spread 2.6e-6; medprm 2.4e-6 (shared prefix)
//! and 1.8e-6 (whole prompts) from sdpa since the f32 CPU path sums RMSNorm and linears in torch's
//! order (`src/model/numerics.rs`; before: 5.3e-6 and 3.4e-6), so the bound is the spread itself.

use std::process::Command;

use serde_json::{json, Value};

const TOL: f64 = 1e-4;
/// How far past transformers' own sdpa/eager spread a step may be (see the module note).
const SPREAD_FACTOR: f64 = 1.0;

fn golden() -> Value {
    serde_json::from_str(include_str!("golden/med-prm-deep.json")).expect("golden json")
}

fn scores(list: &Value) -> Vec<f64> {
    list.as_array().expect("score list").iter().map(|v| v.as_f64().expect("score")).collect()
}

/// Scores of every solution of one record (the golden's cases, one question), by `medprm score`.
fn run_score(model: &std::path::Path, cases: &[Value], extra: &[&str], tag: &str) -> Vec<Vec<f64>> {
    let dir = std::env::temp_dir().join(format!("medprm-parity-depth-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = json!({
        "question": cases[0]["question"], "related_docs": cases[0]["related_docs"],
        "solutions": cases.iter().map(|c| json!({"prm_processed_solution": c["prm_processed_solution"]})).collect::<Vec<_>>(),
    });
    let (input, output) = (dir.join("in.json"), dir.join("out.jsonl"));
    std::fs::write(&input, serde_json::to_string(&vec![rec]).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["score", "--quiet", "--model"])
        .arg(model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "medprm score {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_str(std::fs::read_to_string(&output).unwrap().lines().next().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    line["solutions"].as_array().unwrap().iter().map(|s| scores(&s["PRM_score_list"])).collect()
}

#[test]
fn deep_long_prompts_score_within_the_references_own_spread() {
    let g = golden();
    assert_eq!(g["test_model"].as_str(), Some(medprm::tools::testmodel::DEEP_VERSION), "regenerate the golden");
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.iter().all(|c| c["n_tokens"].as_u64().unwrap() >= 3000), "prompts of at least 3k tokens");
    let sdpa: Vec<Vec<f64>> = cases.iter().map(|c| scores(&c["PRM_score_list_sdpa"])).collect();
    let eager: Vec<Vec<f64>> = cases.iter().map(|c| scores(&c["PRM_score_list_eager"])).collect();
    // The reference's own spread: sdpa against eager, over every step.
    let spread = sdpa.iter().flatten().zip(eager.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    let bound = (SPREAD_FACTOR * spread).min(TOL);
    eprintln!("parity-depth: transformers sdpa vs eager spread {spread:.2e}");
    let model = medprm::tools::testmodel::ensure_deep().expect("deep test model (needs the assets: make assets)");
    let mut runs: Vec<(String, Vec<String>)> = vec![("shared".into(), vec![]), ("whole".into(), vec!["--no-prefix-sharing".into()])];
    // With MKL (make test fetches it), the rotary tables are torch's own too: the same bound.
    match std::env::var("MEDPRM_TEST_MKL_VML") {
        Ok(mkl) if !mkl.is_empty() => {
            runs.push(("shared, --mkl-vml".into(), vec!["--mkl-vml".into(), mkl.clone()]));
            runs.push(("whole, --mkl-vml".into(), vec!["--no-prefix-sharing".into(), "--mkl-vml".into(), mkl]));
        }
        _ => eprintln!("parity-depth: MEDPRM_TEST_MKL_VML is not set: the --mkl-vml runs are skipped (make test sets it)"),
    }
    for (path, extra) in &runs {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let got = run_score(&model, cases, &extra, &path.replace([',', ' '], "-"));
        let mut worst = 0f64;
        for (ci, (g, want)) in got.iter().zip(&sdpa).enumerate() {
            assert_eq!(g.len(), want.len(), "{path}: case {ci}: step count");
            for (si, (a, b)) in g.iter().zip(want).enumerate() {
                let d = (a - b).abs();
                worst = worst.max(d);
                assert!(d <= bound, "{path}: case {ci} step {si}: medprm {a}, transformers sdpa {b}: |Δ| {d:.2e} > {bound:.2e} (sdpa/eager spread {spread:.2e}, contract {TOL:e})");
            }
        }
        eprintln!("parity-depth: {path}: max |medprm - sdpa| {worst:.2e}");
    }
}
