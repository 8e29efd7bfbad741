//! Tools around the service, never imported by production code: benchmarks, the HTTP load
//! generator and the deterministic test model.

pub mod bench;
pub mod bench_visual;
pub mod gpu_check;
pub mod loadgen;
pub mod prm_models;
pub mod soak;
pub mod testmodel;
pub mod visualprm_model;
