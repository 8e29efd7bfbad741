//! Search: BM25, exact dense cosine, and their reciprocal rank fusion at section level.
//!
//! Every ranking breaks ties by chunk order (index order), so results are deterministic.

use std::collections::{BTreeSet, HashMap};

use tantivy::collector::TopDocs;
use tantivy::query::BooleanQuery;
use tantivy::Term;

use super::index::Index;
use super::{Hit, Mode};
use crate::error::{Error, Result};

/// Each ranking contributes its top `FUSION_DEPTH` (or `k`, if larger) to the fusion.
pub const FUSION_DEPTH: usize = 50;
/// The constant of reciprocal rank fusion: a chunk at rank r (1-based) adds `1 / (RRF_K + r)`.
pub const RRF_K: f32 = 60.0;

/// `(chunk index, score)`, best first.
pub type Ranking = Vec<(usize, f32)>;

fn sort_ranking(r: &mut Ranking) {
    r.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

impl Index {
    /// The `k` best chunks for `query` (k in 1..=100).
    pub fn search(&self, query: &str, k: usize, mode: Mode) -> Result<Vec<Hit>> {
        super::check_k(k, "k")?;
        if query.trim().is_empty() {
            return Err(Error::input("query", "must not be empty"));
        }
        let ranking = match mode {
            Mode::Bm25 => self.bm25(query, k)?,
            Mode::Dense => self.dense(query, k)?,
            Mode::Hybrid => {
                let depth = FUSION_DEPTH.max(k);
                let mut fused = rrf_by_section(&[self.bm25(query, depth)?, self.dense(query, depth)?], |c| self.chunks[c].section_id());
                fused.truncate(k);
                fused
            }
        };
        Ok(ranking.into_iter().enumerate().map(|(i, (c, s))| self.hit(c, s, i + 1)).collect())
    }

    fn hit(&self, chunk: usize, score: f32, rank: usize) -> Hit {
        let c = &self.chunks[chunk];
        Hit {
            id: c.id.clone(),
            title: c.title.clone(),
            text: c.text.clone(),
            source: c.source.clone(),
            score,
            rank,
            guideline: c.guideline.clone(),
            section: c.section.clone(),
            organisation: c.organisation.clone(),
            year: c.year,
            doi: c.doi.clone(),
        }
    }

    /// BM25 (tantivy's defaults k1 = 1.2, b = 0.75) over the query's words as the index analyzed
    /// them (lower-cased, stemmed). The query is never parsed as query syntax: it is split into
    /// terms and OR-ed, so clinical punctuation (`CHA2DS2-VASc ≥ 2`, `(A)`, `"`, `:`) can't fail.
    /// A query with no indexable word has no BM25 hits.
    pub fn bm25(&self, query: &str, n: usize) -> Result<Ranking> {
        let mut analyzer = self.tantivy.tokenizer_for_field(self.text_field).map_err(|e| self.err(e))?;
        let mut stream = analyzer.token_stream(query);
        let mut words = BTreeSet::new();
        while let Some(t) = stream.next() {
            words.insert(t.text.clone());
        }
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let terms = words.into_iter().map(|w| Term::from_field_text(self.text_field, &w)).collect();
        let q = BooleanQuery::new_multiterms_query(terms);
        let searcher = self.reader.searcher();
        // Ask for more than n so that ties at the cut are broken by chunk order, not by the
        // collector's heap.
        let top = searcher.search(&q, &TopDocs::with_limit(n + 16).order_by_score()).map_err(|e| self.err(e))?;
        // One segment (checked at open): the document id is the chunk index.
        let mut r: Ranking = top.into_iter().map(|(s, addr)| (addr.doc_id as usize, s)).collect();
        sort_ranking(&mut r);
        r.truncate(n);
        Ok(r)
    }

    /// Exact cosine similarity: one dot product per chunk over the unit-normalised matrix, then a
    /// partial sort. Linear in the corpus: ~0.1 ms per 1e3 chunks of 384-d here, so it stays
    /// interactive up to ~1e5 chunks (tens of ms); beyond ~1e6 chunks an approximate index
    /// (HNSW, IVF-PQ) would take over, with this exact scan kept for re-scoring its candidates.
    pub fn dense(&self, query: &str, n: usize) -> Result<Ranking> {
        let q = self.embedder.embed(query)?;
        let q = candle_core::Tensor::from_vec(q, (self.manifest.dimension, 1), self.embeddings.device())?;
        let scores = self.embeddings.matmul(&q)?.flatten_all()?.to_vec1::<f32>()?;
        let mut r: Ranking = scores.into_iter().enumerate().collect();
        let n = n.min(r.len());
        if n < r.len() {
            r.select_nth_unstable_by(n, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            r.truncate(n);
        }
        sort_ranking(&mut r);
        Ok(r)
    }

    fn err(&self, e: tantivy::TantivyError) -> Error {
        Error::bad_file(self.dir.join("tantivy"), format!("tantivy: {e}"))
    }
}

/// Reciprocal rank fusion: each chunk scores the sum over rankings of `1 / (RRF_K + rank)`.
pub fn rrf(rankings: &[Ranking]) -> Ranking {
    let mut acc: HashMap<usize, f32> = HashMap::new();
    for r in rankings {
        for (pos, (chunk, _)) in r.iter().enumerate() {
            *acc.entry(*chunk).or_default() += 1.0 / (RRF_K + (pos + 1) as f32);
        }
    }
    let mut out: Ranking = acc.into_iter().collect();
    sort_ranking(&mut out);
    out
}

/// Reciprocal rank fusion of sections, spread over their chunks. A section scores the sum over
/// rankings of `1 / (RRF_K + r)`, r being the rank of its best chunk in that ranking; the j-th
/// chunk of a section (0-based, in chunk-level [`rrf`] order) scores its section's score / (1 + j).
///
/// Why: a section is often split into several chunks, and BM25 and the embedder may each rank a
/// different one of them first. Chunk-level fusion then gives that section no agreement bonus,
/// and sections whose one chunk both rankings like (or that have many middling chunks) crowd it
/// out. Fusing at section level credits the agreement; the 1/(1+j) discount spreads the top of the
/// list over sections instead of repeating one (the PRM gets different evidence in each document).
/// `data/retrieval-eval-hard.jsonl` measures this at section level (see docs/retrieval.md).
pub fn rrf_by_section<'a>(rankings: &[Ranking], section: impl Fn(usize) -> &'a str) -> Ranking {
    let mut sections: HashMap<&str, f32> = HashMap::new();
    for r in rankings {
        let mut seen = BTreeSet::new();
        for (pos, (chunk, _)) in r.iter().enumerate() {
            let s = section(*chunk);
            if seen.insert(s) {
                *sections.entry(s).or_default() += 1.0 / (RRF_K + (pos + 1) as f32);
            }
        }
    }
    let chunks = rrf(rankings);
    let mut nth: HashMap<&str, usize> = HashMap::new();
    // (chunk, score, position in the chunk-level order: the tie-break)
    let mut out: Vec<(usize, f32, usize)> = chunks
        .iter()
        .enumerate()
        .map(|(pos, (chunk, _))| {
            let s = section(*chunk);
            let j = nth.entry(s).or_default();
            let score = sections[s] / (1 + *j) as f32;
            *j += 1;
            (*chunk, score, pos)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    out.into_iter().map(|(c, s, _)| (c, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_fusion_credits_agreement_on_a_section_and_spreads_over_sections() {
        // Chunks 0, 1 are section "a"; 2 is "b"; 3, 4 are "c".
        let sec = |c: usize| ["a", "a", "b", "c", "c"][c];
        // BM25 likes chunk 3 then 0; dense likes chunk 2 then 1 then 4.
        let bm25 = vec![(3, 9.0), (0, 8.0), (2, 1.0)];
        let dense = vec![(2, 0.9), (1, 0.8), (4, 0.7)];
        // Chunk level: 2 (1/61 + 1/63) first, then 3 (1/61), 0 and 1 (1/62 each), 4 (1/63).
        assert_eq!(rrf(&[bm25.clone(), dense.clone()]).iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 3, 0, 1, 4]);
        let f = rrf_by_section(&[bm25, dense], sec);
        // Sections: a = 1/62 + 1/62, c = 1/61 + 1/63, b = 1/63 + 1/61 (each ranking saw each
        // section): their best chunks come first, then the second chunks of c and a, halved.
        let (a, c) = (2.0 / 62.0, 1.0 / 61.0 + 1.0 / 63.0);
        assert!(a < c);
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 3, 0, 4, 1]);
        assert!((f[0].1 - c).abs() < 1e-7 && (f[1].1 - c).abs() < 1e-7, "b and c tie, b's chunk first by chunk order: {f:?}");
        assert!((f[2].1 - a).abs() < 1e-7);
        assert!((f[3].1 - c / 2.0).abs() < 1e-7 && (f[4].1 - a / 2.0).abs() < 1e-7, "{f:?}");
        assert!(f.windows(2).all(|w| w[0].1 >= w[1].1));
        // A section that only one ranking saw cannot beat one that both put near the top.
        let f = rrf_by_section(&[vec![(0, 1.0), (3, 0.5)], vec![(4, 1.0), (2, 0.5)]], sec);
        assert_eq!(sec(f[0].0), "c", "{f:?}");
    }

    #[test]
    fn rrf_sums_reciprocal_ranks_and_breaks_ties_by_chunk_order() {
        let a = vec![(7, 9.0), (3, 5.0), (1, 1.0)];
        let b = vec![(3, 0.9), (7, 0.8), (5, 0.1)];
        let f = rrf(&[a, b]);
        // 7 and 3 both get 1/61 + 1/62: tie, chunk 3 comes first. Then 1 and 5 tie at 1/63.
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 7, 1, 5]);
        assert!((f[0].1 - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-7);
        assert!((f[2].1 - 1.0 / 63.0).abs() < 1e-7);
    }
}
