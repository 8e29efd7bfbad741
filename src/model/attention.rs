//! Causal attention and rotary embeddings on CPU for f32 activations.
//!
//! The generic path in [`super::llama`] builds the whole score matrix of a query block, adds a
//! mask tensor, runs softmax and multiplies by the values: every key is scored, masked ones
//! included, and the block's scores go through memory three times. Here each query block walks
//! the keys in blocks with an online softmax (running row maximum and sum, the output rescaled
//! when the maximum moves): key blocks wholly after the block's last position are never touched,
//! the scores of one key block stay in cache, and the exponentials run vectorised. A shared
//! prefix's keys are read where they are, not copied in front of every sequence's own.
//!
//! Layout: activations are rows of `(heads · head_dim)`, head-major within a row — exactly what
//! the q/k/v projections produce and what the output projection reads, so nothing is transposed.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::config::RopeStyle;
use super::simd::{self, Kernels};

/// Query rows of one sequence scored together (per query head).
const QUERY_BLOCK: usize = 64;
/// Keys per block of the online softmax: torch's CPU flash attention's (`kvSplitSize`), whose
/// blocks — and so whose rounding — `attend_block` follows.
const KEY_BLOCK: usize = 512;

/// The head geometry of a layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Keys at most this far behind a query (`None`: all earlier keys).
    pub window: Option<usize>,
}

/// Keys and values, rows of `(kv_heads · head_dim)`, already rotated.
#[derive(Debug, Clone, Copy)]
pub struct KeyValues<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Rows per sequence (right-padded sequences, `starts` empty).
    pub len: usize,
    /// Packed sequences: sequence `i`'s rows are `starts[i]..starts[i + 1]` (no padding).
    /// Empty: every sequence holds `len` rows, sequence `i` from row `i · len`.
    pub starts: &'a [usize],
    /// Absolute position of each sequence's first row.
    pub first_position: usize,
    /// One set of rows that every sequence reads (a shared prefix), instead of `len` rows each.
    pub shared: bool,
}

impl KeyValues<'_> {
    /// The first row and the row count of sequence `seq`'s keys.
    pub fn span(&self, seq: usize) -> (usize, usize) {
        if self.shared {
            (0, self.len)
        } else if self.starts.is_empty() {
            (seq * self.len, self.len)
        } else {
            (self.starts[seq], self.starts[seq + 1] - self.starts[seq])
        }
    }
}

/// A query row: the sequence it belongs to and its absolute position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRow {
    pub seq: usize,
    pub pos: usize,
}

/// `softmax(q kᵀ / √d + causal mask) v` for every row of `q` (rows, heads · head_dim), rotated.
/// Row `i` is `rows[i]` and sees the keys of `sources` (in order; a shared prefix first) at
/// absolute positions up to its own. Rows of one sequence must be consecutive.
/// Returns (rows, heads · head_dim).
pub fn causal_attention(h: Heads, q: &[f32], rows: &[QueryRow], sources: &[KeyValues<'_>]) -> Vec<f32> {
    let width = h.heads * h.head_dim;
    assert_eq!(q.len(), rows.len() * width, "query rows");
    assert!(h.heads % h.kv_heads == 0, "query heads must be a multiple of kv heads");
    let mut out = vec![0f32; q.len()];
    // Consecutive rows of one sequence, at most QUERY_BLOCK of them.
    let mut blocks = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let seq = rows[start].seq;
        let mut end = start + 1;
        while end < rows.len() && rows[end].seq == seq && end - start < QUERY_BLOCK {
            end += 1;
        }
        blocks.push(start..end);
        start = end;
    }
    let mut outs = Vec::with_capacity(blocks.len());
    let mut rest = out.as_mut_slice();
    for b in &blocks {
        let (head, tail) = rest.split_at_mut(b.len() * width);
        outs.push(head);
        rest = tail;
    }
    let kernel = simd::kernels();
    blocks.into_par_iter().zip(outs).for_each(|(range, out)| {
        let q = &q[range.start * width..range.end * width];
        attend_block(h, q, &rows[range], sources, out, kernel);
    });
    out
}

