//! Searches on PostgreSQL, returning what the embedded index returns for the same corpus:
//!
//! * dense: `ORDER BY embedding <=> query LIMIT n` (cosine distance; the HNSW index answers it
//!   once the table is large enough for the planner to prefer it, an exact scan otherwise); the
//!   score is the cosine similarity `1 - distance`.
//! * bm25 (the lexical half): BM25 with tantivy's parameters (k1 = 1.2, b = 0.75, Lucene's idf)
//!   over PostgreSQL's own full-text analysis: the query's lexemes as `to_tsvector('english', _)`
//!   gives them, each chunk's term frequencies and length read from its `tsv` column, document
//!   frequencies and the mean length from the statistics every ingest writes
//!   ([`super::schema::build_term_stats`]). PostgreSQL has no BM25 (and the server bundled for
//!   tests has no BM25 extension), so medprm computes it in SQL, over the chunks that hold rare
//!   combinations of the query's terms, found by the GIN index ([`Bm25Terms`]): exact when the
//!   query's terms are rare enough or a bound proves it, BM25's order over those chunks otherwise.
//! * hybrid: both at depth max(50, k), fused by [`rrf_by_section`], the embedded hybrid's own
//!   function, keyed by the chunks' corpus position (`ord`) so ties break the same way.
//!
//! Where the lexical ranking still differs from the embedded index's tantivy BM25: PostgreSQL's
//! English configuration drops stop words (tantivy's `en_stem` keeps them, so "of" and "with"
//! score there), its parser splits some tokens differently (`CHA2DS2-VASc`), and tantivy stores
//! a chunk's length in one byte (a coarse bucket) where this counts it exactly.

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

/// What a BM25 search on the database did: its scoring rounds and the chunks they scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bm25Work {
    pub rounds: usize,
    pub chunks_scored: u64,
    /// Whether the top n is provably BM25's over the whole corpus ([`Bm25Terms`]).
    pub proven: bool,
}

/// A search's hits, and the BM25 work when it had a lexical half.
#[derive(Debug, Clone)]
pub struct Searched {
    pub hits: Vec<Hit>,
    pub bm25: Option<Bm25Work>,
}

