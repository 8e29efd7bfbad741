//! Monte Carlo estimation: continuations of the policy from each step prefix, graded by the final
//! answer (`medprm score`'s extraction rule) against `correct_answer`.
//!
//! * The prompt asks for a step-by-step solution ending "The answer is X."; the solution so far
//!   follows it verbatim (steps without their tags, one per line), so a completion continues it.
//!   `/v1/completions` takes it as a raw prompt; where the server has no such route (404/405) or
//!   the record has images, `/v1/chat/completions` gets the instructions and question as the user
//!   turn and the solution so far as an assistant prefill.
//! * A step's rollouts are drawn in batches of `--n-per-request` (`n`), batch `j` with seed
//!   `--seed + 1000·step + j`; each finished batch is stored under the hash of its request, so a
//!   restarted run takes it from the store. Both modes draw the same batches in the same order:
//!   adaptive labels are computed from a prefix of the fixed-K rollouts.
//! * The last step is not rolled out: its prefix is the whole solution, so its label is the
//!   solution's own correctness (`orm_label`), as K rollouts would all find.
//! * Adaptive mode stops a step once the Wilson interval of its fraction correct lies wholly above
//!   `upper`, wholly below `lower`, or wholly between them (its hybrid class cannot change), and
//!   for a solution whose final answer is wrong, finds the first step whose prefix no rollout
//!   completes correctly by bisection (OmegaPRM) and infers the steps it skipped (see
//!   [`bisect`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use super::client::{choice_texts, CallError};
use super::input::Item;
use super::job::Ctx;
use super::store::{request_key, Cached};

const INSTRUCTIONS: &str = "Solve the following multiple-choice medical question. Think step by step: start every step \
with \"Step N:\" on a new line, and end with \"The answer is X.\" where X is the letter of the correct option.";

/// A step's Monte Carlo estimate.
#[derive(Debug, Clone, Serialize)]
pub struct StepMc {
    pub rollouts: usize,
    pub correct: usize,
    pub answers: Vec<Option<String>>,
    /// `rollouts`, `final_answer`, `inferred_before_first_error`, `inferred_after_first_error`.
    pub source: &'static str,
    pub soft: f64,
    pub hard: u8,
    /// Requests (batches) and policy tokens (prompt + completion) this estimate used, stored or new.
    #[serde(skip)]
    pub requests: usize,
    #[serde(skip)]
    pub tokens: u64,
}

impl StepMc {
    fn from_rollouts(answers: Vec<Option<String>>, correct_answer: &str, requests: usize, tokens: u64) -> StepMc {
        let correct = answers.iter().filter(|a| a.as_deref() == Some(correct_answer)).count();
        let n = answers.len();
        StepMc {
            rollouts: n,
            correct,
            answers,
            source: "rollouts",
            soft: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
            hard: u8::from(correct > 0),
            requests,
            tokens,
        }
    }

    fn fixed(source: &'static str, soft: f64, hard: u8) -> StepMc {
        StepMc { rollouts: 0, correct: 0, answers: vec![], source, soft, hard, requests: 0, tokens: 0 }
    }
}

/// The solution up to and including step `step` (0-based), as the policy continues it.
pub fn prefix(item: &Item, step: usize) -> String {
    let mut s = String::new();
    if let Some(p) = &item.preamble {
        s.push_str(p);
        s.push('\n');
    }
    for st in &item.steps[..=step] {
        s.push_str(st);
        s.push('\n');
    }
    s
}

fn question_text(item: &Item) -> String {
    let q = &item.question;
    if q.options.trim().is_empty() {
        q.question.trim().to_string()
    } else {
        format!("{}\n{}", q.question.trim(), q.options.trim_end())
    }
}

/// The raw completion prompt for a step prefix.
pub fn completion_prompt(item: &Item, step: usize) -> String {
    format!("{INSTRUCTIONS}\n\nQuestion: {}\n\nSolution:\n{}", question_text(item), prefix(item, step))
}

/// The chat messages for a step prefix: instructions and question (with images as data URLs),
/// then the solution so far as the assistant's turn to continue.
pub fn chat_messages(item: &Item, step: usize) -> Value {
    let text = format!("{INSTRUCTIONS}\n\nQuestion: {}", question_text(item));
    json!([{"role": "user", "content": user_content(item, text)}, {"role": "assistant", "content": prefix(item, step)}])
}

