//! Offline subcommands: `medprm score` (a drop-in for the official Med-PRM scoring script),
//! `medprm gen-test-model` and `medprm convert-gguf`.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use crate::aggregate::{best_of_n, extract_answer, majority_vote, weighted_vote, Aggregation};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::prompt::{Prompt, Solution};

/// Reads a JSON array or JSONL file of records.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    if text.trim_start().starts_with('[') {
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(path, e))?;
        match v {
            Value::Array(a) => Ok(a),
            _ => Err(Error::bad_file(path, "expected a JSON array")),
        }
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1))))
            .collect()
    }
}

fn solution_of(sol: &Value, field: &str) -> Result<Solution> {
    if let Some(t) = sol.get("prm_processed_solution").and_then(|v| v.as_str()) {
        Ok(Solution::Tagged(t.to_string()))
    } else if let Some(t) = sol.get("solution").and_then(|v| v.as_str()) {
        Ok(Solution::Raw(t.to_string()))
    } else {
        Err(Error::input(field, "needs `prm_processed_solution` or `solution` (a string)"))
    }
}

fn score_value(s: Option<f32>) -> Value {
    s.map(|v| json!(v as f64)).unwrap_or(Value::Null)
}

/// Per data source accuracy counters.
#[derive(Default)]
struct Tally {
    questions: usize,
    best_of_n: usize,
    majority: usize,
    weighted: usize,
}

pub struct ScoreArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub aggregation: Aggregation,
    pub max_batch_tokens: usize,
    pub progress: bool,
    /// Run each record's shared question+documents prefix once for all its solutions.
    pub prefix_sharing: bool,
    /// Retrieve each record's documents from this index (k, mode) instead of `related_docs`.
    pub retrieve: Option<(crate::retrieval::Index, usize, crate::retrieval::Mode)>,
}

/// Summary of an offline run.
pub struct ScoreSummary {
    pub records: usize,
    pub solutions: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub accuracy: Vec<(String, usize, f64, f64, f64)>,
}