impl Postgres {
    /// The `k` best chunks for `query`; `vector` is the query's embedding (needed by dense and
    /// hybrid; the caller computes it on a worker thread).
    pub async fn search(&self, query: &str, vector: Option<Vec<f32>>, k: usize, mode: Mode) -> Result<Searched> {
        crate::retrieval::check_k(k, "k")?;
        let need = || vector.clone().ok_or_else(|| Error::Backend("dense search without a query vector".into()));
        let work = async { Ok::<_, Error>(match mode {
            Mode::Bm25 => {
                let (ranked, work) = self.lexical(query, k).await?;
                (ranked, Some(work))
            }
            Mode::Dense => (self.dense(need()?, k).await?, None),
            Mode::Hybrid => {
                let depth = FUSION_DEPTH.max(k);
                let ((lex, work), dense) = tokio::try_join!(self.lexical(query, depth), self.dense(need()?, depth))?;
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
                let ranked = fused
                    .into_iter()
                    .map(|(c, score)| {
                        let mut s = rows.remove(&c).expect("fused chunk came from a ranking");
                        s.score = score;
                        s
                    })
                    .collect();
                (ranked, Some(work))
            }
        }) };
        // The statement timeout is enforced by the server; a server that stops answering (a
        // stopped process, a network that drops packets) never ends the statement, so the client
        // keeps its own deadline: a pool wait and a statement, plus a second's grace.
        let deadline = self.timeout * 2 + Duration::from_secs(1);
        let (ranked, bm25) = tokio::time::timeout(deadline, work).await.map_err(|_| {
            Error::Unavailable(format!("retrieval database: no answer within {} ms", deadline.as_millis()))
        })??;
        let hits = ranked.into_iter().enumerate().map(|(i, s)| Hit { score: s.score, rank: i + 1, ..s.hit }).collect();
        Ok(Searched { hits, bm25 })
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

    /// The `n` best chunks by BM25 ([`Bm25Terms`] chooses the chunks to score): one round, or two
    /// when the first found fewer than `n` chunks (the second takes every chunk of any term, up to
    /// the same cap).
    async fn lexical(&self, query: &str, n: usize) -> Result<(Vec<Scored>, Bm25Work)> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stats = client
            .prepare_cached(&format!(
                "SELECT l.lexeme, coalesce(t.docs, 0)::int8, s.docs, s.tokens
                 FROM unnest(tsvector_to_array(to_tsvector('{cfg}', $1))) AS l(lexeme)
                 CROSS JOIN medprm_lexical AS s LEFT JOIN medprm_terms AS t ON t.lexeme = l.lexeme",
                cfg = super::schema::TS_CONFIG
            ))
            .await
            .map_err(db_error)?;
        let rows = client.query(&stats, &[&query]).await.map_err(db_error)?;
        let mut work = Bm25Work::default();
        let Some(first) = rows.first() else { return Ok((Vec::new(), work)) };
        let (docs, tokens): (i64, i64) = (first.get(2), first.get(3));
        let words = client
            .prepare_cached(&format!("SELECT alias, lexemes FROM ts_debug('{cfg}', $1)", cfg = super::schema::TS_CONFIG))
            .await
            .map_err(db_error)?;
        let words = client.query(&words, &[&query]).await.map_err(db_error)?;
        let groups = hyphenated(words.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<Vec<String>>>(1))));
        let terms = Bm25Terms::new(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))), docs, tokens).with_groups(groups);
        if terms.is_empty() {
            return Ok((Vec::new(), work));
        }
        // The chunks to score: those matching any of up to MAX_CLAUSES tsqueries, each its own
        // GIN bitmap scan (PostgreSQL ORs them; one big OR-of-ANDs tsquery is evaluated chunk by
        // chunk over the union of its terms' postings, far slower). Unused clauses are NULL.
        let matches = (1..=MAX_CLAUSES).map(|i| format!("tsv @@ ($3::text[])[{i}]::tsquery")).collect::<Vec<_>>().join(" OR ");
        let columns = COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ");
        let score = client
            .prepare_cached(&format!(
                "WITH q AS (SELECT * FROM unnest($1::text[], $2::float8[]) AS q(lexeme, idf)),
                 c AS (SELECT ctid AS tid, ord, tsv FROM medprm_chunks WHERE {matches} LIMIT $6),
                 s AS (SELECT c.tid, c.ord,
                              sum(q.idf * u.tf * {k1p1} / (u.tf + {k1} * ({one_b} + {b} * u.len / $4))) AS score,
                              count(*) OVER () AS chunks
                       FROM c CROSS JOIN LATERAL (
                           SELECT lexeme, coalesce(array_length(positions, 1), 1)::float8 AS tf,
                                  (sum(coalesce(array_length(positions, 1), 1)) OVER ())::float8 AS len
                           FROM unnest(c.tsv)) AS u
                       JOIN q ON q.lexeme = u.lexeme
                       GROUP BY c.tid, c.ord
                       ORDER BY score DESC, c.ord LIMIT $5)
                 SELECT {columns}, s.score, s.chunks FROM s JOIN medprm_chunks AS m ON m.ctid = s.tid ORDER BY s.score DESC, s.ord",
                k1p1 = K1 + 1.0,
                k1 = K1,
                one_b = 1.0 - B,
                b = B,
            ))
            .await
            .map_err(db_error)?;
        let (lexemes, idfs) = terms.arrays();
        let cap = self.bm25_budget.saturating_mul(CAP_FACTOR).clamp(n as u64, i64::MAX as u64);
        let mut plan = terms.plan(self.bm25_budget);
        let mut earlier: Vec<Scored> = Vec::new();
        loop {
            let clauses = plan.clauses(&terms);
            let rows = client
                .query(&score, &[&lexemes, &idfs, &clauses, &terms.mean_length(), &(n as i64), &(cap as i64)])
                .await
                .map_err(db_error)?;
            work.rounds += 1;
            let scored_now = rows.first().map_or(0, |r| r.get::<_, i64>(12) as u64);
            work.chunks_scored += scored_now;
            let mut ranked: Vec<Scored> = rows.iter().map(scored).collect();
            if ranked.len() < n && !plan.covers_all(&terms) {
                // Fewer chunks hold the rare combinations than asked for: any term will do.
                plan = Plan::all(&terms);
                earlier = ranked;
                continue;
            }
            // A second round cut at the cap may have missed chunks the first one found.
            if !earlier.is_empty() {
                for s in earlier.drain(..) {
                    if !ranked.iter().any(|r| r.ord == s.ord) {
                        ranked.push(s);
                    }
                }
                sort(&mut ranked);
                ranked.truncate(n);
            }
            let complete = scored_now < cap;
            work.proven = complete && (plan.covers_all(&terms) || ranked.last().is_some_and(|s| clears(terms.bound_outside(&plan), s.score as f64)));
            return Ok((ranked, work));
        }
    }
}

