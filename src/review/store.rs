//! The review tables in the SQLite file `medprm label` writes (WAL mode): users, sessions,
//! versioned review values, the audit log and settings. `label_items` is only read.
//!
//! A review value is one cell: a step label (`step:<i>`, value "1", "0" or "" for cleared) or one
//! of the four review text fields, for an item and a *slot*: slot 0 is the item's final value
//! (shared by everyone when `--reviews-per-item` is 1, the adjudicated value otherwise); slot
//! `<user id>` is that reviewer's own value when several reviewers label each item.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

/// The four review columns of the training layout, in order.
pub const REVIEW_FIELDS: [&str; 4] = ["review_step_accuracy", "review_step_separation", "review_reward_alignment", "review_comments"];
/// Longest review text accepted (characters).
pub const MAX_FIELD_CHARS: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One row of `label_items`.
#[derive(Debug, Clone)]
pub struct LabelItem {
    pub item_id: String,
    pub data_source: String,
    pub num_steps: i64,
    pub n_uncertain: i64,
    pub record_json: String,
}

/// One saved review value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Value {
    pub item_id: String,
    pub slot: i64,
    pub key: String,
    pub value: String,
    pub version: i64,
    pub updated_by: String,
    pub updated_at: String,
}

/// A save refused because the row moved on since the client read it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Conflict {
    pub current: Value,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub at: String,
    pub user: String,
    pub action: String,
    pub item_id: Option<String>,
    pub slot: Option<i64>,
    pub key: Option<String>,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub name: String,
}

