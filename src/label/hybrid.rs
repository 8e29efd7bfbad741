//! The hybrid rule: a step is confidently correct when the judge says + and its Monte Carlo value
//! is above `upper`, confidently incorrect when the judge says − and the value is below `lower`;
//! every other step (disagreement, a value in between, no verdict, no value) is uncertain and
//! goes to expert review.

/// Thresholds of the rule (the flags `--upper`, `--lower`, `--max-confidence`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Thresholds {
    pub upper: f64,
    pub lower: f64,
    pub max_confidence: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { upper: 0.7, lower: 0.3, max_confidence: 0.95 }
    }
}

/// A step's hybrid label: `None` = uncertain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hybrid {
    pub label: Option<u8>,
    pub confidence: Option<f64>,
}

impl Hybrid {
    pub fn uncertain(&self) -> bool {
        self.label.is_none()
    }
}

/// The verdict the rule reads from several judges: theirs when all of them gave the same one,
/// else none.
pub fn agreed_verdict(verdicts: &[Option<u8>]) -> Option<u8> {
    let first = (*verdicts.first()?)?;
    verdicts.iter().all(|v| *v == Some(first)).then_some(first)
}

pub fn hybrid(judge: Option<u8>, mc: Option<f64>, t: &Thresholds) -> Hybrid {
    match (judge, mc) {
        (Some(1), Some(m)) if m > t.upper => Hybrid { label: Some(1), confidence: Some(m.min(t.max_confidence)) },
        (Some(0), Some(m)) if m < t.lower => Hybrid { label: Some(0), confidence: Some((1.0 - m).min(t.max_confidence)) },
        _ => Hybrid { label: None, confidence: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_values() {
        let t = Thresholds::default();
        let h = |j, m| hybrid(j, m, &t);
        assert_eq!(h(Some(1), Some(0.8)), Hybrid { label: Some(1), confidence: Some(0.8) });
        assert_eq!(h(Some(1), Some(1.0)), Hybrid { label: Some(1), confidence: Some(0.95) });
        assert_eq!(h(Some(0), Some(0.25)), Hybrid { label: Some(0), confidence: Some(0.75) });
        assert_eq!(h(Some(0), Some(0.0)), Hybrid { label: Some(0), confidence: Some(0.95) });
        // The thresholds are strict.
        assert!(h(Some(1), Some(0.7)).uncertain());
        assert!(h(Some(0), Some(0.3)).uncertain());
        // Disagreement, the middle band, no verdict, no value.
        assert!(h(Some(0), Some(0.9)).uncertain());
        assert!(h(Some(1), Some(0.1)).uncertain());
        assert!(h(Some(1), Some(0.5)).uncertain());
        assert!(h(None, Some(1.0)).uncertain());
        assert!(h(Some(1), None).uncertain());
        assert_eq!(h(None, Some(0.0)).confidence, None);
        let t = Thresholds { upper: 0.5, lower: 0.5, max_confidence: 0.99 };
        assert_eq!(hybrid(Some(1), Some(0.6), &t).label, Some(1));
        assert_eq!(hybrid(Some(0), Some(0.0), &t).confidence, Some(0.99));
    }

    #[test]
    fn judges_must_agree() {
        assert_eq!(agreed_verdict(&[Some(1), Some(1)]), Some(1));
        assert_eq!(agreed_verdict(&[Some(1), Some(0)]), None);
        assert_eq!(agreed_verdict(&[Some(0), None]), None);
        assert_eq!(agreed_verdict(&[None]), None);
        assert_eq!(agreed_verdict(&[]), None);
    }
}
