//! The score cache: one JSONL line `{"key", "response"}` per answered request, appended (and
//! flushed) as each answer arrives, so an interrupted run resumes where it stopped and a re-run
//! with other metrics, N or thresholds costs no model time. The key is the SHA-256 of the scorer's
//! identity (model and profile), the endpoint and the request body. Refusals are not cached: a
//! re-run asks again.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of one request.
pub fn key(identity: &str, endpoint: &str, body: &Value) -> String {
    // serde_json keeps the body's field order (built by us, always the same): a stable text.
    sha256_hex(format!("{identity}\n{endpoint}\n{body}").as_bytes())
}

pub struct Cache {
    path: PathBuf,
    entries: Mutex<HashMap<String, Value>>,
    file: Mutex<std::fs::File>,
    /// Entries found when the run started.
    pub loaded: usize,
}

impl Cache {
    /// Opens (creating) `path`; a torn last line (a run killed mid-write) is skipped.
    pub fn open(path: &Path) -> Result<Cache> {
        let mut entries = HashMap::new();
        if path.exists() {
            let f = std::fs::File::open(path).map_err(|e| Error::bad_file(path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| Error::bad_file(path, e))?;
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let (Some(k), Some(r)) = (v.get("key").and_then(|k| k.as_str()), v.get("response")) {
                        entries.insert(k.to_string(), r.clone());
                    }
                }
            }
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::bad_file(path, e))?;
        // A torn line would otherwise glue onto the next entry.
        if std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false) {
            let text = std::fs::read(path).map_err(|e| Error::bad_file(path, e))?;
            if text.last() != Some(&b'\n') {
                file.write_all(b"\n").map_err(|e| Error::bad_file(path, e))?;
            }
        }
        let loaded = entries.len();
        Ok(Cache { path: path.to_path_buf(), entries: Mutex::new(entries), file: Mutex::new(file), loaded })
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.entries.lock().expect("cache lock").get(key).cloned()
    }

    pub fn put(&self, key: &str, response: &Value) -> Result<()> {
        let line = json!({"key": key, "response": response}).to_string();
        {
            let mut f = self.file.lock().expect("cache lock");
            f.write_all(format!("{line}\n").as_bytes()).map_err(|e| Error::bad_file(&self.path, e))?;
            f.flush().map_err(|e| Error::bad_file(&self.path, e))?;
        }
        self.entries.lock().expect("cache lock").insert(key.to_string(), response.clone());
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_survives_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.jsonl");
        let c = Cache::open(&p).unwrap();
        let k = key("m", "/v1/score", &json!({"question": "q"}));
        assert_ne!(k, key("m2", "/v1/score", &json!({"question": "q"})));
        c.put(&k, &json!({"score": 0.5})).unwrap();
        drop(c);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"{\"key\": \"x\", \"resp").unwrap();
        let c = Cache::open(&p).unwrap();
        assert_eq!((c.loaded, c.get(&k)), (1, Some(json!({"score": 0.5}))));
        c.put("y", &json!(1)).unwrap();
        assert_eq!(Cache::open(&p).unwrap().get("y"), Some(json!(1)));
    }
}
