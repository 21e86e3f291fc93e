//! Feed-forward blocks: dense SwiGLU `down(silu(gate(x)) · up(x))`, and the mixture of experts.
//!
//! MoE routing (upstream MiniMind): `p = softmax(x Wgᵀ)` over experts, keep the top-k per token,
//! renormalise the kept weights (`/ (Σ + 1e-20)`) when `norm_topk_prob` (for every k, as
//! minimind-3), `y = Σ_kept w_e · expert_e(x) + Σ_shared shared_s(x)`.
//! Aux load-balancing loss (training only, Switch-style, the exact upstream formula):
//! `aux = coef · E · Σ_e f_e · P_e`, with `P_e = mean_tokens p_e` (differentiable) and
//! `f_e = (#(token, slot) assignments to e) / N_tokens` (constant); so `Σ_e f_e = k`.
//! Summed over MoE layers. Experts that receive no token get no gradient entry here; the training
//! step gives them a zero one (see `train::train_step_synced`), as upstream does.
use candle_core::{DType, Tensor};

use crate::ops;
use super::dropout::ForwardCtx;
use super::linear::{matmul_t, Linear};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl Mlp {
    /// x: [..., hidden] → [..., hidden]
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let g = self.gate_proj.forward(x, ctx)?;
        let u = self.up_proj.forward(x, ctx)?;
        self.down_proj.forward(&ops::swiglu(&g, &u)?, ctx)
    }
}

#[derive(Debug, Clone)]
pub struct MoeMlp {
    pub(crate) gate: Tensor, // router [num_experts, hidden]
    pub(crate) experts: Vec<Mlp>,
    pub(crate) shared_experts: Vec<Mlp>,
    pub(crate) top_k: usize,
    pub(crate) norm_topk_prob: bool,
    pub(crate) aux_loss_coef: f64,
}

/// Indices of the k largest values (ties: lower index first).
pub(crate) fn top_k_indices(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

impl MoeMlp {
    /// x: [B, T, hidden] → ([B, T, hidden], aux loss scalar when training with coef > 0)
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, hdim) = x.dims3()?;
        let n = b * t;
        let e_count = self.experts.len();
        let xf = x.reshape((n, hdim))?;
        let probs = ops::softmax_scaled(&matmul_t(&xf, &self.gate)?, 1.0, None)?; // [N, E]
        let host: Vec<Vec<f32>> = probs.to_vec2()?;
        let mut sel = vec![0f32; n * e_count];
        let mut tokens_of: Vec<Vec<u32>> = vec![vec![]; e_count];
        for (i, row) in host.iter().enumerate() {
            for e in top_k_indices(row, self.top_k) {
                sel[i * e_count + e] = 1.0;
                tokens_of[e].push(i as u32);
            }
        }
        let sel = Tensor::from_vec(sel, (n, e_count), x.device())?;
        let mut w = (&probs * &sel)?; // [N, E], zero outside the top-k
        if self.norm_topk_prob {
            w = w.broadcast_div(&(w.sum_keepdim(1)? + 1e-20)?)?;
        }
        let mut y = xf.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if tokens_of[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(tokens_of[e].as_slice(), x.device())?;
            let out = expert.forward(&xf.index_select(&idx, 0)?, ctx)?; // [n_e, hidden]
            let we = w.index_select(&idx, 0)?.narrow(1, e, 1)?; // [n_e, 1]
            y = y.index_add(&idx, &out.broadcast_mul(&we)?, 0)?;
        }
        for s in &self.shared_experts {
            y = (y + s.forward(&xf, ctx)?)?;
        }
        let aux = if ctx.train && self.aux_loss_coef > 0.0 {
            let f: Vec<f32> = tokens_of.iter().map(|v| v.len() as f32 / n as f32).collect();
            let f = Tensor::from_vec(f, e_count, x.device())?;
            let p_mean = probs.mean(0)?; // [E]
            let aux = (p_mean * f)?.sum_all()?.affine(e_count as f64 * self.aux_loss_coef, 0.0)?;
            Some(aux.to_dtype(DType::F32)?)
        } else {
            None
        };
        Ok((y.reshape((b, t, hdim))?, aux))
    }
}

#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(MoeMlp),
}

impl FeedForward {
    /// x: [B, T, hidden] → ([B, T, hidden], optional aux loss)
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            FeedForward::Dense(m) => Ok((m.forward(x, ctx)?, None)),
            FeedForward::Moe(m) => {
                // The router and the expert mixing are f32 code: MoE layers run without autocast.
                let saved = ctx.autocast.take();
                let r = m.forward(x, ctx);
                ctx.autocast = saved;
                r
            }
        }
    }
}
