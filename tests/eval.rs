//! `medprm eval` end to end: against a running `medprm serve` (the test model) on the fixtures of
//! tests/data/eval/, in process, on bad input, and its report in headless Chromium (`make browser`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/eval");

fn fixture(name: &str) -> String {
    format!("{DATA}/{name}")
}

fn medprm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medprm")).args(args).env("RUST_LOG", "warn").output().expect("run medprm")
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "medprm failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    out
}

fn metrics(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

/// `data_source → (questions, best_of_n, majority_vote, weighted_vote)` from `medprm score`'s table.
fn score_table(stderr: &str) -> Vec<(String, String, String, String, String)> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for l in stderr.lines() {
        if l.starts_with("data_source") {
            in_table = true;
            continue;
        }
        if in_table {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 5 {
                rows.push((f[0].into(), f[1].into(), f[2].into(), f[3].into(), f[4].into()));
            }
        }
    }
    rows
}

fn point<'a>(m: &'a Value, n: u64, method: &str) -> &'a Value {
    m["best_of_n"]["points"].as_array().unwrap().iter().find(|p| p["n"] == n && p["method"] == method).unwrap_or_else(|| panic!("no point {n} {method}"))
}

/// Count of pixels that are clearly coloured (not white, grey or black): the plots' lines and bands.
fn coloured_pixels(png_path: &Path) -> usize {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(ch)
        .filter(|p| ch >= 3 && {
            let (mx, mn) = (p[0].max(p[1]).max(p[2]) as i32, p[0].min(p[1]).min(p[2]) as i32);
            mx - mn > 60
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_against_a_server_matches_score_caches_and_resumes() {
    let server = common::Server::ready(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let inputs = [fixture("medprm-test.json"), fixture("medprm-train.jsonl"), fixture("processbench.json"), fixture("visualprocessbench.jsonl")];
    let mut args: Vec<String> = vec!["eval".into(), "--url".into(), server.url.clone(), "--out".into(), out.display().to_string(), "--draws".into(), "4".into(), "--quiet".into(), "--input".into()];
    args.extend(inputs.iter().cloned());
    let first = ok(tokio::task::spawn_blocking({
        let a: Vec<String> = args.clone();
        move || medprm(&a.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap());
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("Best-of-N: 5 questions, 21 candidates"), "{stdout}");
    let m = metrics(&out);

    // Every record was sent (5 rank + 16 score requests); the image record is refused by a text
    // model, reported with its file, record and status, and counted.
    assert_eq!(m["scoring"]["requests_sent_to_scorer"], 21, "{}", m["scoring"]);
    assert_eq!(m["scoring"]["refused"], 1);
    let r = &m["refused"][0];
    assert!(r["file"].as_str().unwrap().ends_with("visualprocessbench.jsonl") && r["record"] == 3 && r["status"] == 422, "{r}");
    assert_eq!(m["step_level"]["visualprocessbench"]["refused"], 1);
    assert_eq!(m["step_level"]["visualprocessbench"]["solutions"], 3);
    assert_eq!(m["step_level"]["medprm-train"]["solutions"], 6);
    assert_eq!(m["step_level"]["processbench"]["solutions"], 6);
    assert_eq!(m["scorer"]["info"]["model"]["profile"], "med-prm");
    let sha = m["inputs"][0]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(m["best_of_n"]["points"].as_array().unwrap().iter().map(|p| p["n"].as_u64().unwrap()).max(), Some(5));

    // Best-of-N at N = all equals `medprm score`'s accuracies on the same file (same model).
    let scored = dir.path().join("scored.jsonl");
    let model = medprm::tools::testmodel::ensure().unwrap();
    let s = ok(medprm(&["score", "--model", model.to_str().unwrap(), "--input", &fixture("medprm-test.json"), "--output", scored.to_str().unwrap(), "--quiet"]));
    let table = score_table(&String::from_utf8_lossy(&s.stderr));
    assert_eq!(table.len(), 2, "{}", String::from_utf8_lossy(&s.stderr));
    for (src, n, best, majority, weighted) in &table {
        assert_eq!(m["best_of_n"]["sources"][src].to_string(), *n, "{src}");
        let at = |method: &str| format!("{:.2}", 100.0 * point(&m, 5, method)["per_source"][src]["mean"].as_f64().unwrap());
        assert_eq!((at("best_of_n_min"), at("majority_vote"), at("weighted_vote")), (best.clone(), majority.clone(), weighted.clone()), "{src}");
    }

    // Plots: PNG and SVG of each, PNGs with coloured lines.
    for name in ["bon_by_selection", "bon_by_source", "roc", "reliability_medprm-train", "reliability_processbench"] {
        assert!(out.join(format!("{name}.svg")).is_file(), "{name}.svg");
        assert!(coloured_pixels(&out.join(format!("{name}.png"))) > 500, "{name}.png looks blank");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 5 && html.contains(sha) && html.contains("Tie rule"));

    // A re-run costs no model time and gives the same numbers.
    ok(tokio::task::spawn_blocking({
        let a = args.clone();
        move || medprm(&a.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap());
    let again = metrics(&out);
    assert_eq!(again["scoring"]["requests_sent_to_scorer"], 1, "only the refused request is sent again");
    assert_eq!(again["scoring"]["requests_from_cache"], 20);
    assert_eq!(again["scoring"]["refused"], 1, "a refusal is asked again, and refused again");
    assert_eq!(again["best_of_n"], m["best_of_n"]);
    assert_eq!(again["step_level"], m["step_level"]);

    // An interrupted run (cache cut after 7 answers, the last line torn) resumes: only the rest
    // is scored.
    let cache = out.join("score-cache.jsonl");
    let text = std::fs::read_to_string(&cache).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cache, format!("{}\n{}", lines[..7].join("\n"), &lines[7][..20])).unwrap();
    ok(tokio::task::spawn_blocking(move || medprm(&argv_owned(&args))).await.unwrap());
    let resumed = metrics(&out);
    assert_eq!(resumed["scoring"]["requests_from_cache"], 7);
    assert_eq!(resumed["scoring"]["requests_sent_to_scorer"], 14);
    assert_eq!(resumed["best_of_n"], m["best_of_n"]);
}

fn argv_owned(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

#[test]
fn in_process_run_scores_every_record_then_reads_the_cache() {
    // `--model`: the same validation and scoring core in process; a second run is all cache.
    let model = medprm::tools::testmodel::ensure().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let args = ["eval", "--model", model.to_str().unwrap(), "--input", &fixture("processbench.json"), &fixture("medprm-test.json"), "--out", out.to_str().unwrap(), "--draws", "3", "--quiet"];
    ok(medprm(&args));
    let m = metrics(&out);
    assert_eq!(m["scoring"]["requests_sent_to_scorer"], 11);
    assert_eq!(m["scorer"]["info"]["in_process"], true);
    let pb = &m["step_level"]["processbench"];
    assert_eq!(pb["solutions"], 6);
    assert_eq!(pb["erroneous_solutions"], 3);
    assert_eq!(pb["sweep"].as_array().unwrap().len(), 101);
    ok(medprm(&args));
    assert_eq!(metrics(&out)["scoring"]["requests_from_cache"], 11);
}

#[test]
fn bad_input_names_file_record_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (write("no-answer.json", r#"[{"question": "Q?", "solutions": [{"solution": "Step 1: x. The answer is A."}], "data_source": "x"}]"#), "no-answer.json: records[0].correct_answer: missing"),
        (write("labels.jsonl", "{\"question\": \"Q?\", \"steps\": [\"Step 1: a ки\", \"Step 2: b ки\"], \"prm_hard_label\": [1, 0, 1]}\n"), "labels.jsonl: records[0].prm_hard_label: 3 labels for 2 steps"),
        (write("unknown.json", r#"[{"prompt": "Q?", "completion": "x"}]"#), "unknown.json: records[0]: unknown format"),
    ];
    for (path, expected) in &cases {
        // Input is read before anything is contacted: the URL is never reached.
        let out = medprm(&["eval", "--url", "http://127.0.0.1:9", "--input", path.to_str().unwrap(), "--out", dir.path().join("o").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "expected `{expected}`:\n{err}");
    }
    let out = medprm(&["eval", "--url", "http://127.0.0.1:9", "--format", "nonsense", "--input", &fixture("processbench.json"), "--out", "x"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid value 'nonsense' for '--format"));
}

/// The report in a real browser (Debian's chromium, `make browser`): the DOM holds the plots'
/// SVG and the screenshot shows their coloured lines and bands (the page's text and tables are
/// black and grey).
#[test]
fn report_renders_in_headless_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
    let chromium = chromium.unwrap_or_else(|| panic!("chromium is missing: run `make browser` (make test does)"));
    let model = medprm::tools::testmodel::ensure().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    ok(medprm(&["eval", "--model", model.to_str().unwrap(), "--input", &fixture("medprm-test.json"), &fixture("processbench.json"), "--out", out.to_str().unwrap(), "--draws", "3", "--quiet"]));
    let url = format!("file://{}", out.join("report.html").display());
    let browser = |extra: &[String], profile: &str| -> Output {
        Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", dir.path().join(profile).display()))
            .args(extra)
            .output()
            .expect("run chromium")
    };
    let dom = browser(&["--dump-dom".into(), url.clone()], "p1");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.matches("<svg").count() >= 4, "the DOM lacks the plots:\n{}", &dom[..dom.len().min(2000)]);
    assert!(dom.contains("<polyline") || dom.contains("<path"), "no lines in the SVG plots");
    let shot = dir.path().join("shot.png");
    let r = browser(&[format!("--screenshot={}", shot.display()), "--window-size=1200,2000".into(), url.clone()], "p2");
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&r.stderr));
    let coloured = coloured_pixels(&shot);
    assert!(coloured > 20_000, "the screenshot shows {coloured} coloured pixels: the plots did not render");
}
