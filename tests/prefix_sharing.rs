//! Prefix sharing gives the same scores as scoring every candidate whole (≤ 1e-5 in f32): on the
//! golden rank group, on seeded random rank requests, and on candidates whose first characters
//! merge with the end of the shared part under BPE.

use std::sync::OnceLock;

use medprm::engine::{Engine, LoadOptions};
use medprm::prompt::{shared_prefix_len, Prompt, Solution};
use medprm::rng::SplitMix64;
use serde_json::Value;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(&LoadOptions::new(medprm::tools::testmodel::ensure().unwrap(), "med-prm")).unwrap())
}

/// The same model with packing off: suffix batches right-padded.
fn padded_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut e = Engine::load(&LoadOptions::new(medprm::tools::testmodel::ensure().unwrap(), "med-prm")).unwrap();
        e.model.set_packing(false);
        e
    })
}

fn golden() -> Value {
    serde_json::from_str(include_str!("golden/med-prm.json")).unwrap()
}

fn docs_of(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect()
}

fn assert_same(shared: &[Vec<f32>], whole: &[Vec<f32>], what: &str) {
    assert_eq!(shared.len(), whole.len());
    for (i, (a, b)) in shared.iter().zip(whole).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: candidate {i} step count");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5, "{what}: candidate {i}: shared {x} vs whole {y}");
        }
    }
}

/// Scores with and without sharing; returns the shared prefix length.
fn check(prompts: &[Prompt], what: &str) -> usize {
    let e = engine();
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let k = shared_prefix_len(&refs);
    // The prefix really is common and ends before every candidate's first tag.
    for p in &refs {
        assert_eq!(p.ids[..k], refs[0].ids[..k], "{what}");
        assert!(p.tag_rows.iter().all(|&r| r >= k), "{what}");
    }
    let whole = e.score_all(&refs, 1 << 20).unwrap();
    let shared = e.score_shared(&refs, k, 1 << 20).unwrap();
    assert_same(&shared, &whole, what);
    // Several suffix batches reusing one prefix give the same result.
    let small = e.score_shared(&refs, k, 600).unwrap();
    assert_same(&small, &whole, what);
    // Packed suffixes (the default here) score like right-padded ones.
    assert!(e.model.packs() && !padded_engine().model.packs());
    let padded = padded_engine().score_shared(&refs, k, 1 << 20).unwrap();
    assert_same(&shared, &padded, &format!("{what}: packed vs padded"));
    k
}

#[test]
fn golden_rank_group_shares_its_prefix_and_keeps_reference_scores() {
    let g = golden();
    let cases: Vec<&Value> = g["cases"].as_array().unwrap().iter().filter(|c| c["name"].as_str().unwrap().starts_with("rank_group_")).collect();
    let e = engine();
    let ctx = e.builder.context(cases[0]["question"].as_str().unwrap(), &docs_of(&cases[0]["related_docs"])).unwrap();
    let prompts: Vec<Prompt> = cases
        .iter()
        .map(|c| e.builder.prompt(&ctx, &Solution::Tagged(c["prm_processed_solution"].as_str().unwrap().into())).unwrap())
        .collect();
    let k = check(&prompts, "golden rank group");
    // Everything up to "Explanation:" is shared: system prompt, two documents, question.
    assert!(k > 300, "shared prefix {k}");
    let text_end = prompts[0].shared_text_end.unwrap();
    assert!(prompts[0].text[..text_end].ends_with("Explanation:"));
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let shared = e.score_shared(&refs, k, 1 << 20).unwrap();
    for (s, c) in shared.iter().zip(&cases) {
        for (x, w) in s.iter().zip(c["PRM_score_list"].as_array().unwrap()) {
            assert!((*x as f64 - w.as_f64().unwrap()).abs() <= 1e-4);
        }
    }
}

