//! Single-kernel entry points on host slices, for benchmarks and cross-backend correctness checks
//! (`bench/kernels.ts` through `bm_kernel_*`). Each one builds tensors from the slices, calls the
//! engine's OWN op — the very function the model and trainer use (`matmul_t`, `RmsNorm`,
//! `Rope::apply_train_bthd`, `Attention::forward` in training mode, `masked_cross_entropy`,
//! `AdamW::step`) — and copies the result back. So a change to the engine's ops changes what these
//! measure; nothing here re-implements a kernel. On CPU f32 the fused ops among them run the row
//! kernels of [`crate::ops::cpu`], the same functions the hand-written training step calls.
//!
//! Every function also returns `op_ns`: the nanoseconds spent in the engine op alone (inputs already
//! on the device, device synchronised before the clock stops), so that a caller can tell the op's
//! cost from the cost of getting data in and out.
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use crate::model::attention::{Attention, AttnMask};
use crate::model::dropout::ForwardCtx;
use crate::model::linear::{matmul_t, Linear};
use crate::model::norm::RmsNorm;
use crate::model::rope::Rope;
use crate::model::ModelConfig;
use crate::train::loss::masked_cross_entropy;
use crate::train::optim::{AdamW, AdamWConfig, Param};
use crate::{Error, Result};

/// An output and the time the engine op took.
#[derive(Debug, Clone)]
pub struct Timed<T> {
    pub out: T,
    pub op_ns: u64,
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::input(format!("{what}: expected {want} values, got {got}")));
    }
    Ok(())
}

fn t(data: &[f32], shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(data, shape, dev)?)
}

