//! The labelling job: every solution not yet in `label_items` is rolled out, judged and labelled,
//! concurrently (each endpoint with its own concurrency limit); finished solutions are upserted
//! into the store and appended to the JSONL output at once, and at the end the output is
//! rewritten in input order from the store (so a resumed run's file has every solution once).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::progress::Bar;

use super::client::{choice_texts, Budget, CallError, Endpoint, Stats};
use super::evidence::{Evidence, EvidenceSource};
use super::hybrid::{agreed_verdict, hybrid, Thresholds};
use super::input::Item;
use super::output::{record, JudgeResult, Labelled};
use super::rollout::{estimate, StepMc};
use super::store::{request_key, Cached, Store};

/// Settings of the labelling (see `medprm label --help`).
#[derive(Debug, Clone)]
pub struct LabelConfig {
    pub rollouts: usize,
    pub n_per_request: usize,
    pub temperature: f64,
    pub max_tokens: usize,
    pub seed: u64,
    pub thresholds: Thresholds,
    pub adaptive_z: f64,
    pub judge_retries: usize,
    pub judge_max_tokens: Option<usize>,
}

/// What every task of the job shares.
pub struct Ctx {
    pub cfg: LabelConfig,
    pub policy: Endpoint,
    pub judges: Vec<(String, Endpoint)>,
    pub store: Store,
    pub bar: Mutex<Bar>,
    pub rollouts_done: AtomicU64,
    pub policy_tokens_used: AtomicU64,
}

impl Ctx {
    /// Counts finished rollouts (stored or new) for the progress bar.
    pub fn rolled(&self, n: u64, tokens: u64) {
        self.rollouts_done.fetch_add(n, Ordering::SeqCst);
        self.policy_tokens_used.fetch_add(tokens, Ordering::SeqCst);
        if let Ok(mut b) = self.bar.lock() {
            b.inc(n);
        }
    }
}

/// How a solution's labelling ended.
pub enum Outcome {
    Done(Value),
    /// `--max-requests`/`--budget` reached: left for a later run.
    Stopped(String),
    Failed { stage: String, error: String },
}

/// A judge's verdicts on a solution: up to `1 + judge_retries` answers until one is parseable.
async fn judge(ctx: &Ctx, name: &str, ep: &Endpoint, item: &Item, evidence: &[Evidence]) -> std::result::Result<JudgeResult, CallError> {
    let n = item.steps.len();
    let messages = super::judge::messages(item, evidence);
    let max_tokens = ctx.cfg.judge_max_tokens.unwrap_or(12 * n + 32);
    let mut last: Option<(Vec<Option<u8>>, String, String)> = None;
    for attempt in 0..=ctx.cfg.judge_retries {
        // A retry samples (a deterministic first answer would come back unchanged).
        let temperature = if attempt == 0 { 0.0 } else { 0.7 };
        let body = json!({"model": ep.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens,
                          "seed": ctx.cfg.seed.wrapping_add(attempt as u64)});
        let key = request_key(&format!("judge:{name}"), &ep.base, &body);
        let raw = match ctx.store.get(&key).map_err(|e| CallError::Store(format!("label store: {e}")))? {
            Some(c) if c.response["text"].is_string() => {
                ep.stats.cached.fetch_add(1, Ordering::SeqCst);
                c.response["text"].as_str().unwrap_or_default().to_string()
            }
            _ => {
                let (texts, answer) = ep.post("/v1/chat/completions", &body, choice_texts).await?;
                let (p, c) = super::client::usage_of(&answer);
                let text = texts.into_iter().next().unwrap_or_default();
                let cached = Cached { response: json!({"text": text}), prompt_tokens: p, completion_tokens: c };
                ctx.store.put(&key, &format!("judge:{name}"), &item.item_id, None, &cached).map_err(|e| CallError::Store(format!("label store: {e}")))?;
                text
            }
        };
        match super::judge::parse(&raw, n) {
            Ok(v) => {
                return Ok(JudgeResult { name: name.into(), url: ep.base.clone(), model: ep.model.clone(), verdicts: v.into_iter().map(Some).collect(), raw, error: None })
            }
            Err((v, why)) => last = Some((v, why, raw)),
        }
    }
    let (verdicts, why, raw) = last.expect("at least one attempt");
    let why = format!("{why} after {} answer(s)", ctx.cfg.judge_retries + 1);
    Ok(JudgeResult { name: name.into(), url: ep.base.clone(), model: ep.model.clone(), verdicts, raw, error: Some(why) })
}

