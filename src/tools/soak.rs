//! `medprm bench soak`: starts `medprm serve` as a child process, sends it mixed traffic for a
//! while (scores, ranks with documents and with retrieval, retrieval alone, malformed requests,
//! clients that give up mid-request, bursts beyond the concurrency cap that get 429), samples the
//! server's resident memory and open descriptors from `/proc/PID` every few seconds, writes them
//! to a CSV and an SVG plot, stops the server with SIGTERM and judges the run: memory flat (the
//! last third's median RSS after warm-up within a bound of the first third's), descriptors back
//! to their baseline once the clients have gone, no 5xx, no unexpected transport error, exit 0.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const RECORDS: &str = include_str!("../../data/bench-records.json");

#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long the traffic runs.
    pub duration: Duration,
    /// Where the CSV, the plot and the summary go.
    pub out: PathBuf,
    /// Seconds between two samples of `/proc/PID`.
    pub sample_every: Duration,
    /// Clients looping mixed requests.
    pub clients: usize,
    /// Requests sent at once every `burst_every` to go beyond the concurrency cap.
    pub burst: usize,
    pub burst_every: Duration,
    /// Allowed growth of the last third's median RSS over the first third's (0.10 = 10%).
    pub rss_bound: f64,
    /// The `medprm` binary to serve with (default: this one).
    pub server_bin: PathBuf,
    /// Arguments after `serve` (model, index, limits); host and port are added.
    pub serve_args: Vec<String>,
}

/// What a request was meant to get, so that the judgment knows which answers are right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Score,
    RankDocuments,
    RankRetrieve,
    ScoreRetrieve,
    Retrieve,
    /// Malformed JSON or a rule the validator enforces: must get 4xx.
    Bad,
    /// The client gives up before the answer (timeout) or sends half a body and closes.
    Abort,
    /// Part of a burst beyond the cap: 200 or 429.
    Burst,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Score => "score",
            Kind::RankDocuments => "rank+documents",
            Kind::RankRetrieve => "rank+retrieve",
            Kind::ScoreRetrieve => "score+retrieve",
            Kind::Retrieve => "retrieve",
            Kind::Bad => "bad request",
            Kind::Abort => "client abort",
            Kind::Burst => "burst",
        }
    }
}

/// The mix one client cycles through: 20 slots.
pub fn kind_of(i: usize) -> Kind {
    match i % 20 {
        0..=4 => Kind::Score,
        5..=8 => Kind::RankDocuments,
        9..=10 => Kind::RankRetrieve,
        11..=12 => Kind::ScoreRetrieve,
        13..=15 => Kind::Retrieve,
        16..=17 => Kind::Bad,
        _ => Kind::Abort,
    }
}

/// One sample of the server process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kb: u64,
    pub fds: usize,
    pub threads: usize,
    pub requests: u64,
}

/// Resident set size (kB) and threads of a process, from `/proc/PID/status`.
fn proc_status(pid: u32) -> (u64, usize) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:") as usize)
}

/// Open descriptors of a process.
fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The memory part of the judgment.
#[derive(Debug, Clone, PartialEq)]
pub struct RssJudgment {
    pub warmup_s: f64,
    pub first_median_mb: f64,
    pub last_median_mb: f64,
    pub growth: f64,
    pub flat: bool,
}

/// Drops the samples of the warm-up (the first 10% of the run), splits the rest in three by time
/// and compares the median RSS of the last third with the first's. `None` with fewer than 3
/// samples after warm-up.
pub fn judge_rss(samples: &[Sample], run_s: f64, bound: f64) -> Option<RssJudgment> {
    let warmup_s = run_s * 0.1;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s && s.t_s <= run_s).collect();
    if after.len() < 3 {
        return None;
    }
    let span = run_s - warmup_s;
    let third = |k: f64| -> Vec<f64> {
        after
            .iter()
            .filter(|s| {
                let x = (s.t_s - warmup_s) / span;
                x >= k / 3.0 && (x < (k + 1.0) / 3.0 || (k == 2.0 && x <= 1.0))
            })
            .map(|s| s.rss_kb as f64 / 1024.0)
            .collect()
    };
    let (mut first, mut last) = (third(0.0), third(2.0));
    if first.is_empty() || last.is_empty() {
        return None;
    }
    let (a, b) = (median(&mut first), median(&mut last));
    let growth = b / a - 1.0;
    Some(RssJudgment { warmup_s, first_median_mb: a, last_median_mb: b, growth, flat: growth <= bound })
}

