//! LoRA: `y = W x + s · B(A(dropout(x)))` on chosen projections, `s = alpha/r` (or
//! `alpha/√r` with `use_rslora`), with A ~ N(0, 0.02²) and B = 0 (MiniMind's init), kept in their
//! own VarMap so only they are trained. In memory (and in trainer checkpoints) the tensors are
//! `{module}.lora_A.weight` [r, in] and `{module}.lora_B.weight` [out, r], e.g.
//! `model.layers.0.self_attn.q_proj.lora_A.weight`.
//!
//! Adapter folders are PEFT's layout both ways: `adapter_config.json` (a PEFT `LoraConfig`) +
//! `adapter_model.safetensors` with PEFT's names (`base_model.model.{module}.lora_A.weight`), so
//! `peft.PeftModel.from_pretrained` applies what bunmind trained, and bunmind applies adapters
//! PEFT saved. Loading also takes the names without `base_model.model.` (bunmind's older
//! folders). A config field that would change the adapter's math in a way bunmind does not
//! implement (DoRA, rank/alpha patterns, bias, ...) is refused with an error naming the field;
//! metadata fields are accepted; unknown fields give a warning.
//! MiniMind itself applies B·A without scaling: that is `lora_alpha = r` (the default).
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::io::{read_safetensors, write_atomic, write_safetensors_atomic};
use super::linear::{matmul_t, LoraLinear};
use super::params::INIT_STD;
use crate::rng::Rng;
use super::params::ParamKind;
use super::transformer::{Model, NamedParam};
use crate::{Error, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT's `PeftModelForCausalLM` puts before the transformers module names.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// Projections an adapter can target.
pub const LORA_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
/// A `target_modules` entry that stands for every square projection (in = out features):
/// upstream MiniMind's `apply_lora` rule. Resolved to projection names when adapters are made.
pub const LORA_SQUARE: &str = "square";
/// PEFT's `target_modules = "all-linear"`: every linear layer but the output head.
pub const LORA_ALL_LINEAR: &str = "all-linear";

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
    /// Module names as PEFT matches them: an entry names a module whose full name equals it or
    /// ends with `.{entry}` (`q_proj`, `self_attn.q_proj`, `model.layers.0.mlp.experts.3.up_proj`).
    pub target_modules: Vec<String>,
    #[serde(default = "d_peft")]
    pub peft_type: String,
    #[serde(default = "d_bias")]
    pub bias: String,
    #[serde(default = "d_task")]
    pub task_type: String,
    /// Rank-stabilised LoRA: scale `alpha/√r` instead of `alpha/r`.
    #[serde(default)]
    pub use_rslora: bool,
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
            use_rslora: false,
        }
    }
}

/// PEFT's rule: `entry` names module `name` when it is the full name or a `.`-separated suffix.
pub fn target_matches(entry: &str, name: &str) -> bool {
    name == entry || (name.len() > entry.len() && name.ends_with(entry) && name.as_bytes()[name.len() - entry.len() - 1] == b'.')
}

