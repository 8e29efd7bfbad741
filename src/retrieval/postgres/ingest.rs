//! `medprm index --backend postgres`: loads a corpus into PostgreSQL in batches.
//!
//! Each batch is written by binary `COPY` into a session-local staging table, then moved with
//! `INSERT ... ON CONFLICT (id) DO NOTHING` in the same transaction: a batch is all in or all out,
//! and a run that was killed is resumed by running it again (ids already present are skipped; for
//! a corpus that is embedded here, before embedding them). The HNSW index is built once, after the
//! load (a resumed load into a table that already has it maintains it row by row); the BM25
//! statistics are rewritten at the end of every run.
//!
//! Sources:
//! * a corpus (markdown tree or JSONL, as `medprm index` reads it): chunked and embedded here;
//! * `--import`: precomputed vectors ([`crate::retrieval::import`]: an index directory, JSONL, or
//!   NPY + JSONL metadata), streamed batch by batch, nothing embedded.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Instant;

use pgvector::Vector;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::schema::{self, CorpusMeta};
use super::{db_error, PgOptions};
use crate::error::{Error, Result};
use crate::retrieval::corpus::{self, Chunk};
use crate::retrieval::embed::Embedder;
use crate::retrieval::import::ImportReader;
use crate::retrieval::MAX_CHUNK_TOKENS;

const COLUMNS: &str = "id, ord, guideline, title, section, section_key, source, organisation, year, doi, text, embedding";

/// What one ingest did.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestReport {
    /// Rows in the source.
    pub rows: usize,
    /// Rows written by this run.
    pub inserted: usize,
    /// Rows that were already in the database (a resumed run).
    pub skipped: usize,
    pub load_seconds: f64,
    pub index_seconds: f64,
    /// Writing the BM25 statistics ([`schema::build_term_stats`]).
    pub stats_seconds: f64,
}

/// Where the rows come from.
pub enum Source {
    Corpus(PathBuf),
    Import { file: PathBuf, metadata: Option<PathBuf> },
}

/// Loads `source` into the database at `opts.url`, `batch` rows per transaction.
///
/// `hnsw_memory` is the `maintenance_work_mem` of the HNSW build ([`schema::create_vector_index`]).
pub async fn ingest(opts: &PgOptions, source: &Source, embedder_dir: &Path, batch: usize, hnsw_memory: &str) -> Result<IngestReport> {
    let batch = batch.max(1);
    schema::check_memory(hnsw_memory)?;
    let config = opts.config()?;
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        Error::input("database-url", format!("cannot connect: {}", super::describe(&e)))
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    // A bulk load's statements may run long; the timeout is for serving.
    client.batch_execute("SET statement_timeout = 0").await.map_err(db_error)?;
    let embedder = Embedder::load(embedder_dir)?;
    let dim = embedder.dimension();

    // The rows: (chunk, vector if precomputed), in corpus order; an import is read as a stream.
    let (corpus_name, mut rows) = match source {
        Source::Corpus(path) => {
            let (_, chunks) = crate::progress::activity("reading and chunking the corpus", true, || {
                corpus::load(path, embedder.tokenizer(), MAX_CHUNK_TOKENS)
            })?;
            (canonical(path), Rows::Corpus(chunks.into_iter()))
        }
        Source::Import { file, metadata } => (canonical(file), Rows::Import(Box::new(ImportReader::open(file, metadata.as_deref(), &embedder)?))),
    };
    let total = rows.len();

    schema::create(&client, dim).await?;
    schema::write_meta(&client, &CorpusMeta { embedder: embedder.name().into(), dimension: dim, corpus: corpus_name }).await?;
    client
        .batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS medprm_staging (id text, ord bigint, guideline text, title text, section text,
             section_key text, source text, organisation text, year integer, doi text, text text, embedding vector)",
        )
        .await
        .map_err(db_error)?;
    let vector_type = client.prepare("SELECT NULL::vector").await.map_err(db_error)?.columns()[0].type_().clone();
    let types = [
        Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4, Type::TEXT, Type::TEXT,
        vector_type,
    ];

    let t = Instant::now();
    let mut report = IngestReport { rows: total, inserted: 0, skipped: 0, load_seconds: 0.0, index_seconds: 0.0, stats_seconds: 0.0 };
    let mut bar = crate::progress::Bar::new("loading chunks into PostgreSQL", total as u64, "chunks");
    let mut first = 0;
    loop {
        let part = rows.next_batch(batch)?;
        if part.is_empty() {
            break;
        }
        let ids: Vec<&str> = part.iter().map(|(c, _)| c.id.as_str()).collect();
        let present: std::collections::HashSet<String> = client
            .query("SELECT id FROM medprm_chunks WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let todo: Vec<(usize, &Chunk, Option<&Vec<f32>>)> = part
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| !present.contains(&c.id))
            .map(|(i, (c, v))| (first + i, c, v.as_ref()))
            .collect();
        report.skipped += part.len() - todo.len();
        if !todo.is_empty() {
            let missing: Vec<&str> = todo.iter().filter(|t| t.2.is_none()).map(|t| t.1.text.as_str()).collect();
            let mut embedded = embedder.embed_all(&missing)?.into_iter();
            let vectors: Vec<Vec<f32>> =
                todo.iter().map(|t| t.2.cloned().unwrap_or_else(|| embedded.next().expect("one vector per text"))).collect();
            report.inserted += write_batch(&client, &types, &todo, vectors).await?;
        }
        first += part.len();
        bar.inc(part.len() as u64);
    }
    bar.finish();
    report.load_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    eprintln!("building the HNSW index (vector_cosine_ops) ...");
    schema::create_vector_index(&client, hnsw_memory).await?;
    client.batch_execute("ANALYZE medprm_chunks").await.map_err(db_error)?;
    report.index_seconds = t.elapsed().as_secs_f64();

    // Every run rewrites them, so a resumed or extended load ends with statistics of all rows.
    let t = Instant::now();
    eprintln!("writing the BM25 statistics (document frequencies) ...");
    schema::build_term_stats(&client).await?;
    report.stats_seconds = t.elapsed().as_secs_f64();
    Ok(report)
}

