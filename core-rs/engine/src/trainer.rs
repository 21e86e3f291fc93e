//! The trainer: one object that owns a model being trained (all weights, or LoRA adapters only),
//! its AdamW state, its RNG, and the frozen models some objectives need (DPO reference,
//! distillation teacher). The caller (the TS stage loop) owns the schedule, the sampler and the
//! checkpoint cadence; each `step` here is one optimizer step over a list of micro-batches.
//!
//! Objectives:
//! - `lm`: masked next-token cross-entropy (+ MoE aux loss), token-mean over the whole step;
//! - `dpo`: each micro-batch holds chosen rows then rejected rows; loss on summed masked
//!   log-probs against a frozen reference model (β);
//! - `distill`: α·CE + (1−α)·T²·KL(teacher ‖ student) on masked positions.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::{DropoutSource, LoraAdapters, LoraConfig, Model};
use crate::path::{self, StepPath, Work};
use crate::train::{
    self, distill_loss, dpo_loss, masked_cross_entropy_sum, sequence_logprobs, AdamW, AdamWConfig, MicroLoss, Param, Rng,
    RngState,
};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Objective {
    Lm,
    Dpo { beta: f64 },
    Distill { alpha: f64, temperature: f64 },
}

impl Default for Objective {
    fn default() -> Self {
        Objective::Lm
    }
}

/// How the LM loss of a step with several micro-batches is averaged.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccumMean {
    /// One token mean over the whole step (Σ ce / Σ tokens): the update of one big batch,
    /// independent of how the step is split into micro-batches or ranks.
    #[default]
    Token,
    /// The mean of per-micro-batch token means (upstream MiniMind: `loss / accumulation_steps`
    /// per micro-batch). A micro-batch with no loss token counts with loss 0.
    Micro,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    pub objective: Objective,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global-norm clipping threshold; `None` disables clipping.
    pub grad_clip: Option<f64>,
    pub seed: u64,
    /// Train LoRA adapters only (the base weights stay frozen).
    pub lora: Option<LoraConfig>,
    /// Mixed precision of the training forward: `"bf16"` (bf16 compute from f32 master weights,
    /// see `Model::set_autocast`), `"f32"`, or `None` = automatic: bf16 on CUDA, f32 on the CPU.
    pub autocast: Option<String>,
    /// Weight decay on every parameter, norm gains included (upstream MiniMind:
    /// `optim.AdamW(model.parameters())`). Default false: matrices and embeddings only.
    pub decay_norms: bool,
    /// LM objective: token mean over the step (default) or mean of micro-batch means (upstream).
    pub accum_mean: AccumMean,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        // MiniMind trains with torch.optim.AdamW defaults and clips at 1.0.
        TrainerConfig {
            objective: Objective::Lm,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: Some(1.0),
            seed: 42,
            lora: None,
            autocast: None,
            decay_norms: false,
            accum_mean: AccumMean::Token,
        }
    }
}

/// One micro-batch on the host: row-major `[b, t]` inputs, targets and loss mask.
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    pub b: usize,
    pub t: usize,
}

impl Batch {
    fn check(&self) -> Result<()> {
        let n = self.b * self.t;
        if self.b == 0 || self.t == 0 {
            return Err(Error::input("batch: b and t must be positive"));
        }
        for (name, len) in [("ids", self.ids.len()), ("targets", self.targets.len()), ("mask", self.mask.len())] {
            if len != n {
                return Err(Error::input(format!("batch: `{name}` has {len} values, expected b·t = {}·{} = {n}", self.b, self.t)));
            }
        }
        Ok(())
    }

    fn tensors(&self, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        self.check()?;
        let shape = (self.b, self.t);
        Ok((
            Tensor::from_slice(&self.ids, shape, dev)?,
            Tensor::from_slice(&self.targets, shape, dev)?,
            Tensor::from_slice(&self.mask, shape, dev)?,
        ))
    }

    /// Number of counted target tokens.
    pub fn tokens(&self) -> f64 {
        self.mask.iter().filter(|&&m| m > 0.0).count() as f64
    }
}

/// What one step did (serialised to the caller as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: f64,
    pub applied: bool,
    pub aux_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpo: Option<train::DpoMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ce: Option<f64>,
    /// Data-parallel: some rank asked to stop after this step (every rank sees the same value).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
    /// Number of ranks that took part in the step (1 without data parallelism).
    pub world_size: usize,
    /// Which implementation ran the step: `"handwritten"` or `"autograd"` ([`crate::path::StepPath`]).
    pub step_path: &'static str,
}

