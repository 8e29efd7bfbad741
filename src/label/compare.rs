//! `--compare-adaptive FILE`: after the fixed-K run, labels the same solutions again in adaptive
//! mode from the same store and writes what each mode spent and how far their labels agree.
//! Both modes draw the same rollout batches (same requests, same seeds), so adaptive labels come
//! from a subset of the fixed run's rollouts and the adaptive pass sends no rollout request the
//! fixed run did not; "spent" counts the rollouts, requests and policy tokens each mode's labels
//! rest on (stored answers keep their token usage).

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::progress::Bar;

use super::evidence::Evidence;
use super::input::Item;
use super::job::{label_item, Ctx, Outcome};
use super::rollout::StepMc;

#[derive(Default)]
struct Spent {
    rollouts: usize,
    requests: usize,
    tokens: u64,
}

impl Spent {
    fn add(&mut self, mc: &[StepMc]) {
        for m in mc {
            self.rollouts += m.rollouts;
            self.requests += m.requests;
            self.tokens += m.tokens;
        }
    }

    fn json(&self) -> Value {
        json!({"rollouts": self.rollouts, "requests": self.requests, "policy_tokens": self.tokens})
    }
}

fn labels(rec: &Value, key: &str) -> Vec<Value> {
    rec[key].as_array().cloned().unwrap_or_default()
}

/// Runs both modes on `items` and writes the figures to `path`; returns a one-line summary.
pub async fn compare(ctx: &Arc<Ctx>, items: &[Arc<Item>], evidence: &std::collections::HashMap<usize, Arc<Vec<Evidence>>>, path: &Path, command: &str) -> Result<String> {
    if let Ok(mut b) = ctx.bar.lock() {
        *b = Bar::hidden(0);
    }
    let (mut fixed, mut adaptive) = (Spent::default(), Spent::default());
    let (mut steps, mut hard_eq, mut soft_eq, mut hybrid_eq) = (0usize, 0usize, 0usize, 0usize);
    let mut soft_abs = 0.0f64;
    let mut sources: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut compared = 0usize;
    let mut wrong_answer = 0usize;
    for it in items {
        let Some(ev) = evidence.get(&it.question.index) else { continue };
        let (f, fmc) = label_item(ctx.clone(), it.clone(), ev.clone(), false).await;
        let (a, amc) = label_item(ctx.clone(), it.clone(), ev.clone(), true).await;
        let (Outcome::Done(f), Outcome::Done(a)) = (f, a) else { continue };
        compared += 1;
        wrong_answer += usize::from(!it.is_correct());
        fixed.add(&fmc);
        adaptive.add(&amc);
        for m in &amc {
            *sources.entry(m.source).or_default() += 1;
        }
        let (fh, ah) = (labels(&f, "prm_hard_label"), labels(&a, "prm_hard_label"));
        let (fs, as_) = (labels(&f, "prm_soft_label"), labels(&a, "prm_soft_label"));
        let (fy, ay) = (labels(&f, "hybrid_label"), labels(&a, "hybrid_label"));
        for i in 0..fh.len() {
            steps += 1;
            hard_eq += usize::from(fh[i] == ah[i]);
            let (x, y) = (fs[i].as_f64().unwrap_or(0.0), as_[i].as_f64().unwrap_or(0.0));
            soft_eq += usize::from(x == y);
            soft_abs += (x - y).abs();
            hybrid_eq += usize::from(fy[i] == ay[i]);
        }
    }
    if compared == 0 {
        return Err(Error::input("--compare-adaptive", "no solution could be labelled in both modes"));
    }
    let frac = |n: usize| n as f64 / steps.max(1) as f64;
    let report = json!({
        "command": command,
        "solutions": compared,
        "solutions_with_wrong_answer": wrong_answer,
        "steps": steps,
        "rollouts_per_step_max": ctx.cfg.rollouts,
        "n_per_request": ctx.cfg.n_per_request,
        "adaptive_z": ctx.cfg.adaptive_z,
        "thresholds": ctx.cfg.thresholds,
        "fixed": fixed.json(),
        "adaptive": adaptive.json(),
        "adaptive_over_fixed": {
            "rollouts": adaptive.rollouts as f64 / fixed.rollouts.max(1) as f64,
            "requests": adaptive.requests as f64 / fixed.requests.max(1) as f64,
            "policy_tokens": adaptive.tokens as f64 / fixed.tokens.max(1) as f64,
        },
        "agreement": {
            "hard": frac(hard_eq),
            "soft_exact": frac(soft_eq),
            "soft_mean_abs_diff": soft_abs / steps.max(1) as f64,
            "hybrid": frac(hybrid_eq),
        },
        "adaptive_step_sources": sources,
    });
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::bad_file(dir, e))?;
    }
    std::fs::write(path, format!("{text}\n")).map_err(|e| Error::bad_file(path, e))?;
    Ok(format!(
        "{compared} solutions, {steps} steps: adaptive used {} of {} rollouts ({:.0}%), {} of {} policy tokens; agreement hard {:.1}%, hybrid {:.1}%, soft mean |diff| {:.3}; written to {}",
        adaptive.rollouts,
        fixed.rollouts,
        100.0 * adaptive.rollouts as f64 / fixed.rollouts.max(1) as f64,
        adaptive.tokens,
        fixed.tokens,
        100.0 * frac(hard_eq),
        100.0 * frac(hybrid_eq),
        soft_abs / steps.max(1) as f64,
        path.display()
    ))
}
