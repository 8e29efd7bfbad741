//! `medprm bench engine`: throughput of the scoring path against the machine's gemm peak,
//! measured in the same run.

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::engine::Engine;
use crate::error::Result;
use crate::prompt::{Prompt, Solution};

/// Best-of-`iters` f32 GFLOP/s of an (m×k)·(k×n) matmul.
pub fn gemm_peak(device: &Device, m: usize, k: usize, n: usize, iters: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), device)?;
    let _ = a.matmul(&b)?; // warm up
    let mut best = f64::MAX;
    for _ in 0..iters {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        let _ = c.sum_all()?.to_scalar::<f32>()?; // forces completion on async devices
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// A synthetic Med-PRM-style prompt of about `tokens` tokens with `steps` steps.
pub fn synthetic_prompt(engine: &Engine, tokens: usize, steps: usize) -> Result<Prompt> {
    let sentence = "Chronic kidney disease is staged by eGFR and albuminuria; ACE inhibitors slow progression in albuminuric patients. ";
    let per = engine.builder.tokenizer.count(sentence)?.max(1);
    let doc_tokens = tokens.saturating_sub(steps * 40 + 200);
    let docs: Vec<String> = (0..(doc_tokens / per).div_ceil(16).max(1))
        .map(|_| sentence.repeat(16.min(doc_tokens / per).max(1)))
        .collect();
    let ctx = engine.builder.context("A 64-year-old man with diabetes has an eGFR of 38. Which drug slows progression?\n\n(A) Lisinopril\n(B) Ibuprofen", &docs)?;
    let step = "The patient has stage 3b chronic kidney disease with diabetes, so renin-angiotensin blockade is indicated to reduce progression.";
    let sol = Solution::Steps((0..steps).map(|_| step.to_string()).collect());
    engine.builder.prompt(&ctx, &sol)
}

pub struct EngineBench {
    pub gemm_gflops: f64,
    pub prompt_tokens: usize,
    pub batch: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub model_gflops: f64,
}

pub fn bench_engine(engine: &Engine, tokens: usize, batch: usize, iters: usize) -> Result<EngineBench> {
    let h = engine.info.hidden_size;
    let gemm_gflops = gemm_peak(&engine.model.device, 512, h, 4 * h, 5)?;
    let prompt = synthetic_prompt(engine, tokens, 8)?;
    let prompts: Vec<&Prompt> = (0..batch).map(|_| &prompt).collect();
    let _ = engine.score(&prompts)?; // warm up
    let mut best = f64::MAX;
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        let _ = engine.score(&prompts)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let n = prompt.ids.len() * batch;
    // Linear layers plus attention (q·k and p·v over the causal half).
    let c = &engine.model.cfg;
    let attn = 2.0 * (prompt.ids.len() as f64).powi(2) * (c.num_heads * c.head_dim * c.num_layers) as f64 * batch as f64;
    let flops = 2.0 * engine.info.matmul_params as f64 * n as f64 + attn;
    Ok(EngineBench {
        gemm_gflops,
        prompt_tokens: prompt.ids.len(),
        batch,
        seconds: best,
        tokens_per_s: n as f64 / best,
        model_gflops: flops / best / 1e9,
    })
}
