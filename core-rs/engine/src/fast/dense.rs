//! The LM training step of a dense decoder on CPU f32, forward and backward written out by hand
//! (as llm.c does) instead of recorded by candle's autograd.
//!
//! Why: on a CPU the step is bound by matrix products, and candle's backprop adds work around
//! each of them: a zero-filled output for every product, a zero tensor plus an add for every
//! gradient it accumulates, copies of transposed operands, and full T×T attention scores of
//! which the causal half is thrown away. Here every product goes straight to `gemm` with the
//! operands' strides, gradients accumulate inside the product (`dst += a·b`), causal attention
//! computes only the blocks on or below the diagonal, and the elementwise kernels are fused and
//! vectorised ([`super::vmath`]). The arithmetic is the same as the candle graph's
//! ([`crate::model::Model::forward_train`] + masked cross-entropy): tests compare every
//! gradient with it and with finite differences.
//!
//! LoRA: with adapters attached (`Model::attach_lora`) the base weights are frozen and only the
//! adapters train, as in the trainer's `lora` mode. A targeted projection computes
//! `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` (s = alpha/r; A `[r, in]`, B `[out, r]`), keeping `x·Aᵀ` for the
//! backward; the backward still carries dx through every W and adapter, but computes no base
//! weight's, norm's or embedding's gradient (nor the first layer's input gradient): that skipped
//! work, about a third of a full step, is where LoRA's speed comes from. The gradients returned
//! are then exactly those of the adapters' A and B tensors (the Vars the trainer's AdamW tracks).
//!
//! Scope: dense MLPs (QK-norm or not), full training or LoRA adapters on the attention and MLP
//! projections, no dropout (model or LoRA), CPU f32 ([`unsupported`] / [`unsupported_step`] say
//! why not). Everything else (MoE, dropout, DPO, distillation, CUDA) trains through autograd.
use candle_core::{backprop::GradStore, CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;

use super::gemm::{mm, mm_scaled, Mat, SendPtr};
use super::vmath;
use crate::model::linear::Linear;
use crate::model::mlp::FeedForward;
use crate::model::Model;
use crate::ops::uninit;
use crate::{Error, Result};

/// Rows of queries per causal attention block: each block multiplies against keys `0..end`.
const ATTN_BLOCK: usize = 64;

/// Why the hand-written kernels cannot run `model`, forward ([`prefill`]) or step ([`lm_step`])
/// (`None`: they can). Dropout is not checked here: see [`unsupported_step`].
pub fn unsupported(model: &Model) -> Option<String> {
    let cfg = &model.cfg;
    if !model.device.is_cpu() {
        return Some("the model is not on the CPU".into());
    }
    if cfg.use_moe {
        return Some("mixture-of-experts layers".into());
    }
    if cfg.has_bias() {
        return Some("projection biases".into());
    }
    if model.embed_tokens.dtype() != candle_core::DType::F32 {
        return Some("weights are not f32".into());
    }
    if model.autocast().is_some() {
        return Some("mixed-precision autocast".into());
    }
    if model.layers.iter().any(|l| !matches!(l.mlp, FeedForward::Dense(_))) {
        return Some("mixture-of-experts layers".into());
    }
    // LoRA targets only the attention and MLP projections (`LORA_TARGETS`); an adapter on the
    // head cannot be attached through `LoraAdapters`, and this step does not implement one.
    if model.lm_head.as_ref().is_some_and(|h| h.lora.is_some()) {
        return Some("a LoRA adapter on lm_head".into());
    }
    None
}

/// Why [`lm_step`] cannot train `model` (`None`: it can): what [`unsupported`] says, or dropout,
/// which this step does not draw (model dropout, or LoRA dropout on the adapters' inputs).
pub fn unsupported_step(model: &Model) -> Option<String> {
    if let Some(why) = unsupported(model) {
        return Some(why);
    }
    if model.cfg.dropout > 0.0 {
        return Some(format!("dropout {}", model.cfg.dropout));
    }
    let lora_dropout = model.lora_dropout();
    if lora_dropout > 0.0 {
        return Some(format!("LoRA dropout {lora_dropout}"));
    }
    None
}

/// What one micro-batch's step produced: Σ over counted positions of −log p(target), the count,
/// and d(Σ)/dθ for every trainable parameter (not divided by the count: the caller normalises the
/// step): every base weight, or with LoRA adapters attached only the adapters' A and B.
pub struct LmStep {
    pub loss_sum: f64,
    pub count: usize,
    pub grads: GradStore,
}

/// A contiguous f32 CPU tensor's data, readable while the view lives.
struct View<'a> {
    guard: Box<dyn std::ops::Deref<Target = Storage> + 'a>,
    start: usize,
    len: usize,
}

impl<'a> View<'a> {
    fn new(t: &'a Tensor, what: &str) -> Result<View<'a>> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) =
            layout.contiguous_offsets().ok_or_else(|| Error::input(format!("fast step: `{what}` is not contiguous")))?;
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            return Err(Error::input(format!("fast step: `{what}` is not an f32 CPU tensor")));
        }
        Ok(View { guard: Box::new(guard), start, len: end - start })
    }
    fn s(&self) -> &[f32] {
        match &**self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!("checked in View::new"),
        }
    }
}

/// A LoRA adapter's tensors: A `[r, in]`, B `[out, r]`, and the scale alpha/r.
struct Adapter<'a> {
    a: View<'a>,
    b: View<'a>,
    r: usize,
    s: f32,
}

