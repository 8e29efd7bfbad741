//! `medprm bench engine`: throughput of the scoring path against the machine's gemm peak,
//! measured in the same run.

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::assets::synthetic_prompt;
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

pub struct EngineBench {
    pub gemm_gflops: f64,
    pub prompt_tokens: usize,
    pub batch: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub model_gflops: f64,
    /// Minor page faults of the process per measured forward pass (fresh pages the kernel
    /// mapped and cleared); `None` off Linux.
    pub minor_faults_per_forward: Option<f64>,
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from after its closing parenthesis.
    stat.rsplit_once(')')?.1.split_whitespace().nth(7)?.parse().ok()
}

pub fn bench_engine(engine: &Engine, tokens: usize, batch: usize, iters: usize) -> Result<EngineBench> {
    let h = engine.info.hidden_size;
    let gemm_gflops = gemm_peak(engine.model.device(), 512, h, 4 * h, 5)?;
    let prompt = synthetic_prompt(engine, tokens, 8)?;
    let prompts: Vec<&Prompt> = (0..batch).map(|_| &prompt).collect();
    let _ = engine.score(&prompts)?; // warm up
    let mut best = f64::MAX;
    let faults_before = minor_faults();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        let _ = engine.score(&prompts)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let minor_faults_per_forward = faults_before.zip(minor_faults()).map(|(a, b)| (b - a) as f64 / iters.max(1) as f64);
    let n = prompt.ids.len() * batch;
    // Linear layers plus attention (q·k and p·v over the causal half).
    let c = engine.model.cfg();
    let attn = 2.0 * (prompt.ids.len() as f64).powi(2) * (c.num_heads * c.head_dim * c.num_layers) as f64 * batch as f64;
    let flops = 2.0 * engine.info.matmul_params as f64 * n as f64 + attn;
    Ok(EngineBench {
        gemm_gflops,
        prompt_tokens: prompt.ids.len(),
        batch,
        seconds: best,
        tokens_per_s: n as f64 / best,
        model_gflops: flops / best / 1e9,
        minor_faults_per_forward,
    })
}

/// How far one engine's step scores are from another's (the same model run another way).
pub struct ScoreDelta {
    pub max: f64,
    pub mean: f64,
    pub scores: usize,
    pub solutions: usize,
}

/// |Δp| between `engine` and `reference` over 8 real Med-PRM solutions of the bench records
/// (about 600 tokens of shared question and documents, about 150 tokens of steps each).
pub fn score_delta(engine: &Engine, reference: &Engine) -> Result<ScoreDelta> {
    let prompts = best_of_n_prompts(engine, 8, 600, 150)?;
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let (a, b) = (engine.score(&refs)?, reference.score(&refs)?);
    if a.iter().map(Vec::len).ne(b.iter().map(Vec::len)) {
        return Err(crate::error::Error::Backend("the two engines scored different numbers of steps".into()));
    }
    let d: Vec<f64> = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs() as f64).collect();
    let scores = d.len();
    Ok(ScoreDelta {
        max: d.iter().copied().fold(0.0, f64::max),
        mean: d.iter().sum::<f64>() / scores.max(1) as f64,
        scores,
        solutions: prompts.len(),
    })
}

/// Prefix sharing on a Best-of-N workload: N candidates sharing ~`prefix_tokens` of system
/// prompt, documents and question, each with its own ~`suffix_tokens` of steps (±20%).
pub struct PrefixBench {
    pub candidates: usize,
    pub prefix_tokens: usize,
    pub mean_suffix_tokens: usize,
    pub one_s: f64,
    /// With sharing, the suffixes packed back to back (the default on the CPU kernels' path).
    pub shared_s: f64,
    /// With sharing, the suffixes right-padded into batches (packing off), in the same run.
    pub padded_s: f64,
    pub whole_s: f64,
    /// Whole prompts over shared prefix in multiply-adds of the linears and attention (causal,
    /// each suffix over the prefix and its own earlier tokens): the bound when both run at the
    /// same FLOP rate, below the token-count bound since a suffix token attends to the prefix.
    pub flop_bound: f64,
    /// Bytes of the shared prefix K/V (all layers), computed once per request.
    pub prefix_kv_bytes: usize,
    /// Transient bytes per candidate while one layer runs (prefix K/V view copied into the
    /// candidate's attention, its own K/V and scores of one query block).
    pub per_candidate_layer_bytes: usize,
}

