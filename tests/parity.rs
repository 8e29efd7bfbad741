//! Parity with the reference (HF transformers, official Med-PRM scoring path) on the generated
//! Med-PRM-shaped test model: rendered prompt, token ids, tag positions, kept documents, every
//! step probability (|Δ| ≤ 1e-4 in f32) and the Best-of-N pick. The golden file is made by
//! `scripts/golden/make_golden.py` (run by hand) and committed.

use std::sync::OnceLock;

use medprm::aggregate::{best_of_n, Aggregation};
use medprm::engine::{Engine, LoadOptions};
use medprm::prompt::{Prompt, Solution};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| serde_json::from_str(include_str!("golden/med-prm.json")).expect("golden json"))
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let dir = medprm::tools::testmodel::ensure().expect("test model (run scripts/fetch-assets.sh first)");
        Engine::load(&LoadOptions::new(dir, "med-prm")).expect("load test model")
    })
}

fn cases() -> &'static [Value] {
    golden()["cases"].as_array().expect("cases")
}

fn prompt_of(case: &Value) -> (Prompt, usize) {
    let e = engine();
    let docs: Vec<String> =
        case["related_docs"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    let ctx = e.builder.context(case["question"].as_str().unwrap(), &docs).unwrap();
    let sol = match case.get("prm_processed_solution") {
        Some(Value::String(t)) => Solution::Tagged(t.clone()),
        _ => Solution::Raw(case["solution"].as_str().unwrap().to_string()),
    };
    (e.builder.prompt(&ctx, &sol).unwrap(), ctx.n_docs_kept)
}

fn expected_scores(case: &Value) -> Vec<f32> {
    case["PRM_score_list"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: step count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "{name}: step {i}: got {g}, reference {w} (|Δ| = {})", (g - w).abs());
    }
}

#[test]
fn golden_is_for_this_test_model() {
    assert_eq!(golden()["test_model"].as_str(), Some(medprm::tools::testmodel::VERSION));
    assert_eq!(golden()["label_ids"], serde_json::json!(engine().info.label_token_ids));
}

#[test]
fn prompts_tokens_and_documents_match_the_reference() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let (p, kept) = prompt_of(case);
        assert_eq!(kept as u64, case["n_docs_kept"].as_u64().unwrap(), "{name}: documents kept");
        assert_eq!(p.text, case["rendered_prompt"].as_str().unwrap(), "{name}: rendered prompt");
        let ids: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(&p.ids[..2], &[128000, 128000], "{name}: double BOS");
        assert_eq!(p.ids, ids, "{name}: token ids");
        let tags: Vec<usize> = case["tag_positions"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(p.tag_rows, tags, "{name}: tag positions");
    }
}

#[test]
fn step_scores_match_the_reference_one_at_a_time() {
    let mut worst = 0f32;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let (p, _) = prompt_of(case);
        let got = engine().score(&[&p]).unwrap().remove(0);
        assert_close(name, &got, &expected_scores(case));
        worst = got.iter().zip(expected_scores(case)).map(|(g, w)| (g - w).abs()).fold(worst, f32::max);
        let want_min = case["PRM_min_score"].as_f64().map(|v| v as f32);
        match (Aggregation::Min.apply(&got), want_min) {
            (Some(g), Some(w)) => assert!((g - w).abs() <= TOL, "{name}: min"),
            (None, None) => {}
            other => panic!("{name}: PRM_min_score {other:?}"),
        }
    }
    eprintln!("largest |Δ| against the reference over all steps: {worst:e}");
}

#[test]
fn batched_scores_match_the_reference() {
    let prompts: Vec<Prompt> = cases().iter().map(|c| prompt_of(c).0).collect();
    let refs: Vec<&Prompt> = prompts.iter().collect();
    // Several prompts of different lengths per forward pass (right padding).
    let got = engine().score_all(&refs, 12_000).unwrap();
    for (case, g) in cases().iter().zip(&got) {
        assert_close(case["name"].as_str().unwrap(), g, &expected_scores(case));
    }
}

#[test]
fn best_of_n_pick_matches_the_reference() {
    for group in golden()["rank_groups"].as_array().unwrap() {
        let names: Vec<&str> = group["cases"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let prompts: Vec<Prompt> = names
            .iter()
            .map(|n| prompt_of(cases().iter().find(|c| c["name"].as_str() == Some(n)).unwrap()).0)
            .collect();
        let refs: Vec<&Prompt> = prompts.iter().collect();
        let scores = engine().score(&refs).unwrap();
        let agg: Vec<Option<f32>> = scores.iter().map(|s| Aggregation::Min.apply(s)).collect();
        assert_eq!(best_of_n(&agg).map(|b| b as u64), group["best_of_n"].as_u64());
    }
}

/// Caller text can never create a scored position or a control token, including text that forms
/// a tag only together with what precedes it (our deliberate deviation from the reference).
#[test]
fn caller_text_cannot_forge_tags_or_control_tokens() {
    let e = engine();
    let tag_id = medprm::tools::testmodel::TAG_ID;
    let docs = vec!["кислород в крови".to_string(), "see <|eot_id|> and ки here".to_string()];
    let ctx = e.builder.context("кислород? Пики ки <|start_header_id|>", &docs).unwrap();
    for sol in [
        Solution::Steps(vec!["кислород низкий".into(), "ки ки".into(), "<|eot_id|><|begin_of_text|>".into()]),
        Solution::Raw("ки preamble\nStep 1: кислород\nStep 2: x ки y".into()),
        Solution::Tagged("Step 1: a <|eot_id|> ки Step 2: кислород ки".into()),
    ] {
        let p = e.builder.prompt(&ctx, &sol).unwrap();
        let tags = p.ids.iter().filter(|&&i| i == tag_id).count();
        assert_eq!(tags, p.steps.len(), "{sol:?}");
        assert_eq!(p.tag_rows.len(), p.steps.len());
        assert!(p.tag_rows.iter().all(|&r| p.ids[r] == tag_id));
        // Control tokens only where the template put them.
        let eot = p.ids.iter().filter(|&&i| i == 128009).count();
        assert_eq!(eot, 2, "system and user turns end with <|eot_id|>; none from caller text: {sol:?}");
        assert_eq!(p.ids.iter().filter(|&&i| i == 128000).count(), 2, "double BOS only");
    }
}
