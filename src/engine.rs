//! The scoring engine: loads a model with its tokenizer and profile, and scores batches of
//! prompts. [`PromptBuilder`] (thread-safe, shared by tokenization workers) turns requests into
//! [`Prompt`]s; [`Engine::score`] runs one forward pass over a batch and returns p(+) per step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;
use crate::model::head::{HeadKind, HeadSpec};
use crate::model::internvit::VisionTower;
use crate::model::internvl::InternVlConfig;
use crate::model::llama::{positive_probability, Llama, SeqRows, Splice};
use crate::model::{self, GgufLinears, ModelFiles};
use crate::profile::Profile;
use crate::prompt::{Prompt, PromptBuilder};
use crate::tokenizer::PrmTokenizer;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub model: PathBuf,
    /// A built-in profile name or a profile file; `None`: the one the model's architecture
    /// implies ([`default_profile`]).
    pub profile: Option<String>,
    pub dtype: DType,
    pub device: Device,
    /// Overrides of the profile's `max_token_len` and `doc_reserve`.
    pub max_token_len: Option<usize>,
    pub doc_reserve: Option<usize>,
    /// A PEFT LoRA adapter directory merged into the (safetensors) base at load.
    pub adapter: Option<PathBuf>,
    /// GGUF only: how the linears run (`None`: on CPU dequantized at load when their f32 size
    /// is at most [`AUTO_DEQUANTIZE_BYTES`], streamed above; quantized kernels on GPU).
    pub gguf_linears: Option<GgufLinears>,
    /// Intel MKL's `libmkl_rt`: the rotary cos/sin come from its vector math, as torch's do on
    /// x86 ([`model::mkl_vml`]); `None`: the C library's.
    pub mkl_vml: Option<PathBuf>,
}

/// Largest f32 size of GGUF linears that `gguf_linears: None` dequantizes at load on CPU.
pub const AUTO_DEQUANTIZE_BYTES: usize = 4 << 30;

impl LoadOptions {
    pub fn new(model: impl Into<PathBuf>, profile: &str) -> Self {
        LoadOptions {
            model: model.into(),
            profile: Some(profile.into()),
            dtype: DType::F32,
            device: Device::Cpu,
            max_token_len: None,
            doc_reserve: None,
            adapter: None,
            gguf_linears: None,
            mkl_vml: None,
        }
    }
}

/// What was loaded, for logs and `/info`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    pub model: String,
    pub format: String,
    pub architecture: String,
    pub profile: String,
    pub dtype: String,
    pub device: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub max_position_embeddings: usize,
    /// The profile's prompt format (`tagged`, `separator`, `per_step_segments`, `multi_turn`).
    pub prompt_format: String,
    /// The step head (`label_tokens`, `classifier`, `score_mlp`).
    pub head: String,
    pub step_tag: String,
    /// The positive and negative label ids (`label_tokens` head only).
    pub label_token_ids: Option<[u32; 2]>,
    /// Weights of the matrix multiplications per token (for FLOP estimates).
    pub matmul_params: usize,
    /// The vision tower, for models that read images (`null` otherwise).
    pub vision: Option<VisionInfo>,
}

/// What a vision model does with an image.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VisionInfo {
    pub architecture: String,
    /// Side of a square tile, in pixels.
    pub image_size: usize,
    /// Image tokens per tile.
    pub tokens_per_tile: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// The token whose positions take the image features.
    pub image_token_id: u32,
}

pub struct Engine {
    pub builder: Arc<PromptBuilder>,
    pub model: Llama,
    pub info: ModelInfo,
    /// The vision tower and its image token id (InternVL checkpoints).
    pub vision: Option<(VisionTower, u32)>,
}