/// One transaction: COPY into the staging table, move the new ids, empty the staging table.
async fn write_batch(client: &Client, types: &[Type], rows: &[(usize, &Chunk, Option<&Vec<f32>>)], vectors: Vec<Vec<f32>>) -> Result<usize> {
    client.batch_execute("BEGIN").await.map_err(db_error)?;
    let result = async {
        let sink = client.copy_in(&format!("COPY medprm_staging ({COLUMNS}) FROM STDIN (FORMAT binary)")).await.map_err(db_error)?;
        let mut w = pin!(BinaryCopyInWriter::new(sink, types));
        for ((ord, c, _), v) in rows.iter().zip(vectors) {
            let ord = *ord as i64;
            let key = c.section_id().to_string();
            let v = Vector::from(v);
            let values: [&(dyn ToSql + Sync); 12] =
                [&c.id, &ord, &c.guideline, &c.title, &c.section, &key, &c.source, &c.organisation, &c.year, &c.doi, &c.text, &v];
            w.as_mut().write(&values).await.map_err(db_error)?;
        }
        w.finish().await.map_err(db_error)?;
        let n = client
            .execute(&format!("INSERT INTO medprm_chunks ({COLUMNS}) SELECT {COLUMNS} FROM medprm_staging ON CONFLICT (id) DO NOTHING"), &[])
            .await
            .map_err(db_error)?;
        client.batch_execute("TRUNCATE medprm_staging; COMMIT").await.map_err(db_error)?;
        Ok(n as usize)
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

fn canonical(p: &Path) -> String {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// The rows of an ingest: a chunked corpus (embedded batch by batch) or a precomputed import.
enum Rows {
    Corpus(std::vec::IntoIter<Chunk>),
    Import(Box<ImportReader>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Corpus(c) => c.len(),
            Rows::Import(r) => r.rows(),
        }
    }

    fn next_batch(&mut self, n: usize) -> Result<Vec<(Chunk, Option<Vec<f32>>)>> {
        match self {
            Rows::Corpus(c) => Ok(c.by_ref().take(n).map(|c| (c, None)).collect()),
            Rows::Import(r) => Ok(r.next_batch(n)?.into_iter().map(|(c, v)| (c, Some(v))).collect()),
        }
    }
}
