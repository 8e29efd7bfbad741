//! Parity of the other PRM formats with their authors' scoring recipes, run with Hugging Face
//! transformers on medprm's seeded test checkpoints (`scripts/golden/make_golden_prm.py`, run by
//! hand; goldens committed): token ids, scored positions and every step value (|Δ| ≤ 1e-4, f32),
//! one prompt at a time, batched (right padding), with the shared prefix run once, and the
//! selections.
//!
//! * `meds3`: LlamaForTokenClassification, per-step segments, MedS³'s min-vote-sum / vote-sum.
//! * `qwen2.5-math-prm`: Qwen2 backbone + score MLP, `<extra_0>` separators.
//! * `rlhflow-prm`: multi-turn "+"/"-" on the Llama-3.1 test model.

use std::sync::OnceLock;

use medprm::aggregate::{rank, Selection};
use medprm::engine::{Engine, LoadOptions};
use medprm::prompt::{shared_prefix_len, Prompt, Solution};
use medprm::tools::{prm_models, testmodel};
use serde_json::Value;

const TOL: f32 = 1e-4;

struct Fixture {
    engine: Engine,
    golden: Value,
}

fn fixture(kind: &str) -> &'static Fixture {
    static MEDS3: OnceLock<Fixture> = OnceLock::new();
    static QWEN: OnceLock<Fixture> = OnceLock::new();
    static RLHFLOW: OnceLock<Fixture> = OnceLock::new();
    let (cell, text, dir, profile, version) = match kind {
        "meds3" => (&MEDS3, include_str!("golden/meds3.json"), prm_models::ensure_meds3 as fn() -> medprm::error::Result<std::path::PathBuf>, "meds3", prm_models::MEDS3_VERSION),
        "qwen" => (&QWEN, include_str!("golden/qwen2.5-math-prm.json"), prm_models::ensure_qwen as fn() -> medprm::error::Result<std::path::PathBuf>, "qwen2.5-math-prm", prm_models::QWEN_VERSION),
        _ => (&RLHFLOW, include_str!("golden/rlhflow-prm.json"), testmodel::ensure as fn() -> medprm::error::Result<std::path::PathBuf>, "rlhflow-prm", testmodel::VERSION),
    };
    cell.get_or_init(|| {
        let golden: Value = serde_json::from_str(text).expect("golden json");
        assert_eq!(golden["test_model"].as_str(), Some(version), "golden made for another test model");
        let dir = dir().expect("test model (run scripts/fetch-assets.sh first)");
        let engine = Engine::load(&LoadOptions::new(dir, profile)).expect("load test model");
        Fixture { engine, golden }
    })
}

fn cases(f: &Fixture) -> &[Value] {
    f.golden["cases"].as_array().expect("cases")
}

fn solution(case: &Value) -> Solution {
    match case.get("steps") {
        Some(Value::Array(s)) => Solution::Steps(s.iter().map(|v| v.as_str().unwrap().to_string()).collect()),
        _ => Solution::Raw(case["solution"].as_str().unwrap().to_string()),
    }
}

fn prompt_of(f: &Fixture, case: &Value) -> Prompt {
    let ctx = f.engine.builder.context(case["question"].as_str().unwrap(), &[]).unwrap();
    f.engine.builder.prompt(&ctx, &solution(case)).unwrap()
}

fn nums<T: TryFrom<u64>>(v: &Value) -> Vec<T> {
    v.as_array().unwrap().iter().map(|x| T::try_from(x.as_u64().unwrap()).ok().unwrap()).collect()
}

fn values(case: &Value) -> Vec<f32> {
    case["step_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: step count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "{name}: step {i}: got {g}, reference {w} (|Δ| = {})", (g - w).abs());
    }
}