impl Engine {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if let Some(p) = &opts.profile {
            // A bad profile is reported before the model is read.
            Profile::load(p)?;
        }
        // So is an --mkl-vml that is not MKL.
        let mkl_vml = opts.mkl_vml.as_deref().map(model::mkl_vml::MklVml::open).transpose()?.map(Arc::new);
        let files = ModelFiles::resolve(&opts.model)?;
        let beside_tokenizer = files.dir().join("tokenizer.json").is_file();
        let internvl = match &files {
            ModelFiles::HfDir { dir, .. } => InternVlConfig::read(dir)?,
            ModelFiles::Gguf { .. } => None,
        };
        let (cfg, tokenizer, gguf) = match &files {
            ModelFiles::HfDir { dir, .. } => {
                let cfg = match &internvl {
                    Some(ivl) => ivl.text.clone(),
                    None => model::read_hf_config(dir)?,
                };
                (cfg, PrmTokenizer::from_dir(dir)?, None)
            }
            ModelFiles::Gguf { file } => {
                let g = GgufFile::open(file)?;
                let cfg = g.config()?;
                let tok = if beside_tokenizer {
                    PrmTokenizer::from_dir(files.dir())?
                } else {
                    let mut t = PrmTokenizer::new(g.tokenizer()?);
                    t.chat_template = g.chat_template();
                    t.bos_token = g.special_token("tokenizer.ggml.bos_token_id");
                    t.eos_token = g.special_token("tokenizer.ggml.eos_token_id");
                    t
                };
                (cfg, tok, Some(g))
            }
        };
        let adapter = match (&opts.adapter, &files) {
            (None, _) => None,
            (Some(_), _) if internvl.is_some() => {
                return Err(Error::Unsupported("--adapter with an InternVL (vision) checkpoint".into()))
            }
            (Some(dir), ModelFiles::HfDir { .. }) => Some(model::adapter::Adapter::open(dir)?),
            (Some(_), ModelFiles::Gguf { .. }) => {
                return Err(Error::Unsupported("--adapter with a GGUF model (give the Hugging Face base directory)".into()))
            }
        };
        // The adapter's task (a TOKEN_CLS LoRA on a causal LM base) decides the head before the
        // base's architecture does.
        let implied = adapter.as_ref().and_then(|a| a.implied_head()).or_else(|| HeadKind::implied_by(&cfg.architecture));
        let fallback = if internvl.is_some() { "visualprm" } else { default_profile(implied) };
        let mut profile = Profile::load(opts.profile.as_deref().unwrap_or(fallback))?;
        profile.max_token_len = opts.max_token_len.unwrap_or(profile.max_token_len);
        profile.doc_reserve = opts.doc_reserve.unwrap_or(profile.doc_reserve);
        if profile.doc_reserve > profile.max_token_len {
            return Err(Error::input("doc_reserve", "must not exceed max_token_len"));
        }
        if let Some(implied) = implied {
            if implied != profile.head {
                return Err(Error::Profile {
                    profile: profile.name.clone(),
                    reason: format!(
                        "the profile scores with a `{}` head, but the model's {} has a `{}` head; pick a profile made for it with --profile",
                        profile.head.name(),
                        match &adapter {
                            Some(_) => "adapter task".to_string(),
                            None => format!("architecture `{}`", cfg.architecture),
                        },
                        implied.name()
                    ),
                });
            }
        }
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(Error::TokenizerMismatch(format!(
                "the tokenizer has {} tokens but the model's vocabulary has {}",
                tokenizer.vocab_size(),
                cfg.vocab_size
            )));
        }
        let image_token_id = match (&internvl, &profile.image) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::Profile {
                    profile: profile.name.clone(),
                    reason: "the model reads images but the profile has no `image` section (use `visualprm`)".into(),
                })
            }
            (Some(ivl), Some(im)) => {
                let id = tokenizer.single_token(&im.context).ok_or_else(|| {
                    Error::TokenizerMismatch(format!("the image token `{}` is not one token of this tokenizer", im.context))
                })?;
                if let Some(cfg_id) = ivl.image_token_id.filter(|&c| c != id) {
                    return Err(Error::TokenizerMismatch(format!(
                        "config.json's image_token_id is {cfg_id} but the tokenizer's `{}` is {id}",
                        im.context
                    )));
                }
                Some(id)
            }
        };
        let builder = PromptBuilder::new(profile, Arc::new(tokenizer))?;
        let label_ids = builder.label_ids();
        let head = match (builder.profile.head, label_ids) {
            (HeadKind::LabelTokens, Some(ids)) => HeadSpec::LabelTokens(ids),
            (HeadKind::Classifier, _) => HeadSpec::Classifier,
            (HeadKind::ScoreMlp, _) => HeadSpec::ScoreMlp,
            (HeadKind::LabelTokens, None) => unreachable!("a label_tokens profile has label ids"),
        };
        let mut vision = None;
        let (model, dtype) = match (&files, gguf) {
            (ModelFiles::HfDir { safetensors, .. }, _) if internvl.is_some() => {
                let ivl = internvl.as_ref().expect("checked");
                let (llama, tower) = model::internvl::load(ivl, safetensors, head, opts.dtype, &opts.device)?;
                vision = Some((tower, image_token_id.expect("an InternVL model has an image token")));
                (llama, opts.dtype)
            }
            (ModelFiles::HfDir { safetensors, .. }, _) => match &adapter {
                Some(a) => (model::load_hf_adapted(cfg, safetensors, a, head, opts.dtype, &opts.device)?, opts.dtype),
                None => (model::load_hf(cfg, safetensors, head, opts.dtype, &opts.device)?, opts.dtype),
            },
            (ModelFiles::Gguf { .. }, Some(g)) => {
                if opts.dtype != DType::F32 {
                    tracing::warn!("GGUF weights run with f32 activations; --dtype is ignored");
                }
                let linears = opts.gguf_linears.unwrap_or(if opts.device.is_cuda() {
                    GgufLinears::Quantized
                } else if g.dequantized_linear_bytes() <= AUTO_DEQUANTIZE_BYTES {
                    GgufLinears::Dequantized
                } else {
                    GgufLinears::Streamed
                });
                let HeadSpec::LabelTokens(ids) = head else {
                    return Err(Error::Unsupported(format!(
                        "profile `{}`: the `{}` head from a GGUF file (convert the Hugging Face directory instead)",
                        builder.profile.name,
                        builder.profile.head.name()
                    )));
                };
                (g.load(cfg, ids, &opts.device, linears)?, DType::F32)
            }
            _ => unreachable!("a GGUF model always has its file open"),
        };
        let mut model = model;
        if let Some(vml) = &mkl_vml {
            tracing::info!("rotary cos/sin from MKL's vector math: {}", vml.path().display());
        }
        model.set_mkl_vml(mkl_vml);
        let c = model.cfg();
        let info = ModelInfo {
            model: opts.model.display().to_string(),
            format: match (&files, model.gguf_linears()) {
                (ModelFiles::Gguf { .. }, Some(GgufLinears::Quantized)) => "gguf (quantized matmul)".into(),
                (ModelFiles::Gguf { .. }, Some(GgufLinears::Streamed)) => "gguf (streamed dequantization)".into(),
                (ModelFiles::Gguf { .. }, Some(GgufLinears::Int8)) => {
                    format!("gguf (int8 matmul, {})", model.int8_kernel().map_or("?", |k| k.name()))
                }
                (ModelFiles::Gguf { .. }, _) => "gguf (dequantized to f32)".into(),
                _ => files.format().into(),
            },
            architecture: c.architecture.clone(),
            profile: builder.profile.name.clone(),
            dtype: model::dtype_name(dtype).into(),
            device: model::device_name(&opts.device).into(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_layers: c.num_layers,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            max_position_embeddings: c.max_position_embeddings,
            prompt_format: builder.profile.format.name().into(),
            head: builder.profile.head.name().into(),
            step_tag: builder.profile.step_tag.clone(),
            label_token_ids: label_ids,
            matmul_params: c.matmul_params(),
            vision: vision.as_ref().map(|(t, id): &(VisionTower, u32)| VisionInfo {
                architecture: "InternViT".into(),
                image_size: t.cfg().image_size,
                tokens_per_tile: t.cfg().tokens_per_tile(),
                num_layers: t.cfg().num_layers,
                hidden_size: t.cfg().hidden_size,
                image_token_id: *id,
            }),
        };
        Ok(Engine { builder: Arc::new(builder), model, info, vision })
    }

    /// One forward pass over a batch of prompts: p(+) of every step of every prompt.
    pub fn score(&self, prompts: &[&Prompt]) -> Result<Vec<Vec<f32>>> {
        let (splices, _) = self.image_splices(prompts)?;
        let seqs: Vec<SeqRows<'_>> = prompts
            .iter()
            .zip(&splices)
            .map(|(p, s)| SeqRows { ids: &p.ids, rows: &p.tag_rows, splices: s })
            .collect();
        let logits = self.model.label_logits(&seqs, None)?;
        Ok(logits.into_iter().map(|rows| rows.into_iter().map(positive_probability).collect()).collect())
    }

    /// Scores prompts that share their first `prefix_len` tokens: the prefix runs once and its
    /// K/V serve every suffix; suffixes run in batches whose padded suffix size fits
    /// `max_batch_tokens`. `prefix_len` comes from [`crate::prompt::shared_prefix_len`].
    pub fn score_shared(&self, prompts: &[&Prompt], prefix_len: usize, max_batch_tokens: usize) -> Result<Vec<Vec<f32>>> {
        self.score_passes(prompts, prefix_len, max_batch_tokens, &mut |_| {})
    }

    /// Scores many prompts in batches whose padded size (longest × count) stays within
    /// `max_batch_tokens` (a longer prompt runs alone). Results keep the input order.
    pub fn score_all(&self, prompts: &[&Prompt], max_batch_tokens: usize) -> Result<Vec<Vec<f32>>> {
        self.score_passes(prompts, 0, max_batch_tokens, &mut |_| {})
    }

    /// The one scoring loop: an optional shared prefix (`prefix_len` > 0) run once, then the
    /// (suffixes of the) prompts in consecutive passes whose padded size fits `max_batch_tokens`;
    /// `on_pass` hears of every forward pass (the prefix's time counts in the first one).
    pub fn score_passes(
        &self,
        prompts: &[&Prompt],
        prefix_len: usize,
        max_batch_tokens: usize,
        on_pass: &mut dyn FnMut(Pass),
    ) -> Result<Vec<Vec<f32>>> {
        let mut start = Instant::now();
        let cfg = self.model.cfg();
        if let crate::model::config::RopeScaling::Dynamic { .. } = cfg.rope_scaling {
            // Dynamic NTK would rescale the rotation past this length; we only run it unscaled.
            if let Some(p) = prompts.iter().find(|p| p.ids.len() > cfg.max_position_embeddings) {
                return Err(Error::input(
                    "input",
                    format!("the prompt has {} tokens, more than the model's max_position_embeddings {} (dynamic rope scaling is not supported)", p.ids.len(), cfg.max_position_embeddings),
                ));
            }
        }
        let vision_start = Instant::now();
        let (splices, mut images_encoded) = self.image_splices(prompts)?;
        let mut vision_seconds = 0.0;
        if images_encoded > 0 {
            // GPU kernels run asynchronously: wait for the tower's before reading the clock.
            self.model.device().synchronize()?;
            vision_seconds = vision_start.elapsed().as_secs_f64();
        }
        // Image rows inside the shared prefix run with it (the prompts share their images);
        // the rest move with their suffixes.
        let (prefix_splices, splices) = split_splices(splices, prefix_len)?;
        let prefix_start = Instant::now();
        let prefix = if prefix_len > 0 { Some(self.model.prefill(&prompts[0].ids[..prefix_len], &prefix_splices)?) } else { None };
        let mut prefix_seconds = 0.0;
        if prefix.is_some() {
            self.model.device().synchronize()?;
            prefix_seconds = prefix_start.elapsed().as_secs_f64();
        }
        let rows: Vec<Vec<usize>> =
            prompts.iter().map(|p| p.tag_rows.iter().map(|&r| r - prefix_len).collect()).collect();
        let mut out = Vec::with_capacity(prompts.len());
        let packs = self.model.packs();
        for range in plan_batches(prompts.iter().map(|p| p.ids.len() - prefix_len), max_batch_tokens, packs) {
            let seqs: Vec<SeqRows<'_>> = range
                .map(|i| SeqRows { ids: &prompts[i].ids[prefix_len..], rows: &rows[i], splices: &splices[i] })
                .collect();
            let logits = self.model.label_logits(&seqs, prefix.as_ref())?;
            out.extend(logits.into_iter().map(|r| r.into_iter().map(positive_probability).collect::<Vec<_>>()));
            let longest = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
            let tokens = seqs.iter().map(|s| s.ids.len()).sum();
            on_pass(Pass {
                sequences: seqs.len(),
                tokens,
                padded_tokens: if packs { tokens } else { longest * seqs.len() },
                prefix_tokens: prefix_len,
                seconds: start.elapsed().as_secs_f64(),
                images_encoded,
                vision_seconds,
                prefix_seconds,
            });
            (images_encoded, vision_seconds, prefix_seconds) = (0, 0.0, 0.0);
            start = Instant::now();
        }
        Ok(out)
    }
}

