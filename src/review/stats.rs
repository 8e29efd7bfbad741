//! Agreement: Cohen's kappa between reviewers, and between reviewers and the automatic labels
//! (each judge, MC hard label).

use std::collections::BTreeMap;

use super::item::{self, Cells, FINAL};

/// Cohen's kappa of paired binary labels; None with no pairs, or when chance agreement is 1
/// (both raters gave one label throughout: kappa is undefined).
pub fn cohen_kappa(pairs: &[(u8, u8)]) -> Option<f64> {
    let n = pairs.len() as f64;
    if pairs.is_empty() {
        return None;
    }
    let agree = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let a1 = pairs.iter().filter(|(a, _)| *a == 1).count() as f64 / n;
    let b1 = pairs.iter().filter(|(_, b)| *b == 1).count() as f64 / n;
    let chance = a1 * b1 + (1.0 - a1) * (1.0 - b1);
    if (1.0 - chance).abs() < 1e-12 {
        return None;
    }
    Some((agree - chance) / (1.0 - chance))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Agreement {
    pub a: String,
    pub b: String,
    pub n: usize,
    pub observed: Option<f64>,
    pub kappa: Option<f64>,
}

fn agreement(a: String, b: String, pairs: &[(u8, u8)]) -> Agreement {
    let observed = (!pairs.is_empty()).then(|| pairs.iter().filter(|(x, y)| x == y).count() as f64 / pairs.len() as f64);
    Agreement { a, b, n: pairs.len(), observed, kappa: cohen_kappa(pairs) }
}

/// One item as the stats need it: record, saved values.
pub struct ItemData {
    pub record: serde_json::Value,
    pub cells: Cells,
}

/// (reviewer pairs, reviewer vs automatic labels). A reviewer's label of a step is the one in
/// their own slot, or a final-slot value they saved (one reviewer per item).
pub fn compute(items: &[ItemData], users: &BTreeMap<i64, String>) -> (Vec<Agreement>, Vec<Agreement>) {
    // reviewer name → (item index, step) → label
    let mut by_rev: BTreeMap<String, BTreeMap<(usize, usize), u8>> = BTreeMap::new();
    for (k, it) in items.iter().enumerate() {
        for (slot, vals) in &it.cells.0 {
            for (key, v) in vals {
                let Some(step) = key.strip_prefix("step:").and_then(|s| s.parse::<usize>().ok()) else { continue };
                let Some(l) = it.cells.label(*slot, step) else { continue };
                let name = if *slot == FINAL { v.updated_by.clone() } else { users.get(slot).cloned().unwrap_or_else(|| format!("user {slot}")) };
                by_rev.entry(name).or_default().insert((k, step), l);
            }
        }
    }
    let names: Vec<&String> = by_rev.keys().collect();
    let mut pairs = Vec::new();
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            let (a, b) = (&by_rev[names[i]], &by_rev[names[j]]);
            let p: Vec<(u8, u8)> = a.iter().filter_map(|(k, x)| b.get(k).map(|y| (*x, *y))).collect();
            pairs.push(agreement(names[i].clone(), names[j].clone(), &p));
        }
    }
    let mut auto = Vec::new();
    for (name, labels) in &by_rev {
        let mut cols: Vec<(String, String)> = vec![("MC (hard)".into(), "prm_hard_label".into())];
        let mut judges: Vec<String> = items.iter().flat_map(|it| item::judges(&it.record)).collect();
        judges.sort();
        judges.dedup();
        cols.extend(judges.into_iter().map(|j| (format!("judge {j}"), format!("prm_{j}_label"))));
        for (label, col) in cols {
            let p: Vec<(u8, u8)> = labels.iter().filter_map(|((k, s), l)| item::label_at(&items[*k].record, &col, *s).map(|m| (*l, m))).collect();
            auto.push(agreement(name.clone(), label, &p));
        }
    }
    (pairs, auto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_matches_a_hand_computed_value() {
        // 10 pairs: (1,1)×4, (1,0)×1, (0,1)×2, (0,0)×3.
        // po = 7/10 = 0.7; rater A says 1 in 5/10, rater B in 6/10;
        // pe = 0.5·0.6 + 0.5·0.4 = 0.5; kappa = (0.7 − 0.5) / (1 − 0.5) = 0.4.
        let mut p = vec![(1, 1); 4];
        p.push((1, 0));
        p.extend([(0, 1); 2]);
        p.extend([(0, 0); 3]);
        let k = cohen_kappa(&p).unwrap();
        assert!((k - 0.4).abs() < 1e-12, "{k}");
        // Perfect agreement on mixed labels is 1, systematic disagreement is −1.
        assert_eq!(cohen_kappa(&[(1, 1), (0, 0)]), Some(1.0));
        assert_eq!(cohen_kappa(&[(1, 0), (0, 1)]), Some(-1.0));
        // Undefined: no pairs, or both raters constant.
        assert_eq!(cohen_kappa(&[]), None);
        assert_eq!(cohen_kappa(&[(1, 1), (1, 1)]), None);
    }
}
