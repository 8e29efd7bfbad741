//! `medprm score`: a drop-in for the official Med-PRM scoring script. It reads test-set records,
//! runs each through the same scoring core as the server ([`crate::infer`], in process) and
//! writes the official output fields and an accuracy summary.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::aggregate::{extract_answer, select, Aggregation, Selection};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::infer::{BatchConfig, Candidate, Documents, Infer, InferConfig, ScoreJob};
use crate::metrics::Metrics;
use crate::prompt::Solution;
use crate::retrieval::Mode;

/// Reads the records of a JSON array, a single JSON object or a JSONL file.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    let records = match text.trim_start().as_bytes().first() {
        Some(b'[') | Some(b'{') if serde_json::from_str::<Value>(&text).is_ok() => {
            match serde_json::from_str(&text).expect("parsed above") {
                Value::Array(a) => a,
                one => vec![one],
            }
        }
        Some(b'[') => {
            let e = serde_json::from_str::<Value>(&text).expect_err("failed above");
            return Err(Error::bad_file(path, e));
        }
        _ => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1))))
            .collect::<Result<_>>()?,
    };
    if let Some(i) = records.iter().position(|r| !r.is_object()) {
        return Err(Error::input(format!("records[{i}]"), "not a JSON object"));
    }
    Ok(records)
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
    /// `None`: the profile's.
    pub aggregation: Option<Aggregation>,
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

/// The scoring core for one offline run: the request limits of a server do not apply.
fn offline_core(args: &ScoreArgs) -> Infer {
    let (retrieve_k, retrieve_mode) = args.retrieve.as_ref().map_or((0, Mode::default()), |(_, k, m)| (*k, *m));
    let cfg = InferConfig {
        batch: BatchConfig { max_batch_tokens: args.max_batch_tokens, max_batch_requests: usize::MAX, max_queue_delay: Duration::ZERO, fault_injection: false },
        max_concurrent_candidates: tokio::sync::Semaphore::MAX_PERMITS,
        max_candidates: usize::MAX,
        max_input_tokens: usize::MAX,
        tokenization_workers: 1,
        prefix_sharing: args.prefix_sharing,
        retrieval: args.retrieve.is_some(),
        retrieve_k,
        retrieve_mode,
        retrieve_cache: 64,
        max_images: usize::MAX,
        max_image_pixels: u64::MAX,
    };
    Infer::new(cfg, Arc::new(Metrics::new()))
}

/// The answer a record's solution gives: its `answer` field (`null`: none), else the one its
/// scored steps commit to.
pub fn record_answer(sol: &Value, steps: &[String]) -> Option<String> {
    match sol.get("answer") {
        Some(Value::String(a)) => Some(a.trim().to_string()),
        Some(Value::Null) => None,
        Some(other) => Some(other.to_string()),
        None => extract_answer(&steps.join(" ")),
    }
}

