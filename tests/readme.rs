//! The README cannot drift from the binary: its `medprm serve` configuration table and its metrics
//! table are generated from the flag definitions and the metric registry (and checked against
//! `medprm serve --help`), and every `make X` it pairs with a `medprm ...` command runs exactly that
//! command. After changing a flag or a metric, regenerate the tables with
//!
//! ```sh
//! MEDPRM_BLESS=1 cargo test --test readme
//! ```
//!
//! and commit the README; without `MEDPRM_BLESS` a difference fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use clap::{ArgAction, Args};
use regex::Regex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// One whitespace-separated line (doc comments wrap).
fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(s: &str) -> String {
    flat(s).replace('|', "\\|")
}

/// The `medprm serve` flags as a Markdown table: flag, env, default, meaning (the flag's own help
/// text, never clap's rendering of possible values or of `--help`).
fn serve_table() -> String {
    let cmd = medprm::server::ServeConfig::augment_args(clap::Command::new("serve"));
    let mut out = String::from("| flag | env | default | meaning |\n|---|---|---|---|\n");
    let mut rows = 0;
    for a in cmd.get_arguments() {
        let long = a.get_long().unwrap_or_else(|| panic!("{}: every serve flag has a long name", a.get_id()));
        let env = a.get_env().unwrap_or_else(|| panic!("--{long} has no MEDPRM_* variable")).to_str().unwrap();
        assert!(env.starts_with("MEDPRM_"), "--{long}: {env}");
        let default = if matches!(a.get_action(), ArgAction::SetTrue) {
            "off".to_string()
        } else {
            match a.get_default_values() {
                [] => "—".to_string(),
                vs => format!("`{}`", vs.iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join(",")),
            }
        };
        let help = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_else(|| panic!("--{long} has no help"));
        let mut meaning = flat(&help);
        let values: Vec<String> = a.get_possible_values().iter().filter(|v| !v.is_hide_set()).map(|v| v.get_name().to_string()).collect();
        if !matches!(a.get_action(), ArgAction::SetTrue) && !values.is_empty() && !values.iter().all(|v| meaning.contains(v.as_str())) {
            meaning = format!("{}; one of {}", meaning.trim_end_matches('.'), values.join(", "));
        }
        out += &format!("| `--{long}` | `{env}` | {default} | {} |\n", cell(&meaning));
        rows += 1;
    }
    assert!(rows > 20, "{rows} serve flags: the introspection found too few");
    out
}