impl LoraConfig {
    /// The adapter's output scale: `alpha/r`, or `alpha/√r` with `use_rslora`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::config("r", "LoRA rank must be > 0"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::config("lora_dropout", format!("{} must be in [0, 1)", self.lora_dropout)));
        }
        if !self.lora_alpha.is_finite() {
            return Err(Error::config("lora_alpha", format!("{} must be a finite number", self.lora_alpha)));
        }
        if self.target_modules.is_empty() {
            return Err(Error::config("target_modules", "must name at least one module"));
        }
        if self.bias != "none" {
            return Err(Error::config("bias", format!("`{}` is not supported; only \"none\"", self.bias)));
        }
        if self.peft_type != "LORA" {
            return Err(Error::config("peft_type", format!("`{}`: only \"LORA\" adapters are supported", self.peft_type)));
        }
        if self.task_type != "CAUSAL_LM" {
            return Err(Error::config("task_type", format!("`{}`: only \"CAUSAL_LM\" (or null) adapters are supported", self.task_type)));
        }
        Ok(())
    }

    /// Whether this config targets the linear layer called `name`.
    pub fn targets(&self, name: &str) -> bool {
        self.target_modules.iter().any(|t| target_matches(t, name))
    }

    /// `target_modules` checked against `model` (every entry must name one of its projections)
    /// with `square` replaced by the projections of `model` that have as many inputs as outputs
    /// (upstream: every `nn.Linear` with `in_features == out_features`; q_proj and o_proj in
    /// MiniMind's presets, k/v_proj too without GQA), in [`LORA_TARGETS`] order, and
    /// `all-linear` by every projection.
    pub fn resolved_for(&self, model: &Model) -> Result<LoraConfig> {
        self.validate()?;
        let linears = model.linears();
        for t in &self.target_modules {
            if t == LORA_SQUARE || t == LORA_ALL_LINEAR {
                continue;
            }
            if !linears.iter().any(|l| target_matches(t, &l.name)) {
                let what = if ["embed_tokens", "lm_head", "gate", "mlp.gate", "q_norm", "k_norm", "input_layernorm", "post_attention_layernorm", "norm"]
                    .iter()
                    .any(|n| target_matches(n, t))
                {
                    format!("`{t}` is not a projection bunmind can put an adapter on")
                } else {
                    format!("unknown module `{t}`: no linear layer of this model has that name")
                };
                return Err(Error::config(
                    "target_modules",
                    format!("{what}; choose from {} (or `{LORA_SQUARE}`: every projection with as many inputs as outputs)", LORA_TARGETS.join(", ")),
                ));
            }
        }
        if !self.target_modules.iter().any(|t| t == LORA_SQUARE || t == LORA_ALL_LINEAR) {
            return Ok(self.clone());
        }
        let all = self.target_modules.iter().any(|t| t == LORA_ALL_LINEAR);
        let has_square = self.target_modules.iter().any(|t| t == LORA_SQUARE);
        let square = |name: &str| {
            let of: Vec<_> = linears.iter().filter(|l| l.short_name() == name).collect();
            !of.is_empty() && of.iter().all(|l| l.in_features() == l.out_features())
        };
        let named: Vec<&str> = self.target_modules.iter().map(String::as_str).filter(|t| *t != LORA_SQUARE && *t != LORA_ALL_LINEAR).collect();
        let mut targets: Vec<String> =
            LORA_TARGETS.iter().filter(|t| all || named.contains(t) || (has_square && square(t))).map(|t| t.to_string()).collect();
        // Entries other than the short names (`self_attn.q_proj`, full names) stay as they are.
        for n in named {
            if !targets.iter().any(|t| t == n) {
                targets.push(n.to_string());
            }
        }
        if targets.is_empty() {
            return Err(Error::config("target_modules", "`square`: this model has no projection with as many inputs as outputs; name the modules"));
        }
        Ok(LoraConfig { target_modules: targets, ..self.clone() })
    }

    /// The `adapter_config.json` PEFT writes for this config (PEFT's `LoraConfig` fields).
    pub fn to_peft_json(&self) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "lora_bias": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "exclude_modules": null,
            "init_lora_weights": true,
            "inference_mode": true,
            "base_model_name_or_path": null,
            "revision": null,
        })
    }
}

/// `adapter_config.json` fields that do not change what a loaded adapter computes: metadata and
/// settings that only shape the initial weights (already in the file) or the training.
const PEFT_INERT_FIELDS: &[&str] = &[
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "auto_mapping",
    "peft_version",
    "megatron_core",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "qalora_group_size",
    "ensure_weight_tying",
];

/// Fields that change the math when set (not null / false / empty); bunmind does not implement
/// them, so such an adapter is refused with the field named.
const PEFT_UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    ("use_dora", "DoRA (weight-decomposed LoRA)"),
    ("fan_in_fan_out", "fan_in_fan_out (Conv1D-style transposed weights)"),
    ("rank_pattern", "per-module ranks"),
    ("alpha_pattern", "per-module alphas"),
    ("layers_to_transform", "adapting only some layers"),
    ("modules_to_save", "fully trained extra modules"),
    ("exclude_modules", "excluding modules from target_modules"),
    ("lora_bias", "a bias on lora_B"),
    ("trainable_token_indices", "trainable token embeddings"),
    ("layer_replication", "layer replication"),
    ("target_parameters", "adapters on parameters (not modules)"),
    ("megatron_config", "Megatron parallel layers"),
    ("use_qalora", "QA-LoRA"),
    ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
    ("velora_config", "VeLoRA"),
    ("monteclora_config", "MonteCLoRA"),
    ("arrow_config", "Arrow routing"),
    ("kasa_config", "KaSA"),
    ("use_bdlora", "BD-LoRA"),
];