pub struct Store {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS review_users (
  id         INTEGER PRIMARY KEY,
  name       TEXT NOT NULL UNIQUE,
  pw_hash    TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS review_sessions (
  token_hash TEXT PRIMARY KEY,
  user_id    INTEGER NOT NULL REFERENCES review_users(id),
  csrf       TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS review_reviews (
  item_id    TEXT NOT NULL,
  slot       INTEGER NOT NULL,
  key        TEXT NOT NULL,
  value      TEXT NOT NULL,
  version    INTEGER NOT NULL,
  updated_by INTEGER NOT NULL REFERENCES review_users(id),
  updated_at TEXT NOT NULL,
  PRIMARY KEY (item_id, slot, key)
);
CREATE TABLE IF NOT EXISTS review_audit (
  id        INTEGER PRIMARY KEY,
  at        TEXT NOT NULL,
  user_id   INTEGER,
  action    TEXT NOT NULL,
  item_id   TEXT,
  slot      INTEGER,
  key       TEXT,
  old_value TEXT,
  new_value TEXT
);
CREATE INDEX IF NOT EXISTS review_audit_item ON review_audit(item_id, id);
CREATE TABLE IF NOT EXISTS review_settings (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
";

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%SZ','now')";

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Store {
    /// Opens the label store (which must exist and hold `label_items` unless `create_labels`),
    /// switches it to WAL and creates the review tables.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Invalid(format!("--db {}: no such file (run `medprm label --db {}` first)", path.display(), path.display())));
        }
        let conn = Connection::open(path)?;
        Self::init(conn, path)
    }

    fn init(conn: Connection, path: &Path) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA foreign_keys=ON;")?;
        let has_items: bool =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='label_items'", [], |r| r.get::<_, i64>(0))? > 0;
        if !has_items {
            return Err(StoreError::Invalid(format!(
                "--db {}: no label_items table (write it with `medprm label --db {}`)",
                path.display(),
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    // ---- settings ----

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute("INSERT INTO review_settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value", params![key, value])?;
        Ok(())
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM review_settings WHERE key=?1", [key], |r| r.get(0)).optional()?)
    }

    // ---- users and sessions ----

    /// Creates a user (or, with `replace`, sets an existing user's password hash).
    pub fn put_user(&self, name: &str, pw_hash: &str, replace: bool) -> Result<i64> {
        let existing: Option<i64> = self.conn.query_row("SELECT id FROM review_users WHERE name=?1", [name], |r| r.get(0)).optional()?;
        match existing {
            Some(id) if replace => {
                self.conn.execute("UPDATE review_users SET pw_hash=?1 WHERE id=?2", params![pw_hash, id])?;
                self.audit(Some(id), "password-set", None, None, None, None, None)?;
                Ok(id)
            }
            Some(_) => Err(StoreError::Invalid(format!("user {name:?} exists (pass --replace to set a new password)"))),
            None => {
                self.conn.execute(&format!("INSERT INTO review_users(name, pw_hash, created_at) VALUES (?1, ?2, {NOW})"), params![name, pw_hash])?;
                let id = self.conn.last_insert_rowid();
                self.audit(Some(id), "user-created", None, None, None, None, None)?;
                Ok(id)
            }
        }
    }

    /// (id, password hash) of a user by name.
    pub fn user_hash(&self, name: &str) -> Result<Option<(i64, String)>> {
        Ok(self.conn.query_row("SELECT id, pw_hash FROM review_users WHERE name=?1", [name], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let mut st = self.conn.prepare("SELECT id, name FROM review_users ORDER BY name")?;
        let rows = st.query_map([], |r| Ok(User { id: r.get(0)?, name: r.get(1)? }))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn create_session(&self, token_hash: &str, user_id: i64, csrf: &str, ttl_s: i64) -> Result<()> {
        self.conn.execute("DELETE FROM review_sessions WHERE expires_at < ?1", [unix_now()])?;
        self.conn.execute(
            &format!("INSERT INTO review_sessions(token_hash, user_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, {NOW}, ?4)"),
            params![token_hash, user_id, csrf, unix_now() + ttl_s],
        )?;
        self.audit(Some(user_id), "login", None, None, None, None, None)?;
        Ok(())
    }

    /// The user and CSRF token of a live session.
    pub fn session(&self, token_hash: &str) -> Result<Option<(User, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT u.id, u.name, s.csrf FROM review_sessions s JOIN review_users u ON u.id = s.user_id WHERE s.token_hash=?1 AND s.expires_at >= ?2",
                params![token_hash, unix_now()],
                |r| Ok((User { id: r.get(0)?, name: r.get(1)? }, r.get(2)?)),
            )
            .optional()?)
    }

    pub fn delete_session(&self, token_hash: &str, user_id: i64) -> Result<()> {
        self.conn.execute("DELETE FROM review_sessions WHERE token_hash=?1", [token_hash])?;
        self.audit(Some(user_id), "logout", None, None, None, None, None)?;
        Ok(())
    }

    // ---- items ----

    /// Items with at least one uncertain step, by item id.
    pub fn queue_items(&self) -> Result<Vec<LabelItem>> {
        self.items_where("WHERE n_uncertain > 0")
    }

    /// Every labelled item (for export), by item id.
    pub fn all_items(&self) -> Result<Vec<LabelItem>> {
        self.items_where("")
    }

    fn items_where(&self, filter: &str) -> Result<Vec<LabelItem>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT item_id, data_source, num_steps, n_uncertain, record_json FROM label_items {filter} ORDER BY item_id"
        ))?;
        let rows = st.query_map([], |r| {
            Ok(LabelItem { item_id: r.get(0)?, data_source: r.get(1)?, num_steps: r.get(2)?, n_uncertain: r.get(3)?, record_json: r.get(4)? })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn item(&self, item_id: &str) -> Result<Option<LabelItem>> {
        Ok(self
            .conn
            .query_row("SELECT item_id, data_source, num_steps, n_uncertain, record_json FROM label_items WHERE item_id=?1", [item_id], |r| {
                Ok(LabelItem { item_id: r.get(0)?, data_source: r.get(1)?, num_steps: r.get(2)?, n_uncertain: r.get(3)?, record_json: r.get(4)? })
            })
            .optional()?)
    }

    // ---- review values ----

    /// Every saved value (all items, slots and keys).
    pub fn all_values(&self) -> Result<Vec<Value>> {
        self.values_where("", params![])
    }

    pub fn item_values(&self, item_id: &str) -> Result<Vec<Value>> {
        self.values_where("WHERE r.item_id=?1", params![item_id])
    }

    fn values_where(&self, filter: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<Value>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT r.item_id, r.slot, r.key, r.value, r.version, u.name, r.updated_at FROM review_reviews r \
             JOIN review_users u ON u.id = r.updated_by {filter} ORDER BY r.item_id, r.slot, r.key"
        ))?;
        let rows = st.query_map(p, |r| {
            Ok(Value {
                item_id: r.get(0)?,
                slot: r.get(1)?,
                key: r.get(2)?,
                value: r.get(3)?,
                version: r.get(4)?,
                updated_by: r.get(5)?,
                updated_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Saves `value` if the row is still at `read_version` (0: never saved); otherwise returns
    /// the current row untouched. Every save is written to the audit log in the same transaction.
    pub fn save(&mut self, item_id: &str, slot: i64, key: &str, value: &str, read_version: i64, user: &User) -> Result<std::result::Result<Value, Conflict>> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let cur: Option<(String, i64, String, String)> = tx
            .query_row(
                "SELECT r.value, r.version, u.name, r.updated_at FROM review_reviews r JOIN review_users u ON u.id = r.updated_by \
                 WHERE r.item_id=?1 AND r.slot=?2 AND r.key=?3",
                params![item_id, slot, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let cur_version = cur.as_ref().map_or(0, |c| c.1);
        if cur_version != read_version {
            let (v, ver, by, at) = cur.unwrap_or_default();
            return Ok(Err(Conflict {
                current: Value { item_id: item_id.into(), slot, key: key.into(), value: v, version: ver, updated_by: by, updated_at: at },
            }));
        }
        let new_version = cur_version + 1;
        tx.execute(
            &format!(
                "INSERT INTO review_reviews(item_id, slot, key, value, version, updated_by, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW}) \
                 ON CONFLICT(item_id, slot, key) DO UPDATE SET value=excluded.value, version=excluded.version, updated_by=excluded.updated_by, updated_at=excluded.updated_at"
            ),
            params![item_id, slot, key, value, new_version, user.id],
        )?;
        let old = cur.map(|c| c.0);
        tx.execute(
            &format!("INSERT INTO review_audit(at, user_id, action, item_id, slot, key, old_value, new_value) VALUES ({NOW}, ?1, 'save', ?2, ?3, ?4, ?5, ?6)"),
            params![user.id, item_id, slot, key, old, value],
        )?;
        let at: String = tx.query_row("SELECT updated_at FROM review_reviews WHERE item_id=?1 AND slot=?2 AND key=?3", params![item_id, slot, key], |r| r.get(0))?;
        tx.commit()?;
        Ok(Ok(Value { item_id: item_id.into(), slot, key: key.into(), value: value.into(), version: new_version, updated_by: user.name.clone(), updated_at: at }))
    }

    // ---- audit ----

    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &self,
        user_id: Option<i64>,
        action: &str,
        item_id: Option<&str>,
        slot: Option<i64>,
        key: Option<&str>,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO review_audit(at, user_id, action, item_id, slot, key, old_value, new_value) VALUES ({NOW}, ?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![user_id, action, item_id, slot, key, old, new],
        )?;
        Ok(())
    }

    /// The item's changes, newest first.
    pub fn item_history(&self, item_id: &str, limit: i64) -> Result<Vec<AuditRow>> {
        let mut st = self.conn.prepare(
            "SELECT a.at, coalesce(u.name, '?'), a.action, a.item_id, a.slot, a.key, a.old_value, a.new_value FROM review_audit a \
             LEFT JOIN review_users u ON u.id = a.user_id WHERE a.item_id=?1 ORDER BY a.id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![item_id, limit], |r| {
            Ok(AuditRow {
                at: r.get(0)?,
                user: r.get(1)?,
                action: r.get(2)?,
                item_id: r.get(3)?,
                slot: r.get(4)?,
                key: r.get(5)?,
                old_value: r.get(6)?,
                new_value: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

/// The `label_items` table `medprm label` writes, for tests and fixtures (review never writes it).
pub use crate::label::store::LABEL_ITEMS_DDL;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A labelled record in the contract's layout: 4 steps, steps 2 and 3 (index 1, 2) uncertain.
    pub fn record(item_id: &str, question: &str) -> serde_json::Value {
        serde_json::json!({
            "sample_id": 1, "question_id": 7, "data_source": "med_qa", "question": question,
            "options": "  A. Aspirin\n  B. Heparin", "correct_answer": "B", "model_answer": "B", "is_correct": true,
            "num_steps": 4,
            "steps": ["Step 1: One. ки", "Step 2: Two. ки", "Step 3: Three. ки", "Step 4: The answer is B. ки"],
            "prm_hard_label": [1, 1, 0, 1], "prm_soft_label": [1.0, 0.5, 0.0, 1.0], "prm_llama_label": [1, 0, 1, 1],
            "orm_label": 1, "full_solution": "Step 1: One. ки Step 2: Two. ки Step 3: Three. ки Step 4: The answer is B. ки",
            "review_step_accuracy": "", "review_step_separation": "", "review_reward_alignment": "", "review_comments": "",
            "item_id": item_id, "hybrid_label": [1, null, null, 1], "hybrid_confidence": [0.9, null, null, 0.95],
            "label_source": ["hybrid", "uncertain", "uncertain", "hybrid"],
            "evidence": [{"id": "g1#s2", "title": "Stroke guideline", "section": "Acute care", "source": "open-medicine", "text": "Give heparin."}],
            "provenance": {"policy": {"url": "http://127.0.0.1:1", "model": "p"}, "judges": [{"name": "llama", "url": "http://127.0.0.1:2", "model": "j"}],
                "mode": "fixed", "steps": []}
        })
    }

    pub fn fixture(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("labels.sqlite");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(LABEL_ITEMS_DDL).unwrap();
        for id in ["f:0:0", "f:1:0"] {
            let r = record(id, "Which drug?");
            c.execute(
                "INSERT INTO label_items VALUES (?1, 'med_qa', 4, 2, ?2, '2026-01-01T00:00:00Z')",
                params![id, r.to_string()],
            )
            .unwrap();
        }
        path
    }

    #[test]
    fn stale_save_is_refused_with_the_current_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&fixture(dir.path())).unwrap();
        let a = User { id: s.put_user("a", "h", false).unwrap(), name: "a".into() };
        let b = User { id: s.put_user("b", "h", false).unwrap(), name: "b".into() };
        let v1 = s.save("f:0:0", 0, "step:1", "1", 0, &a).unwrap().unwrap();
        assert_eq!(v1.version, 1);
        // b read version 0 too: refused, sees a's value.
        let c = s.save("f:0:0", 0, "step:1", "0", 0, &b).unwrap().unwrap_err();
        assert_eq!((c.current.value.as_str(), c.current.version, c.current.updated_by.as_str()), ("1", 1, "a"));
        let v2 = s.save("f:0:0", 0, "step:1", "0", 1, &b).unwrap().unwrap();
        assert_eq!(v2.version, 2);
        let h = s.item_history("f:0:0", 10).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].user.as_str(), h[0].old_value.as_deref(), h[0].new_value.as_deref()), ("b", Some("1"), Some("0")));
    }

    #[test]
    fn refuses_a_file_without_label_items() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.sqlite");
        Connection::open(&p).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
        let e = Store::open(&p).err().unwrap().to_string();
        assert!(e.contains("no label_items table"), "{e}");
        assert!(Store::open(&dir.path().join("none.sqlite")).err().unwrap().to_string().contains("no such file"));
    }
}
