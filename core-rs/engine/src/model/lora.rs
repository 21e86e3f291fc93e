//! LoRA: `y = W x + (alpha/r) · B(A(dropout(x)))` on chosen projections, with A ~ N(0, 0.02²)
//! and B = 0 (MiniMind's init), kept in their own VarMap so only they are trained.
//! Tensor names: `{module}.lora_A.weight` [r, in] and `{module}.lora_B.weight` [out, r], e.g.
//! `model.layers.0.self_attn.q_proj.lora_A.weight`. Files: `adapter_model.safetensors` +
//! `adapter_config.json` (PEFT fields; PEFT's `base_model.model.` name prefix is accepted on load).
//! MiniMind itself applies B·A without scaling: that is `lora_alpha = r` (the default).
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::io::{read_safetensors, write_atomic, write_safetensors_atomic};
use super::linear::{matmul_t, LoraLinear};
use super::params::INIT_STD;
use super::rng::Rng;
use super::transformer::{Model, NamedParam};
use crate::{Error, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Projections an adapter can target.
pub const LORA_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
/// A `target_modules` entry that stands for every square projection (in = out features):
/// upstream MiniMind's `apply_lora` rule. Resolved to projection names when adapters are made.
pub const LORA_SQUARE: &str = "square";

fn d_peft() -> String {
    "LORA".into()
}
fn d_bias() -> String {
    "none".into()
}
fn d_task() -> String {
    "CAUSAL_LM".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    #[serde(default = "d_peft")]
    pub peft_type: String,
    #[serde(default = "d_bias")]
    pub bias: String,
    #[serde(default = "d_task")]
    pub task_type: String,
}

impl Default for LoraConfig {
    /// MiniMind's: rank 16 on q_proj and o_proj, unscaled (alpha = r), no dropout.
    fn default() -> Self {
        LoraConfig {
            r: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into(), "o_proj".into()],
            peft_type: d_peft(),
            bias: d_bias(),
            task_type: d_task(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::config("r", "LoRA rank must be > 0"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::config("lora_dropout", format!("{} must be in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(Error::config("target_modules", "must name at least one module"));
        }
        for m in &self.target_modules {
            if !LORA_TARGETS.contains(&m.as_str()) && m != LORA_SQUARE {
                return Err(Error::config(
                    "target_modules",
                    format!("unknown module `{m}`; choose from {} (or `{LORA_SQUARE}`: every projection with as many inputs as outputs)", LORA_TARGETS.join(", ")),
                ));
            }
        }
        if self.bias != "none" {
            return Err(Error::config("bias", format!("`{}` is not supported; only \"none\"", self.bias)));
        }
        Ok(())
    }
}

/// A set of adapters for one model, in their own VarMap.
#[derive(Clone)]
pub struct LoraAdapters {
    pub config: LoraConfig,
    varmap: VarMap,
    /// Targeted module names (e.g. `model.layers.0.self_attn.q_proj`) in model order.
    modules: Vec<String>,
}

fn a_name(m: &str) -> String {
    format!("{m}.lora_A.weight")
}
fn b_name(m: &str) -> String {
    format!("{m}.lora_B.weight")
}

impl LoraConfig {
    /// `target_modules` with `square` replaced by the projections of `model` that have as many
    /// inputs as outputs (upstream: every `nn.Linear` with `in_features == out_features`; q_proj
    /// and o_proj in MiniMind's presets, k/v_proj too without GQA), in [`LORA_TARGETS`] order.
    pub fn resolved_for(&self, model: &Model) -> Result<LoraConfig> {
        self.validate()?;
        if !self.target_modules.iter().any(|t| t == LORA_SQUARE) {
            return Ok(self.clone());
        }
        let linears = model.linears();
        let square = |name: &str| {
            let of: Vec<_> = linears.iter().filter(|l| l.short_name() == name).collect();
            !of.is_empty() && of.iter().all(|l| l.in_features() == l.out_features())
        };
        let named: Vec<&str> = self.target_modules.iter().map(String::as_str).filter(|t| *t != LORA_SQUARE).collect();
        let targets: Vec<String> = LORA_TARGETS.iter().filter(|t| named.contains(t) || square(t)).map(|t| t.to_string()).collect();
        if targets.is_empty() {
            return Err(Error::config("target_modules", "`square`: this model has no projection with as many inputs as outputs; name the modules"));
        }
        Ok(LoraConfig { target_modules: targets, ..self.clone() })
    }
}

impl LoraAdapters {
    /// Fresh adapters for every targeted projection of `model`: A ~ N(0, 0.02²), B = 0.
    pub fn new(model: &Model, config: LoraConfig, seed: u64) -> Result<Self> {
        let config = config.resolved_for(model)?;
        let mut rng = Rng::new(seed);
        let varmap = VarMap::new();
        let mut modules = Vec::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for l in model.linears() {
                if !config.target_modules.iter().any(|t| t == l.short_name()) {
                    continue;
                }
                let (out, inp, r) = (l.out_features(), l.in_features(), config.r);
                let a = Tensor::from_vec(rng.normal_vec(r * inp, INIT_STD), (r, inp), model.device())?;
                let b = Tensor::zeros((out, r), DType::F32, model.device())?;
                data.insert(a_name(&l.name), Var::from_tensor(&a)?);
                data.insert(b_name(&l.name), Var::from_tensor(&b)?);
                modules.push(l.name.clone());
            }
        }
        Ok(LoraAdapters { config, varmap, modules })
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    pub fn modules(&self) -> &[String] {
        &self.modules
    }
    pub fn num_parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// (A, B) of one module.
    pub fn get(&self, module: &str) -> Option<(Var, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        Some((data.get(&a_name(module))?.clone(), data.get(&b_name(module))?.clone()))
    }

    /// Adapter parameters in model order (A then B per module); all get weight decay.
    pub fn named_parameters(&self) -> Vec<NamedParam> {
        let mut out = Vec::new();
        for m in &self.modules {
            if let Some((a, b)) = self.get(m) {
                out.push(NamedParam { name: a_name(m), var: a, weight_decay: true });
                out.push(NamedParam { name: b_name(m), var: b, weight_decay: true });
            }
        }
        out
    }

    /// Writes `adapter_config.json` + `adapter_model.safetensors` (f32) atomically.
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: HashMap<String, Tensor> =
            self.named_parameters().into_iter().map(|p| (p.name, p.var.as_tensor().clone())).collect();
        write_safetensors_atomic(&tensors, DType::F32, &dir.join(ADAPTER_WEIGHTS_FILE))?;
        write_atomic(&dir.join(ADAPTER_CONFIG_FILE), serde_json::to_string_pretty(&self.config)?.as_bytes())
    }

    /// Loads adapters saved for a model of the same shape; every targeted module must be present.
    pub fn load_dir(dir: impl AsRef<Path>, model: &Model) -> Result<Self> {
        let dir = dir.as_ref();
        let cpath = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let config: LoraConfig = serde_json::from_str(&text).map_err(|e| Error::config("adapter_config.json", format!("{}: {e}", cpath.display())))?;
        config.validate()?;
        let raw = read_safetensors(dir.join(ADAPTER_WEIGHTS_FILE), model.device())?;
        let mut tensors: HashMap<String, Tensor> = raw
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("base_model.model.").map(str::to_string).unwrap_or(k), v))
            .collect();
        let varmap = VarMap::new();
        let mut modules = Vec::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for l in model.linears() {
                if !config.target_modules.iter().any(|t| t == l.short_name()) {
                    continue;
                }
                for (name, shape) in [(a_name(&l.name), [config.r, l.in_features()]), (b_name(&l.name), [l.out_features(), config.r])] {
                    let t = tensors.remove(&name).ok_or_else(|| Error::tensor(&name, format!("missing from {}", dir.join(ADAPTER_WEIGHTS_FILE).display())))?;
                    if t.dims() != shape {
                        return Err(Error::tensor(&name, format!("shape mismatch: expected {shape:?}, got {:?}", t.dims())));
                    }
                    data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
                }
                modules.push(l.name.clone());
            }
        }
        if let Some(extra) = tensors.keys().collect::<BTreeSet<_>>().into_iter().next() {
            return Err(Error::tensor(extra.as_str(), "adapter tensor matches no targeted module of this model"));
        }
        Ok(LoraAdapters { config, varmap, modules })
    }
}

