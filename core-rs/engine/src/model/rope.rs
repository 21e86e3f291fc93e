//! Rotary position embeddings. Tables are `[T, head_dim/2]` (one angle per rotated pair):
//! rotate-half (HF/Llama: pairs `(x_i, x_{i+d/2})`) or interleaved (seed v1: pairs `(x_{2i}, x_{2i+1})`).
//! YaRN (see [`RopeScaling`]) changes the inference tables only; training uses the plain ones.
use candle_core::{Device, Tensor, D};

use super::config::{ModelConfig, RopeScaling};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    interleaved: bool,
    inv_freq: Vec<f32>,
    /// YaRN-scaled frequencies and attention factor, when scaling is active.
    yarn: Option<(Vec<f32>, f32)>,
}

/// `f_i = θ^(−2i/d)` for i in 0..d/2.
fn base_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect()
}

/// YaRN frequency interpolation (upstream MiniMind's formula, documented on `RopeScaling`).
fn yarn_inv_freq(f: &[f64], head_dim: usize, theta: f64, max_pos: usize, s: &RopeScaling) -> Option<Vec<f64>> {
    let orig = s.original_max_position_embeddings as f64;
    if max_pos as f64 / orig <= 1.0 {
        return None;
    }
    let d = head_dim as f64;
    let inv_dim = |b: f64| (d * (orig / (b * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln());
    let low = inv_dim(s.beta_fast).floor().max(0.0);
    let high = inv_dim(s.beta_slow).ceil().min((head_dim / 2 - 1) as f64);
    let span = (high - low).max(0.001);
    Some(
        f.iter()
            .enumerate()
            .map(|(i, &fi)| {
                let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                fi * (1.0 - ramp + ramp / s.factor)
            })
            .collect(),
    )
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let hd = cfg.head_dim();
        let f = base_inv_freq(hd, cfg.rope_theta);
        let yarn = cfg.effective_rope_scaling().and_then(|s| {
            yarn_inv_freq(&f, hd, cfg.rope_theta, cfg.max_position_embeddings, &s)
                .map(|g| (g.iter().map(|&x| x as f32).collect(), s.attention_factor as f32))
        });
        Rope { head_dim: hd, interleaved: cfg.rope_interleaved, inv_freq: f.iter().map(|&x| x as f32).collect(), yarn }
    }

    /// cos/sin tables for positions `start..start+len`, each [len, head_dim/2].
    /// `scaled` selects the YaRN tables (inference) when configured.
    pub fn tables(&self, start: usize, len: usize, scaled: bool, dev: &Device) -> Result<(Tensor, Tensor)> {
        let (freqs, af) = match (&self.yarn, scaled) {
            (Some((f, af)), true) => (f, *af),
            _ => (&self.inv_freq, 1.0f32),
        };
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for &f in freqs {
                let a = p as f32 * f; // f32 like upstream's float32 outer product
                cos.push(a.cos() * af);
                sin.push(a.sin() * af);
            }
        }
        Ok((Tensor::from_vec(cos, (len, half), dev)?, Tensor::from_vec(sin, (len, half), dev)?))
    }

    /// Differentiable rotation from narrow/cat/mul. x: [B, H, T, D], cos/sin: [T, D/2] → [B, H, T, D]
    pub fn apply_train(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let half = d / 2;
        if self.interleaved {
            let x = x.reshape((b, h, t, half, 2))?;
            let xe = x.narrow(4, 0, 1)?;
            let xo = x.narrow(4, 1, 1)?;
            let c = cos.reshape((t, half, 1))?;
            let s = sin.reshape((t, half, 1))?;
            let re = (xe.broadcast_mul(&c)? - xo.broadcast_mul(&s)?)?;
            let im = (xe.broadcast_mul(&s)? + xo.broadcast_mul(&c)?)?;
            Ok(Tensor::cat(&[re, im], 4)?.reshape((b, h, t, d))?)
        } else {
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let c = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
            Ok(Tensor::cat(&[a, c], D::Minus1)?)
        }
    }

    /// Differentiable rotation in the projections' layout. x: [B, T, H, D] → [B, T, H, D]
    /// (a fused op with its own backward on CPU f32; [`Rope::apply_train`] elsewhere).
    pub fn apply_train_bthd(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if let Some(y) = crate::ops::rope_bthd(x, cos, sin, self.interleaved)? {
            return Ok(y);
        }
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        Ok(self.apply_train(&x.transpose(1, 2)?, &cos, &sin)?.transpose(1, 2)?)
    }

    /// candle's fused kernels (no backward). x: [B, H, T, D] → [B, H, T, D]
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, cos, sin)?
        })
    }
}