/// Scores a Med-PRM test-set style file through the same core as the server (in process). The
/// input is read and every record checked before `load` runs, so a bad file fails at once.
pub fn score_file(load: impl FnOnce() -> Result<Engine>, mut args: ScoreArgs) -> Result<ScoreSummary> {
    if let Some((_, k, _)) = &args.retrieve {
        crate::retrieval::check_k(*k, "--retrieve-k")?;
    }
    let records = read_records(&args.input)?;
    let n_records = records.len();
    let infer = offline_core(&args);
    let mut jobs = records.iter().enumerate().map(|(ri, r)| record_job(r, ri, &args, infer.config())).collect::<Result<Vec<_>>>()?;
    let engine = load()?;
    let aggregation = args.aggregation.unwrap_or(engine.builder.profile.aggregation);
    for j in &mut jobs {
        j.aggregation = aggregation;
    }
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
    if let Some((index, _, _)) = args.retrieve.take() {
        infer.set_index(index);
    }
    // The backend thread lives until the process ends (it owns the engine).
    infer.start(engine);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Backend(e.to_string()))?;
    let start = Instant::now();
    let (mut tokens, mut solutions) = (0usize, 0usize);
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for (mut rec, job) in records.into_iter().zip(jobs) {
        let scored = rt.block_on(infer.score(job))?;
        tokens += scored.usage.prompt_tokens;
        solutions += scored.candidates.len();
        bar.inc(scored.candidates.len() as u64);

        let sols = rec.get("solutions").and_then(|s| s.as_array()).cloned().unwrap_or_default();
        let answers: Vec<Option<String>> = sols.iter().zip(&scored.candidates).map(|(s, c)| record_answer(s, &c.steps)).collect();
        if let Some(arr) = rec.get_mut("solutions").and_then(|s| s.as_array_mut()) {
            for (sol, c) in arr.iter_mut().zip(&scored.candidates) {
                if let Value::Object(o) = sol {
                    o.insert("PRM_score_list".into(), json!(c.scores.iter().map(|&v| v as f64).collect::<Vec<_>>()));
                    // The profile's dropped leading steps (MedS³'s root) are in the list only.
                    let s = &c.scores[scored.drop_steps.min(c.scores.len())..];
                    o.insert("PRM_min_score".into(), score_value(Aggregation::Min.apply(s)));
                    o.insert("PRM_score".into(), score_value(Aggregation::Last.apply(s)));
                    if aggregation != Aggregation::Min && aggregation != Aggregation::Last {
                        o.insert(format!("PRM_{}_score", aggregation.name()), score_value(aggregation.apply(s)));
                    }
                }
            }
        }
        let best = scored.ranking.selected;
        if let Value::Object(o) = &mut rec {
            o.insert("_n_docs_kept".into(), json!(scored.documents.kept));
            if scored.documents.source == "retrieval" {
                o.insert("_retrieved_docs".into(), json!(scored.documents.citations));
            }
            o.insert("_best_of_n".into(), best.map(|b| json!(b)).unwrap_or(Value::Null));
        }

        if let Some(correct) = rec.get("correct_answer").and_then(|c| c.as_str()).map(|c| c.trim().to_string()) {
            let source = rec.get("data_source").and_then(|d| d.as_str()).unwrap_or("all").to_string();
            let is_right = |i: usize| match sols[i].get("score").and_then(|s| s.as_f64()) {
                Some(s) => s == 1.0,
                None => answers[i].as_deref() == Some(correct.as_str()),
            };
            let gives_correct = |sel: Selection| {
                select(sel, &answers, &scored.ranking.scores).is_some_and(|i| answers[i].as_deref() == Some(correct.as_str()))
            };
            let t = tallies.entry(source).or_default();
            t.questions += 1;
            if best.is_some_and(is_right) {
                t.best_of_n += 1;
            }
            if gives_correct(Selection::MajorityVote) {
                t.majority += 1;
            }
            if gives_correct(Selection::WeightedVote) {
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

/// One record as a scoring job: its question, its solutions as candidates, and its
/// `related_docs` (or one search of the index).
fn record_job(rec: &Value, ri: usize, args: &ScoreArgs, cfg: &InferConfig) -> Result<ScoreJob> {
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
                d.as_str()
                    .map(String::from)
                    .ok_or_else(|| Error::input(format!("records[{ri}].related_docs[{di}]"), "not a string"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(Error::input(format!("records[{ri}].related_docs"), "not an array")),
    };
    let documents = if cfg.retrieval {
        Documents::Retrieve { query: crate::retrieval::query_for(&question, &[], false), k: cfg.retrieve_k, mode: cfg.retrieve_mode }
    } else {
        Documents::Caller(docs)
    };
    let sols = match rec.get("solutions") {
        Some(Value::Array(a)) => a.as_slice(),
        None => return Err(Error::input(format!("records[{ri}].solutions"), "missing (an array of {prm_processed_solution | solution})")),
        Some(_) => return Err(Error::input(format!("records[{ri}].solutions"), "not an array")),
    };
    let candidates = sols
        .iter()
        .enumerate()
        .map(|(si, s)| {
            let field = format!("records[{ri}].solutions[{si}]");
            Ok(Candidate { solution: solution_of(s, &field)?, field, answer: None })
        })
        .collect::<Result<_>>()?;
    let images = record_images(rec, ri, args)?;
    Ok(ScoreJob { name: format!("records[{ri}]"), question, candidates, documents, // The profile's aggregation replaces `Min` once the model is loaded (`score_file`).
        aggregation: args.aggregation.unwrap_or(Aggregation::Min), selection: Selection::BestOfN, top_n: None, images })
}

/// A record's `images` (vision PRMs): `[{"path": "scan.png"}]`, a path relative to the input
/// file's directory, the media type from its extension (`.png`, `.jpg`/`.jpeg`, `.dcm`) unless
/// `media_type` says otherwise.
fn record_images(rec: &Value, ri: usize, args: &ScoreArgs) -> Result<Vec<crate::infer::ImageInput>> {
    read_images(rec, ri, args.input.parent().unwrap_or(std::path::Path::new(".")))
}

/// [`record_images`] with paths relative to `base` (also `medprm label`'s reader).
pub fn read_images(rec: &Value, ri: usize, base: &Path) -> Result<Vec<crate::infer::ImageInput>> {
    let list = match rec.get("images") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::input(format!("records[{ri}].images"), "not an array")),
    };
    list.iter()
        .enumerate()
        .map(|(ii, im)| {
            let field = format!("records[{ri}].images[{ii}]");
            let path = im
                .get("path")
                .and_then(|p| p.as_str())
                .ok_or_else(|| Error::input(format!("{field}.path"), "missing or not a string"))?;
            let path = base.join(path);
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            let media_type = match (im.get("media_type").and_then(|m| m.as_str()), ext.as_str()) {
                (Some(m), _) => m.to_string(),
                (None, "png") => "image/png".into(),
                (None, "jpg" | "jpeg") => "image/jpeg".into(),
                (None, "dcm") => "application/dicom".into(),
                (None, _) => return Err(Error::input(format!("{field}.media_type"), "needed: the extension does not say (.png, .jpg, .jpeg, .dcm)")),
            };
            let bytes = std::fs::read(&path).map_err(|e| Error::input(format!("{field}.path"), format!("{}: {e}", path.display())))?;
            Ok(crate::infer::ImageInput { field, media_type, bytes: std::sync::Arc::new(bytes) })
        })
        .collect()
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
