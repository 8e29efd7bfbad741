//! Figure files: what a measuring command found, with the command line, the date and the machine,
//! written as JSON (`--figures FILE`) so that the README's tables are rendered from them
//! (`tests/readme.rs` checks every figure table against its file) and never typed by hand.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FigureFile {
    /// The command as a reader would type it (`medprm ...`, the arguments as given).
    pub command: String,
    /// When it ran, RFC 3339 UTC.
    pub date: String,
    /// The CPU it ran on (`model name` of /proc/cpuinfo) and the cores the process could use.
    pub cpu: String,
    pub cores: usize,
    /// The system's load averages (1, 5 and 15 minutes, /proc/loadavg) when the command finished:
    /// how much else ran beside it. Absent from files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<[f64; 3]>,
    /// What the command measured (its own report).
    pub figures: serde_json::Value,
}

/// The command line of this process as a reader would type it: the program as `medprm`, the home
/// directory as `~`, arguments with spaces quoted.
pub fn command_line() -> String {
    let home = std::env::var("HOME").ok().filter(|h| h.len() > 1);
    let shown = |a: String| {
        let a = match &home {
            Some(h) if a.starts_with(&format!("{h}/")) => format!("~{}", &a[h.len()..]),
            _ => a,
        };
        if a.contains(' ') { format!("'{a}'") } else { a }
    };
    let mut args = std::env::args();
    args.next();
    std::iter::once("medprm".to_string()).chain(args.map(shown)).collect::<Vec<_>>().join(" ")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Peak resident memory of this process so far (VmHWM), in MiB; `None` off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Writes `figures` with this run's command, date and machine to `path` (its folder created).
pub fn write(path: &Path, figures: &impl Serialize) -> Result<()> {
    let date = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let file = FigureFile {
        command: command_line(),
        date,
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: load_average(),
        figures: serde_json::to_value(figures).map_err(|e| Error::bad_file(path, e))?,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::bad_file(dir, e))?;
    }
    let text = serde_json::to_string_pretty(&file).map_err(|e| Error::bad_file(path, e))? + "\n";
    std::fs::write(path, text).map_err(|e| Error::bad_file(path, e))
}

/// Reads a figure file.
pub fn read(path: &Path) -> Result<FigureFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_written_file_reads_back_with_its_command_and_date() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f.json");
        super::write(&p, &serde_json::json!({"recall": 0.5})).unwrap();
        let f = super::read(&p).unwrap();
        assert_eq!(f.command.split(' ').next(), Some("medprm"), "{}", f.command);
        assert_eq!(f.date.len(), "2026-12-03T06:00:00Z".len(), "{}", f.date);
        assert!(f.date.ends_with('Z'));
        assert_eq!(f.figures["recall"], 0.5);
        assert!(f.cores >= 1);
        let load = f.load_average.expect("Linux has /proc/loadavg");
        assert!(load.iter().all(|l| l.is_finite() && *l >= 0.0), "{load:?}");
    }

    #[test]
    fn a_file_without_load_average_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.json");
        std::fs::write(&p, r#"{"command": "medprm x", "date": "2026-12-03T06:00:00Z", "cpu": "c", "cores": 2, "figures": {}}"#).unwrap();
        assert_eq!(super::read(&p).unwrap().load_average, None);
    }
}
