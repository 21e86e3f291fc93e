//! Model exports: init from a preset/config, load/save HF checkpoints, info, forward (logits),
//! evaluation loss, LoRA adapters.
use std::path::Path;
use std::sync::{Arc, Mutex};

use bunmind_engine::model::{hf, Family, LoraAdapters, Model, ModelConfig};
use bunmind_engine::trainer::{eval_lm, Batch};
use candle_core::{DType, Device, Tensor};

use crate::handles::{self, Kind};
use crate::*;

/// A model behind a handle. `Arc` so generation sessions keep it alive on their own; the inner
/// value can be replaced (LoRA merge) without invalidating running sessions.
pub struct ModelEntry {
    pub model: Mutex<Arc<Model>>,
    /// Load warnings (ignored tensors, unknown adapter_config fields), in the order they arose.
    pub warnings: Mutex<Vec<String>>,
}

impl ModelEntry {
    pub fn new(model: Model, warnings: Vec<String>) -> Self {
        ModelEntry { model: Mutex::new(Arc::new(model)), warnings: Mutex::new(warnings) }
    }
    pub fn get(&self) -> Arc<Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub fn model(h: u32) -> FfiResult<Arc<ModelEntry>> {
    handles::get::<ModelEntry>(h, Kind::Model).map_err(FfiError::handle)
}

/// This build's default device: CUDA device 0 in the CUDA build, the CPU otherwise.
pub fn device() -> FfiResult<Device> {
    device_named(if cfg!(feature = "cuda") { "cuda:0" } else { "cpu" })
}

/// The process-wide device of a name (`cpu`, `cuda`, `cuda:N`); errors say what is missing.
pub fn device_named(name: &str) -> FfiResult<Device> {
    Ok(bunmind_engine::device::device_by_name(name)?)
}

/// Build a config from JSON: `{"preset": name, ...overrides}` or a full HF config.json object.
pub fn config_from_json(text: &str) -> FfiResult<ModelConfig> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| FfiError::arg(format!("model config: {e}")))?;
    let obj = v.as_object().ok_or_else(|| FfiError::arg("model config must be a JSON object"))?;
    let cfg = match obj.get("preset").and_then(|p| p.as_str()) {
        Some(name) => {
            let mut base = serde_json::to_value(ModelConfig::preset(name)?).map_err(|e| FfiError::arg(e.to_string()))?;
            let b = base.as_object_mut().expect("config serialises to an object");
            for (k, val) in obj {
                if k != "preset" {
                    b.insert(k.clone(), val.clone());
                }
            }
            ModelConfig::from_json_str(&base.to_string())?
        }
        None => ModelConfig::from_json_str(text)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Random init (MiniMind's scheme) from `{"preset": ..., overrides}` or a full config, with `seed`.
/// An optional `"device"` key (`cpu`, `cuda`, `cuda:N`) picks the device (default: [`device`]).
///
/// # Safety
/// `config` must point at `len` bytes; `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_model_init(config: *const u8, len: usize, seed: u64, out: *mut u32) -> i32 {
    guard(|| {
        let text = str_arg(config, len, "config")?;
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| FfiError::arg(format!("model config: {e}")))?;
        let dev = match v.as_object_mut().and_then(|o| o.remove("device")) {
            None => device()?,
            Some(serde_json::Value::String(name)) => device_named(&name)?,
            Some(other) => return Err(FfiError::arg(format!("model config: \"device\" must be a string, got {other}"))),
        };
        let cfg = config_from_json(&v.to_string())?;
        let m = Model::new(&cfg, seed, &dev)?;
        write_out(out, handles::insert(Kind::Model, ModelEntry::new(m, vec![])), "out")?;
        Ok(BM_OK)
    })
}

fn load_on(dir: &str, dev: &Device, out: *mut u32) -> FfiResult<i32> {
    if !Path::new(dir).is_dir() {
        return Err(FfiError::arg(format!("{dir}: not a model directory (expected config.json + model.safetensors)")));
    }
    let (m, warnings) = Model::load_dir(dir, dev)?;
    // SAFETY: the caller of the export guarantees `out`.
    unsafe { write_out(out, handles::insert(Kind::Model, ModelEntry::new(m, warnings)), "out")? };
    Ok(BM_OK)
}

/// Load `dir/config.json` + `dir/model.safetensors` (f32/f16/bf16; with or without lm_head) onto
/// this build's default device.
///
/// # Safety
/// `dir` must point at `len` bytes; `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_model_load(dir: *const u8, len: usize, out: *mut u32) -> i32 {
    guard(|| load_on(str_arg(dir, len, "dir")?, &device()?, out))
}

