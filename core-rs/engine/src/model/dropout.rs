//! Dropout for training, driven by a caller-supplied mask source so runs are reproducible.
//! Inference never calls it; `forward_train` without a source is dropout-free (eval mode).
use candle_core::{DType, Device, Tensor};

use crate::rng::Rng;
use crate::Result;

/// Produces inverted-dropout keep masks: entries are `0` (dropped, probability `p`) or `1/(1-p)`.
/// The trainer may implement this with its own RNG; [`SeededDropout`] is the default.
pub trait DropoutSource {
    fn keep_mask(&mut self, shape: &[usize], p: f64, device: &Device) -> Result<Tensor>;
}

/// An [`Rng`] is a mask source: [`Rng::bernoulli_mask`] with keep probability `1 − p` (the
/// trainer passes its own, checkpointed RNG).
impl DropoutSource for Rng {
    fn keep_mask(&mut self, shape: &[usize], p: f64, device: &Device) -> Result<Tensor> {
        self.bernoulli_mask(shape, (1.0 - p) as f32, device)
    }
}

/// Masks from the `"dropout"` stream of a seed: the same seed and call sequence give the same masks.
#[derive(Debug, Clone)]
pub struct SeededDropout {
    rng: Rng,
}

impl SeededDropout {
    pub fn new(seed: u64) -> Self {
        SeededDropout { rng: Rng::stream(seed, "dropout") }
    }
}

impl DropoutSource for SeededDropout {
    fn keep_mask(&mut self, shape: &[usize], p: f64, device: &Device) -> Result<Tensor> {
        self.rng.keep_mask(shape, p, device)
    }
}

/// What one forward pass needs besides its input: training mode, the dropout source, and the
/// autocast dtype (mixed precision: matmul inputs cast to it, see `Model::set_autocast`).
pub struct ForwardCtx<'a> {
    pub(crate) train: bool,
    pub(crate) dropout: Option<&'a mut dyn DropoutSource>,
    pub(crate) autocast: Option<DType>,
}

impl<'a> ForwardCtx<'a> {
    pub(crate) fn inference() -> Self {
        ForwardCtx { train: false, dropout: None, autocast: None }
    }
    pub(crate) fn train(dropout: Option<&'a mut dyn DropoutSource>) -> Self {
        ForwardCtx { train: true, dropout, autocast: None }
    }

    /// `t` in the autocast dtype (a differentiable cast), or `t` itself without autocast.
    pub(crate) fn cast(&self, t: &Tensor) -> Result<Tensor> {
        match self.autocast {
            Some(dt) if t.dtype() != dt && t.dtype().is_float() => Ok(t.to_dtype(dt)?),
            _ => Ok(t.clone()),
        }
    }

    /// `x · mask` when training with a source and `p > 0`; otherwise `x` unchanged.
    pub(crate) fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match (&mut self.dropout, self.train && p > 0.0) {
            (Some(src), true) => {
                let mask = src.keep_mask(x.dims(), p, x.device())?;
                let mask = if mask.dtype() != x.dtype() { mask.to_dtype(x.dtype())? } else { mask };
                Ok(x.mul(&mask)?)
            }
            _ => Ok(x.clone()),
        }
    }
}
