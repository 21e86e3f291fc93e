//! bunmind engine: tokenizer, model family, training, generation. Plain Rust API; the C ABI lives
//! in the `ffi` crate and the browser build in `wasm`.
pub mod device;
pub mod dist;
pub mod env;
pub mod error;
pub mod export;
#[cfg(not(target_arch = "wasm32"))]
pub mod fast;
pub mod generate;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod path;
pub mod rng;
pub mod tokenizer;
pub mod train;
pub mod trainer;

pub use error::{Error, Result};
