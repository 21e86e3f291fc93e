//! The MiniMind model family (LLaMA-style decoder) on candle.
//!
//! - One [`ModelConfig`] (HF `config.json`) covers every preset: GQA, RoPE (rotate-half, or the
//!   seed v1's interleaved pairs), optional QK-norm (minimind-3 / Qwen3), dense SwiGLU or MoE with
//!   shared experts, tied or separate LM head, YaRN scaling for long inference.
//! - Parameters live in a `candle_nn::VarMap` (f32) under Hugging Face tensor names.
//! - Two forwards: [`Model::forward_train`] uses only differentiable ops (on CPU f32 the fused
//!   ops of [`crate::ops`] with their own backward: RMSNorm, RoPE, causal softmax, SwiGLU; candle
//!   op chains elsewhere); [`Model::forward`] uses candle's fused kernels
//!   and a [`Cache`] for incremental decoding.
//! - [`lora`] adds low-rank adapters in their own VarMap; [`io`] loads and saves checkpoints.
pub mod attention;
pub mod cache;
pub mod config;
pub mod dropout;
pub mod hf;
pub mod io;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod rope;
pub mod transformer;
#[cfg(target_arch = "wasm32")]
mod wasm_matmul;

pub use cache::Cache;
pub use config::{ModelConfig, RopeParameters, RopeScaling};
pub use hf::Family;
pub use dropout::{DropoutSource, SeededDropout};
pub use lora::{LoraAdapters, LoraConfig};
pub use params::{count_parameters, param_specs, FfnParams, LayerParams, LinearParams, MlpParams, ParamKind, ParamLayout, ParamSpec};
pub use crate::rng::Rng;
pub use transformer::{Model, NamedParam};
