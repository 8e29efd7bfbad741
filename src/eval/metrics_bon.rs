//! Best-of-N accuracy as a function of N: for each N (1, 2, 4, … and the most candidates any
//! question has), `draws` fixed-seed subsamples of N candidates per question, scored by every
//! selection medprm has (through [`crate::aggregate::rank`], so its tie rules hold), plus the
//! oracle (pass@N) and a random pick; the mean over questions with a 95% bootstrap interval,
//! per `data_source` and macro-averaged over sources.
//!
//! A subsample keeps the candidates in their file order, so a tie goes where `medprm score` and
//! the server send it: Best-of-N to the earliest candidate, votes to the answer seen first.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::aggregate::{rank, Aggregation, Selection};
use crate::rng::SplitMix64;

/// One scored candidate.
#[derive(Debug, Clone)]
pub struct Cand {
    /// p(+) of each aggregated step; `None`: the scorer refused it (never selected by a PRM rule).
    pub steps: Option<Vec<f32>>,
    pub answer: Option<String>,
    /// Right by the record's `score` (1.0) or else by its answer, as `medprm score` judges
    /// Best-of-N picks.
    pub right: bool,
}

#[derive(Debug, Clone)]
pub struct Question {
    pub data_source: String,
    pub correct_answer: String,
    pub cands: Vec<Cand>,
}

/// The selections compared, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    BestOfNMin,
    BestOfNLast,
    BestOfNMean,
    BestOfNProd,
    WeightedVote,
    MajorityVote,
    MinVoteSum,
    VoteSum,
    /// pass@N: some candidate is right.
    Oracle,
    /// The expected accuracy of a uniform pick (the fraction right), no extra randomness.
    Random,
}

impl Method {
    pub const ALL: [Method; 10] = [
        Method::BestOfNMin,
        Method::BestOfNLast,
        Method::BestOfNMean,
        Method::BestOfNProd,
        Method::WeightedVote,
        Method::MajorityVote,
        Method::MinVoteSum,
        Method::VoteSum,
        Method::Oracle,
        Method::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::BestOfNMin => "best_of_n_min",
            Method::BestOfNLast => "best_of_n_last",
            Method::BestOfNMean => "best_of_n_mean",
            Method::BestOfNProd => "best_of_n_prod",
            Method::WeightedVote => "weighted_vote",
            Method::MajorityVote => "majority_vote",
            Method::MinVoteSum => "min_vote_sum",
            Method::VoteSum => "vote_sum",
            Method::Oracle => "oracle",
            Method::Random => "random",
        }
    }
}

/// The tie rule, as the report states it.
pub const TIE_RULE: &str = "Subsamples keep the candidates in file order. best_of_n_*: the highest solution score wins, a tie goes to \
the earliest candidate; a refused or stepless candidate is never picked. weighted_vote (solution scores by --aggregation), \
min_vote_sum (min step scores) and vote_sum (last step scores): the answer with the largest sum wins, a tie goes to the answer \
seen first. majority_vote: the most common answer (no answer counts as one), a tie goes to the answer seen first. \
A tie is counted when two or more candidates (best_of_n) or answers (votes) share the winning value; it is decisive when \
the tied ones differ in correctness.";

/// What one selection makes of one subsample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// 1 or 0 (the random pick: the fraction right).
    pub correct: f64,
    pub tie: bool,
    pub decisive_tie: bool,
}

fn vote_ties(keys: &[Option<String>], weights: &[Option<f64>], correct: &str) -> (bool, bool) {
    // Tallies by answer (weights None: not voted), then whether the maximum is shared.
    let mut tally: Vec<(&Option<String>, f64)> = Vec::new();
    for (k, w) in keys.iter().zip(weights) {
        let Some(w) = w else { continue };
        match tally.iter_mut().find(|t| t.0 == k) {
            Some(t) => t.1 += w,
            None => tally.push((k, *w)),
        }
    }
    let Some(max) = tally.iter().map(|t| t.1).reduce(f64::max) else { return (false, false) };
    let top: Vec<_> = tally.iter().filter(|t| t.1 == max).collect();
    let tie = top.len() > 1;
    let rights = top.iter().filter(|t| t.0.as_deref() == Some(correct)).count();
    (tie, tie && rights > 0 && rights < top.len())
}