pub fn score_file(engine: &Engine, args: &ScoreArgs) -> Result<ScoreSummary> {
    let records = read_records(&args.input)?;
    let n_records = records.len();
    let out_file = std::fs::File::create(&args.output).map_err(|e| Error::bad_file(&args.output, e))?;
    let mut out = BufWriter::new(out_file);
    let n_solutions: usize =
        records.iter().map(|r| r.get("solutions").and_then(|s| s.as_array()).map_or(0, |a| a.len())).sum();
    let bar = if args.progress {
        let b = indicatif::ProgressBar::new(n_solutions as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} solutions [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = Instant::now();
    let (mut tokens, mut solutions) = (0usize, 0usize);
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for (ri, mut rec) in records.into_iter().enumerate() {
        let question = rec
            .get("question")
            .and_then(|q| q.as_str())
            .ok_or_else(|| Error::input(format!("records[{ri}].question"), "missing or not a string"))?
            .to_string();
        let docs: Vec<String> = match rec.get("related_docs") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(di, d)| {
                    d.as_str().map(String::from).ok_or_else(|| {
                        Error::input(format!("records[{ri}].related_docs[{di}]"), "not a string")
                    })
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(Error::input(format!("records[{ri}].related_docs"), "not an array")),
        };
        let (docs, retrieved) = match &args.retrieve {
            None => (docs, None),
            Some((index, k, mode)) => {
                let hits = index.search(&crate::retrieval::query_for(&question, &[], false), *k, *mode)?;
                (hits.iter().map(|h| h.text.clone()).collect(), Some(hits))
            }
        };
        let ctx = engine.builder.context(&question, &docs)?;
        let sols = rec.get("solutions").and_then(|s| s.as_array()).cloned().unwrap_or_default();
        let prompts: Vec<Prompt> = sols
            .iter()
            .enumerate()
            .map(|(si, s)| engine.builder.prompt(&ctx, &solution_of(s, &format!("records[{ri}].solutions[{si}]"))?))
            .collect::<Result<_>>()?;
        let refs: Vec<&Prompt> = prompts.iter().collect();
        let shared = if args.prefix_sharing { crate::prompt::shared_prefix_len(&refs) } else { 0 };
        let scores = engine.score_shared(&refs, shared, args.max_batch_tokens)?;
        tokens += prompts.iter().map(|p| p.ids.len()).sum::<usize>();
        solutions += prompts.len();
        bar.inc(prompts.len() as u64);

        let agg: Vec<Option<f32>> = scores.iter().map(|s| args.aggregation.apply(s)).collect();
        let answers: Vec<Option<String>> = sols
            .iter()
            .zip(&prompts)
            .map(|(s, p)| match s.get("answer") {
                Some(Value::String(a)) => Some(a.trim().to_string()),
                Some(Value::Null) => None,
                Some(other) => Some(other.to_string()),
                None => extract_answer(&p.steps.join(" ")),
            })
            .collect();
        if let Some(arr) = rec.get_mut("solutions").and_then(|s| s.as_array_mut()) {
            for (sol, s) in arr.iter_mut().zip(&scores) {
                if let Value::Object(o) = sol {
                    o.insert("PRM_score_list".into(), json!(s.iter().map(|&v| v as f64).collect::<Vec<_>>()));
                    o.insert("PRM_min_score".into(), score_value(Aggregation::Min.apply(s)));
                    o.insert("PRM_score".into(), score_value(Aggregation::Last.apply(s)));
                    if args.aggregation != Aggregation::Min && args.aggregation != Aggregation::Last {
                        o.insert(format!("PRM_{}_score", args.aggregation.name()), score_value(args.aggregation.apply(s)));
                    }
                }
            }
        }
        let best = best_of_n(&agg);
        if let Value::Object(o) = &mut rec {
            o.insert("_n_docs_kept".into(), json!(ctx.n_docs_kept));
            if let Some(hits) = &retrieved {
                let cites: Vec<Value> = hits
                    .iter()
                    .take(ctx.n_docs_kept)
                    .map(|h| json!({"id": h.id, "title": h.title, "source": h.source, "rank": h.rank, "score": h.score}))
                    .collect();
                o.insert("_retrieved_docs".into(), json!(cites));
            }
            o.insert("_best_of_n".into(), best.map(|b| json!(b)).unwrap_or(Value::Null));
        }

        if let Some(correct) = rec.get("correct_answer").and_then(|c| c.as_str()).map(|c| c.trim().to_string()) {
            let source = rec.get("data_source").and_then(|d| d.as_str()).unwrap_or("all").to_string();
            let is_right = |i: usize| match sols[i].get("score").and_then(|s| s.as_f64()) {
                Some(s) => s == 1.0,
                None => answers[i].as_deref() == Some(correct.as_str()),
            };
            let t = tallies.entry(source).or_default();
            t.questions += 1;
            if best.is_some_and(is_right) {
                t.best_of_n += 1;
            }
            if majority_vote(&answers).is_some_and(|(a, _)| a.as_deref() == Some(correct.as_str())) {
                t.majority += 1;
            }
            if weighted_vote(&answers, &agg).is_some_and(|(a, _)| a == correct) {
                t.weighted += 1;
            }
        }
        serde_json::to_writer(&mut out, &rec).map_err(|e| Error::bad_file(&args.output, e))?;
        out.write_all(b"\n").map_err(|e| Error::bad_file(&args.output, e))?;
    }
    out.flush().map_err(|e| Error::bad_file(&args.output, e))?;
    bar.finish_and_clear();
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    Ok(ScoreSummary {
        records: n_records,
        solutions,
        tokens,
        seconds: start.elapsed().as_secs_f64(),
        accuracy: tallies
            .into_iter()
            .map(|(k, t)| (k, t.questions, pct(t.best_of_n, t.questions), pct(t.majority, t.questions), pct(t.weighted, t.questions)))
            .collect(),
    })
}

impl ScoreSummary {
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        let secs = self.seconds.max(1e-9);
        writeln!(
            out,
            "scored {} records, {} solutions ({} prompt tokens) in {:.1}s: {:.2} solutions/s, {:.0} tokens/s",
            self.records,
            self.solutions,
            self.tokens,
            self.seconds,
            self.solutions as f64 / secs,
            self.tokens as f64 / secs
        )?;
        if !self.accuracy.is_empty() {
            writeln!(out, "{:<24} {:>9} {:>10} {:>14} {:>14}", "data_source", "questions", "best_of_n", "majority_vote", "weighted_vote")?;
            for (src, n, b, m, w) in &self.accuracy {
                writeln!(out, "{src:<24} {n:>9} {b:>10.2} {m:>14.2} {w:>14.2}")?;
            }
        }
        Ok(())
    }
}
