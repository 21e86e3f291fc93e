//! Model-agnostic training building blocks on candle `Var`s, grad stores and logits.
//!
//! A trainer composes them per optimizer step:
//! ```text
//! for each micro-batch:   logits = model.forward(batch)                    (model crate)
//!                         loss   = masked_cross_entropy_sum(...) [+ aux]   (loss)
//!                         grads  = loss.backward(); accum.add(&grads)      (accum)
//! grads = accum.finish(1 / Σ tokens)                                       (accum)
//! norm  = clip_grad_norm(&mut grads, &vars, 1.0)                           (clip)
//! opt.step(&grads, lr)                        (optim; the caller's schedule: src/train/schedule.ts)
//! every N steps: save_checkpoint(dir, parts)  (weights, opt.export_state(), rng.state(), ...)
//! ```
//! [`train_step`] does the middle part for a closure that maps one micro-batch to a [`MicroLoss`].
//! Everything runs on the device of the tensors it is given; nothing here picks a device.
//! New ops in a model should pass [`gradcheck::check_gradients`] before they are trained.
pub mod accum;
pub mod checkpoint;
pub mod clip;
pub mod gradcheck;
pub mod loss;
pub mod optim;

pub use accum::GradAccumulator;
pub use checkpoint::{atomic_write, load_checkpoint, save_checkpoint, CheckpointParts, LoadedCheckpoint};
pub use clip::{clip_grad_norm, global_grad_norm, scale_grads};
pub use gradcheck::{check_gradients, GradCheckConfig, GradCheckReport, VarReport, VarStatus};
pub use loss::{
    distill_loss, dpo_loss, log_softmax_last, masked_cross_entropy, masked_cross_entropy_sum, sequence_logprobs,
    token_logprobs, token_logprobs_reference, DistillLoss, DpoMetrics, MaskedLossSum,
};
pub use optim::{default_decay, params_from_varmap, AdamW, AdamWConfig, Param, StepStats};
pub use crate::rng::{Rng, RngState};

use candle_core::Tensor;

use crate::Result;

/// One micro-batch's contribution: `loss` is backpropagated as-is; the accumulated gradient is
/// divided by the sum of `weight`s over the step.
/// - token-mean over the whole step (exact "one big batch"): `loss = ce_sum`, `weight = count`;
/// - upstream MiniMind (mean of per-micro-batch means): `loss = ce_mean + aux`, `weight = 1`.
/// `grads`: the micro-batch's gradients when they were computed without autograd (the
/// hand-written step in [`crate::fast`]); `loss` is then only read, not backpropagated.
#[derive(Debug)]
pub struct MicroLoss {
    pub loss: Tensor,
    pub weight: f64,
    pub grads: Option<candle_core::backprop::GradStore>,
}

impl MicroLoss {
    /// A loss to backpropagate.
    pub fn new(loss: Tensor, weight: f64) -> Self {
        MicroLoss { loss, weight, grads: None }
    }

    /// A micro-batch without a loss token, in a mean of micro-batch means: loss 0, no gradient,
    /// weight 1 (still one of the micro-batches averaged over).
    pub fn empty(dev: &candle_core::Device) -> Result<Self> {
        Ok(MicroLoss { loss: Tensor::new(0f32, dev)?, weight: 1.0, grads: Some(Default::default()) })
    }
}

/// What [`train_step`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    /// Σ loss / Σ weight over the micro-batches.
    pub loss: f64,
    pub weight: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub micro_batches: usize,
    /// False when the gradient norm was not finite: the optimizer step was skipped.
    pub applied: bool,
    pub stats: StepStats,
}

/// Forward/backward every micro-batch, accumulate, normalise by Σ weight, clip to
/// `max_grad_norm` (if any), and apply one AdamW step at `lr`.
pub fn train_step<B, I, F>(opt: &mut AdamW, micro_batches: I, lr: f64, max_grad_norm: Option<f64>, loss_fn: F) -> Result<StepReport>
where
    I: IntoIterator<Item = B>,
    F: FnMut(B) -> Result<MicroLoss>,
{
    train_step_synced(opt, micro_batches, lr, max_grad_norm, None, loss_fn)
}

/// Data-parallel part of a step: the collective, and caller values to sum over the ranks too.
pub struct StepSync<'a> {
    pub collective: &'a mut dyn crate::dist::Collective,
    /// Summed over all ranks in place (e.g. token counts, stop requests).
    pub extra: &'a mut [f64],
}

/// [`train_step`] on one rank of a data-parallel job: after the local micro-batches, the loss
/// sums, weights, gradients (and `sync.extra`) are summed over the ranks, so the update is the
/// one a single process would make on the union of all ranks' micro-batches.
pub fn train_step_synced<B, I, F>(
    opt: &mut AdamW,
    micro_batches: I,
    lr: f64,
    max_grad_norm: Option<f64>,
    sync: Option<StepSync<'_>>,
    mut loss_fn: F,
) -> Result<StepReport>
where
    I: IntoIterator<Item = B>,
    F: FnMut(B) -> Result<MicroLoss>,
{
    let vars = opt.vars();
    let mut accum = GradAccumulator::new(vars.clone());
    let (mut loss_sum, mut weight) = (0.0f64, 0.0f64);
    for batch in micro_batches {
        let MicroLoss { loss, weight: w, grads } = loss_fn(batch)?;
        loss_sum += loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        weight += w;
        match grads {
            Some(g) => accum.add(&g)?,
            None => accum.add(&loss.backward()?)?,
        }
    }
    let mut micro_batches = accum.micro_steps();
    if let Some(StepSync { collective, extra }) = sync {
        // One small all-reduce for the control values, then one for the gradients.
        let presence = accum.presence();
        let mut ctl = vec![loss_sum, weight, micro_batches as f64];
        ctl.extend_from_slice(&presence);
        ctl.extend_from_slice(extra);
        collective.all_reduce_host(&mut ctl)?;
        (loss_sum, weight, micro_batches) = (ctl[0], ctl[1], ctl[2].round() as usize);
        let n = presence.len();
        extra.copy_from_slice(&ctl[3 + n..]);
        accum.all_reduce(collective, &ctl[3..3 + n])?;
    }
    if micro_batches == 0 {
        return Err(crate::Error::input("train_step: no micro-batch (nothing to learn from)"));
    }
    if weight <= 0.0 {
        // Every row of the step is without a loss token (e.g. prompts cut before the answer):
        // nothing to learn, and no update (upstream would step on a NaN loss).
        return Ok(StepReport { loss: 0.0, weight, grad_norm: 0.0, lr, micro_batches, applied: false, stats: StepStats::default() });
    }
    let mut grads = accum.finish(1.0 / weight)?;
    // A parameter the step did not reach (an MoE expert no token was routed to) takes part with a
    // zero gradient, as in upstream MiniMind (its `0 · Σ p` term for idle experts) and PyTorch's
    // AdamW: its moments decay, its momentum still moves it, weight decay applies.
    for v in &vars {
        if grads.get(v.as_tensor()).is_none() {
            grads.insert(v.as_tensor(), v.as_tensor().zeros_like()?);
        }
    }
    let grad_norm = match max_grad_norm {
        Some(max) => clip_grad_norm(&mut grads, &vars, max)?,
        None => global_grad_norm(&grads, &vars)?,
    };
    let applied = grad_norm.is_finite();
    let stats = if applied { opt.step(&grads, lr)? } else { StepStats::default() };
    Ok(StepReport { loss: loss_sum / weight, weight, grad_norm, lr, micro_batches, applied, stats })
}
