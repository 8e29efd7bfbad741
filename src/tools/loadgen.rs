//! `medprm bench serve`: a load generator for a running server. At each concurrency level it
//! keeps that many rank requests in flight over real Med-PRM questions and solutions
//! (`data/bench-records.json`) and reports throughput, latency percentiles and the mean batch
//! size the server formed (from its `/metrics`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const RECORDS: &str = include_str!("../../data/bench-records.json");

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: String,
    pub concurrency: Vec<usize>,
    pub requests: usize,
    pub candidates: usize,
    /// Supply the two bench documents with every request.
    pub documents: bool,
    pub api_key: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    pub ok: usize,
    pub rejected: usize,
    pub failed: usize,
    pub seconds: f64,
    pub candidates_per_s: f64,
    pub tokens_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_batch: f64,
}

/// Rank request number `i`: a question and `n` candidate solutions drawn from the records.
pub fn rank_request(i: usize, n: usize, documents: bool) -> Value {
    let data: Value = serde_json::from_str(RECORDS).expect("bench records");
    let recs = data["records"].as_array().expect("records");
    let q = &recs[i % recs.len()];
    let cands: Vec<Value> = (0..n).map(|j| json!({"steps": recs[(i + j) % recs.len()]["steps"]})).collect();
    let mut body = json!({"question": q["question"], "candidates": cands});
    if documents {
        body["documents"] = data["documents"].clone();
    } else {
        body["documents"] = json!([]);
    }
    body
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn batch_counters(c: &reqwest::Client, url: &str) -> (f64, f64) {
    let Ok(r) = c.get(format!("{url}/metrics")).send().await else { return (0.0, 0.0) };
    let text = r.text().await.unwrap_or_default();
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("medprm_batch_size_sum"), get("medprm_batch_size_count"))
}

/// One finished request: HTTP status (0: no answer), latency in ms, compute tokens.
type Sample = (u16, f64, usize);

impl LevelReport {
    fn from_samples(conc: usize, samples: &[Sample], seconds: f64, mean_batch: f64, candidates: usize) -> LevelReport {
        let mut lat: Vec<f64> = samples.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
        lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let ok = lat.len();
        let tokens: usize = samples.iter().filter(|r| r.0 == 200).map(|r| r.2).sum();
        LevelReport {
            concurrency: conc,
            ok,
            rejected: samples.iter().filter(|r| r.0 == 429).count(),
            failed: samples.iter().filter(|r| r.0 != 200 && r.0 != 429).count(),
            seconds,
            candidates_per_s: (ok * candidates) as f64 / seconds,
            tokens_per_s: tokens as f64 / seconds,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            mean_batch,
        }
    }
}

