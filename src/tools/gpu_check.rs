//! The self-check of `make bench-gpu`: step scores of a seeded Med-PRM-shaped model on fixed
//! Best-of-N cases, written once here on the CPU in f32 (the goldens) and compared on the device
//! before any timing. The model is regenerated bit-identically from its seed by the binary itself
//! ([`crate::tools::testmodel::generate_shaped`], SplitMix64), so nothing but the small goldens
//! file travels to the GPU machine.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::aggregate::{best_of_n, Aggregation};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::prompt::{shared_prefix_len, Prompt};
use crate::tools::bench::best_of_n_prompts;

/// Bump when the cases, the model or the file layout change (old goldens are then refused).
pub const FORMAT: &str = "medprm-gpu-check-v2";

/// The checked model's output head is drawn at an eighth of the bench models' spread. With the
/// full spread the label logits of these random models are large, the step probabilities sit
/// where a logit error of a few tenths (what bf16's 8-bit mantissa gives on logits of that size)
/// moves them by more than the bound, and bf16 fails the check against f32 goldens without any
/// fault (6.8e-2 on the smollm2 shape, on the CPU). At a quarter bf16 on the CPU came to 1.8e-2,
/// too near the bound for another device's rounding; at an eighth it stays under half the bound
/// (9.2e-3), the step probabilities lie between 0.3 and 0.6, and a wrong kernel, which moves the
/// label logits by about their own size, still moves them by about 0.1.
pub const HEAD_SCALE: f32 = 0.125;

/// The cached directory name of the checked model of a bench shape (`bench-test-shape-v1`, ...).
pub fn model_name(bench_shape_name: &str) -> String {
    format!("gpu-check-{bench_shape_name}-head{HEAD_SCALE}")
}

/// One Best-of-N case: candidates, shared prefix tokens, mean tokens of steps.
const CASES: [(usize, usize, usize); 3] = [(8, 600, 150), (4, 1500, 300), (16, 300, 80)];

/// Goldens of one model: every case's step scores and picked candidate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goldens {
    pub format: String,
    /// The generated model's name (shape and generator version) and seed.
    pub model: String,
    pub seed: u64,
    /// How the goldens were computed, e.g. "cpu f32".
    pub computed_with: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub candidates: usize,
    pub prefix_tokens: usize,
    pub suffix_tokens: usize,
    /// Step scores per candidate.
    pub scores: Vec<Vec<f32>>,
    /// Best-of-N by the minimum step score (Med-PRM's aggregation).
    pub pick: usize,
    /// Minimum-score gap between the picked candidate and the runner-up.
    pub margin: f32,
}

/// Scores every case with `engine` through the serving path (shared prefix, packed suffixes).
pub fn compute(engine: &Engine, model: &str, seed: u64, computed_with: &str, max_batch_tokens: usize) -> Result<Goldens> {
    let mut cases = Vec::new();
    for (candidates, prefix_tokens, suffix_tokens) in CASES {
        let prompts: Vec<Prompt> = best_of_n_prompts(engine, candidates, prefix_tokens, suffix_tokens)?;
        let refs: Vec<&Prompt> = prompts.iter().collect();
        let scores = engine.score_shared(&refs, shared_prefix_len(&refs), max_batch_tokens)?;
        let (pick, margin) = pick(&scores);
        cases.push(Case { candidates, prefix_tokens, suffix_tokens, scores, pick, margin });
    }
    Ok(Goldens { format: FORMAT.into(), model: model.into(), seed, computed_with: computed_with.into(), cases })
}

fn pick(scores: &[Vec<f32>]) -> (usize, f32) {
    let mins: Vec<Option<f32>> = scores.iter().map(|s| Aggregation::Min.apply(s)).collect();
    let best = best_of_n(&mins).unwrap_or(0);
    let top = mins[best].unwrap_or(f32::NAN);
    let second = mins.iter().enumerate().filter(|&(i, _)| i != best).filter_map(|(_, m)| *m).fold(f32::NEG_INFINITY, f32::max);
    (best, top - second)
}

/// What a comparison found.
#[derive(Debug)]
pub struct Comparison {
    pub max_abs_dp: f64,
    pub mean_abs_dp: f64,
    pub steps: usize,
    pub cases: usize,
    /// One line per disagreement: a step beyond the bound, a different pick where the goldens
    /// separate the candidates by more than the bound, a different number of candidates or
    /// steps. Empty when the check passes.
    pub failures: Vec<String>,
    /// Different picks between candidates whose minimum step scores the goldens put within the
    /// bound of each other: a tie at the check's resolution, reported, not failed.
    pub ties: Vec<String>,
}