/// null, false, 0-free empties: a PEFT field left at its "off" default.
fn inert(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// What a PEFT `target_modules` string means.
enum TargetSpec {
    List(Vec<String>),
    /// A regular expression (PEFT: `re.fullmatch` on module names): the adapted modules are the
    /// ones the adapter file holds tensors for.
    Pattern(String),
}

/// Parses an `adapter_config.json` (PEFT's `LoraConfig`, or bunmind's older files). `path` is
/// named in the errors. Returns the config, its target spec and warnings.
fn parse_adapter_config(text: &str, path: &Path) -> Result<(LoraConfig, TargetSpec, Vec<String>)> {
    let where_ = path.display();
    let v: Value = serde_json::from_str(text).map_err(|e| Error::config("adapter_config.json", format!("{where_}: {e}")))?;
    let obj: &Map<String, Value> = v.as_object().ok_or_else(|| Error::config("adapter_config.json", format!("{where_}: must be a JSON object")))?;
    let bad = |field: &str, msg: String| Error::config(field, format!("{where_}: {msg}"));
    let mut warnings = Vec::new();
    let mut cfg = LoraConfig::default();

    let str_field = |field: &str| -> Result<Option<String>> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(field, format!("expected a string, got {other}"))),
        }
    };
    cfg.peft_type = str_field("peft_type")?.unwrap_or_else(d_peft);
    if cfg.peft_type != "LORA" {
        return Err(bad("peft_type", format!("`{}`: only LoRA adapters (\"LORA\") are supported", cfg.peft_type)));
    }
    // task_type: PEFT's default is null (a bare `get_peft_model` wrap); both mean a causal LM here.
    if let Some(t) = str_field("task_type")? {
        if t != "CAUSAL_LM" {
            return Err(bad("task_type", format!("`{t}`: only \"CAUSAL_LM\" (or null) adapters apply to a language model")));
        }
    }
    cfg.task_type = d_task();
    cfg.r = match obj.get("r") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r > 0) => n.as_u64().unwrap() as usize,
        Some(other) => return Err(bad("r", format!("{other}: the rank must be a positive integer"))),
        None => return Err(bad("r", "missing: the adapter's rank".into())),
    };
    cfg.lora_alpha = match obj.get("lora_alpha") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => return Err(bad("lora_alpha", format!("{other}: expected a number"))),
        None => 8.0, // PEFT's default
    };
    cfg.lora_dropout = match obj.get("lora_dropout") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        None | Some(Value::Null) => 0.0,
        Some(other) => return Err(bad("lora_dropout", format!("{other}: expected a number"))),
    };
    cfg.bias = str_field("bias")?.unwrap_or_else(d_bias);
    if cfg.bias != "none" {
        return Err(bad("bias", format!("`{}`: bunmind's projections have no bias; only \"none\" is supported", cfg.bias)));
    }
    cfg.use_rslora = match obj.get("use_rslora") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(bad("use_rslora", format!("{other}: expected true or false"))),
    };
    let spec = match obj.get("target_modules") {
        Some(Value::Array(a)) => {
            let mut names = Vec::new();
            for t in a {
                match t.as_str() {
                    Some(s) => names.push(s.to_string()),
                    None => return Err(bad("target_modules", format!("{t}: expected module names (strings)"))),
                }
            }
            if names.is_empty() {
                return Err(bad("target_modules", "an empty list adapts nothing".into()));
            }
            TargetSpec::List(names)
        }
        Some(Value::String(s)) if s == LORA_ALL_LINEAR => TargetSpec::List(vec![LORA_ALL_LINEAR.into()]),
        Some(Value::String(s)) if s.is_empty() => return Err(bad("target_modules", "an empty string adapts nothing".into())),
        Some(Value::String(s)) => TargetSpec::Pattern(s.clone()),
        None | Some(Value::Null) => {
            return Err(bad("target_modules", "missing (PEFT would pick defaults by model type): name the adapted modules".into()))
        }
        Some(other) => return Err(bad("target_modules", format!("{other}: expected a list of module names or a regular expression"))),
    };
    // layers_pattern only narrows layers_to_transform; alone it changes nothing.
    let known: BTreeSet<&str> = ["peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "target_modules", "layers_pattern"]
        .into_iter()
        .chain(PEFT_INERT_FIELDS.iter().copied())
        .chain(PEFT_UNSUPPORTED_FIELDS.iter().map(|(f, _)| *f))
        .collect();
    for (field, what) in PEFT_UNSUPPORTED_FIELDS {
        if let Some(v) = obj.get(*field) {
            if !inert(v) {
                return Err(bad(field, format!("{v}: bunmind does not implement {what}, so this adapter cannot be applied as PEFT would")));
            }
        }
    }
    for k in obj.keys() {
        if !known.contains(k.as_str()) {
            warnings.push(format!("{where_}: unknown field `{k}` ignored"));
        }
    }
    cfg.target_modules = match &spec {
        TargetSpec::List(l) => l.clone(),
        TargetSpec::Pattern(p) => vec![p.clone()],
    };
    if let TargetSpec::Pattern(p) = &spec {
        warnings.push(format!(
            "{where_}: target_modules is the regular expression `{p}`: adapting the modules adapter_model.safetensors holds tensors for"
        ));
    }
    if !(0.0..1.0).contains(&cfg.lora_dropout) {
        return Err(bad("lora_dropout", format!("{} must be in [0, 1)", cfg.lora_dropout)));
    }
    if !cfg.lora_alpha.is_finite() {
        return Err(bad("lora_alpha", format!("{} must be a finite number", cfg.lora_alpha)));
    }
    Ok((cfg, spec, warnings))
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

impl LoraAdapters {
    /// Fresh adapters for every targeted projection of `model`: A ~ N(0, 0.02²), B = 0.
    pub fn new(model: &Model, config: LoraConfig, seed: u64) -> Result<Self> {
        let config = config.resolved_for(model)?;
        let mut rng = Rng::stream(seed, "lora");
        let varmap = VarMap::new();
        let mut modules = Vec::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for l in model.linears() {
                if !config.targets(&l.name) {
                    continue;
                }
                let (out, inp, r) = (l.out_features(), l.in_features(), config.r);
                let a = Tensor::from_vec(rng.normal_vec(r * inp, 0.0, INIT_STD as f32), (r, inp), model.device())?;
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

    /// Adapter parameters in model order (A then B per module), of kind [`ParamKind::Adapter`]
    /// (weight decay applies).
    pub fn named_parameters(&self) -> Vec<NamedParam> {
        let mut out = Vec::new();
        for m in &self.modules {
            if let Some((a, b)) = self.get(m) {
                out.push(NamedParam { name: a_name(m), var: a, kind: ParamKind::Adapter });
                out.push(NamedParam { name: b_name(m), var: b, kind: ParamKind::Adapter });
            }
        }
        out
    }

    /// Writes PEFT's layout atomically: `adapter_config.json` (a PEFT `LoraConfig`) +
    /// `adapter_model.safetensors` (f32, names `base_model.model.{module}.lora_A.weight`).
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: HashMap<String, Tensor> =
            self.named_parameters().into_iter().map(|p| (format!("{PEFT_PREFIX}{}", p.name), p.var.as_tensor().clone())).collect();
        write_safetensors_atomic(&tensors, DType::F32, &dir.join(ADAPTER_WEIGHTS_FILE))?;
        write_atomic(&dir.join(ADAPTER_CONFIG_FILE), serde_json::to_string_pretty(&self.config.to_peft_json())?.as_bytes())
    }

    /// Loads adapters saved for a model of the same shape (by bunmind or by PEFT's
    /// `save_pretrained`); every targeted module must be present. Returns the adapters and
    /// warnings (unknown config fields).
    pub fn load_dir(dir: impl AsRef<Path>, model: &Model) -> Result<(Self, Vec<String>)> {
        let dir = dir.as_ref();
        let cpath = dir.join(ADAPTER_CONFIG_FILE);
        let wpath = dir.join(ADAPTER_WEIGHTS_FILE);
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let (config, spec, warnings) = parse_adapter_config(&text, &cpath)?;
        let raw = read_safetensors(&wpath, model.device())?;
        // PEFT's names (`base_model.model.…`) and bunmind's older ones (without the prefix).
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (k, v) in raw {
            let name = k.strip_prefix(PEFT_PREFIX).map(str::to_string).unwrap_or_else(|| k.clone());
            if tensors.insert(name.clone(), v).is_some() {
                return Err(Error::tensor(&k, format!("{}: held twice (with and without `{PEFT_PREFIX}`)", wpath.display())));
            }
        }
        let config = match spec {
            TargetSpec::List(_) => config.resolved_for(model).map_err(|e| match e {
                Error::Config { field, msg } => Error::config(field, format!("{}: {msg}", cpath.display())),
                e => e,
            })?,
            TargetSpec::Pattern(_) => {
                // The modules of this model the file holds an A for, by their full names.
                let held: Vec<String> =
                    model.linears().iter().filter(|l| tensors.contains_key(&a_name(&l.name))).map(|l| l.name.clone()).collect();
                if held.is_empty() {
                    return Err(Error::config(
                        "target_modules",
                        format!("{}: the regular expression `{}` matches no adapter tensor of {} for this model", cpath.display(), config.target_modules[0], wpath.display()),
                    ));
                }
                let c = LoraConfig { target_modules: held, ..config };
                c.validate()?;
                c
            }
        };
        let varmap = VarMap::new();
        let mut modules = Vec::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for l in model.linears() {
                if !config.targets(&l.name) {
                    continue;
                }
                for (name, shape) in [(a_name(&l.name), [config.r, l.in_features()]), (b_name(&l.name), [l.out_features(), config.r])] {
                    let t = tensors
                        .remove(&name)
                        .ok_or_else(|| Error::tensor(format!("{PEFT_PREFIX}{name}"), format!("missing from {}", wpath.display())))?;
                    if t.dims() != shape {
                        return Err(Error::tensor(&name, format!("{}: shape mismatch: expected {shape:?}, got {:?}", wpath.display(), t.dims())));
                    }
                    data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
                }
                modules.push(l.name.clone());
            }
        }
        if let Some(extra) = tensors.keys().collect::<BTreeSet<_>>().into_iter().next() {
            return Err(Error::tensor(
                extra.as_str(),
                format!("{}: adapter tensor matches no targeted projection of this model (target_modules: {:?})", wpath.display(), config.target_modules),
            ));
        }
        Ok((LoraAdapters { config, varmap, modules }, warnings))
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
    /// The merged weights get storage (and Vars, in a VarMap) of their own: clones of this model
    /// made before (a trainer's, a generation session's) keep their weights and adapters.
    pub fn merge_lora(&mut self) -> Result<()> {
        let mut vars: HashMap<String, Var> = self.varmap.data().lock().expect("varmap lock").clone();
        let mut merged_any = false;
        for l in self.linears_mut() {
            if let Some(lo) = l.lora.take() {
                let wname = format!("{}.weight", l.name);
                let var = vars.get(&wname).ok_or_else(|| Error::tensor(&wname, "missing from the model's VarMap"))?;
                let delta = matmul_t(&lo.b, &lo.a.t()?)?.affine(lo.scale, 0.0)?; // [out, in]
                let merged = Var::from_tensor(&(var.as_tensor() + delta)?.contiguous()?)?;
                l.weight = merged.as_tensor().clone();
                vars.insert(wname, merged);
                merged_any = true;
            }
        }
        if merged_any {
            let vm = VarMap::new();
            *vm.data().lock().expect("varmap lock") = vars;
            self.varmap = vm;
        }
        Ok(())
    }

    /// A copy of this model with its attached adapters folded in (this model is unchanged).
    pub fn merged(&self) -> Result<Model> {
        let mut m = self.clone();
        m.merge_lora()?;
        Ok(m)
    }
}

impl std::fmt::Debug for LoraAdapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapters").field("config", &self.config).field("modules", &self.modules).finish()
    }
}