/// Answers by kind and status (0: no answer; for `Abort` the expected outcome).
type Tally = BTreeMap<(Kind, u16), u64>;

fn data() -> &'static Value {
    static DATA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DATA.get_or_init(|| serde_json::from_str(RECORDS).expect("bench records"))
}

fn record(i: usize) -> &'static Value {
    let recs = data()["records"].as_array().expect("records");
    &recs[i % recs.len()]
}

/// The request of slot `i`: (path, JSON body or raw text).
pub fn request(i: usize, kind: Kind) -> (&'static str, Result<Value, &'static str>) {
    let r = record(i);
    let docs = data()["documents"].clone();
    let cands = |n: usize| -> Value { (0..n).map(|j| json!({"steps": record(i + j)["steps"]})).collect() };
    match kind {
        Kind::Score => ("/v1/score", Ok(json!({"question": r["question"], "steps": r["steps"], "documents": docs}))),
        Kind::ScoreRetrieve => ("/v1/score", Ok(json!({"question": r["question"], "steps": r["steps"], "retrieve": {"k": 3}}))),
        Kind::RankDocuments => ("/v1/rank", Ok(json!({"question": r["question"], "candidates": cands(2), "documents": docs}))),
        Kind::RankRetrieve => ("/v1/rank", Ok(json!({"question": r["question"], "candidates": cands(3), "retrieve": {"k": 2}}))),
        Kind::Retrieve => ("/v1/retrieve", Ok(json!({"query": r["question"], "k": 5}))),
        Kind::Bad => match i % 4 {
            0 => ("/v1/score", Err("{\"question\": \"unterminated")),
            1 => ("/v1/score", Ok(json!({"question": "", "steps": ["a"]}))),
            2 => ("/v1/rank", Ok(json!({"question": r["question"], "candidates": []}))),
            _ => ("/v1/retrieve", Ok(json!({"query": "x", "k": 0}))),
        },
        Kind::Abort | Kind::Burst => ("/v1/rank", Ok(json!({"question": r["question"], "candidates": cands(4), "documents": docs}))),
    }
}

async fn send(c: &reqwest::Client, base: &str, i: usize, kind: Kind, timeout: Option<Duration>) -> u16 {
    let (path, body) = request(i, kind);
    let mut req = c.post(format!("{base}{path}")).header("content-type", "application/json");
    req = match body {
        Ok(v) => req.body(v.to_string()),
        Err(raw) => req.body(raw),
    };
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(b) if status == 200 && serde_json::from_slice::<Value>(&b).is_err() => 1, // 200 with a broken body
                Ok(_) => status,
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    }
}

/// Half a request body on a raw connection, then close.
async fn half_body(addr: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return false };
    let head = "POST /v1/score HTTP/1.1\r\nHost: medprm\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"question\": \"half";
    s.write_all(head.as_bytes()).await.is_ok()
}

fn count(t: &Mutex<Tally>, kind: Kind, status: u16) {
    *t.lock().expect("tally").entry((kind, status)).or_default() += 1;
}

/// The verdict and its figures.
#[derive(Debug)]
pub struct SoakReport {
    pub run_s: f64,
    pub tally: Vec<(String, u16, u64)>,
    pub requests: u64,
    pub unexpected: Vec<String>,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
    pub rss_max_mb: f64,
    pub rss: Option<RssJudgment>,
    pub fds_baseline: usize,
    pub fds_max: usize,
    pub fds_end: usize,
    pub exit_code: Option<i32>,
    pub exit_s: f64,
    pub pass: bool,
}

/// Is `status` a right answer to a request of `kind`?
fn expected(kind: Kind, status: u16) -> bool {
    match kind {
        Kind::Score | Kind::RankDocuments | Kind::RankRetrieve | Kind::ScoreRetrieve | Kind::Retrieve => status == 200 || status == 429,
        Kind::Bad => (400..500).contains(&status),
        // A client that gave up (0) or was answered before its timeout.
        Kind::Abort => status == 0 || status == 200 || status == 429,
        Kind::Burst => status == 200 || status == 429,
    }
}