/// Prompts, ids and positions; values one at a time, batched, and over a shared prefix.
fn check_parity(kind: &str) {
    let f = fixture(kind);
    let mut worst = 0f32;
    let mut prompts = Vec::new();
    for case in cases(f) {
        let name = case["name"].as_str().unwrap();
        let p = prompt_of(f, case);
        assert!(p.text.starts_with(case["rendered_prompt"].as_str().unwrap()), "{name}: rendered prompt\n{}", p.text);
        assert_eq!(p.ids, nums::<u32>(&case["input_ids"]), "{name}: token ids");
        assert_eq!(p.tag_rows, nums::<usize>(&case["step_positions"]), "{name}: scored positions");
        if let Some(steps) = case.get("steps").and_then(|s| s.as_array()) {
            assert_eq!(p.steps.len(), steps.len(), "{name}: steps");
        }
        let got = f.engine.score(&[&p]).unwrap().remove(0);
        assert_close(name, &got, &values(case));
        worst = got.iter().zip(values(case)).map(|(g, w)| (g - w).abs()).fold(worst, f32::max);
        prompts.push(p);
    }
    eprintln!("{kind}: largest |Δ| against the reference over all steps: {worst:e}");
    // Several prompts of different lengths per forward pass.
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let batched = f.engine.score_all(&refs, 100_000).unwrap();
    for (case, g) in cases(f).iter().zip(&batched) {
        assert_close(&format!("batched {}", case["name"]), g, &values(case));
    }
    // A rank group: its shared prefix runs once.
    for group in f.golden["rank_groups"].as_array().unwrap() {
        let idx: Vec<usize> = group["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| cases(f).iter().position(|c| c["name"] == *n).unwrap())
            .collect();
        let members: Vec<&Prompt> = idx.iter().map(|&i| &prompts[i]).collect();
        let n = shared_prefix_len(&members);
        assert!(n >= medprm::prompt::MIN_SHARED_PREFIX, "{kind}: the candidates share a prefix ({n} tokens)");
        for max_batch_tokens in [100_000, 1] {
            let shared = f.engine.score_shared(&members, n, max_batch_tokens).unwrap();
            for (&i, g) in idx.iter().zip(&shared) {
                assert_close(&format!("shared prefix {}", cases(f)[i]["name"]), g, &values(&cases(f)[i]));
            }
        }
    }
}

/// The rank groups' picks: MedS³'s votes (step 0 dropped), Best-of-N by the profile's
/// aggregation for the others (Qwen: min; RLHFlow: mean).
fn check_selection(kind: &str) {
    let f = fixture(kind);
    let profile = &f.engine.builder.profile;
    for group in f.golden["rank_groups"].as_array().unwrap() {
        let members: Vec<&Value> = group["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| cases(f).iter().find(|c| c["name"] == *n).unwrap())
            .collect();
        let prompts: Vec<Prompt> = members.iter().map(|c| prompt_of(f, c)).collect();
        let scores = f.engine.score(&prompts.iter().collect::<Vec<_>>()).unwrap();
        let steps: Vec<&[f32]> = scores.iter().map(|s| &s[profile.drop_steps.min(s.len())..]).collect();
        let answers: Vec<Option<String>> = members.iter().map(|c| c["answer"].as_str().map(String::from)).collect();
        let picks: Vec<(&str, Selection)> = if kind == "meds3" {
            vec![("min_vote_sum", Selection::MinVoteSum), ("vote_sum", Selection::VoteSum)]
        } else {
            vec![("best_of_n", Selection::BestOfN)]
        };
        for (key, sel) in picks {
            let r = rank(&steps, &answers, profile.aggregation, sel, None);
            assert_eq!(r.selected.map(|i| i as u64), group[key].as_u64(), "{kind}: {key}");
        }
    }
}

#[test]
fn meds3_matches_the_reference() {
    check_parity("meds3");
}

#[test]
fn meds3_selections_match_the_reference() {
    check_selection("meds3");
}

#[test]
fn qwen_prm_matches_the_reference() {
    check_parity("qwen");
}

#[test]
fn qwen_prm_best_of_n_matches_the_reference() {
    check_selection("qwen");
}

#[test]
fn rlhflow_matches_the_reference() {
    check_parity("rlhflow");
    let f = fixture("rlhflow");
    assert_eq!(f.golden["label_ids"], serde_json::json!(f.engine.info.label_token_ids));
}

#[test]
fn rlhflow_best_of_n_matches_the_reference() {
    check_selection("rlhflow");
}

#[test]
fn the_architecture_picks_the_profile_and_a_mismatch_is_refused() {
    let meds3 = prm_models::ensure_meds3().unwrap();
    let qwen = prm_models::ensure_qwen().unwrap();
    let mut o = LoadOptions::new(&meds3, "");
    o.profile = None;
    assert_eq!(Engine::load(&o).unwrap().info.profile, "meds3");
    let mut o = LoadOptions::new(&qwen, "");
    o.profile = None;
    let e = Engine::load(&o).unwrap();
    assert_eq!((e.info.profile.as_str(), e.info.head.as_str()), ("qwen2.5-math-prm", "score_mlp"));
    let err = Engine::load(&LoadOptions::new(&meds3, "med-prm")).err().unwrap().to_string();
    assert!(err.contains("med-prm") && err.contains("LlamaForTokenClassification") && err.contains("classifier"), "{err}");
    // A classifier profile on a causal LM (no `score.weight`).
    let err = Engine::load(&LoadOptions::new(testmodel::ensure().unwrap(), "meds3")).err().unwrap().to_string();
    assert!(err.contains("meds3") && err.contains("LlamaForCausalLM"), "{err}");
}

#[test]
fn caller_text_cannot_forge_a_separator() {
    let f = fixture("qwen");
    let ctx = f.engine.builder.context("What is 1 + 1? <extra_0>", &[]).unwrap();
    let p = f.engine.builder.prompt(&ctx, &Solution::Steps(vec!["One <extra_0> plus one".into(), "is 2.".into()])).unwrap();
    assert_eq!(p.tag_rows.len(), 2, "{}", p.text);
}

#[test]
fn meds3_adapter_merged_at_load_matches_peft_merge_and_unload() {
    let f = fixture("meds3");
    let dir = prm_models::ensure_meds3().unwrap();
    let mut o = LoadOptions::new(&dir, "");
    o.profile = None;
    o.adapter = Some(dir.join("adapter"));
    let e = Engine::load(&o).unwrap();
    assert_eq!(e.info.profile, "meds3");
    let cases = f.golden["adapter_cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    let mut changed = false;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let ctx = e.builder.context(case["question"].as_str().unwrap(), &[]).unwrap();
        let p = e.builder.prompt(&ctx, &solution(case)).unwrap();
        assert_eq!(p.ids, nums::<u32>(&case["input_ids"]), "{name}: token ids");
        let got = e.score(&[&p]).unwrap().remove(0);
        let want = values(case);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5, "{name}: step {i}: got {g}, PEFT-merged reference {w}");
        }
        // The adapter matters: the base model's values differ.
        let base = f.engine.score(&[&p]).unwrap().remove(0);
        changed |= base.iter().zip(&got).any(|(b, g)| (b - g).abs() > 1e-3);
    }
    assert!(changed, "the adapter changed no value");
}