/// Compares `got` (the device's) with `want` (the goldens): every step within `bound`, the same
/// pick in every case whose golden margin (best minimum step score over the runner-up's) is
/// above the bound.
pub fn compare(want: &Goldens, got: &Goldens, bound: f64) -> Comparison {
    let (mut failures, mut ties) = (Vec::new(), Vec::new());
    let (mut max, mut sum, mut steps) = (0f64, 0f64, 0usize);
    if want.format != got.format || want.model != got.model || want.seed != got.seed {
        failures.push(format!("goldens are for {} ({}, seed {}), this run is {} ({}, seed {})", want.model, want.format, want.seed, got.model, got.format, got.seed));
    }
    if want.cases.len() != got.cases.len() {
        failures.push(format!("goldens have {} cases, this run {}", want.cases.len(), got.cases.len()));
    }
    for (c, (w, g)) in want.cases.iter().zip(&got.cases).enumerate() {
        if w.scores.len() != g.scores.len() {
            failures.push(format!("case {c}: {} candidates in the goldens, {} here", w.scores.len(), g.scores.len()));
            continue;
        }
        for (k, (ws, gs)) in w.scores.iter().zip(&g.scores).enumerate() {
            if ws.len() != gs.len() {
                failures.push(format!("case {c} candidate {k}: {} steps in the goldens, {} here", ws.len(), gs.len()));
                continue;
            }
            for (s, (a, b)) in ws.iter().zip(gs).enumerate() {
                let d = (*a as f64 - *b as f64).abs();
                let d = if d.is_nan() { f64::INFINITY } else { d };
                max = max.max(d);
                sum += d;
                steps += 1;
                if d > bound {
                    failures.push(format!("case {c} candidate {k} step {s}: p = {b:.6}, golden {a:.6}, |Δp| = {d:.2e} > {bound:.0e}"));
                }
            }
        }
        if w.pick != g.pick {
            let line = format!("case {c}: picked candidate {}, golden {} (golden margin {:.2e})", g.pick, w.pick, w.margin);
            if (w.margin as f64) > bound { failures.push(line) } else { ties.push(line) }
        }
    }
    Comparison { max_abs_dp: max, mean_abs_dp: sum / steps.max(1) as f64, steps, cases: want.cases.len(), failures, ties }
}

pub fn read(path: &Path) -> Result<Goldens> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::input("goldens", format!("{}: {e}", path.display())))
}

pub fn write(path: &Path, g: &Goldens) -> Result<()> {
    let text = serde_json::to_string_pretty(g).map_err(|e| Error::Backend(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::bad_file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goldens() -> Goldens {
        let case = Case { candidates: 2, prefix_tokens: 10, suffix_tokens: 5, scores: vec![vec![0.5, 0.7], vec![0.6, 0.2]], pick: 0, margin: 0.3 };
        Goldens { format: FORMAT.into(), model: "m".into(), seed: 1, computed_with: "cpu f32".into(), cases: vec![case] }
    }

    #[test]
    fn pick_is_best_minimum() {
        assert_eq!(pick(&[vec![0.5, 0.7], vec![0.6, 0.2]]), (0, 0.3));
    }

    #[test]
    fn equal_passes_and_drift_fails() {
        let want = goldens();
        assert!(compare(&want, &want, 2e-2).failures.is_empty());
        let mut got = want.clone();
        got.cases[0].scores[1][0] = 0.63;
        let c = compare(&want, &got, 2e-2);
        assert_eq!(c.failures.len(), 1, "{:?}", c.failures);
        assert!((c.max_abs_dp - 0.03).abs() < 1e-6);
        got.cases[0].scores[1][0] = f32::NAN;
        assert!(!compare(&want, &got, 2e-2).failures.is_empty(), "NaN must fail");
    }

    #[test]
    fn other_pick_or_step_count_fails() {
        let want = goldens();
        let mut got = want.clone();
        got.cases[0].pick = 1;
        // Golden margin 0.3: above a bound of 0.1 another pick fails, within a bound of 0.5
        // the two are tied at that resolution and the flip is only reported.
        assert!(compare(&want, &got, 0.1).failures.iter().any(|f| f.contains("picked")));
        let c = compare(&want, &got, 0.5);
        assert!(c.failures.is_empty() && c.ties.iter().any(|f| f.contains("picked")), "{c:?}");
        let mut got = want.clone();
        got.cases[0].scores[0].pop();
        assert!(compare(&want, &got, 1.0).failures.iter().any(|f| f.contains("steps")));
    }
}