impl Engine {
    /// The image features of every prompt, placed on its runs of the image token (one vision
    /// pass per distinct image of the batch), and how many images went through the tower.
    fn image_splices(&self, prompts: &[&Prompt]) -> Result<(Vec<Vec<Splice>>, usize)> {
        if prompts.iter().all(|p| p.images.is_empty()) {
            return Ok((vec![vec![]; prompts.len()], 0));
        }
        let Some((tower, image_id)) = &self.vision else {
            return Err(Error::input("images", format!("profile `{}`: the model reads no images", self.builder.profile.name)));
        };
        let mut done: Vec<(Arc<crate::prompt::PreparedImage>, candle_core::Tensor)> = Vec::new();
        let mut out = Vec::with_capacity(prompts.len());
        for p in prompts {
            let runs = token_runs(&p.ids, *image_id);
            if runs.len() != p.images.len() {
                return Err(Error::Tokenizer(format!("the prompt holds {} image-token runs for {} images", runs.len(), p.images.len())));
            }
            let mut splices = Vec::with_capacity(runs.len());
            for ((at, n), img) in runs.into_iter().zip(&p.images) {
                if n != img.tokens {
                    return Err(Error::Tokenizer(format!("an image of {} tokens has a run of {n} image tokens", img.tokens)));
                }
                let same = |(d, _): &&(Arc<crate::prompt::PreparedImage>, candle_core::Tensor)| {
                    Arc::ptr_eq(d, img) || (d.hash == img.hash && d.tiles == img.tiles && d.pixels == img.pixels)
                };
                let embeds = match done.iter().find(same) {
                    Some((_, e)) => e.clone(),
                    None => {
                        let e = tower.embed(&img.pixels, img.tiles)?;
                        done.push((img.clone(), e.clone()));
                        e
                    }
                };
                splices.push(Splice { at, embeds });
            }
            out.push(splices);
        }
        Ok((out, done.len()))
    }
}