/// A Best-of-`candidates` workload: one question with documents filling ~`prefix_tokens` of
/// prompt, and candidates of ~`suffix_tokens` of steps each (80%..120%), from the bench records.
pub fn best_of_n_prompts(engine: &Engine, candidates: usize, prefix_tokens: usize, suffix_tokens: usize) -> Result<Vec<Prompt>> {
    let data: serde_json::Value = serde_json::from_str(include_str!("../../data/bench-records.json")).expect("bench records");
    let recs = data["records"].as_array().expect("records");
    let tok = &engine.builder.tokenizer;
    // Documents: the bench documents, then guideline-like sentences, to reach the prefix size.
    let mut docs: Vec<String> = data["documents"].as_array().expect("docs").iter().map(|d| d.as_str().unwrap_or_default().to_string()).collect();
    let filler = "Guideline -- Recommendations. In adults with sepsis, measure lactate, obtain blood cultures before antimicrobials, and give 30 mL/kg of crystalloid for hypotension within the first three hours. ";
    let question = recs[0]["question"].as_str().unwrap_or_default().to_string();
    loop {
        let ctx = engine.builder.context(&question, &docs)?;
        let p = engine.builder.prompt(&ctx, &Solution::Steps(vec!["x".into()]))?;
        if p.ids.len() >= prefix_tokens || ctx.n_docs_kept < docs.len() {
            break;
        }
        let missing = prefix_tokens - p.ids.len();
        let per = tok.count(filler)?.max(1);
        docs.push(filler.repeat((missing / per).clamp(1, 10)));
    }
    let ctx = engine.builder.context(&question, &docs)?;
    let mut prompts = Vec::with_capacity(candidates);
    for i in 0..candidates {
        let target = suffix_tokens * (8 + (i % 5)) / 10; // 80%..120%
        let pool: Vec<&str> = (0..recs.len())
            .flat_map(|r| recs[(i + r) % recs.len()]["steps"].as_array().expect("steps").iter().filter_map(|s| s.as_str()))
            .collect();
        let mut steps: Vec<String> = Vec::new();
        while tok.count(&steps.join(" "))? < target {
            steps.push(pool[steps.len() % pool.len()].to_string());
        }
        prompts.push(engine.builder.prompt(&ctx, &Solution::Steps(steps))?);
    }
    Ok(prompts)
}

pub fn bench_prefix(engine: &mut Engine, candidates: usize, prefix_tokens: usize, suffix_tokens: usize, max_batch_tokens: usize) -> Result<PrefixBench> {
    let prompts = best_of_n_prompts(engine, candidates, prefix_tokens, suffix_tokens)?;
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let k = crate::prompt::shared_prefix_len(&refs);
    let mean_suffix = refs.iter().map(|p| p.ids.len() - k).sum::<usize>() / candidates.max(1);
    let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let _ = engine.score(&refs[..1])?; // warm up
    let one_s = time(&|| engine.score(&refs[..1]).map(|_| ()))?;
    let shared_s = time(&|| engine.score_shared(&refs, k, max_batch_tokens).map(|_| ()))?;
    let whole_s = time(&|| engine.score_all(&refs, max_batch_tokens).map(|_| ()))?;
    let packs = engine.model.packs();
    engine.model.set_packing(false);
    let padded_s = time(&|| engine.score_shared(&refs, k, max_batch_tokens).map(|_| ()));
    engine.model.set_packing(packs);
    let padded_s = padded_s?;
    let engine = &*engine;
    let c = engine.model.cfg();
    let suffixes: Vec<usize> = refs.iter().map(|p| p.ids.len() - k).collect();
    let flop_bound = flop_bound(c, k, &suffixes);
    let f32b = 4;
    let kv_per_token_layer = 2 * c.num_kv_heads * c.head_dim * f32b;
    let prefix_kv_bytes = c.num_layers * k * kv_per_token_layer;
    // Per candidate while a layer runs: its keys/values (the prefix's view-copied in front of its
    // own, kv heads only) and its rows of the score matrix for one query block.
    let keys = k + mean_suffix;
    let block = engine.model.query_block(candidates.min(max_batch_tokens / mean_suffix.max(1)).max(1), keys);
    let per_candidate_layer_bytes = keys * kv_per_token_layer + c.num_heads * block.min(mean_suffix) * keys * f32b;
    Ok(PrefixBench {
        candidates,
        prefix_tokens: k,
        mean_suffix_tokens: mean_suffix,
        one_s,
        shared_s,
        padded_s,
        whole_s,
        flop_bound,
        prefix_kv_bytes,
        per_candidate_layer_bytes,
    })
}

