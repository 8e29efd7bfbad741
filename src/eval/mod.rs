//! `medprm eval`: a PRM measured the way the literature does. Best-of-N curves on Med-PRM test
//! files and step-level metrics on labelled steps (Med-PRM training layout, ProcessBench,
//! VisualProcessBench), scored in process or through a running server's `/v1/rank` and
//! `/v1/score`, with a resumable score cache, plots and a self-contained HTML report.

pub mod cache;
pub mod formats;
pub mod metrics_bon;
pub mod metrics_step;
pub mod plots;
pub mod report;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::aggregate::Aggregation;
use crate::engine::{Engine, LoadOptions};
use crate::error::{Error, Result};
use formats::{BonQuestion, Format, Parsed, SolutionText, StepItem};
use source::{Refusal, Source};

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Input files (JSON array, one object or JSONL), each in one of the layouts of --format.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// A running medprm (`http://127.0.0.1:8080`): scored through /v1/rank and /v1/score.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub url: Option<String>,
    /// Score in process instead: a Hugging Face directory or a GGUF file.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// PRM profile for --model (default: the one the model implies).
    #[arg(long, requires = "model")]
    pub profile: Option<String>,
    /// Device for --model: cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Directory for metrics.json, the plots, report.html and the score cache.
    #[arg(long)]
    pub out: PathBuf,
    /// Subsamples per question and N for the Best-of-N curves.
    #[arg(long, default_value_t = 20)]
    pub draws: usize,
    /// Seed of the subsamples and the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A step scored under this p(+) is predicted wrong.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The step-label column of the Med-PRM training layout (prm_hard_label, prm_llama_label,
    /// prm_gemini_label, hybrid_label, ...): 0, 1 or null per step.
    #[arg(long, default_value = "prm_hard_label")]
    pub label_field: String,
    /// Solution score summed by weighted_vote.
    #[arg(long, value_enum, default_value = "min")]
    pub aggregation: Aggregation,
    /// The score cache (default: OUT/score-cache.jsonl).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Padded tokens per forward pass (--model).
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    #[arg(long, env = "MEDPRM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl EvalArgs {
    fn load_options(&self) -> Result<Option<LoadOptions>> {
        let Some(model) = &self.model else { return Ok(None) };
        let m = crate::args::ModelArgs {
            model: model.clone(),
            profile: self.profile.clone(),
            adapter: None,
            dtype: "f32".into(),
            device: self.device.clone(),
            gguf_matmul: "auto".into(),
            mkl_vml: None,
        };
        m.options().map(Some)
    }
}

/// One input file, read.
struct Input {
    path: PathBuf,
    sha256: String,
    format: Format,
    parsed: Parsed,
}

/// A request the scorer refused, as metrics.json lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    pub file: String,
    pub record: usize,
    /// The candidate (Best-of-N), `None` for a step-level solution.
    pub candidate: Option<usize>,
    pub endpoint: String,
    pub status: Option<u16>,
    pub error: String,
}

struct Ctx {
    source: Source,
    cache: cache::Cache,
    identity: String,
    hits: AtomicUsize,
    calls: AtomicUsize,
}

impl Ctx {
    async fn call(&self, endpoint: &str, body: &Value) -> std::result::Result<Value, Refusal> {
        let key = cache::key(&self.identity, endpoint, body);
        if let Some(v) = self.cache.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let v = self.source.call(endpoint, body).await?;
        self.cache.put(&key, &v).map_err(|e| Refusal { status: None, error: e.to_string() })?;
        Ok(v)
    }
}

