//! Rotary position embeddings. Tables are `[T, head_dim/2]` (one angle per rotated pair):
//! rotate-half (HF/Llama: pairs `(x_i, x_{i+d/2})`) or interleaved (seed v1: pairs `(x_{2i}, x_{2i+1})`).
//! MiniMind's YaRN (see [`RopeScaling`]) changes the inference tables only; transformers' scaling
//! kinds ([`RopeParameters`]) change both, as they do in transformers.
use candle_core::{Device, Tensor, D};

use super::config::{ModelConfig, RopeParameters, RopeScaling};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    interleaved: bool,
    /// Frequencies and cos/sin factor of training (and of inference unless `inference` is set).
    train: (Vec<f32>, f32),
    /// MiniMind's inference-only YaRN, when active.
    inference: Option<(Vec<f32>, f32)>,
}

/// `f_i = 1 / θ^(2i/d)` for i in 0..d/2, in f32 as torch computes it (MiniMind and transformers
/// alike: `1.0 / (base ** (arange(0, d, 2).float() / d))`).
fn base_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let base = theta as f32;
    (0..head_dim / 2).map(|i| 1.0f32 / base.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// YaRN frequency interpolation (upstream MiniMind's formula, documented on `RopeScaling`).
fn minimind_yarn(f: &[f32], head_dim: usize, theta: f64, max_pos: usize, s: &RopeScaling) -> Option<Vec<f32>> {
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
                let ramp = ((i as f32 - low as f32) / span as f32).clamp(0.0, 1.0);
                fi * (1.0 - ramp + ramp / s.factor as f32)
            })
            .collect(),
    )
}

/// transformers' `_compute_{linear_scaling,llama3,yarn}_parameters`, step by step in the same
/// precision (f32 tensors, f64 Python scalars) → (frequencies, cos/sin factor).
fn hf_scaled(f: &[f32], head_dim: usize, theta: f64, p: &RopeParameters) -> (Vec<f32>, f32) {
    match *p {
        RopeParameters::Linear { factor } => (f.iter().map(|&x| x / factor as f32).collect(), 1.0),
        RopeParameters::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let old = original_max_position_embeddings as f64;
            let (low_wl, high_wl) = ((old / low_freq_factor) as f32, (old / high_freq_factor) as f32);
            let fac = factor as f32;
            let out = f
                .iter()
                .map(|&x| {
                    let wavelen = (2.0 * std::f64::consts::PI) as f32 / x;
                    let scaled = if wavelen > low_wl { x / fac } else { x };
                    if !(wavelen < high_wl) && !(wavelen > low_wl) {
                        let smooth = ((old as f32) / wavelen - low_freq_factor as f32) / (high_freq_factor - low_freq_factor) as f32;
                        (1.0 - smooth) * scaled / fac + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect();
            (out, 1.0)
        }
        RopeParameters::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor, truncate } => {
            let dim = head_dim as f64;
            let orig = original_max_position_embeddings as f64;
            let corr = |rot: f64| (dim * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln());
            let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001;
            }
            let (low32, span32) = (low as f32, (high - low) as f32);
            let fac = factor as f32;
            let out = (0..f.len())
                .map(|i| {
                    let pos = (theta as f32).powf((2 * i) as f32 / head_dim as f32); // transformers' `pos_freqs`
                    let (extra, inter) = (1.0 / pos, 1.0 / (fac * pos));
                    let ramp = ((i as f32 - low32) / span32).clamp(0.0, 1.0);
                    let extra_factor = 1.0 - ramp;
                    inter * (1.0 - extra_factor) + extra * extra_factor
                })
                .collect();
            (out, attention_factor as f32)
        }
    }
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let hd = cfg.head_dim();
        let f = base_inv_freq(hd, cfg.rope_theta);
        let train = match &cfg.rope_parameters {
            Some(p) => hf_scaled(&f, hd, cfg.rope_theta, p),
            None => (f.clone(), 1.0),
        };
        let inference = cfg
            .effective_rope_scaling()
            .and_then(|s| minimind_yarn(&f, hd, cfg.rope_theta, cfg.max_position_embeddings, &s).map(|g| (g, s.attention_factor as f32)));
        Rope { head_dim: hd, interleaved: cfg.rope_interleaved, train, inference }
    }

    /// The frequencies and cos/sin factor inference uses.
    pub fn inference_frequencies(&self) -> &(Vec<f32>, f32) {
        self.inference.as_ref().unwrap_or(&self.train)
    }

    /// cos/sin tables for positions `start..start+len`, each [len, head_dim/2].
    /// `scaled` selects the inference tables (MiniMind's YaRN, when configured).
    pub fn tables(&self, start: usize, len: usize, scaled: bool, dev: &Device) -> Result<(Tensor, Tensor)> {
        let (freqs, af) = if scaled { self.inference_frequencies() } else { &self.train };
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