/// The metric registry as a Markdown table: name, type, labels, help.
fn metrics_table() -> String {
    let fams = medprm::metrics::Metrics::new().families();
    assert!(fams.len() > 20, "{} metric families", fams.len());
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for f in &fams {
        let labels = if f.labels.is_empty() { "—".to_string() } else { f.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ") };
        out += &format!("| `{}` | {} | {} | {} |\n", f.name, f.kind, labels, cell(&f.help));
    }
    out
}

/// Replaces (when blessing) or checks the text between `<!-- generated: NAME ... -->` and
/// `<!-- end generated: NAME -->`.
fn generated_section(text: &mut String, name: &str, want: &str) -> Result<(), String> {
    let begin = format!("<!-- generated: {name} ");
    let end = format!("<!-- end generated: {name} -->");
    let b = text.find(&begin).unwrap_or_else(|| panic!("README has no `{begin}...-->` marker"));
    let b = b + text[b..].find("-->\n").expect("marker closes") + 4;
    let e = text[b..].find(&end).unwrap_or_else(|| panic!("README has no `{end}`")) + b;
    if text[b..e] == *want {
        return Ok(());
    }
    let diff: Vec<String> = {
        let have: Vec<&str> = text[b..e].lines().collect();
        let want: Vec<&str> = want.lines().collect();
        let mut d = Vec::new();
        for l in &have {
            if !want.contains(l) {
                d.push(format!("- {l}"));
            }
        }
        for l in &want {
            if !have.contains(l) {
                d.push(format!("+ {l}"));
            }
        }
        d
    };
    text.replace_range(b..e, want);
    Err(format!("README section `{name}` is out of date:\n{}", diff.join("\n")))
}

/// A figure file of `docs/figures/` (written by the command it names, with `--figures`).
fn figure(name: &str) -> medprm::figures::FigureFile {
    let path = root().join("docs/figures").join(format!("{name}.json"));
    medprm::figures::read(&path).unwrap_or_else(|e| panic!("{e}: regenerate it with the command the README names"))
}

/// The retrieval quality table from the two `eval-retrieval` figure files.
fn retrieval_table() -> String {
    let mut out = String::from("| questions | metric | bm25 | dense | hybrid |\n|---|---|---|---|---|\n");
    let mut sources = Vec::new();
    for (name, label) in [("retrieval-eval", ""), ("retrieval-eval-hard", " hard")] {
        let f = figure(name);
        let r = &f.figures;
        let modes = r["modes"].as_array().unwrap_or_else(|| panic!("{name}.json: no modes"));
        let by_mode = |mode: &str, key: &str, digits: usize| -> String {
            let m = modes.iter().find(|m| m["mode"] == mode).unwrap_or_else(|| panic!("{name}.json: no {mode}"));
            format!("{:.digits$}", m[key].as_f64().unwrap_or_else(|| panic!("{name}.json: {mode}.{key}")))
        };
        for (metric, key, digits) in [("recall@1", "recall_at_1", 3), ("MRR@10", "mrr", 3), ("recall@5", "recall_at_5", 3), ("search p50 ms", "latency_p50_ms", 1)] {
            out += &format!(
                "| {}{label} | {metric} | {} | {} | {} |\n",
                r["questions"], by_mode("bm25", key, digits), by_mode("dense", key, digits), by_mode("hybrid", key, digits)
            );
        }
        sources.push(format!("`{}` ({}, `docs/figures/{name}.json`)", f.command, &f.date[..10]));
    }
    out + &format!("\nFrom {}.\n", sources.join(" and "))
}

fn num(f: &medprm::figures::FigureFile, key: &str) -> f64 {
    f.figures[key].as_f64().unwrap_or_else(|| panic!("figure `{key}` missing in the file of `{}`", f.command))
}

/// `N` with thousands separators.
fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "From `command` (date, `docs/figures/NAME.json`)" for each file.
fn sources(files: &[(&str, &medprm::figures::FigureFile)]) -> String {
    let list: Vec<String> = files
        .iter()
        .map(|(name, f)| {
            let load = f.load_average.map(|l| format!(", load average {:.1} at the end", l[0])).unwrap_or_default();
            format!("`{}` ({}, {} cores{load}, `docs/figures/{name}.json`)", f.command, &f.date[..10], f.cores)
        })
        .collect();
    format!("\nFrom {}.\n", list.join("; "))
}

/// `make bench-engine`: the CPU kernels and the generic attention path.
fn engine_table() -> String {
    let (k, g) = (figure("bench-engine"), figure("bench-engine-generic"));
    let mut out = String::from("| attention | prompt | throughput | achieved | gemm peak (same run) |\n|---|---|---|---|---|\n");
    for (label, f) in [("CPU kernels (default)", &k), ("generic tensor ops (`--generic-attention`)", &g)] {
        out += &format!(
            "| {label} | {} tokens | {:.0} tokens/s | {:.1} GFLOP/s | {:.1} GFLOP/s ({:.0}%) |\n",
            thousands(num(f, "prompt_tokens")), num(f, "tokens_per_s"), num(f, "model_gflops"), num(f, "gemm_gflops"),
            100.0 * num(f, "model_gflops") / num(f, "gemm_gflops")
        );
    }
    out += &format!("\nPer token the kernels run {:.1}× the generic path.\n", num(&k, "tokens_per_s") / num(&g, "tokens_per_s"));
    out + &sources(&[("bench-engine", &k), ("bench-engine-generic", &g)])
}

/// `make bench-gguf`: the four ways of running GGUF linears, int8's score difference to f32.
fn gguf_table() -> String {
    let modes = [
        ("dequantized", "`dequantized` (CPU default up to 4 GiB of f32 linears)"),
        ("streamed", "`streamed` (CPU default above)"),
        ("quantized", "`quantized` (candle's kernels; GPU default)"),
        ("int8", "`int8` (opt-in; AVX-512 VNNI where the CPU has it)"),
    ];
    let files: Vec<(String, medprm::figures::FigureFile)> = modes.iter().map(|(m, _)| (format!("gguf-{m}"), figure(&format!("gguf-{m}")))).collect();
    let mut out = String::from("| `--gguf-matmul` | throughput | achieved / f32 gemm peak | peak RSS |\n|---|---|---|---|\n");
    for ((_, label), (_, f)) in modes.iter().zip(&files) {
        out += &format!(
            "| {label} | {:.0} tokens/s ({} tokens) | {:.1} / {:.1} GFLOP/s ({:.0}%) | {:.0} MiB |\n",
            num(f, "tokens_per_s"), thousands(num(f, "prompt_tokens")), num(f, "model_gflops"), num(f, "gemm_gflops"),
            100.0 * num(f, "model_gflops") / num(f, "gemm_gflops"), num(f, "peak_rss_mib")
        );
    }
    let tps = |i: usize| num(&files[i].1, "tokens_per_s");
    out += &format!(
        "\n`dequantized` runs {:.1}× `streamed` and {:.0}× `quantized` per token; `int8` runs {:.2}× `dequantized` (its integer dot products do 4× an f32 FMA's multiplications per instruction, so it can pass the f32 gemm peak).\n",
        tps(0) / tps(1), tps(0) / tps(2), tps(3) / tps(0)
    );
    let d = &files[3].1.figures["delta_vs_dequantized"];
    let dn = |k: &str| d[k].as_f64().unwrap_or_else(|| panic!("`delta_vs_dequantized.{k}` missing in docs/figures/gguf-int8.json"));
    out += &format!(
        "`int8` scores differ from the f32 (`dequantized`) path by |Δp| ≤ {:.1e} (mean {:.1e}) over {:.0} step scores of {:.0} real Med-PRM solutions (`--delta-vs-dequantized`).\n",
        dn("max_abs_dp"), dn("mean_abs_dp"), dn("step_scores"), dn("solutions")
    );
    let refs: Vec<(&str, &medprm::figures::FigureFile)> = files.iter().map(|(n, f)| (n.as_str(), f)).collect();
    out + &sources(&refs)
}

/// `make bench-prefix`: Best-of-16 with and without prefix sharing.
fn prefix_table() -> String {
    let f = figure("bench-prefix");
    let n = num(&f, "candidates");
    let (p, s) = (num(&f, "prefix_tokens"), num(&f, "mean_suffix_tokens"));
    let (one, whole, shared) = (num(&f, "one_s"), num(&f, "whole_s"), num(&f, "shared_s"));
    let mut out = String::from("| | time | solutions/s |\n|---|---|---|\n");
    out += &format!("| 1 candidate | {one:.1} s | |\n");
    out += &format!("| {n} candidates, every prompt whole (`--no-prefix-sharing`) | {whole:.1} s | {:.3} |\n", n / whole);
    // Files from before packing have no `padded_s`: their `shared_s` ran right-padded.
    let padded = f.figures.get("padded_s").and_then(|v| v.as_f64());
    if let Some(padded) = padded {
        out += &format!("| {n} candidates, prefix once, suffixes right-padded | {padded:.1} s | {:.3} |\n", n / padded);
        out += &format!("| {n} candidates, prefix once, suffixes packed | {shared:.1} s | {:.3} |\n", n / shared);
    } else {
        out += &format!("| {n} candidates, prefix once | {shared:.1} s | {:.3} |\n", n / shared);
    }
    out += &format!(
        "\nShared prefix {} tokens, {} tokens of steps per candidate on average. Sharing is **{:.2}× faster** than whole prompts (token-count bound {:.2}×); a {n}-candidate request takes {:.2}× a 1-candidate one (token bound {:.2}×). Prefix K/V {:.1} MiB, held once.\n",
        thousands(p), thousands(s), whole / shared, n * (p + s) / (p + n * s), shared / one, (p + n * s) / (p + s),
        num(&f, "prefix_kv_bytes") / 1048576.0
    );
    if let Some(flops) = f.figures.get("flop_bound").and_then(|v| v.as_f64()) {
        let token = n * (p + s) / (p + n * s);
        out += &format!(
            "\nThe token-count bound counts a suffix token as cheap as a prefix token, but each suffix token also attends to the {} prefix tokens: counting the multiply-adds of the linears and of causal attention, whole prompts do {flops:.2}× the work of the shared run (the FLOP bound), which is {:.0}% of the token-count bound. Sharing reaches {:.0}% of the FLOP bound and {:.0}% of the token-count bound.\n",
            thousands(p), 100.0 * flops / token, 100.0 * whole / shared / flops, 100.0 * whole / shared / token
        );
    }
    if whole / shared > n * (p + s) / (p + n * s) {
        // Time cannot beat the token count on a compute-bound CPU: the runs were disturbed.
        out += "\nA speed-up above the token-count bound means the runs, one after another, did not get the same share of the CPU (other jobs ran beside them): rerun `make bench-prefix` on a quiet machine before quoting the ratio.\n";
    }
    out + &sources(&[("bench-prefix", &f)])
}

/// `make bench-vs-llamacpp`: llama.cpp and medprm on the same GGUF and prompt.
fn vs_llamacpp_table() -> String {
    // One file per medprm linears mode; each holds its own llama.cpp run, back to back with it.
    let files = [("bench-vs-llamacpp", figure("bench-vs-llamacpp")), ("bench-vs-llamacpp-int8", figure("bench-vs-llamacpp-int8"))];
    let mut out = String::from("| medprm linears | llama.cpp prompt tokens/s | medprm prompt tokens/s | medprm / llama.cpp |\n|---|---|---|---|\n");
    for (_, f) in &files {
        let (theirs, ours) = (num(f, "llamacpp_tokens_per_s"), num(f, "medprm_tokens_per_s"));
        let mode = match f.figures["gguf_matmul"].as_str() {
            Some("auto") | None => "dequantized",
            Some(m) => m,
        };
        out += &format!("| `{mode}` ({}) | {theirs:.0} | {ours:.0} | **{:.2}×** |\n", f.figures["format"].as_str().unwrap_or("?"), ours / theirs);
    }
    let f = &files[0].1;
    out += &format!(
        "\n{} prompt tokens, the same ids on both sides; llama.cpp: {}.\n",
        thousands(num(f, "prompt_tokens")),
        f.figures["llamacpp_info"].as_str().unwrap_or("?")
    );
    let refs: Vec<(&str, &medprm::figures::FigureFile)> = files.iter().map(|(n, f)| (*n, f)).collect();
    out + &sources(&refs)
}

/// `scripts/golden/depth_drift.py`: medprm builds against transformers (sdpa and eager) on a deep
/// model and long prompts (the script's own JSON, not a `figures::FigureFile`).
fn depth_drift_table() -> String {
    let path = root().join("docs/figures/depth-drift.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let n = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("depth-drift.json: {v} is not a number"));
    let spread = n(&r["eager_vs_sdpa"]);
    let builds = r["builds"].as_object().expect("depth-drift.json: builds");
    let mut out = String::from("| build | attention | max \\|Δp\\| vs sdpa, shared prefix | whole prompts | vs eager (worse of the two) | within HF's spread |\n|---|---|---|---|---|---|\n");
    for (label, b) in builds {
        for (path, p) in b["paths"].as_object().expect("depth-drift.json: paths") {
            let (shared, whole) = (n(&p["shared_vs_sdpa"]), n(&p["whole_vs_sdpa"]));
            let eager = n(&p["shared_vs_eager"]).max(n(&p["whole_vs_eager"]));
            let ok = if shared.max(whole) <= spread { "yes" } else { "no" };
            out += &format!("| {label} | {path} | {shared:.1e} | {whole:.1e} | {eager:.1e} | {ok} |\n");
        }
    }
    let lengths: Vec<f64> = r["prompt_tokens"].as_array().unwrap().iter().map(n).collect();
    let (lo, hi) = lengths.iter().fold((f64::MAX, 0f64), |(a, b), &l| (a.min(l), b.max(l)));
    let m = &r["model"];
    out += &format!(
        "\nHF's own spread (eager vs sdpa, f32): {spread:.1e} over {} steps of {} solutions ({}–{} tokens, {} guideline documents); model: {} layers, hidden {}, {}/{} heads, `initializer_range` {}, seed {}.\n",
        r["steps"], lengths.len(), thousands(lo), thousands(hi), r["documents"], m["layers"], m["hidden"], m["heads"], m["kv_heads"], m["initializer_range"], m["seed"]
    );
    // Per layer: the hidden state entering the layer, first solution's whole prompt, for every
    // build and configuration.
    let columns: Vec<(&String, &String, Vec<serde_json::Value>)> = builds
        .iter()
        .flat_map(|(label, b)| {
            b["paths"].as_object().expect("depth-drift.json: paths").iter().map(move |(path, p)| {
                (label, path, p["per_layer_hidden"].as_array().cloned().unwrap_or_default())
            })
        })
        .collect();
    out += &format!("\n| layer | max \\|h\\| | eager vs sdpa | {} |\n|---|---|---|{}\n",
        columns.iter().map(|(l, p, _)| format!("{l} ({p}) vs sdpa")).collect::<Vec<_>>().join(" | "), "---|".repeat(columns.len()));
    let count = columns[0].2.len();
    for i in [1, 2, 5, 10, 15, 20, 25, count - 1].into_iter().filter(|&i| i < count) {
        let first = &columns[0].2[i];
        out += &format!("| {i} | {:.0} | {:.1e} | {} |\n", n(&first["max_abs_sdpa"]), n(&first["eager_vs_sdpa"]),
            columns.iter().map(|(_, _, layers)| format!("{:.1e}", n(&layers[i]["medprm_vs_sdpa"]))).collect::<Vec<_>>().join(" | "));
    }
    out + &format!("\nFrom `{}` (torch {}, transformers {}, `docs/figures/depth-drift.json`).\n", r["command"].as_str().unwrap(), r["torch"].as_str().unwrap(), r["transformers"].as_str().unwrap())
}

/// `make bench-numerics-cost`: `bench engine` of the build before issue 24's numerics and of this
/// one, alternated round by round.
fn numerics_cost_table() -> String {
    let f = figure("numerics-cost");
    let r = &f.figures;
    let (a, b) = (r["a"]["label"].as_str().unwrap(), r["b"]["label"].as_str().unwrap());
    let n = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("numerics-cost.json: {v} is not a number"));
    let mut out = format!("| round | {a}: tokens/s (gemm peak) | {b}: tokens/s (gemm peak) | {b}/{a} |\n|---|---|---|---|\n");
    let rounds = r["rounds"].as_array().expect("numerics-cost.json: rounds");
    for row in rounds {
        out += &format!(
            "| {} | {:.0} ({:.0} GFLOP/s) | {:.0} ({:.0} GFLOP/s) | {:.2} |\n",
            row["round"], n(&row[a]["tokens_per_s"]), n(&row[a]["gemm_gflops"]), n(&row[b]["tokens_per_s"]), n(&row[b]["gemm_gflops"]), n(&row["ratio"])
        );
    }
    out += &format!(
        "\nMedian {b}/{a}: **{:.2}** (rounds {:.2}–{:.2}); {} prompt tokens, {} iterations per run.\n",
        n(&r["median_ratio"]), n(&r["min_ratio"]), n(&r["max_ratio"]), thousands(n(&rounds[0][a]["prompt_tokens"])), r["iters"]
    );
    out + &sources(&[("numerics-cost", &f)])
}

/// `make bench-vs-reference`: the reference scoring path and medprm on one Best-of-N request.
fn vs_reference_table() -> String {
    let f = figure("bench-vs-reference");
    let (n, theirs, ours) = (num(&f, "candidates"), num(&f, "reference_s"), num(&f, "medprm_s"));
    let mut out = String::from("| | time | solutions/s |\n|---|---|---|\n");
    out += &format!("| reference ({}) | {theirs:.1} s | {:.3} |\n", f.figures["reference_info"].as_str().unwrap_or("?"), n / theirs);
    out += &format!("| medprm (shared prefix) | {ours:.1} s | {:.3} |\n", n / ours);
    out += &format!("| **speed-up** | **{:.2}×** | max \\|Δp\\| = {:.1e} over {} steps |\n", theirs / ours, num(&f, "max_abs_diff"), num(&f, "steps"));
    let bound = |shape: &str| f.figures["flop_ratio"][shape].as_f64().unwrap_or_else(|| panic!("bench-vs-reference.json: flop_ratio.{shape}"));
    out += &format!(
        "\nA {}-layer model of hidden {}, Best-of-{n} over {} shared tokens and {} tokens of steps per candidate on average. The FLOP ratio of the two paths for this workload is {:.2}× (the reference runs every candidate's prefix again and the vocabulary head on every token; medprm runs the prefix once and 2 head rows at the tags); for Llama-3.1-8B's widths the same arithmetic gives {:.2}×.\n",
        num(&f, "layers"), num(&f, "hidden"), thousands(num(&f, "prefix_tokens")), thousands(num(&f, "mean_suffix_tokens")), bound("this shape"), bound("Llama-3.1-8B")
    );
    out + &sources(&[("bench-vs-reference", &f)])
}

/// `make bench-serve`: a running server under rank requests at each concurrency level.
fn serve_load_table() -> String {
    let f = figure("bench-serve");
    let r = &f.figures;
    let levels = r["levels"].as_array().expect("bench-serve.json: levels");
    let mut out = String::from("| concurrency | answered (429) | candidates/s | compute tokens/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|---|\n");
    let n = |l: &serde_json::Value, k: &str| l[k].as_f64().unwrap_or_else(|| panic!("bench-serve.json: levels[].{k}"));
    for l in levels {
        out += &format!(
            "| {} | {} ({}) | {:.2} | {:.0} | {} | {} | {:.1} |\n",
            n(l, "concurrency"), n(l, "ok"), n(l, "rejected"), n(l, "candidates_per_s"), n(l, "tokens_per_s"),
            thousands(n(l, "p50_ms")), thousands(n(l, "p99_ms")), n(l, "mean_batch")
        );
    }
    let s = &r["server"];
    out += &format!(
        "\n{} rank requests of {} candidates per level{}; the server ran `{}` ({}, {}, profile {}).\n",
        r["requests"], r["candidates"], if r["documents"] == true { ", 2 documents each" } else { "" },
        s["model"].as_str().unwrap_or("?").rsplit('/').next().unwrap_or("?"), s["format"].as_str().unwrap_or("?"), s["device"].as_str().unwrap_or("?"), s["profile"].as_str().unwrap_or("?")
    );
    out + &sources(&[("bench-serve", &f)])
}


/// `medprm label --compare-adaptive`: what fixed K and adaptive mode spent, and their agreement
/// (the file is the label job's own report, not a `figures::FigureFile`).
fn label_adaptive_table() -> String {
    let path = root().join("docs/figures/label-adaptive.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let n = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("label-adaptive.json: {v} is not a number"));
    let mut out = String::from("| | fixed K | adaptive | adaptive / fixed |\n|---|---|---|---|\n");
    for (label, key) in [("rollouts", "rollouts"), ("requests", "requests"), ("policy tokens", "policy_tokens")] {
        let (f, a) = (n(&r["fixed"][key]), n(&r["adaptive"][key]));
        out += &format!("| {label} | {} | {} | {:.2}× |\n", thousands(f), thousands(a), a / f);
    }
    let steps = n(&r["steps"]);
    let agree = &r["agreement"];
    out += &format!(
        "\n{} solutions, {steps} steps, K = {}. Agreement of adaptive with fixed-K labels: hard {:.0} of {steps} steps, soft {:.0} of {steps} (mean |difference| {:.3}), hybrid {:.0} of {steps}. Adaptive step labels by source: {}.\n",
        r["solutions"], r["rollouts_per_step_max"], n(&agree["hard"]) * steps, n(&agree["soft_exact"]) * steps, n(&agree["soft_mean_abs_diff"]),
        n(&agree["hybrid"]) * steps,
        r["adaptive_step_sources"].as_object().unwrap().iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    out + &format!("\nFrom `{}`.\n", r["command"].as_str().unwrap())
}

/// The retrieval-at-scale table from `make bench-retrieval-scale` (one column per backend; a
/// row that does not apply to a backend shows "—").
fn retrieval_scale_table() -> String {
    use serde_json::Value;
    let f = figure("retrieval-scale");
    let r = &f.figures;
    let backends = r["backends"].as_array().expect("retrieval-scale.json: backends");
    let num = |v: &Value, what: &str| v.as_f64().unwrap_or_else(|| panic!("retrieval-scale.json: {what}"));
    let mib = |v: &Value, what: &str| format!("{:.1}", num(v, what) / (1u64 << 20) as f64);
    let is = |b: &Value, name: &str| b["backend"] == name;
    let mut out = String::from("| | ");
    out += &backends.iter().map(|b| format!("{} ({} chunks)", b["backend"].as_str().unwrap(), thousands(num(&b["chunks"], "chunks")))).collect::<Vec<_>>().join(" | ");
    out += " |\n|---|";
    out += &"---|".repeat(backends.len());
    out += "\n";
    let dash = || "—".to_string();
    let mut row = |label: &str, cell: &dyn Fn(&Value) -> String| {
        out += &format!("| {label} | {} |\n", backends.iter().map(cell).collect::<Vec<_>>().join(" | "));
    };
    row("ingest by `medprm index --import`, chunks/s (PostgreSQL: the COPY phase)", &|b| format!("{:.0}", num(&b["ingest_chunks_per_s"], "ingest")));
    row("index build in all, s (PostgreSQL: COPY + HNSW build + BM25 statistics)", &|b| {
        if is(b, "postgres") {
            format!(
                "{:.0} ({:.0} + {:.0} + {:.0})",
                num(&b["index_build_s"], "build"),
                num(&b["load_s"], "load"),
                num(&b["hnsw_build_s"], "hnsw"),
                num(&b["bm25_statistics_s"], "bm25 statistics")
            )
        } else {
            format!("{:.0}", num(&b["index_build_s"], "build"))
        }
    });
    row("`medprm index --import` peak RSS, MiB", &|b| {
        if b["import_peak_rss_bytes"].is_null() {
            return dash();
        }
        mib(&b["import_peak_rss_bytes"], "import rss")
    });
    row("disk, MiB (embedded: vectors / BM25 / chunk text)", &|b| {
        let d = &b["disk"];
        if is(b, "postgres") {
            return dash();
        }
        format!("{} ({} / {} / {})", mib(&d["total_bytes"], "disk"), mib(&d["embeddings_bytes"], "vectors"), mib(&d["tantivy_bytes"], "tantivy"), mib(&d["chunks_jsonl_bytes"], "chunks"))
    });
    row("disk, MiB (PostgreSQL: table in all / heap / TOAST / HNSW / GIN / primary key; BM25 term table)", &|b| {
        let d = &b["disk"];
        if !is(b, "postgres") {
            return dash();
        }
        format!(
            "{} / {} / {} / {} / {} / {}; {}",
            mib(&d["table_total_bytes"], "table"),
            mib(&d["table_heap_bytes"], "heap"),
            mib(&d["toast_bytes"], "toast"),
            mib(&d["hnsw_index_bytes"], "hnsw"),
            mib(&d["gin_index_bytes"], "gin"),
            mib(&d["pkey_index_bytes"], "pkey"),
            mib(&d["bm25_terms_bytes"], "bm25 terms")
        )
    });
    row("open + one query (no model): s, peak RSS MiB", &|b| {
        if is(b, "postgres") {
            return dash();
        }
        format!("{:.1} s, {}", num(&b["startup"]["open_and_one_query_s"], "startup"), mib(&b["startup"]["peak_rss_bytes"], "rss"))
    });
    row("`medprm serve` ready, s", &|b| format!("{:.1}", num(&b["serve"]["ready_s"], "ready")));
    row("medprm server RSS with the 135M demo model, MiB", &|b| mib(&b["serve"]["rss_bytes"], "serve rss"));
    row("PostgreSQL processes: RSS sum / PSS sum, MiB", &|b| {
        if !is(b, "postgres") {
            return dash();
        }
        format!("{} / {} (shared_buffers {})", mib(&b["server_ram"]["rss_sum_bytes"], "pg rss"), mib(&b["server_ram"]["pss_sum_bytes"], "pg pss"), b["server_ram"]["shared_buffers"].as_str().unwrap())
    });
    for mode in ["bm25", "dense", "hybrid"] {
        for c in [1, 8] {
            row(&format!("`/v1/retrieve` {mode} k=10, {c} client(s): p50 / p99 ms (server p50; requests)"), &|b| {
                let l = b["serve"]["latency"].as_array().unwrap().iter().find(|l| l["mode"] == mode && l["concurrency"] == c);
                let l = l.unwrap_or_else(|| panic!("retrieval-scale.json: no {mode} x{c}"));
                let errors = l["errors"].as_object().map(|e| e.iter().map(|(k, v)| format!(", {v} × HTTP {k}")).collect::<String>()).unwrap_or_default();
                if l["client_p50_ms"].is_null() {
                    return format!("none answered ({}{errors})", l["requests"]);
                }
                format!("{:.1} / {:.1} ({:.1}; {}{errors})", num(&l["client_p50_ms"], "p50"), num(&l["client_p99_ms"], "p99"), num(&l["server_p50_ms"], "server"), l["requests"])
            });
        }
    }
    row("lexical searches (bm25 and hybrid) of the whole run: mean chunks scored; scoring rounds; top k not proven exact", &|b| {
        if !is(b, "postgres") {
            return "every chunk holding a query term (tantivy's exact BM25)".to_string();
        }
        let w = &b["serve"]["bm25_work"];
        let searches = num(&w["medprm_retrieval_bm25_chunks_scored_count"], "bm25 searches");
        if searches == 0.0 {
            return "no lexical search ran".to_string();
        }
        format!(
            "{:.0} of {} chunks; {:.2} rounds a search; {:.0} of {:.0} searches",
            num(&w["medprm_retrieval_bm25_chunks_scored_sum"], "bm25 chunks") / searches,
            thousands(num(&b["chunks"], "chunks")),
            num(&w["medprm_retrieval_bm25_rounds_sum"], "bm25 rounds") / searches,
            num(&w["medprm_retrieval_bm25_unproven_total"], "bm25 unproven"),
            searches
        )
    });
    row("dense recall@10 vs exact", &|b| {
        let d = &b["dense_recall_at_10_vs_exact"];
        if !is(b, "postgres") {
            return format!("{:.3} ({})", num(&d["value"], "recall"), d["how"].as_str().unwrap_or(""));
        }
        let q = d["queries"].as_object().unwrap().iter().map(|(k, v)| format!("{v} {}", k.replace('_', " "))).collect::<Vec<_>>().join(" + ");
        let efs = d["ef_search"].as_object().unwrap();
        let per = efs
            .iter()
            .map(|(ef, e)| {
                let by = e["recall_at_10"].as_object().unwrap().iter().map(|(k, v)| format!("{} {:.3}", k.replace('_', " "), num(v, "recall"))).collect::<Vec<_>>().join(", ");
                format!("ef_search {ef}: {:.3} ({by}; {:.1} ms/query)", num(&e["recall_at_10_all"], "recall"), num(&e["s_per_query"], "s") * 1e3)
            })
            .collect::<Vec<_>>()
            .join("; ");
        format!("HNSW {per}; exact scan {:.0} ms/query; {q} queries", num(&d["exact_s_per_query"], "exact") * 1e3)
    });
    for mode in ["bm25", "dense", "hybrid"] {
        row(&format!("hard eval {mode}: recall@1 / recall@10 / MRR"), &|b| {
            let m = b["hard_eval"]["modes"].as_array().unwrap().iter().find(|m| m["mode"] == mode).expect("hard eval mode");
            let total = b["hard_eval"]["questions"].as_u64().unwrap();
            let run = m["questions_run"].as_u64().unwrap_or(total);
            let note = if run < total { format!(" ({run} of {total} questions in the time box)") } else { String::new() };
            format!("{:.3} / {:.3} / {:.3}{note}", num(&m["recall_at_1"], "r@1"), num(&m["recall_at_10"], "r@10"), num(&m["mrr"], "mrr"))
        });
    }
    let load = f.load_average.map(|l| format!("; load average {:.1} on {} cores at the end", l[0], f.cores)).unwrap_or_default();
    out + &format!("\nFrom `{}` ({}{load}).\n", f.command, f.date)
}

/// `make bench-visual`: a VisualPRM rank with an image, per model, shared prefix vs whole prompts.
fn visual_table() -> String {
    let f = figure("bench-visual");
    let r = &f.figures;
    let n = num(&f, "candidates");
    let secs = |t: &serde_json::Value, k: &str| -> f64 { t[k].as_f64().unwrap_or_else(|| panic!("bench-visual.json: `{k}` missing in {t}")) };
    let mut out = String::from("| model | Best-of-N | total | preprocess | prompts | vision tower | shared prefix | suffixes (whole prompts) | vision share |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut notes = Vec::new();
    let models = r["models"].as_array().expect("bench-visual.json: models");
    for m in models {
        let text = &m["text"];
        let (layers, full) = (secs(text, "layers"), secs(text, "full_layers"));
        let label = if m["kind"] == "8b" {
            format!("VisualPRM-8B widths, {layers} of {full} text layers")
        } else {
            "VisualPRM test model".to_string()
        };
        let mut rows = vec![(label.clone(), &m["shared"], &m["whole"], "")];
        if !m["extrapolated"].is_null() {
            rows.push((format!("the same, extrapolated to {full} text layers"), &m["extrapolated"]["shared"], &m["extrapolated"]["whole"], "*"));
        }
        for (label, shared, whole, mark) in rows {
            for (run, t, first) in [("prefix shared", shared, true), ("whole prompts", whole, false)] {
                // Whole prompts have no shared prefix: their text-model time is all in `suffixes`.
                let prefix = if first { format!("{mark}{:.2} s", secs(t, "prefix_s")) } else { "–".to_string() };
                out += &format!(
                    "| {} | {run} | {mark}{:.2} s | {:.3} s | {:.3} s | {:.2} s | {prefix} | {mark}{:.2} s | **{:.1}%** |\n",
                    if first { label.as_str() } else { "" },
                    secs(t, "total_s"), secs(t, "preprocess_s"), secs(t, "prompts_s"), secs(t, "vision_s"), secs(t, "suffixes_s"),
                    100.0 * secs(t, "vision_s") / secs(t, "total_s")
                );
            }
        }
        let (sh, wh) = (secs(&m["shared"], "total_s"), secs(&m["whole"], "total_s"));
        let mut note = format!(
            "{label} (vision {} layers × hidden {}, text hidden {}, MLP {}): shared prefix {} tokens, {} tokens per candidate after it on average, {} steps; sharing {:.2}× faster than whole prompts",
            m["vision"]["layers"], m["vision"]["hidden"], text["hidden"], text["intermediate"],
            thousands(secs(m, "prefix_tokens")), thousands(secs(m, "mean_suffix_tokens")), m["steps"], wh / sh
        );
        if !m["extrapolated"].is_null() {
            let e = &m["extrapolated"];
            note += &format!(" ({:.2}× at {full} layers)", secs(&e["whole"], "total_s") / secs(&e["shared"], "total_s"));
        }
        note += &format!(
            ", max |Δp| {:.1e} between the two runs' step scores, {}.",
            secs(m, "max_abs_dp"),
            if m["same_pick"] == true { "the same pick" } else { "**different picks**" }
        );
        let fl = &m["flops"];
        let rate = |flop: &str, t: &serde_json::Value, k: &str| secs(fl, flop) / secs(t, k) / 1e9;
        note += &format!(
            " Achieved: vision tower {:.1} GFLOP/s (of {} GFLOP), prefix {:.1}, suffixes {:.1}, whole prompts {:.1} GFLOP/s, against a gemm peak of {:.1} GFLOP/s measured at its start.",
            rate("vision", &m["shared"], "vision_s"), thousands(secs(fl, "vision") / 1e9), rate("prefix", &m["shared"], "prefix_s"),
            rate("suffixes", &m["shared"], "suffixes_s"), rate("whole", &m["whole"], "suffixes_s"), secs(m, "gemm_gflops")
        );
        notes.push(note);
    }
    out += &format!(
        "\nOne rank of {n} candidates with one {}×{} image ({} tiles of 448 with the thumbnail, {} image tokens), f32 on the CPU; the process peaked at {} MiB resident. {}\n",
        r["image_width"], r["image_height"], models[0]["tiles"], thousands(secs(&models[0], "image_tokens")), thousands(secs(r, "peak_rss_mib")), notes.join(" ")
    );
    if models.iter().any(|m| !m["extrapolated"].is_null()) {
        out += &format!("\n\\* extrapolated: {}.\n", r["extrapolation"].as_str().expect("bench-visual.json: extrapolation"));
    }
    out + &sources(&[("bench-visual", &f)])
}

#[test]
fn generated_tables_are_current() {
    let mut text = readme();
    let mut errors = Vec::new();
    let tables = [
        ("serve-flags", serve_table()),
        ("metrics", metrics_table()),
        ("figures-retrieval", retrieval_table()),
        ("figures-engine", engine_table()),
        ("figures-gguf", gguf_table()),
        ("figures-prefix", prefix_table()),
        ("figures-visual", visual_table()),
        ("figures-vs-llamacpp", vs_llamacpp_table()),
        ("figures-label-adaptive", label_adaptive_table()),
        ("figures-depth-drift", depth_drift_table()),
        ("figures-numerics-cost", numerics_cost_table()),
        ("figures-vs-reference", vs_reference_table()),
        ("figures-serve", serve_load_table()),
        ("figures-retrieval-scale", retrieval_scale_table()),
    ];
    for (name, want) in tables {
        if let Err(e) = generated_section(&mut text, name, &want) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        return;
    }
    if std::env::var_os("MEDPRM_BLESS").is_some() {
        // Atomically: the other tests read the README meanwhile.
        let tmp = root().join(format!(".README.md.{}", std::process::id()));
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, root().join("README.md")).unwrap();
        eprintln!("README.md rewritten:\n{}", errors.join("\n"));
    } else {
        panic!("{}\n\nrun `MEDPRM_BLESS=1 cargo test --test readme` and commit README.md", errors.join("\n\n"));
    }
}

#[test]
fn serve_table_agrees_with_serve_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_medprm")).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = flat(&String::from_utf8(out.stdout).unwrap());
    let text = readme();
    let start = text.find("<!-- generated: serve-flags ").expect("marker");
    let row = Regex::new(r"(?m)^\| `(--[a-z0-9-]+)` \| `(MEDPRM_[A-Z0-9_]+)` \| ([^|]+) \|").unwrap();
    let mut n = 0;
    for c in row.captures_iter(&text[start..]) {
        let (flag, env, default) = (&c[1], &c[2], c[3].trim());
        assert!(help.contains(&format!("{flag} ")), "{flag} not in serve --help");
        assert!(help.contains(&format!("[env: {env}")), "{env} not in serve --help");
        if let Some(d) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) {
            assert!(help.contains(&format!("[default: {d}]")), "{flag}: default {d} not in serve --help");
        }
        n += 1;
    }
    assert_eq!(n, help.matches("[env: ").count(), "every flag of serve --help has a README row");
    // No rendering of clap's help in a cell.
    let table = &text[start..start + text[start..].find("<!-- end generated: serve-flags").unwrap()];
    for leak in ["Possible values", "-h, --help", "[default:", "[env:"] {
        assert!(!table.contains(leak), "`{leak}` in the README's serve table");
    }
}

/// Make's variables as the README shows them to a reader: `medprm` installed on PATH, `~` for
/// `$(HOME)`, the defaults of `HOST`, `PORT` and `MEDPRM_HOME`.
fn make_vars(makefile: &str) -> BTreeMap<String, String> {
    let def = Regex::new(r"(?m)^([A-Z_]+)\s*(?:\?=|:=|=)\s*(.*)$").unwrap();
    let mut vars: BTreeMap<String, String> = def.captures_iter(makefile).map(|c| (c[1].to_string(), c[2].trim().to_string())).collect();
    vars.insert("BIN".into(), "medprm".into());
    vars.insert("HOME".into(), "~".into());
    vars
}

fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let var = Regex::new(r"\$\(([A-Z_]+)\)").unwrap();
    let mut s = s.to_string();
    for _ in 0..10 {
        let next = var.replace_all(&s, |c: &regex::Captures| vars.get(&c[1]).cloned().unwrap_or_else(|| panic!("$({}) undefined", &c[1]))).to_string();
        if next == s {
            return s;
        }
        s = next;
    }
    panic!("make variables do not resolve: {s}");
}

