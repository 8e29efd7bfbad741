//! Searches on PostgreSQL, returning what the embedded index returns for the same corpus:
//!
//! * dense: `ORDER BY embedding <=> query LIMIT n` (cosine distance; the HNSW index answers it
//!   once the table is large enough for the planner to prefer it, an exact scan otherwise); the
//!   score is the cosine similarity `1 - distance`.
//! * bm25 (the lexical half): the query's words as `to_tsvector('english', query)` analyses them,
//!   OR-ed, matched against the chunks' `tsv` column and ranked by `ts_rank_cd` (cover density).
//!   PostgreSQL has no BM25; this ranker has no inverse document frequency, so its order differs
//!   from tantivy's BM25 (rare words do not weigh more), and its scores are on another scale.
//! * hybrid: both at depth max(50, k), fused by [`rrf_by_section`], the embedded hybrid's own
//!   function, keyed by the chunks' corpus position (`ord`) so ties break the same way.

use std::collections::HashMap;
use std::time::Duration;

use pgvector::Vector;
use tokio_postgres::Row;

use super::{db_error, pool_error, Postgres};
use crate::error::{Error, Result};
use crate::retrieval::search::{rrf_by_section, FUSION_DEPTH};
use crate::retrieval::{Hit, Mode};

const COLUMNS: &str = "ord, id, title, text, source, guideline, section, organisation, year, doi, section_key";

/// A chunk row and its score.
struct Scored {
    ord: i64,
    score: f32,
    hit: Hit,
    section_key: String,
}

fn scored(r: &Row) -> Scored {
    Scored {
        ord: r.get(0),
        score: r.get::<_, f64>(11) as f32,
        section_key: r.get(10),
        hit: Hit {
            id: r.get(1),
            title: r.get(2),
            text: r.get(3),
            source: r.get(4),
            score: 0.0,
            rank: 0,
            guideline: r.get(5),
            section: r.get(6),
            organisation: r.get(7),
            year: r.get(8),
            doi: r.get(9),
        },
    }
}

/// Best first; ties by corpus position (the embedded backend's chunk order).
fn sort(v: &mut [Scored]) {
    v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.ord.cmp(&b.ord)));
}

impl Postgres {
    /// The `k` best chunks for `query`; `vector` is the query's embedding (needed by dense and
    /// hybrid; the caller computes it on a worker thread).
    pub async fn search(&self, query: &str, vector: Option<Vec<f32>>, k: usize, mode: Mode) -> Result<Vec<Hit>> {
        crate::retrieval::check_k(k, "k")?;
        let need = || vector.clone().ok_or_else(|| Error::Backend("dense search without a query vector".into()));
        let work = async { Ok::<_, Error>(match mode {
            Mode::Bm25 => self.lexical(query, k).await?,
            Mode::Dense => self.dense(need()?, k).await?,
            Mode::Hybrid => {
                let depth = FUSION_DEPTH.max(k);
                let (lex, dense) = tokio::try_join!(self.lexical(query, depth), self.dense(need()?, depth))?;
                let mut rows: HashMap<usize, Scored> = HashMap::new();
                let mut rankings = Vec::new();
                for list in [lex, dense] {
                    rankings.push(list.iter().map(|s| (s.ord as usize, s.score)).collect::<Vec<_>>());
                    for s in list {
                        rows.entry(s.ord as usize).or_insert(s);
                    }
                }
                let keys: HashMap<usize, String> = rows.iter().map(|(o, s)| (*o, s.section_key.clone())).collect();
                let mut fused = rrf_by_section(&rankings, |c| keys[&c].as_str());
                fused.truncate(k);
                fused
                    .into_iter()
                    .map(|(c, score)| {
                        let mut s = rows.remove(&c).expect("fused chunk came from a ranking");
                        s.score = score;
                        s
                    })
                    .collect()
            }
        }) };
        // The statement timeout is enforced by the server; a server that stops answering (a
        // stopped process, a network that drops packets) never ends the statement, so the client
        // keeps its own deadline: a pool wait and a statement, plus a second's grace.
        let deadline = self.timeout * 2 + Duration::from_secs(1);
        let ranked = tokio::time::timeout(deadline, work).await.map_err(|_| {
            Error::Unavailable(format!("retrieval database: no answer within {} ms", deadline.as_millis()))
        })??;
        Ok(ranked
            .into_iter()
            .enumerate()
            .map(|(i, s)| Hit { score: s.score, rank: i + 1, ..s.hit })
            .collect())
    }

    async fn dense(&self, vector: Vec<f32>, n: usize) -> Result<Vec<Scored>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let v = Vector::from(vector);
        // A few rows past n so that ties at the cut are broken by corpus order, not by the scan.
        let sql = format!(
            "SELECT {COLUMNS}, 1 - (embedding <=> $1) AS score FROM medprm_chunks ORDER BY embedding <=> $1 LIMIT $2"
        );
        let rows = client.query(&sql, &[&v, &((n + 16) as i64)]).await.map_err(db_error)?;
        let mut out: Vec<Scored> = rows.iter().map(scored).collect();
        sort(&mut out);
        out.truncate(n);
        Ok(out)
    }

    async fn lexical(&self, query: &str, n: usize) -> Result<Vec<Scored>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        // The query's lexemes, each quoted, OR-ed: never parsed as tsquery syntax, so clinical
        // punctuation cannot fail; a query with no indexable word gives a NULL tsquery, no rows.
        let sql = format!(
            "WITH q AS (
                 SELECT string_agg(quote_literal(l), ' | ')::tsquery AS q
                 FROM unnest(tsvector_to_array(to_tsvector('{cfg}', $1))) AS l)
             SELECT {COLUMNS}, ts_rank_cd(tsv, q.q)::float8 AS score
             FROM medprm_chunks, q WHERE tsv @@ q.q
             ORDER BY score DESC, ord LIMIT $2",
            cfg = super::schema::TS_CONFIG
        );
        let rows = client.query(&sql, &[&query, &(n as i64)]).await.map_err(db_error)?;
        Ok(rows.iter().map(scored).collect())
    }
}
