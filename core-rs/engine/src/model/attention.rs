//! Grouped-query self-attention with RoPE and optional QK-norm (per-head RMSNorm on q and k,
//! applied before RoPE as Qwen3/minimind-3 do).
use candle_core::{Tensor, D};

use super::dropout::ForwardCtx;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::{ops, Result};

#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    pub(crate) q_norm: Option<RmsNorm>,
    pub(crate) k_norm: Option<RmsNorm>,
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) dropout: f64,
}

/// What the attention scores are masked with.
#[derive(Debug, Clone, Copy)]
pub enum AttnMask<'a> {
    /// Every query sees every key (single-token decode without padding).
    None,
    /// Query i (at absolute position offset + i) sees keys j ≤ offset + i; applied inside the
    /// fused softmax, no mask tensor.
    Causal { offset: usize },
    /// Additive mask broadcastable to [B, 1, T, S] ([T, S] or [B, 1, T, S]; left padding).
    Additive(&'a Tensor),
}

/// Softmax over the last dim from exp/sum (differentiable; the max is a constant shift).
pub(crate) fn softmax_train(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

impl Attention {
    fn norm(&self, n: &Option<RmsNorm>, x: &Tensor, train: bool) -> Result<Tensor> {
        match n {
            None => Ok(x.clone()),
            Some(n) if train => n.forward_train(x),
            Some(n) => n.forward(x),
        }
    }

    /// x: [B, T, hidden]; cos/sin: [T, D/2]; mask: see [`AttnMask`];
    /// kv: this layer's cache slot (inference) or None (training, no cache) → [B, T, hidden]
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        mask: AttnMask<'_>,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let train = ctx.train;
        let (b, t, _) = x.dims3()?;
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self.q_proj.forward(x, ctx)?.reshape((b, t, h, hd))?;
        let k = self.k_proj.forward(x, ctx)?.reshape((b, t, kvh, hd))?;
        let v = self.v_proj.forward(x, ctx)?.reshape((b, t, kvh, hd))?;
        let q = self.norm(&self.q_norm, &q, train)?; // [B, T, H, D]
        let k = self.norm(&self.k_norm, &k, train)?; // [B, T, KV, D]
        let v = v.transpose(1, 2)?.contiguous()?; // [B, KV, T, D]
        let (q, k) = if train {
            // rotate in [B, T, H, D], then lay out per head
            let q = rope.apply_train_bthd(&q, cos, sin)?.transpose(1, 2)?.contiguous()?;
            let k = rope.apply_train_bthd(&k, cos, sin)?.transpose(1, 2)?.contiguous()?;
            (q, k)
        } else {
            (rope.apply(&q.transpose(1, 2)?, cos, sin)?, rope.apply(&k.transpose(1, 2)?, cos, sin)?)
        };
        let (k, v) = match kv {
            None => (k, v),
            Some(slot) => {
                let (k, v) = match slot.take() {
                    None => (k, v),
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
        };
        // Grouped-query attention without repeat_kv: query head h = kv·rep + r, so q [B, H, T, D]
        // is (free view) [B, KV, rep·T, D]; one matmul per kv head covers its `rep` query heads and
        // the k/v gradients are summed over the group by the matmul itself.
        let rep = h / kvh;
        let s = k.dim(2)?;
        let qg = q.contiguous()?.reshape((b, kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = qg.matmul(&k.t()?)?; // [B, KV, rep·T, S], unscaled
        let probs = match mask {
            AttnMask::Additive(m) => {
                // [T, S] or [B, 1, T, S] → broadcast over (kv, rep) in [B, KV, rep, T, S]
                let m = if m.rank() == 4 { m.unsqueeze(2)? } else { m.clone() };
                let scores =
                    (scores * scale)?.reshape((b, kvh, rep, t, s))?.broadcast_add(&m)?.reshape((b, kvh, rep * t, s))?;
                if train {
                    softmax_train(&scores)?
                } else {
                    candle_nn::ops::softmax_last_dim(&scores)?
                }
            }
            AttnMask::None => ops::softmax_scaled(&scores, scale, None)?,
            AttnMask::Causal { offset } => ops::softmax_scaled(&scores, scale, Some((t, offset)))?,
        };
        let probs = if train { ctx.dropout(&probs, self.dropout)? } else { probs };
        let y = probs.matmul(&v.contiguous()?)?.reshape((b, h, t, hd))?; // [B, KV, rep·T, D] = [B, H, T, D]
        let y = y.transpose(1, 2)?.reshape((b, t, h * hd))?;
        let y = self.o_proj.forward(&y, ctx)?;
        ctx.dropout(&y, self.dropout)
    }
}
