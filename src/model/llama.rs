//! Our Llama forward pass for reward scoring.
//!
//! Unlike a generation model it never computes vocabulary logits: it returns the hidden state only
//! at the rows the caller asks for (the step-tag positions) and passes those through the step
//! head ([`super::head`]: two label rows of `lm_head`, or a score classifier). In the last
//! layer only those rows go through attention output and MLP.
//! A shared prefix (system prompt, documents, question) can be run once with [`Llama::prefill`]
//! and its K/V reused by several suffixes ([`Llama::label_logits`] with `Some(prefix)`).
//!
//! Batches are right-padded: with causal attention real tokens never see the pads that follow
//! them and positions stay `0..len`, so no padding mask is needed.
//!
//! Activations stay rows of `(heads · head_dim)` throughout, keys and values included (a prefix's
//! too). With f32 on the CPU, rotary embeddings and attention run the kernels of
//! [`super::attention`] (blocked, online softmax, causal blocks skipped); elsewhere they run as
//! generic tensor operations over a materialised score matrix, one query block at a time.

use candle_core::quantized::{QMatMul, QTensor};
use rayon::prelude::*;
use candle_core::{DType, Device, Module, Tensor};

use super::attention::{self, Heads, KeyValues, QueryRow};
use super::cpu_f32::CpuF32;
use super::qmatmul::{Int8Matrix, Kernel};
use super::{dequant, numerics, simd, GgufLinears};
use super::config::{LlamaConfig, RopeScaling, RopeStyle};
use super::head::{Head, HeadSpec};
use super::Weights;

type Result<T> = candle_core::Result<T>;
type LoadResult<T> = crate::error::Result<T>;
/// Largest query block (rows of the score matrix per pass).
const MAX_QUERY_BLOCK: usize = 512;
/// The score matrix of one attention pass (batch × heads × rows × keys) stays under this many
/// elements (256 MiB in f32): large transient tensors cost page faults, not just memory.
const MAX_SCORE_ELEMS: usize = 64 << 20;

/// A projection: dense weights (f32/f16/bf16) or a quantized GGUF tensor, and an optional bias.
struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

enum LinearWeight {
    Dense(Tensor),
    Quantized(QMatMul),
    /// Quantized in memory, dequantized to f32 for each matmul.
    Streamed(QTensor),
    /// Int8 weights, int8 activations ([`super::qmatmul`]).
    Int8(Int8Matrix),
}

impl Linear {
    /// `{name}.weight` (out, inp) and, if `bias`, `{name}.bias` (out).
    fn load(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> LoadResult<Self> {
        let wname = format!("{name}.weight");
        let weight = match w.quantized(&wname, (out, inp))? {
            Some((q, GgufLinears::Streamed)) if q.device().is_cpu() => LinearWeight::Streamed(q),
            Some((q, GgufLinears::Int8)) if q.device().is_cpu() => LinearWeight::Int8(Int8Matrix::from_qtensor(&q, Kernel::detect())?),
            Some((q, _)) => LinearWeight::Quantized(QMatMul::from_qtensor(q)?),
            None => LinearWeight::Dense(w.get(&wname, (out, inp))?),
        };
        let bias = if bias { Some(w.get(&format!("{name}.bias"), out)?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// `x` is 2-D (rows, in_features).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            // f32 on the CPU: K blocked as torch's CPU matmul blocks it (`numerics`).
            LinearWeight::Dense(w) => match numerics::blocked_linear(x, w)? {
                Some(y) => y,
                None => x.matmul(&w.t()?)?,
            },
            LinearWeight::Quantized(q) => q.forward(x)?,
            LinearWeight::Streamed(q) => x.matmul(&dequant::dequantize(q)?.t()?)?,
            LinearWeight::Int8(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// One decoder layer: pre-norm attention and pre-norm SiLU-gated MLP, each added to the residual.
struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Tensor,
    gate_up: GateUp,
    down: Linear,
}

/// The MLP's two input projections: one (2·intermediate, hidden) matmul when both are dense
/// (gate rows first), two otherwise.
enum GateUp {
    Fused { linear: Linear, intermediate: usize },
    Split { gate: Linear, up: Linear },
}

impl GateUp {
    fn load(w: &Weights, p: &str, ff: usize, h: usize, bias: bool) -> LoadResult<Self> {
        let gate = Linear::load(w, &format!("{p}.mlp.gate_proj"), ff, h, bias)?;
        let up = Linear::load(w, &format!("{p}.mlp.up_proj"), ff, h, bias)?;
        Ok(match (&gate.weight, &up.weight) {
            (LinearWeight::Dense(g), LinearWeight::Dense(u)) => {
                let bias = match (&gate.bias, &up.bias) {
                    (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 0)?),
                    _ => None,
                };
                let weight = LinearWeight::Dense(Tensor::cat(&[g, u], 0)?);
                GateUp::Fused { linear: Linear { weight, bias }, intermediate: ff }
            }
            (LinearWeight::Int8(g), LinearWeight::Int8(u)) if gate.bias.is_none() && up.bias.is_none() => {
                let weight = LinearWeight::Int8(Int8Matrix::stack(g, u));
                GateUp::Fused { linear: Linear { weight, bias: None }, intermediate: ff }
            }
            _ => GateUp::Split { gate, up },
        })
    }
}

impl Layer {
    /// Layer `i`, from `model.layers.{i}.*`.
    fn load(w: &Weights, cfg: &LlamaConfig, i: usize) -> LoadResult<Self> {
        let p = format!("model.layers.{i}");
        let h = cfg.hidden_size;
        let (qd, kvd, ff) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
        let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
        Ok(Layer {
            attn_norm: w.get(&format!("{p}.input_layernorm.weight"), h)?,
            q: Linear::load(w, &format!("{p}.self_attn.q_proj"), qd, h, ab)?,
            k: Linear::load(w, &format!("{p}.self_attn.k_proj"), kvd, h, ab)?,
            v: Linear::load(w, &format!("{p}.self_attn.v_proj"), kvd, h, ab)?,
            o: Linear::load(w, &format!("{p}.self_attn.o_proj"), h, qd, cfg.o_proj_bias)?,
            mlp_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), h)?,
            gate_up: GateUp::load(w, &p, ff, h, mb)?,
            down: Linear::load(w, &format!("{p}.mlp.down_proj"), h, ff, mb)?,
        })
    }
}

/// A token table (the embedding, or `lm_head` read by rows): dense, or quantized and
/// dequantized row by row (a GGUF model whose linears are not dequantized at load).
pub(super) enum RowTable {
    Dense(Tensor),
    Quantized(QTensor),
}

impl RowTable {
    pub(super) fn load(w: &Weights, name: &str, rows: usize, cols: usize) -> LoadResult<Self> {
        Ok(match w.quantized(name, (rows, cols))? {
            Some((q, _)) => RowTable::Quantized(q),
            None => RowTable::Dense(w.get(name, (rows, cols))?),
        })
    }

    /// Rows `ids` (a u32 vector), (ids, cols).
    pub(super) fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            RowTable::Dense(t) => t.index_select(ids, 0),
            RowTable::Quantized(q) => q.embedding(ids),
        }
    }
}