fn images_json(images: &[formats::ImageRef]) -> std::result::Result<Vec<Value>, Refusal> {
    images
        .iter()
        .map(|im| match im {
            formats::ImageRef::Data { data, media_type } => Ok(json!({"data": data, "media_type": media_type})),
            formats::ImageRef::Path { path: p, media_type } => {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
                let media = match (media_type.as_deref(), ext.as_str()) {
                    (Some(m), _) => m,
                    (None, "png") => "image/png",
                    (None, "jpg" | "jpeg") => "image/jpeg",
                    (None, "dcm") => "application/dicom",
                    _ => return Err(Refusal { status: None, error: format!("{}: unknown image type (.png, .jpg, .jpeg, .dcm; or give media_type)", p.display()) }),
                };
                let bytes = std::fs::read(p).map_err(|e| Refusal { status: None, error: format!("{}: {e}", p.display()) })?;
                Ok(json!({"data": base64::engine::general_purpose::STANDARD.encode(bytes), "media_type": media}))
            }
        })
        .collect()
}

/// A candidate as the API takes it: tagged text as its steps, raw text as `solution`.
fn candidate_json(text: &SolutionText, answer: &Option<Option<String>>) -> Value {
    let mut c = match text {
        SolutionText::Tagged(t) => {
            let (steps, _) = crate::steps::split_tagged(t, " ки");
            json!({"steps": steps})
        }
        SolutionText::Raw(t) => json!({"solution": t}),
    };
    if let Some(Some(a)) = answer {
        c["answer"] = json!(a);
    }
    c
}

fn rank_body(q: &BonQuestion, only: Option<usize>, images: &[Value]) -> Value {
    let cands: Vec<Value> = q
        .candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|o| o == *i))
        .map(|(_, c)| candidate_json(&c.text, &c.answer))
        .collect();
    let mut b = json!({"question": q.question, "candidates": cands, "aggregation": "min", "selection": "best_of_n"});
    // Without documents the server decides (its default retrieval, if any).
    if !q.documents.is_empty() {
        b["documents"] = json!(q.documents);
    }
    if !images.is_empty() {
        b["images"] = json!(images);
    }
    b
}

/// Step scores of a ranked candidate without the profile's dropped leading steps (found as the
/// suffix whose mean is the reported `aggregates.mean`).
fn candidate_steps(c: &Value) -> Option<(Vec<f32>, Option<String>)> {
    let steps: Vec<f32> = c.get("steps")?.as_array()?.iter().map(|s| s.get("score").and_then(|v| v.as_f64()).map(|v| v as f32)).collect::<Option<_>>()?;
    let mean = c.get("aggregates").and_then(|a| a.get("mean")).and_then(|m| m.as_f64());
    let drop = match mean {
        Some(m) => (0..steps.len()).find(|&d| Aggregation::Mean.apply(&steps[d..]).is_some_and(|x| (x as f64 - m).abs() < 1e-6)).unwrap_or(0),
        None => 0,
    };
    let answer = c.get("answer").and_then(|a| a.as_str()).map(String::from);
    Some((steps[drop..].to_vec(), answer))
}

type CandResult = std::result::Result<(Vec<f32>, Option<String>), Refusal>;

/// Scores one question's candidates: one rank request; if refused, each candidate alone, so a
/// candidate the scorer refuses is reported on its own and the others still count.
async fn score_question(ctx: &Ctx, q: &BonQuestion) -> Vec<CandResult> {
    let images = match images_json(&q.images) {
        Ok(i) => i,
        Err(r) => return q.candidates.iter().map(|_| Err(r.clone())).collect(),
    };
    let by_index = |v: &Value| -> Vec<Option<(Vec<f32>, Option<String>)>> {
        let mut out = vec![None; q.candidates.len()];
        for c in v.get("candidates").and_then(|c| c.as_array()).into_iter().flatten() {
            if let Some(i) = c.get("index").and_then(|i| i.as_u64()).map(|i| i as usize).filter(|&i| i < out.len()) {
                out[i] = candidate_steps(c);
            }
        }
        out
    };
    let malformed = || Refusal { status: None, error: "the response lacks this candidate's step scores".into() };
    match ctx.call("/v1/rank", &rank_body(q, None, &images)).await {
        Ok(v) => by_index(&v).into_iter().map(|c| c.ok_or_else(malformed)).collect(),
        Err(r) if q.candidates.len() == 1 => vec![Err(r)],
        Err(_) => {
            let mut out = Vec::new();
            for i in 0..q.candidates.len() {
                out.push(match ctx.call("/v1/rank", &rank_body(q, Some(i), &images)).await {
                    Ok(v) => by_index(&v).into_iter().flatten().next().ok_or_else(malformed),
                    Err(r) => Err(r),
                });
            }
            out
        }
    }
}