/// Scores one subsample (indices into `q.cands`) with one method.
pub fn outcome(q: &Question, idx: &[usize], method: Method, vote_aggregation: Aggregation) -> Outcome {
    let cands: Vec<&Cand> = idx.iter().map(|&i| &q.cands[i]).collect();
    let empty: &[f32] = &[];
    let steps: Vec<&[f32]> = cands.iter().map(|c| c.steps.as_deref().unwrap_or(empty)).collect();
    let answers: Vec<Option<String>> = cands.iter().map(|c| c.answer.clone()).collect();
    let right = |i: usize| cands[i].right;
    let says_correct = |i: usize| answers[i].as_deref() == Some(q.correct_answer.as_str());
    let by = |a: Aggregation| steps.iter().map(|s| a.apply(s)).collect::<Vec<_>>();
    let best = |agg: Aggregation| {
        let sel = rank(&steps, &answers, agg, Selection::BestOfN, None).selected;
        let scores = by(agg);
        let max = scores.iter().flatten().filter(|s| !s.is_nan()).copied().reduce(f32::max);
        let tied: Vec<usize> = (0..scores.len()).filter(|&i| max.is_some() && scores[i] == max).collect();
        let tie = tied.len() > 1;
        let decisive = tie && tied.iter().any(|&i| right(i)) && !tied.iter().all(|&i| right(i));
        Outcome { correct: sel.is_some_and(right) as u8 as f64, tie, decisive_tie: decisive }
    };
    let vote = |sel: Selection, agg: Aggregation| {
        let picked = rank(&steps, &answers, vote_aggregation, sel, None).selected;
        let w: Vec<Option<f64>> = by(agg).iter().zip(&answers).map(|(s, a)| a.as_ref().and(s.map(|v| v as f64))).collect();
        let (tie, decisive) = vote_ties(&answers, &w, &q.correct_answer);
        Outcome { correct: picked.is_some_and(says_correct) as u8 as f64, tie, decisive_tie: decisive }
    };
    match method {
        Method::BestOfNMin => best(Aggregation::Min),
        Method::BestOfNLast => best(Aggregation::Last),
        Method::BestOfNMean => best(Aggregation::Mean),
        Method::BestOfNProd => best(Aggregation::Prod),
        Method::WeightedVote => vote(Selection::WeightedVote, vote_aggregation),
        Method::MinVoteSum => vote(Selection::MinVoteSum, Aggregation::Min),
        Method::VoteSum => vote(Selection::VoteSum, Aggregation::Last),
        Method::MajorityVote => {
            let picked = rank(&steps, &answers, vote_aggregation, Selection::MajorityVote, None).selected;
            let (tie, decisive) = vote_ties(&answers, &vec![Some(1.0); answers.len()], &q.correct_answer);
            Outcome { correct: picked.is_some_and(says_correct) as u8 as f64, tie, decisive_tie: decisive }
        }
        Method::Oracle => Outcome { correct: (0..cands.len()).any(right) as u8 as f64, tie: false, decisive_tie: false },
        Method::Random => Outcome {
            correct: (0..cands.len()).filter(|&i| right(i)).count() as f64 / cands.len().max(1) as f64,
            tie: false,
            decisive_tie: false,
        },
    }
}

/// 1, 2, 4, … below `max`, then `max`.
pub fn n_grid(max: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut n = 1;
    while n < max {
        v.push(n);
        n *= 2;
    }
    if max > 0 {
        v.push(max);
    }
    v
}