/// BM25's k1 and b: tantivy's (and Lucene's) defaults, the embedded index's values.
const K1: f64 = 1.2;
const B: f64 = 0.75;
/// The rarest terms whose pairs (and the three rarest, as a triple) may select chunks.
const COMBINED_TERMS: usize = 8;
/// Clauses of one scoring statement: the single terms together, each pair, the triple.
const MAX_CLAUSES: usize = 1 + COMBINED_TERMS * (COMBINED_TERMS - 1) / 2 + 1;
/// A round scores at most this many times the budget (the estimates assume terms independent;
/// the parts of a compound word such as `CHA2DS2-VASc` always occur together).
const CAP_FACTOR: u64 = 2;

/// Whether a score is above a bound by more than rounding (scores come back as f32).
fn clears(bound: f64, score: f64) -> bool {
    score > bound * (1.0 + 1e-5) + 1e-6
}

/// The query's terms for BM25, rarest first, and the choice of the chunks to score.
///
/// Scoring a chunk means reading its `tsv` (tens of microseconds), and at a million chunks even
/// a query's rarest content word can be in tens of thousands of them, so scoring every chunk
/// that holds any query term (what an exact BM25 must consider) takes seconds. medprm instead
/// scores the chunks matching a few conjunctions of the query's rarest terms: single terms, pairs
/// and the triple of the [`COMBINED_TERMS`] rarest, smallest first by their expected number of
/// chunks (document frequencies, terms taken as independent), while the expected total stays
/// within the budget (`--db-bm25-budget`; at least one conjunction); a round stops reading after
/// twice the budget. A query whose terms' chunks all fit in the budget is ranked exactly.
///
/// A chunk outside the chosen conjunctions scores at most [`Bm25Terms::bound_outside`] (each term
/// adds at most `idf × (k1 + 1)`): when the `n`-th score found is above it (and the round was not
/// cut short), the top `n` is provably BM25's over the whole corpus (the MaxScore argument);
/// otherwise it is BM25's order over the chunks scored, counted in
/// `medprm_retrieval_bm25_unproven_total`.
#[derive(Debug, Clone)]
pub(crate) struct Bm25Terms {
    /// (lexeme, document frequency, idf), rarest first; terms no chunk holds are dropped.
    terms: Vec<(String, i64, f64)>,
    docs: i64,
    tokens: i64,
    /// Lexemes of one hyphenated word ([`hyphenated`]): never combined with each other.
    groups: Vec<Vec<String>>,
}

/// Which chunks a round scores: those holding one of the `singles` terms, or all terms of one of
/// the `combos` (indices into the terms, rarest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    singles: Vec<usize>,
    combos: Vec<Vec<usize>>,
}

impl Plan {
    fn all(terms: &Bm25Terms) -> Plan {
        Plan { singles: (0..terms.terms.len()).collect(), combos: Vec::new() }
    }

    /// Whether every term is a single: every chunk holding any query term is scored (exact).
    pub(crate) fn covers_all(&self, terms: &Bm25Terms) -> bool {
        self.singles.len() == terms.terms.len()
    }

