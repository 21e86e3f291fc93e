//! AdamW with per-parameter weight-decay flags and exportable state (candle-nn's has neither).
//!
//! The update is PyTorch's `torch.optim.AdamW` (non-amsgrad, non-fused), per parameter with its
//! own step count `t` (a parameter only counts steps in which it had a gradient):
//! ```text
//! p ← p · (1 − lr·wd)                       (decoupled decay; only when `decay`)
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//! ```
//! Defaults are PyTorch's (and thus MiniMind's, which calls `optim.AdamW(params, lr)`):
//! β = (0.9, 0.999), ε = 1e-8, wd = 0.01. The moments are kept in f32 whatever the param dtype.
use std::collections::HashMap;

use candle_core::{backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::model::{NamedParam, ParamKind};
use crate::{Error, Result};

/// Version tag written into the optimizer metadata.
pub const ADAMW_STATE_FORMAT: &str = "bunmind.adamw.v1";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// One trainable tensor: its checkpoint name, its `Var`, and whether weight decay applies.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
}

impl Param {
    /// A model parameter, decayed by its kind ([`ParamKind::decays`]; `decay_norms`: every one).
    pub fn of(p: NamedParam, decay_norms: bool) -> Self {
        Param { decay: p.kind.decays(decay_norms), name: p.name, var: p.var }
    }

    /// A tensor outside a model's walk; `decay` from [`default_decay`].
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        let name = name.into();
        let decay = default_decay(&name, var.rank());
        Param { name, var, decay }
    }

    pub fn with_decay(name: impl Into<String>, var: Var, decay: bool) -> Self {
        Param { name: name.into(), var, decay }
    }
}

/// The decay rule ([`ParamKind::weight_decay`]) for a tensor known only by name and rank, its
/// kind inferred by [`ParamKind::infer`]: no weight decay on norms, biases and other 1-D tensors.
pub fn default_decay(name: &str, rank: usize) -> bool {
    ParamKind::infer(name, rank).weight_decay()
}

/// All vars of a `VarMap` as params, sorted by name (deterministic order), decay by [`default_decay`].
pub fn params_from_varmap(varmap: &VarMap) -> Vec<Param> {
    let data = varmap.data().lock().expect("VarMap mutex poisoned");
    let mut params: Vec<Param> = data.iter().map(|(n, v)| Param::new(n.clone(), v.clone())).collect();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    params
}

#[derive(Debug, Clone, Default)]
struct Moments {
    step: u64,
    m: Option<Tensor>,
    v: Option<Tensor>,
}

/// What one [`AdamW::step`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepStats {
    pub updated: usize,
    /// Params with no gradient in the store: left untouched (no decay, no moment update).
    pub skipped_no_grad: usize,
    pub skipped_names: Vec<String>,
}

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    state: Vec<Moments>,
    steps: u64,
}

#[derive(Serialize, Deserialize)]
struct ParamMeta {
    name: String,
    shape: Vec<usize>,
    step: u64,
    decay: bool,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    format: String,
    steps: u64,
    config: AdamWConfig,
    params: Vec<ParamMeta>,
}

