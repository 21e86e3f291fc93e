//! Every environment variable the Rust core reads at run time, read here and nowhere else.
//!
//! | Variable | Values (default first) | Effect |
//! |---|---|---|
//! | `BUNMIND_HANDWRITTEN_CPU` | unset/`1`, `0` | `0` turns off the hand-written CPU kernels of [`crate::fast`]: the LM training step *and* the prompt prefill of generation then run through candle's op graph (autograd for training). See [`crate::path::StepPath`]. Read at every step / prefill. |
//! | `BUNMIND_FAST_STEP` | unset/`1`, `0` | The old name of `BUNMIND_HANDWRITTEN_CPU`, still honoured; `BUNMIND_HANDWRITTEN_CPU` wins when both are set. |
//! | `BUNMIND_CUDA_FUSED` | unset/`1`, `0` | `0` turns bunmind's fused CUDA kernels off (RMSNorm, RoPE, SwiGLU, softmax, cross-entropy, AdamW): the candle op chains run instead. Only in builds with the `cuda` feature. Read once per process. |
//! | `BUNMIND_MALLOC_TUNE` | unset/`1`, `0` | `0` skips the glibc `mallopt` tuning applied before the first training forward ([`crate::ops::alloc`]). Read once per process. |
//! | `BUNMIND_DIST_HOST` | `127.0.0.1`, any host/IP | Address rank 0 of a TCP data-parallel job listens on ([`crate::dist`]). Read when rank 0 connects. |
//!
//! Build time only (read by `engine/build.rs` under the `cuda` feature, not by the library):
//! `NVCC`, `CUDA_HOME` (nvcc = `$CUDA_HOME/bin/nvcc`), `CUDA_COMPUTE_CAP` (default 90) and
//! `BUNMIND_NVCC_FLAGS` (extra nvcc flags).
//!
//! The `BUNMIND_*` variables of the TypeScript side (rank, world size, rendezvous, library paths,
//! ...) are read by `src/`, not here.

/// The current name of the hand-written CPU kernels' switch.
pub const HANDWRITTEN_CPU: &str = "BUNMIND_HANDWRITTEN_CPU";
/// Its old name (an alias).
pub const HANDWRITTEN_CPU_OLD: &str = "BUNMIND_FAST_STEP";
pub const CUDA_FUSED: &str = "BUNMIND_CUDA_FUSED";
pub const MALLOC_TUNE: &str = "BUNMIND_MALLOC_TUNE";
pub const DIST_HOST: &str = "BUNMIND_DIST_HOST";

/// An on/off switch: on unless set to `0`.
fn switch_on(name: &str) -> Option<bool> {
    std::env::var(name).ok().map(|v| v != "0")
}

/// The hand-written CPU training step and prefill may run (`BUNMIND_HANDWRITTEN_CPU`, or the old
/// `BUNMIND_FAST_STEP`; on unless `0`). Not cached: tests toggle it within one process.
pub fn handwritten_cpu() -> bool {
    handwritten_cpu_off_by().is_none()
}

/// Which variable turned the hand-written kernels off, for messages (`None` when they are on).
pub fn handwritten_cpu_off_by() -> Option<&'static str> {
    match (switch_on(HANDWRITTEN_CPU), switch_on(HANDWRITTEN_CPU_OLD)) {
        (Some(false), _) => Some(HANDWRITTEN_CPU),
        (None, Some(false)) => Some(HANDWRITTEN_CPU_OLD),
        _ => None,
    }
}

/// Fused CUDA kernels requested (`BUNMIND_CUDA_FUSED`, on unless `0`). The caller caches it.
pub fn cuda_fused() -> bool {
    switch_on(CUDA_FUSED).unwrap_or(true)
}

/// The glibc allocator tuning requested (`BUNMIND_MALLOC_TUNE`, on unless `0`).
pub fn malloc_tune() -> bool {
    switch_on(MALLOC_TUNE).unwrap_or(true)
}

/// The host rank 0 listens on (`BUNMIND_DIST_HOST`, default `127.0.0.1`).
pub fn dist_host() -> String {
    std::env::var(DIST_HOST).unwrap_or_else(|_| "127.0.0.1".into())
}
