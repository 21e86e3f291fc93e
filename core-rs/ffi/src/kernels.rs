//! Kernel exports for benchmarks and cross-backend checks: one engine op on caller-owned typed
//! arrays (`bunmind_engine::kernels`), on this build's device (CPU, or CUDA device 0 in the CUDA
//! build). Inputs are borrowed for the call; the output is written into the caller's `out` array,
//! whose length must be exactly what the kernel produces (stated per export) — otherwise
//! `BM_INVALID_ARGUMENT` naming the expected length. `op_ns` (nullable) receives the nanoseconds
//! spent in the engine op alone, without copying data in and out.
use bunmind_engine::kernels::{self, AttentionShape, Timed};
use bunmind_engine::train::optim::AdamWConfig;

use crate::model::device;
use crate::*;

/// Copy a kernel's result into the caller's buffer (exact length) and report its op time.
unsafe fn finish(r: Timed<Vec<f32>>, out: *mut f32, out_len: usize, op_ns: *mut u64) -> FfiResult<i32> {
    if r.out.len() != out_len {
        return Err(FfiError::arg(format!("out: the kernel writes {} floats, the buffer holds {out_len}", r.out.len())));
    }
    out_slice(out, out_len, "out")?.copy_from_slice(&r.out);
    if !op_ns.is_null() {
        op_ns.write(r.op_ns);
    }
    Ok(BM_OK)
}

/// `y = x · wᵀ`: x [m, k], w [n, k] (a linear weight as the model stores it) → out [m, n].
///
/// # Safety
/// Pointers must cover the stated lengths; `op_ns` null or writable.
#[no_mangle]
pub unsafe extern "C" fn bm_kernel_matmul(
    x: *const f32,
    w: *const f32,
    m: usize,
    k: usize,
    n: usize,
    out: *mut f32,
    out_len: usize,
    op_ns: *mut u64,
) -> i32 {
    guard(|| {
        let x = slice_arg(x, m * k, "x")?;
        let w = slice_arg(w, n * k, "w")?;
        finish(kernels::matmul(&device()?, x, w, m, k, n)?, out, out_len, op_ns)
    })
}

/// RMSNorm over rows of x [rows, dim] with weight [dim] → out [rows, dim]. `train` ≠ 0: the
/// training form (differentiable composition); 0: the fused inference kernel.
///
/// # Safety
/// Pointers must cover the stated lengths; `op_ns` null or writable.
#[no_mangle]
pub unsafe extern "C" fn bm_kernel_rms_norm(
    x: *const f32,
    w: *const f32,
    rows: usize,
    dim: usize,
    eps: f64,
    train: u8,
    out: *mut f32,
    out_len: usize,
    op_ns: *mut u64,
) -> i32 {
    guard(|| {
        let x = slice_arg(x, rows * dim, "x")?;
        let w = slice_arg(w, dim, "weight")?;
        finish(kernels::rms_norm(&device()?, x, w, rows, dim, eps, train != 0)?, out, out_len, op_ns)
    })
}

/// RoPE (training form) at positions 0..t on q [b, h, t, d] and k [b, kvh, t, d]; `interleaved` ≠ 0
/// rotates pairs (x₂ᵢ, x₂ᵢ₊₁) (seed v1), else rotate-half. out = q' then k' (b·(h + kvh)·t·d floats).
///
/// # Safety
/// Pointers must cover the stated lengths; `op_ns` null or writable.
#[no_mangle]
pub unsafe extern "C" fn bm_kernel_rope(
    q: *const f32,
    k: *const f32,
    b: usize,
    h: usize,
    kvh: usize,
    t: usize,
    d: usize,
    theta: f64,
    interleaved: u8,
    out: *mut f32,
    out_len: usize,
    op_ns: *mut u64,
) -> i32 {
    guard(|| {
        let q = slice_arg(q, b * h * t * d, "q")?;
        let k = slice_arg(k, b * kvh * t * d, "k")?;
        finish(kernels::rope(&device()?, q, k, b, h, kvh, t, d, theta, interleaved != 0)?, out, out_len, op_ns)
    })
}

