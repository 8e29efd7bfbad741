//! medprm: serve process reward models (PRMs) for medical reasoning.
//!
//! Data flows one way: request → [`infer::validate`] (a validated job) → [`infer`] (permits,
//! documents, [`prompt`] building and [`tokenizer`] on workers, queue) → [`engine`] (batches) →
//! [`model`] (hidden states at tag rows, 2-row label head) → per-step probabilities →
//! [`aggregate`] (solution scores, ranking, Best-of-N) → response. The HTTP [`server`] and the
//! offline [`cli`] both drive [`infer`]; [`tools`] (benchmarks, load generator, test model) are
//! never imported by production code.

pub mod aggregate;
pub mod args;
pub mod assets;
pub mod cli;
pub mod engine;
pub mod error;
pub mod eval;
pub mod figures;
pub mod image;
pub mod infer;
pub mod label;
pub mod metrics;
pub mod model;
pub mod profile;
pub mod progress;
pub mod prompt;
pub mod retrieval;
pub mod review;
pub mod rng;
pub mod server;
pub mod steps;
pub mod template;
pub mod tokenizer;
pub mod tools;
