//! The tables of a corpus on PostgreSQL.
//!
//! * `medprm_corpus`: one row: embedder name, dimension, corpus path (checked at start).
//! * `medprm_chunks`: one row per chunk: `id` (primary key, the resume key of ingest), `ord` (the
//!   chunk's position in its corpus: the tie-break of every ranking, as index order is in the
//!   embedded backend), the [`super::super::Hit`] fields, `section_key` (the section id the
//!   hybrid fusion groups by), `tsv` (a generated `to_tsvector('english', text)` column with a
//!   GIN index) and `embedding vector(dim)` (unit rows; an HNSW `vector_cosine_ops` index built
//!   after the bulk load, see [`create_vector_index`]).
//! * `medprm_terms` and `medprm_lexical`: the lexical half's statistics (each lexeme's document
//!   frequency; the corpus's chunk and token counts), which BM25 needs and PostgreSQL's full-text
//!   search does not keep. Written by [`build_term_stats`] at the end of every ingest.

use tokio_postgres::Client;

use super::db_error;
use crate::error::{Error, Result};

/// Text search configuration of the lexical half: English stemming and stop words.
pub const TS_CONFIG: &str = "english";
pub const VECTOR_INDEX: &str = "medprm_chunks_embedding_hnsw";

/// What the corpus was built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusMeta {
    pub embedder: String,
    pub dimension: usize,
    pub corpus: String,
}

/// Creates the extension, tables and the full-text index (idempotent). `dimension` sizes the
/// vector column of a new table.
pub async fn create(client: &Client, dimension: usize) -> Result<()> {
    let sql = format!(
        "CREATE EXTENSION IF NOT EXISTS vector;
         CREATE TABLE IF NOT EXISTS medprm_corpus (
             singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
             embedder text NOT NULL,
             dimension integer NOT NULL,
             corpus text NOT NULL,
             created timestamptz NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS medprm_chunks (
             id text PRIMARY KEY,
             ord bigint NOT NULL,
             guideline text NOT NULL,
             title text NOT NULL,
             section text NOT NULL,
             section_key text NOT NULL,
             source text NOT NULL,
             organisation text,
             year integer,
             doi text,
             text text NOT NULL,
             tsv tsvector GENERATED ALWAYS AS (to_tsvector('{TS_CONFIG}', text)) STORED,
             embedding vector({dimension}) NOT NULL);
         CREATE INDEX IF NOT EXISTS medprm_chunks_tsv_gin ON medprm_chunks USING gin (tsv);
         CREATE TABLE IF NOT EXISTS medprm_terms (lexeme text PRIMARY KEY, docs integer NOT NULL);
         CREATE TABLE IF NOT EXISTS medprm_lexical (
             singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
             docs bigint NOT NULL,
             tokens bigint NOT NULL,
             built timestamptz NOT NULL DEFAULT now());"
    );
    client.batch_execute(&sql).await.map_err(db_error)
}

/// The HNSW cosine index on the vectors (idempotent). Built once after a bulk load: building it
/// over loaded rows is much faster than maintaining it row by row during the load. `memory` is
/// the build's `maintenance_work_mem` (e.g. `1GB`): a graph that outgrows it is finished far more
/// slowly, so a large corpus wants about rows x (4 x dimension + 200) bytes.
pub async fn create_vector_index(client: &Client, memory: &str) -> Result<()> {
    check_memory(memory)?;
    client
        .batch_execute(&format!(
            "SET maintenance_work_mem = '{memory}';
             CREATE INDEX IF NOT EXISTS {VECTOR_INDEX} ON medprm_chunks USING hnsw (embedding vector_cosine_ops);"
        ))
        .await
        .map_err(db_error)
}

/// Rewrites the BM25 statistics from the chunks, in one transaction (searches running meanwhile
/// see the old or the new statistics, never a mix): every lexeme's document frequency
/// (`ts_stat`'s `ndoc`), the number of chunks, and the number of indexed tokens (`ts_stat`'s
/// `nentry` summed: positions, so a word repeated in a chunk counts each time; PostgreSQL keeps at
/// most 256 positions of a lexeme per chunk, and the searches count the same way).
pub async fn build_term_stats(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "BEGIN;
             DELETE FROM medprm_terms;
             DELETE FROM medprm_lexical;
             WITH s AS (SELECT word, ndoc, nentry FROM ts_stat('SELECT tsv FROM medprm_chunks')),
                  t AS (INSERT INTO medprm_terms (lexeme, docs) SELECT word, ndoc FROM s)
             INSERT INTO medprm_lexical (docs, tokens)
                 SELECT (SELECT count(*) FROM medprm_chunks), coalesce(sum(nentry), 0) FROM s;
             COMMIT;
             ANALYZE medprm_terms;",
        )
        .await
        .map_err(db_error)
}

