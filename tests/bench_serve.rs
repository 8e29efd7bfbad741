//! `medprm bench serve` against the real server: a row per concurrency level as soon as that level
//! ends, and on SIGINT the running level's row over the requests that had finished, exit 130.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::Server;

#[tokio::test]
async fn rows_come_per_level_and_sigint_prints_the_partial_level() {
    // Every batch waits 2 s for company: level 2's requests are still queued when the signal
    // comes right after level 1's row.
    let s = Server::ready(&["--max-queue-delay-ms", "2000"]).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["bench", "serve", "--url", &s.url(""), "--concurrency", "1,2", "--requests", "2", "--candidates", "2"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("a line").unwrap();
    assert_eq!(next(), "2 rank requests of 2 candidates per level");
    assert!(next().trim_start().starts_with("concurrency"));
    // Level 1 is printed while level 2 runs (the process is still alive to be signalled).
    let row1: Vec<String> = next().split_whitespace().map(String::from).collect();
    assert_eq!(row1[..4], ["1", "2", "0", "0"], "level 1: 2 ok, no 429, no failure: {row1:?}");
    assert!(child.try_wait().unwrap().is_none(), "bench ended before level 2");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let row2 = next();
    assert!(row2.ends_with("(interrupted: requests finished so far)"), "{row2}");
    let cols: Vec<&str> = row2.split_whitespace().collect();
    assert_eq!(cols[..4], ["2", "0", "0", "0"], "level 2 had finished nothing: {row2}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped by a signal"));
}
