//! The label store (SQLite, WAL): every finished rollout request and judge verdict as it arrives,
//! keyed by a hash of the request (`label_requests`), failures (`label_failures`), and the review
//! queue `label_items` (one row per fully labelled solution, the JSONL line in `record_json`).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The review queue: one row per fully labelled solution, `record_json` its JSONL line
/// (`medprm review` reads it; its tests create it with this text).
pub const LABEL_ITEMS_DDL: &str = "CREATE TABLE IF NOT EXISTS label_items (
  item_id      TEXT PRIMARY KEY,
  data_source  TEXT NOT NULL,
  num_steps    INTEGER NOT NULL,
  n_uncertain  INTEGER NOT NULL,
  record_json  TEXT NOT NULL,
  labelled_at  TEXT NOT NULL
);";

/// The resume cache and the failures, beside [`LABEL_ITEMS_DDL`].
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS label_requests (
  key               TEXT PRIMARY KEY,
  kind              TEXT NOT NULL,
  item_id           TEXT NOT NULL,
  step              INTEGER,
  response_json     TEXT NOT NULL,
  prompt_tokens     INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  created_at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS label_failures (
  item_id   TEXT NOT NULL,
  stage     TEXT NOT NULL,
  error     TEXT NOT NULL,
  failed_at TEXT NOT NULL
);
";

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Cached {
    pub response: Value,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub struct Store {
    conn: Mutex<Connection>,
    path: std::path::PathBuf,
}

/// The key of a request: SHA-256 of its kind, endpoint, model and body (canonical JSON).
pub fn request_key(kind: &str, url: &str, body: &Value) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(url.as_bytes());
    h.update([0]);
    h.update(serde_json::to_string(body).expect("JSON values serialise").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 UTC, e.g. `2026-12-03T07:10:00Z`.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 is a valid nanosecond");
    now.format(&time::format_description::well_known::Rfc3339).expect("RFC 3339 formats any UTC time")
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let err = |e: rusqlite::Error| Error::bad_file(path, e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::bad_file(path, format!("cannot switch to WAL journal mode (got {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL;").map_err(err)?;
        conn.execute_batch(LABEL_ITEMS_DDL).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Store { conn: Mutex::new(conn), path: path.to_path_buf() })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::bad_file(&self.path, e)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Result<Option<Cached>> {
        let row = self
            .conn()
            .query_row("SELECT response_json, prompt_tokens, completion_tokens FROM label_requests WHERE key = ?1", [key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(j, p, c)| {
            let response = serde_json::from_str(&j).map_err(|e| Error::bad_file(&self.path, format!("label_requests[{key}]: {e}")))?;
            Ok(Cached { response, prompt_tokens: p as u64, completion_tokens: c as u64 })
        })
        .transpose()
    }

    pub fn put(&self, key: &str, kind: &str, item_id: &str, step: Option<usize>, c: &Cached) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO label_requests (key, kind, item_id, step, response_json, prompt_tokens, completion_tokens, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![key, kind, item_id, step.map(|s| s as i64), c.response.to_string(), c.prompt_tokens as i64, c.completion_tokens as i64, now_rfc3339()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn upsert_item(&self, item_id: &str, data_source: &str, num_steps: usize, n_uncertain: usize, record_json: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO label_items (item_id, data_source, num_steps, n_uncertain, record_json, labelled_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(item_id) DO UPDATE SET data_source = excluded.data_source, num_steps = excluded.num_steps,
                   n_uncertain = excluded.n_uncertain, record_json = excluded.record_json, labelled_at = excluded.labelled_at",
                params![item_id, data_source, num_steps as i64, n_uncertain as i64, record_json, now_rfc3339()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The stored JSONL line of a labelled solution.
    pub fn item(&self, item_id: &str) -> Result<Option<String>> {
        self.conn()
            .query_row("SELECT record_json FROM label_items WHERE item_id = ?1", [item_id], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn record_failure(&self, item_id: &str, stage: &str, error: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO label_failures (item_id, stage, error, failed_at) VALUES (?1, ?2, ?3, ?4)",
                params![item_id, stage, error, now_rfc3339()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_requests_and_items_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.sqlite");
        let k = request_key("rollout", "http://x", &serde_json::json!({"prompt": "a", "seed": 1}));
        assert_eq!(k.len(), 64);
        assert_ne!(k, request_key("rollout", "http://x", &serde_json::json!({"prompt": "a", "seed": 2})));
        {
            let s = Store::open(&p).unwrap();
            assert!(s.get(&k).unwrap().is_none());
            s.put(&k, "rollout", "f:0:0", Some(1), &Cached { response: serde_json::json!({"texts": ["x"]}), prompt_tokens: 3, completion_tokens: 4 }).unwrap();
            s.upsert_item("f:0:0", "src", 2, 1, "{\"a\":1}").unwrap();
            s.upsert_item("f:0:0", "src", 2, 0, "{\"a\":2}").unwrap();
        }
        let s = Store::open(&p).unwrap();
        let c = s.get(&k).unwrap().unwrap();
        assert_eq!((c.prompt_tokens, c.completion_tokens), (3, 4));
        assert_eq!(s.item("f:0:0").unwrap().as_deref(), Some("{\"a\":2}"));
        let n: i64 = s.conn().query_row("SELECT n_uncertain FROM label_items", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
        let mode: String = s.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn rfc3339_dates() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