impl AdamW {
    pub fn new(params: Vec<Param>, config: AdamWConfig) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for p in &params {
            if !seen.insert(p.name.as_str()) {
                return Err(Error::tensor(&p.name, "parameter listed twice in the optimizer"));
            }
            if !p.var.dtype().is_float() {
                return Err(Error::tensor(&p.name, format!("cannot optimise a {:?} tensor", p.var.dtype())));
            }
        }
        for (field, ok) in [
            ("beta1", (0.0..1.0).contains(&config.beta1)),
            ("beta2", (0.0..1.0).contains(&config.beta2)),
            ("eps", config.eps >= 0.0),
            ("weight_decay", config.weight_decay >= 0.0),
        ] {
            if !ok {
                return Err(Error::config(field, "out of range (betas in [0, 1), eps and weight_decay ≥ 0)"));
            }
        }
        let state = vec![Moments::default(); params.len()];
        Ok(AdamW { config, params, state, steps: 0 })
    }

    pub fn from_varmap(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        Self::new(params_from_varmap(varmap), config)
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: AdamWConfig) {
        self.config = config;
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// Number of `step` calls so far (restored by `load_state`).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One AdamW update with learning rate `lr` (the caller's schedule sets it each step): the
    /// formula of [`Update`] on each parameter with a gradient, through the backend its storage
    /// allows ([`Backend`]).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepStats> {
        let mut stats = StepStats::default();
        for (p, st) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                stats.skipped_no_grad += 1;
                stats.skipped_names.push(p.name.clone());
                continue;
            };
            if g.shape() != p.var.shape() {
                return Err(Error::tensor(&p.name, format!("gradient shape {:?} != parameter shape {:?}", g.shape(), p.var.shape())));
            }
            let zeros = || Tensor::zeros(p.var.shape(), DType::F32, p.var.device());
            let m = match st.m.take() {
                Some(m) => m,
                None => zeros()?,
            };
            let v = match st.v.take() {
                Some(v) => v,
                None => zeros()?,
            };
            st.step += 1;
            let u = Update::new(&self.config, lr, st.step, p.decay);
            let (m, v) = Backend::for_param(&p.var, g).apply(&u, &p.var, g, m, v)?;
            st.m = Some(m);
            st.v = Some(v);
            stats.updated += 1;
        }
        self.steps += 1;
        Ok(stats)
    }

    /// State as tensors (`<name>.exp_avg`, `<name>.exp_avg_sq`, f32) plus JSON metadata (format,
    /// step counts, config, names and shapes), ready for safetensors + JSON.
    pub fn export_state(&self) -> Result<(HashMap<String, Tensor>, serde_json::Value)> {
        let mut tensors = HashMap::new();
        let mut params = Vec::with_capacity(self.params.len());
        for (p, st) in self.params.iter().zip(&self.state) {
            if let (Some(m), Some(v)) = (&st.m, &st.v) {
                // copies: the moments are updated in place by later steps
                tensors.insert(format!("{}.exp_avg", p.name), m.copy()?);
                tensors.insert(format!("{}.exp_avg_sq", p.name), v.copy()?);
            }
            params.push(ParamMeta { name: p.name.clone(), shape: p.var.dims().to_vec(), step: st.step, decay: p.decay });
        }
        let meta = StateMeta { format: ADAMW_STATE_FORMAT.into(), steps: self.steps, config: self.config, params };
        Ok((tensors, serde_json::to_value(meta)?))
    }

    /// Restores moments and step counts saved by [`AdamW::export_state`]. The names in the state must
    /// be exactly this optimizer's params and every shape must match; errors name the offending
    /// parameter. Hyperparameters (config, decay flags) stay as this optimizer was built; the saved
    /// ones are informational. Nothing changes when an error is returned.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, meta: &serde_json::Value) -> Result<()> {
        let meta: StateMeta = serde_json::from_value(meta.clone())
            .map_err(|e| Error::config("optimizer", format!("bad optimizer metadata: {e}")))?;
        if meta.format != ADAMW_STATE_FORMAT {
            return Err(Error::config("optimizer.format", format!("expected `{ADAMW_STATE_FORMAT}`, got `{}`", meta.format)));
        }
        let by_name: HashMap<&str, &ParamMeta> = meta.params.iter().map(|p| (p.name.as_str(), p)).collect();
        for pm in &meta.params {
            if !self.params.iter().any(|p| p.name == pm.name) {
                return Err(Error::tensor(&pm.name, "in the saved optimizer state but not a parameter of this model"));
            }
        }
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let pm = by_name
                .get(p.name.as_str())
                .ok_or_else(|| Error::tensor(&p.name, "parameter has no entry in the saved optimizer state"))?;
            if pm.shape != p.var.dims() {
                return Err(Error::tensor(&p.name, format!("saved optimizer shape {:?} != parameter shape {:?}", pm.shape, p.var.dims())));
            }
            let fetch = |suffix: &str| -> Result<Option<Tensor>> {
                let key = format!("{}.{suffix}", p.name);
                match tensors.get(&key) {
                    None => Ok(None),
                    Some(t) if t.dims() != p.var.dims() => Err(Error::tensor(
                        &key,
                        format!("shape {:?} != parameter shape {:?}", t.dims(), p.var.dims()),
                    )),
                    // own copy: the moments are updated in place
                    Some(t) => Ok(Some(t.to_device(p.var.device())?.to_dtype(DType::F32)?.contiguous()?.copy()?)),
                }
            };
            let (m, v) = (fetch("exp_avg")?, fetch("exp_avg_sq")?);
            match (&m, &v, pm.step) {
                (Some(_), Some(_), s) if s > 0 => {}
                (None, None, 0) => {}
                _ => {
                    return Err(Error::tensor(
                        &p.name,
                        format!("optimizer state inconsistent: step {} but exp_avg {} / exp_avg_sq {}", pm.step,
                            if m.is_some() { "present" } else { "missing" }, if v.is_some() { "present" } else { "missing" }),
                    ))
                }
            }
            restored.push(Moments { step: pm.step, m, v });
        }
        self.state = restored;
        self.steps = meta.steps;
        Ok(())
    }
}