fn host(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Runs `f`, synchronises the device, returns its value and the elapsed nanoseconds.
fn timed<T>(dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<(T, u64)> {
    let t0 = Instant::now();
    let v = f()?;
    dev.synchronize()?;
    Ok((v, t0.elapsed().as_nanos() as u64))
}

/// `y = x · wᵀ`, x: [m, k], w: [n, k] (a linear layer's weight, as the model stores it) → [m, n].
/// The model's `Linear` forward (`matmul_t`).
pub fn matmul(dev: &Device, x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Result<Timed<Vec<f32>>> {
    check_len("matmul x", x.len(), m * k)?;
    check_len("matmul w", w.len(), n * k)?;
    let (x, w) = (t(x, &[m, k], dev)?, t(w, &[n, k], dev)?);
    let (y, op_ns) = timed(dev, || matmul_t(&x, &w))?;
    Ok(Timed { out: host(&y)?, op_ns })
}

/// RMSNorm over the last dim of x: [rows, dim] with weight [dim]. `train` selects the model's
/// training form (`RmsNorm::forward_train`, differentiable composition), else the fused inference
/// kernel (`RmsNorm::forward`).
pub fn rms_norm(dev: &Device, x: &[f32], w: &[f32], rows: usize, dim: usize, eps: f64, train: bool) -> Result<Timed<Vec<f32>>> {
    check_len("rms_norm x", x.len(), rows * dim)?;
    check_len("rms_norm weight", w.len(), dim)?;
    let norm = RmsNorm::new(t(w, &[dim], dev)?, eps);
    let x = t(x, &[rows, dim], dev)?;
    let (y, op_ns) = timed(dev, || if train { norm.forward_train(&x) } else { norm.forward(&x) })?;
    Ok(Timed { out: host(&y)?, op_ns })
}

/// A RoPE config for `head_dim`, θ and pair style (everything else from minimind2-small).
fn rope_for(head_dim: usize, theta: f64, interleaved: bool) -> Result<Rope> {
    let mut cfg = ModelConfig::preset("minimind2-small")?;
    cfg.head_dim = Some(head_dim);
    cfg.rope_theta = theta;
    cfg.rope_interleaved = interleaved;
    cfg.rope_scaling = None;
    cfg.inference_rope_scaling = false;
    Ok(Rope::new(&cfg))
}

/// Rotary embedding, training form, positions 0..t, on q: [b, h, t, d] and k: [b, kvh, t, d]:
/// `Rope::apply_train_bthd` on the projections' layout [b, t, h, d], as the model's training
/// forward calls it (on CPU f32 the fused op, i.e. [`crate::ops::cpu`]'s `rope_row`, the row the
/// hand-written step runs). Tables (`Rope::tables`) and the layout changes are made outside the
/// timed op, as the model builds the tables once per forward and its projections come out in
/// [b, t, h, d]. Returns (q', k') in [b, h, t, d], concatenated: q' first.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    dev: &Device,
    q: &[f32],
    k: &[f32],
    b: usize,
    h: usize,
    kvh: usize,
    t_len: usize,
    d: usize,
    theta: f64,
    interleaved: bool,
) -> Result<Timed<Vec<f32>>> {
    check_len("rope q", q.len(), b * h * t_len * d)?;
    check_len("rope k", k.len(), b * kvh * t_len * d)?;
    if !d.is_multiple_of(2) {
        return Err(Error::input(format!("rope: head_dim must be even, got {d}")));
    }
    let rope = rope_for(d, theta, interleaved)?;
    let (cos, sin) = rope.tables(0, t_len, false, dev)?;
    let bthd = |x: &[f32], heads: usize| -> Result<Tensor> { Ok(t(x, &[b, heads, t_len, d], dev)?.transpose(1, 2)?.contiguous()?) };
    let (q, k) = (bthd(q, h)?, bthd(k, kvh)?);
    let ((qr, kr), op_ns) = timed(dev, || Ok((rope.apply_train_bthd(&q, &cos, &sin)?, rope.apply_train_bthd(&k, &cos, &sin)?)))?;
    let mut out = host(&qr.transpose(1, 2)?)?;
    out.extend(host(&kr.transpose(1, 2)?)?);
    Ok(Timed { out, op_ns })
}

/// Shapes of [`attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub theta: f64,
}

/// The model's self-attention layer in training mode (`Attention::forward` with `ForwardCtx::train`,
/// no dropout, causal mask, no cache): q/k/v projections, RoPE (`apply_train`, rotate-half), GQA,
/// causal softmax, probs·v, o projection. x: [b, t, hidden]; wq: [heads·hd, hidden];
/// wk, wv: [kv·hd, hidden]; wo: [hidden, heads·hd] → [b, t, hidden].
/// The mask and RoPE tables are built outside the timed op, as the model builds them once per forward.
pub fn attention(dev: &Device, s: AttentionShape, x: &[f32], wq: &[f32], wk: &[f32], wv: &[f32], wo: &[f32]) -> Result<Timed<Vec<f32>>> {
    let AttentionShape { b, t: tl, hidden, heads, kv_heads, head_dim, theta } = s;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::input(format!("attention: heads ({heads}) must be a multiple of kv_heads ({kv_heads})")));
    }
    check_len("attention x", x.len(), b * tl * hidden)?;
    check_len("attention wq", wq.len(), heads * head_dim * hidden)?;
    check_len("attention wk", wk.len(), kv_heads * head_dim * hidden)?;
    check_len("attention wv", wv.len(), kv_heads * head_dim * hidden)?;
    check_len("attention wo", wo.len(), hidden * heads * head_dim)?;
    let attn = Attention {
        q_proj: Linear::new("q_proj", t(wq, &[heads * head_dim, hidden], dev)?),
        k_proj: Linear::new("k_proj", t(wk, &[kv_heads * head_dim, hidden], dev)?),
        v_proj: Linear::new("v_proj", t(wv, &[kv_heads * head_dim, hidden], dev)?),
        o_proj: Linear::new("o_proj", t(wo, &[hidden, heads * head_dim], dev)?),
        q_norm: None,
        k_norm: None,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim,
        dropout: 0.0,
    };
    let rope = rope_for(head_dim, theta, false)?;
    let (cos, sin) = rope.tables(0, tl, false, dev)?;
    let x = t(x, &[b, tl, hidden], dev)?;
    let (y, op_ns) = timed(dev, || {
        let mut ctx = ForwardCtx::train(None);
        attn.forward(&x, &rope, &cos, &sin, AttnMask::Causal { offset: 0 }, None, &mut ctx)
    })?;
    Ok(Timed { out: host(&y)?, op_ns })
}

/// Masked softmax cross-entropy (`masked_cross_entropy`: mean of −log p(target) over positions with
/// mask > 0), logits: [b, t, v], targets/mask: [b, t]. With `grad`, also the gradient of the loss
/// with respect to the logits through candle's backward (timed together with the forward).
/// Returns [loss, dlogits...] (just [loss] without `grad`).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(dev: &Device, logits: &[f32], targets: &[u32], mask: &[f32], b: usize, t_len: usize, v: usize, grad: bool) -> Result<Timed<Vec<f32>>> {
    check_len("cross_entropy logits", logits.len(), b * t_len * v)?;
    check_len("cross_entropy targets", targets.len(), b * t_len)?;
    check_len("cross_entropy mask", mask.len(), b * t_len)?;
    if let Some(&bad) = targets.iter().find(|&&x| x as usize >= v) {
        return Err(Error::input(format!("cross_entropy: target {bad} ≥ vocabulary {v}")));
    }
    let lv = Var::from_tensor(&t(logits, &[b, t_len, v], dev)?)?;
    let targets = Tensor::from_slice(targets, (b, t_len), dev)?;
    let mask = t(mask, &[b, t_len], dev)?;
    let ((loss, g), op_ns) = timed(dev, || {
        let loss = masked_cross_entropy(lv.as_tensor(), &targets, &mask)?;
        let g = if grad {
            let store = loss.backward()?;
            Some(store.get(lv.as_tensor()).cloned().ok_or_else(|| Error::input("cross_entropy: no gradient reached the logits"))?)
        } else {
            None
        };
        Ok((loss, g))
    })?;
    let mut out = vec![loss.to_dtype(DType::F32)?.to_scalar::<f32>()?];
    if let Some(g) = g {
        out.extend(host(&g)?);
    }
    Ok(Timed { out, op_ns })
}

