//! Which implementation runs a model's work: the hand-written CPU kernels of [`crate::fast`] or
//! candle's op graph. Decided here, in [`choose`], for the trainer's LM step and for the prompt
//! prefill of generation alike; the trainer reports it (`trainer info`'s `step_path` and
//! `step_path_reason`, and every step result's `step_path`).
use crate::model::Model;

/// The work a path is chosen for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// One LM training step; `lora`: the trainer trains LoRA adapters only.
    LmStep { lora: bool },
    /// A prompt into an empty KV cache (inference).
    Prefill,
}

/// The chosen implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepPath {
    /// Forward (and backward) written out by hand ([`crate::fast::lm_step`], [`crate::fast::prefill`]).
    HandWritten,
    /// candle's op graph (recorded for backprop in training), with the reason the hand-written
    /// path does not apply.
    Autograd { reason: String },
}

impl StepPath {
    /// `"handwritten"` or `"autograd"` (the JSON value).
    pub fn name(&self) -> &'static str {
        match self {
            StepPath::HandWritten => "handwritten",
            StepPath::Autograd { .. } => "autograd",
        }
    }

    /// Why autograd was chosen (`None` for the hand-written path).
    pub fn reason(&self) -> Option<&str> {
        match self {
            StepPath::HandWritten => None,
            StepPath::Autograd { reason } => Some(reason),
        }
    }

    pub fn is_handwritten(&self) -> bool {
        matches!(self, StepPath::HandWritten)
    }
}

fn autograd(reason: impl Into<String>) -> StepPath {
    StepPath::Autograd { reason: reason.into() }
}

/// The one decision. Hand-written when the switch ([`crate::env::handwritten_cpu`]) is on and
/// [`crate::fast::unsupported`] (prefill) / [`crate::fast::unsupported_step`] (training step) has
/// no objection; for a step also when the adapters the model carries are exactly what is trained
/// (the hand-written step trains the adapters whenever some are attached, so a full-weight run on
/// a model with fixed adapters goes through autograd). Objectives other than LM always use
/// autograd; the trainer does not ask for them.
#[cfg(not(target_arch = "wasm32"))]
pub fn choose(model: &Model, work: Work) -> StepPath {
    if let Some(var) = crate::env::handwritten_cpu_off_by() {
        return autograd(format!("{var}=0"));
    }
    let why = match work {
        Work::Prefill => crate::fast::unsupported(model),
        Work::LmStep { lora } => match (model.has_lora(), lora) {
            (true, false) => Some("the model carries fixed LoRA adapters in a full-weight run".into()),
            (false, true) => Some("LoRA training without attached adapters".into()),
            _ => crate::fast::unsupported_step(model),
        },
    };
    match why {
        None => StepPath::HandWritten,
        Some(why) => autograd(why),
    }
}

#[cfg(target_arch = "wasm32")]
pub fn choose(_model: &Model, _work: Work) -> StepPath {
    autograd("the hand-written kernels are not built for wasm32")
}