/// A projection `y = x·Wᵀ` (w: `[out, in]`), plus `s·(x·Aᵀ)·Bᵀ` when an adapter is attached.
struct Proj<'a> {
    w: View<'a>,
    lora: Option<Adapter<'a>>,
}

impl<'a> Proj<'a> {
    fn new(l: &'a Linear, what: &str) -> Result<Proj<'a>> {
        let w = View::new(&l.weight, what)?;
        let lora = match &l.lora {
            None => None,
            Some(lo) => {
                let (r, out, inp) = (lo.a.dims().first().copied().unwrap_or(0), l.out_features(), l.in_features());
                if lo.a.dims() != [r, inp] || lo.b.dims() != [out, r] {
                    return Err(Error::input(format!(
                        "fast step: `{what}` LoRA shapes A {:?} / B {:?} do not fit a [{out}, {inp}] weight",
                        lo.a.dims(),
                        lo.b.dims()
                    )));
                }
                let a = View::new(&lo.a, &format!("{what}.lora_A"))?;
                let b = View::new(&lo.b, &format!("{what}.lora_B"))?;
                Some(Adapter { a, b, r, s: lo.scale as f32 })
            }
        };
        Ok(Proj { w, lora })
    }
}

/// One layer's weights.
struct LayerW<'a> {
    n1: View<'a>,
    wq: Proj<'a>,
    wk: Proj<'a>,
    wv: Proj<'a>,
    wo: Proj<'a>,
    /// QK-norm gains (per-head RMSNorm on q and k before RoPE), with their eps.
    qk: Option<(View<'a>, View<'a>, f32)>,
    n2: View<'a>,
    wg: Proj<'a>,
    wu: Proj<'a>,
    wd: Proj<'a>,
}

/// What the backward needs from one layer's forward.
struct Saved {
    x: Vec<f32>,    // layer input [N, C]
    inv1: Vec<f32>, // [N]
    xn1: Vec<f32>,  // [N, C]
    q: Vec<f32>,    // after RoPE [N, H·D]
    /// With QK-norm: q and k before the norm, and the per-(row, head) inverse RMS of each.
    qk_pre: Option<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)>,
    k: Vec<f32>,    // after RoPE [N, KV·D]
    v: Vec<f32>,    // [N, KV·D]
    p: Vec<f32>,    // attention probabilities [B, H, T, T] (blocks on/below the diagonal)
    y: Vec<f32>,    // attention output before o_proj [N, H·D]
    mid: Vec<f32>,  // x + attention [N, C]
    inv2: Vec<f32>, // [N]
    xn2: Vec<f32>,  // [N, C]
    g: Vec<f32>,    // gate pre-activation [N, F]
    u: Vec<f32>,    // up [N, F]
    a: Vec<f32>,    // silu(g)·u [N, F]
    /// x·Aᵀ [N, r] of each adapted projection, in the order q, k, v, o, gate, up, down.
    xa: [Option<Vec<f32>>; 7],
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    n: usize,
    c: usize,
    h: usize,
    kvh: usize,
    d: usize,
    f: usize,
    v: usize,
    eps: f32,
    threads: usize,
}

impl Dims {
    fn qd(&self) -> usize {
        self.h * self.d
    }
    fn kd(&self) -> usize {
        self.kvh * self.d
    }
}

fn rows_per_task(len: usize) -> usize {
    crate::ops::rows_per_task(len)
}

/// y = x·Wᵀ (w: [out, in]) → [rows, out]
fn linear(x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize, threads: usize) -> Vec<f32> {
    let mut y = uninit(rows * out);
    // SAFETY: x is [rows, inp], w is [out, inp], y is [rows, out]; y is fresh.
    unsafe { mm(rows, out, inp, y.as_mut_ptr(), out, false, Mat::rows(x.as_ptr(), inp), Mat::t(w.as_ptr(), inp), threads) };
    y
}

/// dx (+)= dy·W  (dy: [rows, out], w: [out, in], dx: [rows, in])
fn linear_dx(dy: &[f32], w: &[f32], dx: &mut [f32], rows: usize, inp: usize, out: usize, acc: bool, threads: usize) {
    // SAFETY: shapes as documented; dx is exclusively borrowed.
    unsafe { mm(rows, inp, out, dx.as_mut_ptr(), inp, acc, Mat::rows(dy.as_ptr(), out), Mat::rows(w.as_ptr(), inp), threads) };
}

/// y (+)= x·Wᵀ + s·(x·Aᵀ)·Bᵀ into `y` [rows, out] (overwritten unless `acc`); returns x·Aᵀ
/// [rows, r] when the projection has an adapter (its backward needs it).
fn proj_fwd(p: &Proj<'_>, x: &[f32], y: &mut [f32], rows: usize, inp: usize, out: usize, acc: bool, threads: usize) -> Option<Vec<f32>> {
    // SAFETY: x is [rows, inp], w is [out, inp], y is [rows, out] and exclusively borrowed.
    unsafe { mm(rows, out, inp, y.as_mut_ptr(), out, acc, Mat::rows(x.as_ptr(), inp), Mat::t(p.w.s().as_ptr(), inp), threads) };
    let lo = p.lora.as_ref()?;
    let r = lo.r;
    let mut xa = uninit(rows * r);
    // SAFETY: A is [r, inp], B is [out, r]; xa is fresh [rows, r].
    unsafe {
        mm(rows, r, inp, xa.as_mut_ptr(), r, false, Mat::rows(x.as_ptr(), inp), Mat::t(lo.a.s().as_ptr(), inp), threads);
        mm_scaled(rows, out, r, y.as_mut_ptr(), out, true, Mat::rows(xa.as_ptr(), r), Mat::t(lo.b.s().as_ptr(), r), lo.s, threads);
    }
    Some(xa)
}