/// One AdamW update (`AdamW::step`, PyTorch's AdamW) of a parameter vector w with gradient g, from
/// moments (m, v) after `step − 1` earlier steps (`step` ≥ 1; at step 1 m and v are ignored: they
/// start at zero). Returns [w', m', v'] concatenated. Only `AdamW::step` is timed; loading the
/// state and making the gradient store are not.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(dev: &Device, w: &[f32], g: &[f32], m: &[f32], v: &[f32], step: u64, lr: f64, cfg: AdamWConfig, decay: bool) -> Result<Timed<Vec<f32>>> {
    let n = w.len();
    check_len("adamw g", g.len(), n)?;
    check_len("adamw m", m.len(), n)?;
    check_len("adamw v", v.len(), n)?;
    if step == 0 {
        return Err(Error::input("adamw: step counts from 1"));
    }
    let var = Var::from_tensor(&t(w, &[n], dev)?)?;
    let mut opt = AdamW::new(vec![Param::with_decay("w", var.clone(), decay)], cfg)?;
    if step > 1 {
        let mut tensors = std::collections::HashMap::new();
        tensors.insert("w.exp_avg".to_string(), t(m, &[n], dev)?);
        tensors.insert("w.exp_avg_sq".to_string(), t(v, &[n], dev)?);
        let (_, mut meta) = opt.export_state()?;
        meta["steps"] = serde_json::json!(step - 1);
        meta["params"][0]["step"] = serde_json::json!(step - 1);
        opt.load_state(&tensors, &meta)?;
    }
    // A gradient store holding exactly g for w: d/dw Σ(w ⊙ g) = g.
    let gt = t(g, &[n], dev)?;
    let grads = (var.as_tensor() * &gt)?.sum_all()?.backward()?;
    let (_, op_ns) = timed(dev, || opt.step(&grads, lr))?;
    let (state, _) = opt.export_state()?;
    let mut out = host(var.as_tensor())?;
    for key in ["w.exp_avg", "w.exp_avg_sq"] {
        let s = state.get(key).ok_or_else(|| Error::input(format!("adamw: no {key} after the step")))?;
        out.extend(host(s)?);
    }
    Ok(Timed { out, op_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_hand_result() {
        // x [2,3] · w[2,3]ᵀ
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let y = matmul(&Device::Cpu, &x, &w, 2, 3, 2).unwrap().out;
        assert_eq!(y, vec![-2.0, 3.0, -2.0, 7.5]);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let cfg = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
        let r = adamw_step(&Device::Cpu, &[1.0, -1.0], &[0.5, -2.0], &[0.0; 2], &[0.0; 2], 1, 0.1, cfg, false).unwrap().out;
        // First step: update = lr · sign(g) (up to eps).
        assert!((r[0] - 0.9).abs() < 1e-5 && (r[1] + 0.9).abs() < 1e-5, "{r:?}");
        assert!((r[2] - 0.05).abs() < 1e-7); // m = 0.1 g
        let r2 = adamw_step(&Device::Cpu, &r[..2], &[0.5, -2.0], &r[2..4], &r[4..6], 2, 0.1, cfg, false).unwrap().out;
        assert!((r2[0] - 0.8).abs() < 1e-4, "{r2:?}");
    }

    #[test]
    fn cross_entropy_grad_is_softmax_minus_onehot() {
        let logits = [0.0, 0.0, 0.0, 0.0];
        let r = cross_entropy(&Device::Cpu, &logits, &[1, 0], &[1.0, 0.0], 1, 2, 2, true).unwrap().out;
        assert!((r[0] - std::f32::consts::LN_2).abs() < 1e-6);
        assert!((r[1] - 0.5).abs() < 1e-6 && (r[2] + 0.5).abs() < 1e-6 && r[3] == 0.0 && r[4] == 0.0, "{r:?}");
    }
}
