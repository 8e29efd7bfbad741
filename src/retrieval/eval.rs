//! Retrieval evaluation: recall@1/5/10, MRR@10 and search latency of each mode over a labelled
//! question set (JSONL `{id, question, relevant: ["<guideline>/<section-file-stem>", ...]}`).
//!
//! A question is found at k when one of its labelled sections holds one of the top k chunks
//! (several chunks of one section count once: the labels are sections, not chunks). MRR uses the
//! rank of the first such chunk within the top 10 (0 when none).

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::index::Index;
use super::Mode;
use crate::error::{Error, Result};

const DEPTH: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub relevant: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub questions: usize,
    pub modes: Vec<ModeReport>,
    /// Questions (ids) whose labelled section no mode ranks in the top 10.
    pub missed_by_all: Vec<String>,
    /// Per question: its id and the rank of its first relevant chunk in each mode (bm25, dense,
    /// hybrid; `None` when not in the top 10).
    pub per_question: Vec<(String, [Option<usize>; 3])>,
}

/// Reads a question file and checks every label against the index's sections.
pub fn load_questions(path: &Path, index: &Index) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    let sections: HashSet<&str> = index.chunks().iter().map(|c| c.section_id()).collect();
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let field = |f: &str| format!("{}:{}: {f}", path.display(), i + 1);
        let q: Question = serde_json::from_str(line).map_err(|e| Error::input(field("record"), e.to_string()))?;
        if q.id.trim().is_empty() || !ids.insert(q.id.clone()) {
            return Err(Error::input(field("id"), format!("empty or duplicate id `{}`", q.id)));
        }
        if q.question.trim().is_empty() {
            return Err(Error::input(field("question"), "empty"));
        }
        if q.relevant.is_empty() {
            return Err(Error::input(field("relevant"), "no labelled section"));
        }
        for r in &q.relevant {
            if !sections.contains(r.as_str()) {
                return Err(Error::input(field("relevant"), format!("`{r}` is not a section of this index")));
            }
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(Error::input("questions", format!("{}: no questions", path.display())));
    }
    Ok(out)
}

/// 1-based rank of the first chunk of a relevant section, if any.
fn first_relevant(hits: &[super::Hit], relevant: &[String]) -> Option<usize> {
    hits.iter().find(|h| {
        let sec = h.id.rsplit_once('#').map(|(s, _)| s).unwrap_or(&h.id);
        relevant.iter().any(|r| r == sec)
    }).map(|h| h.rank)
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted_ms.len() as f64).ceil().max(1.0) as usize;
    sorted_ms[rank.min(sorted_ms.len()) - 1]
}

/// Runs every question through every mode (`repeats` times, for the latency figures; the quality
/// figures come from the first pass, the ranking being deterministic).
pub fn evaluate(index: &Index, questions: &[Question], repeats: usize) -> Result<Report> {
    let mut modes = Vec::new();
    let mut found_by_any = vec![false; questions.len()];
    let mut per_question: Vec<(String, [Option<usize>; 3])> = questions.iter().map(|q| (q.id.clone(), [None; 3])).collect();
    for (mi, mode) in Mode::ALL.into_iter().enumerate() {
        let mut at = [0usize; 3];
        let mut rr = 0.0;
        let mut lat = Vec::new();
        for rep in 0..repeats.max(1) {
            for (qi, q) in questions.iter().enumerate() {
                let t = Instant::now();
                let hits = index.search(&q.question, DEPTH, mode)?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                if rep > 0 {
                    continue;
                }
                if let Some(r) = first_relevant(&hits, &q.relevant) {
                    per_question[qi].1[mi] = Some(r);
                    found_by_any[qi] = true;
                    rr += 1.0 / r as f64;
                    for (slot, k) in [1, 5, 10].into_iter().enumerate() {
                        if r <= k {
                            at[slot] += 1;
                        }
                    }
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        let n = questions.len() as f64;
        modes.push(ModeReport {
            mode,
            recall_at_1: at[0] as f64 / n,
            recall_at_5: at[1] as f64 / n,
            recall_at_10: at[2] as f64 / n,
            mrr: rr / n,
            latency_p50_ms: percentile(&lat, 50.0),
            latency_p99_ms: percentile(&lat, 99.0),
        });
    }
    let missed_by_all = questions.iter().zip(&found_by_any).filter(|(_, f)| !**f).map(|(q, _)| q.id.clone()).collect();
    Ok(Report { questions: questions.len(), modes, missed_by_all, per_question })
}

impl Report {
    /// Questions not ranked first by every mode, with each mode's rank (`-`: not in the top 10).
    pub fn print_disagreements(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(w, "| question | bm25 | dense | hybrid |")?;
        writeln!(w, "|---|---|---|---|")?;
        let show = |r: Option<usize>| r.map_or("-".to_string(), |r| r.to_string());
        for (id, ranks) in &self.per_question {
            if ranks.iter().any(|r| *r != Some(1)) {
                writeln!(w, "| {id} | {} | {} | {} |", show(ranks[0]), show(ranks[1]), show(ranks[2]))?;
            }
        }
        Ok(())
    }

    /// A markdown table.
    pub fn print(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(w, "questions: {}", self.questions)?;
        writeln!(w)?;
        writeln!(w, "| mode | recall@1 | recall@5 | recall@10 | MRR@10 | p50 ms | p99 ms |")?;
        writeln!(w, "|---|---|---|---|---|---|---|")?;
        for m in &self.modes {
            writeln!(
                w,
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
                m.mode, m.recall_at_1, m.recall_at_5, m.recall_at_10, m.mrr, m.latency_p50_ms, m.latency_p99_ms
            )?;
        }
        if !self.missed_by_all.is_empty() {
            writeln!(w)?;
            writeln!(w, "not in any top 10: {}", self.missed_by_all.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.0);
    }
}