/// Multiply-adds of every prompt whole over those of the prefix once plus each suffix after it,
/// per layer (the same in every layer): linears `lin` per token, attention `2 · heads · head_dim`
/// per (query, visible key) pair (scores and weighted values), causal.
pub fn flop_bound(c: &crate::model::config::LlamaConfig, prefix: usize, suffixes: &[usize]) -> f64 {
    let (h, d) = (c.hidden_size as f64, c.head_dim as f64);
    let lin = h * (2.0 * (c.num_heads as f64) * d + 2.0 * (c.num_kv_heads as f64) * d) + 3.0 * h * c.intermediate_size as f64;
    let att = 2.0 * c.num_heads as f64 * d;
    // Query i (0-based) of a causal run sees i + 1 keys: n(n + 1)/2 pairs over n tokens.
    let tri = |n: f64| n * (n + 1.0) / 2.0;
    let p = prefix as f64;
    let whole: f64 = suffixes.iter().map(|&s| (p + s as f64) * lin + att * tri(p + s as f64)).sum();
    let shared = p * lin + att * tri(p) + suffixes.iter().map(|&s| s as f64 * lin + att * (s as f64 * p + tri(s as f64))).sum::<f64>();
    whole / shared
}

/// medprm against the reference implementation (Hugging Face transformers, batch 1, the full
/// vocabulary head, as the Med-PRM authors' script scores), on one Best-of-N workload, in one run.
pub struct VsReference {
    pub candidates: usize,
    pub prefix_tokens: usize,
    pub mean_suffix_tokens: usize,
    pub steps: usize,
    pub medprm_s: f64,
    pub reference_s: f64,
    /// Largest |p(+) medprm − p(+) reference| over every step.
    pub max_abs_diff: f64,
    /// What the reference reported about itself (torch version, threads).
    pub reference_info: String,
}

/// Scores `prompts` with medprm (shared prefix, as `/v1/rank` does) and with the reference
/// script `script` run by `python` on the same token ids; `model_dir` is the Hugging Face
/// directory both load. `work` holds the exchange files.
pub fn bench_vs_reference(
    engine: &Engine,
    prompts: &[Prompt],
    max_batch_tokens: usize,
    python: &std::path::Path,
    script: &std::path::Path,
    model_dir: &std::path::Path,
    work: &std::path::Path,
) -> Result<VsReference> {
    use crate::error::Error;
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let k = crate::prompt::shared_prefix_len(&refs);
    let _ = engine.score(&refs[..1])?; // warm up
    let t = Instant::now();
    let ours = engine.score_shared(&refs, k, max_batch_tokens)?;
    let medprm_s = t.elapsed().as_secs_f64();

    std::fs::create_dir_all(work).map_err(|e| Error::bad_file(work, e))?;
    let input = work.join("prompts.json");
    let output = work.join("reference.json");
    let doc = serde_json::json!({
        "label_ids": engine.info.label_token_ids,
        "prompts": prompts.iter().map(|p| serde_json::json!({"ids": p.ids, "rows": p.tag_rows})).collect::<Vec<_>>(),
    });
    std::fs::write(&input, doc.to_string()).map_err(|e| Error::bad_file(&input, e))?;
    let status = std::process::Command::new(python)
        .arg(script)
        .arg("--model")
        .arg(model_dir)
        .arg("--prompts")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .status()
        .map_err(|e| Error::bad_file(python, e))?;
    if !status.success() {
        return Err(Error::Unsupported(format!("the reference script failed ({status})")));
    }
    let text = std::fs::read_to_string(&output).map_err(|e| Error::bad_file(&output, e))?;
    let reference: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(&output, e))?;
    let theirs: Vec<Vec<f64>> = serde_json::from_value(reference["scores"].clone()).map_err(|e| Error::bad_file(&output, e))?;
    if theirs.len() != ours.len() || theirs.iter().zip(&ours).any(|(a, b)| a.len() != b.len()) {
        return Err(Error::Unsupported("the reference scored a different number of steps".into()));
    }
    let max_abs_diff = theirs
        .iter()
        .flatten()
        .zip(ours.iter().flatten())
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    Ok(VsReference {
        candidates: prompts.len(),
        prefix_tokens: k,
        mean_suffix_tokens: refs.iter().map(|p| p.ids.len() - k).sum::<usize>() / prompts.len().max(1),
        steps: ours.iter().map(Vec::len).sum(),
        medprm_s,
        reference_s: reference["seconds"].as_f64().unwrap_or(f64::NAN),
        max_abs_diff,
        reference_info: reference["info"].as_str().unwrap_or_default().to_string(),
    })
}