/// Labels one solution.
pub async fn label_item(ctx: Arc<Ctx>, item: Arc<Item>, evidence: Arc<Vec<Evidence>>, adaptive: bool) -> (Outcome, Vec<StepMc>) {
    let stopped_or_failed = |stage: &str, e: CallError| match e {
        CallError::Stopped(s) => Outcome::Stopped(s),
        e => Outcome::Failed { stage: stage.into(), error: e.to_string() },
    };
    let mc_task = tokio::spawn(estimate(ctx.clone(), item.clone(), adaptive));
    let mut judges = Vec::new();
    let mut judge_err = None;
    for (name, ep) in &ctx.judges {
        match judge(&ctx, name, ep, &item, &evidence).await {
            Ok(j) => judges.push(j),
            Err(e) => {
                judge_err = Some(stopped_or_failed(&format!("judge {name}"), e));
                break;
            }
        }
    }
    let mc = match mc_task.await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return (stopped_or_failed("policy", e), vec![]),
        Err(e) => return (Outcome::Failed { stage: "policy".into(), error: e.to_string() }, vec![]),
    };
    if let Some(o) = judge_err {
        return (o, mc.0);
    }
    let (mc, first_error) = mc;
    let hybrid: Vec<_> = (0..item.steps.len())
        .map(|i| {
            let verdicts: Vec<Option<u8>> = judges.iter().map(|j| j.verdicts[i]).collect();
            hybrid(agreed_verdict(&verdicts), Some(mc[i].soft), &ctx.cfg.thresholds)
        })
        .collect();
    let rec = record(&Labelled {
        item: &item,
        mc: &mc,
        judges: &judges,
        hybrid: &hybrid,
        evidence: &evidence,
        policy: (&ctx.policy.base, &ctx.policy.model),
        mode: if adaptive { "adaptive" } else { "fixed" },
        first_error,
    });
    (Outcome::Done(rec), mc)
}

/// The run's arguments beyond [`LabelConfig`].
pub struct RunArgs {
    pub input: PathBuf,
    /// Only the first N records.
    pub records: Option<usize>,
    pub out: PathBuf,
    pub db: PathBuf,
    pub policy_url: String,
    pub policy_model: Option<String>,
    /// (name, url, model).
    pub judges: Vec<(String, String, Option<String>)>,
    pub index: Option<(PathBuf, usize, crate::retrieval::Mode)>,
    pub concurrency: usize,
    pub retry: super::client::RetryPolicy,
    pub max_requests: Option<u64>,
    pub budget: Option<f64>,
    pub price_per_mtok: f64,
    pub adaptive: bool,
    pub progress: bool,
    /// Then label the same solutions adaptively from the store and write the comparison here.
    pub compare_adaptive: Option<PathBuf>,
    /// The command line (recorded in the comparison).
    pub command: String,
}

/// The item ids already in a JSONL output (lines that do not parse are dropped by the rewrite).
fn ids_in(out: &Path) -> HashSet<String> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("item_id").and_then(|i| i.as_str()).map(String::from))
        .collect()
}

fn append_line(f: &Mutex<std::fs::File>, out: &Path, line: &str) -> Result<()> {
    let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
    f.write_all(line.as_bytes()).and_then(|_| f.write_all(b"\n")).and_then(|_| f.flush()).map_err(|e| Error::bad_file(out, e))
}

/// What a run did.
pub struct Summary {
    pub items: usize,
    pub labelled: usize,
    pub already: usize,
    pub failed: Vec<(String, String, String)>,
    pub stopped: Option<String>,
    pub left: usize,
    pub steps: usize,
    pub uncertain: usize,
    pub rollouts: u64,
    pub seconds: f64,
    pub stages: Vec<(String, [u64; 6])>,
    pub cost: f64,
    pub price_per_mtok: f64,
}