/// (start, length) of every maximal run of `token` in `ids`.
fn token_runs(ids: &[u32], token: u32) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == token {
            let start = i;
            while i < ids.len() && ids[i] == token {
                i += 1;
            }
            runs.push((start, i - start));
        } else {
            i += 1;
        }
    }
    runs
}

/// Splits per-prompt splices at `prefix_len`: the first prompt's rows before it (the shared
/// prefix's), and every prompt's rows after it, re-based to its suffix.
fn split_splices(splices: Vec<Vec<Splice>>, prefix_len: usize) -> Result<(Vec<Splice>, Vec<Vec<Splice>>)> {
    if prefix_len == 0 {
        return Ok((vec![], splices));
    }
    let mut prefix = Vec::new();
    let mut rest = Vec::with_capacity(splices.len());
    for (i, list) in splices.into_iter().enumerate() {
        let mut mine = Vec::new();
        for s in list {
            let n = s.embeds.dim(0)?;
            let inside = prefix_len.saturating_sub(s.at).min(n);
            if inside > 0 && i == 0 {
                prefix.push(Splice { at: s.at, embeds: s.embeds.narrow(0, 0, inside)? });
            }
            if inside < n {
                let at = s.at + inside - prefix_len;
                mine.push(Splice { at, embeds: s.embeds.narrow(0, inside, n - inside)? });
            }
        }
        rest.push(mine);
    }
    Ok((prefix, rest))
}