/// The contiguous f32 slice of an in-place destination.
fn f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(d) = s else { candle_core::bail!("{op}: expected f32 storage") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut d[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

fn f32_ref<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else { candle_core::bail!("{op}: expected f32 storage") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

const CHUNK: usize = 1 << 14;

/// The update of one parameter at its step `t` (1-based), as the scalars every backend applies:
/// ```text
/// m ← β1·m + (1 − β1)·g
/// v ← β2·v + (1 − β2)·g²
/// w ← w·decay − step · m / (√v · inv_sqrt_bc2 + ε)
/// decay = 1 − lr·wd (1 without decay), step = lr / (1 − β1^t), inv_sqrt_bc2 = 1 / √(1 − β2^t)
/// ```
#[derive(Debug, Clone, Copy)]
struct Update {
    beta1: f64,
    beta2: f64,
    decay: f64,
    step: f64,
    inv_sqrt_bc2: f64,
    eps: f64,
}

impl Update {
    fn new(c: &AdamWConfig, lr: f64, t: u64, decay: bool) -> Update {
        let t = t as i32;
        Update {
            beta1: c.beta1,
            beta2: c.beta2,
            decay: if decay && c.weight_decay != 0.0 { 1.0 - lr * c.weight_decay } else { 1.0 },
            step: lr / (1.0 - c.beta1.powi(t)),
            inv_sqrt_bc2: 1.0 / (1.0 - c.beta2.powi(t)).sqrt(),
            eps: c.eps,
        }
    }

}

/// [`Update`]'s scalars in f32, and its formula on one element in f32 (the CPU backend; the CUDA
/// kernel `cuda/adamw.cu` does the same per thread).
#[derive(Debug, Clone, Copy)]
struct UpdateF32 {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    decay: f32,
    step: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
}

impl From<&Update> for UpdateF32 {
    fn from(u: &Update) -> UpdateF32 {
        UpdateF32 {
            beta1: u.beta1 as f32,
            one_minus_beta1: (1.0 - u.beta1) as f32,
            beta2: u.beta2 as f32,
            one_minus_beta2: (1.0 - u.beta2) as f32,
            decay: u.decay as f32,
            step: u.step as f32,
            inv_sqrt_bc2: u.inv_sqrt_bc2 as f32,
            eps: u.eps as f32,
        }
    }
}

impl UpdateF32 {
    /// `m ← β·m + (1 − β)·x` (x = g for the first moment, g² for the second).
    #[inline(always)]
    fn moment(beta: f32, one_minus: f32, m: &mut f32, x: f32) {
        *m = *m * beta + x * one_minus;
    }

    /// `w ← w·decay − step · m / (√v · inv_sqrt_bc2 + ε)`.
    #[inline(always)]
    fn param(&self, w: &mut f32, m: f32, v: f32) {
        *w = *w * self.decay - (m / (v.sqrt() * self.inv_sqrt_bc2 + self.eps)) * self.step;
    }
}

/// Where [`Update`] runs for one parameter.
enum Backend {
    /// bunmind's fused kernel (`cuda/adamw.cu`): f32 contiguous parameter and gradient on CUDA.
    #[cfg(feature = "cuda")]
    CudaFused,
    /// In-place passes over the f32 slices ([`MomentUpdate`], [`ParamUpdate`]): f32 contiguous
    /// CPU tensors.
    CpuSlices,
    /// candle tensor ops in f32 (any device or dtype; the parameter is cast back to its dtype).
    Tensors,
}

impl Backend {
    fn for_param(w: &Var, g: &Tensor) -> Backend {
        let f32_contiguous = w.dtype() == DType::F32 && g.dtype() == DType::F32 && w.is_contiguous() && g.is_contiguous();
        #[cfg(feature = "cuda")]
        if f32_contiguous && w.device().is_cuda() && crate::ops::cuda::cuda_fused_enabled() {
            return Backend::CudaFused;
        }
        if f32_contiguous && w.device().is_cpu() && g.device().is_cpu() {
            Backend::CpuSlices
        } else {
            Backend::Tensors
        }
    }

    /// Applies `u` to `w` with gradient `g` and moments `m`, `v` (f32, the optimizer's own
    /// buffers); returns the new moments.
    fn apply(self, u: &Update, w: &Var, g: &Tensor, m: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            #[cfg(feature = "cuda")]
            Backend::CudaFused => {
                let k = UpdateF32::from(u);
                let h = crate::ops::cuda::AdamWStep {
                    beta1: k.beta1,
                    beta2: k.beta2,
                    decay: k.decay,
                    step: k.step,
                    inv_sqrt_bc2: k.inv_sqrt_bc2,
                    eps: k.eps,
                };
                w.as_tensor().inplace_op3(&m, &v, &crate::ops::cuda::AdamWOp { grad: g.clone(), h })?;
                Ok((m, v))
            }
            Backend::CpuSlices => {
                // Three in-place passes (candle's in-place ops write one operand each); no
                // temporaries.
                let k = UpdateF32::from(u);
                m.inplace_op2(g, &MomentUpdate { beta: k.beta1, one_minus: k.one_minus_beta1, square: false })?;
                v.inplace_op2(g, &MomentUpdate { beta: k.beta2, one_minus: k.one_minus_beta2, square: true })?;
                w.as_tensor().inplace_op3(&m, &v, &ParamUpdate(k))?;
                Ok((m, v))
            }
            Backend::Tensors => {
                let g = g.detach().to_dtype(DType::F32)?;
                let m = (m.affine(u.beta1, 0.0)? + g.affine(1.0 - u.beta1, 0.0)?)?;
                let v = (v.affine(u.beta2, 0.0)? + g.sqr()?.affine(1.0 - u.beta2, 0.0)?)?;
                let denom = v.sqrt()?.affine(u.inv_sqrt_bc2, u.eps)?;
                let w32 = w.as_tensor().detach().to_dtype(DType::F32)?.affine(u.decay, 0.0)?;
                let new = (w32 - m.div(&denom)?.affine(u.step, 0.0)?)?;
                w.set(&new.to_dtype(w.dtype())?)?;
                Ok((m, v))
            }
        }
    }
}

/// [`UpdateF32::moment`] with x = g (or g² when `square`), in place on m.
struct MomentUpdate {
    beta: f32,
    one_minus: f32,
    square: bool,
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let m = f32_mut(s1, l1, self.name())?;
        let g = f32_ref(s2, l2, self.name())?;
        if m.len() != g.len() {
            candle_core::bail!("adamw-moment: size mismatch");
        }
        let (b, c, square) = (self.beta, self.one_minus, self.square);
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            for (mi, &gi) in m.iter_mut().zip(g) {
                UpdateF32::moment(b, c, mi, if square { gi * gi } else { gi });
            }
        });
        Ok(())
    }
}

/// [`UpdateF32::param`], in place on the parameter, with (exp_avg, exp_avg_sq) as operands.
struct ParamUpdate(UpdateF32);

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "adamw-update"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let w = f32_mut(s1, l1, self.name())?;
        let m = f32_ref(s2, l2, self.name())?;
        let v = f32_ref(s3, l3, self.name())?;
        if w.len() != m.len() || w.len() != v.len() {
            candle_core::bail!("adamw-update: size mismatch");
        }
        let k = self.0;
        w.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(w, (m, v))| {
            for ((wi, &mi), &vi) in w.iter_mut().zip(m).zip(v) {
                k.param(wi, mi, vi);
            }
        });
        Ok(())
    }
}