impl Summary {
    pub fn print(&self, w: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            w,
            "labelled {} of {} solutions ({} already done, {} failed, {} left) in {:.1}s: {} rollouts ({:.2}/s), {} steps, {} uncertain ({:.0}%)",
            self.labelled + self.already,
            self.items,
            self.already,
            self.failed.len(),
            self.left,
            self.seconds,
            self.rollouts,
            self.rollouts as f64 / self.seconds.max(1e-9),
            self.steps,
            self.uncertain,
            100.0 * self.uncertain as f64 / self.steps.max(1) as f64
        )?;
        writeln!(w, "{:<20} {:>9} {:>8} {:>8} {:>8} {:>14} {:>17}", "stage", "requests", "stored", "retries", "failed", "prompt_tokens", "completion_tokens")?;
        for (s, [req, cached, retries, failed, p, c]) in &self.stages {
            writeln!(w, "{s:<20} {req:>9} {cached:>8} {retries:>8} {failed:>8} {p:>14} {c:>17}")?;
        }
        if self.price_per_mtok > 0.0 {
            writeln!(w, "estimated cost: ${:.4} at ${}/M tokens", self.cost, self.price_per_mtok)?;
        }
        if let Some(s) = &self.stopped {
            writeln!(w, "{s}: {} solutions left for the next run (it reuses every stored answer)", self.left)?;
        }
        for (id, stage, e) in &self.failed {
            writeln!(w, "failed {id} ({stage}): {e}")?;
        }
        Ok(())
    }
}

fn stage_row(s: &Stats) -> [u64; 6] {
    [&s.requests, &s.cached, &s.retries, &s.failures, &s.prompt_tokens, &s.completion_tokens].map(Stats::get)
}

/// Runs the job. Every record is checked, and the store and index opened, before any request.
pub fn run(args: RunArgs, cfg: LabelConfig) -> Result<Summary> {
    let items: Vec<Arc<Item>> = super::input::read_items(&args.input)?
        .into_iter()
        .filter(|it| args.records.is_none_or(|n| it.question.index < n))
        .map(Arc::new)
        .collect();
    let index = match &args.index {
        Some((dir, k, mode)) => {
            crate::retrieval::check_k(*k, "--retrieve-k")?;
            Some((Arc::new(crate::retrieval::Index::open(dir)?), *k, *mode))
        }
        None => None,
    };
    let evidence_source = Arc::new(EvidenceSource::new(index)?);
    let store = Store::open(&args.db)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| Error::Backend(e.to_string()))?;
    rt.block_on(run_async(args, cfg, items, evidence_source, store))
}

/// The model name given, else the endpoint's first.
async fn model_of(ep: &Endpoint, given: &Option<String>, flag: &str) -> Result<String> {
    match given {
        Some(m) => Ok(m.clone()),
        None => ep.discover_model().await.map_err(|e| Error::input(flag, format!("not given, and {e}"))),
    }
}