/// A user turn's content: the text alone, or the text and the record's images as OpenAI
/// `image_url` parts (data URLs).
pub fn user_content(item: &Item, text: String) -> Value {
    use base64::Engine as _;
    if item.question.images.is_empty() {
        return json!(text);
    }
    let mut parts = vec![json!({"type": "text", "text": text})];
    for im in &item.question.images {
        let url = format!("data:{};base64,{}", im.media_type, base64::engine::general_purpose::STANDARD.encode(im.bytes.as_slice()));
        parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
    }
    json!(parts)
}

/// One batch of rollouts: the continuations' texts (from the store when it has them).
async fn batch(ctx: &Ctx, item: &Item, step: usize, j: usize, n: usize) -> Result<(Vec<String>, u64), CallError> {
    let cfg = &ctx.cfg;
    let seed = cfg.seed.wrapping_add(1000 * step as u64 + j as u64);
    let body = json!({
        "model": ctx.policy.model, "prompt": completion_prompt(item, step), "n": n, "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature, "seed": seed, "stop": ["\nQuestion:"],
    });
    let chat = || {
        let mut b = body.clone();
        let o = b.as_object_mut().expect("an object");
        o.remove("prompt");
        o.insert("messages".into(), chat_messages(item, step));
        b
    };
    // The images are in the chat body only: a record with images is keyed by it.
    let with_images = !item.question.images.is_empty();
    let key = request_key("rollout", &ctx.policy.base, &if with_images { chat() } else { body.clone() });
    if let Some(c) = ctx.store.get(&key).map_err(|e| CallError::Store(format!("label store: {e}")))? {
        if let Ok(texts) = serde_json::from_value::<Vec<String>>(c.response["texts"].clone()) {
            ctx.policy.stats.cached.fetch_add(1, Ordering::SeqCst);
            return Ok((texts, c.prompt_tokens + c.completion_tokens));
        }
    }
    let check = |v: &Value| choice_texts(v);
    // The body actually sent: `n` 1 once the endpoint refused `n` > 1 (the key stays the batch's).
    let sent = |b: Value| {
        let mut b = b;
        if ctx.policy.single_choice() {
            b["n"] = json!(1);
        }
        b
    };
    let send = |b: Value| async move {
        let chat = ctx.policy.chat_only() || with_images;
        let path = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        let r = ctx.policy.post(path, &b, check).await;
        (r, if chat { "chat" } else { "completions" })
    };
    let mut attempt = 0;
    let (texts, answer, endpoint) = loop {
        attempt += 1;
        let b = sent(if ctx.policy.chat_only() || with_images { chat() } else { body.clone() });
        let asked = b["n"].as_u64().unwrap_or(1);
        match send(b).await {
            (Ok((t, a)), ep) => break (t, a, ep),
            (Err(CallError::NotFound { .. }), "completions") if attempt < 4 => ctx.policy.mark_chat_only(),
            (Err(CallError::Refused { status: 400 | 422, .. }), _) if asked > 1 && attempt < 4 => ctx.policy.mark_single_choice(),
            (Err(e), _) => return Err(e),
        }
    };
    let (p, c) = super::client::usage_of(&answer);
    let cached = Cached { response: json!({"texts": texts, "endpoint": endpoint}), prompt_tokens: p, completion_tokens: c };
    ctx.store.put(&key, "rollout", &item.item_id, Some(step), &cached).map_err(|e| CallError::Store(format!("label store: {e}")))?;
    Ok((texts, p + c))
}

/// Wilson score interval of `k` successes in `n` at normal quantile `z`.
pub fn wilson(k: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let d = 1.0 + z2 / n;
    (((centre - half) / d).max(0.0), ((centre + half) / d).min(1.0))
}

/// Whether the hybrid class of a fraction (above `upper`, below `lower`, between) is settled.
pub fn settled(k: usize, n: usize, z: f64, lower: f64, upper: f64) -> bool {
    let (lo, hi) = wilson(k, n, z);
    lo > upper || hi < lower || (lo >= lower && hi <= upper)
}

