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

#[test]
fn generated_tables_are_current() {
    let mut text = readme();
    let mut errors = Vec::new();
    for (name, want) in [("serve-flags", serve_table()), ("metrics", metrics_table())] {
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

/// The `medprm` line of each Makefile target's recipe.
fn make_commands() -> BTreeMap<String, String> {
    let mk = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let vars = make_vars(&mk);
    let mut out = BTreeMap::new();
    let mut target = None;
    for line in mk.lines() {
        if let Some(c) = Regex::new(r"^([a-z][a-z0-9-]*):").unwrap().captures(line) {
            target = Some(c[1].to_string());
        } else if let (Some(t), Some(cmd)) = (&target, line.strip_prefix("\t$(BIN) ")) {
            out.insert(t.clone(), expand(&format!("$(BIN) {cmd}"), &vars));
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
        let recipe = make.get(target).unwrap_or_else(|| panic!("README pairs `make {target}` with a command, the Makefile has none"));
        assert_eq!(flat(shown), flat(recipe), "README's command for `make {target}` differs from the Makefile's");
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
