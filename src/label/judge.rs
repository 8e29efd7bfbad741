//! RAG-as-a-judge: the judge reads the guideline evidence, the question and the numbered steps and
//! answers one line per step, `Step k: +` or `Step k: -`. An answer that misses a step or
//! contradicts itself is retried; after the last try the steps without a verdict are `null`
//! with the reason (never guessed).

use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Value};

use super::evidence::Evidence;
use super::input::Item;

const SYSTEM: &str = "You are a meticulous medical expert who grades each step of a student's solution to a \
multiple-choice medical question. Use the evidence documents and your medical knowledge. A step is correct (+) \
when its facts and reasoning are right and it moves towards the correct answer; it is incorrect (-) when it \
states something false, reasons wrongly, or commits to a wrong option.";

fn marker() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^\s*(?:## )?Step \d+:\s*").expect("valid regex"))
}

fn verdict_line() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // "Step 3: -", "**Step 3**: +", "Step 3 - incorrect", "step 3: (+)".
    RE.get_or_init(|| {
        Regex::new(r"(?i)step\s*(\d+)\s*\**\s*[:.)\-–—]?\s*\**\s*[\[(]?\s*(\+|-|−|–|incorrect|correct|wrong|right)").expect("valid regex")
    })
}

/// The judge's chat messages for a solution.
pub fn messages(item: &Item, evidence: &[Evidence]) -> Value {
    let mut user = String::new();
    if evidence.is_empty() {
        user.push_str("Evidence: none available.\n\n");
    } else {
        user.push_str("Evidence:\n");
        for (i, e) in evidence.iter().enumerate() {
            user.push_str(&format!("[{}] {}\n", i + 1, e.text.trim()));
        }
        user.push('\n');
    }
    let q = &item.question;
    user.push_str(&format!("Question:\n{}\n", q.question.trim()));
    if !q.options.trim().is_empty() {
        user.push_str(&format!("{}\n", q.options.trim_end()));
    }
    user.push_str("\nSolution:\n");
    for (i, s) in item.steps.iter().enumerate() {
        user.push_str(&format!("Step {}: {}\n", i + 1, marker().replace(s, "")));
    }
    let n = item.steps.len();
    user.push_str(&format!(
        "\nGrade all {n} steps. Reply with exactly {n} lines, one per step in order, each `Step k: +` if step k is correct or `Step k: -` if it is incorrect, and nothing else."
    ));
    json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": super::rollout::user_content(item, user)}])
}

/// Verdicts read from a judge's answer for `n` steps: `Ok` when every step has exactly one
/// verdict, else the verdicts found and the reason.
pub fn parse(answer: &str, n: usize) -> Result<Vec<u8>, (Vec<Option<u8>>, String)> {
    let mut v: Vec<Option<u8>> = vec![None; n];
    let mut conflict = Vec::new();
    for c in verdict_line().captures_iter(answer) {
        let Ok(k) = c[1].parse::<usize>() else { continue };
        if k == 0 || k > n {
            continue;
        }
        let sign = c[2].to_ascii_lowercase();
        let verdict = if matches!(sign.as_str(), "+" | "correct" | "right") { 1 } else { 0 };
        match v[k - 1] {
            Some(prev) if prev != verdict => conflict.push(k),
            _ => v[k - 1] = Some(verdict),
        }
    }
    for &k in &conflict {
        v[k - 1] = None;
    }
    let missing: Vec<usize> = (1..=n).filter(|k| v[k - 1].is_none() && !conflict.contains(k)).collect();
    if missing.is_empty() && conflict.is_empty() {
        return Ok(v.into_iter().map(|x| x.expect("all present")).collect());
    }
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!("no verdict for step(s) {}", list(&missing)));
    }
    if !conflict.is_empty() {
        why.push(format!("contradictory verdicts for step(s) {}", list(&conflict)));
    }
    Err((v, why.join("; ")))
}

fn list(ks: &[usize]) -> String {
    ks.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_verdict_forms() {
        assert_eq!(parse("Step 1: +\nStep 2: -\nStep 3: +", 3), Ok(vec![1, 0, 1]));
        assert_eq!(parse("**Step 1**: (+)\n**Step 2** - incorrect", 2), Ok(vec![1, 0]));
        assert_eq!(parse("step 2: correct\nstep 1: wrong", 2), Ok(vec![0, 1]));
        // Repeating a verdict is fine; steps out of range are ignored.
        assert_eq!(parse("Step 1: +\nStep 1: +\nStep 9: -", 1), Ok(vec![1]));
    }

    #[test]
    fn short_and_contradictory_answers_are_not_guessed() {
        let (v, why) = parse("Step 1: +", 3).unwrap_err();
        assert_eq!(v, vec![Some(1), None, None]);
        assert_eq!(why, "no verdict for step(s) 2, 3");
        let (v, why) = parse("Step 1: +\nStep 1: -\nStep 2: -", 2).unwrap_err();
        assert_eq!(v, vec![None, Some(0)]);
        assert_eq!(why, "contradictory verdicts for step(s) 1");
        let (v, _) = parse("I think the solution is fine.", 2).unwrap_err();
        assert_eq!(v, vec![None, None]);
    }
}
