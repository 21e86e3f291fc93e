//! Exports of a loaded [`crate::model::Model`] to other runtimes' formats.
//!
//! - [`gguf`]: a GGUF file for llama.cpp / Ollama (architectures `llama`, `qwen3`, `qwen3moe`),
//!   written with candle's GGUF writer; f32, f16 or q8_0 weights.
pub mod gguf;

pub use gguf::{export_gguf, gguf_arch, gguf_unsupported, GgufArch, GgufOptions, GgufReport, GgufTokenizer, GgufType};
