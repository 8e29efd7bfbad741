//! Step-level metrics of a PRM against labelled steps: ProcessBench's F1 (the harmonic mean of
//! the accuracy on erroneous and on correct solutions, the first step scored under the threshold
//! being the predicted first error), first-error accuracy, positive/negative step F1 and their
//! macro-F1, AUROC, calibration (ECE and reliability bins), at one threshold and as a sweep.

use std::collections::BTreeMap;

use serde::Serialize;

/// One solution: its step labels (`None`: unlabelled) and p(+) of each step.
#[derive(Debug, Clone)]
pub struct Scored {
    pub data_source: String,
    pub labels: Vec<Option<bool>>,
    pub scores: Vec<f64>,
}

impl Scored {
    fn first_error(&self) -> Option<usize> {
        self.labels.iter().position(|l| *l == Some(false))
    }
    fn predicted_first_error(&self, t: f64) -> Option<usize> {
        self.scores.iter().position(|&s| s < t)
    }
}

pub const BINS: usize = 10;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AtThreshold {
    pub threshold: f64,
    /// Accuracy of the predicted first error on solutions with a wrong step (PRMBench's and
    /// ProcessBench's first-error accuracy); null without such solutions.
    pub erroneous_accuracy: Option<f64>,
    /// Share of correct solutions with no step under the threshold; null without any.
    pub correct_accuracy: Option<f64>,
    /// ProcessBench F1: 2·a·b/(a+b) of the two accuracies (0 when both are 0).
    pub processbench_f1: Option<f64>,
    /// F1 of the labelled steps with "correct" as the positive class (score ≥ threshold).
    pub positive_f1: f64,
    /// F1 with "wrong" as the positive class (score < threshold).
    pub negative_f1: f64,
    /// Mean of the two.
    pub macro_f1: f64,
    pub step_accuracy: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean score in the bin (null when empty).
    pub confidence: Option<f64>,
    /// Share of correct steps in the bin.
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub solutions: usize,
    pub erroneous_solutions: usize,
    pub labelled_steps: usize,
    pub positive_steps: usize,
    /// Solutions the scorer refused or scored with another step count (left out, listed by the caller).
    pub refused: usize,
    pub at_threshold: AtThreshold,
    /// Area under the ROC curve of p(+) for correct steps (ties averaged; null with one class).
    pub auroc: Option<f64>,
    /// Σ n_b/N · |accuracy_b − confidence_b| over `BINS` equal-width bins of p(+).
    pub ece: f64,
    pub reliability: Vec<Bin>,
    /// (false positive rate, true positive rate) from the highest threshold down.
    pub roc: Vec<(f64, f64)>,
    pub sweep: Vec<AtThreshold>,
    /// The sweep's threshold with the highest ProcessBench F1 (lowest on ties); chosen on these
    /// same data, so optimistic: not a result.
    pub best_threshold_on_this_data: Option<AtThreshold>,
    pub per_source: BTreeMap<String, SourceStep>,
    /// ProcessBench F1 averaged over sources (as ProcessBench averages its subsets).
    pub macro_processbench_f1: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStep {
    pub solutions: usize,
    pub at_threshold: AtThreshold,
    pub auroc: Option<f64>,
}

fn labelled(items: &[Scored]) -> (Vec<bool>, Vec<f64>) {
    let mut y = Vec::new();
    let mut s = Vec::new();
    for it in items {
        for (l, &v) in it.labels.iter().zip(&it.scores) {
            if let Some(l) = l {
                y.push(*l);
                s.push(v);
            }
        }
    }
    (y, s)
}

fn f1(tp: usize, fp: usize, fn_: usize) -> f64 {
    // scikit-learn's f1_score with zero_division=0.
    let d = 2 * tp + fp + fn_;
    if d == 0 { 0.0 } else { 2.0 * tp as f64 / d as f64 }
}

pub fn at_threshold(items: &[Scored], t: f64) -> AtThreshold {
    let (mut err_n, mut err_ok, mut cor_n, mut cor_ok) = (0usize, 0usize, 0usize, 0usize);
    for it in items {
        let pred = it.predicted_first_error(t);
        match it.first_error() {
            Some(g) => {
                err_n += 1;
                err_ok += (pred == Some(g)) as usize;
            }
            None => {
                cor_n += 1;
                cor_ok += pred.is_none() as usize;
            }
        }
    }
    let ratio = |a: usize, n: usize| (n > 0).then(|| a as f64 / n as f64);
    let (a, b) = (ratio(err_ok, err_n), ratio(cor_ok, cor_n));
    let pb = match (a, b) {
        (Some(a), Some(b)) if a + b > 0.0 => Some(2.0 * a * b / (a + b)),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    };
    let (y, s) = labelled(items);
    let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
    for (&l, &v) in y.iter().zip(&s) {
        match (l, v >= t) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => fn_ += 1,
            (false, false) => tn += 1,
        }
    }
    let (pos, neg) = (f1(tp, fp, fn_), f1(tn, fn_, fp));
    AtThreshold {
        threshold: t,
        erroneous_accuracy: a,
        correct_accuracy: b,
        processbench_f1: pb,
        positive_f1: pos,
        negative_f1: neg,
        macro_f1: (pos + neg) / 2.0,
        step_accuracy: if y.is_empty() { 0.0 } else { (tp + tn) as f64 / y.len() as f64 },
    }
}