/// As [`bm_model_load`], onto the named device (`cpu`, `cuda`, `cuda:N`).
///
/// # Safety
/// `dir` / `device` must point at their lengths in bytes; `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_model_load_on(dir: *const u8, len: usize, device: *const u8, device_len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let dir = str_arg(dir, len, "dir")?;
        let dev = device_named(str_arg(device, device_len, "device")?)?;
        load_on(dir, &dev, out)
    })
}

/// Opens the named device (`cpu`, `cuda`, `cuda:N`) and writes what this build and machine offer:
/// `{"device", "cuda_build", "gpus": [{"ordinal", "name", "compute_capability", "memory_bytes"}]}`.
/// An error (with a message that says what is missing) when the device cannot be used.
///
/// # Safety
/// `device` must point at `device_len` bytes; see [`write_bytes`] for the output.
#[no_mangle]
pub unsafe extern "C" fn bm_device_info(device: *const u8, device_len: usize, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let name = str_arg(device, device_len, "device")?;
        let dev = device_named(name)?;
        let mut info = bunmind_engine::device::cuda_info()?;
        info["device"] = serde_json::Value::String(bunmind_engine::device::device_name(&dev));
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}

#[no_mangle]
pub extern "C" fn bm_model_free(h: u32) -> i32 {
    guard(|| {
        handles::remove(h, Kind::Model).map_err(FfiError::handle)?;
        Ok(BM_OK)
    })
}

/// Save as an HF checkpoint; `dtype`: 0 = f32, 1 = f16, 2 = bf16.
///
/// # Safety
/// `dir` must point at `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bm_model_save(h: u32, dir: *const u8, len: usize, dtype: u8) -> i32 {
    guard(|| {
        let m = model(h)?.get();
        let dir = str_arg(dir, len, "dir")?;
        let dt = dtype_code(dtype)?;
        // Attached adapters (loaded without merging, or a LoRA trainer's live model) are folded
        // into the saved weights: the saved model computes what this one does.
        if m.has_lora() {
            m.merged()?.save_dir_as(dir, dt)?;
        } else {
            m.save_dir_as(dir, dt)?;
        }
        Ok(BM_OK)
    })
}

/// `{"config": {...}, "num_parameters", "dtype", "device", "warnings": [...]}`.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_model_info(h: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let e = model(h)?;
        let m = e.get();
        let cfg: serde_json::Value = serde_json::from_str(&m.config().to_json_string()?).unwrap_or_default();
        let (native, why) = match hf::native_family(m.config()) {
            Ok(f) => (Some(f.model_type()), None),
            Err(e) => (None, Some(e)),
        };
        let info = serde_json::json!({
            "config": cfg,
            "hf_family": native,
            "hf_family_unavailable": why,
            "num_parameters": m.num_parameters(),
            "dtype": "f32",
            "device": bunmind_engine::device::device_name(m.device()),
            "warnings": e.warnings.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "has_lora": m.has_lora(),
        });
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}

/// Full forward (no cache kept) of `ids` `[b, t]`; writes the last position's logits `[b, V]`, or
/// every position's `[b, t, V]` when `all_positions` is set, into `out` (`cap` floats).
///
/// # Safety
/// `ids` must point at `b·t` u32s, `out` at `cap` f32s.
#[no_mangle]
pub unsafe extern "C" fn bm_model_forward(h: u32, ids: *const u32, b: usize, t: usize, all_positions: u8, out: *mut f32, cap: usize) -> i32 {
    guard(|| {
        let m = model(h)?.get();
        let ids = slice_arg(ids, b * t, "ids")?;
        if b == 0 || t == 0 {
            return Err(FfiError::arg("forward: b and t must be positive"));
        }
        let x = Tensor::from_slice(ids, (b, t), m.device()).map_err(bunmind_engine::Error::from)?;
        let mut cache = m.new_cache();
        let logits = if all_positions != 0 { m.forward_all(&x, 0, &mut cache)? } else { m.forward(&x, 0, &mut cache)? };
        let v = logits.flatten_all().and_then(|l| l.to_vec1::<f32>()).map_err(bunmind_engine::Error::from)?;
        if v.len() > cap {
            return Err(FfiError::new(BM_BUFFER_TOO_SMALL, format!("forward: output needs {} floats, buffer has {cap}", v.len())));
        }
        out_slice(out, cap, "out")?[..v.len()].copy_from_slice(&v);
        Ok(BM_OK)
    })
}

/// Masked next-token cross-entropy of `[b, t]` inputs/targets/mask: writes `[sum, count]`.
///
/// # Safety
/// Arrays must hold `b·t` values; `out` two f64s.
#[no_mangle]
pub unsafe extern "C" fn bm_model_loss(h: u32, ids: *const u32, targets: *const u32, mask: *const f32, b: usize, t: usize, out: *mut f64) -> i32 {
    guard(|| {
        let m = model(h)?.get();
        let n = b * t;
        let batch = Batch {
            ids: slice_arg(ids, n, "ids")?.to_vec(),
            targets: slice_arg(targets, n, "targets")?.to_vec(),
            mask: slice_arg(mask, n, "mask")?.to_vec(),
            b,
            t,
        };
        let (sum, count) = eval_lm(&m, &batch)?;
        let o = out_slice(out, 2, "out")?;
        o[0] = sum;
        o[1] = count;
        Ok(BM_OK)
    })
}