/// One micro-batch through the hand-written step: the summed loss, its token count, and the
/// gradients (no autograd graph).
#[cfg(not(target_arch = "wasm32"))]
fn fast_micro_loss(model: &Model, batch: &Batch, dev: &Device) -> Result<MicroLoss> {
    let step = crate::fast::lm_step(model, &batch.ids, &batch.targets, &batch.mask, batch.b, batch.t)?;
    Ok(MicroLoss { loss: Tensor::new(step.loss_sum, dev)?, weight: step.count as f64, grads: Some(step.grads) })
}

#[cfg(target_arch = "wasm32")]
fn fast_micro_loss(_model: &Model, _batch: &Batch, _dev: &Device) -> Result<MicroLoss> {
    unreachable!("path::choose never picks the hand-written step on wasm32")
}

/// A micro-batch's summed loss and gradients as its token mean with weight 1 ([`AccumMean::Micro`]).
fn micro_mean(m: MicroLoss, dev: &Device) -> Result<MicroLoss> {
    let count = m.weight;
    if count <= 0.0 {
        return MicroLoss::empty(dev);
    }
    let mut grads = m.grads.expect("the fast step returns gradients");
    let ids: Vec<_> = grads.get_ids().copied().collect();
    for id in ids {
        if let Some(g) = grads.get_id(id).map(|g| g / count).transpose()? {
            grads.insert_id(id, g);
        }
    }
    Ok(MicroLoss { loss: (m.loss / count)?, weight: 1.0, grads: Some(grads) })
}

pub struct Trainer {
    pub model: Model,
    pub adapters: Option<LoraAdapters>,
    reference: Option<Model>,
    teacher: Option<Model>,
    opt: AdamW,
    rng: Rng,
    step: u64,
    cfg: TrainerConfig,
    /// Data-parallel collective (see [`Trainer::join`]).
    dist: Option<Box<dyn crate::dist::Collective>>,
    stop_requested: bool,
}

