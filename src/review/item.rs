//! What a labelled record (the contract's JSON line) and its saved review values mean: the
//! uncertain steps, the judges, each step's final label and the item's status.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use super::store::{LabelItem, Value};

/// Slot of the final (shared or adjudicated) values.
pub const FINAL: i64 = 0;

/// The key of step `i`'s label.
pub fn step_key(i: usize) -> String {
    format!("step:{i}")
}

/// Parses a stored record, naming the item when it is not a JSON object with `steps`.
pub fn parse(item: &LabelItem) -> Result<Json, String> {
    let v: Json = serde_json::from_str(&item.record_json).map_err(|e| format!("label_items {:?}: record_json is not JSON: {e}", item.item_id))?;
    if !v.get("steps").is_some_and(Json::is_array) {
        return Err(format!("label_items {:?}: record_json has no steps array", item.item_id));
    }
    Ok(v)
}

pub fn steps(rec: &Json) -> Vec<String> {
    rec["steps"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
}

/// Indexes of the steps whose hybrid label is null (uncertain).
pub fn uncertain(rec: &Json) -> Vec<usize> {
    let n = steps(rec).len();
    match rec["hybrid_label"].as_array() {
        Some(h) => (0..n).filter(|&i| h.get(i).is_none_or(Json::is_null)).collect(),
        None => (0..n).collect(),
    }
}

/// The judge names of the record's `prm_<judge>_label` columns.
pub fn judges(rec: &Json) -> Vec<String> {
    rec.as_object()
        .map(|o| {
            o.keys()
                .filter_map(|k| k.strip_prefix("prm_")?.strip_suffix("_label"))
                .filter(|j| !matches!(*j, "hard" | "soft"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `arr[i]` as a 0/1 label.
pub fn label_at(rec: &Json, col: &str, i: usize) -> Option<u8> {
    rec[col].get(i).and_then(Json::as_u64).and_then(|v| u8::try_from(v).ok()).filter(|v| *v <= 1)
}

/// An item's saved values: slot → key → value.
#[derive(Default, Debug, Clone)]
pub struct Cells(pub BTreeMap<i64, BTreeMap<String, Value>>);

impl Cells {
    pub fn from_values<'a>(vals: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut c = Cells::default();
        for v in vals {
            c.0.entry(v.slot).or_default().insert(v.key.clone(), v.clone());
        }
        c
    }

    pub fn get(&self, slot: i64, key: &str) -> Option<&Value> {
        self.0.get(&slot)?.get(key)
    }

    /// A step label saved in `slot` ("1"/"0"; "" = cleared).
    pub fn label(&self, slot: i64, step: usize) -> Option<u8> {
        match self.get(slot, &step_key(step))?.value.as_str() {
            "1" => Some(1),
            "0" => Some(0),
            _ => None,
        }
    }

    /// Reviewer slots (not the final one) that hold anything.
    pub fn reviewer_slots(&self) -> Vec<i64> {
        self.0.keys().copied().filter(|s| *s != FINAL).collect()
    }

    /// The expert label of a step: the final slot's, else (several reviewers per item) the
    /// reviewers' when at least `per_item` of them labelled it and all agree.
    pub fn final_label(&self, step: usize, per_item: usize) -> Option<u8> {
        if let Some(l) = self.label(FINAL, step) {
            return Some(l);
        }
        if per_item <= 1 {
            return None;
        }
        let ls: Vec<u8> = self.reviewer_slots().into_iter().filter_map(|s| self.label(s, step)).collect();
        (ls.len() >= per_item && ls.iter().all(|l| *l == ls[0])).then(|| ls[0])
    }

    /// Whether reviewers disagree on a step that has no final label yet.
    pub fn disagrees(&self, step: usize) -> bool {
        if self.label(FINAL, step).is_some() {
            return false;
        }
        let ls: BTreeSet<u8> = self.reviewer_slots().into_iter().filter_map(|s| self.label(s, step)).collect();
        ls.len() > 1
    }

    /// Names of everyone who saved a value of this item.
    pub fn editors(&self) -> BTreeSet<String> {
        self.0.values().flat_map(|m| m.values().map(|v| v.updated_by.clone())).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Todo,
    InProgress,
    Adjudicate,
    Done,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Todo => "todo",
            Status::InProgress => "in-progress",
            Status::Adjudicate => "adjudicate",
            Status::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Todo, Status::InProgress, Status::Adjudicate, Status::Done].into_iter().find(|x| x.as_str() == s)
    }
}

/// The item's status: done when every uncertain step has an expert label; adjudicate when
/// reviewers disagree on an uncertain step; in progress when anything was saved; else todo.
pub fn status(uncertain: &[usize], cells: &Cells, per_item: usize) -> Status {
    if uncertain.iter().all(|&i| cells.final_label(i, per_item).is_some()) {
        Status::Done
    } else if per_item > 1 && uncertain.iter().any(|&i| cells.disagrees(i)) {
        Status::Adjudicate
    } else if cells.0.is_empty() {
        Status::Todo
    } else {
        Status::InProgress
    }
}

/// Whether `slot` labelled every uncertain step.
pub fn slot_complete(uncertain: &[usize], cells: &Cells, slot: i64) -> bool {
    uncertain.iter().all(|&i| cells.label(slot, i).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(slot: i64, key: &str, v: &str, by: &str) -> Value {
        Value { item_id: "i".into(), slot, key: key.into(), value: v.into(), version: 1, updated_by: by.into(), updated_at: String::new() }
    }

    #[test]
    fn record_columns() {
        let r = super::super::store::tests::record("x", "q");
        assert_eq!(uncertain(&r), vec![1, 2]);
        assert_eq!(judges(&r), vec!["llama".to_string()]);
        assert_eq!(label_at(&r, "prm_hard_label", 2), Some(0));
    }

    #[test]
    fn statuses_with_one_and_two_reviewers() {
        let u = [1usize, 2];
        let mut c = Cells::default();
        assert_eq!(status(&u, &c, 1), Status::Todo);
        c = Cells::from_values(&[val(0, "step:1", "1", "a")]);
        assert_eq!(status(&u, &c, 1), Status::InProgress);
        c = Cells::from_values(&[val(0, "step:1", "1", "a"), val(0, "step:2", "0", "a")]);
        assert_eq!(status(&u, &c, 1), Status::Done);
        // Two reviewers per item: agreement on both → done; a disagreement → adjudicate until the final slot decides.
        let agree = [val(5, "step:1", "1", "a"), val(5, "step:2", "0", "a"), val(6, "step:1", "1", "b"), val(6, "step:2", "0", "b")];
        assert_eq!(status(&u, &Cells::from_values(&agree), 2), Status::Done);
        let mut dis = agree.to_vec();
        dis[3] = val(6, "step:2", "1", "b");
        assert_eq!(status(&u, &Cells::from_values(&dis), 2), Status::Adjudicate);
        dis.push(val(0, "step:2", "1", "c"));
        let c = Cells::from_values(&dis);
        assert_eq!(status(&u, &c, 2), Status::Done);
        assert_eq!(c.final_label(2, 2), Some(1));
        // One reviewer of two: not enough.
        let one = [val(5, "step:1", "1", "a"), val(5, "step:2", "0", "a")];
        assert_eq!(status(&u, &Cells::from_values(&one), 2), Status::InProgress);
    }
}