/// Rollouts from the prefix ending at `step`: `K` of them, or in adaptive mode until settled.
pub async fn sample_step(ctx: &Ctx, item: &Item, step: usize, adaptive: bool) -> Result<StepMc, CallError> {
    let cfg = &ctx.cfg;
    let full = prefix(item, step);
    let mut answers = Vec::new();
    let (mut requests, mut tokens) = (0usize, 0u64);
    let mut j = 0;
    while answers.len() < cfg.rollouts {
        let n = cfg.n_per_request.min(cfg.rollouts - answers.len());
        let (texts, t) = batch(ctx, item, step, j, n).await?;
        j += 1;
        requests += 1;
        tokens += t;
        let take = texts.len().min(cfg.rollouts - answers.len());
        for cont in &texts[..take] {
            answers.push(crate::aggregate::extract_answer(&format!("{full} {cont}")));
        }
        ctx.rolled(take as u64, t);
        if adaptive {
            let k = answers.iter().filter(|a| a.as_deref() == Some(item.question.correct_answer.as_str())).count();
            if settled(k, answers.len(), cfg.adaptive_z, cfg.thresholds.lower, cfg.thresholds.upper) {
                break;
            }
        }
    }
    Ok(StepMc::from_rollouts(answers, &item.question.correct_answer, requests, tokens))
}

/// The Monte Carlo estimates of every step of a solution.
pub async fn estimate(ctx: Arc<Ctx>, item: Arc<Item>, adaptive: bool) -> Result<(Vec<StepMc>, Option<usize>), CallError> {
    let n = item.steps.len();
    let last = StepMc::fixed("final_answer", if item.is_correct() { 1.0 } else { 0.0 }, u8::from(item.is_correct()));
    if adaptive && !item.is_correct() && n > 1 {
        return bisect(&ctx, &item, last).await.map(|(v, f)| (v, Some(f)));
    }
    let mut set = tokio::task::JoinSet::new();
    for step in 0..n - 1 {
        let (ctx, item) = (ctx.clone(), item.clone());
        set.spawn(async move { (step, sample_step(&ctx, &item, step, adaptive).await) });
    }
    let mut out: Vec<Option<StepMc>> = vec![None; n];
    out[n - 1] = Some(last);
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        let (step, r) = r.map_err(|e| CallError::Store(format!("rollout task: {e}")))?;
        match r {
            Ok(m) => out[step] = Some(m),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((out.into_iter().map(|m| m.expect("every step estimated")).collect(), None))
}

/// OmegaPRM's binary search for the first error of a solution whose final answer is wrong: the
/// first step whose prefix no rollout completes correctly (`hard` 0), assuming that once a
/// prefix holds an error, longer prefixes hold it too. Rolled-out steps keep their estimates;
/// the others are inferred under the same assumption:
/// * before the first error: `hard` 1 and the `soft` value of the nearest rolled-out later step
///   before the first error (a prefix is taken to be at least as likely to succeed as a longer
///   one on the same path, so this is a lower bound); that step always exists, since the search
///   rolled out the step just before the first error;
/// * after the first error: `hard` 0, `soft` 0.
///
/// Their provenance says `inferred_*` with 0 rollouts.
async fn bisect(ctx: &Ctx, item: &Item, last: StepMc) -> Result<(Vec<StepMc>, usize), CallError> {
    let n = item.steps.len();
    let mut est: Vec<Option<StepMc>> = vec![None; n];
    est[n - 1] = Some(last);
    let (mut lo, mut hi) = (0usize, n - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let m = sample_step(ctx, item, mid, true).await?;
        let ok = m.hard == 1;
        est[mid] = Some(m);
        if ok {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let first = lo;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match est[i].take() {
            Some(m) => m,
            None if i < first => {
                let soft = (i + 1..first).find_map(|j| est[j].as_ref().map(|m| m.soft)).unwrap_or(1.0);
                StepMc::fixed("inferred_before_first_error", soft, 1)
            }
            None => StepMc::fixed("inferred_after_first_error", 0.0, 0),
        });
    }
    Ok((out, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_intervals_settle_unanimous_batches() {
        let (lo, hi) = wilson(8, 8, 1.645);
        assert!(lo > 0.7 && hi == 1.0, "{lo} {hi}");
        assert!(!settled(4, 4, 1.645, 0.3, 0.7));
        assert!(settled(8, 8, 1.645, 0.3, 0.7));
        assert!(settled(0, 8, 1.645, 0.3, 0.7));
        assert!(!settled(4, 8, 1.645, 0.3, 0.7));
        // A wide sample wholly in the middle band is settled too.
        assert!(settled(100, 200, 1.645, 0.3, 0.7));
        assert_eq!(wilson(0, 0, 1.645), (0.0, 1.0));
    }
}