/// A seeded stream for one (purpose, N, draw, question).
fn stream(seed: u64, parts: &[u64]) -> SplitMix64 {
    let mut r = SplitMix64::new(seed);
    let mut s = r.next_u64();
    for &p in parts {
        s = SplitMix64::new(s ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
    }
    SplitMix64::new(s)
}

/// `k` of `0..n` without replacement, in increasing order (all of them when `k >= n`).
pub fn subsample(n: usize, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if k >= n {
        return idx;
    }
    for i in 0..k {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut out = idx[..k].to_vec();
    out.sort_unstable();
    out
}

/// A mean with its 95% percentile bootstrap interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

pub const BOOTSTRAP: usize = 1000;

/// Percentile bootstrap of the macro mean of `groups` (each resampled within itself; one group:
/// the plain mean), `BOOTSTRAP` resamples from `seed`.
pub fn bootstrap(groups: &[&[f64]], seed: u64) -> Stat {
    let groups: Vec<&[f64]> = groups.iter().copied().filter(|g| !g.is_empty()).collect();
    let macro_mean = |gs: &mut dyn Iterator<Item = f64>| -> f64 {
        let v: Vec<f64> = gs.collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let mean = macro_mean(&mut groups.iter().map(|g| g.iter().sum::<f64>() / g.len() as f64));
    let mut rng = stream(seed, &[0xB007]);
    let mut reps: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| {
            macro_mean(&mut groups.iter().map(|g| {
                (0..g.len()).map(|_| g[(rng.next_u64() % g.len() as u64) as usize]).sum::<f64>() / g.len() as f64
            }))
        })
        .collect();
    reps.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| if reps.is_empty() { mean } else { reps[((p * (reps.len() - 1) as f64).round() as usize).min(reps.len() - 1)] };
    Stat { mean, lo: pct(0.025), hi: pct(0.975) }
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub n: usize,
    /// Subsamples per question (1 once N reaches every question's candidates).
    pub draws: usize,
    /// Questions with fewer than N candidates (they use all of theirs).
    pub capped: usize,
    pub method: Method,
    /// All questions pooled.
    pub overall: Stat,
    /// The mean of the per-source means (stratified bootstrap).
    pub macro_avg: Stat,
    pub per_source: BTreeMap<String, Stat>,
    /// Tied subsamples, summed over questions and draws.
    pub ties: usize,
    pub decisive_ties: usize,
    /// ties / (questions × draws).
    pub tie_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BonReport {
    pub questions: usize,
    pub candidates: usize,
    /// Candidates the scorer refused (never selected; their answers still vote in majority_vote).
    pub refused: usize,
    pub sources: BTreeMap<String, usize>,
    pub seed: u64,
    pub bootstrap_resamples: usize,
    pub vote_aggregation: Aggregation,
    pub tie_rule: &'static str,
    pub points: Vec<Point>,
}

/// Accuracy against N for every method.
pub fn evaluate(questions: &[Question], draws: usize, seed: u64, vote_aggregation: Aggregation) -> BonReport {
    let max = questions.iter().map(|q| q.cands.len()).max().unwrap_or(0);
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for q in questions {
        *sources.entry(q.data_source.clone()).or_default() += 1;
    }
    let mut points = Vec::new();
    for n in n_grid(max) {
        let d = if questions.iter().all(|q| q.cands.len() <= n) { 1 } else { draws.max(1) };
        let capped = questions.iter().filter(|q| q.cands.len() < n).count();
        let samples: Vec<Vec<Vec<usize>>> = questions
            .iter()
            .enumerate()
            .map(|(qi, q)| (0..d).map(|di| subsample(q.cands.len(), n, &mut stream(seed, &[n as u64, di as u64, qi as u64]))).collect())
            .collect();
        for method in Method::ALL {
            let (mut ties, mut decisive) = (0, 0);
            let per_q: Vec<f64> = questions
                .iter()
                .zip(&samples)
                .map(|(q, ss)| {
                    ss.iter()
                        .map(|s| {
                            let o = outcome(q, s, method, vote_aggregation);
                            ties += o.tie as usize;
                            decisive += o.decisive_tie as usize;
                            o.correct
                        })
                        .sum::<f64>()
                        / d as f64
                })
                .collect();
            let by_source: BTreeMap<&str, Vec<f64>> = sources
                .keys()
                .map(|s| (s.as_str(), questions.iter().zip(&per_q).filter(|(q, _)| &q.data_source == s).map(|(_, &v)| v).collect()))
                .collect();
            // The same resamples of questions for every method at this N (paired intervals).
            let bseed = seed ^ ((n as u64) << 32);
            let groups: Vec<&[f64]> = by_source.values().map(|v| v.as_slice()).collect();
            points.push(Point {
                n,
                draws: d,
                capped,
                method,
                overall: bootstrap(&[&per_q], bseed),
                macro_avg: bootstrap(&groups, bseed),
                per_source: by_source.iter().map(|(s, v)| (s.to_string(), bootstrap(&[v], bseed))).collect(),
                ties,
                decisive_ties: decisive,
                tie_rate: ties as f64 / (questions.len() * d).max(1) as f64,
            });
        }
    }
    BonReport {
        questions: questions.len(),
        candidates: questions.iter().map(|q| q.cands.len()).sum(),
        refused: questions.iter().flat_map(|q| &q.cands).filter(|c| c.steps.is_none()).count(),
        sources,
        seed,
        bootstrap_resamples: BOOTSTRAP,
        vote_aggregation,
        tie_rule: TIE_RULE,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(steps: &[f32], answer: &str, correct: &str) -> Cand {
        Cand { steps: Some(steps.to_vec()), answer: Some(answer.into()), right: answer == correct }
    }

    fn q(source: &str, cands: &[(&[f32], &str)]) -> Question {
        Question { data_source: source.into(), correct_answer: "A".into(), cands: cands.iter().map(|(s, a)| cand(s, a, "A")).collect() }
    }

    #[test]
    fn grid_and_subsample() {
        assert_eq!(n_grid(1), vec![1]);
        assert_eq!(n_grid(6), vec![1, 2, 4, 6]);
        assert_eq!(n_grid(8), vec![1, 2, 4, 8]);
        let mut r = SplitMix64::new(3);
        let s = subsample(10, 4, &mut r);
        assert_eq!(s.len(), 4);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subsample(3, 5, &mut r), vec![0, 1, 2]);
    }

    #[test]
    fn outcomes_follow_aggregate_and_count_ties() {
        // B and A tie on min (0.5): Best-of-N keeps the earliest (B, wrong); the tie is decisive.
        let x = q("s", &[(&[0.9, 0.5], "B"), (&[0.5, 0.6], "A"), (&[0.2], "A")]);
        let all = [0, 1, 2];
        let o = outcome(&x, &all, Method::BestOfNMin, Aggregation::Min);
        assert_eq!(o, Outcome { correct: 0.0, tie: true, decisive_tie: true });
        // last: B 0.5, A 0.6, A 0.2 → candidate 1.
        assert_eq!(outcome(&x, &all, Method::BestOfNLast, Aggregation::Min).correct, 1.0);
        // Weighted (min): A sums 0.7, B 0.5 → A.
        assert_eq!(outcome(&x, &all, Method::WeightedVote, Aggregation::Min).correct, 1.0);
        // Majority: A twice.
        let o = outcome(&x, &all, Method::MajorityVote, Aggregation::Min);
        assert_eq!(o, Outcome { correct: 1.0, tie: false, decisive_tie: false });
        // Only the first two: a majority tie (B seen first) that decides.
        let o = outcome(&x, &[0, 1], Method::MajorityVote, Aggregation::Min);
        assert_eq!(o, Outcome { correct: 0.0, tie: true, decisive_tie: true });
        assert_eq!(outcome(&x, &all, Method::Oracle, Aggregation::Min).correct, 1.0);
        assert!((outcome(&x, &all, Method::Random, Aggregation::Min).correct - 2.0 / 3.0).abs() < 1e-12);
        // A refused candidate is never picked by a PRM rule.
        let mut y = x.clone();
        y.cands[0].steps = None;
        assert_eq!(outcome(&y, &all, Method::BestOfNMin, Aggregation::Min), Outcome { correct: 1.0, tie: false, decisive_tie: false });
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let v = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        let a = bootstrap(&[&v], 7);
        assert_eq!(a, bootstrap(&[&v], 7));
        assert!((a.mean - 0.625).abs() < 1e-12 && a.lo <= a.mean && a.mean <= a.hi && a.lo < a.hi, "{a:?}");
        let c = bootstrap(&[&[1.0, 1.0], &[0.0, 0.0, 0.0, 1.0]], 1);
        assert!((c.mean - 0.625).abs() < 1e-12, "macro of 1.0 and 0.25");
        let z = bootstrap(&[&[1.0, 1.0]], 1);
        assert_eq!((z.lo, z.hi), (1.0, 1.0));
    }

    #[test]
    fn curve_at_all_equals_the_full_selection() {
        let qs = vec![
            q("a", &[(&[0.9], "B"), (&[0.8], "A"), (&[0.1], "A"), (&[0.2], "C")]),
            q("a", &[(&[0.3], "A"), (&[0.8], "A"), (&[0.1], "B"), (&[0.2], "C")]),
            q("b", &[(&[0.3], "C"), (&[0.4], "D"), (&[0.1], "C"), (&[0.2], "C")]),
        ];
        let r = evaluate(&qs, 5, 1, Aggregation::Min);
        let at = |n, m| r.points.iter().find(|p| p.n == n && p.method == m).unwrap();
        assert_eq!(at(4, Method::BestOfNMin).draws, 1);
        assert!((at(4, Method::BestOfNMin).overall.mean - 1.0 / 3.0).abs() < 1e-12);
        assert!((at(4, Method::Oracle).overall.mean - 2.0 / 3.0).abs() < 1e-12);
        // Macro: source a 0.5, source b 0.
        assert!((at(4, Method::BestOfNMin).macro_avg.mean - 0.25).abs() < 1e-12);
        // N = 1: every method but the oracle is a random pick's expectation in the limit; the
        // oracle equals random exactly.
        assert_eq!(at(1, Method::Oracle).overall.mean, at(1, Method::Random).overall.mean);
        assert_eq!(r.refused, 0);
        // Same seed, same numbers.
        let again = evaluate(&qs, 5, 1, Aggregation::Min);
        assert_eq!(serde_json::to_string(&r).unwrap(), serde_json::to_string(&again).unwrap());
    }
}