pub struct Llama {
    cfg: LlamaConfig,
    /// (vocab, hidden), rows in the activation dtype.
    embed: RowTable,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Head,
    /// Activation dtype (f32 for GGUF).
    dtype: DType,
    device: Device,
    inv_freq: Vec<f32>,
    /// Use the CPU kernels of [`attention`] where they apply (f32 on CPU).
    kernels: bool,
    /// Pack a batch's sequences back to back instead of right-padding them (CPU kernels only).
    packing: bool,
    /// Rotary cos/sin from MKL's vector math (as torch computes them) instead of the C library.
    mkl_vml: Option<std::sync::Arc<super::mkl_vml::MklVml>>,
}

/// Per-layer keys and values of a prefix, computed once and shared by suffix batches.
pub struct KvPrefix {
    /// (len, kv_heads · head_dim) per layer, keys rotated.
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
}

impl KvPrefix {
    /// Tokens in the prefix.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(self.v.iter()).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }
}

/// One sequence of a batch and the positions (within the sequence) whose hidden state we need.
pub struct SeqRows<'a> {
    pub ids: &'a [u32],
    pub rows: &'a [usize],
    /// Input embeddings given instead of looked up (image tokens).
    pub splices: &'a [Splice],
}

/// Rows `at..at + n` of a sequence take the (n, hidden) `embeds` as their input embeddings
/// instead of their tokens' (InternVL's `<IMG_CONTEXT>` positions take the image features).
#[derive(Debug, Clone)]
pub struct Splice {
    pub at: usize,
    pub embeds: Tensor,
}

/// What every layer of one forward pass shares: the batch shape and the rotary angles of its
/// positions (and, on the generic path, their tensors and causal masks).
struct Pass {
    /// Sequences, and tokens per (right-padded) sequence.
    b: usize,
    t: usize,
    /// Length of the prefix the sequences continue: positions run `off..off + t`.
    off: usize,
    /// Packed batch: sequence `i` is rows `starts[i]..starts[i + 1]` (b + 1 entries). Empty:
    /// right-padded, sequence `i` is rows `i · t..(i + 1) · t`.
    starts: Vec<usize>,
    rope: RopeTable,
    /// Generic path only: query rows per attention block, and one mask per block.
    block: usize,
    masks: Vec<Tensor>,
}

/// Rotary angles of `rows` positions, `head_dim / 2` each: row `i` of a (rows · n) batch of
/// activations uses angle row `i % rows`.
struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    rows: usize,
    /// Generic path only: the same as (rows, head_dim / 2) tensors in the activation dtype.
    tensors: Option<(Tensor, Tensor)>,
}

impl Pass {
    /// The activation row of position `p` (from the prefix's end) of sequence `seq`.
    fn row(&self, seq: usize, p: usize) -> usize {
        if self.starts.is_empty() {
            seq * self.t + p
        } else {
            self.starts[seq] + p
        }
    }

    /// Rows of sequence `seq` in the batch (padding included when right-padded).
    fn len(&self, seq: usize) -> usize {
        if self.starts.is_empty() {
            self.t
        } else {
            self.starts[seq + 1] - self.starts[seq]
        }
    }
}

impl Llama {
    /// Loads a model from `w` with the step head `head` names (label ids: only those two rows
    /// of `lm_head` are kept).
    pub fn load(w: &Weights, cfg: LlamaConfig, head: impl Into<HeadSpec>) -> LoadResult<Self> {
        let embed = RowTable::load(w, "model.embed_tokens.weight", cfg.vocab_size, cfg.hidden_size)?;
        let layers = (0..cfg.num_layers).map(|i| Layer::load(w, &cfg, i)).collect::<LoadResult<Vec<_>>>()?;
        let norm = w.get("model.norm.weight", cfg.hidden_size)?;
        let head = Head::load(w, &cfg, &embed, head.into())?;
        let mut inv_freq = cfg.inv_freq();
        if let Some(factors) = w.rope_freq_factors()? {
            for (f, d) in inv_freq.iter_mut().zip(&factors) {
                *f /= d;
            }
        }
        Ok(Llama { cfg, embed, layers, norm, head, dtype: w.dtype(), device: w.device().clone(), inv_freq, kernels: true, packing: true, mkl_vml: None })
    }