#[test]
fn random_rank_requests_score_the_same_with_and_without_sharing() {
    let g = golden();
    let cases = g["cases"].as_array().unwrap();
    let words = ["the", "patient", "β-blocker", "eGFR", "sepsis", "日本", "—", "(B)", "is", "likely", "🙂", "кислород", "ki", "answer", "##", "Step"];
    let mut rng = SplitMix64::new(7);
    let e = engine();
    for round in 0..6 {
        let base = &cases[(rng.next_u64() % cases.len() as u64) as usize];
        let ctx = e.builder.context(base["question"].as_str().unwrap(), &docs_of(&base["related_docs"])).unwrap();
        let n = 2 + (rng.next_u64() % 6) as usize;
        let prompts: Vec<Prompt> = (0..n)
            .map(|_| {
                let steps: Vec<String> = (0..1 + rng.next_u64() % 5)
                    .map(|_| (0..3 + rng.next_u64() % 12).map(|_| words[(rng.next_u64() % words.len() as u64) as usize]).collect::<Vec<_>>().join(" "))
                    .collect();
                e.builder.prompt(&ctx, &Solution::Steps(steps)).unwrap()
            })
            .collect();
        let k = check(&prompts, &format!("random round {round}"));
        assert!(k > 0, "round {round}: nothing shared");
    }
}

#[test]
fn candidates_that_merge_with_the_marker_under_bpe() {
    let e = engine();
    let ctx = e.builder.context("Which drug?\n\n(A) x\n(B) y", &["Some evidence about drugs and doses.".repeat(8)]).unwrap();
    // After "Explanation:" comes " " + the solution: these starts tokenize together with it.
    let starts = [":: first", ":\nStep 1: x", "Explanation: Step 1: again", "::Step 1: a", "\u{a0}Step 1: nbsp", "...Step 1: dots", "Step 1: plain"];
    let prompts: Vec<Prompt> = starts
        .iter()
        .map(|s| e.builder.prompt(&ctx, &Solution::Raw((*s).into())).unwrap())
        .collect();
    let k = check(&prompts, "bpe boundary");
    assert!(k > 0);
    // Each candidate alone with a plain one: the prefix never crosses the marker.
    for p in &prompts {
        let pair = [p.clone(), prompts.last().unwrap().clone()];
        let k2 = check(&pair, "pair");
        assert!(k2 <= p.shared_tokens);
    }
}

#[test]
fn no_sharing_for_one_candidate_or_a_short_prefix() {
    let e = engine();
    let ctx = e.builder.context("Q?", &[]).unwrap();
    let p = e.builder.prompt(&ctx, &Solution::Steps(vec!["a".into()])).unwrap();
    assert_eq!(shared_prefix_len(&[&p]), 0);
    // The math-shepherd layout has no marker: nothing is shared.
    let mut q = p.clone();
    q.shared_tokens = 0;
    assert_eq!(shared_prefix_len(&[&q, &q]), 0);
}

#[test]
fn packed_suffixes_of_ragged_lengths_one_candidate_and_one_long_one() {
    let e = engine();
    let ctx = e.builder.context("Which drug lowers the heart rate?\n\n(A) x\n(B) y", &["Beta-blockers slow the heart.".repeat(6)]).unwrap();
    let step = |n: usize| vec!["the patient is likely to answer"; n].join(" ");
    // One short candidate, one much longer than the others (several query blocks), ragged rest.
    let solutions = [vec![step(1)], vec![step(2), step(1)], vec![step(40), step(30), step(20)], vec![step(3)]];
    let prompts: Vec<Prompt> = solutions.iter().map(|s| e.builder.prompt(&ctx, &Solution::Steps(s.clone())).unwrap()).collect();
    let lens: Vec<usize> = prompts.iter().map(|p| p.ids.len()).collect();
    assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() > 150, "{lens:?}");
    check(&prompts, "ragged");
    // One candidate with its prefix given explicitly: a packed batch of one.
    let one = [prompts[2].clone()];
    let refs: Vec<&Prompt> = one.iter().collect();
    let k = shared_prefix_len(&[&prompts[0], &prompts[2]]);
    let whole = e.score_all(&refs, 1 << 20).unwrap();
    assert_same(&e.score_shared(&refs, k, 1 << 20).unwrap(), &whole, "one candidate");
    assert_same(&padded_engine().score_shared(&refs, k, 1 << 20).unwrap(), &whole, "one candidate, padded");
}