    /// The tsqueries (text) of the round, NULL-padded to [`MAX_CLAUSES`].
    pub(crate) fn clauses(&self, terms: &Bm25Terms) -> Vec<Option<String>> {
        let lex = |i: &usize| tsquery_lexeme(&terms.terms[*i].0);
        let mut out = Vec::with_capacity(MAX_CLAUSES);
        out.push((!self.singles.is_empty()).then(|| self.singles.iter().map(lex).collect::<Vec<_>>().join(" | ")));
        out.extend(self.combos.iter().map(|c| Some(c.iter().map(lex).collect::<Vec<_>>().join(" & "))));
        out.resize(MAX_CLAUSES, None);
        out
    }
}

/// The lexemes of each hyphenated word, from `ts_debug`'s (alias, lexemes) rows: PostgreSQL's
/// parser gives the whole word (`numhword`, `asciihword`, `hword`) and then each part
/// (`hword_*`), so `CHA2DS2-VASc` yields `cha2ds2-vasc`, `cha2ds2` and `vasc`, which occur
/// together in every chunk that has the word: they are not independent terms.
pub(crate) fn hyphenated(rows: impl IntoIterator<Item = (String, Option<Vec<String>>)>) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for (alias, lexemes) in rows {
        if alias == "blank" {
            continue;
        }
        if alias.ends_with("hword") && !alias.starts_with("hword_") {
            groups.push(lexemes.unwrap_or_default());
            open = true;
        } else if open && alias.starts_with("hword_") {
            groups.last_mut().expect("open group").extend(lexemes.unwrap_or_default());
        } else {
            open = false;
        }
    }
    groups.retain(|g| g.len() > 1);
    groups
}

/// A lexeme as a tsquery operand: quoted, so it is taken as it is (never parsed as operators or
/// normalised again); inside quotes a quote is doubled and a backslash escaped.
pub(crate) fn tsquery_lexeme(l: &str) -> String {
    format!("'{}'", l.replace('\\', "\\\\").replace('\'', "''"))
}

impl Bm25Terms {
    pub(crate) fn new(terms: impl IntoIterator<Item = (String, i64)>, docs: i64, tokens: i64) -> Bm25Terms {
        let n = docs.max(1) as f64;
        let mut terms: Vec<(String, i64, f64)> = terms
            .into_iter()
            .filter(|(_, df)| *df > 0)
            .map(|(l, df)| {
                let df = df.min(docs.max(1));
                let idf = (1.0 + (n - df as f64 + 0.5) / (df as f64 + 0.5)).ln();
                (l, df, idf)
            })
            .collect();
        terms.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Bm25Terms { terms, docs, tokens, groups: Vec::new() }
    }

    pub(crate) fn with_groups(mut self, groups: Vec<Vec<String>>) -> Bm25Terms {
        self.groups = groups;
        self
    }

    /// Whether terms `a` and `b` come from one hyphenated word.
    fn related(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.terms[a].0, &self.terms[b].0);
        self.groups.iter().any(|g| g.contains(x) && g.contains(y))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Mean chunk length in indexed tokens (at least 1).
    pub(crate) fn mean_length(&self) -> f64 {
        (self.tokens as f64 / self.docs.max(1) as f64).max(1.0)
    }

    /// The lexemes and their idfs, rarest first.
    pub(crate) fn arrays(&self) -> (Vec<String>, Vec<f64>) {
        (self.terms.iter().map(|t| t.0.clone()).collect(), self.terms.iter().map(|t| t.2).collect())
    }

    fn upper(&self, i: usize) -> f64 {
        self.terms[i].2 * (K1 + 1.0)
    }

    /// Expected chunks holding every term of `c`, the terms taken as independent.
    fn expected(&self, c: &[usize]) -> f64 {
        let n = self.docs.max(1) as f64;
        c.iter().fold(n, |acc, &i| acc * self.terms[i].1 as f64 / n)
    }