/// The profile used when none is given, from the head the model's architecture (or adapter)
/// implies: `meds3` for a token classifier, `qwen2.5-math-prm` for the score MLP
/// (`Qwen2ForProcessRewardModel`), else `med-prm`.
pub fn default_profile(implied: Option<HeadKind>) -> &'static str {
    match implied {
        Some(HeadKind::Classifier) => "meds3",
        Some(HeadKind::ScoreMlp) => "qwen2.5-math-prm",
        _ => "med-prm",
    }
}

/// One forward pass of [`Engine::score_passes`].
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub sequences: usize,
    /// Real (unpadded) tokens of the sequences, without a shared prefix.
    pub tokens: usize,
    /// Longest sequence × sequences.
    pub padded_tokens: usize,
    /// The shared prefix the sequences continue (0 without one).
    pub prefix_tokens: usize,
    /// Wall time of the pass, the shared prefix and the vision tower included in the first one.
    pub seconds: f64,
    /// Images run through the vision tower for this call (reported with the first pass; an image
    /// sent twice in a batch is encoded once).
    pub images_encoded: usize,
    /// The vision tower's share of `seconds`.
    pub vision_seconds: f64,
    /// The shared prefix's share of `seconds` (its forward pass, image rows included; first pass
    /// only, 0 without a prefix).
    pub prefix_seconds: f64,
}