/// [`proj_fwd`] into a fresh output.
fn proj(p: &Proj<'_>, x: &[f32], rows: usize, inp: usize, out: usize, threads: usize) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut y = uninit(rows * out);
    let xa = proj_fwd(p, x, &mut y, rows, inp, out, false, threads);
    (y, xa)
}

/// The gradient a projection's backward produces.
enum PGrad {
    /// dW [out, in] (full training).
    W(Vec<f32>),
    /// dA [r, in] and dB [out, r] (LoRA: the base weight is frozen).
    Lora(Vec<f32>, Vec<f32>),
    /// Nothing trainable (a frozen projection without an adapter).
    None,
}

/// The gradient of [`proj_fwd`]'s parameters for dy [rows, out] (its base part of dx, dy·W, is
/// [`linear_dx`]'s): dW when `train_base`; otherwise, for an adapter, dB = s·dyᵀ·(x·Aᵀ) and
/// dA = (s·dy·B)ᵀ·x, and the adapter's part of the input gradient is added, dx += (s·dy·B)·A, when
/// `dx` is given. The frozen dW is never computed.
#[allow(clippy::too_many_arguments)]
fn proj_grad(
    p: &Proj<'_>,
    dy: &[f32],
    x: &[f32],
    xa: Option<Vec<f32>>,
    dx: Option<&mut [f32]>,
    rows: usize,
    inp: usize,
    out: usize,
    train_base: bool,
    threads: usize,
) -> PGrad {
    if train_base {
        return PGrad::W(linear_dw(dy, x, rows, inp, out, threads));
    }
    let (Some(lo), Some(xa)) = (&p.lora, xa) else { return PGrad::None };
    let r = lo.r;
    let mut db = uninit(out * r);
    let mut dxa = uninit(rows * r);
    let mut da = uninit(r * inp);
    // SAFETY: dy [rows, out], xa [rows, r], B [out, r], A [r, inp], x [rows, inp]; db, dxa and
    // da are fresh, dx is exclusively borrowed [rows, inp].
    unsafe {
        mm_scaled(out, r, rows, db.as_mut_ptr(), r, false, Mat::t(dy.as_ptr(), out), Mat::rows(xa.as_ptr(), r), lo.s, threads);
        mm_scaled(rows, r, out, dxa.as_mut_ptr(), r, false, Mat::rows(dy.as_ptr(), out), Mat::rows(lo.b.s().as_ptr(), r), lo.s, threads);
        mm(r, inp, rows, da.as_mut_ptr(), inp, false, Mat::t(dxa.as_ptr(), r), Mat::rows(x.as_ptr(), inp), threads);
        if let Some(dx) = dx {
            mm(rows, inp, r, dx.as_mut_ptr(), inp, true, Mat::rows(dxa.as_ptr(), r), Mat::rows(lo.a.s().as_ptr(), inp), threads);
        }
    }
    PGrad::Lora(da, db)
}

/// dW = dyᵀ·x  → [out, in]
fn linear_dw(dy: &[f32], x: &[f32], rows: usize, inp: usize, out: usize, threads: usize) -> Vec<f32> {
    let mut dw = uninit(out * inp);
    // SAFETY: dy is [rows, out], x is [rows, inp], dw is fresh [out, inp].
    unsafe { mm(out, inp, rows, dw.as_mut_ptr(), inp, false, Mat::t(dy.as_ptr(), out), Mat::rows(x.as_ptr(), inp), threads) };
    dw
}

/// RMSNorm of every row → (y, inv per row)
fn rms_fwd(x: &[f32], w: &[f32], c: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / c;
    let mut y = uninit(x.len());
    let mut inv = uninit(rows);
    let rpt = rows_per_task(c);
    y.par_chunks_mut(c * rpt).zip(inv.par_chunks_mut(rpt)).zip(x.par_chunks(c * rpt)).for_each(|((yb, ib), xb)| {
        for ((yr, iv), xr) in yb.chunks_mut(c).zip(ib.iter_mut()).zip(xb.chunks(c)) {
            *iv = vmath::rmsnorm_row(xr, w, yr, eps);
        }
    });
    (y, inv)
}