    /// The first round's conjunctions within `budget` expected chunks (see [`Bm25Terms`]).
    pub(crate) fn plan(&self, budget: u64) -> Plan {
        let total: i64 = self.terms.iter().map(|t| t.1).sum();
        if total <= budget as i64 {
            return Plan::all(self);
        }
        let k = COMBINED_TERMS.min(self.terms.len());
        let mut candidates: Vec<Vec<usize>> = (0..self.terms.len()).map(|i| vec![i]).collect();
        for i in 0..k {
            for j in i + 1..k {
                candidates.push(vec![i, j]);
            }
        }
        if k >= 3 {
            candidates.push(vec![0, 1, 2]);
        }
        candidates.retain(|c| c.iter().enumerate().all(|(p, &a)| c[p + 1..].iter().all(|&b| !self.related(a, b))));
        candidates.sort_by(|a, b| self.expected(a).total_cmp(&self.expected(b)).then_with(|| a.cmp(b)));
        let mut chosen: Vec<Vec<usize>> = Vec::new();
        let mut sum = 0.0;
        for c in candidates {
            let e = self.expected(&c);
            if !chosen.is_empty() && sum + e > budget as f64 {
                break;
            }
            sum += e;
            chosen.push(c);
        }
        // A conjunction that includes a chosen one adds no chunk.
        let kept: Vec<Vec<usize>> =
            chosen.iter().filter(|c| !chosen.iter().any(|d| d != *c && d.iter().all(|x| c.contains(x)))).cloned().collect();
        let (singles, combos): (Vec<_>, Vec<_>) = kept.into_iter().partition(|c| c.len() == 1);
        let mut singles: Vec<usize> = singles.into_iter().map(|c| c[0]).collect();
        singles.sort_unstable();
        Plan { singles, combos }
    }