    pub fn cfg(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Activation dtype (f32 for GGUF).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How the linears of a GGUF model run (`None`: dense weights, as loaded).
    pub fn gguf_linears(&self) -> Option<GgufLinears> {
        match self.layers.first().map(|l| &l.q.weight) {
            Some(LinearWeight::Quantized(_)) => Some(GgufLinears::Quantized),
            Some(LinearWeight::Streamed(_)) => Some(GgufLinears::Streamed),
            Some(LinearWeight::Int8(_)) => Some(GgufLinears::Int8),
            _ => None,
        }
    }

    /// The int8 kernel of a GGUF model whose linears run in int8.
    pub fn int8_kernel(&self) -> Option<Kernel> {
        match self.layers.first().map(|l| &l.q.weight) {
            Some(LinearWeight::Int8(q)) => Some(q.kernel()),
            _ => None,
        }
    }

    /// Whether attention and rotary embeddings run the CPU kernels of [`attention`] (f32 on
    /// CPU) rather than generic tensor operations.
    fn cpu_kernels(&self) -> bool {
        self.kernels && self.device.is_cpu() && self.dtype == DType::F32
    }

    /// Turns the CPU kernels off (the generic tensor path everywhere), for comparisons.
    pub fn set_cpu_kernels(&mut self, on: bool) {
        self.kernels = on;
    }

    /// Whether a batch's sequences are packed back to back (no padding): on the CPU kernels'
    /// path, unless turned off with [`Llama::set_packing`].
    pub fn packs(&self) -> bool {
        self.packing && self.cpu_kernels()
    }

    /// Turns packing off (right-padded batches, as the generic path runs them), for comparisons.
    pub fn set_packing(&mut self, on: bool) {
        self.packing = on;
    }

    fn heads_geometry(&self) -> Heads {
        Heads {
            heads: self.cfg.num_heads,
            kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
            window: self.cfg.sliding_window,
        }
    }

    /// Takes the rotary tables' cos/sin from MKL's vector math (`--mkl-vml`), as torch does on x86.
    pub fn set_mkl_vml(&mut self, vml: Option<std::sync::Arc<super::mkl_vml::MklVml>>) {
        self.mkl_vml = vml;
    }

    /// Rotary angles of `positions`.
    fn rope_table(&self, positions: &[usize]) -> Result<RopeTable> {
        let half = self.inv_freq.len();
        let scale = match self.cfg.rope_scaling {
            RopeScaling::Linear { factor } => 1.0 / factor,
            _ => 1.0,
        };
        let mut angles = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let p = p as f32 * scale;
            angles.extend(self.inv_freq.iter().map(|&f| f * p));
        }
        // One call for the whole table: MKL's vector math (as torch), else the C library's.
        let (mut cos, mut sin): (Vec<f32>, Vec<f32>) = match &self.mkl_vml {
            Some(vml) => vml.cos_sin(&angles),
            None => (angles.iter().map(|a| a.cos()).collect(), angles.iter().map(|a| a.sin()).collect()),
        };
        if let Some((c, s)) = debug_rope_table(half) {
            for (i, &p) in positions.iter().enumerate() {
                if (p + 1) * half <= c.len() {
                    cos[i * half..][..half].copy_from_slice(&c[p * half..][..half]);
                    sin[i * half..][..half].copy_from_slice(&s[p * half..][..half]);
                }
            }
        }
        let tensors = if self.cpu_kernels() {
            None
        } else {
            let shape = (positions.len(), half);
            let c = Tensor::from_slice(&cos, shape, &self.device)?.to_dtype(self.dtype)?;
            let s = Tensor::from_slice(&sin, shape, &self.device)?.to_dtype(self.dtype)?;
            Some((c, s))
        };
        Ok(RopeTable { cos, sin, rows: positions.len(), tensors })
    }