/// RMSNorm backward: dx += ∂/∂x (added to the residual gradient in place); returns dw.
/// dw sums fixed blocks of rows in parallel, then the blocks in order (thread-count independent).
fn rms_bwd(x: &[f32], w: &[f32], inv: &[f32], dy: &[f32], dx: &mut [f32], c: usize, acc: bool) -> Vec<f32> {
    const BLOCK: usize = 64;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(c * BLOCK)
        .zip(x.par_chunks(c * BLOCK))
        .zip(dy.par_chunks(c * BLOCK))
        .zip(inv.par_chunks(BLOCK))
        .map(|(((dxb, xb), dyb), ib)| {
            let mut dw = vec![0f32; c];
            for (((dxr, xr), dyr), &iv) in dxb.chunks_mut(c).zip(xb.chunks(c)).zip(dyb.chunks(c)).zip(ib) {
                vmath::rmsnorm_bwd_row(xr, w, iv, dyr, dxr, &mut dw, acc);
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; c];
    for p in &partials {
        for (a, &v) in dw.iter_mut().zip(p) {
            *a += v;
        }
    }
    dw
}

/// RoPE in place on every head of every row of `x` ([N, heads·D], position = row mod T).
fn rope(x: &mut [f32], heads: usize, dm: &Dims, cos: &[f32], sin: &[f32], interleaved: bool, sign: f32) {
    let (d, t) = (dm.d, dm.t);
    let half = d / 2;
    let w = heads * d;
    let rpt = rows_per_task(w);
    x.par_chunks_mut(w * rpt).enumerate().for_each(|(ci, xb)| {
        for (ri, row) in xb.chunks_mut(w).enumerate() {
            let pos = (ci * rpt + ri) % t;
            let (c, s) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
            for hv in row.chunks_mut(d) {
                vmath::rope_row(hv, c, s, interleaved, sign);
            }
        }
    });
}

/// (batch row, kv head) pairs: attention work units; each owns its kv head's dK/dV.
fn attn_tasks(dm: &Dims) -> Vec<(usize, usize)> {
    (0..dm.b).flat_map(|bi| (0..dm.kvh).map(move |g| (bi, g))).collect()
}

/// Where (batch row `bi`, query head `hh` of kv head `g`) starts: in q-shaped rows [N, H·D], in
/// k/v-shaped rows [N, KV·D], and in the probabilities [B, H, T, T].
fn head_offsets(dm: &Dims, bi: usize, hh: usize, g: usize) -> (usize, usize, usize) {
    let (t, d) = (dm.t, dm.d);
    (bi * t * dm.qd() + hh * d, bi * t * dm.kd() + g * d, (bi * dm.h + hh) * t * t)
}

/// Causal attention forward → (probabilities [B, H, T, T], output [N, H·D]).
fn attn_fwd(q: &[f32], k: &[f32], v: &[f32], dm: &Dims) -> (Vec<f32>, Vec<f32>) {
    let (t, d, h, qd, kd) = (dm.t, dm.d, dm.h, dm.qd(), dm.kd());
    let rep = dm.h / dm.kvh;
    let scale = 1.0 / (d as f32).sqrt();
    let mut p = uninit(dm.b * h * t * t);
    let mut y = uninit(dm.n * qd);
    let (pp, yp) = (SendPtr(p.as_mut_ptr()), SendPtr(y.as_mut_ptr()));
    attn_tasks(dm).par_iter().for_each(|&(bi, g)| {
        let (pp, yp) = (pp, yp);
        for r in 0..rep {
            let hh = g * rep + r;
            // SAFETY: every pointer below stays inside its buffer: batch row bi, head hh (kv head
            // g); tasks write disjoint (bi, hh) slices of p and y.
            unsafe {
                let (qo, ko, po) = head_offsets(dm, bi, hh, g);
                let (qb, kb, vb) = (q.as_ptr().add(qo), k.as_ptr().add(ko), v.as_ptr().add(ko));
                let (pb, yb) = (pp.0.add(po), yp.0.add(qo));
                let mut r0 = 0;
                while r0 < t {
                    let r1 = (r0 + ATTN_BLOCK).min(t);
                    let m = r1 - r0;
                    // S = Q[r0..r1]·K[0..r1]ᵀ (unscaled; the softmax scales)
                    mm(m, r1, d, pb.add(r0 * t), t, false, Mat::rows(qb.add(r0 * qd), qd), Mat::t(kb, kd), 1);
                    for i in r0..r1 {
                        vmath::softmax_row(std::slice::from_raw_parts_mut(pb.add(i * t), r1), i + 1, scale);
                    }
                    // Y[r0..r1] = P[r0..r1, 0..r1]·V[0..r1]
                    mm(m, d, r1, yb.add(r0 * qd), qd, false, Mat::rows(pb.add(r0 * t), t), Mat::rows(vb, kd), 1);
                    r0 = r1;
                }
            }
        }
    });
    (p, y)
}

/// Causal attention backward → (dq, dk, dv) for post-RoPE q and k.
fn attn_bwd(q: &[f32], k: &[f32], v: &[f32], p: &[f32], dy: &[f32], dm: &Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (t, d, qd, kd) = (dm.t, dm.d, dm.qd(), dm.kd());
    let rep = dm.h / dm.kvh;
    let scale = 1.0 / (d as f32).sqrt();
    let mut dq = uninit(dm.n * qd);
    let mut dk = vec![0f32; dm.n * kd];
    let mut dv = vec![0f32; dm.n * kd];
    let (dqp, dkp, dvp) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    attn_tasks(dm).par_iter().for_each(|&(bi, g)| {
        let (dqp, dkp, dvp) = (dqp, dkp, dvp);
        let mut ds = uninit(ATTN_BLOCK.min(t) * t);
        for r in 0..rep {
            let hh = g * rep + r;
            // SAFETY: as in attn_fwd; this task alone writes dq rows of head hh and the dk/dv
            // columns of kv head g in batch row bi.
            unsafe {
                let (qo, ko, po) = head_offsets(dm, bi, hh, g);
                let (qb, kb, vb, pb, dyb) = (q.as_ptr().add(qo), k.as_ptr().add(ko), v.as_ptr().add(ko), p.as_ptr().add(po), dy.as_ptr().add(qo));
                let (dqb, dkb, dvb) = (dqp.0.add(qo), dkp.0.add(ko), dvp.0.add(ko));
                let mut r0 = 0;
                while r0 < t {
                    let r1 = (r0 + ATTN_BLOCK).min(t);
                    let m = r1 - r0;
                    // dV[0..r1] += P[r0..r1, 0..r1]ᵀ · dY[r0..r1]
                    mm(r1, d, m, dvb, kd, true, Mat::t(pb.add(r0 * t), t), Mat::rows(dyb.add(r0 * qd), qd), 1);
                    // dP = dY[r0..r1]·V[0..r1]ᵀ, then dS = scale·P⊙(dP − Σ dP⊙P) in place
                    mm(m, r1, d, ds.as_mut_ptr(), t, false, Mat::rows(dyb.add(r0 * qd), qd), Mat::t(vb, kd), 1);
                    for i in r0..r1 {
                        let prow = std::slice::from_raw_parts(pb.add(i * t), r1);
                        vmath::softmax_bwd_row(prow, &mut ds[(i - r0) * t..(i - r0) * t + r1], i + 1, scale);
                    }
                    // dQ[r0..r1] = dS·K[0..r1];  dK[0..r1] += dSᵀ·Q[r0..r1]
                    mm(m, d, r1, dqb.add(r0 * qd), qd, false, Mat::rows(ds.as_ptr(), t), Mat::rows(kb, kd), 1);
                    mm(r1, d, m, dkb, kd, true, Mat::t(ds.as_ptr(), t), Mat::rows(qb.add(r0 * qd), qd), 1);
                    r0 = r1;
                }
            }
        }
    });
    (dq, dk, dv)
}

/// The step's sizes for `b` rows of `t` tokens.
fn dims(model: &Model, b: usize, t: usize) -> Dims {
    let cfg = &model.cfg;
    Dims {
        b,
        t,
        n: b * t,
        c: cfg.hidden_size,
        h: cfg.num_attention_heads,
        kvh: cfg.kv_heads(),
        d: cfg.head_dim(),
        f: cfg.intermediate_size,
        v: cfg.vocab_size,
        eps: cfg.rms_norm_eps as f32,
        threads: rayon::current_num_threads(),
    }
}

/// RoPE cos/sin tables for positions `0..t`, `[t, D/2]` flattened; `scaled`: with the config's
/// YaRN scaling (inference only, as upstream: training uses the plain frequencies).
fn rope_tables(model: &Model, t: usize, scaled: bool) -> Result<(Vec<f32>, Vec<f32>)> {
    let (cos_t, sin_t) = model.rope.tables(0, t, scaled, &Device::Cpu)?;
    Ok((cos_t.flatten_all()?.to_vec1()?, sin_t.flatten_all()?.to_vec1()?))
}

/// Every weight of the model (read guards held while this lives).
struct Weights<'a> {
    emb: View<'a>,
    layers: Vec<LayerW<'a>>,
    norm_w: View<'a>,
    head: View<'a>,
}

/// The model's weights in the order of its parameter walk ([`crate::model::ParamLayout`]),
/// each labelled with its checkpoint name.
fn weights(model: &Model) -> Result<Weights<'_>> {
    let layout = crate::model::ParamLayout::new(&model.cfg);
    let emb = View::new(&model.embed_tokens, &layout.embed_tokens.name)?;
    let mut layers = Vec::with_capacity(model.layers.len());
    for (l, names) in model.layers.iter().zip(&layout.layers) {
        let FeedForward::Dense(mlp) = &l.mlp else { unreachable!("checked by unsupported()") };
        let a = &l.self_attn;
        fn pj(l: &Linear) -> Result<Proj<'_>> {
            Proj::new(l, &l.name)
        }
        layers.push(LayerW {
            n1: View::new(&l.input_layernorm.weight, &names.input_layernorm.name)?,
            wq: pj(&a.q_proj)?,
            wk: pj(&a.k_proj)?,
            wv: pj(&a.v_proj)?,
            wo: pj(&a.o_proj)?,
            qk: match (&a.q_norm, &a.k_norm, &names.qk_norm) {
                (Some(qn), Some(kn), Some((qs, ks))) => Some((View::new(&qn.weight, &qs.name)?, View::new(&kn.weight, &ks.name)?, qn.eps as f32)),
                (None, None, None) => None,
                _ => return Err(Error::input(format!("{}: q_norm and k_norm do not match the config's qk_norm", names.input_layernorm.name))),
            },
            n2: View::new(&l.post_attention_layernorm.weight, &names.post_attention_layernorm.name)?,
            wg: pj(&mlp.gate_proj)?,
            wu: pj(&mlp.up_proj)?,
            wd: pj(&mlp.down_proj)?,
        });
    }
    let norm_w = View::new(&model.norm.weight, &layout.norm.name)?;
    let head = match (&model.lm_head, &layout.lm_head) {
        (Some(l), Some(s)) => View::new(&l.weight, &s.name)?,
        (None, _) => View::new(&model.embed_tokens, &layout.embed_tokens.name)?,
        (Some(_), None) => return Err(Error::input("lm_head present although the config ties it to the embedding")),
    };
    Ok(Weights { emb, layers, norm_w, head })
}

