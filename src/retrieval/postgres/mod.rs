//! The PostgreSQL + pgvector retrieval backend: the same searches as the embedded index
//! ([`super::Index`]) answered by a database that many replicas share.
//!
//! * [`schema`]: the tables (`medprm_chunks`, `medprm_corpus`, the BM25 statistics), their
//!   indexes, and the check that the corpus was embedded by the embedder this process loads.
//! * [`search`]: dense by pgvector's cosine distance (HNSW), lexical by BM25 computed in SQL over
//!   PostgreSQL's full-text analysis, hybrid by the embedded backend's section-level RRF.
//! * [`ingest`]: `medprm index --backend postgres`: batches of chunks and vectors by binary COPY,
//!   resumable by chunk id; `--import` reads precomputed vectors (JSONL, or NPY + JSONL).
//!
//! Every connection carries a statement timeout, the pool a wait timeout and every connect a
//! connect timeout: a database that is down or slow gives [`Error::Unavailable`] (HTTP 503 with
//! `Retry-After`), never a hang.

pub mod ingest;
pub mod schema;
pub mod search;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::embed::Embedder;
use super::IndexInfo;
use crate::error::{Error, Result};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db` or a key=value connection string.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest a statement may run on the server, and longest a request waits for a connection.
    pub statement_timeout: Duration,
    /// Expected chunks the BM25 search may select by its conjunctions of rare query terms
    /// (`--db-bm25-budget`; [`search::Bm25Terms`]).
    pub bm25_budget: u64,
}

/// The default of `--db-bm25-budget`.
pub const DEFAULT_BM25_BUDGET: u64 = 4096;

impl PgOptions {
    /// The parsed connection string, with the timeouts every connection gets.
    pub fn config(&self) -> Result<tokio_postgres::Config> {
        let mut c = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| Error::input("database-url", format!("not a PostgreSQL connection string: {e}")))?;
        if c.get_hosts().is_empty() {
            return Err(Error::input("database-url", "names no host"));
        }
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(self.statement_timeout.max(Duration::from_secs(1)));
        }
        c.application_name("medprm");
        // hnsw.ef_search: candidates an HNSW scan keeps; above the hybrid fusion depth and MAX_K
        // so that a LIMIT of up to 100 rows is filled from a wide enough beam.
        // plan_cache_mode: the BM25 statement's plan depends on its parameters (which of its
        // GIN clauses are NULL, the LIMIT); a generic plan of a cached statement cannot see them.
        c.options(format!(
            "-c statement_timeout={} -c hnsw.ef_search=200 -c plan_cache_mode=force_custom_plan",
            self.statement_timeout.as_millis().max(1)
        ));
        Ok(c)
    }

    pub fn pool(&self) -> Result<Pool> {
        let mgr = Manager::from_config(self.config()?, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Verified });
        let t = Some(self.statement_timeout.max(Duration::from_millis(100)));
        Pool::builder(mgr)
            .max_size(self.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(t)
            .create_timeout(t)
            .recycle_timeout(t)
            .build()
            .map_err(|e| Error::Backend(format!("database pool: {e}")))
    }
}

/// The error's own words: the server's message for a database error (tokio-postgres prints
/// only "db error"), else the client's.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// An error of the database, as the serving core reports it: unreachable, closed or timed out
/// is [`Error::Unavailable`]; anything else (a bad statement) is a backend fault.
pub fn db_error(e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    let transient = e.is_closed()
        || e.as_db_error().is_none()
        || matches!(e.code(), Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CANNOT_CONNECT_NOW || *c == SqlState::TOO_MANY_CONNECTIONS || c.code().starts_with("08"));
    if transient {
        Error::Unavailable(format!("retrieval database: {}", describe(&e)))
    } else {
        Error::Backend(format!("retrieval database: {}", describe(&e)))
    }
}

pub fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => Error::Unavailable(format!("retrieval database: {other}")),
    }
}

/// A connected corpus: the pool, the query embedder, and what the corpus holds.
pub struct Postgres {
    pub(crate) pool: Pool,
    pub(crate) embedder: Embedder,
    info: IndexInfo,
    timeout: Duration,
    bm25_budget: u64,
}

impl Postgres {
    /// Connects, checks the schema is there and that the corpus was embedded by the embedder in
    /// `embedder_dir` (same name and dimension). Fails with a message naming what is wrong.
    pub async fn connect(opts: &PgOptions, embedder_dir: &Path) -> Result<Postgres> {
        let pool = opts.pool()?;
        let embedder = Embedder::load(embedder_dir)?;
        let client = pool.get().await.map_err(pool_error)?;
        let meta = schema::read_meta(&client).await?.ok_or_else(|| {
            Error::input("database-url", "the database holds no medprm corpus (load one with `medprm index --backend postgres`)")
        })?;
        schema::check_embedder(&meta, embedder.name(), embedder.dimension())?;
        let row = client.query_one("SELECT count(*) FROM medprm_chunks", &[]).await.map_err(db_error)?;
        let chunks: i64 = row.get(0);
        match schema::read_lexical(&client).await? {
            None => {
                return Err(Error::input(
                    "database-url",
                    "the corpus has no BM25 statistics (an ingest that did not finish, or one by an older medprm): \
                     run `medprm index --backend postgres` again with the same source; it skips the chunks already there and writes them",
                ))
            }
            Some(n) if n != chunks => tracing::warn!(
                statistics = n,
                chunks,
                "the BM25 statistics were built over another number of chunks (rows changed since the last ingest): \
                 lexical scores are approximate until `medprm index --backend postgres` runs again"
            ),
            Some(_) => {}
        }
        let info = IndexInfo { chunks: chunks as usize, corpus: meta.corpus, embedder: meta.embedder, dimension: meta.dimension };
        Ok(Postgres { pool, embedder, info, timeout: opts.statement_timeout, bm25_budget: opts.bm25_budget })
    }

    pub fn info(&self) -> IndexInfo {
        self.info.clone()
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// A cheap `SELECT 1` within the statement timeout: `/ready` while the database is down.
    pub async fn ping(&self) -> Result<()> {
        let check = async {
            let c = self.pool.get().await.map_err(pool_error)?;
            c.query_one("SELECT 1", &[]).await.map_err(db_error)?;
            Ok(())
        };
        match tokio::time::timeout(self.timeout, check).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable("retrieval database: no answer within the statement timeout".into())),
        }
    }
}