    /// The most a chunk that `plan` did not score can score: it holds none of the single terms
    /// and not all terms of any conjunction; any other term may be there. The largest such set
    /// is found by trying every subset of the conjunctions' terms (at most [`COMBINED_TERMS`]).
    pub(crate) fn bound_outside(&self, plan: &Plan) -> f64 {
        let mut combo_terms: Vec<usize> = plan.combos.iter().flatten().copied().filter(|i| !plan.singles.contains(i)).collect();
        combo_terms.sort_unstable();
        combo_terms.dedup();
        let free: f64 = (0..self.terms.len())
            .filter(|i| !plan.singles.contains(i) && !combo_terms.contains(i))
            .map(|i| self.upper(i))
            .sum();
        let mut best = 0.0f64;
        for mask in 0u32..(1 << combo_terms.len()) {
            let has = |i: &usize| combo_terms.iter().position(|t| t == i).is_some_and(|p| mask & (1 << p) != 0);
            if plan.combos.iter().any(|c| c.iter().all(has)) {
                continue;
            }
            let s: f64 = combo_terms.iter().enumerate().filter(|(p, _)| mask & (1 << p) != 0).map(|(_, &i)| self.upper(i)).sum();
            best = best.max(s);
        }
        best + free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Bm25Terms {
        Bm25Terms::new(
            [("common".to_string(), 600_000), ("rare".into(), 40), ("mid".into(), 3_000), ("absent".into(), 0), ("often".into(), 90_000)],
            1_000_000,
            120_000_000,
        )
    }

    #[test]
    fn rarest_first_with_lucene_idf() {
        let t = terms();
        let (lex, idf) = t.arrays();
        assert_eq!(lex, ["rare", "mid", "often", "common"]);
        assert!((idf[0] - (1.0f64 + (1e6 - 40.0 + 0.5) / 40.5).ln()).abs() < 1e-12);
        assert!(idf[0] > idf[1] && idf[1] > idf[2] && idf[2] > idf[3] && idf[3] > 0.0);
        assert_eq!(t.mean_length(), 120.0);
    }

    #[test]
    fn conjunctions_smallest_first_within_the_budget() {
        let t = terms(); // rare 40, mid 3000, often 90k, common 600k of 1M
        let ub: Vec<f64> = t.arrays().1.iter().map(|i| i * 2.2).collect();
        // Everything fits: exact, nothing outside.
        let all = t.plan(10_000_000);
        assert!(all.covers_all(&t));
        assert_eq!(t.bound_outside(&all), 0.0);
        assert_eq!(all.clauses(&t)[0].as_deref(), Some("'rare' | 'mid' | 'often' | 'common'"));
        assert!(all.clauses(&t)[1..].iter().all(Option::is_none));
        // Budget 4096. Expected sizes: rare&mid&often 0.01, rare&mid 0.12, rare&often 3.6,
        // rare&common 24, rare 40, mid&often 270, mid&common 1800, mid 3000 (over the budget).
        // rare covers every conjunction with rare; left: rare, mid&often, mid&common.
        let p = t.plan(4096);
        assert_eq!(p, Plan { singles: vec![0], combos: vec![vec![1, 2], vec![1, 3]] });
        let c = p.clauses(&t);
        assert_eq!(c.len(), MAX_CLAUSES);
        assert_eq!(c[..3], [Some("'rare'".to_string()), Some("'mid' & 'often'".into()), Some("'mid' & 'common'".into())]);
        assert!(c[3..].iter().all(Option::is_none));
        // Outside: no rare; not mid with often or common: either mid alone or often + common.
        assert!((t.bound_outside(&p) - ub[1].max(ub[2] + ub[3])).abs() < 1e-12);
        // One term over the budget: it is every term, so the plan is exact.
        let one = Bm25Terms::new([("a".to_string(), 500_000)], 1_000_000, 1);
        assert!(one.plan(10).covers_all(&one));
        // A tiny budget still takes the smallest conjunction (the triple).
        let p = t.plan(0);
        assert_eq!(p, Plan { singles: vec![], combos: vec![vec![0, 1, 2]] });
        assert!(p.clauses(&t)[0].is_none());
        // Outside: any two of the three, and common freely.
        assert!((t.bound_outside(&p) - (ub[0] + ub[1] + ub[3])).abs() < 1e-12);
        // Terms beyond the combined ones are only ever singles, and free otherwise.
        let many = Bm25Terms::new((0..10).map(|i| (format!("t{i}"), 90_000 * (i + 1))), 1_000_000, 1);
        let p = many.plan(15_000);
        assert!(p.combos.iter().flatten().all(|&i| i < COMBINED_TERMS) && p.singles.is_empty(), "{p:?}");
        let ub: Vec<f64> = many.arrays().1.iter().map(|i| i * 2.2).collect();
        assert!(many.bound_outside(&p) >= ub[8] + ub[9]);
    }

    #[test]
    fn parts_of_a_hyphenated_word_are_not_combined() {
        let row = |a: &str, l: Option<&[&str]>| (a.to_string(), l.map(|l| l.iter().map(|s| s.to_string()).collect()));
        // ts_debug('english', 'CHA2DS2-VASc of 3, e-mail'), abridged.
        let groups = hyphenated([
            row("numhword", Some(&["cha2ds2-vasc"])),
            row("hword_numpart", Some(&["cha2ds2"])),
            row("blank", None),
            row("hword_asciipart", Some(&["vasc"])),
            row("blank", None),
            row("asciiword", Some(&[])),
            row("uint", Some(&["3"])),
            row("asciihword", Some(&["e-mail"])),
            row("hword_asciipart", Some(&["e"])),
            row("hword_asciipart", Some(&["mail"])),
        ]);
        assert_eq!(groups, [vec!["cha2ds2-vasc", "cha2ds2", "vasc"], vec!["e-mail", "e", "mail"]]);
        let t = Bm25Terms::new(
            [("cha2ds2".to_string(), 11_000), ("cha2ds2-vasc".into(), 11_000), ("vasc".into(), 12_000), ("3".into(), 300_000)],
            1_000_000,
            1,
        )
        .with_groups(groups);
        let p = t.plan(2048);
        // Without the groups, cha2ds2 & cha2ds2-vasc (expected 121, in fact 11,000) came first.
        assert!(p.combos.iter().all(|c| c.contains(&3)), "{p:?}");
    }

    #[test]
    fn lexemes_are_quoted_for_tsquery() {
        assert_eq!(tsquery_lexeme("gout"), "'gout'");
        assert_eq!(tsquery_lexeme("o'neil"), "'o''neil'");
        assert_eq!(tsquery_lexeme("a\\b"), "'a\\\\b'");
        assert_eq!(tsquery_lexeme("a & !b"), "'a & !b'");
    }

    #[test]
    fn clearing_needs_more_than_rounding() {
        assert!(clears(10.0, 10.01));
        assert!(!clears(10.0, 10.00001));
        assert!(!clears(10.0, 9.0));
    }
}