/// AUROC as the Mann–Whitney statistic with average ranks for tied scores (scikit-learn's
/// `roc_auc_score`); `None` unless both classes occur.
pub fn auroc(y: &[bool], s: &[f64]) -> Option<f64> {
    let npos = y.iter().filter(|&&l| l).count();
    let nneg = y.len() - npos;
    if npos == 0 || nneg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && s[order[j + 1]] == s[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += order[i..=j].iter().filter(|&&k| y[k]).count() as f64 * avg;
        i = j + 1;
    }
    Some((rank_sum_pos - (npos * (npos + 1)) as f64 / 2.0) / (npos * nneg) as f64)
}

/// ROC points, one per distinct score from the highest down, starting at (0, 0).
pub fn roc(y: &[bool], s: &[f64]) -> Vec<(f64, f64)> {
    let npos = y.iter().filter(|&&l| l).count().max(1) as f64;
    let nneg = y.iter().filter(|&&l| !l).count().max(1) as f64;
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < order.len() {
        let v = s[order[i]];
        while i < order.len() && s[order[i]] == v {
            if y[order[i]] { tp += 1.0 } else { fp += 1.0 }
            i += 1;
        }
        pts.push((fp / nneg, tp / npos));
    }
    pts
}

/// Reliability bins and ECE: bin b holds scores in [b/BINS, (b+1)/BINS), the last one also 1.0.
pub fn calibration(y: &[bool], s: &[f64]) -> (f64, Vec<Bin>) {
    let mut acc = vec![(0usize, 0.0f64, 0usize); BINS];
    for (&l, &v) in y.iter().zip(s) {
        let b = ((v * BINS as f64).floor() as isize).clamp(0, BINS as isize - 1) as usize;
        acc[b].0 += 1;
        acc[b].1 += v;
        acc[b].2 += l as usize;
    }
    let n = y.len().max(1) as f64;
    let mut ece = 0.0;
    let bins = acc
        .iter()
        .enumerate()
        .map(|(b, &(c, sum, pos))| {
            let (conf, a) = if c > 0 { (Some(sum / c as f64), Some(pos as f64 / c as f64)) } else { (None, None) };
            if let (Some(conf), Some(a)) = (conf, a) {
                ece += c as f64 / n * (a - conf).abs();
            }
            Bin { lo: b as f64 / BINS as f64, hi: (b + 1) as f64 / BINS as f64, count: c, confidence: conf, accuracy: a }
        })
        .collect();
    (ece, bins)
}

/// The sweep's thresholds: 0.00, 0.01, …, 1.00.
pub fn sweep_thresholds() -> Vec<f64> {
    (0..=100).map(|k| k as f64 / 100.0).collect()
}