/// Consecutive index ranges whose token count fits the budget: the sum of the lengths when
/// `packed`, else the padded count (max length × count).
pub fn plan_batches(lengths: impl IntoIterator<Item = usize>, max_batch_tokens: usize, packed: bool) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut longest, mut sum, mut n) = (0usize, 0usize, 0usize, 0usize);
    for (i, len) in lengths.into_iter().enumerate() {
        let l = longest.max(len);
        // A packed batch holds its sequences' own tokens; a right-padded one the longest's, each.
        let cost = if packed { sum + len } else { l * (n + 1) };
        if n > 0 && cost > max_batch_tokens {
            out.push(start..i);
            (start, longest, sum, n) = (i, len, len, 1);
        } else {
            (longest, sum, n) = (l, sum + len, n + 1);
        }
    }
    if n > 0 {
        out.push(start..start + n);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_token_runs_and_prefix_split() {
        assert_eq!(super::token_runs(&[1, 9, 9, 2, 9, 3, 9, 9, 9], 9), vec![(1, 2), (4, 1), (6, 3)]);
        let t = |n: usize| candle_core::Tensor::arange(0f32, n as f32, &candle_core::Device::Cpu).unwrap().reshape((n, 1)).unwrap();
        let s = |at: usize, n: usize| super::Splice { at, embeds: t(n) };
        // A run straddling the prefix end (rows 3..7, prefix 5) splits into 3..5 and 0..2.
        let (pre, rest) = super::split_splices(vec![vec![s(3, 4)], vec![s(3, 4)]], 5).unwrap();
        assert_eq!((pre.len(), pre[0].at, pre[0].embeds.dim(0).unwrap()), (1, 3, 2));
        assert_eq!(rest[1][0].at, 0);
        assert_eq!(rest[1][0].embeds.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 3.0]);
        // Entirely after the prefix: re-based.
        let (pre, rest) = super::split_splices(vec![vec![s(8, 2)]], 5).unwrap();
        assert!(pre.is_empty());
        assert_eq!(rest[0][0].at, 3);
    }

    #[test]
    fn batches_respect_padded_budget() {
        let b = super::plan_batches([10, 10, 30, 5, 100, 1], 60, false);
        assert_eq!(b, vec![0..2, 2..4, 4..5, 5..6]);
        assert!(super::plan_batches([], 10, false).is_empty());
        // Packed, only real tokens count: 10 + 10 + 30 + 5 fits 60.
        let b = super::plan_batches([10, 10, 30, 5, 100, 1], 60, true);
        assert_eq!(b, vec![0..4, 4..5, 5..6]);
    }
}
