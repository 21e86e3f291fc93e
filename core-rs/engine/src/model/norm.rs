//! RMSNorm: `w · x / sqrt(mean(x²) + eps)` over the last dim (computed in f32).
use candle_core::Tensor;

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

    /// Differentiable (grads for x and weight): [`crate::ops::rms_norm`], a fused op with its own
    /// backward on CPU f32 (candle's fused `rms_norm` has none), the op chain elsewhere.
    /// x: [..., dim] → [..., dim]
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::rms_norm(x, &self.weight, self.eps)
    }

    /// Fused kernel for inference. x: [..., dim] → [..., dim]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?)
    }
}