impl Trainer {
    /// `reference` is required for DPO (a frozen copy of the starting policy), `teacher` for
    /// distillation.
    pub fn new(mut model: Model, mut cfg: TrainerConfig, reference: Option<Model>, teacher: Option<Model>) -> Result<Trainer> {
        match (&cfg.objective, &reference, &teacher) {
            (Objective::Dpo { .. }, None, _) => return Err(Error::config("objective", "dpo needs a frozen reference model")),
            (Objective::Distill { .. }, _, None) => return Err(Error::config("objective", "distill needs a teacher model")),
            (Objective::Dpo { beta }, _, _) if !(*beta > 0.0) => return Err(Error::config("objective.beta", "must be > 0")),
            (Objective::Distill { alpha, temperature }, _, _) if !(0.0..=1.0).contains(alpha) || !(*temperature > 0.0) => {
                return Err(Error::config("objective", "distill needs 0 ≤ alpha ≤ 1 and temperature > 0"))
            }
            _ => {}
        }
        let autocast = resolve_autocast(cfg.autocast.as_deref(), model.device())?;
        model.set_autocast(autocast);
        let (mut reference, mut teacher) = (reference, teacher);
        for m in reference.iter_mut().chain(teacher.iter_mut()) {
            m.set_autocast(autocast);
        }
        let opt_cfg = AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay };
        let (adapters, params) = match cfg.lora.clone() {
            Some(lc) => {
                let adapters = LoraAdapters::new(&model, lc, cfg.seed)?;
                // `square` resolved to the projections it names, as saved with the adapters.
                cfg.lora = Some(adapters.config.clone());
                model.attach_lora(&adapters)?;
                let params = adapters
                    .named_parameters()
                    .into_iter()
                    .map(|p| Param::of(p, cfg.decay_norms))
                    .collect();
                (Some(adapters), params)
            }
            None => {
                let params = model.named_parameters().into_iter().map(|p| Param::of(p, cfg.decay_norms)).collect();
                (None, params)
            }
        };
        let opt = AdamW::new(params, opt_cfg)?;
        let rng = Rng::stream(cfg.seed, "dropout");
        Ok(Trainer {
            model,
            adapters,
            reference,
            teacher,
            opt,
            rng,
            step: 0,
            cfg,
            dist: None,
            stop_requested: false,
        })
    }

    pub fn config(&self) -> &TrainerConfig {
        &self.cfg
    }

    /// The training forward's compute dtype: `"bf16"` or `"f32"`.
    pub fn compute_dtype(&self) -> &'static str {
        if self.model.autocast() == Some(DType::BF16) {
            "bf16"
        } else {
            "f32"
        }
    }

    /// Joins a data-parallel job: from now on every `step` sums losses and gradients over the
    /// ranks of `col`. The weights (trainable ones, and a LoRA run's frozen base) are first
    /// broadcast from rank 0, so every rank starts from the same point (as DDP does).
    pub fn join(&mut self, mut col: Box<dyn crate::dist::Collective>) -> Result<()> {
        if self.dist.is_some() {
            return Err(Error::input("this trainer has already joined a data-parallel job"));
        }
        // What is trained, and (with LoRA) the frozen base it is trained on: every weight the
        // forward reads must be the same on every rank.
        let mut vars = self.opt.vars();
        if self.adapters.is_some() {
            vars.extend(self.model.named_parameters().into_iter().map(|p| p.var));
        }
        let current: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().detach()).collect();
        let from_root = col.broadcast_tensors(&current, 0)?;
        if col.rank() != 0 {
            for (v, t) in vars.iter().zip(from_root) {
                v.set(&t)?;
            }
        }
        self.dist = Some(col);
        Ok(())
    }

    /// `(rank, world size, backend)` of the data-parallel job, if joined.
    pub fn dist_info(&self) -> Option<(usize, usize, &'static str)> {
        self.dist.as_ref().map(|c| (c.rank(), c.world_size(), c.backend()))
    }

    /// Asks every rank to stop after the next step (its result has `stop: true` on all ranks).
    /// Without data parallelism the next step reports it back the same way.
    pub fn request_stop(&mut self, on: bool) {
        self.stop_requested = on;
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Which implementation [`Trainer::step`] uses now: the hand-written LM step for the LM
    /// objective when [`crate::path::choose`] allows it, autograd otherwise (with the reason).
    pub fn step_path(&self) -> StepPath {
        match self.cfg.objective {
            Objective::Lm => path::choose(&self.model, Work::LmStep { lora: self.adapters.is_some() }),
            Objective::Dpo { .. } => StepPath::Autograd { reason: "the dpo objective".into() },
            Objective::Distill { .. } => StepPath::Autograd { reason: "the distill objective".into() },
        }
    }

    pub fn trainable_parameters(&self) -> usize {
        self.opt.params().iter().map(|p| p.var.as_tensor().elem_count()).sum()
    }

    /// One optimizer step over `micro` batches at learning rate `lr`.
    pub fn step(&mut self, micro: &[Batch], lr: f64) -> Result<StepResult> {
        // A rank of a data-parallel job may hold no rows of a short last step (the others do).
        if micro.is_empty() && self.dist.is_none() {
            return Err(Error::input("step: no micro-batches"));
        }
        let dev = self.model.device().clone();
        let total_tokens: f64 = micro.iter().map(|b| b.tokens()).sum();
        let mut aux_total = 0.0;
        let mut dpo_metrics: Option<train::DpoMetrics> = None;
        let mut kl_ce: Option<(f64, f64)> = None;
        let objective = self.cfg.objective.clone();
        let accum_mean = self.cfg.accum_mean;
        // Masks are drawn when the model or its adapters' inputs have dropout.
        let dropout_p = self.model.config().dropout.max(self.model.lora_dropout());
        let n_micro = micro.len() as f64;
        // The hand-written dense step (same arithmetic, no autograd graph) when it applies.
        let step_path = self.step_path();
        let use_fast = step_path.is_handwritten();
        let grad_clip = self.cfg.grad_clip;
        // Summed over the ranks with the gradients: tokens and stop requests. (The reported MoE
        // aux loss stays this rank's.)
        let mut extra = [total_tokens, if self.stop_requested { 1.0 } else { 0.0 }];
        let Trainer { model, reference, teacher, opt, rng, dist, .. } = self;
        let world_size = dist.as_ref().map_or(1, |c| c.world_size());
        let sync = dist.as_deref_mut().map(|collective| train::StepSync { collective, extra: &mut extra });
        let report = train::train_step_synced(opt, micro.iter(), lr, grad_clip, sync, |batch: &Batch| {
            let (ids, targets, mask) = batch.tensors(&dev)?;
            // Dropout masks from the trainer's own RNG, so they are part of the resumable state.
            let src: Option<&mut dyn DropoutSource> = if dropout_p > 0.0 { Some(&mut *rng) } else { None };
            match &objective {
                Objective::Lm if use_fast => {
                    let m = fast_micro_loss(model, batch, &dev)?;
                    match accum_mean {
                        AccumMean::Token => Ok(m),
                        AccumMean::Micro => micro_mean(m, &dev),
                    }
                }
                Objective::Lm => {
                    let (logits, aux) = model.forward_train_with(&ids, src)?;
                    let ce = masked_cross_entropy_sum(&logits, &targets, &mask)?;
                    aux_total += aux.to_dtype(DType::F64)?.to_scalar::<f64>()? / n_micro;
                    match accum_mean {
                        // Token-mean over the whole step: Σ ce / Σ tokens; the aux loss (already
                        // scaled by its coefficient) is weighted so that it averages over micro-batches.
                        AccumMean::Token => {
                            let aux_w = (aux * (total_tokens / n_micro))?;
                            Ok(MicroLoss::new((ce.sum + aux_w)?, ce.count as f64))
                        }
                        // Upstream: (ce_mean + aux) per micro-batch, averaged over the micro-batches.
                        AccumMean::Micro => {
                            let mean = if ce.count > 0 { (ce.sum / ce.count as f64)? } else { (ce.sum * 0.0)? };
                            Ok(MicroLoss::new((mean + aux)?, 1.0))
                        }
                    }
                }
                Objective::Dpo { beta } => {
                    if batch.b % 2 != 0 {
                        return Err(Error::input("dpo batch: rows must be chosen rows followed by as many rejected rows"));
                    }
                    let half = batch.b / 2;
                    let (logits, aux) = model.forward_train_with(&ids, src)?;
                    aux_total += aux.to_dtype(DType::F64)?.to_scalar::<f64>()? / n_micro;
                    let logits = logits.to_dtype(DType::F32)?;
                    let lp = sequence_logprobs(&logits, &targets, &mask)?;
                    let r = reference.as_ref().expect("checked in new");
                    let (ref_logits, _) = r.forward_train(&ids)?;
                    let rlp = sequence_logprobs(&ref_logits.detach().to_dtype(DType::F32)?, &targets, &mask)?.detach();
                    let (loss, m) = dpo_loss(&lp.narrow(0, 0, half)?, &lp.narrow(0, half, half)?, &rlp.narrow(0, 0, half)?, &rlp.narrow(0, half, half)?, *beta)?;
                    dpo_metrics = Some(m);
                    // + the MoE aux loss, as upstream's `dpo_loss_val + outputs.aux_loss` (0 when dense).
                    Ok(MicroLoss::new((loss + aux)?, 1.0))
                }
                Objective::Distill { .. } if batch.tokens() == 0.0 => {
                    // Every row cut before its answer: nothing to distil (upstream's loss is NaN here).
                    MicroLoss::empty(&dev)
                }
                Objective::Distill { alpha, temperature } => {
                    let (logits, aux) = model.forward_train_with(&ids, src)?;
                    aux_total += aux.to_dtype(DType::F64)?.to_scalar::<f64>()? / n_micro;
                    let t = teacher.as_ref().expect("checked in new");
                    let (tl, _) = t.forward_train(&ids)?;
                    let (logits, tl) = (logits.to_dtype(DType::F32)?, tl.detach().to_dtype(DType::F32)?);
                    let d = distill_loss(&logits, &tl, &targets, &mask, *alpha, *temperature)?;
                    let kl = d.kl.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    let ce = d.ce.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    kl_ce = Some((kl, ce));
                    // An MoE student's aux loss joins the CE term, as upstream's α·(ce + aux) + (1 − α)·T²·KL.
                    Ok(MicroLoss::new((d.loss + (aux * *alpha)?)?, 1.0))
                }
            }
        })?;
        self.step += 1;
        // Local values unless a collective summed them over the ranks.
        let (tokens, stop) = if world_size > 1 { (extra[0], extra[1] > 0.0) } else { (total_tokens, self.stop_requested) };
        self.stop_requested = false;
        let (kl, ce) = match kl_ce {
            Some((k, c)) => (Some(k), Some(c)),
            None => (None, None),
        };
        Ok(StepResult {
            step: self.step,
            loss: report.loss,
            grad_norm: report.grad_norm,
            lr,
            tokens,
            applied: report.applied,
            aux_loss: aux_total,
            dpo: dpo_metrics,
            kl,
            ce,
            stop,
            world_size,
            step_path: step_path.name(),
        })
    }

    /// Masked cross-entropy (sum, count) without gradients or dropout, for held-out evaluation.
    pub fn eval_lm(&self, batch: &Batch) -> Result<(f64, f64)> {
        eval_lm(&self.model, batch)
    }

    /// Weights as they should be published: merged base weights when training LoRA.
    pub fn export_weights(&self) -> Result<HashMap<String, Tensor>> {
        if self.model.has_lora() {
            return Ok(self.model.merged()?.state_dict());
        }
        Ok(self.model.state_dict())
    }

    /// Writes a resumable checkpoint: model weights (or LoRA adapters), optimizer state, RNG and
    /// step, plus the caller's `extra` JSON (sampler position, epoch, ...). Atomic.
    pub fn save_checkpoint(&self, dir: &Path, extra: serde_json::Value) -> Result<()> {
        let (optimizer, optimizer_meta) = self.opt.export_state()?;
        let weights = match &self.adapters {
            Some(a) => a
                .named_parameters()
                .into_iter()
                .map(|p| (p.name, p.var.as_tensor().clone()))
                .collect(),
            None => self.model.state_dict(),
        };
        let state = serde_json::json!({
            "format": "bunmind.trainer.v1",
            "step": self.step,
            "rng": self.rng.state(),
            "objective": self.cfg.objective,
            "lora": self.cfg.lora.as_ref().map(|l| serde_json::to_value(l).unwrap_or_default()),
            "extra": extra,
        });
        train::save_checkpoint(
            dir,
            &train::CheckpointParts {
                weights,
                config_json: self.model.config().to_json_string()?,
                optimizer,
                optimizer_meta,
                trainer_state: state,
            },
        )
    }

    /// Restores a checkpoint written by `save_checkpoint` into this trainer; returns `extra`.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<serde_json::Value> {
        let ck = train::load_checkpoint(dir, self.model.device())?;
        let state = &ck.trainer_state;
        if state.get("format").and_then(|f| f.as_str()) != Some("bunmind.trainer.v1") {
            return Err(Error::input(format!("checkpoint {}: trainer_state.json is not a bunmind trainer state", dir.display())));
        }
        // Restore trainable tensors by name.
        let targets: Vec<(String, candle_core::Var)> = self.opt.params().iter().map(|p| (p.name.clone(), p.var.clone())).collect();
        let trainable: std::collections::HashSet<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
        for (name, var) in &targets {
            let t = ck.weights.get(name).ok_or_else(|| Error::tensor(name, format!("missing from checkpoint {}", dir.display())))?;
            if t.dims() != var.dims() {
                return Err(Error::tensor(name, format!("checkpoint shape {:?} does not match {:?}", t.dims(), var.dims())));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        if self.adapters.is_none() {
            // Non-trainable tensors of a full checkpoint (none today) must still match.
            for name in ck.weights.keys() {
                if !trainable.contains(name.as_str()) && name != "lm_head.weight" {
                    return Err(Error::tensor(name, "in the checkpoint but not a parameter of this model"));
                }
            }
        }
        self.opt.load_state(&ck.optimizer, &ck.optimizer_meta)?;
        let rng: RngState = serde_json::from_value(state["rng"].clone()).map_err(|e| Error::input(format!("trainer_state.json rng: {e}")))?;
        self.rng = Rng::from_state(rng)?;
        self.step = state["step"].as_u64().ok_or_else(|| Error::input("trainer_state.json: missing step"))?;
        Ok(state.get("extra").cloned().unwrap_or(serde_json::Value::Null))
    }
}

/// Masked cross-entropy (sum, count) of `model` on `batch`, inference mode.
pub fn eval_lm(model: &Model, batch: &Batch) -> Result<(f64, f64)> {
    let (ids, targets, mask) = batch.tensors(model.device())?;
    let (logits, _) = model.forward_train(&ids)?;
    let ce = masked_cross_entropy_sum(&logits.detach(), &targets, &mask)?;
    Ok((ce.sum.to_dtype(DType::F64)?.to_scalar::<f64>()?, ce.count as f64))
}

/// The autocast dtype for a trainer config value on `dev` (see [`TrainerConfig::autocast`]).
pub fn resolve_autocast(value: Option<&str>, dev: &Device) -> Result<Option<DType>> {
    match value {
        None | Some("auto") => Ok(if dev.is_cuda() { Some(DType::BF16) } else { None }),
        Some("bf16") => Ok(Some(DType::BF16)),
        Some("f32") | Some("off") => Ok(None),
        Some(other) => Err(Error::config("autocast", format!("{other:?}: expected \"bf16\", \"f32\" or \"auto\""))),
    }
}