/// Scratch of one query block for one kv head: `n_rep · m` rows (query head-major).
struct Scratch {
    q: Vec<f32>,
    /// The key block's keys transposed, (head_dim × keys), and its values, (keys × head_dim).
    kt: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// Where each key position of sequence `seq` lies: (first position, keys, first row, source).
fn key_spans<'a>(sources: &'a [KeyValues<'a>], seq: usize) -> Vec<(usize, usize, usize, &'a KeyValues<'a>)> {
    let spans: Vec<_> = sources
        .iter()
        .map(|s| {
            let (first, len) = s.span(seq);
            (s.first_position, len, first, s)
        })
        .filter(|s| s.1 > 0)
        .collect();
    debug_assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0), "a sequence's key sources must follow one another");
    spans
}

/// One query block (rows of one sequence) against the sequence's keys, in the order of torch's
/// CPU flash attention (what transformers' `sdpa` runs), so that the rounding is the same: keys
/// in blocks of `KEY_BLOCK` at absolute positions from 0 (the last block shorter), whichever
/// sources they come from; per block `q·kᵀ` (one FMA chain per score), the causal mask, times
/// `1/√d`, the running maximum, `exp_sub_sum`, the running sum `block + e^(old − new)·sum`, the
/// output rescaled by `e^(old − new)` and `+= p·v` with the keys split as torch's matmul splits
/// them (`numerics::k_blocks`); at the end the output times `1/sum`.
fn attend_block(h: Heads, q: &[f32], rows: &[QueryRow], sources: &[KeyValues<'_>], out: &mut [f32], kernel: Kernels) {
    let (d, n_rep, m) = (h.head_dim, h.heads / h.kv_heads, rows.len());
    let (width, kv_width) = (h.heads * d, h.kv_heads * d);
    let n = n_rep * m;
    let scale = 1.0 / (d as f32).sqrt();
    let seq = rows[0].seq;
    let (p_min, p_max) = rows.iter().fold((usize::MAX, 0), |(a, b), r| (a.min(r.pos), b.max(r.pos)));
    let spans = key_spans(sources, seq);
    let Some(&(first_key, _, _, _)) = spans.first() else {
        out.fill(0.0);
        return;
    };
    let end = spans.last().map_or(0, |s| s.0 + s.1);
    let mut s = Scratch {
        q: vec![0.0; n * d],
        kt: vec![0.0; d * KEY_BLOCK],
        v: vec![0.0; KEY_BLOCK * d],
        scores: vec![0.0; n * KEY_BLOCK],
        acc: vec![0.0; n * d],
        max: vec![0.0; n],
        sum: vec![0.0; n],
    };
    for g in 0..h.kv_heads {
        for r in 0..n_rep {
            let head = g * n_rep + r;
            for i in 0..m {
                s.q[(r * m + i) * d..][..d].copy_from_slice(&q[i * width + head * d..][..d]);
            }
        }
        s.acc.fill(0.0);
        s.max.fill(f32::NEG_INFINITY);
        s.sum.fill(0.0);
        for a0 in (first_key / KEY_BLOCK * KEY_BLOCK..end).step_by(KEY_BLOCK) {
            let a1 = (a0 + KEY_BLOCK).min(end); // one past the block's last key
            let nk = a1 - a0;
            if a0 > p_max {
                break; // no row sees these keys or any after them
            }
            if h.window.is_some_and(|w| p_min >= a1 - 1 + w) {
                continue; // every row's window starts after this block
            }
            // The block's keys (transposed) and values, gathered from the sources they lie in.
            let (kt, v) = (&mut s.kt[..d * nk], &mut s.v[..nk * d]);
            for &(pos0, len, row0, src) in &spans {
                let (lo, hi) = (a0.max(pos0), a1.min(pos0 + len));
                for a in lo..hi {
                    let (j, at) = (a - a0, (row0 + a - pos0) * kv_width + g * d);
                    for (c, x) in src.k[at..][..d].iter().enumerate() {
                        kt[c * nk + j] = *x;
                    }
                    v[j * d..][..d].copy_from_slice(&src.v[at..][..d]);
                }
            }
            // Key positions before the first source's (none for a whole sequence) score nothing.
            for j in 0..first_key.saturating_sub(a0).min(nk) {
                for c in 0..d {
                    kt[c * nk + j] = 0.0;
                }
                v[j * d..][..d].fill(0.0);
            }
            let scores = &mut s.scores[..n * nk];
            // scores (n × nk) = q (n × d) · kᵀ (d × nk).
            // SAFETY: q holds n·d, kt d·nk, scores n·nk; the strides stay inside them.
            unsafe {
                gemm(n, nk, d, scores.as_mut_ptr(), 1, nk as isize, false, s.q.as_ptr(), 1, d as isize, kt.as_ptr(), 1, nk as isize, 0.0, 1.0, false, false, false, Parallelism::None);
            }
            let whole = a1 - 1 <= p_min && first_key <= a0 && h.window.is_none_or(|w| p_max < a0 + w);
            for (ri, row) in scores.chunks_exact_mut(nk).enumerate() {
                let pos = rows[ri % m].pos;
                for (j, x) in row.iter_mut().enumerate() {
                    let a = a0 + j;
                    let hidden = !whole && (a > pos || a < first_key || h.window.is_some_and(|w| pos >= a + w));
                    *x = if hidden { f32::NEG_INFINITY } else { *x * scale };
                }
                let old = s.max[ri];
                let new = old.max(kernel.max(row));
                if new == f32::NEG_INFINITY {
                    row.fill(0.0); // nothing visible to this row yet
                    continue;
                }
                let total = kernel.exp_sub_sum(row, new);
                let alpha = (old - new).exp();
                s.sum[ri] = alpha.mul_add(s.sum[ri], total);
                s.max[ri] = new;
                if a0 > first_key / KEY_BLOCK * KEY_BLOCK {
                    for x in &mut s.acc[ri * d..][..d] {
                        *x *= alpha;
                    }
                }
            }
            // acc (n × d) += scores (n × nk) · v (nk × d), the keys in torch's matmul blocks.
            for (k0, kb) in super::numerics::k_blocks(nk) {
                // SAFETY: columns k0..k0+kb of scores (rows nk apart) and rows k0..k0+kb of v lie
                // inside them; acc holds n·d.
                unsafe {
                    gemm(
                        n,
                        d,
                        kb,
                        s.acc.as_mut_ptr(),
                        1,
                        d as isize,
                        true,
                        scores.as_ptr().add(k0),
                        1,
                        nk as isize,
                        v.as_ptr().add(k0 * d),
                        1,
                        d as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
        }
        for r in 0..n_rep {
            let head = g * n_rep + r;
            for i in 0..m {
                let ri = r * m + i;
                let inv = 1.0 / s.sum[ri];
                let dst = &mut out[i * width + head * d..][..d];
                for (o, a) in dst.iter_mut().zip(&s.acc[ri * d..][..d]) {
                    *o = a * inv;
                }
            }
        }
    }
}

/// Rotary embeddings of `x` (rows, heads · head_dim) in place; row `i` is at `positions[i]`
/// and `cos`/`sin` hold `head_dim / 2` angles per position, indexed by `table_row(i)`.
pub fn rope_rows(x: &mut [f32], heads: usize, head_dim: usize, style: RopeStyle, cos: &[f32], sin: &[f32], table_row: impl Fn(usize) -> usize + Sync) {
    let half = head_dim / 2;
    x.par_chunks_mut(heads * head_dim).enumerate().for_each(|(i, row)| {
        let t = table_row(i) * half;
        let (c, s) = (&cos[t..t + half], &sin[t..t + half]);
        for head in row.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Half => {
                    let (a, b) = head.split_at_mut(half);
                    for j in 0..half {
                        let (x1, x2) = (a[j], b[j]);
                        a[j] = x1 * c[j] - x2 * s[j];
                        b[j] = x1 * s[j] + x2 * c[j];
                    }
                }
                RopeStyle::Interleaved => {
                    for j in 0..half {
                        let (x1, x2) = (head[2 * j], head[2 * j + 1]);
                        head[2 * j] = x1 * c[j] - x2 * s[j];
                        head[2 * j + 1] = x1 * s[j] + x2 * c[j];
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.uniform_std(1.0)).collect()
    }

    /// The textbook computation, one row and one head at a time, in f64.
    fn reference(h: Heads, q: &[f32], rows: &[QueryRow], sources: &[KeyValues<'_>]) -> Vec<f32> {
        let (d, width, kv_width) = (h.head_dim, h.heads * h.head_dim, h.kv_heads * h.head_dim);
        let mut out = vec![0f32; q.len()];
        for (i, row) in rows.iter().enumerate() {
            for head in 0..h.heads {
                let g = head / (h.heads / h.kv_heads);
                let qi = &q[i * width + head * d..][..d];
                let mut keys = Vec::new();
                for src in sources {
                    let (first, len) = src.span(row.seq);
                    let base = first * kv_width;
                    for j in 0..len {
                        let a = src.first_position + j;
                        if a <= row.pos && h.window.is_none_or(|w| row.pos < a + w) {
                            let k = &src.k[base + j * kv_width + g * d..][..d];
                            let v = &src.v[base + j * kv_width + g * d..][..d];
                            let s: f64 = qi.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt();
                            keys.push((s, v));
                        }
                    }
                }
                let m = keys.iter().map(|k| k.0).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = keys.iter().map(|k| (k.0 - m).exp()).sum();
                for c in 0..d {
                    out[i * width + head * d + c] = (keys.iter().map(|k| (k.0 - m).exp() * k.1[c] as f64).sum::<f64>() / z) as f32;
                }
            }
        }
        out
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 2e-5, "max abs difference {worst}");
    }

    /// torch's `scaled_dot_product_attention(is_causal=True)` on the CPU (transformers' sdpa
    /// path), bit for bit: `tests/golden/torch-cpu.json` (`scripts/golden/make_golden_torch_cpu.py`)
    /// holds rows of one 64-wide head over 530 positions; the same keys whole, and split into a
    /// shared prefix and the sequence's own keys at a point inside the first key block.
    #[test]
    fn equals_torchs_cpu_flash_attention_bit_for_bit() {
        let g: serde_json::Value = serde_json::from_str(include_str!("../../tests/golden/torch-cpu.json")).unwrap();
        let a = &g["sdpa"];
        let (len, d) = (a["length"].as_u64().unwrap() as usize, a["dim"].as_u64().unwrap() as usize);
        let keep: Vec<usize> = a["rows"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap() as usize).collect();
        let want: Vec<u32> = a["y_bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect();
        let hashed = crate::model::numerics::tests::hashed;
        let q: Vec<f32> = hashed(len * d, 4).iter().map(|x| x * 4.0).collect();
        let k: Vec<f32> = hashed(len * d, 5).iter().map(|x| x * 4.0).collect();
        let v = hashed(len * d, 6);
        let h = Heads { heads: 1, kv_heads: 1, head_dim: d, window: None };
        let rows: Vec<QueryRow> = (0..len).map(|pos| QueryRow { seq: 0, pos }).collect();
        let whole = [KeyValues { k: &k, v: &v, len, starts: &[], first_position: 0, shared: false }];
        let cut = 300;
        let split = [
            KeyValues { k: &k[..cut * d], v: &v[..cut * d], len: cut, starts: &[], first_position: 0, shared: true },
            KeyValues { k: &k[cut * d..], v: &v[cut * d..], len: len - cut, starts: &[], first_position: cut, shared: false },
        ];
        for (name, sources) in [("whole", &whole[..]), ("prefix + own keys", &split[..])] {
            let out = causal_attention(h, &q, &rows, sources);
            let got: Vec<u32> = keep.iter().flat_map(|&r| out[r * d..][..d].iter().map(|x| x.to_bits())).collect();
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{name}: {differ} of {} values differ from torch {}", want.len(), g["torch"]);
        }
    }

    #[test]
    fn whole_sequences_across_several_key_and_query_blocks() {
        // 2 sequences of 300 rows (5 query blocks each, 2 key blocks), 6 query heads on 2 kv heads.
        let h = Heads { heads: 6, kv_heads: 2, head_dim: 8, window: None };
        let (b, t) = (2, 300);
        let q = noise(b * t * 48, 1);
        let (k, v) = (noise(b * t * 16, 2), noise(b * t * 16, 3));
        let rows: Vec<QueryRow> = (0..b).flat_map(|seq| (0..t).map(move |pos| QueryRow { seq, pos })).collect();
        let own = [KeyValues { k: &k, v: &v, len: t, first_position: 0, shared: false, starts: &[] }];
        assert_close(&causal_attention(h, &q, &rows, &own), &reference(h, &q, &rows, &own));
    }

    #[test]
    fn a_shared_prefix_then_own_keys_and_selected_rows() {
        let h = Heads { heads: 4, kv_heads: 4, head_dim: 16, window: None };
        let (b, off, t) = (3, 270, 40);
        let (pk, pv) = (noise(off * 64, 4), noise(off * 64, 5));
        let (k, v) = (noise(b * t * 64, 6), noise(b * t * 64, 7));
        let sources = [
            KeyValues { k: &pk, v: &pv, len: off, first_position: 0, shared: true, starts: &[] },
            KeyValues { k: &k, v: &v, len: t, first_position: off, shared: false, starts: &[] },
        ];
        // A few rows per sequence, as the last layer asks for the step-tag rows only.
        let rows: Vec<QueryRow> = [(0, 0), (0, 17), (0, 39), (1, 5), (2, 20), (2, 21)]
            .iter()
            .map(|&(seq, i)| QueryRow { seq, pos: off + i })
            .collect();
        let q = noise(rows.len() * 64, 8);
        assert_close(&causal_attention(h, &q, &rows, &sources), &reference(h, &q, &rows, &sources));
    }

    #[test]
    fn packed_sequences_of_different_lengths_after_a_shared_prefix() {
        // Three suffixes of 70, 3 and 140 rows packed back to back; the longest spans 3 query blocks.
        let h = Heads { heads: 4, kv_heads: 2, head_dim: 8, window: None };
        let off = 300;
        let starts = [0, 70, 73, 213];
        let total = starts[3];
        let (pk, pv) = (noise(off * 16, 12), noise(off * 16, 13));
        let (k, v) = (noise(total * 16, 14), noise(total * 16, 15));
        let sources = [
            KeyValues { k: &pk, v: &pv, len: off, first_position: 0, shared: true, starts: &[] },
            KeyValues { k: &k, v: &v, len: 0, first_position: off, shared: false, starts: &starts },
        ];
        let rows: Vec<QueryRow> =
            (0..3).flat_map(|seq| (0..starts[seq + 1] - starts[seq]).map(move |i| QueryRow { seq, pos: off + i })).collect();
        let q = noise(total * 32, 16);
        assert_close(&causal_attention(h, &q, &rows, &sources), &reference(h, &q, &rows, &sources));
    }

    #[test]
    fn a_sliding_window_hides_keys_that_are_too_far_behind() {
        let h = Heads { heads: 2, kv_heads: 1, head_dim: 8, window: Some(100) };
        let t = 700;
        let q = noise(t * 16, 9);
        let (k, v) = (noise(t * 8, 10), noise(t * 8, 11));
        let rows: Vec<QueryRow> = (0..t).map(|pos| QueryRow { seq: 0, pos }).collect();
        let own = [KeyValues { k: &k, v: &v, len: t, first_position: 0, shared: false, starts: &[] }];
        assert_close(&causal_attention(h, &q, &rows, &own), &reference(h, &q, &rows, &own));
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        // One head of 4 dims at position 1 with angles (a, b): pairs (0, 2) and (1, 3) in the
        // Hugging Face layout, (0, 1) and (2, 3) interleaved.
        let (a, b) = (0.3f32, 1.1f32);
        let cos = [1.0, 1.0, a.cos(), b.cos()];
        let sin = [0.0, 0.0, a.sin(), b.sin()];
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut half = x;
        rope_rows(&mut half, 1, 4, RopeStyle::Half, &cos, &sin, |_| 1);
        let want = [1.0 * a.cos() - 3.0 * a.sin(), 2.0 * b.cos() - 4.0 * b.sin(), 1.0 * a.sin() + 3.0 * a.cos(), 2.0 * b.sin() + 4.0 * b.cos()];
        assert_close(&half, &want);
        let mut inter = x;
        rope_rows(&mut inter, 1, 4, RopeStyle::Interleaved, &cos, &sin, |_| 1);
        let want = [1.0 * a.cos() - 2.0 * a.sin(), 1.0 * a.sin() + 2.0 * a.cos(), 3.0 * b.cos() - 4.0 * b.sin(), 3.0 * b.sin() + 4.0 * b.cos()];
        assert_close(&inter, &want);
    }
}
