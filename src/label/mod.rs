//! `medprm label`: PRM step labels made the Med-PRM way against OpenAI-compatible endpoints —
//! Monte Carlo rollouts of a policy from every step prefix ([`rollout`]), RAG-as-a-judge with
//! guideline evidence ([`judge`], [`evidence`]) and the hybrid rule ([`hybrid`]) — as a resumable
//! job ([`job`]) whose every finished request is kept in SQLite ([`store`]); the output is the
//! published training set's layout ([`output`]) and `label_items`, the review queue.

pub mod client;
pub mod compare;
pub mod evidence;
pub mod hybrid;
pub mod input;
pub mod job;
pub mod judge;
pub mod output;
pub mod rollout;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// `medprm label` flags.
#[derive(clap::Args, Debug)]
pub struct LabelArgs {
    /// Input records: the layouts `medprm score` reads ({question, related_docs, solutions:
    /// [{prm_processed_solution | solution}], correct_answer}) or the Med-PRM training layout
    /// ({question, options, steps, correct_answer}); JSON array, one object or JSONL.
    #[arg(long)]
    pub input: PathBuf,
    /// Label only the first N records of the input (all are still checked).
    #[arg(long)]
    pub records: Option<usize>,
    /// Output JSONL, one labelled solution a line (the published training set's fields, then
    /// item_id, hybrid_label, hybrid_confidence, label_source, evidence, provenance).
    #[arg(long)]
    pub out: PathBuf,
    /// SQLite store (WAL): every finished rollout and verdict, and the review queue
    /// `label_items`. Rerunning with the same store resumes: nothing finished is requested again.
    #[arg(long)]
    pub db: PathBuf,
    /// Policy endpoint (OpenAI-compatible base URL, with or without /v1).
    #[arg(long)]
    pub policy_url: String,
    /// Model name sent to the policy (default: the first of its /v1/models).
    #[arg(long)]
    pub policy_model: Option<String>,
    /// Judge endpoint(s) (chat completions); repeat for several judges.
    #[arg(long, required = true)]
    pub judge_url: Vec<String>,
    /// Name of each judge, in the order of --judge-url: its column is prm_<name>_label
    /// (default: "judge", then judge2, judge3, ...).
    #[arg(long)]
    pub judge_name: Vec<String>,
    /// Model name sent to each judge, in the order of --judge-url (default: the first of its /v1/models).
    #[arg(long)]
    pub judge_model: Vec<String>,
    /// Guideline index (built by `medprm index`): the judge's evidence is retrieved from it
    /// (query: question and options) instead of the record's `related_docs`.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Passages retrieved per question; the Med-PRM document budget keeps a prefix of them.
    #[arg(long, default_value_t = 5)]
    pub retrieve_k: usize,
    /// Ranking for --index: bm25, dense or hybrid.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub retrieve_mode: crate::retrieval::Mode,
    /// Rollouts per step (K; the published set used 16). In adaptive mode, the most per step.
    #[arg(long, default_value_t = 16)]
    pub rollouts: usize,
    /// Rollouts asked for in one request (`n`); a server that returns fewer is asked again, one
    /// that refuses `n` > 1 (400/422) gets one per request.
    #[arg(long, default_value_t = 4)]
    pub n_per_request: usize,
    /// Sampling temperature of the rollouts.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Most tokens a rollout may generate.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Base seed: a rollout batch's seed is seed + 1000·step + batch; the judge's seed + attempt.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests in flight per endpoint.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Hybrid rule: judge + and MC above this → correct (confidence min(mc, --max-confidence)).
    #[arg(long, default_value_t = 0.7)]
    pub upper: f64,
    /// Hybrid rule: judge − and MC below this → incorrect (confidence min(1 − mc, --max-confidence)).
    #[arg(long, default_value_t = 0.3)]
    pub lower: f64,
    /// Cap of the hybrid confidence.
    #[arg(long, default_value_t = 0.95)]
    pub max_confidence: f64,
    /// Adaptive rollouts: stop a step once its Wilson interval lies wholly above --upper, below
    /// --lower or between them; bisect for the first error of solutions with a wrong answer.
    #[arg(long)]
    pub adaptive: bool,
    /// Normal quantile of the adaptive Wilson interval (1.645: 90% two-sided).
    #[arg(long, default_value_t = 1.645)]
    pub adaptive_z: f64,
    /// Extra tries of a judge whose answer misses or contradicts a step verdict.
    #[arg(long, default_value_t = 2)]
    pub judge_retries: usize,
    /// Most tokens of a judge answer (default: 12 per step + 32).
    #[arg(long)]
    pub judge_max_tokens: Option<usize>,
    /// Seconds before a request is abandoned (and retried).
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Retries of a request on 429, 5xx, timeouts, connection errors and unusable answers.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// First retry backoff in seconds (doubled each time, at most 30 s; Retry-After wins).
    #[arg(long, default_value_t = 0.5)]
    pub backoff: f64,
    /// Stop cleanly after this many requests (all endpoints); rerun to continue.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Stop cleanly once the estimated cost reaches this many dollars (needs --price-per-mtok).
    #[arg(long, requires = "price_per_mtok")]
    pub budget: Option<f64>,
    /// Dollars per million tokens (prompt + completion), for the cost estimate and --budget.
    #[arg(long, default_value_t = 0.0)]
    pub price_per_mtok: f64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// After the fixed-K run, label the same solutions in adaptive mode from the same store (the
    /// same rollout requests: nothing new is sent) and write rollouts, requests and tokens spent
    /// by each mode and the agreement of their hard, soft and hybrid labels to this JSON file.
    #[arg(long, conflicts_with = "adaptive")]
    pub compare_adaptive: Option<PathBuf>,
}