/// The `medprm` lines of each Makefile target's recipe.
fn make_commands() -> BTreeMap<String, Vec<String>> {
    let mk = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let vars = make_vars(&mk);
    let mut out = BTreeMap::new();
    let mut target = None;
    for line in mk.lines() {
        if let Some(c) = Regex::new(r"^([a-z][a-z0-9-]*):").unwrap().captures(line) {
            target = Some(c[1].to_string());
        } else if let (Some(t), Some(cmd)) = (&target, line.strip_prefix("\t$(BIN) ")) {
            out.entry(t.clone()).or_insert_with(Vec::new).push(expand(&format!("$(BIN) {cmd}"), &vars));
        }
    }
    out
}

#[test]
fn make_targets_run_the_commands_the_readme_shows() {
    let make = make_commands();
    let text = readme();
    let pair = Regex::new(r"`make ([a-z][a-z0-9-]*)`[^`(]*\(`(medprm [^`]+)`").unwrap();
    let mut seen = Vec::new();
    for c in pair.captures_iter(&text) {
        let (target, shown) = (&c[1], &c[2]);
        let recipes = make.get(target).unwrap_or_else(|| panic!("README pairs `make {target}` with a command, the Makefile has none"));
        assert!(recipes.iter().any(|r| flat(r) == flat(shown)), "README's command for `make {target}` is none of the Makefile's: {shown}\nvs {recipes:?}");
        seen.push(target.to_string());
    }
    for t in ["serve", "bench-engine", "bench-prefix", "bench-serve", "index", "eval-retrieval"] {
        assert!(seen.iter().any(|s| s == t), "README shows no command for `make {t}` (found {seen:?})");
    }
}

#[test]
fn readme_score_example_input_is_in_the_repo() {
    let text = readme();
    let re = Regex::new(r"medprm score [^\n`]*--input (\S+)").unwrap();
    let inputs: Vec<String> = re.captures_iter(&text).map(|c| c[1].to_string()).filter(|p| !p.chars().all(|c| c.is_ascii_uppercase())).collect();
    assert!(!inputs.is_empty(), "README has no runnable `medprm score --input FILE` example");
    for p in inputs {
        let records = medprm::cli::read_records(&root().join(&p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(!records.is_empty(), "{p} is empty");
    }
}
