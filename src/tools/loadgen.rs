//! `medprm bench serve`: a load generator for a running server. At each concurrency level it
//! keeps that many rank requests in flight over real Med-PRM questions and solutions
//! (`data/bench-records.json`) and reports throughput, latency percentiles and the mean batch
//! size the server formed (from its `/metrics`).

use std::sync::Arc;
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

#[derive(Debug)]
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

pub async fn run(cfg: LoadConfig) -> anyhow::Result<Vec<LevelReport>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(900)).build()?;
    let ready = client.get(format!("{}/ready", cfg.url)).send().await?;
    anyhow::ensure!(ready.status().is_success(), "{}/ready answered {}", cfg.url, ready.status());
    let mut reports = Vec::new();
    for &conc in &cfg.concurrency {
        let (s0, c0) = batch_counters(&client, &cfg.url).await;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..conc.max(1) {
            let (client, next, cfg) = (client.clone(), next.clone(), cfg.clone());
            workers.push(tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= cfg.requests {
                        return out;
                    }
                    let body = rank_request(i, cfg.candidates, cfg.documents);
                    let mut req = client.post(format!("{}/v1/rank", cfg.url)).json(&body);
                    if let Some(k) = &cfg.api_key {
                        req = req.bearer_auth(k);
                    }
                    let t = Instant::now();
                    let res = req.send().await;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    out.push(match res {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let tokens = r.headers().get("x-compute-tokens").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
                            let _ = r.bytes().await;
                            (status, ms, tokens)
                        }
                        Err(_) => (0, ms, 0),
                    });
                }
            }));
        }
        let mut results = Vec::new();
        for w in workers {
            results.extend(w.await?);
        }
        let seconds = start.elapsed().as_secs_f64();
        let (s1, c1) = batch_counters(&client, &cfg.url).await;
        let mut lat: Vec<f64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
        lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let ok = lat.len();
        let tokens: usize = results.iter().filter(|r| r.0 == 200).map(|r| r.2).sum();
        reports.push(LevelReport {
            concurrency: conc,
            ok,
            rejected: results.iter().filter(|r| r.0 == 429).count(),
            failed: results.iter().filter(|r| r.0 != 200 && r.0 != 429).count(),
            seconds,
            candidates_per_s: (ok * cfg.candidates) as f64 / seconds,
            tokens_per_s: tokens as f64 / seconds,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            mean_batch: if c1 > c0 { (s1 - s0) / (c1 - c0) } else { 0.0 },
        });
    }
    Ok(reports)
}

pub fn print(reports: &[LevelReport], cfg: &LoadConfig) {
    println!(
        "{} rank requests of {} candidates per level{}",
        cfg.requests,
        cfg.candidates,
        if cfg.documents { ", 2 documents each" } else { "" }
    );
    println!("{:>11} {:>5} {:>5} {:>6} {:>9} {:>13} {:>10} {:>10} {:>10} {:>10}", "concurrency", "ok", "429", "failed", "seconds", "candidates/s", "tokens/s", "p50 ms", "p99 ms", "mean batch");
    for r in reports {
        println!(
            "{:>11} {:>5} {:>5} {:>6} {:>9.1} {:>13.2} {:>10.0} {:>10.0} {:>10.0} {:>10.2}",
            r.concurrency, r.ok, r.rejected, r.failed, r.seconds, r.candidates_per_s, r.tokens_per_s, r.p50_ms, r.p99_ms, r.mean_batch
        );
    }
}