/// FLOPs of scoring `n` solutions of `prefix` + `suffix` tokens on a model of `shape`:
/// `(reference, medprm)`: batch 1 with the vocabulary head on every token, against the prefix once,
/// every suffix after it and two head rows at the step tags.
pub fn best_of_n_flops(shape: crate::tools::testmodel::Shape, vocab: usize, n: usize, prefix: usize, suffix: usize) -> (f64, f64) {
    let (h, d) = (shape.hidden as f64, shape.head_dim() as f64);
    let kv = shape.kv_heads as f64 * d;
    let per_token = 2.0 * shape.layers as f64 * (2.0 * h * h + 2.0 * h * kv + 3.0 * h * shape.intermediate as f64);
    // q·k and p·v: 4·d per visible key per head.
    let attn = |from: f64, to: f64| 4.0 * d * shape.heads as f64 * shape.layers as f64 * (to * to - from * from) / 2.0;
    let (n, p, s) = (n as f64, prefix as f64, suffix as f64);
    let reference = n * ((p + s) * (per_token + 2.0 * h * vocab as f64) + attn(0.0, p + s));
    let medprm = p * per_token + attn(0.0, p) + n * (s * per_token + attn(p, p + s));
    (reference, medprm)
}

/// llama.cpp and medprm on the same GGUF and the same prompt token ids, one after the other.
pub struct VsLlamaCpp {
    pub prompt_tokens: usize,
    /// llama.cpp's best prompt-processing rate over its runs (`timings.prompt_per_second`).
    pub llamacpp_tokens_per_s: f64,
    /// What the llama.cpp side reported about itself (version, threads, batch sizes).
    pub llamacpp_info: String,
    pub medprm: EngineBench,
}

/// Evaluates the prompt of [`bench_engine`] with llama.cpp (`script`, run by `python`: the
/// pinned xllamacpp wheel, `threads` threads, no prompt cache) on `gguf`, then with medprm's
/// engine, `iters` times each, and repeats the pair `rounds` times: each side's best counts, so a
/// busy moment of the machine does not decide the ratio. `work` holds the exchange files.
#[allow(clippy::too_many_arguments)]
pub fn bench_vs_llamacpp(
    engine: &Engine,
    gguf: &std::path::Path,
    tokens: usize,
    iters: usize,
    rounds: usize,
    threads: usize,
    python: &std::path::Path,
    script: &std::path::Path,
    work: &std::path::Path,
) -> Result<VsLlamaCpp> {
    use crate::error::Error;
    let prompt = synthetic_prompt(engine, tokens, 8)?;
    std::fs::create_dir_all(work).map_err(|e| Error::bad_file(work, e))?;
    let ids = work.join("prompt-ids.json");
    let out = work.join("llamacpp.json");
    std::fs::write(&ids, serde_json::to_string(&prompt.ids).expect("ids serialize")).map_err(|e| Error::bad_file(&ids, e))?;
    let mut best: Option<VsLlamaCpp> = None;
    for _ in 0..rounds.max(1) {
        let status = std::process::Command::new(python)
            .arg(script)
            .arg("--model")
            .arg(gguf)
            .arg("--prompt-ids")
            .arg(&ids)
            .args(["--threads", &threads.to_string(), "--iters", &iters.max(1).to_string()])
            .arg("--out")
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| Error::bad_file(python, e))?;
        if !status.success() {
            return Err(Error::Unsupported(format!("the llama.cpp script failed ({status}); `make llamacpp-venv` installs its Python")));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| Error::bad_file(&out, e))?;
        let theirs: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_file(&out, e))?;
        if theirs["prompt_tokens"].as_u64() != Some(prompt.ids.len() as u64) {
            return Err(Error::bad_file(&out, format!("llama.cpp evaluated {} tokens, not {}", theirs["prompt_tokens"], prompt.ids.len())));
        }
        let llamacpp_tokens_per_s = theirs["tokens_per_s"].as_f64().ok_or_else(|| Error::bad_file(&out, "no tokens_per_s"))?;
        let medprm = bench_engine(engine, tokens, 1, iters)?;
        match &mut best {
            None => {
                let llamacpp_info = theirs["info"].as_str().unwrap_or_default().to_string();
                best = Some(VsLlamaCpp { prompt_tokens: prompt.ids.len(), llamacpp_tokens_per_s, llamacpp_info, medprm });
            }
            Some(b) => {
                b.llamacpp_tokens_per_s = b.llamacpp_tokens_per_s.max(llamacpp_tokens_per_s);
                if medprm.tokens_per_s > b.medprm.tokens_per_s {
                    b.medprm = medprm;
                }
            }
        }
    }
    Ok(best.expect("at least one round"))
}
