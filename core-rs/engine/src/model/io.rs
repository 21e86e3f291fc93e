//! Checkpoint IO in Hugging Face layout: `config.json` + `model.safetensors` (or sharded:
//! `model.safetensors.index.json` + its shards), and MiniMind's PyTorch `.pth` state dicts.
//!
//! The config may be of any family [`super::hf`] reads; saving writes the native transformers
//! family that computes the same model ([`super::hf::native_family`]), MiniMind's otherwise.
//! Loading converts f32/f16/bf16 weights to f32 (with a note) and checks the file against the config:
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
use super::hf::{self, Family};
use super::params::param_specs;
use super::transformer::Model;
use crate::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

pub fn read_config(path: impl AsRef<Path>) -> Result<ModelConfig> {
    Ok(read_config_with_warnings(path)?.0)
}

/// The config and the warnings of its import (fields bunmind does not know), each naming the file.
pub fn read_config_with_warnings(path: impl AsRef<Path>) -> Result<(ModelConfig, Vec<String>)> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (c, w) = ModelConfig::import_json_str(&text).map_err(|e| match e {
        Error::Config { field, msg } => Error::config(field, format!("{msg} (in {})", path.display())),
        e => e,
    })?;
    Ok((c, w.into_iter().map(|w| format!("{}: {w}", path.display())).collect()))
}

/// The weights of a model directory: `model.safetensors`, or the shards a
/// `model.safetensors.index.json` lists. PyTorch pickles are refused with the import command.
pub fn read_dir_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return read_safetensors(&single, device);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: not valid JSON: {e}", index.display())))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            Error::Other(format!("{}: no `weight_map` object (tensor name → shard file)", index.display()))
        })?;
        let mut files: Vec<&str> = Vec::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| Error::Other(format!("{}: weight_map.{name} is not a file name", index.display())))?;
            if !files.contains(&f) {
                files.push(f);
            }
        }
        let mut all = HashMap::new();
        for f in files {
            let shard = read_safetensors(dir.join(f), device)?;
            all.extend(shard);
        }
        if let Some(name) = map.keys().find(|n| !all.contains_key(*n)) {
            return Err(Error::tensor(name.as_str(), format!("listed in {} but missing from `{}`", index.display(), map[name])));
        }
        return Ok(all);
    }
    for pickle in ["pytorch_model.bin", "model.pth"] {
        if dir.join(pickle).exists() {
            return Err(Error::Other(format!(
                "{}: PyTorch pickle weights are not read directly; convert them once with `bunmind model import --pth {} --out DIR`",
                dir.join(pickle).display(),
                dir.join(pickle).display()
            )));
        }
    }
    Err(Error::io(&single, std::io::Error::new(std::io::ErrorKind::NotFound, format!("file not found (nor {WEIGHTS_INDEX_FILE})"))))
}

/// A PyTorch state dict saved with `torch.save` (MiniMind's `.pth`: the dict itself, or a
/// resume checkpoint holding it under `"model"`), as name → tensor.
pub fn read_pth(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")));
    }
    let read = |key: Option<&str>| candle_core::pickle::read_all_with_key(path, key);
    let mut tensors = read(None).map_err(|e| Error::Other(format!("{}: cannot read the PyTorch state dict: {e}", path.display())))?;
    if tensors.is_empty() {
        tensors = read(Some("model")).unwrap_or_default();
    }
    if tensors.is_empty() {
        return Err(Error::Other(format!("{}: no tensors found (expected a state dict, or a dict with one under \"model\")", path.display())));
    }
    tensors
        .into_iter()
        .map(|(k, t)| Ok((k.strip_prefix("module.").unwrap_or(&k).to_string(), t.to_device(device)?)))
        .collect()
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