pub fn evaluate(items: &[Scored], threshold: f64, refused: usize) -> StepReport {
    let (y, s) = labelled(items);
    let (ece, reliability) = calibration(&y, &s);
    let sweep: Vec<AtThreshold> = sweep_thresholds().into_iter().map(|t| at_threshold(items, t)).collect();
    let best = sweep
        .iter()
        .filter(|a| a.processbench_f1.is_some())
        .fold(None::<&AtThreshold>, |b, a| if b.is_none_or(|b| a.processbench_f1 > b.processbench_f1) { Some(a) } else { b })
        .cloned();
    let mut per_source: BTreeMap<String, SourceStep> = BTreeMap::new();
    let sources: std::collections::BTreeSet<&str> = items.iter().map(|i| i.data_source.as_str()).collect();
    for src in sources {
        let sub: Vec<Scored> = items.iter().filter(|i| i.data_source == src).cloned().collect();
        let (y, s) = labelled(&sub);
        per_source.insert(src.to_string(), SourceStep { solutions: sub.len(), at_threshold: at_threshold(&sub, threshold), auroc: auroc(&y, &s) });
    }
    let pbs: Vec<f64> = per_source.values().filter_map(|s| s.at_threshold.processbench_f1).collect();
    StepReport {
        solutions: items.len(),
        erroneous_solutions: items.iter().filter(|i| i.first_error().is_some()).count(),
        labelled_steps: y.len(),
        positive_steps: y.iter().filter(|&&l| l).count(),
        refused,
        at_threshold: at_threshold(items, threshold),
        auroc: auroc(&y, &s),
        ece,
        reliability,
        roc: roc(&y, &s),
        sweep,
        best_threshold_on_this_data: best,
        macro_processbench_f1: (!pbs.is_empty()).then(|| pbs.iter().sum::<f64>() / pbs.len() as f64),
        per_source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(labels: &[Option<bool>], scores: &[f64]) -> Scored {
        Scored { data_source: "x".into(), labels: labels.to_vec(), scores: scores.to_vec() }
    }

    #[test]
    fn processbench_f1_by_hand() {
        let (t, f) = (Some(true), Some(false));
        let items = [
            item(&[t, f, None], &[0.9, 0.2, 0.9]),  // error at 1, predicted 1: right
            item(&[f, None], &[0.8, 0.1]),          // error at 0, predicted 1: wrong
            item(&[t, t], &[0.9, 0.7]),             // correct, none under 0.5: right
            item(&[t, t], &[0.4, 0.9]),             // correct, predicted 0: wrong
        ];
        let a = at_threshold(&items, 0.5);
        assert_eq!((a.erroneous_accuracy, a.correct_accuracy), (Some(0.5), Some(0.5)));
        assert_eq!(a.processbench_f1, Some(0.5));
        // Labelled steps: y = [1,0,0,1,1,1,1], ŷ = [1,0,1,1,1,0,1]: tp 4, fp 1, fn 1, tn 1.
        assert!((a.positive_f1 - 0.8).abs() < 1e-12);
        assert!((a.negative_f1 - 0.5).abs() < 1e-12);
        assert!((a.macro_f1 - 0.65).abs() < 1e-12);
    }

    #[test]
    fn auroc_with_ties_and_roc_ends() {
        assert_eq!(auroc(&[true, false], &[0.9, 0.1]), Some(1.0));
        assert_eq!(auroc(&[true, false], &[0.5, 0.5]), Some(0.5));
        assert_eq!(auroc(&[true, true], &[0.5, 0.1]), None);
        // pos {0.8, 0.4}, neg {0.4, 0.2}: pairs 1 + 1 + 0.5 + 1 = 3.5 of 4.
        assert_eq!(auroc(&[true, true, false, false], &[0.8, 0.4, 0.4, 0.2]), Some(0.875));
        let r = roc(&[true, true, false, false], &[0.8, 0.4, 0.4, 0.2]);
        assert_eq!(r.first(), Some(&(0.0, 0.0)));
        assert_eq!(r.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn ece_of_perfect_and_off_calibration() {
        let (e, bins) = calibration(&[true, false], &[1.0, 0.0]);
        assert_eq!(e, 0.0);
        assert_eq!((bins[9].count, bins[0].count), (1, 1));
        let (e, _) = calibration(&[true, false, false, false], &[0.75, 0.75, 0.75, 0.75]);
        assert!((e - 0.5).abs() < 1e-12);
    }

    /// The committed goldens of scripts/golden/make_golden_eval.py (scikit-learn, ProcessBench's
    /// formula) on the committed fixture scores.
    #[test]
    fn matches_the_python_goldens() {
        use serde_json::Value;
        let fx: Value = serde_json::from_str(include_str!("../../tests/data/eval/step-scores.json")).unwrap();
        let g: Value = serde_json::from_str(include_str!("../../tests/golden/eval-metrics.json")).unwrap();
        let items: Vec<Scored> = fx["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| Scored {
                data_source: it["data_source"].as_str().unwrap().into(),
                labels: it["labels"].as_array().unwrap().iter().map(|l| l.as_i64().map(|v| v == 1)).collect(),
                scores: it["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
            })
            .collect();
        let r = evaluate(&items, fx["threshold"].as_f64().unwrap(), 0);
        let close = |a: Option<f64>, b: &Value, what: &str| match (a, b.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{what}: {a} vs golden {b}"),
            (None, None) => {}
            (a, _) => panic!("{what}: {a:?} vs golden {b}"),
        };
        let check = |a: &AtThreshold, g: &Value, what: &str| {
            close(Some(a.threshold), &g["threshold"], &format!("{what}.threshold"));
            close(a.erroneous_accuracy, &g["erroneous_accuracy"], &format!("{what}.erroneous_accuracy"));
            close(a.correct_accuracy, &g["correct_accuracy"], &format!("{what}.correct_accuracy"));
            close(a.processbench_f1, &g["processbench_f1"], &format!("{what}.processbench_f1"));
            close(Some(a.positive_f1), &g["positive_f1"], &format!("{what}.positive_f1"));
            close(Some(a.negative_f1), &g["negative_f1"], &format!("{what}.negative_f1"));
            close(Some(a.macro_f1), &g["macro_f1"], &format!("{what}.macro_f1"));
            close(Some(a.step_accuracy), &g["step_accuracy"], &format!("{what}.step_accuracy"));
        };
        check(&r.at_threshold, &g["at_threshold"], "at_threshold");
        close(r.auroc, &g["auroc"], "auroc");
        close(Some(r.ece), &g["ece"], "ece");
        check(r.best_threshold_on_this_data.as_ref().unwrap(), &g["best_threshold_on_this_data"], "best");
        let gs = g["per_source"].as_object().unwrap();
        assert_eq!(gs.len(), r.per_source.len());
        for (src, s) in &r.per_source {
            check(&s.at_threshold, &gs[src]["at_threshold"], src);
            close(s.auroc, &gs[src]["auroc"], &format!("{src}.auroc"));
        }
    }
}