async fn score_item(ctx: &Ctx, it: &StepItem) -> std::result::Result<Vec<f64>, Refusal> {
    let images = images_json(&it.images)?;
    let mut body = json!({"question": it.question, "steps": it.steps});
    if !images.is_empty() {
        body["images"] = json!(images);
    }
    let v = ctx.call("/v1/score", &body).await?;
    // The same reading as a ranked candidate (a profile's dropped leading steps left out).
    let scores: Vec<f64> = candidate_steps(&v).map(|(s, _)| s.iter().map(|&x| x as f64).collect()).unwrap_or_default();
    if scores.len() != it.steps.len() {
        return Err(Refusal { status: None, error: format!("{} step scores for {} labelled steps", scores.len(), it.steps.len()) });
    }
    Ok(scores)
}

/// What `medprm eval` wrote.
pub struct Summary {
    pub lines: Vec<String>,
    pub out: PathBuf,
}

/// Reads every input (a bad file fails before any model time), scores through `--url` or the
/// model `load` gives, computes the metrics and writes metrics.json, the plots and report.html.
pub fn run(args: &EvalArgs, load: impl FnOnce(&LoadOptions) -> Result<Engine>) -> Result<Summary> {
    let started = std::time::Instant::now();
    if !(0.0..=1.0).contains(&args.threshold) {
        return Err(Error::input("--threshold", "must be in [0, 1]"));
    }
    if args.concurrency == 0 {
        return Err(Error::input("--concurrency", "must be at least 1"));
    }
    let mut inputs = Vec::new();
    for path in &args.input {
        let bytes = std::fs::read(path).map_err(|e| Error::bad_file(path, e))?;
        let (format, parsed) = formats::read(path, args.format, &args.label_field)?;
        inputs.push(Input { path: path.clone(), sha256: cache::sha256_hex(&bytes), format, parsed });
    }
    let opts = args.load_options()?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::bad_file(&args.out, e))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| Error::Backend(e.to_string()))?;
    let source = match (&args.url, opts) {
        (Some(u), _) => Source::url(u, args.api_key.clone())?,
        (None, Some(o)) => Source::model(load(&o)?, args.max_batch_tokens),
        (None, None) => return Err(Error::input("--url", "give --url or --model")),
    };
    let info = rt.block_on(source.info())?;
    let cache_path = args.cache.clone().unwrap_or_else(|| args.out.join("score-cache.jsonl"));
    let cache = cache::Cache::open(&cache_path)?;
    let ctx = Arc::new(Ctx { identity: Source::identity(&info), source, cache, hits: AtomicUsize::new(0), calls: AtomicUsize::new(0) });

    let total: usize = inputs.iter().map(|i| match &i.parsed { Parsed::Bon(q) => q.len(), Parsed::Steps(s) => s.len() }).sum();
    let bar = std::sync::Mutex::new(if args.quiet { crate::progress::Bar::hidden(total as u64) } else { crate::progress::Bar::new("scoring", total as u64, "records") });
    let bar = Arc::new(bar);

    // Every record of every file, scored with at most --concurrency in flight.
    let inputs = Arc::new(inputs);
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (bon_results, step_results) = rt.block_on(async {
        let mut bon = tokio::task::JoinSet::new();
        let mut steps = tokio::task::JoinSet::new();
        for (fi, input) in inputs.iter().enumerate() {
            let n = match &input.parsed { Parsed::Bon(q) => q.len(), Parsed::Steps(s) => s.len() };
            for ri in 0..n {
                let (ctx, inputs, sem, bar) = (ctx.clone(), inputs.clone(), sem.clone(), bar.clone());
                let is_bon = matches!(input.parsed, Parsed::Bon(_));
                if is_bon {
                    bon.spawn(async move {
                        let _p = sem.acquire_owned().await.expect("semaphore open");
                        let Parsed::Bon(qs) = &inputs[fi].parsed else { unreachable!() };
                        let r = score_question(&ctx, &qs[ri]).await;
                        bar.lock().expect("bar").inc(1);
                        (fi, ri, r)
                    });
                } else {
                    steps.spawn(async move {
                        let _p = sem.acquire_owned().await.expect("semaphore open");
                        let Parsed::Steps(items) = &inputs[fi].parsed else { unreachable!() };
                        let r = score_item(&ctx, &items[ri]).await;
                        bar.lock().expect("bar").inc(1);
                        (fi, ri, r)
                    });
                }
            }
        }
        let mut b = Vec::new();
        while let Some(r) = bon.join_next().await {
            b.push(r.map_err(|e| Error::Backend(format!("scoring task: {e}")))?);
        }
        let mut s = Vec::new();
        while let Some(r) = steps.join_next().await {
            s.push(r.map_err(|e| Error::Backend(format!("scoring task: {e}")))?);
        }
        Ok::<_, Error>((b, s))
    })?;
    bar.lock().expect("bar").finish();
    let mut refused: Vec<Refused> = Vec::new();

    // Best-of-N, all test-layout files together (per data_source inside).
    let mut bon_results = bon_results;
    bon_results.sort_by_key(|(f, r, _)| (*f, *r));
    let mut questions = Vec::new();
    for (fi, ri, results) in &bon_results {
        let Parsed::Bon(qs) = &inputs[*fi].parsed else { unreachable!() };
        let q = &qs[*ri];
        let cands = q
            .candidates
            .iter()
            .zip(results)
            .enumerate()
            .map(|(ci, (c, r))| {
                let (steps, served_answer) = match r {
                    Ok((s, a)) => (Some(s.clone()), a.clone()),
                    Err(e) => {
                        refused.push(Refused { file: inputs[*fi].path.display().to_string(), record: *ri, candidate: Some(ci), endpoint: "/v1/rank".into(), status: e.status, error: e.error.clone() });
                        // Its answer still votes in majority_vote: read from its own text.
                        (None, crate::aggregate::extract_answer(&match &c.text { SolutionText::Tagged(t) | SolutionText::Raw(t) => t.clone() }))
                    }
                };
                // The record's answer (or its null) wins over the served one, as in `medprm score`.
                let answer = match &c.answer { Some(a) => a.clone(), None => served_answer };
                let right = match c.score { Some(s) => s == 1.0, None => answer.as_deref() == Some(q.correct_answer.as_str()) };
                metrics_bon::Cand { steps, answer, right }
            })
            .collect();
        questions.push(metrics_bon::Question { data_source: q.data_source.clone(), correct_answer: q.correct_answer.clone(), cands });
    }
    let bon = (!questions.is_empty()).then(|| metrics_bon::evaluate(&questions, args.draws, args.seed, args.aggregation));

    // Step level, one report per layout.
    let mut step_results = step_results;
    step_results.sort_by_key(|(f, r, _)| (*f, *r));
    let mut by_format: BTreeMap<&'static str, (Vec<metrics_step::Scored>, usize)> = BTreeMap::new();
    for (fi, ri, r) in &step_results {
        let Parsed::Steps(items) = &inputs[*fi].parsed else { unreachable!() };
        let it = &items[*ri];
        let e = by_format.entry(inputs[*fi].format.name()).or_default();
        match r {
            Ok(scores) => e.0.push(metrics_step::Scored { data_source: it.data_source.clone(), labels: it.labels.clone(), scores: scores.clone() }),
            Err(err) => {
                e.1 += 1;
                refused.push(Refused { file: inputs[*fi].path.display().to_string(), record: *ri, candidate: None, endpoint: "/v1/score".into(), status: err.status, error: err.error.clone() });
            }
        }
    }
    let step: BTreeMap<String, metrics_step::StepReport> =
        by_format.iter().map(|(f, (items, refused))| (f.to_string(), metrics_step::evaluate(items, args.threshold, *refused))).collect();

    let hits = ctx.hits.load(Ordering::Relaxed);
    let calls = ctx.calls.load(Ordering::Relaxed);
    let mut metrics = json!({
        "command_line": std::env::args().collect::<Vec<_>>(),
        "medprm_version": env!("CARGO_PKG_VERSION"),
        "scorer": {"url": args.url, "model_path": args.model, "info": info},
        "inputs": inputs.iter().map(|i| json!({"path": i.path, "sha256": i.sha256, "format": i.format.name(),
            "records": match &i.parsed { Parsed::Bon(q) => q.len(), Parsed::Steps(s) => s.len() }})).collect::<Vec<_>>(),
        "settings": {"draws": args.draws, "seed": args.seed, "threshold": args.threshold, "concurrency": args.concurrency,
                     "label_field": args.label_field, "vote_aggregation": args.aggregation},
        "scoring": {"requests_sent_to_scorer": calls, "requests_from_cache": hits, "cache": cache_path,
                    "cache_entries_at_start": ctx.cache.loaded, "refused": refused.len(), "seconds": started.elapsed().as_secs_f64()},
        "refused": refused,
        "best_of_n": bon,
        "step_level": step,
    });
    let plots = plots::write_all(&args.out, bon.as_ref(), &step);
    metrics["plots"] = json!(plots);
    let path = args.out.join("metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(&metrics).expect("serializable")).map_err(|e| Error::bad_file(&path, e))?;
    let html = report::render(&metrics, &plots);
    let rpath = args.out.join("report.html");
    std::fs::write(&rpath, html).map_err(|e| Error::bad_file(&rpath, e))?;
    Ok(Summary { lines: summary_lines(&metrics, bon.as_ref(), &step), out: args.out.clone() })
}