    /// Rotates a projection `x` (rows, n · head_dim) whose row `i` sits at angle row
    /// `i % table.rows`; returns it contiguous, same shape.
    fn rotate(&self, x: Tensor, n: usize, table: &RopeTable) -> Result<Tensor> {
        let (rows, width) = x.dims2()?;
        let d = self.cfg.head_dim;
        match &table.tensors {
            None => {
                let mut data = x.flatten_all()?.to_vec1::<f32>()?;
                let t = table.rows;
                attention::rope_rows(&mut data, n, d, self.cfg.rope_style, &table.cos, &table.sin, |i| i % t);
                Tensor::from_vec(data, (rows, width), &self.device)
            }
            Some((cos, sin)) => {
                let (b, t) = (rows / table.rows, table.rows);
                let x = x.reshape((b, t, n, d))?;
                let y = match self.cfg.rope_style {
                    RopeStyle::Half => candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin)?,
                    RopeStyle::Interleaved => {
                        candle_nn::rotary_emb::rope_i(&x.transpose(1, 2)?.contiguous()?, cos, sin)?.transpose(1, 2)?
                    }
                };
                y.contiguous()?.reshape((rows, width))
            }
        }
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        // f32 on the CPU: transformers' order of operations and torch's summation (`numerics`).
        match numerics::rms_norm(x, w, self.cfg.rms_norm_eps as f32)? {
            Some(y) => Ok(y),
            None => candle_nn::ops::rms_norm(x, w, self.cfg.rms_norm_eps as f32),
        }
    }

    /// Splits rows of `n` heads, (b·t, n·d), into (b, n, t, d), contiguous.
    fn heads(&self, x: &Tensor, b: usize, t: usize, n: usize) -> Result<Tensor> {
        x.reshape((b, t, n, self.cfg.head_dim))?.transpose(1, 2)?.contiguous()
    }

    /// Additive causal (and sliding-window) mask for queries at absolute positions `q_pos`
    /// over keys at absolute positions `0..n_keys`: (q_pos.len(), n_keys), f32.
    fn mask(&self, q_pos: &[usize], n_keys: usize) -> Result<Tensor> {
        let window = self.cfg.sliding_window;
        let mut m = Vec::with_capacity(q_pos.len() * n_keys);
        for &qp in q_pos {
            for j in 0..n_keys {
                let visible = j <= qp && window.is_none_or(|w| qp - j < w);
                m.push(if visible { 0.0f32 } else { f32::NEG_INFINITY });
            }
        }
        Tensor::from_vec(m, (q_pos.len(), n_keys), &self.device)
    }

    /// Generic path: softmax(q kᵀ / √d + mask) v for q (b, H, tq, d), k/v (b, kv_heads, s, d);
    /// mask (tq, s). Grouped-query attention without copying K/V per head: the `n_rep` query
    /// heads that share a kv head are stacked as rows, (b, kv, n_rep·tq, d) against (b, kv, s, d).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, h, tq, d) = q.dims4()?;
        let (kv, s) = (k.dim(1)?, k.dim(2)?);
        let n_rep = h / kv;
        let scale = 1.0 / (self.cfg.head_dim as f64).sqrt();
        let q = q.contiguous()?.reshape((b, kv, n_rep * tq, d))?;
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = att.to_dtype(DType::F32)?.reshape((b, kv, n_rep, tq, s))?.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(v.dtype())?;
        att.reshape((b, kv, n_rep * tq, s))?.matmul(v)?.reshape((b, h, tq, d))
    }

    /// Generic path: a batch's keys or values as (b, kv_heads, off + t, d), the prefix's first.
    fn kv_heads(&self, x: &Tensor, prefix: Option<&Tensor>, pass: &Pass) -> Result<Tensor> {
        let (b, nkv) = (pass.b, self.cfg.num_kv_heads);
        let own = self.heads(x, b, pass.t, nkv)?;
        match prefix {
            Some(p) => {
                let p = self.heads(p, 1, pass.off, nkv)?.broadcast_as((b, nkv, pass.off, self.cfg.head_dim))?;
                Tensor::cat(&[&p, &own], 2)?.contiguous()
            }
            None => Ok(own),
        }
    }

    /// Query rows per attention pass of the generic path for this batch and key count.
    pub fn query_block(&self, b: usize, n_keys: usize) -> usize {
        (MAX_SCORE_ELEMS / (b * self.cfg.num_heads * n_keys).max(1)).clamp(16, MAX_QUERY_BLOCK)
    }

    /// Embeds a right-padded batch (every sequence `t` long) that continues a prefix of `off`
    /// tokens, and prepares what its layers share.
    /// The input embeddings of a right-padded batch (`splices[i]` replacing rows of sequence
    /// `i`; rows past the sequence's length are dropped) and what its layers share.
    /// With [`Llama::packs`], `ids` may differ in length and are packed back to back instead.
    fn start(&self, ids: &[Vec<u32>], off: usize, splices: &[&[Splice]]) -> Result<(Tensor, Pass)> {
        let b = ids.len();
        let t = ids.iter().map(|s| s.len()).max().unwrap_or(0);
        let starts: Vec<usize> = if self.packs() {
            std::iter::once(0).chain(ids.iter().scan(0, |n, s| { *n += s.len(); Some(*n) })).collect()
        } else {
            assert!(ids.iter().all(|s| s.len() == t), "a right-padded batch");
            vec![]
        };
        let total = starts.last().copied().unwrap_or(b * t);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let flat = Tensor::from_vec(flat, total, &self.device)?;
        let mut x = self.embed.rows(&flat)?;
        if splices.iter().any(|s| !s.is_empty()) {
            // One gather over [token embeddings; spliced rows]: row r reads index[r].
            let mut index: Vec<u32> = (0..total as u32).collect();
            let mut extra = Vec::new();
            let mut next = total;
            for (seq, list) in splices.iter().enumerate() {
                let len = ids[seq].len();
                let at = |p: usize| if starts.is_empty() { seq * t + p } else { starts[seq] + p };
                for s in list.iter().filter(|s| s.at < len) {
                    let n = s.embeds.dim(0)?.min(len - s.at);
                    for j in 0..n {
                        index[at(s.at + j)] = (next + j) as u32;
                    }
                    next += n;
                    extra.push(s.embeds.narrow(0, 0, n)?.to_dtype(self.dtype)?);
                }
            }
            let mut all = vec![x];
            all.extend(extra);
            let index = Tensor::from_vec(index, total, &self.device)?;
            x = Tensor::cat(&all, 0)?.index_select(&index, 0)?;
        }
        // Packed: one angle row per activation row; right-padded: the t positions, per sequence.
        let positions: Vec<usize> =
            if starts.is_empty() { (off..off + t).collect() } else { ids.iter().flat_map(|s| off..off + s.len()).collect() };
        let rope = self.rope_table(&positions)?;
        let n_keys = off + t;
        let (block, masks) = if self.cpu_kernels() {
            (t, vec![])
        } else {
            let block = self.query_block(b, n_keys);
            let masks = (0..t)
                .step_by(block)
                .map(|start| self.mask(&positions[start..(start + block).min(t)], n_keys))
                .collect::<Result<_>>()?;
            (block, masks)
        };
        Ok((x, Pass { b, t, off, starts, rope, block, masks }))
    }

    /// The first half of a layer, shared by every pass: the normed input `h` (b·t, hidden) and
    /// the layer's keys (rotated) and values, (b·t, kv_heads · head_dim) each.
    fn layer_kv(&self, layer: &Layer, x: &Tensor, pass: &Pass) -> Result<(Tensor, Tensor, Tensor)> {
        let h = self.rms_norm(x, &layer.attn_norm)?;
        let k = self.rotate(layer.k.forward(&h)?, self.cfg.num_kv_heads, &pass.rope)?;
        let v = layer.v.forward(&h)?;
        Ok((h, k, v))
    }

    /// Attention of query rows `q` (rows, heads · head_dim), rotated, over a batch's keys and
    /// values (b·t rows, after the prefix's `prefix_kv`): (rows, heads · head_dim).
    fn attention(
        &self,
        q: &Tensor,
        rows: &[QueryRow],
        k: &Tensor,
        v: &Tensor,
        prefix_kv: Option<(&Tensor, &Tensor)>,
        pass: &Pass,
    ) -> Result<Tensor> {
        let (qv, kv, vv) = (CpuF32::new(q)?, CpuF32::new(k)?, CpuF32::new(v)?);
        let prefix = match prefix_kv {
            Some((pk, pv)) => Some((CpuF32::new(pk)?, CpuF32::new(pv)?)),
            None => None,
        };
        let mut sources = Vec::with_capacity(2);
        if let Some((pk, pv)) = &prefix {
            sources.push(KeyValues { k: pk.get(), v: pv.get(), len: pass.off, first_position: 0, shared: true, starts: &[] });
        }
        sources.push(KeyValues { k: kv.get(), v: vv.get(), len: pass.t, first_position: pass.off, shared: false, starts: &pass.starts });
        let out = attention::causal_attention(self.heads_geometry(), qv.get(), rows, &sources);
        Tensor::from_vec(out, q.dims2()?, &self.device)
    }

    /// The second half of a layer over every row of the batch: attention and MLP, each added to
    /// the residual `x`.
    fn layer_out(
        &self,
        layer: &Layer,
        x: &Tensor,
        (h, k, v): (&Tensor, &Tensor, &Tensor),
        prefix_kv: Option<(&Tensor, &Tensor)>,
        pass: &Pass,
    ) -> Result<Tensor> {
        let (b, t, nh) = (pass.b, pass.t, self.cfg.num_heads);
        let q = self.rotate(layer.q.forward(h)?, nh, &pass.rope)?;
        let attn = if self.cpu_kernels() {
            let rows: Vec<QueryRow> =
                (0..b).flat_map(|seq| (0..pass.len(seq)).map(move |i| QueryRow { seq, pos: pass.off + i })).collect();
            self.attention(&q, &rows, k, v, prefix_kv, pass)?
        } else {
            let q = self.heads(&q, b, t, nh)?;
            let (k, v) = (self.kv_heads(k, prefix_kv.map(|p| p.0), pass)?, self.kv_heads(v, prefix_kv.map(|p| p.1), pass)?);
            let blocks = pass
                .masks
                .iter()
                .enumerate()
                .map(|(bi, mask)| {
                    let start = bi * pass.block;
                    self.attend(&q.narrow(2, start, pass.block.min(t - start))?, &k, &v, mask)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&blocks, 2)?.transpose(1, 2)?.reshape((b * t, nh * self.cfg.head_dim))?
        };
        self.residual_attn_mlp(layer, x, &attn)
    }

    /// The second half of a layer for the selected `rows` only, (sequence, position) grouped by
    /// sequence: returns their outputs, (rows.len(), hidden).
    fn layer_out_rows(
        &self,
        layer: &Layer,
        x: &Tensor,
        (h, k, v): (&Tensor, &Tensor, &Tensor),
        prefix_kv: Option<(&Tensor, &Tensor)>,
        pass: &Pass,
        rows: &[(usize, usize)],
    ) -> Result<Tensor> {
        let (nh, hd) = (self.cfg.num_heads, self.cfg.head_dim);
        let idx: Vec<u32> = rows.iter().map(|&(s, p)| pass.row(s, p) as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &self.device)?;
        let q_all = layer.q.forward(&h.index_select(&idx, 0)?)?;
        let positions: Vec<usize> = rows.iter().map(|r| pass.off + r.1).collect();
        let q_all = self.rotate(q_all, nh, &self.rope_table(&positions)?)?;
        let attn = if self.cpu_kernels() {
            let rows: Vec<QueryRow> = rows.iter().map(|&(seq, p)| QueryRow { seq, pos: pass.off + p }).collect();
            self.attention(&q_all, &rows, k, v, prefix_kv, pass)?
        } else {
            let (k, v) = (self.kv_heads(k, prefix_kv.map(|p| p.0), pass)?, self.kv_heads(v, prefix_kv.map(|p| p.1), pass)?);
            let mut outs = Vec::new();
            let mut start = 0;
            while start < rows.len() {
                let s = rows[start].0;
                let end = start + rows[start..].iter().take_while(|r| r.0 == s).count();
                let m = end - start;
                let q = self.heads(&q_all.narrow(0, start, m)?, 1, m, nh)?;
                let mask = self.mask(&positions[start..end], pass.off + pass.t)?;
                let o = self.attend(&q, &k.narrow(0, s, 1)?, &v.narrow(0, s, 1)?, &mask)?;
                outs.push(o.transpose(1, 2)?.reshape((m, nh * hd))?);
                start = end;
            }
            Tensor::cat(&outs, 0)?
        };
        self.residual_attn_mlp(layer, &x.index_select(&idx, 0)?, &attn)
    }

    /// `x + o(attn)`, then plus the MLP of its norm.
    fn residual_attn_mlp(&self, layer: &Layer, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let x = (x + layer.o.forward(attn)?)?;
        let h = self.rms_norm(&x, &layer.mlp_norm)?;
        &x + layer.down.forward(&self.gated(&layer.gate_up, &h)?)?
    }

    /// `silu(gate(h)) · up(h)`, (rows, intermediate).
    fn gated(&self, gate_up: &GateUp, h: &Tensor) -> Result<Tensor> {
        match gate_up {
            GateUp::Split { gate, up } => candle_nn::ops::silu(&gate.forward(h)?)? * up.forward(h)?,
            GateUp::Fused { linear, intermediate } if self.cpu_kernels() => {
                let y = linear.forward(h)?;
                let rows = y.dim(0)?;
                let ff = *intermediate;
                let yv = CpuF32::new(&y)?;
                let mut out = vec![0f32; rows * ff];
                let k = simd::kernels();
                out.par_chunks_mut(ff).zip(yv.get().par_chunks(2 * ff)).for_each(|(o, gu)| {
                    let (g, u) = gu.split_at(ff);
                    k.silu_mul(g, u, o);
                });
                Tensor::from_vec(out, (rows, ff), &self.device)
            }
            GateUp::Fused { linear, intermediate } => {
                let y = linear.forward(h)?;
                let ff = *intermediate;
                candle_nn::ops::silu(&y.narrow(1, 0, ff)?)? * y.narrow(1, ff, ff)?
            }
        }
    }

    /// Runs a prefix once and returns its per-layer K/V.
    pub fn prefill(&self, ids: &[u32], splices: &[Splice]) -> Result<KvPrefix> {
        let (mut x, pass) = self.start(&[ids.to_vec()], 0, &[splices])?;
        let mut out = KvPrefix { k: vec![], v: vec![], len: ids.len() };
        let n_layers = self.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            let (h, k, v) = self.layer_kv(layer, &x, &pass)?;
            // The last layer's K/V is all a prefix needs of it.
            if li + 1 < n_layers {
                x = self.layer_out(layer, &x, (&h, &k, &v), None, &pass)?;
            }
            out.k.push(k);
            out.v.push(v);
        }
        Ok(out)
    }

    /// Label logits `[l_pos, l_neg]` at every requested row of every sequence, in order, each
    /// sequence continuing `prefix` when given (rows count from the end of the prefix).
    /// Sequences may differ in length (packed back to back with [`Llama::packs`], else right-padded). Causal attention means no
    /// token after a sequence's last requested row can change it, so each sequence is cut there,
    /// a sequence without rows is not run at all, and the last layer computes only those rows.
    pub fn label_logits(&self, seqs: &[SeqRows<'_>], prefix: Option<&KvPrefix>) -> Result<Vec<Vec<[f32; 2]>>> {
        let live: Vec<(usize, &[u32])> = seqs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.rows.iter().max().map(|&last| (i, &s.ids[..(last + 1).min(s.ids.len())])))
            .collect();
        let mut out: Vec<Vec<[f32; 2]>> = seqs.iter().map(|_| vec![]).collect();
        if live.is_empty() {
            return Ok(out);
        }
        let max_len = live.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
        let packs = self.packs();
        let ids: Vec<Vec<u32>> = live
            .iter()
            .map(|(_, s)| {
                let mut v = s.to_vec();
                if !packs {
                    v.resize(max_len, 0);
                }
                v
            })
            .collect();
        let rows: Vec<(usize, usize)> = live
            .iter()
            .enumerate()
            .flat_map(|(b, (i, _))| seqs[*i].rows.iter().map(move |&r| (b, r)))
            .collect();

        let splices: Vec<&[Splice]> = live.iter().map(|(i, _)| seqs[*i].splices).collect();
        let (mut x, pass) = self.start(&ids, prefix.map_or(0, |p| p.len), &splices)?;
        let n_layers = self.layers.len();
        let dump = debug_hidden_states_dir().filter(|_| prefix.is_none());
        for (li, layer) in self.layers.iter().enumerate() {
            if let Some(dir) = &dump {
                dump_hidden_states(dir, li, &x)?;
            }
            let (h, k, v) = self.layer_kv(layer, &x, &pass)?;
            let prefix_kv = prefix.map(|p| (&p.k[li], &p.v[li]));
            x = if li + 1 < n_layers {
                self.layer_out(layer, &x, (&h, &k, &v), prefix_kv, &pass)?
            } else {
                self.layer_out_rows(layer, &x, (&h, &k, &v), prefix_kv, &pass, &rows)?
            };
        }
        let logits = self.head.logits(&self.rms_norm(&x, &self.norm)?)?;
        let mut it = logits.into_iter();
        for (i, _) in &live {
            out[*i] = seqs[*i].rows.iter().map(|_| it.next().expect("one logit row per requested row")).collect();
        }
        Ok(out)
    }
}