impl Model {
    /// Routes the targeted projections through `adapters` (shares their Vars: training them is
    /// visible here). Replaces any adapters attached before.
    pub fn attach_lora(&mut self, adapters: &LoraAdapters) -> Result<()> {
        let scale = adapters.config.scale();
        let dropout = adapters.config.lora_dropout;
        let mut attached = 0;
        for l in self.linears_mut() {
            l.lora = None;
            if let Some((a, b)) = adapters.get(&l.name) {
                l.lora = Some(LoraLinear { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale, dropout });
                attached += 1;
            }
        }
        if attached != adapters.modules().len() {
            return Err(Error::input(format!(
                "only {attached} of {} adapter modules match this model",
                adapters.modules().len()
            )));
        }
        Ok(())
    }

    pub fn detach_lora(&mut self) {
        for l in self.linears_mut() {
            l.lora = None;
        }
    }

    pub fn has_lora(&self) -> bool {
        self.linears().iter().any(|l| l.lora.is_some())
    }

    /// The largest dropout probability of the attached adapters' inputs (0 without adapters).
    pub fn lora_dropout(&self) -> f64 {
        self.linears().iter().filter_map(|l| l.lora.as_ref()).map(|lo| lo.dropout).fold(0.0, f64::max)
    }

    /// Folds every attached adapter into its base weight (`W += scale · B·A`) and detaches it.
    pub fn merge_lora(&mut self) -> Result<()> {
        let varmap = self.varmap.clone();
        for l in self.linears_mut() {
            if let Some(lo) = l.lora.take() {
                let wname = format!("{}.weight", l.name);
                let var = varmap
                    .data()
                    .lock()
                    .expect("varmap lock")
                    .get(&wname)
                    .cloned()
                    .ok_or_else(|| Error::tensor(&wname, "missing from the model's VarMap"))?;
                let delta = matmul_t(&lo.b, &lo.a.t()?)?.affine(lo.scale, 0.0)?; // [out, in]
                let merged = (var.as_tensor() + delta)?.contiguous()?;
                var.set(&merged)?;
            }
        }
        Ok(())
    }
}


impl std::fmt::Debug for LoraAdapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapters").field("config", &self.config).field("modules", &self.modules).finish()
    }
}
