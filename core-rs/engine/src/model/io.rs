//! Checkpoint IO in Hugging Face layout: `config.json` + `model.safetensors`.
//!
//! Loading converts f32/f16/bf16 weights to f32 and checks the file against the config:
//! missing tensors and wrong shapes are errors naming the tensor (expected vs got); tensors that
//! contradict the config (layer ≥ num_hidden_layers, expert ≥ num_experts, MoE tensors in a dense
//! config and vice versa) are config errors naming the field; any other extra tensor (e.g. an
//! `lm_head.weight` while `tie_word_embeddings` is true, or `rotary_emb.inv_freq`) is ignored and
//! reported in the returned warning list. Saving writes f32 by default, omits `lm_head.weight`
//! when tied, and replaces each file atomically (`<file>.tmp`, then rename).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use super::config::ModelConfig;
use super::params::param_specs;
use super::transformer::Model;
use crate::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

pub fn read_config(path: impl AsRef<Path>) -> Result<ModelConfig> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    ModelConfig::from_json_str(&text).map_err(|e| match e {
        Error::Config { field, msg } => Error::config(field, format!("{msg} (in {})", path.display())),
        e => e,
    })
}

/// Reads a safetensors file as name → tensor (stored dtype kept).
pub fn read_safetensors(path: impl AsRef<Path>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")));
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| Error::Other(format!("{}: cannot read safetensors: {e}", path.display())))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `bytes` to `<path>.tmp` then renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes tensors (converted to `dtype`) as safetensors with `{"format": "pt"}` metadata, atomically.
pub(crate) fn write_safetensors_atomic(tensors: &HashMap<String, Tensor>, dtype: DType, path: &Path) -> Result<()> {
    let mut conv: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, v) in tensors {
        conv.push((k.clone(), v.to_dtype(dtype)?.contiguous()?));
    }
    conv.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = tmp_path(path);
    safetensors::serialize_to_file(conv, Some(meta), &tmp)
        .map_err(|e| Error::Other(format!("{}: cannot write safetensors: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `model.layers.{i}.…` → Some(i)
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// `….mlp.experts.{e}.…` / `….mlp.shared_experts.{e}.…` → Some(e)
fn index_after(name: &str, key: &str) -> Option<usize> {
    let rest = &name[name.find(key)? + key.len()..];
    rest.split('.').next()?.parse().ok()
}

/// Fails with a config error when the checkpoint's tensor names contradict the config.
fn check_structure(cfg: &ModelConfig, names: &[&String]) -> Result<()> {
    for name in names {
        if let Some(i) = layer_index(name) {
            if i >= cfg.num_hidden_layers {
                return Err(Error::config(
                    "num_hidden_layers",
                    format!("config says {} layers but the checkpoint has `{name}`", cfg.num_hidden_layers),
                ));
            }
        }
        let moe_tensor = name.contains(".mlp.experts.") || name.contains(".mlp.gate.weight") || name.contains(".mlp.shared_experts.");
        if moe_tensor && !cfg.use_moe {
            return Err(Error::config("use_moe", format!("config is dense (use_moe false) but the checkpoint has MoE tensor `{name}`")));
        }
        if cfg.use_moe && (name.ends_with(".mlp.gate_proj.weight") || name.ends_with(".mlp.up_proj.weight")) && layer_index(name).is_some() {
            return Err(Error::config("use_moe", format!("config is MoE (use_moe true) but the checkpoint has dense tensor `{name}`")));
        }
        if let Some(e) = index_after(name, ".mlp.experts.") {
            if e >= cfg.num_experts {
                return Err(Error::config("num_experts", format!("config says {} experts but the checkpoint has `{name}`", cfg.num_experts)));
            }
        }
        if let Some(e) = index_after(name, ".mlp.shared_experts.") {
            if e >= cfg.n_shared_experts {
                return Err(Error::config(
                    "n_shared_experts",
                    format!("config says {} shared experts but the checkpoint has `{name}`", cfg.n_shared_experts),
                ));
            }
        }
    }
    Ok(())
}

impl Model {
    /// Loads `dir/config.json` + `dir/model.safetensors`. Returns the model and the warnings
    /// (ignored tensors).
    pub fn load_dir(dir: impl AsRef<Path>, device: &Device) -> Result<(Model, Vec<String>)> {
        let dir = dir.as_ref();
        Self::load(dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE), device)
    }

    pub fn load(config: impl AsRef<Path>, weights: impl AsRef<Path>, device: &Device) -> Result<(Model, Vec<String>)> {
        let cfg = read_config(config)?;
        let tensors = read_safetensors(weights.as_ref(), device)?;
        Self::from_tensors(cfg, tensors, device).map_err(|e| match e {
            Error::Tensor { name, msg } => Error::tensor(name, format!("{msg} (in {})", weights.as_ref().display())),
            e => e,
        })
    }

    /// Builds a model from named tensors (any float dtype; converted to f32 Vars).
    pub fn from_tensors(mut cfg: ModelConfig, mut tensors: HashMap<String, Tensor>, device: &Device) -> Result<(Model, Vec<String>)> {
        if cfg.qk_norm.is_none() {
            cfg.qk_norm = Some(tensors.contains_key("model.layers.0.self_attn.q_norm.weight") || cfg.use_qk_norm());
        }
        cfg.validate()?;
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        check_structure(&cfg, &names)?;
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for s in param_specs(&cfg) {
                let t = tensors.remove(&s.name).ok_or_else(|| {
                    let hint = if s.name == "lm_head.weight" {
                        " (set tie_word_embeddings true to reuse model.embed_tokens.weight)"
                    } else if s.name.contains("_norm.weight") && s.name.contains("self_attn") {
                        " (the config enables qk_norm; set qk_norm false if the model has none)"
                    } else {
                        ""
                    };
                    Error::tensor(&s.name, format!("missing from the checkpoint{hint}"))
                })?;
                if t.dims() != s.shape.as_slice() {
                    return Err(Error::tensor(
                        &s.name,
                        format!("shape mismatch: expected {:?} from the config, got {:?}", s.shape, t.dims()),
                    ));
                }
                let t = match t.dtype() {
                    DType::F32 | DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                    other => return Err(Error::tensor(&s.name, format!("unsupported dtype {other:?}; expected f32, f16 or bf16"))),
                };
                data.insert(s.name, Var::from_tensor(&t)?);
            }
        }
        let mut warnings: Vec<String> = tensors
            .keys()
            .map(|k| {
                if k == "lm_head.weight" {
                    "ignored tensor `lm_head.weight`: tie_word_embeddings is true, so the LM head reuses model.embed_tokens.weight".to_string()
                } else {
                    format!("ignored unexpected tensor `{k}`")
                }
            })
            .collect();
        warnings.sort();
        Ok((Model::from_varmap(&cfg, varmap, device)?, warnings))
    }

    /// All parameters as name → tensor (HF names; no lm_head when tied).
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        self.named_parameters().into_iter().map(|p| (p.name, p.var.as_tensor().clone())).collect()
    }

    /// Saves `config.json` + `model.safetensors` (f32) into `dir` (created if needed).
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_dir_as(dir, DType::F32)
    }

    /// As [`Model::save_dir`] with the weights stored as `dtype` (F32, F16 or BF16).
    pub fn save_dir_as(&self, dir: impl AsRef<Path>, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::input(format!("cannot save weights as {dtype:?}; use f32, f16 or bf16")));
        }
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_safetensors_atomic(&self.state_dict(), dtype, &dir.join(WEIGHTS_FILE))?;
        write_atomic(&dir.join(CONFIG_FILE), self.cfg.to_json_string()?.as_bytes())
    }
}
