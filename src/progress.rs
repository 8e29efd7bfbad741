//! Progress of the long steps (index build, model load, load tests), on stderr.
//!
//! On a terminal: an indicatif bar or spinner. Anywhere else (a log file, a CI job, a pipe), a bar
//! would only garble the log, so indicatif hides it and we write a plain log line now and then
//! instead: every tenth of the work for a [`Bar`], every [`LOG_EVERY`] for an [`Activity`].

use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often an [`Activity`] that has no terminal logs that it is still running.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether progress is drawn (stderr is a terminal).
pub fn on_terminal() -> bool {
    !ProgressDrawTarget::stderr().is_hidden()
}

/// `1m05s`, `12s`, `0.4s`.
pub fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1}s")
    } else if s < 60.0 {
        format!("{s:.0}s")
    } else {
        let s = s.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A counted step: `what` (e.g. "embedding chunks") over `len` items.
pub struct Bar {
    bar: ProgressBar,
    what: String,
    unit: &'static str,
    len: u64,
    done: u64,
    /// No terminal: log every tenth instead of drawing.
    log: bool,
    logged_tenths: u64,
    start: Instant,
}

impl Bar {
    pub fn new(what: &str, len: u64, unit: &'static str) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{msg}} {{bar:30}} {{pos}}/{{len}} {unit} {{per_sec}} [{{elapsed}}, ETA {{eta}}]"
            ))
            .expect("valid template"),
        );
        bar.set_message(what.to_string());
        let log = bar.is_hidden();
        Bar { bar, what: what.to_string(), unit, len, done: 0, log, logged_tenths: 0, start: Instant::now() }
    }

    /// A bar that neither draws nor logs (`--quiet`).
    pub fn hidden(len: u64) -> Bar {
        let mut b = Bar::new("", len, "");
        b.bar.set_draw_target(ProgressDrawTarget::hidden());
        b.log = false;
        b
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        self.bar.inc(n);
        if !self.log || self.len == 0 {
            return;
        }
        let tenths = self.done * 10 / self.len;
        if tenths > self.logged_tenths && tenths < 10 {
            self.logged_tenths = tenths;
            tracing::info!("{}", self.status());
        }
    }

    /// `embedding chunks: 348/1156 chunks (30%), 3.1 chunks/s, 1m52s elapsed, ETA 4m20s`.
    pub fn status(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(1e-9);
        let eta = if self.done > 0 { fmt_secs(self.len.saturating_sub(self.done) as f64 / rate) } else { "?".into() };
        format!(
            "{}: {}/{} {} ({}%), {:.1} {}/s, {} elapsed, ETA {}",
            self.what,
            self.done,
            self.len,
            self.unit,
            self.done * 100 / self.len.max(1),
            rate,
            self.unit,
            fmt_secs(secs),
            eta
        )
    }

    /// Clears the bar (the caller logs the result).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Runs `f` with the bar out of the way, to print a line to the terminal.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }
}

/// A step of unknown length (loading a model): a spinner with the elapsed time on a terminal when
/// `spinner` is set, else a log line every [`LOG_EVERY`]. Ends when dropped.
pub struct Activity {
    bar: Option<ProgressBar>,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Activity {
    /// Logs `what` at once and starts showing that it runs. Use `spinner = false` where other
    /// threads log to the same terminal (the server).
    pub fn start(what: &str, spinner: bool) -> Activity {
        tracing::info!("{what} ...");
        if spinner && on_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"));
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            return Activity { bar: Some(bar), stop: None, ticker: None };
        }
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        let start = Instant::now();
        let ticker = std::thread::Builder::new()
            .name("medprm-progress".into())
            .spawn(move || {
                // Ends when the sender is dropped (or sends).
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(LOG_EVERY) {
                    tracing::info!("{what}: still running, {} elapsed", fmt_secs(start.elapsed().as_secs_f64()));
                }
            })
            .ok();
        Activity { bar: None, stop: Some(tx), ticker }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        drop(self.stop.take());
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// Runs `f` as an [`Activity`].
pub fn activity<T>(what: &str, spinner: bool, f: impl FnOnce() -> T) -> T {
    let _a = Activity::start(what, spinner);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_secs(0.42), "0.4s");
        assert_eq!(fmt_secs(12.4), "12s");
        assert_eq!(fmt_secs(65.0), "1m05s");
        assert_eq!(fmt_secs(3725.0), "62m05s");
    }

    #[test]
    fn bar_status_counts_rate_and_eta() {
        let mut b = Bar::new("embedding chunks", 200, "chunks");
        b.inc(50);
        let s = b.status();
        assert!(s.starts_with("embedding chunks: 50/200 chunks (25%), "), "{s}");
        assert!(s.contains("chunks/s") && s.contains("ETA ") && !s.contains("ETA ?"), "{s}");
        let fresh = Bar::new("x", 10, "items");
        assert!(fresh.status().ends_with("ETA ?"), "{}", fresh.status());
        b.finish();
    }
}
