//! Solution text → tagged steps, following the Med-PRM preprocessing (`prm_processed_solution`):
//! newlines become spaces; the text is cut before every `(?:## )?Step N:` marker (the marker stays
//! with its step); each step is stripped, every `"## "` in it removed, and the step tag appended;
//! text before the first marker is kept, stripped and untagged; a text without any marker becomes
//! one tagged step; a blank text has no step.

use std::sync::OnceLock;

use regex::Regex;

/// Python's `str.strip()`: Unicode whitespace plus U+001C..U+001F (which Rust's `trim` keeps).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

fn step_marker() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?:## )?Step \d+:").expect("valid regex"))
}

/// A solution cut into an untagged preamble and the steps to be scored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SplitSolution {
    pub preamble: Option<String>,
    pub steps: Vec<String>,
}

/// Splits raw solution text with the Med-PRM rule.
pub fn split_solution(text: &str) -> SplitSolution {
    let flat = text.replace('\n', " ");
    let starts: Vec<usize> = step_marker().find_iter(&flat).map(|m| m.start()).collect();
    if starts.is_empty() {
        let s = py_strip(&flat);
        return SplitSolution { preamble: None, steps: if s.is_empty() { vec![] } else { vec![s.to_string()] } };
    }
    let head = py_strip(&flat[..starts[0]]);
    let steps = starts
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let end = starts.get(i + 1).copied().unwrap_or(flat.len());
            py_strip(&flat[s..end]).replace("## ", "")
        })
        .collect();
    SplitSolution { preamble: (!head.is_empty()).then(|| head.to_string()), steps }
}

/// Does this step already start with a `Step N:` marker?
pub fn has_marker(step: &str) -> bool {
    step_marker().find(step).is_some_and(|m| m.start() == 0)
}

/// Cuts an already tagged solution (`prm_processed_solution`) at its tags: the text of every
/// tagged step (without the tag) and any untagged text left after the last tag.
pub fn split_tagged<'a>(tagged: &'a str, tag: &str) -> (Vec<&'a str>, &'a str) {
    let mut parts: Vec<&str> = tagged.split(tag).collect();
    let rest = parts.pop().unwrap_or("");
    (parts.into_iter().map(py_strip).collect(), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_med_prm() {
        let s = split_solution("Let me think.\n## Step 1: A ## b\n\nStep 2: C. The answer is (B).");
        assert_eq!(s.preamble.as_deref(), Some("Let me think."));
        assert_eq!(s.steps, vec!["Step 1: A b", "Step 2: C. The answer is (B)."]);
    }

    #[test]
    fn no_marker_is_one_step_and_blank_is_none() {
        assert_eq!(split_solution("  just text\n").steps, vec!["just text"]);
        assert!(split_solution(" \n\t").steps.is_empty());
    }

    #[test]
    fn substep_matches_like_the_reference() {
        // The reference regex has no word boundary.
        let s = split_solution("SubStep 1: x");
        assert_eq!(s.preamble.as_deref(), Some("Sub"));
        assert_eq!(s.steps, vec!["Step 1: x"]);
    }

    #[test]
    fn python_strip_set() {
        assert_eq!(py_strip("\u{1c}\u{1f} a \u{a0}"), "a");
    }

    #[test]
    fn tagged_split() {
        let (steps, rest) = split_tagged("Step 1: a ки Step 2: b ки", " ки");
        assert_eq!(steps, vec!["Step 1: a", "Step 2: b"]);
        assert_eq!(rest, "");
    }
}
