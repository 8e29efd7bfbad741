//! Protocols that existing clients already speak, each translated to the same scoring core:
//! OpenRLHF's remote reward (`/get_reward`), vLLM's `/pooling`, and Cohere / Jina / TEI rerank.

pub mod openrlhf;
pub mod rerank;
pub mod pooling;