/// How a run ended.
pub enum Ended {
    /// Every level ran.
    Complete,
    /// SIGINT or SIGTERM during a level: the reports hold the finished levels and, last, the
    /// interrupted one over the requests that had finished.
    Interrupted,
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The server's `/info` (which model answered the benchmark).
pub async fn server_info(cfg: &LoadConfig) -> anyhow::Result<Value> {
    let mut req = reqwest::Client::new().get(format!("{}/info", cfg.url));
    if let Some(key) = &cfg.api_key {
        req = req.bearer_auth(key);
    }
    Ok(req.send().await?.error_for_status()?.json().await?)
}

/// Runs every level, calling `on_level` as each one ends (and for the interrupted one, whose
/// report covers the requests that had finished when the signal came).
pub async fn run(cfg: LoadConfig, mut on_level: impl FnMut(&LevelReport, bool)) -> anyhow::Result<(Vec<LevelReport>, Ended)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(900)).build()?;
    let ready = client.get(format!("{}/ready", cfg.url)).send().await?;
    anyhow::ensure!(ready.status().is_success(), "{}/ready answered {}", cfg.url, ready.status());
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut reports = Vec::new();
    for &conc in &cfg.concurrency {
        let (s0, c0) = batch_counters(&client, &cfg.url).await;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
        let bar = Arc::new(Mutex::new(crate::progress::Bar::new(&format!("concurrency {conc}"), cfg.requests as u64, "requests")));
        let start = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..conc.max(1) {
            let (client, next, cfg, samples, bar) = (client.clone(), next.clone(), cfg.clone(), samples.clone(), bar.clone());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= cfg.requests {
                        return;
                    }
                    let body = rank_request(i, cfg.candidates, cfg.documents);
                    let mut req = client.post(format!("{}/v1/rank", cfg.url)).json(&body);
                    if let Some(k) = &cfg.api_key {
                        req = req.bearer_auth(k);
                    }
                    let t = Instant::now();
                    let res = req.send().await;
                    let sample = match res {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let tokens = r.headers().get("x-compute-tokens").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
                            let _ = r.bytes().await;
                            (status, t.elapsed().as_secs_f64() * 1e3, tokens)
                        }
                        Err(_) => (0, t.elapsed().as_secs_f64() * 1e3, 0),
                    };
                    samples.lock().expect("samples").push(sample);
                    bar.lock().expect("bar").inc(1);
                }
            });
        }
        let interrupted = tokio::select! {
            res = async { while let Some(r) = workers.join_next().await { r?; } Ok::<_, tokio::task::JoinError>(()) } => { res?; false }
            _ = &mut stop => true,
        };
        if interrupted {
            workers.abort_all();
        }
        let seconds = start.elapsed().as_secs_f64();
        bar.lock().expect("bar").finish();
        let (s1, c1) = batch_counters(&client, &cfg.url).await;
        let mean_batch = if c1 > c0 { (s1 - s0) / (c1 - c0) } else { 0.0 };
        let samples = samples.lock().expect("samples").clone();
        let report = LevelReport::from_samples(conc, &samples, seconds, mean_batch, cfg.candidates);
        on_level(&report, interrupted);
        reports.push(report);
        if interrupted {
            return Ok((reports, Ended::Interrupted));
        }
    }
    Ok((reports, Ended::Complete))
}

/// The header of the table [`row`] writes under.
pub fn header(cfg: &LoadConfig) -> String {
    format!(
        "{} rank requests of {} candidates per level{}\n{:>11} {:>5} {:>5} {:>6} {:>9} {:>13} {:>10} {:>10} {:>10} {:>10}",
        cfg.requests,
        cfg.candidates,
        if cfg.documents { ", 2 documents each" } else { "" },
        "concurrency", "ok", "429", "failed", "seconds", "candidates/s", "tokens/s", "p50 ms", "p99 ms", "mean batch"
    )
}

/// One level's line; an interrupted level is marked.
pub fn row(r: &LevelReport, interrupted: bool) -> String {
    format!(
        "{:>11} {:>5} {:>5} {:>6} {:>9.1} {:>13.2} {:>10.0} {:>10.0} {:>10.0} {:>10.2}{}",
        r.concurrency, r.ok, r.rejected, r.failed, r.seconds, r.candidates_per_s, r.tokens_per_s, r.p50_ms, r.p99_ms, r.mean_batch,
        if interrupted { "  (interrupted: requests finished so far)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_level_counts_only_finished_requests() {
        let samples = [(200, 100.0, 500), (200, 300.0, 700), (429, 1.0, 0), (0, 5.0, 0)];
        let r = LevelReport::from_samples(4, &samples, 2.0, 4.0, 3);
        assert_eq!((r.ok, r.rejected, r.failed), (2, 1, 1));
        assert_eq!(r.candidates_per_s, 3.0);
        assert_eq!(r.tokens_per_s, 600.0);
        assert_eq!((r.p50_ms, r.p99_ms), (300.0, 300.0));
        let line = row(&r, true);
        assert!(line.trim_start().starts_with("4     2     1      1"), "{line}");
        assert!(line.ends_with("(interrupted: requests finished so far)"));
        assert!(!row(&r, false).contains("interrupted"));
        // Nothing finished yet: zeros, not NaN.
        let empty = LevelReport::from_samples(1, &[], 1.0, 0.0, 4);
        assert_eq!((empty.ok, empty.p50_ms, empty.candidates_per_s), (0, 0.0, 0.0));
    }
}
