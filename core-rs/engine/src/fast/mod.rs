//! Hand-written training steps for the common case, next to candle's autograd for the rest.
//!
//! [`dense::lm_step`] is the language-model step (forward, masked cross-entropy, backward) of a
//! dense decoder on CPU f32, about 1.5× faster than the recorded graph for full training and
//! about 2× for LoRA (adapters on a frozen base: no frozen weight's gradient is computed; trainer
//! steps on minimind2-small, rank 16 on q/o, `examples/step_profile.rs` with `LORA=1`); the
//! trainer uses it whenever [`dense::unsupported_step`] returns `None`, i.e. also no dropout,
//! model or LoRA (set `BUNMIND_HANDWRITTEN_CPU=0`, old name `BUNMIND_FAST_STEP=0`, to force
//! autograd; the choice is [`crate::path::choose`]). Its gradients are checked against
//! the autograd graph and against finite differences in `tests/fast_step.rs`. [`dense::prefill`]
//! is its forward alone (with or without adapters), for a prompt into an empty KV cache.
pub mod dense;
pub(crate) mod gemm;
/// The CPU row kernels the step runs: [`crate::ops::cpu`], the same functions the candle ops'
/// CPU paths call (one implementation of each formula). `vmath` is the name the step uses.
pub(crate) use crate::ops::cpu as vmath;

pub use dense::{lm_step, prefill, unsupported, unsupported_step, LmStep, Prefill};

/// False when `BUNMIND_HANDWRITTEN_CPU=0` (or the old `BUNMIND_FAST_STEP=0`) is set: every step
/// and every prefill then goes through candle's graph ([`crate::env::handwritten_cpu`]).
pub fn enabled() -> bool {
    crate::env::handwritten_cpu()
}
