//! Fused, differentiable kernels for the training graph (candle `CustomOp`s with a real `bwd`).
//!
//! Each op runs on contiguous f32 CPU tensors and, in the `cuda` build, on contiguous f32/bf16
//! CUDA tensors (`cuda_fwd`, kernels in `<repo>/cuda/`, launched from [`cuda`]); the backward is
//! built from the same ops, so it runs on either device. The public wrappers fall back to the
//! equivalent candle op chain (`*_reference`) on any other device or dtype, so the device switch
//! keeps working.
//!
//! Layout: each op's file states the op (its shapes, its backward in terms of further ops); the
//! arithmetic is in [`cpu`] (the row kernels, shared with the hand-written step in
//! [`crate::fast`]) and in [`cuda`]. The CPU side of every op is a call of one [`cpu`] row kernel
//! per row through [`map_rows`]: work is split over rows only (rayon); every reduction within a
//! row, and the cross-row sum of [`rms_norm`]'s weight gradient (fixed row blocks, summed in block
//! order), has a fixed order, so results are bitwise reproducible for any thread count.
pub mod alloc;
pub(crate) mod cpu;
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

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The contiguous `T` slice behind `s`/`l` (f32 activations, u32 token ids), or a clear error
/// naming the op and the operand.
pub(crate) fn data<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [T]> {
    let Ok(d) = s.as_slice::<T>() else {
        candle_core::bail!("{op}: {what} must be {}, got {:?}", T::DTYPE.as_str(), candle_core::backend::BackendStorage::dtype(s))
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous (call .contiguous() first)"),
    }
}

/// [`data`] for f32 operands.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [f32]> {
    data(s, l, op, what)
}

/// The length of the last dim of `l` (the row length), which must not be 0.
pub(crate) fn row_len(l: &Layout, op: &str) -> candle_core::Result<usize> {
    match l.shape().dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("{op}: empty last dim (shape {:?})", l.shape()),
    }
}

/// An error unless the operands have one shape.
pub(crate) fn same_shape(op: &str, layouts: &[&Layout]) -> candle_core::Result<()> {
    if layouts.windows(2).any(|w| w[0].shape() != w[1].shape()) {
        let shapes: Vec<_> = layouts.iter().map(|l| l.shape().dims()).collect();
        candle_core::bail!("{op}: operands must have one shape, got {shapes:?}");
    }
    Ok(())
}

/// Row `r` of length `len` of a row-major buffer.
#[inline]
pub(crate) fn row(x: &[f32], r: usize, len: usize) -> &[f32] {
    &x[r * len..(r + 1) * len]
}

/// The CPU side of a fused op: a fresh `n`-float output, filled by `f(r, out_row)` for each row
/// `r` of `len` floats (the last row shorter when `len` does not divide `n`), in parallel over
/// blocks of rows that touch ≥ ~16K floats (`work` floats read per row). `f` must write its whole
/// row. Each row is one call, so the result does not depend on the number of threads.
pub(crate) fn map_rows(n: usize, len: usize, work: usize, shape: &Shape, f: impl Fn(usize, &mut [f32]) + Sync) -> candle_core::Result<(CpuStorage, Shape)> {
    let mut out = uninit(n);
    let rpt = rows_per_task(work);
    out.par_chunks_mut(len * rpt).enumerate().for_each(|(blk, ob)| {
        for (k, o) in ob.chunks_mut(len).enumerate() {
            f(blk * rpt + k, o);
        }
    });
    Ok((CpuStorage::F32(out), shape.clone()))
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