/// A PostgreSQL memory size: digits and a unit (kB, MB, GB).
pub fn check_memory(memory: &str) -> Result<()> {
    let unit = memory.trim_start_matches(|c: char| c.is_ascii_digit());
    let digits = &memory[..memory.len() - unit.len()];
    if digits.is_empty() || !matches!(unit, "kB" | "MB" | "GB") {
        return Err(Error::input("hnsw-build-memory", format!("`{memory}`: expected a size such as 512MB or 4GB")));
    }
    Ok(())
}

/// The corpus row, `None` when the tables are missing or empty.
pub async fn read_meta(client: &Client) -> Result<Option<CorpusMeta>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('medprm_corpus') IS NOT NULL AND to_regclass('medprm_chunks') IS NOT NULL", &[])
        .await
        .map_err(db_error)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client.query_opt("SELECT embedder, dimension, corpus FROM medprm_corpus", &[]).await.map_err(db_error)?;
    Ok(row.map(|r| CorpusMeta { embedder: r.get(0), dimension: r.get::<_, i32>(1) as usize, corpus: r.get(2) }))
}

/// The chunk count the BM25 statistics were built over; `None` when they were never built (an
/// ingest that did not finish, or a database loaded by a medprm without them).
pub async fn read_lexical(client: &Client) -> Result<Option<i64>> {
    let exists: bool =
        client.query_one("SELECT to_regclass('medprm_lexical') IS NOT NULL", &[]).await.map_err(db_error)?.get(0);
    if !exists {
        return Ok(None);
    }
    let row = client.query_opt("SELECT docs FROM medprm_lexical", &[]).await.map_err(db_error)?;
    Ok(row.map(|r| r.get(0)))
}

/// Records the corpus row, or checks it against an existing one.
pub async fn write_meta(client: &Client, meta: &CorpusMeta) -> Result<()> {
    match read_meta(client).await? {
        Some(old) => check_embedder(&old, &meta.embedder, meta.dimension),
        None => {
            client
                .execute(
                    "INSERT INTO medprm_corpus (embedder, dimension, corpus) VALUES ($1, $2, $3)",
                    &[&meta.embedder, &(meta.dimension as i32), &meta.corpus],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        }
    }
}

/// A corpus embedded by another model cannot be searched with this one's query vectors.
pub fn check_embedder(meta: &CorpusMeta, embedder: &str, dimension: usize) -> Result<()> {
    if meta.embedder != embedder || meta.dimension != dimension {
        return Err(Error::input(
            "embedder",
            format!(
                "the database corpus was embedded with `{}` ({}-d) but this process uses `{}` ({}-d): \
                 pass the same embedder, or load the corpus again into an empty database",
                meta.embedder, meta.dimension, embedder, dimension
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedder_mismatch_names_both() {
        let m = CorpusMeta { embedder: "a".into(), dimension: 384, corpus: "c".into() };
        assert!(check_embedder(&m, "a", 384).is_ok());
        let e = check_embedder(&m, "b", 384).unwrap_err().to_string();
        assert!(e.contains("`a` (384-d)") && e.contains("`b` (384-d)"), "{e}");
        assert!(check_embedder(&m, "a", 768).is_err());
    }

    #[test]
    fn memory_sizes() {
        for ok in ["512MB", "4GB", "65536kB"] {
            assert!(check_memory(ok).is_ok(), "{ok}");
        }
        for bad in ["", "GB", "4", "4 GB", "4gb", "1GB'; DROP TABLE x; --"] {
            let e = check_memory(bad).unwrap_err().to_string();
            assert!(e.contains("hnsw-build-memory"), "{bad}: {e}");
        }
    }
}