fn summary_lines(m: &Value, bon: Option<&metrics_bon::BonReport>, step: &BTreeMap<String, metrics_step::StepReport>) -> Vec<String> {
    let mut l = Vec::new();
    let s = &m["scoring"];
    l.push(format!(
        "scored: {} requests sent to the scorer, {} answered from the cache, {} refused",
        s["requests_sent_to_scorer"], s["requests_from_cache"], s["refused"]
    ));
    if let Some(b) = bon {
        let max = b.points.iter().map(|p| p.n).max().unwrap_or(0);
        l.push(format!("Best-of-N: {} questions, {} candidates; accuracy at N = {max} (mean [95% CI]):", b.questions, b.candidates));
        for p in b.points.iter().filter(|p| p.n == max) {
            l.push(format!("  {:<16} {:6.2} [{:6.2}, {:6.2}]  ties {}", p.method.name(), 100.0 * p.overall.mean, 100.0 * p.overall.lo, 100.0 * p.overall.hi, p.ties));
        }
    }
    for (f, r) in step {
        let a = &r.at_threshold;
        let f1 = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.2}", 100.0 * v));
        l.push(format!(
            "{f}: {} solutions; ProcessBench F1 {} at {}, macro-F1 {:.2}, AUROC {}, ECE {:.3}",
            r.solutions, f1(a.processbench_f1), a.threshold, 100.0 * a.macro_f1, r.auroc.map_or("n/a".into(), |v| format!("{v:.3}")), r.ece
        ));
    }
    l
}

/// `OUT/name` relative to OUT (for the report's links).
pub fn rel(out: &Path, p: &Path) -> String {
    p.strip_prefix(out).unwrap_or(p).display().to_string()
}