/// Embedding rows of `ids` → [N, C].
fn embed(emb: &View<'_>, ids: &[u32], c: usize) -> Vec<f32> {
    let mut x = uninit(ids.len() * c);
    let e = emb.s();
    x.par_chunks_mut(c).zip(ids.par_iter()).for_each(|(row, &id)| row.copy_from_slice(&e[id as usize * c..(id as usize + 1) * c]));
    x
}

/// One decoder layer's forward on `x` [N, C] → (what the backward needs, the layer's output).
fn layer_fwd(lw: &LayerW<'_>, x: Vec<f32>, dm: &Dims, cos: &[f32], sin: &[f32], inter: bool) -> (Saved, Vec<f32>) {
    let (n, c, qd, kd, f, th) = (dm.n, dm.c, dm.qd(), dm.kd(), dm.f, dm.threads);
    let (xn1, inv1) = rms_fwd(&x, lw.n1.s(), c, dm.eps);
    let (mut q, xa_q) = proj(&lw.wq, &xn1, n, c, qd, th);
    let (mut k, xa_k) = proj(&lw.wk, &xn1, n, c, kd, th);
    let (v, xa_v) = proj(&lw.wv, &xn1, n, c, kd, th);
    let qk_pre = match &lw.qk {
        None => None,
        Some((wqn, wkn, eps)) => {
            // [N, heads·D] is [N·heads, D]: one RMSNorm row per (token, head).
            let (qn, invq) = rms_fwd(&q, wqn.s(), dm.d, *eps);
            let (kn, invk) = rms_fwd(&k, wkn.s(), dm.d, *eps);
            Some((std::mem::replace(&mut q, qn), invq, std::mem::replace(&mut k, kn), invk))
        }
    };
    rope(&mut q, dm.h, dm, cos, sin, inter, 1.0);
    rope(&mut k, dm.kvh, dm, cos, sin, inter, 1.0);
    let (p, y) = attn_fwd(&q, &k, &v, dm);
    let mut mid = x.clone();
    let xa_o = proj_fwd(&lw.wo, &y, &mut mid, n, qd, c, true, th);
    let (xn2, inv2) = rms_fwd(&mid, lw.n2.s(), c, dm.eps);
    let (g, xa_g) = proj(&lw.wg, &xn2, n, c, f, th);
    let (u, xa_u) = proj(&lw.wu, &xn2, n, c, f, th);
    let mut a = uninit(n * f);
    let rpt = rows_per_task(f) * f;
    a.par_chunks_mut(rpt).zip(g.par_chunks(rpt)).zip(u.par_chunks(rpt)).for_each(|((ab, gb), ub)| vmath::swiglu_fwd(gb, ub, ab));
    let mut out = mid.clone();
    let xa_d = proj_fwd(&lw.wd, &a, &mut out, n, f, c, true, th);
    let xa = [xa_q, xa_k, xa_v, xa_o, xa_g, xa_u, xa_d];
    (Saved { x, inv1, xn1, q, qk_pre, k, v, p, y, mid, inv2, xn2, g, u, a, xa }, out)
}