/// Diagnosis only: with `MEDPRM_DEBUG_HIDDEN_STATES=DIR`, every whole-prompt pass (no shared
/// prefix) writes the input of each layer `i` (HF's `hidden_states[i]`: 0 is the embeddings) as
/// little-endian f32 (rows of the right-padded batch, hidden wide) to `DIR/layer-{i}.f32`,
/// overwriting the previous pass's. The last layer computes only the scored rows, so its output
/// is not written.
fn debug_hidden_states_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("MEDPRM_DEBUG_HIDDEN_STATES").filter(|v| !v.is_empty()).map(Into::into)
}

/// Diagnosis only: with `MEDPRM_DEBUG_ROPE_TABLE=FILE` (little-endian f32: the cos table, then
/// the sin table, each positions × head_dim/2 from position 0, e.g. written from transformers'
/// rotary embedding), the rotary tables of the positions the file covers are read from it
/// instead of computed: to tell how much of a difference from transformers their rounding makes.
fn debug_rope_table(half: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    let path = std::env::var_os("MEDPRM_DEBUG_ROPE_TABLE").filter(|v| !v.is_empty())?;
    let bytes = std::fs::read(&path).ok()?;
    let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if half == 0 || v.len() % (2 * half) != 0 {
        tracing::warn!("MEDPRM_DEBUG_ROPE_TABLE: {} values are not two tables of rows of {half}; ignored", v.len());
        return None;
    }
    let (c, s) = v.split_at(v.len() / 2);
    Some((c.to_vec(), s.to_vec()))
}

