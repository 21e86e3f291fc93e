//! RMSNorm: `w · x / sqrt(mean(x²) + eps)` over the last dim (computed in f32).
use candle_core::{Tensor, D};

use crate::Result;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub(crate) weight: Tensor, // [dim]
    pub(crate) eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    /// Differentiable composition (candle's fused `rms_norm` has no backward).
    /// x: [..., dim] → [..., dim]
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // [..., 1]
        let inv = (ms + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)?)
    }

    /// Fused kernel for inference. x: [..., dim] → [..., dim]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?)
    }
}