/// Attach the LoRA adapters saved in `dir` (adapter_config.json + adapter_model.safetensors);
/// with `merge`, fold them into the base weights.
///
/// # Safety
/// `dir` must point at `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bm_model_load_lora(h: u32, dir: *const u8, len: usize, merge: u8) -> i32 {
    guard(|| {
        let e = model(h)?;
        let dir = str_arg(dir, len, "dir")?;
        let mut guard = e.model.lock().unwrap_or_else(|p| p.into_inner());
        let mut m: Model = (**guard).clone();
        let (adapters, warnings) = LoraAdapters::load_dir(dir, &m)?;
        m.attach_lora(&adapters)?;
        if merge != 0 {
            m.merge_lora()?;
        }
        *guard = Arc::new(m);
        e.warnings.lock().unwrap_or_else(|p| p.into_inner()).extend(warnings);
        Ok(BM_OK)
    })
}

fn dtype_code(dtype: u8) -> FfiResult<DType> {
    match dtype {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        2 => Ok(DType::BF16),
        d => Err(FfiError::arg(format!("dtype {d}: expected 0 (f32), 1 (f16) or 2 (bf16)"))),
    }
}

/// Save as an HF checkpoint in a transformers family's format: `arch` is `auto` (the native
/// family that computes this model, else MiniMind's), `llama`, `qwen2`, `qwen3`, `qwen3_moe` or
/// `minimind`; a family that cannot hold the model is an error naming the feature. Writes the
/// family's `model_type` (JSON string) to `buf`.
///
/// # Safety
/// `dir` / `arch` must point at their lengths in bytes; see [`write_bytes`] for `buf`.
#[no_mangle]
pub unsafe extern "C" fn bm_model_save_hf(
    h: u32,
    dir: *const u8,
    len: usize,
    dtype: u8,
    arch: *const u8,
    arch_len: usize,
    buf: *mut u8,
    cap: usize,
    out_len: *mut u32,
) -> i32 {
    guard(|| {
        let m = model(h)?.get();
        let dir = str_arg(dir, len, "dir")?;
        let arch = str_arg(arch, arch_len, "arch")?;
        let family = match arch {
            "auto" => None,
            a => Some(Family::parse(a).ok_or_else(|| {
                FfiError::arg(format!("--arch {a}: expected auto, llama, qwen2, qwen3, qwen3-moe or minimind"))
            })?),
        };
        let used = if m.has_lora() {
            m.merged()?.save_dir_family(dir, dtype_code(dtype)?, family)?
        } else {
            m.save_dir_family(dir, dtype_code(dtype)?, family)?
        };
        write_bytes(serde_json::json!(used.model_type()).to_string().as_bytes(), buf, cap, out_len)
    })
}

/// A model from a PyTorch state dict (`torch.save`, e.g. MiniMind's `.pth`) and a config:
/// `config` is `{"preset": name, ...overrides}`, a full config.json object, or `{}` to pick the
/// MiniMind preset whose tensor names and shapes the file matches. Loaded on this build's device.
///
/// # Safety
/// `path` / `config` must point at their lengths in bytes; `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_model_import_pth(path: *const u8, len: usize, config: *const u8, config_len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let path = Path::new(str_arg(path, len, "path")?);
        let text = str_arg(config, config_len, "config")?;
        let dev = device()?;
        let tensors = bunmind_engine::model::io::read_pth(path, &dev)?;
        let mut notes = Vec::new();
        let cfg = if text.trim().is_empty() || text.trim() == "{}" {
            let (name, cfg) = bunmind_engine::model::io::infer_preset(&tensors).map_err(FfiError::from)?;
            notes.push(format!(
                "no config given: the tensors match preset `{name}`, whose settings (rms_norm_eps {}, rope_theta {}, context {}) are assumed; pass --config if the model was trained otherwise",
                cfg.rms_norm_eps, cfg.rope_theta, cfg.max_position_embeddings
            ));
            cfg
        } else {
            config_from_json(text)?
        };
        let (m, mut warnings) = Model::from_tensors(cfg, tensors, &dev).map_err(|e| match e {
            bunmind_engine::Error::Tensor { name, msg } => bunmind_engine::Error::tensor(name, format!("{msg} (in {})", path.display())),
            e => e,
        })?;
        warnings.retain(|w| !w.contains("lm_head.weight"));
        warnings.extend(notes);
        write_out(out, handles::insert(Kind::Model, ModelEntry::new(m, warnings)), "out")?;
        Ok(BM_OK)
    })
}
