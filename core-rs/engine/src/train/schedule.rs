//! Learning-rate schedule: MiniMind's cosine decay from `lr` to `lr/10`, with optional linear warmup.
//!
//! Upstream (`trainer/trainer_utils.py::get_lr`) computes `lr·(0.1 + 0.45·(1 + cos(π·step/total)))`,
//! i.e. `min + (lr − min)·½(1 + cos(π·step/total))` with `min = lr/10`: `lr` at step 0, `lr/10` at
//! `total`. The seed (v1) added a linear warmup `lr·step/warmup` before the cosine and held `min`
//! after `total`; with `warmup_steps = 0` both agree.

/// Cosine schedule parameters. `total_steps` counts optimizer steps (upstream: epochs · iters).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineSchedule {
    pub lr: f64,
    pub total_steps: u64,
    #[serde(default)]
    pub warmup_steps: u64,
    /// Floor as a fraction of `lr` (MiniMind: 0.1).
    #[serde(default = "default_min_ratio")]
    pub min_lr_ratio: f64,
}

fn default_min_ratio() -> f64 {
    0.1
}

impl CosineSchedule {
    pub fn new(lr: f64, total_steps: u64) -> Self {
        CosineSchedule { lr, total_steps, warmup_steps: 0, min_lr_ratio: default_min_ratio() }
    }

    pub fn with_warmup(mut self, warmup_steps: u64) -> Self {
        self.warmup_steps = warmup_steps;
        self
    }

    /// LR for optimizer step `step` (0-based or 1-based as the caller counts; upstream passes
    /// `epoch·iters + step` with `step` starting at 1).
    pub fn lr_at(&self, step: u64) -> f64 {
        cosine_lr(step, self.total_steps, self.lr, self.warmup_steps, self.min_lr_ratio)
    }
}

/// Pure form of [`CosineSchedule::lr_at`].
///
/// - `step < warmup`: `lr · step / warmup` (starts at 0, as the seed did).
/// - `warmup ≤ step ≤ total`: `min + (lr − min)·½(1 + cos(π·(step − warmup)/(total − warmup)))`.
/// - `step > total`: `min`.
pub fn cosine_lr(step: u64, total: u64, lr: f64, warmup: u64, min_lr_ratio: f64) -> f64 {
    let min = lr * min_lr_ratio;
    if step < warmup {
        return lr * step as f64 / warmup as f64;
    }
    if step >= total || total <= warmup {
        return min; // the cosine reaches `min` exactly at `total`
    }
    let ratio = (step - warmup) as f64 / (total - warmup) as f64;
    min + (lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos())
}
