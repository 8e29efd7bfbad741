//! Errors of the scoring core. Loading problems say which file and what is wrong with it;
//! input problems name the field; `NotReady`, `Unavailable`, `Overloaded` and `Backend` are the
//! serving core's answers that the HTTP layer turns into 503, 503, 429 and 424.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file not found: {0}")]
    MissingFile(PathBuf),
    #[error("cannot read {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer does not match the model: {0}")]
    TokenizerMismatch(String),
    #[error("profile `{profile}` cannot be used with this tokenizer: {reason}")]
    Profile { profile: String, reason: String },
    #[error("invalid input: {field}: {reason}")]
    Input { field: String, reason: String },
    /// Input over a size limit (HTTP 413).
    #[error("too large: {field}: {reason}")]
    TooLarge { field: String, reason: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model is still loading or warming up.
    #[error("not ready: the model is loading or warming up")]
    NotReady,
    /// Too many candidates in flight; the caller should retry later.
    #[error("overloaded: too many candidates in flight")]
    Overloaded,
    /// A service the request needs (the retrieval database) cannot be reached now; the caller
    /// should retry later (HTTP 503 with Retry-After).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A worker, the queue or the model failed on this request.
    #[error("{0}")]
    Backend(String),
}

impl Error {
    pub fn input(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Input { field: field.into(), reason: reason.into() }
    }
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::BadFile { path: path.into(), reason: reason.to_string() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
