//! A linear layer `y = x Wᵀ (+ b)` with an optional LoRA adapter
//! `y += (alpha/r) · B(A(dropout(x)))`.
use candle_core::Tensor;

use super::dropout::ForwardCtx;
use crate::Result;

/// The adapter tensors attached to one [`Linear`] (shared with the adapters' own VarMap).
#[derive(Debug, Clone)]
pub struct LoraLinear {
    pub(crate) a: Tensor, // [r, in]
    pub(crate) b: Tensor, // [out, r]
    pub(crate) scale: f64,
    pub(crate) dropout: f64,
}

#[derive(Debug, Clone)]
pub struct Linear {
    /// HF module name without `.weight`, e.g. `model.layers.0.self_attn.q_proj`.
    pub(crate) name: String,
    pub(crate) weight: Tensor, // [out, in]
    pub(crate) bias: Option<Tensor>, // [out]
    pub(crate) lora: Option<LoraLinear>,
}

/// x: [..., in] · w: [out, in] → [..., out]
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let n_in = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, n_in))?;
    #[cfg(target_arch = "wasm32")]
    let y = match super::wasm_matmul::matmul_t(&x2, w)? {
        Some(y) => y,
        None => x2.matmul(&w.t()?)?,
    };
    #[cfg(not(target_arch = "wasm32"))]
    let y = x2.matmul(&w.t()?)?;
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    Ok(y.reshape(out)?)
}

impl Linear {
    pub fn new(name: impl Into<String>, weight: Tensor) -> Self {
        Linear { name: name.into(), weight, bias: None, lora: None }
    }

    pub fn with_bias(mut self, bias: Option<Tensor>) -> Self {
        self.bias = bias;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last component of the name: `q_proj`, `gate_proj`, ...
    pub fn short_name(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// x: [..., in] → [..., out]. Under autocast, x and the weights are cast to the autocast
    /// dtype (the f32 master weights stay as they are) and so is the output.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let x = &ctx.cast(x)?;
        let mut y = matmul_t(x, &ctx.cast(&self.weight)?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&ctx.cast(b)?)?;
        }
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                let xd = ctx.dropout(x, l.dropout)?;
                let delta = matmul_t(&matmul_t(&xd, &ctx.cast(&l.a)?)?, &ctx.cast(&l.b)?)?;
                Ok((y + delta.affine(l.scale, 0.0)?)?)
            }
        }
    }
}
