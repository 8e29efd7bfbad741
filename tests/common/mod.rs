//! Starts the real `medprm serve` binary on 127.0.0.1 (a free port) for integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts the server on the test model with extra flags; does not wait for readiness.
    pub fn start(args: &[&str]) -> Server {
        let model = medprm::tools::testmodel::ensure().expect("test model (run scripts/fetch-assets.sh)");
        Self::start_model(&model, args)
    }

    pub fn start_model(model: &std::path::Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_medprm"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            // MEDPRM_TEST_SERVER_LOG (e.g. `medprm::access=info`) shows the servers' logs.
            .env("RUST_LOG", std::env::var("MEDPRM_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn medprm serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read listen line");
        let url = line.trim().strip_prefix("medprm listening on ").unwrap_or_else(|| panic!("unexpected: {line}")).to_string();
        Server { child, url }
    }

    /// Starts and waits until `/ready` answers 200.
    pub async fn ready(args: &[&str]) -> Server {
        let s = Self::start(args);
        s.wait_ready().await;
        s
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let c = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(r) = c.get(format!("{}/ready", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server not ready in time");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first line of a `/metrics` text that starts with `line_start` (a metric name
/// with its labels), 0 when there is none.
pub fn metric(text: &str, line_start: &str) -> f64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.split_whitespace().last()).map_or(0.0, |v| v.parse().unwrap())
}

pub fn golden() -> serde_json::Value {
    serde_json::from_str(include_str!("../golden/med-prm.json")).unwrap()
}

/// The Python of the pinned client venv (`make client-venv`, which `make test` runs):
/// `$MEDPRM_CLIENT_PYTHON`, else `$MEDPRM_HOME/venv-clients/bin/python`.
pub fn client_python() -> String {
    let p = std::env::var("MEDPRM_CLIENT_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("MEDPRM_HOME").unwrap_or_else(|_| format!("{}/.cache/medprm", std::env::var("HOME").unwrap()));
        format!("{home}/venv-clients/bin/python")
    });
    assert!(std::path::Path::new(&p).exists(), "{p} missing: run `make client-venv` (make test does)");
    p
}
