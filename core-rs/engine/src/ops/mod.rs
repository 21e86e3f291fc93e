//! Fused, differentiable CPU kernels for the training graph (candle `CustomOp`s with a real `bwd`).
//!
//! Each op runs on contiguous f32 CPU tensors and, in the `cuda` build, on contiguous f32/bf16
//! CUDA tensors (`cuda_fwd`, kernels in `<repo>/cuda/`, launched from [`cuda`]); the backward is
//! built from the same ops, so it runs on either device. The public wrappers fall back to the
//! equivalent candle op chain on any other device or dtype, so the device switch keeps working.
//! Work is split over rows only (rayon); every reduction within a row, and the cross-row sum of
//! [`rms_norm`]'s weight gradient (fixed row blocks, summed in block order), has a fixed order, so
//! results are bitwise reproducible for any thread count.
pub mod alloc;
pub mod cuda;
pub mod parity;
pub mod rmsnorm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
pub mod xent;

pub use rmsnorm::rms_norm;
pub use rope::rope_bthd;
pub use softmax::{causal_mask_tensor, softmax_scaled};
pub use swiglu::swiglu;
pub use xent::token_logprobs_fused;

use candle_core::{CpuStorage, Layout, Tensor};

/// The contiguous f32 slice behind `s`/`l`, or a clear error naming the op and the operand.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{op}: {what} must be f32, got {:?}", candle_core::backend::BackendStorage::dtype(s))
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous (call .contiguous() first)"),
    }
}

/// True when the fused kernels apply to `t`: CPU f32, or (CUDA build) CUDA f32/bf16.
pub(crate) fn fused_ok(t: &Tensor) -> bool {
    use candle_core::DType;
    match t.device() {
        candle_core::Device::Cpu => t.dtype() == DType::F32,
        candle_core::Device::Cuda(_) => cuda::cuda_fused_enabled() && matches!(t.dtype(), DType::F32 | DType::BF16),
        _ => false,
    }
}

/// Rows per rayon task so that a task touches ≥ ~16K floats.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

/// Output buffer whose every element the kernel writes before it is read (no zeroing pass).
#[allow(clippy::uninit_vec)]
pub(crate) fn uninit(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and each caller writes all n elements before the
    // buffer is handed to candle (candle's own kernels allocate outputs the same way).
    unsafe { v.set_len(n) };
    v
}
