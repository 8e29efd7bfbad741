//! `medprm review export`: the labelled records with expert labels in place of the uncertain ones.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value as Json};

use super::item::{self, Cells, FINAL};
use super::store::{Store, REVIEW_FIELDS};

/// Steps per label source over the exported records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub items: usize,
    pub steps: usize,
    pub by_source: BTreeMap<String, usize>,
}

impl Summary {
    pub fn line(&self, out: &Path) -> String {
        let src: Vec<String> = self.by_source.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("export: {} items, {} steps to {}; label_source: {}", self.items, self.steps, out.display(), src.join(", "))
    }
}

/// One record with its review applied: each step with an expert label gets it as `hybrid_label`
/// and `label_source` "expert"; the review_* columns get the final text (or, with several
/// reviewers per item and no final text, the reviewers' distinct texts one per line).
pub fn apply(mut rec: Json, cells: &Cells, per_item: usize) -> Json {
    let n = item::steps(&rec).len();
    let mut hybrid: Vec<Json> = rec["hybrid_label"].as_array().cloned().unwrap_or_default();
    hybrid.resize(n, Json::Null);
    let mut source: Vec<Json> = rec["label_source"].as_array().cloned().unwrap_or_default();
    source.resize(n, json!("uncertain"));
    for i in 0..n {
        if let Some(l) = cells.final_label(i, per_item) {
            hybrid[i] = json!(l);
            source[i] = json!("expert");
        }
    }
    rec["hybrid_label"] = Json::Array(hybrid);
    rec["label_source"] = Json::Array(source);
    for f in REVIEW_FIELDS {
        let fin = cells.get(FINAL, f).map(|v| v.value.trim().to_string()).filter(|v| !v.is_empty());
        let text = fin.unwrap_or_else(|| {
            let mut seen = BTreeSet::new();
            cells
                .reviewer_slots()
                .into_iter()
                .filter_map(|s| cells.get(s, f).map(|v| v.value.trim().to_string()))
                .filter(|v| !v.is_empty() && seen.insert(v.clone()))
                .collect::<Vec<_>>()
                .join("\n")
        });
        rec[f] = json!(text);
    }
    rec
}

/// Writes every item of `label_items` (reviewed or not) to `out` as JSONL.
pub fn export(store: &Store, out: &Path, per_item: usize) -> anyhow::Result<Summary> {
    let items = store.all_items()?;
    let mut cells: BTreeMap<String, Vec<super::store::Value>> = BTreeMap::new();
    for v in store.all_values()? {
        cells.entry(v.item_id.clone()).or_default().push(v);
    }
    let tmp = out.with_extension("jsonl.partial");
    let write = || -> anyhow::Result<Summary> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("--out {}: {e}", out.display()))?);
        let mut s = Summary::default();
        for it in &items {
            let rec = item::parse(it).map_err(|e| anyhow::anyhow!(e))?;
            let c = Cells::from_values(cells.get(&it.item_id).map(|v| v.as_slice()).unwrap_or_default());
            let rec = apply(rec, &c, per_item);
            for src in rec["label_source"].as_array().into_iter().flatten() {
                *s.by_source.entry(src.as_str().unwrap_or("?").to_string()).or_default() += 1;
                s.steps += 1;
            }
            s.items += 1;
            serde_json::to_writer(&mut w, &rec)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(s)
    };
    // Written beside the output and renamed: a failed export leaves no half file under --out.
    match write() {
        Ok(s) => {
            std::fs::rename(&tmp, out).map_err(|e| anyhow::anyhow!("--out {}: {e}", out.display()))?;
            Ok(s)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{tests::fixture, User};
    use super::*;

    #[test]
    fn expert_labels_replace_uncertain_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&fixture(dir.path())).unwrap();
        let a = User { id: st.put_user("a", "h", false).unwrap(), name: "a".into() };
        st.save("f:0:0", FINAL, "step:1", "0", 0, &a).unwrap().unwrap();
        st.save("f:0:0", FINAL, "step:2", "1", 0, &a).unwrap().unwrap();
        st.save("f:0:0", FINAL, "review_comments", "Step 3 <b>ok</b>", 0, &a).unwrap().unwrap();
        let out = dir.path().join("train.jsonl");
        let s = export(&st, &out, 1).unwrap();
        assert_eq!((s.items, s.steps), (2, 8));
        assert_eq!(s.by_source.get("expert"), Some(&2));
        assert_eq!(s.by_source.get("uncertain"), Some(&2));
        assert_eq!(s.by_source.get("hybrid"), Some(&4));
        let lines: Vec<Json> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["hybrid_label"], json!([1, 0, 1, 1]));
        assert_eq!(lines[0]["label_source"], json!(["hybrid", "expert", "expert", "hybrid"]));
        assert_eq!(lines[0]["review_comments"], json!("Step 3 <b>ok</b>"));
        assert_eq!(lines[1]["hybrid_label"], json!([1, null, null, 1]));
        // Field order of the contract is kept: sample_id first, provenance last.
        let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
        assert_eq!((keys[0].as_str(), keys[keys.len() - 1].as_str()), ("sample_id", "provenance"));
        assert!(s.line(&out).contains("label_source: expert 2, hybrid 4, uncertain 2"), "{}", s.line(&out));
    }
}