fn dump_hidden_states(dir: &std::path::Path, layer: usize, x: &Tensor) -> Result<()> {
    let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join(format!("layer-{layer}.f32")), bytes))?;
    Ok(())
}

/// p(+) from the two label logits: softmax([l+, l-])[0].
pub fn positive_probability(l: [f32; 2]) -> f32 {
    let m = l[0].max(l[1]);
    let a = (l[0] - m).exp();
    let b = (l[1] - m).exp();
    a / (a + b)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rng::SplitMix64;

    const VOCAB: usize = 32;
    const LABELS: [u32; 2] = [3, 7];

    /// A toy Llama: hidden 16, 4 query heads over 2 kv heads of 4 dims, attention biases.
    fn config(layers: usize, tied: bool) -> LlamaConfig {
        LlamaConfig {
            hidden_size: 16,
            intermediate_size: 24,
            num_layers: layers,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            rope_style: RopeStyle::Half,
            vocab_size: VOCAB,
            max_position_embeddings: 4096,
            tie_word_embeddings: tied,
            attention_bias: true,
            o_proj_bias: true,
            mlp_bias: false,
            sliding_window: None,
            architecture: "test".into(),
        }
    }

    /// Every tensor `cfg` needs, by Hugging Face name: seeded uniform noise, norms near 1.
    fn tensors(cfg: &LlamaConfig, seed: u64) -> HashMap<String, Tensor> {
        let mut rng = SplitMix64::new(seed);
        let mut out = HashMap::new();
        let mut put = |name: String, shape: &[usize], mean: f32, std: f32| {
            let v: Vec<f32> = (0..shape.iter().product()).map(|_| mean + rng.uniform_std(std)).collect();
            out.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
        };
        let (h, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        put("model.embed_tokens.weight".into(), &[VOCAB, h], 0.0, 1.0);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.2);
            put(format!("{p}.post_attention_layernorm.weight"), &[h], 1.0, 0.2);
            for (name, out, inp) in [("q_proj", qd, h), ("k_proj", kvd, h), ("v_proj", kvd, h), ("o_proj", h, qd)] {
                put(format!("{p}.self_attn.{name}.weight"), &[out, inp], 0.0, 0.4);
                put(format!("{p}.self_attn.{name}.bias"), &[out], 0.0, 0.1);
            }
            for (name, out, inp) in [("gate_proj", ff, h), ("up_proj", ff, h), ("down_proj", h, ff)] {
                put(format!("{p}.mlp.{name}.weight"), &[out, inp], 0.0, 0.3);
            }
        }
        put("model.norm.weight".into(), &[h], 1.0, 0.2);
        if !cfg.tie_word_embeddings {
            put("lm_head.weight".into(), &[VOCAB, h], 0.0, 1.0);
        }
        out
    }

    fn load(cfg: LlamaConfig, tensors: HashMap<String, Tensor>) -> LoadResult<Llama> {
        Llama::load(&Weights::from_tensors(tensors, DType::F32, &Device::Cpu), cfg, LABELS)
    }

    fn model(layers: usize, seed: u64) -> Llama {
        let cfg = config(layers, false);
        let t = tensors(&cfg, seed);
        load(cfg, t).unwrap()
    }

    fn ids(n: usize, seed: u64) -> Vec<u32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| (rng.next_u64() % VOCAB as u64) as u32).collect()
    }

    fn assert_close(a: &[Vec<[f32; 2]>], b: &[Vec<[f32; 2]>], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.len(), y.len(), "{what}");
            for (p, q) in x.iter().zip(y) {
                for j in 0..2 {
                    assert!((p[j] - q[j]).abs() <= 1e-5 * p[j].abs().max(1.0), "{what}: {a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn a_prefilled_prefix_scores_like_the_whole_sequence() {
        let m = model(2, 1);
        let seq = ids(600, 2);
        // The whole sequence's attention runs in more than one query block.
        assert!(m.query_block(1, seq.len()) < seq.len());
        let rows = [310, 311, 420, 599];
        let whole = m.label_logits(&[SeqRows { ids: &seq, rows: &rows, splices: &[] }], None).unwrap();
        let prefix = m.prefill(&seq[..300], &[]).unwrap();
        assert_eq!(prefix.len(), 300);
        let suffix_rows: Vec<usize> = rows.iter().map(|r| r - 300).collect();
        let split = m.label_logits(&[SeqRows { ids: &seq[300..], rows: &suffix_rows, splices: &[] }], Some(&prefix)).unwrap();
        assert_close(&split, &whole, "prefix + suffix vs whole");
        // The logits are not degenerate: positions differ.
        assert!((whole[0][0][0] - whole[0][2][0]).abs() > 1e-3, "{whole:?}");
    }

    /// Spliced rows replace the token embeddings: splicing a token's own embedding changes
    /// nothing; splicing another token's makes the sequence score like that token's; and a
    /// splice split between a prefix and its suffix scores like the whole.
    #[test]
    fn spliced_embeddings_replace_token_embeddings_whole_or_across_a_prefix() {
        let cfg = config(2, false);
        let t = tensors(&cfg, 11);
        let table = t["model.embed_tokens.weight"].clone();
        let m = load(cfg, t).unwrap();
        let seq = ids(80, 12);
        let rows = [40, 79];
        let plain = m.label_logits(&[SeqRows { ids: &seq, rows: &rows, splices: &[] }], None).unwrap();
        let own = table.index_select(&Tensor::new(&seq[10..30], &Device::Cpu).unwrap(), 0).unwrap();
        let same = [Splice { at: 10, embeds: own }];
        let got = m.label_logits(&[SeqRows { ids: &seq, rows: &rows, splices: &same }], None).unwrap();
        assert_close(&got, &plain, "own embeddings spliced");

        let mut other = seq.clone();
        for id in &mut other[10..30] {
            *id = (*id + 5) % VOCAB as u32;
        }
        let want = m.label_logits(&[SeqRows { ids: &other, rows: &rows, splices: &[] }], None).unwrap();
        let swapped = [Splice { at: 10, embeds: table.index_select(&Tensor::new(&other[10..30], &Device::Cpu).unwrap(), 0).unwrap() }];
        let got = m.label_logits(&[SeqRows { ids: &seq, rows: &rows, splices: &swapped }], None).unwrap();
        assert_close(&got, &want, "other embeddings spliced");
        assert!((got[0][0][0] - plain[0][0][0]).abs() > 1e-4, "the splice changes the scores");

        // Rows 10..30 spliced, prefix of 20: 10..20 go with the prefix, 20..30 with the suffix.
        let e = swapped[0].embeds.clone();
        let prefix = m.prefill(&seq[..20], &[Splice { at: 10, embeds: e.narrow(0, 0, 10).unwrap() }]).unwrap();
        let tail = [Splice { at: 0, embeds: e.narrow(0, 10, 10).unwrap() }];
        let suffix_rows: Vec<usize> = rows.iter().map(|r| r - 20).collect();
        let split = m.label_logits(&[SeqRows { ids: &seq[20..], rows: &suffix_rows, splices: &tail }], Some(&prefix)).unwrap();
        assert_close(&split, &want, "splice across a prefix");
    }

    #[test]
    fn a_right_padded_batch_scores_like_each_sequence_alone() {
        let m = model(2, 3);
        let seqs = [ids(9, 4), ids(23, 5), ids(14, 6), ids(5, 7)];
        // The second sequence is cut after row 11; the last has no rows and is not run.
        let rows: [&[usize]; 4] = [&[2, 8], &[0, 11], &[4, 13], &[]];
        let prefix = m.prefill(&ids(10, 8), &[]).unwrap();
        for prefix in [None, Some(&prefix)] {
            let batch: Vec<SeqRows<'_>> = seqs.iter().zip(rows).map(|(s, r)| SeqRows { ids: s, rows: r, splices: &[] }).collect();
            let together = m.label_logits(&batch, prefix).unwrap();
            let alone: Vec<Vec<[f32; 2]>> =
                batch.iter().map(|s| m.label_logits(std::slice::from_ref(s), prefix).unwrap().remove(0)).collect();
            assert_close(&together, &alone, "batched vs alone");
            assert_eq!(together.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2, 0]);
        }
    }

    /// Packed batches (no padding) score like right-padded ones: ragged lengths (one longer than
    /// a query block), a sequence cut after its last row, splices, with and without a prefix.
    #[test]
    fn a_packed_batch_scores_like_a_right_padded_one() {
        let cfg = config(2, false);
        let t = tensors(&cfg, 21);
        let table = t["model.embed_tokens.weight"].clone();
        let mut m = load(cfg, t).unwrap();
        assert!(m.packs());
        let seqs = [ids(90, 22), ids(7, 23), ids(150, 24), ids(1, 25)];
        let rows: [&[usize]; 4] = [&[0, 45, 89], &[3], &[10, 77, 149], &[0]];
        let other: Vec<u32> = seqs[2][20..40].iter().map(|id| (id + 3) % VOCAB as u32).collect();
        let splice = [Splice { at: 20, embeds: table.index_select(&Tensor::new(other.as_slice(), &Device::Cpu).unwrap(), 0).unwrap() }];
        let splices: [&[Splice]; 4] = [&[], &[], &splice, &[]];
        let prefix = m.prefill(&ids(70, 26), &[]).unwrap();
        for prefix in [None, Some(&prefix)] {
            let batch: Vec<SeqRows<'_>> =
                seqs.iter().zip(rows).zip(splices).map(|((s, r), sp)| SeqRows { ids: s, rows: r, splices: sp }).collect();
            m.set_packing(true);
            let packed = m.label_logits(&batch, prefix).unwrap();
            m.set_packing(false);
            let padded = m.label_logits(&batch, prefix).unwrap();
            assert_close(&packed, &padded, "packed vs right-padded");
            assert!((packed[2][0][0] - packed[2][1][0]).abs() > 1e-4, "{packed:?}");
        }
    }

    #[test]
    fn the_cpu_kernels_score_like_the_generic_tensor_path() {
        // Both rotary layouts and a sliding window, with a prefix, a padded batch and the
        // row-only last layer.
        for (style, window) in [(RopeStyle::Half, None), (RopeStyle::Interleaved, Some(9))] {
            let mut cfg = config(2, false);
            cfg.rope_style = style;
            cfg.sliding_window = window;
            let t = tensors(&cfg, 12);
            let mut m = load(cfg, t).unwrap();
            let prefix_ids = ids(40, 13);
            let seqs = [ids(30, 14), ids(17, 15)];
            let rows: [&[usize]; 2] = [&[0, 12, 29], &[3, 16]];
            let batch: Vec<SeqRows<'_>> = seqs.iter().zip(rows).map(|(s, r)| SeqRows { ids: s, rows: r, splices: &[] }).collect();
            let mut runs = Vec::new();
            for kernels in [true, false] {
                m.set_cpu_kernels(kernels);
                let prefix = m.prefill(&prefix_ids, &[]).unwrap();
                runs.push((m.label_logits(&batch, Some(&prefix)).unwrap(), m.label_logits(&batch, None).unwrap()));
            }
            assert_close(&runs[0].0, &runs[1].0, "with a prefix: kernels vs generic");
            assert_close(&runs[0].1, &runs[1].1, "without: kernels vs generic");
        }
    }

    #[test]
    fn with_attention_and_mlp_silenced_the_logits_are_the_normed_embedding_times_the_label_rows() {
        let cfg = config(1, true);
        let mut t = tensors(&cfg, 9);
        for name in ["self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight"] {
            let w = t.get_mut(&format!("model.layers.0.{name}")).unwrap();
            *w = w.zeros_like().unwrap();
        }
        let row = |name: &str, i: usize| t[name].get(i).unwrap().to_vec1::<f32>().unwrap();
        let norm = t["model.norm.weight"].to_vec1::<f32>().unwrap();
        let expect = |id: u32| -> [f32; 2] {
            let x = row("model.embed_tokens.weight", id as usize);
            let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-5).sqrt();
            let label = |l: u32| {
                let e = row("model.embed_tokens.weight", l as usize);
                x.iter().zip(&norm).zip(&e).map(|((x, n), e)| x * r * n * e).sum::<f32>()
            };
            [label(LABELS[0]), label(LABELS[1])]
        };
        let want = vec![vec![expect(9), expect(12)], vec![expect(5)]];
        let m = load(cfg, t.clone()).unwrap();
        let (a, b) = ([1, 9, 4, 12], [5, 2]);
        let got = m.label_logits(&[SeqRows { ids: &a, rows: &[1, 3], splices: &[] }, SeqRows { ids: &b, rows: &[0], splices: &[] }], None).unwrap();
        assert_close(&got, &want, "hand-computed");
    }

    #[test]
    fn an_untied_model_without_lm_head_fails_to_load() {
        let cfg = config(1, false);
        let mut t = tensors(&cfg, 10);
        t.remove("lm_head.weight");
        let e = load(cfg, t).err().expect("no lm_head").to_string();
        assert!(e.contains("lm_head.weight missing"), "{e}");
    }
}