/// The model's attention layer in training mode (projections, RoPE rotate-half, GQA, causal
/// softmax, o projection), x [b, t, hidden] → out [b, t, hidden]. Weights: wq [heads·hd, hidden],
/// wk and wv [kv·hd, hidden], wo [hidden, heads·hd].
///
/// # Safety
/// Pointers must cover the stated lengths; `op_ns` null or writable.
#[no_mangle]
pub unsafe extern "C" fn bm_kernel_attention(
    x: *const f32,
    wq: *const f32,
    wk: *const f32,
    wv: *const f32,
    wo: *const f32,
    b: usize,
    t: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    theta: f64,
    out: *mut f32,
    out_len: usize,
    op_ns: *mut u64,
) -> i32 {
    guard(|| {
        let (qd, kd) = (heads * head_dim, kv_heads * head_dim);
        let x = slice_arg(x, b * t * hidden, "x")?;
        let wq = slice_arg(wq, qd * hidden, "wq")?;
        let wk = slice_arg(wk, kd * hidden, "wk")?;
        let wv = slice_arg(wv, kd * hidden, "wv")?;
        let wo = slice_arg(wo, hidden * qd, "wo")?;
        let s = AttentionShape { b, t, hidden, heads, kv_heads, head_dim, theta };
        finish(kernels::attention(&device()?, s, x, wq, wk, wv, wo)?, out, out_len, op_ns)
    })
}

/// Masked softmax cross-entropy over logits [b, t, v] with u32 targets and f32 mask [b, t]
/// (mean over mask > 0). out = [loss] (1 float) or, with `grad` ≠ 0, [loss, dloss/dlogits...]
/// (1 + b·t·v floats).
///
/// # Safety
/// Pointers must cover the stated lengths; `op_ns` null or writable.
#[no_mangle]
pub unsafe extern "C" fn bm_kernel_cross_entropy(
    logits: *const f32,
    targets: *const u32,
    mask: *const f32,
    b: usize,
    t: usize,
    v: usize,
    grad: u8,
    out: *mut f32,
    out_len: usize,
    op_ns: *mut u64,
) -> i32 {
    guard(|| {
        let logits = slice_arg(logits, b * t * v, "logits")?;
        let targets = slice_arg(targets, b * t, "targets")?;
        let mask = slice_arg(mask, b * t, "mask")?;
        finish(kernels::cross_entropy(&device()?, logits, targets, mask, b, t, v, grad != 0)?, out, out_len, op_ns)
    })
}

/// One AdamW step (PyTorch's AdamW) on a parameter vector of n floats: w, g, and the moments m, v
/// after `step − 1` steps (ignored at step 1). out = [w', m', v'] (3·n floats).
///
/// # Safety
/// Pointers must cover the stated lengths; `op_ns` null or writable.
#[no_mangle]
pub unsafe extern "C" fn bm_kernel_adamw(
    w: *const f32,
    g: *const f32,
    m: *const f32,
    v: *const f32,
    n: usize,
    step: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    out: *mut f32,
    out_len: usize,
    op_ns: *mut u64,
) -> i32 {
    guard(|| {
        let (w, g) = (slice_arg(w, n, "w")?, slice_arg(g, n, "g")?);
        let (m, v) = (slice_arg(m, n, "m")?, slice_arg(v, n, "v")?);
        let cfg = AdamWConfig { beta1, beta2, eps, weight_decay };
        finish(kernels::adamw_step(&device()?, w, g, m, v, step, lr, cfg, weight_decay != 0.0)?, out, out_len, op_ns)
    })
}

/// Parity of the fused ops on the named device against the CPU f32 reference, for f32 and bf16
/// activations (`bunmind_engine::ops::parity`): writes
/// `{"device", "cuda_kernels", "compute_cap", "ok", "rows": [{op, dtype, what, max_abs_err, rel_err, tol, ok}]}`.
/// A mismatch is reported in the rows (`ok: false`), not as an error.
///
/// # Safety
/// `device` must point at `device_len` bytes; see [`write_bytes`] for the output.
#[no_mangle]
pub unsafe extern "C" fn bm_parity_check(device: *const u8, device_len: usize, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let dev = crate::model::device_named(str_arg(device, device_len, "device")?)?;
        let mut rows = bunmind_engine::ops::parity::parity(&dev, candle_core::DType::F32)?;
        rows.extend(bunmind_engine::ops::parity::parity(&dev, candle_core::DType::BF16)?);
        #[cfg(feature = "cuda")]
        let cap_s = bunmind_engine::ops::cuda::COMPUTE_CAP;
        #[cfg(not(feature = "cuda"))]
        let cap_s = "";
        let info = serde_json::json!({
            "device": bunmind_engine::device::device_name(&dev),
            "cuda_kernels": bunmind_engine::ops::cuda::KERNELS_BUILT,
            "compute_cap": cap_s,
            "ok": rows.iter().all(|r| r.ok),
            "rows": rows,
        });
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}