fn check_name(n: &str) -> Result<()> {
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::input("--judge-name", format!("`{n}`: letters, digits and _ only (it becomes prm_{n}_label)")));
    }
    Ok(())
}

impl LabelArgs {
    /// The job's settings, checked.
    pub fn into_job(self) -> Result<(job::RunArgs, job::LabelConfig)> {
        if self.rollouts == 0 {
            return Err(Error::input("--rollouts", "must be at least 1"));
        }
        if self.n_per_request == 0 {
            return Err(Error::input("--n-per-request", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.lower) || !(0.0..=1.0).contains(&self.upper) || self.lower > self.upper {
            return Err(Error::input("--lower/--upper", "need 0 <= lower <= upper <= 1"));
        }
        if !(self.max_confidence > 0.0 && self.max_confidence <= 1.0) {
            return Err(Error::input("--max-confidence", "must be in (0, 1]"));
        }
        if !(self.adaptive_z.is_finite() && self.adaptive_z > 0.0) {
            return Err(Error::input("--adaptive-z", "must be positive"));
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.backoff.is_finite() && self.backoff >= 0.0) {
            return Err(Error::input("--timeout/--backoff", "must be positive numbers"));
        }
        if self.judge_name.len() > self.judge_url.len() || self.judge_model.len() > self.judge_url.len() {
            return Err(Error::input("--judge-name/--judge-model", "more than --judge-url"));
        }
        let mut judges = Vec::new();
        for (i, url) in self.judge_url.iter().enumerate() {
            let name = self.judge_name.get(i).cloned().unwrap_or_else(|| if i == 0 { "judge".into() } else { format!("judge{}", i + 1) });
            check_name(&name)?;
            if judges.iter().any(|(n, _, _)| n == &name) {
                return Err(Error::input("--judge-name", format!("`{name}` given twice")));
            }
            judges.push((name, url.clone(), self.judge_model.get(i).cloned()));
        }
        let cfg = job::LabelConfig {
            rollouts: self.rollouts,
            n_per_request: self.n_per_request,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            seed: self.seed,
            thresholds: hybrid::Thresholds { upper: self.upper, lower: self.lower, max_confidence: self.max_confidence },
            adaptive_z: self.adaptive_z,
            judge_retries: self.judge_retries,
            judge_max_tokens: self.judge_max_tokens,
        };
        let run = job::RunArgs {
            input: self.input,
            records: self.records,
            out: self.out,
            db: self.db,
            policy_url: self.policy_url,
            policy_model: self.policy_model,
            judges,
            index: self.index.map(|d| (d, self.retrieve_k, self.retrieve_mode)),
            concurrency: self.concurrency,
            retry: client::RetryPolicy {
                max_retries: self.retries,
                timeout: Duration::from_secs_f64(self.timeout),
                backoff: Duration::from_secs_f64(self.backoff),
                max_backoff: Duration::from_secs(30),
            },
            max_requests: self.max_requests,
            budget: self.budget,
            price_per_mtok: self.price_per_mtok,
            adaptive: self.adaptive,
            progress: !self.quiet,
            compare_adaptive: self.compare_adaptive,
            command: crate::figures::command_line(),
        };
        Ok((run, cfg))
    }
}
