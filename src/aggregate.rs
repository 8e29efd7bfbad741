//! From step probabilities to solution scores and a Best-of-N choice.
//!
//! A solution with no scored step has no score (the reference's −inf) and is never selected.
//! Ties: Best-of-N keeps the earliest candidate; majority and weighted votes keep the answer seen
//! first.

use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Minimum step score (Med-PRM's `PRM_min_score`).
    #[default]
    Min,
    /// Last step score (`PRM_score`).
    Last,
    /// Arithmetic mean of the step scores.
    Mean,
    /// Product of the step scores.
    Prod,
}

impl Aggregation {
    pub const ALL: [Aggregation; 4] = [Aggregation::Min, Aggregation::Last, Aggregation::Mean, Aggregation::Prod];

    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Min => "min",
            Aggregation::Last => "last",
            Aggregation::Mean => "mean",
            Aggregation::Prod => "prod",
        }
    }

    /// `None` when there is no step.
    pub fn apply(self, scores: &[f32]) -> Option<f32> {
        if scores.is_empty() {
            return None;
        }
        Some(match self {
            Aggregation::Min => scores.iter().copied().fold(f32::INFINITY, f32::min),
            Aggregation::Last => *scores.last().expect("non-empty"),
            Aggregation::Mean => (scores.iter().map(|&s| s as f64).sum::<f64>() / scores.len() as f64) as f32,
            Aggregation::Prod => scores.iter().map(|&s| s as f64).product::<f64>() as f32,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The candidate with the highest solution score.
    #[default]
    BestOfN,
    /// The answer whose candidates' scores sum highest (SC+RM).
    WeightedVote,
    /// The most common answer (self-consistency; ignores scores).
    MajorityVote,
    /// MedS³'s `prm-min-vote-sum`: the answer whose candidates' minimum step scores sum highest,
    /// whatever the request's aggregation; its best candidate by that minimum.
    MinVoteSum,
    /// MedS³'s `prm-vote-sum`: the same over each candidate's last step score.
    VoteSum,
}

/// Index of the best-scored candidate; ties go to the earliest; unscored candidates are skipped.
pub fn best_of_n(scores: &[Option<f32>]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, s) in scores.iter().enumerate() {
        if let Some(s) = *s {
            if !s.is_nan() && best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// The most common answer (None answers count as an answer, as in the reference); ties to the
/// first seen. Returns the answer and the index of its first candidate.
pub fn majority_vote(answers: &[Option<String>]) -> Option<(Option<String>, usize)> {
    let mut tally: Vec<(&Option<String>, usize, usize)> = Vec::new(); // answer, count, first index
    for (i, a) in answers.iter().enumerate() {
        match tally.iter_mut().find(|t| t.0 == a) {
            Some(t) => t.1 += 1,
            None => tally.push((a, 1, i)),
        }
    }
    let mut best: Option<&(&Option<String>, usize, usize)> = None;
    for t in &tally {
        if best.is_none_or(|b| t.1 > b.1) {
            best = Some(t);
        }
    }
    best.map(|b| (b.0.clone(), b.2))
}

/// The answer with the largest sum of solution scores (unscored candidates add nothing; None
/// answers are not voted for); ties to the first seen. Returns the answer and the index of its
/// best-scored candidate.
pub fn weighted_vote(answers: &[Option<String>], scores: &[Option<f32>]) -> Option<(String, usize)> {
    let mut tally: Vec<(&str, f64, usize, f32)> = Vec::new(); // answer, sum, best index, best score
    for (i, (a, s)) in answers.iter().zip(scores).enumerate() {
        let (Some(a), Some(s)) = (a, s) else { continue };
        match tally.iter_mut().find(|t| t.0 == a) {
            Some(t) => {
                t.1 += *s as f64;
                if *s > t.3 {
                    t.2 = i;
                    t.3 = *s;
                }
            }
            None => tally.push((a, *s as f64, i, *s)),
        }
    }
    let mut best: Option<&(&str, f64, usize, f32)> = None;
    for t in &tally {
        if best.is_none_or(|b| t.1 > b.1) {
            best = Some(t);
        }
    }
    best.map(|b| (b.0.to_string(), b.2))
}

/// The candidate a selection picks: Best-of-N's argmax; for votes the best-scored candidate
/// with the winning answer (for a majority vote whose winners are all unscored, its first).
pub fn select(selection: Selection, answers: &[Option<String>], scores: &[Option<f32>]) -> Option<usize> {
    match selection {
        Selection::BestOfN => best_of_n(scores),
        Selection::MajorityVote => majority_vote(answers).map(|(a, first)| {
            best_of_n(&answers.iter().zip(scores).map(|(x, s)| if *x == a { *s } else { None }).collect::<Vec<_>>())
                .unwrap_or(first)
        }),
        // Given solution scores, the step-based votes are weighted votes over them; `rank` gives
        // them the per-candidate value their rule names.
        Selection::WeightedVote | Selection::MinVoteSum | Selection::VoteSum => {
            weighted_vote(answers, scores).map(|(_, i)| i)
        }
    }
}

/// The candidates of one question, scored, ordered and selected.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Each candidate's solution score, in request order (`None`: no step).
    pub scores: Vec<Option<f32>>,
    /// Candidate indices, best first (ties keep request order; unscored last), cut to `top_n`.
    pub order: Vec<usize>,
    /// The selection's pick (`None` when no candidate can be picked).
    pub selected: Option<usize>,
}

/// Ranks candidates from their step scores and answers: every route and `medprm score` rank
/// through this one function.
pub fn rank(
    step_scores: &[&[f32]],
    answers: &[Option<String>],
    aggregation: Aggregation,
    selection: Selection,
    top_n: Option<usize>,
) -> Ranking {
    let scores: Vec<Option<f32>> = step_scores.iter().map(|s| aggregation.apply(s)).collect();
    let by = |a: Aggregation| step_scores.iter().map(|s| a.apply(s)).collect::<Vec<_>>();
    let selected = match selection {
        Selection::MinVoteSum => select(selection, answers, &by(Aggregation::Min)),
        Selection::VoteSum => select(selection, answers, &by(Aggregation::Last)),
        _ => select(selection, answers, &scores),
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Stable sort: ties keep request order.
    order.sort_by(|&a, &b| match (scores[a], scores[b]) {
        (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    order.truncate(top_n.unwrap_or(order.len()));
    Ranking { scores, order, selected }
}

fn answer_patterns() -> &'static [Regex] {
    static RE: OnceLock<Vec<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        [
            r"(?i)\banswer\s+is\s*:?\s*\(?\s*([A-J])\s*\)?(?:[\s.,;:!)]|$)",
            r"(?i)\banswer\s*:\s*\(?\s*([A-J])\s*\)?(?:[\s.,;:!)]|$)",
            r"(?i)\boption\s+\(?([A-J])\)?\s+is\s+(?:the\s+)?(?:correct|right|best)",
        ]
        .iter()
        .map(|p| Regex::new(p).expect("valid regex"))
        .collect()
    })
}

/// The multiple-choice letter a solution commits to ("the answer is (C)", "Answer: C"), taken
/// from the last such statement; `None` when there is none.
pub fn extract_answer(text: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for re in answer_patterns() {
        for c in re.captures_iter(text) {
            let m = c.get(1).expect("group 1");
            if best.as_ref().is_none_or(|(pos, _)| m.start() > *pos) {
                best = Some((m.start(), m.as_str().to_ascii_uppercase()));
            }
        }
    }
    best.map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates() {
        let s = [0.5, 0.25, 1.0];
        assert_eq!(Aggregation::Min.apply(&s), Some(0.25));
        assert_eq!(Aggregation::Last.apply(&s), Some(1.0));
        assert!((Aggregation::Mean.apply(&s).unwrap() - 0.583_333_3).abs() < 1e-6);
        assert_eq!(Aggregation::Prod.apply(&s), Some(0.125));
        assert_eq!(Aggregation::Min.apply(&[]), None);
    }

    #[test]
    fn best_of_n_ties_and_unscored() {
        assert_eq!(best_of_n(&[None, Some(0.5), Some(0.7), Some(0.7)]), Some(2));
        assert_eq!(best_of_n(&[None, None]), None);
    }

    #[test]
    fn votes_tie_to_first_seen() {
        let a = |s: &[&str]| s.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>();
        assert_eq!(majority_vote(&a(&["B", "A", "A", "B"])), Some((Some("B".into()), 0)));
        assert_eq!(majority_vote(&[None, None, Some("A".into())]), Some((None, 0)));
        let w = weighted_vote(&a(&["A", "B", "B"]), &[Some(0.5), Some(0.25), Some(0.25)]);
        assert_eq!(w, Some(("A".into(), 0)));
        let w = weighted_vote(&a(&["A", "B", "B"]), &[Some(0.8), Some(0.5), Some(0.4)]);
        assert_eq!(w, Some(("B".into(), 1)));
    }

    #[test]
    fn rank_orders_cuts_and_selects() {
        let a = |s: &[&str]| s.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>();
        let steps: [&[f32]; 5] = [&[0.5, 0.4], &[], &[0.9], &[0.4], &[0.9, 0.95]];
        let answers = a(&["A", "B", "B", "A", "C"]);
        let r = rank(&steps, &answers, Aggregation::Min, Selection::BestOfN, None);
        assert_eq!(r.scores, vec![Some(0.4), None, Some(0.9), Some(0.4), Some(0.9)]);
        assert_eq!(r.order, vec![2, 4, 0, 3, 1], "ties keep request order, unscored last");
        assert_eq!(r.selected, Some(2));
        let r = rank(&steps, &answers, Aggregation::Last, Selection::BestOfN, Some(2));
        assert_eq!((r.order, r.selected), (vec![4, 2], Some(4)));
        // Majority: A and B tie at two votes, A seen first; its best-scored candidate is 0.
        let r = rank(&steps, &answers, Aggregation::Min, Selection::MajorityVote, None);
        assert_eq!(r.selected, Some(0));
        // Weighted: A sums 0.8, B 0.9 (the unscored B adds nothing), C 0.9 seen later.
        let r = rank(&steps, &answers, Aggregation::Min, Selection::WeightedVote, None);
        assert_eq!(r.selected, Some(2));
        // A majority whose candidates are all unscored still selects its first.
        let r = rank(&[&[], &[], &[0.3]], &a(&["B", "B", "A"]), Aggregation::Min, Selection::MajorityVote, None);
        assert_eq!(r.selected, Some(0));
        assert_eq!(rank(&[&[]], &[None], Aggregation::Min, Selection::BestOfN, None).selected, None);
    }

    #[test]
    fn meds3_votes_use_their_own_step_values() {
        let a = |s: &[&str]| s.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>();
        let steps: [&[f32]; 4] = [&[0.9, 0.1], &[0.6, 0.7], &[0.5, 0.5], &[0.2, 0.95]];
        let answers = a(&["A", "A", "B", "B"]);
        // min: A sums 0.1 + 0.6 = 0.7, B 0.5 + 0.2 = 0.7: a tie, A seen first; its best by min is 1.
        let r = rank(&steps, &answers, Aggregation::Last, Selection::MinVoteSum, None);
        assert_eq!(r.selected, Some(1));
        // The request's aggregation still orders the candidates.
        assert_eq!(r.order, vec![3, 1, 2, 0]);
        // last: A sums 0.1 + 0.7 = 0.8, B 0.5 + 0.95 = 1.45; B's best by last is 3.
        let r = rank(&steps, &answers, Aggregation::Min, Selection::VoteSum, None);
        assert_eq!(r.selected, Some(3));
    }

    #[test]
    fn extracts_answers() {
        assert_eq!(extract_answer("so the answer is (C)."), Some("C".into()));
        assert_eq!(extract_answer("The answer is D. ки"), Some("D".into()));
        assert_eq!(extract_answer("Answer: b"), Some("B".into()));
        assert_eq!(extract_answer("the answer is A... no wait, the answer is (E)"), Some("E".into()));
        assert_eq!(extract_answer("I am not sure about anything."), None);
        assert_eq!(extract_answer("The answer is Bacteria"), None);
    }
}
