//! The one retrieval interface of the serving core: the embedded index (default) or a corpus on
//! PostgreSQL (`--retrieval-backend postgres`). Both return the same [`Hit`]s, ranked the same
//! way (see [`super::postgres::search`] for where the lexical ranker differs). The scoring core
//! (`src/infer/retrieve.rs`) runs the CPU half (embedded search, or the query embedding) on its
//! worker threads and awaits the database.

use std::sync::Arc;

use super::postgres::Postgres;
use super::{Index, IndexInfo};
use crate::error::Result;

#[derive(Clone)]
pub enum Retriever {
    Embedded(Arc<Index>),
    Postgres(Arc<Postgres>),
}

impl Retriever {
    /// `embedded` or `postgres`, as `--retrieval-backend` names them.
    pub fn backend(&self) -> &'static str {
        match self {
            Retriever::Embedded(_) => "embedded",
            Retriever::Postgres(_) => "postgres",
        }
    }

    pub fn info(&self) -> IndexInfo {
        match self {
            Retriever::Embedded(i) => i.info(),
            Retriever::Postgres(p) => p.info(),
        }
    }

    /// Whether searches can be answered now: always for the embedded index, a `SELECT 1` for
    /// PostgreSQL.
    pub async fn check(&self) -> Result<()> {
        match self {
            Retriever::Embedded(_) => Ok(()),
            Retriever::Postgres(p) => p.ping().await,
        }
    }
}
