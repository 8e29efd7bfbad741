//! medprm: serve process reward models (PRMs) for medical reasoning.
//!
//! Data flows one way: request → [`prompt`] (profile, documents, steps) → [`tokenizer`] (ids and
//! step-tag positions) → [`engine`] (batch) → [`model`] (hidden states at tag rows, 2-row label
//! head) → per-step probabilities → [`aggregate`] (solution scores, Best-of-N) → response.

pub mod aggregate;
pub mod bench;
pub mod cli;
pub mod engine;
pub mod error;
pub mod loadgen;
pub mod model;
pub mod profile;
pub mod prompt;
pub mod retrieval;
pub mod rng;
pub mod server;
pub mod steps;
pub mod template;
pub mod testmodel;
pub mod tokenizer;