/// What [`prefill`] returns: the final-normed hidden states and every layer's keys and values.
pub struct Prefill {
    /// After the final RMSNorm, `[b·t, hidden]`.
    pub hidden: Vec<f32>,
    /// Per layer: keys after RoPE (and QK-norm) and values, each `[b·t, kv_heads·head_dim]`.
    pub kv: Vec<(Vec<f32>, Vec<f32>)>,
}

/// The inference forward of `b` rows of `t` tokens from position 0 with the hand-written kernels
/// (the training step's forward: block-causal attention, products straight to `gemm`). The
/// generation path uses it to fill an empty KV cache.
pub fn prefill(model: &Model, ids: &[u32], b: usize, t: usize) -> Result<Prefill> {
    if let Some(why) = unsupported(model) {
        return Err(Error::input(format!("fast prefill: not available for this model ({why})")));
    }
    let cfg = &model.cfg;
    if b == 0 || t == 0 || ids.len() != b * t {
        return Err(Error::input(format!("fast prefill: ids must hold b·t = {b}·{t} values")));
    }
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= cfg.vocab_size) {
        return Err(Error::input(format!("token id {id} at position {} (batch row {}) is out of range for vocab_size {}", i % t, i / t, cfg.vocab_size)));
    }
    let dm = dims(model, b, t);
    let (cos, sin) = rope_tables(model, t, true)?;
    let w = weights(model)?;
    let mut x = embed(&w.emb, ids, dm.c);
    let mut kv = Vec::with_capacity(w.layers.len());
    for lw in &w.layers {
        let (sv, out) = layer_fwd(lw, x, &dm, &cos, &sin, cfg.rope_interleaved);
        kv.push((sv.k, sv.v));
        x = out;
    }
    let (hidden, _) = rms_fwd(&x, w.norm_w.s(), dm.c, dm.eps);
    Ok(Prefill { hidden, kv })
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// One micro-batch: ids/targets/mask row-major `[b, t]`. Trains every base weight, or only the
/// LoRA adapters when some are attached (see the module doc).
pub fn lm_step(model: &Model, ids: &[u32], targets: &[u32], mask: &[f32], b: usize, t: usize) -> Result<LmStep> {
    if let Some(why) = unsupported_step(model) {
        return Err(Error::input(format!("fast step: not available for this model ({why})")));
    }
    crate::ops::alloc::tune_for_training();
    let cfg = &model.cfg;
    let n = b * t;
    if b == 0 || t == 0 || ids.len() != n || targets.len() != n || mask.len() != n {
        return Err(Error::input(format!("fast step: ids/targets/mask must each hold b·t = {b}·{t} values")));
    }
    if t > cfg.max_position_embeddings {
        return Err(Error::input(format!(
            "sequence of {t} tokens exceeds max_position_embeddings {}",
            cfg.max_position_embeddings
        )));
    }
    let vocab = cfg.vocab_size;
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::input(format!("token id {id} at position {} (batch row {}) is out of range for vocab_size {vocab}", i % t, i / t)));
    }
    let counted: Vec<usize> = (0..n).filter(|&i| mask[i] > 0.0).collect();
    if let Some(&i) = counted.iter().find(|&&i| targets[i] as usize >= vocab) {
        return Err(Error::input(format!(
            "target id {} at position {} (batch row {}) is out of range for vocab_size {vocab}",
            targets[i],
            i % t,
            i / t
        )));
    }
    let dm = dims(model, b, t);
    let (c, qd, kd, f, th) = (dm.c, dm.qd(), dm.kd(), dm.f, dm.threads);
    let (cos, sin) = rope_tables(model, t, false)?;
    let inter = cfg.rope_interleaved;
    let Weights { emb, layers, norm_w, head } = weights(model)?;
    // With LoRA adapters attached only they train: the base weights are frozen, so no base
    // weight's, norm's or embedding's gradient is computed (the step's main saving).
    let train_base = !model.has_lora();

    // ---- forward
    let mut x = embed(&emb, ids, c);
    let mut saved: Vec<Saved> = Vec::with_capacity(layers.len());
    for lw in &layers {
        let (sv, out) = layer_fwd(lw, x, &dm, &cos, &sin, inter);
        saved.push(sv);
        x = out;
    }
    let (xnf, invf) = rms_fwd(&x, norm_w.s(), c, dm.eps);

    // Head + cross-entropy on the counted rows only (the others get no gradient).
    let m = counted.len();
    let mut hn = uninit(m * c);
    hn.par_chunks_mut(c).zip(counted.par_iter()).for_each(|(row, &i)| row.copy_from_slice(&xnf[i * c..(i + 1) * c]));
    let mut logits = linear(&hn, head.s(), m, c, dm.v, th);
    let mut losses = vec![0f32; m];
    logits.par_chunks_mut(dm.v).zip(losses.par_iter_mut()).zip(counted.par_iter()).for_each(|((row, l), &i)| {
        *l = vmath::xent_row(row, targets[i] as usize);
    });
    let loss_sum: f64 = losses.iter().map(|&l| l as f64).sum();

    // ---- backward (d of the summed loss)
    let dlogits = logits;
    let mut dhn = uninit(m * c);
    linear_dx(&dlogits, head.s(), &mut dhn, m, c, dm.v, false, th);
    let d_head = if train_base { linear_dw(&dlogits, &hn, m, c, dm.v, th) } else { Vec::new() }; // [V, C]
    drop(dlogits);
    let mut dxnf = vec![0f32; n * c];
    for (row, &i) in dhn.chunks(c).zip(&counted) {
        dxnf[i * c..(i + 1) * c].copy_from_slice(row);
    }
    let mut dx = uninit(n * c);
    let d_norm = rms_bwd(&x, norm_w.s(), &invf, &dxnf, &mut dx, c, false);
    drop(dxnf);

    let mut layer_grads: Vec<LayerGrads> = Vec::with_capacity(layers.len());
    for (li, (lw, s)) in layers.iter().zip(saved).enumerate().rev() {
        // Adapters only: nothing below the first layer trains, so its input gradient is not needed.
        let need_dx = train_base || li > 0;
        let Saved { x, inv1, xn1, q, qk_pre, k, v, p, y, mid, inv2, xn2, mut g, mut u, a, xa } = s;
        let [xa_q, xa_k, xa_v, xa_o, xa_g, xa_u, xa_d] = xa;
        // MLP: out = mid + a·Wdᵀ
        let mut da = uninit(n * f);
        linear_dx(&dx, lw.wd.w.s(), &mut da, n, f, c, false, th);
        let g_d = proj_grad(&lw.wd, &dx, &a, xa_d, Some(&mut da), n, f, c, train_base, th);
        drop(a);
        let rpt = rows_per_task(f) * f;
        g.par_chunks_mut(rpt).zip(u.par_chunks_mut(rpt)).zip(da.par_chunks(rpt)).for_each(|((gb, ub), db)| vmath::swiglu_bwd(gb, ub, db));
        drop(da);
        let (dg, du) = (g, u);
        let mut dxn2 = uninit(n * c);
        linear_dx(&dg, lw.wg.w.s(), &mut dxn2, n, c, f, false, th);
        linear_dx(&du, lw.wu.w.s(), &mut dxn2, n, c, f, true, th);
        let g_g = proj_grad(&lw.wg, &dg, &xn2, xa_g, Some(&mut dxn2), n, c, f, train_base, th);
        let g_u = proj_grad(&lw.wu, &du, &xn2, xa_u, Some(&mut dxn2), n, c, f, train_base, th);
        drop((dg, du, xn2));
        let d_n2 = rms_bwd(&mid, lw.n2.s(), &inv2, &dxn2, &mut dx, c, true);
        drop((dxn2, mid));
        // Attention: mid = x + y·Woᵀ
        let mut dy = uninit(n * qd);
        linear_dx(&dx, lw.wo.w.s(), &mut dy, n, qd, c, false, th);
        let g_o = proj_grad(&lw.wo, &dx, &y, xa_o, Some(&mut dy), n, qd, c, train_base, th);
        drop(y);
        let (mut dq, mut dk, dv) = attn_bwd(&q, &k, &v, &p, &dy, &dm);
        drop((q, k, v, p, dy));
        rope(&mut dq, dm.h, &dm, &cos, &sin, inter, -1.0);
        rope(&mut dk, dm.kvh, &dm, &cos, &sin, inter, -1.0);
        let d_qk = match (&lw.qk, qk_pre) {
            (Some((wqn, wkn, _)), Some((q_pre, invq, k_pre, invk))) => {
                let mut dq_pre = uninit(dq.len());
                let mut dk_pre = uninit(dk.len());
                let d_qn = rms_bwd(&q_pre, wqn.s(), &invq, &dq, &mut dq_pre, dm.d, false);
                let d_kn = rms_bwd(&k_pre, wkn.s(), &invk, &dk, &mut dk_pre, dm.d, false);
                dq = dq_pre;
                dk = dk_pre;
                Some((d_qn, d_kn))
            }
            _ => None,
        };
        let mut dxn1 = if need_dx { uninit(n * c) } else { Vec::new() };
        if need_dx {
            linear_dx(&dq, lw.wq.w.s(), &mut dxn1, n, c, qd, false, th);
            linear_dx(&dk, lw.wk.w.s(), &mut dxn1, n, c, kd, true, th);
            linear_dx(&dv, lw.wv.w.s(), &mut dxn1, n, c, kd, true, th);
        }
        let g_q = proj_grad(&lw.wq, &dq, &xn1, xa_q, need_dx.then_some(&mut dxn1[..]), n, c, qd, train_base, th);
        let g_k = proj_grad(&lw.wk, &dk, &xn1, xa_k, need_dx.then_some(&mut dxn1[..]), n, c, kd, train_base, th);
        let g_v = proj_grad(&lw.wv, &dv, &xn1, xa_v, need_dx.then_some(&mut dxn1[..]), n, c, kd, train_base, th);
        drop((dq, dk, dv, xn1));
        let d_n1 = if need_dx { rms_bwd(&x, lw.n1.s(), &inv1, &dxn1, &mut dx, c, true) } else { Vec::new() };
        layer_grads.push(LayerGrads { n1: d_n1, n2: d_n2, qk: d_qk, proj: [g_q, g_k, g_v, g_o, g_g, g_u, g_d] });
    }
    layer_grads.reverse();
    drop((layers, norm_w, head));

    let mut grads = GradStore::default();
    if train_base {
        // Embedding: scatter-add of the input gradient (plus the head's when tied).
        let tied = model.lm_head.is_none();
        let mut d_emb = if tied { d_head.clone() } else { vec![0f32; dm.v * c] };
        for (row, &id) in dx.chunks(c).zip(ids) {
            for (a, &g) in d_emb[id as usize * c..(id as usize + 1) * c].iter_mut().zip(row) {
                *a += g;
            }
        }
        drop(emb);
        grads.insert(&model.embed_tokens, tensor(d_emb, &[dm.v, c])?);
        if let Some(l) = &model.lm_head {
            grads.insert(&l.weight, tensor(d_head, &[dm.v, c])?);
        }
        grads.insert(&model.norm.weight, tensor(d_norm, &[c])?);
    }
    for (l, gr) in model.layers.iter().zip(layer_grads) {
        let FeedForward::Dense(mlp) = &l.mlp else { unreachable!() };
        let a = &l.self_attn;
        if train_base {
            if let (Some(qn), Some(kn), Some((d_qn, d_kn))) = (&a.q_norm, &a.k_norm, gr.qk) {
                grads.insert(&qn.weight, tensor(d_qn, &[dm.d])?);
                grads.insert(&kn.weight, tensor(d_kn, &[dm.d])?);
            }
            grads.insert(&l.input_layernorm.weight, tensor(gr.n1, &[c])?);
            grads.insert(&l.post_attention_layernorm.weight, tensor(gr.n2, &[c])?);
        }
        let linears = [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &mlp.gate_proj, &mlp.up_proj, &mlp.down_proj];
        for (lin, pg) in linears.into_iter().zip(gr.proj) {
            match (pg, &lin.lora) {
                (PGrad::W(dw), _) => {
                    grads.insert(&lin.weight, tensor(dw, lin.weight.dims())?);
                }
                (PGrad::Lora(da, db), Some(lo)) => {
                    grads.insert(&lo.a, tensor(da, lo.a.dims())?);
                    grads.insert(&lo.b, tensor(db, lo.b.dims())?);
                }
                _ => {}
            }
        }
    }
    Ok(LmStep { loss_sum, count: m, grads })
}

/// One layer's gradients from [`lm_step`]'s backward (norm gains are empty with LoRA).
struct LayerGrads {
    n1: Vec<f32>,
    n2: Vec<f32>,
    qk: Option<(Vec<f32>, Vec<f32>)>,
    /// q, k, v, o, gate, up, down.
    proj: [PGrad; 7],
}