/// The MiniMind preset whose parameter names and shapes `tensors` has (vocabulary size taken from
/// the embedding; an `lm_head.weight` equal in shape is allowed when tied, as MiniMind saves both).
pub fn infer_preset(tensors: &HashMap<String, Tensor>) -> Result<(&'static str, ModelConfig)> {
    let embed = tensors
        .get("model.embed_tokens.weight")
        .ok_or_else(|| Error::tensor("model.embed_tokens.weight", "missing: not a MiniMind state dict"))?;
    let vocab = embed.dims()[0];
    // Tied unless the file has an lm_head that differs from the embedding.
    let tied = match tensors.get("lm_head.weight") {
        None => true,
        Some(h) => h.dims() == embed.dims() && (h.to_dtype(DType::F32)? - embed.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0,
    };
    for name in ModelConfig::PRESETS {
        let mut cfg = ModelConfig::preset(name)?;
        cfg.vocab_size = vocab;
        cfg.tie_word_embeddings = tied;
        let specs = param_specs(&cfg);
        let matches = specs.iter().all(|s| tensors.get(&s.name).is_some_and(|t| t.dims() == s.shape.as_slice()))
            && tensors.keys().all(|k| k == "lm_head.weight" || specs.iter().any(|s| &s.name == k));
        if matches {
            return Ok((name, cfg));
        }
    }
    Err(Error::config(
        "config",
        format!("the state dict matches no MiniMind preset ({}); pass --preset or --config", ModelConfig::PRESETS.join(", ")),
    ))
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
        let (cfg, mut warnings) = read_config_with_warnings(dir.join(CONFIG_FILE))?;
        let tensors = read_dir_weights(dir, device)?;
        let (m, w) = Self::from_tensors(cfg, tensors, device).map_err(|e| match e {
            Error::Tensor { name, msg } => Error::tensor(name, format!("{msg} (in {})", dir.display())),
            e => e,
        })?;
        warnings.extend(w);
        Ok((m, warnings))
    }

    pub fn load(config: impl AsRef<Path>, weights: impl AsRef<Path>, device: &Device) -> Result<(Model, Vec<String>)> {
        let (cfg, mut warnings) = read_config_with_warnings(config)?;
        let tensors = read_safetensors(weights.as_ref(), device)?;
        let (m, w) = Self::from_tensors(cfg, tensors, device).map_err(|e| match e {
            Error::Tensor { name, msg } => Error::tensor(name, format!("{msg} (in {})", weights.as_ref().display())),
            e => e,
        })?;
        warnings.extend(w);
        Ok((m, warnings))
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
        let mut stored: Vec<String> = tensors.values().map(|t| format!("{:?}", t.dtype()).to_lowercase()).filter(|d| d != "f32").collect();
        stored.sort();
        stored.dedup();
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
        if !stored.is_empty() {
            warnings.push(format!("weights stored as {} were converted to f32 in memory (bunmind computes in f32)", stored.join("/")));
        }
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

    /// As [`Model::save_dir`] with the weights stored as `dtype` (F32, F16 or BF16), in the
    /// native transformers family when one computes this model, else MiniMind's.
    pub fn save_dir_as(&self, dir: impl AsRef<Path>, dtype: DType) -> Result<()> {
        self.save_dir_family(dir, dtype, None).map(|_| ())
    }

    /// Saves with the config in `family`'s format (`None`: [`hf::native_family`], falling back to
    /// MiniMind's); an explicit family that cannot hold the model is an error naming the feature.
    pub fn save_dir_family(&self, dir: impl AsRef<Path>, dtype: DType, family: Option<Family>) -> Result<Family> {
        let dt = match dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => return Err(Error::input(format!("cannot save weights as {dtype:?}; use f32, f16 or bf16"))),
        };
        let family = match family {
            Some(f) => f,
            None => hf::native_family(&self.cfg).unwrap_or(Family::MiniMind),
        };
        let config = hf::export_config(&self.cfg, family, dt)?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_safetensors_atomic(&self.state_dict(), dtype, &dir.join(WEIGHTS_FILE))?;
        // A sharded index left by an earlier save would shadow nothing but confuse other tools.
        let _ = std::fs::remove_file(dir.join(WEIGHTS_INDEX_FILE));
        write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(&config)?.as_bytes())?;
        Ok(family)
    }
}