async fn run_async(args: RunArgs, cfg: LabelConfig, items: Vec<Arc<Item>>, evidence_source: Arc<EvidenceSource>, store: Store) -> Result<Summary> {
    let start = std::time::Instant::now();
    let budget = Arc::new(Budget::new(args.max_requests, args.budget, args.price_per_mtok));
    let mut policy = Endpoint::new("policy", &args.policy_url, String::new(), args.concurrency, args.retry.clone(), budget.clone());
    policy.model = model_of(&policy, &args.policy_model, "--policy-model").await?;
    let mut judges = Vec::new();
    for (name, url, m) in &args.judges {
        let mut ep = Endpoint::new(&format!("judge {name}"), url, String::new(), args.concurrency, args.retry.clone(), budget.clone());
        ep.model = model_of(&ep, m, "--judge-model").await?;
        judges.push((name.clone(), ep));
    }

    // What earlier runs finished: in the store; the output gets any it lacks.
    let in_file = ids_in(&args.out);
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&args.out).map_err(|e| Error::bad_file(&args.out, e))?;
    let file = Mutex::new(file);
    let mut pending = Vec::new();
    let mut already = 0;
    for it in &items {
        match store.item(&it.item_id)? {
            Some(line) => {
                already += 1;
                if !in_file.contains(&it.item_id) {
                    append_line(&file, &args.out, &line)?;
                }
            }
            None => pending.push(it.clone()),
        }
    }
    let planned: u64 = pending.iter().map(|i| ((i.steps.len() - 1) * cfg.rollouts) as u64).sum();
    let bar = if args.progress { Bar::new("labelling", planned, "rollouts") } else { Bar::hidden(planned) };
    let ctx = Arc::new(Ctx { cfg: cfg.clone(), policy, judges, store, bar: Mutex::new(bar), rollouts_done: AtomicU64::new(0), policy_tokens_used: AtomicU64::new(0) });

    // Evidence once per question, on a blocking thread (search and tokenizer).
    let mut evidence: std::collections::HashMap<usize, Arc<Vec<Evidence>>> = Default::default();
    let need = if args.compare_adaptive.is_some() { &items } else { &pending };
    for it in need {
        let qi = it.question.index;
        if let std::collections::hash_map::Entry::Vacant(e) = evidence.entry(qi) {
            let (src, q) = (evidence_source.clone(), it.question.clone());
            let ev = tokio::task::spawn_blocking(move || src.evidence(&q)).await.map_err(|e| Error::Backend(e.to_string()))??;
            e.insert(Arc::new(ev));
        }
    }

    let items_in_flight = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1) * 2));
    let mut set = tokio::task::JoinSet::new();
    for it in pending.iter().cloned() {
        let (ctx, ev, sem) = (ctx.clone(), evidence[&it.question.index].clone(), items_in_flight.clone());
        let adaptive = args.adaptive;
        set.spawn(async move {
            let _p = sem.acquire_owned().await.expect("never closed");
            let (o, _) = label_item(ctx, it.clone(), ev, adaptive).await;
            (it, o)
        });
    }
    let (mut labelled, mut failed, mut stopped, mut left) = (0, Vec::new(), None, 0);
    while let Some(r) = set.join_next().await {
        let (it, o) = r.map_err(|e| Error::Backend(format!("label task: {e}")))?;
        match o {
            Outcome::Done(rec) => {
                let line = rec.to_string();
                let n_unc = rec["hybrid_label"].as_array().map_or(0, |a| a.iter().filter(|v| v.is_null()).count());
                ctx.store.upsert_item(&it.item_id, &it.question.data_source, it.steps.len(), n_unc, &line)?;
                append_line(&file, &args.out, &line)?;
                labelled += 1;
            }
            Outcome::Stopped(s) => {
                stopped.get_or_insert(s);
                left += 1;
            }
            Outcome::Failed { stage, error } => {
                ctx.bar.lock().map(|b| b.suspend(|| tracing::warn!("{}: {stage} failed: {error}", it.item_id))).ok();
                ctx.store.record_failure(&it.item_id, &stage, &error)?;
                failed.push((it.item_id.clone(), stage, error));
            }
        }
    }
    if let Ok(b) = ctx.bar.lock() {
        b.finish();
    }
    drop(file);
    // The output in input order, each solution once.
    let (mut steps, mut uncertain) = (0, 0);
    let tmp = args.out.with_extension("jsonl.tmp");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::bad_file(&tmp, e))?);
        for it in &items {
            if let Some(line) = ctx.store.item(&it.item_id)? {
                let v: Value = serde_json::from_str(&line).map_err(|e| Error::bad_file(&args.db, e))?;
                steps += it.steps.len();
                uncertain += v["hybrid_label"].as_array().map_or(0, |a| a.iter().filter(|x| x.is_null()).count());
                writeln!(w, "{line}").map_err(|e| Error::bad_file(&tmp, e))?;
            }
        }
        w.flush().map_err(|e| Error::bad_file(&tmp, e))?;
    }
    std::fs::rename(&tmp, &args.out).map_err(|e| Error::bad_file(&args.out, e))?;

    let mut stages = vec![("policy".to_string(), stage_row(&ctx.policy.stats))];
    for (name, ep) in &ctx.judges {
        stages.push((format!("judge {name}"), stage_row(&ep.stats)));
    }
    let summary = Summary {
        items: items.len(),
        labelled,
        already,
        failed,
        stopped,
        left,
        steps,
        uncertain,
        rollouts: ctx.rollouts_done.load(Ordering::SeqCst),
        seconds: start.elapsed().as_secs_f64(),
        stages,
        cost: budget.cost(),
        price_per_mtok: args.price_per_mtok,
    };
    if let Some(path) = &args.compare_adaptive {
        let line = super::compare::compare(&ctx, &items, &evidence, path, &args.command).await?;
        eprintln!("adaptive vs fixed: {line}");
    }
    Ok(summary)
}