pub fn run(cfg: &SoakConfig, mut log: impl FnMut(&str)) -> anyhow::Result<SoakReport> {
    std::fs::create_dir_all(&cfg.out)?;
    let mut cmd = Command::new(&cfg.server_bin);
    if std::env::var_os("RUST_LOG").is_none() {
        // Warnings and errors only: an access line per request would be most of the output.
        cmd.env("RUST_LOG", "warn");
    }
    let mut child = cmd
        .arg("serve")
        .args(&cfg.serve_args)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("spawn {} serve: {e}", cfg.server_bin.display()))?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
    let base = line.trim().strip_prefix("medprm listening on ").ok_or_else(|| anyhow::anyhow!("unexpected first line: {line}"))?.to_string();
    let addr = base.trim_start_matches("http://").to_string();
    log(&format!("soak: server pid {pid} at {base}; {} of traffic, {} clients", crate::progress::fmt_secs(cfg.duration.as_secs_f64()), cfg.clients));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = rt.block_on(drive(cfg, pid, &base, &addr, &mut log));
    // SIGTERM and wait, whatever happened.
    let term = Instant::now();
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let deadline = term + Duration::from_secs(120);
    let code = loop {
        if let Some(st) = child.try_wait()? {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exit_s = term.elapsed().as_secs_f64();
    let (samples, tally, run_s, fds_baseline, fds_end) = result?;
    let mut unexpected = Vec::new();
    for (&(kind, status), &n) in &tally {
        if !expected(kind, status) {
            unexpected.push(format!("{n} × {} to {}", if status == 0 { "no answer".to_string() } else { status.to_string() }, kind.name()));
        }
    }
    let mb = |s: &Sample| s.rss_kb as f64 / 1024.0;
    let rss = judge_rss(&samples, run_s, cfg.rss_bound);
    let during: Vec<&Sample> = samples.iter().filter(|s| s.t_s <= run_s).collect();
    let report = SoakReport {
        run_s,
        requests: tally.values().sum(),
        tally: tally.iter().map(|(&(k, s), &n)| (k.name().to_string(), s, n)).collect(),
        unexpected,
        rss_start_mb: samples.first().map_or(0.0, mb),
        rss_end_mb: during.last().map_or(0.0, |s| mb(s)),
        rss_max_mb: samples.iter().map(mb).fold(0.0, f64::max),
        fds_baseline,
        fds_max: samples.iter().map(|s| s.fds).max().unwrap_or(0),
        fds_end,
        exit_code: code,
        exit_s,
        pass: false,
        rss,
    };
    let pass = report.unexpected.is_empty()
        && report.rss.as_ref().is_some_and(|r| r.flat)
        && report.fds_end <= report.fds_baseline
        && report.exit_code == Some(0);
    let report = SoakReport { pass, ..report };
    write_csv(&cfg.out.join("soak.csv"), &samples)?;
    plot(&cfg.out.join("soak.svg"), &samples, &report)?;
    std::fs::write(cfg.out.join("soak-summary.txt"), summary(&report, cfg.rss_bound).join("\n") + "\n")?;
    Ok(report)
}

type Driven = (Vec<Sample>, Tally, f64, usize, usize);

async fn drive(cfg: &SoakConfig, pid: u32, base: &str, addr: &str, log: &mut impl FnMut(&str)) -> anyhow::Result<Driven> {
    let c = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(r) = c.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "server not ready in 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One request of each kind (the first retrieval opens the index), then every connection closed:
    // the descriptors then held are the baseline.
    for k in [Kind::Score, Kind::RankDocuments, Kind::RankRetrieve, Kind::ScoreRetrieve, Kind::Retrieve] {
        let st = send(&c, base, 0, k, None).await;
        anyhow::ensure!(st == 200, "warm-up {} answered {st}", k.name());
    }
    drop(c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_baseline = proc_fds(pid);
    log(&format!("soak: baseline {fds_baseline} descriptors, RSS {:.0} MB", proc_status(pid).0 as f64 / 1024.0));

    let tally: Arc<Mutex<Tally>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..cfg.clients.max(1) {
        let (tally, sent, stop, base, addr) = (tally.clone(), sent.clone(), stop.clone(), base.to_string(), addr.to_string());
        tasks.spawn(async move {
            let c = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().expect("client");
            let mut i = w * 7;
            while !stop.load(Ordering::Relaxed) {
                let kind = kind_of(i);
                let status = if kind == Kind::Abort {
                    if i % 2 == 0 {
                        // Gives up 30 ms in: usually while queued or scoring.
                        send(&c, &base, i, kind, Some(Duration::from_millis(30))).await
                    } else if half_body(&addr).await {
                        0
                    } else {
                        1
                    }
                } else {
                    send(&c, &base, i, kind, None).await
                };
                count(&tally, kind, status);
                sent.fetch_add(1, Ordering::Relaxed);
                if status == 429 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                i += 1;
            }
        });
    }
    {
        let (tally, sent, stop, base) = (tally.clone(), sent.clone(), stop.clone(), base.to_string());
        let (burst, every) = (cfg.burst, cfg.burst_every);
        tasks.spawn(async move {
            let c = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().expect("client");
            let mut round = 0;
            loop {
                let t = Instant::now();
                while t.elapsed() < every {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let mut js = tokio::task::JoinSet::new();
                for j in 0..burst {
                    let (c, base) = (c.clone(), base.clone());
                    js.spawn(async move { send(&c, &base, round * burst + j, Kind::Burst, None).await });
                }
                while let Some(st) = js.join_next().await {
                    count(&tally, Kind::Burst, st.unwrap_or(0));
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                round += 1;
            }
        });
    }
    let mut samples = Vec::new();
    let mut csv_live = std::fs::File::create(cfg.out.join("soak.partial.csv"))?;
    writeln!(csv_live, "{CSV_HEADER}")?;
    let mut next_log = Instant::now();
    while start.elapsed() < cfg.duration {
        let (rss_kb, threads) = proc_status(pid);
        let s = Sample { t_s: start.elapsed().as_secs_f64(), rss_kb, fds: proc_fds(pid), threads, requests: sent.load(Ordering::Relaxed) };
        writeln!(csv_live, "{}", csv_row(&s))?;
        csv_live.flush()?;
        samples.push(s);
        if Instant::now() >= next_log {
            log(&format!("soak: {:>6.0} s  {:>7} requests  RSS {:>6.1} MB  {:>4} fds  {:>3} threads", s.t_s, s.requests, rss_kb as f64 / 1024.0, s.fds, threads));
            next_log += Duration::from_secs(60);
        }
        tokio::time::sleep(cfg.sample_every.min(cfg.duration.saturating_sub(start.elapsed()))).await;
    }
    let run_s = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    // The clients are gone (their connections closed): the server should be back to its baseline.
    let mut fds_end = proc_fds(pid);
    let settle = Instant::now();
    while fds_end > fds_baseline && settle.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        fds_end = proc_fds(pid);
    }
    let (rss_kb, threads) = proc_status(pid);
    let s = Sample { t_s: start.elapsed().as_secs_f64(), rss_kb, fds: fds_end, threads, requests: sent.load(Ordering::Relaxed) };
    writeln!(csv_live, "{}", csv_row(&s))?;
    samples.push(s);
    drop(csv_live);
    let _ = std::fs::remove_file(cfg.out.join("soak.partial.csv"));
    let tally = tally.lock().expect("tally").clone();
    Ok((samples, tally, run_s, fds_baseline, fds_end))
}

const CSV_HEADER: &str = "seconds,rss_kb,fds,threads,requests";

fn csv_row(s: &Sample) -> String {
    format!("{:.1},{},{},{},{}", s.t_s, s.rss_kb, s.fds, s.threads, s.requests)
}

fn write_csv(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let mut text = format!("{CSV_HEADER}\n");
    for s in samples {
        text += &csv_row(s);
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// Reads a CSV [`run`] wrote.
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        anyhow::ensure!(f.len() == 5, "{}:{}: 5 fields expected", path.display(), n + 1);
        out.push(Sample { t_s: f[0].parse()?, rss_kb: f[1].parse()?, fds: f[2].parse()?, threads: f[3].parse()?, requests: f[4].parse()? });
    }
    Ok(out)
}

/// RSS (MB) and descriptors over time, one panel each; the warm-up and the two medians the
/// judgment compares are drawn on the RSS panel.
pub fn plot(path: &Path, samples: &[Sample], r: &SoakReport) -> anyhow::Result<()> {
    use plotters::prelude::*;
    // plotters lays out text with a TrueType font (its `ab_glyph` feature, for `medprm eval`'s PNGs).
    crate::eval::plots::ensure_font().map_err(|e| anyhow::anyhow!("soak plot: {e}"))?;
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let title = format!(
        "medprm soak: {:.0} min, {} requests — {}",
        r.run_s / 60.0,
        r.requests,
        if r.pass { "PASS" } else { "FAIL" }
    );
    let root = root.titled(&title, ("sans-serif", 20)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(360);
    let t_max = samples.iter().map(|s| s.t_s / 60.0).fold(0.1, f64::max);
    let mb = |s: &Sample| s.rss_kb as f64 / 1024.0;
    let rss_max = samples.iter().map(mb).fold(1.0, f64::max) * 1.15;
    let mut ch = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_max, 0f64..rss_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ch.configure_mesh().x_desc("minutes").y_desc("RSS (MB)").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    ch.draw_series(LineSeries::new(samples.iter().map(|s| (s.t_s / 60.0, mb(s))), BLUE.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("RSS")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    if let Some(j) = &r.rss {
        let (w, end) = (j.warmup_s / 60.0, r.run_s / 60.0);
        let third = (end - w) / 3.0;
        ch.draw_series(std::iter::once(PathElement::new([(w, 0.0), (w, rss_max)], BLACK.mix(0.4))))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("end of warm-up")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
        ch.draw_series([
            PathElement::new([(w, j.first_median_mb), (w + third, j.first_median_mb)], RED.stroke_width(2)),
            PathElement::new([(end - third, j.last_median_mb), (end, j.last_median_mb)], RED.stroke_width(2)),
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label(format!("median of first/last third: {:.1} / {:.1} MB", j.first_median_mb, j.last_median_mb))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    }
    ch.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let fd_max = samples.iter().map(|s| s.fds).max().unwrap_or(1).max(r.fds_baseline) as f64 * 1.2 + 1.0;
    let mut ch = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_max, 0f64..fd_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ch.configure_mesh().x_desc("minutes").y_desc("open descriptors").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    ch.draw_series(LineSeries::new(samples.iter().map(|s| (s.t_s / 60.0, s.fds as f64)), GREEN.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("descriptors")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
    ch.draw_series(std::iter::once(PathElement::new([(0.0, r.fds_baseline as f64), (t_max, r.fds_baseline as f64)], BLACK.mix(0.4))))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label(format!("baseline {} (end {})", r.fds_baseline, r.fds_end))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    ch.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The `soak:` lines: answers by kind and status, memory, descriptors, exit and the verdict.
pub fn summary(r: &SoakReport, bound: f64) -> Vec<String> {
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for (_, s, n) in &r.tally {
        *by_status.entry(*s).or_default() += n;
    }
    let statuses = by_status.iter().map(|(s, n)| format!("{n} × {}", if *s == 0 { "no answer (client gave up)".into() } else { s.to_string() })).collect::<Vec<_>>().join(", ");
    let kinds = r.tally.iter().map(|(k, s, n)| format!("{k} {s}: {n}")).collect::<Vec<_>>().join("; ");
    let mut lines = vec![
        format!("soak: {:.1} min of traffic, {} requests: {statuses}", r.run_s / 60.0, r.requests),
        format!("soak: by kind and status: {kinds}"),
        format!("soak: RSS start {:.1} MB, end {:.1} MB, max {:.1} MB", r.rss_start_mb, r.rss_end_mb, r.rss_max_mb),
    ];
    match &r.rss {
        Some(j) => lines.push(format!(
            "soak: RSS after {:.0} s of warm-up: median first third {:.1} MB, last third {:.1} MB ({:+.1}%, bound +{:.0}%): {}",
            j.warmup_s, j.first_median_mb, j.last_median_mb, j.growth * 100.0, bound * 100.0, if j.flat { "flat" } else { "GROWING" }
        )),
        None => lines.push("soak: too few samples after warm-up to judge memory".into()),
    }
    lines.push(format!("soak: descriptors baseline {}, max {}, end {} ({})", r.fds_baseline, r.fds_max, r.fds_end, if r.fds_end <= r.fds_baseline { "back to baseline" } else { "NOT back to baseline" }));
    lines.push(format!("soak: server exit code {:?} {:.1} s after SIGTERM", r.exit_code, r.exit_s));
    if !r.unexpected.is_empty() {
        lines.push(format!("soak: unexpected answers: {}", r.unexpected.join(", ")));
    }
    lines.push(format!("soak: {}", if r.pass { "PASS" } else { "FAIL" }));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: impl Fn(f64) -> u64) -> Vec<Sample> {
        (0..=100).map(|i| Sample { t_s: i as f64, rss_kb: rss(i as f64), fds: 12, threads: 8, requests: i * 10 }).collect()
    }

    #[test]
    fn flat_memory_passes_and_growth_fails() {
        // Warm-up growth (the first 10 s) is ignored; noise is not growth.
        let flat = samples(|t| if t < 10.0 { 100_000 + t as u64 * 10_000 } else { 200_000 + (t as u64 % 3) * 1000 });
        let j = judge_rss(&flat, 100.0, 0.10).unwrap();
        assert!(j.flat, "{j:?}");
        assert_eq!(j.warmup_s, 10.0);
        assert!(j.growth.abs() < 0.01);
        // A leak of 2 MB a second over the run: last third ≫ first.
        let leak = samples(|t| 200_000 + t as u64 * 2048);
        let j = judge_rss(&leak, 100.0, 0.10).unwrap();
        assert!(!j.flat && j.growth > 0.3, "{j:?}");
        // Medians of the thirds: first (10..40) ↦ 25 s, last (70..100] ↦ 85 s.
        assert!((j.first_median_mb - (200_000.0 + 25.0 * 2048.0) / 1024.0).abs() < 2.1, "{j:?}");
        assert!((j.last_median_mb - (200_000.0 + 85.0 * 2048.0) / 1024.0).abs() < 2.1, "{j:?}");
        assert!(judge_rss(&flat[..5], 100.0, 0.1).is_none());
    }

    #[test]
    fn the_mix_has_every_kind_and_right_answers_are_known() {
        let kinds: std::collections::BTreeSet<Kind> = (0..20).map(kind_of).collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
        for i in 0..40 {
            let k = kind_of(i);
            let (path, body) = request(i, k);
            assert!(path.starts_with("/v1/"));
            if k != Kind::Bad {
                assert!(body.is_ok());
            }
        }
        assert!(expected(Kind::Bad, 422) && expected(Kind::Bad, 400) && !expected(Kind::Bad, 200) && !expected(Kind::Bad, 500));
        assert!(!expected(Kind::Score, 500) && !expected(Kind::Score, 0) && !expected(Kind::Score, 1));
        assert!(expected(Kind::Abort, 0) && !expected(Kind::Abort, 503));
    }

    #[test]
    fn csv_round_trips_and_the_plot_is_written() {
        let dir = std::env::temp_dir().join(format!("medprm-soak-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = samples(|t| 150_000 + (t as u64 % 5) * 100);
        write_csv(&dir.join("s.csv"), &s).unwrap();
        let back = read_csv(&dir.join("s.csv")).unwrap();
        assert_eq!(back.len(), s.len());
        assert_eq!((back[7].rss_kb, back[7].fds, back[7].requests), (s[7].rss_kb, s[7].fds, s[7].requests));
        let r = SoakReport {
            run_s: 100.0,
            tally: vec![("score".into(), 200, 90), ("bad request".into(), 422, 10)],
            requests: 100,
            unexpected: vec![],
            rss_start_mb: 146.0,
            rss_end_mb: 147.0,
            rss_max_mb: 147.0,
            rss: judge_rss(&s, 100.0, 0.1),
            fds_baseline: 12,
            fds_max: 20,
            fds_end: 12,
            exit_code: Some(0),
            exit_s: 0.2,
            pass: true,
        };
        plot(&dir.join("s.svg"), &s, &r).unwrap();
        let svg = std::fs::read_to_string(dir.join("s.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("RSS (MB)") && svg.contains("PASS"), "{}", &svg[..200.min(svg.len())]);
        let lines = summary(&r, 0.1);
        assert!(lines.iter().any(|l| l.contains("90 × 200") || l.contains("10 × 422")), "{lines:?}");
        assert_eq!(lines.last().unwrap(), "soak: PASS");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
