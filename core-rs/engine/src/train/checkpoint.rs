//! Crash-safe training checkpoints: one directory holding
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | weights (Hugging Face names, as the caller passes them) |
//! | `config.json` | model config, verbatim from the caller |
//! | `optimizer.safetensors` | optimizer tensors; its metadata key `bunmind.optimizer` holds the optimizer JSON |
//! | `trainer_state.json` | step, epoch, RNG/sampler state, anything the caller passes |
//!
//! Saving writes everything into `<dir>.tmp-<pid>` (each file itself written temp → fsync → rename),
//! then swaps: `<dir>` → `<dir>.old`, `<dir>.tmp-<pid>` → `<dir>`, remove `<dir>.old`. At every
//! instant either `<dir>` or `<dir>.old` holds a complete checkpoint; [`load_checkpoint`] recovers
//! `<dir>.old` when `<dir>` is missing. A half-written `<dir>.tmp-*` is never read.
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// Safetensors metadata key carrying the optimizer JSON.
pub const OPTIMIZER_META_KEY: &str = "bunmind.optimizer";

/// Everything a resumable checkpoint holds.
#[derive(Debug, Clone)]
pub struct CheckpointParts {
    pub weights: HashMap<String, Tensor>,
    /// Written verbatim (must be valid JSON).
    pub config_json: String,
    pub optimizer: HashMap<String, Tensor>,
    pub optimizer_meta: serde_json::Value,
    pub trainer_state: serde_json::Value,
}

/// Writes `bytes` to `path` atomically: a sibling temp file, fsync, rename, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = parent_of(path);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::input(format!("{}: not a file path", path.display())))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(&parent)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync a directory so a rename inside it survives a power cut (no-op where unsupported).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        d.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<dir>.old`: the previous checkpoint while a save swaps directories.
pub fn old_path(dir: &Path) -> PathBuf {
    with_suffix(dir, ".old")
}

/// `<dir>.tmp-<pid>`: where this process builds the next checkpoint.
pub fn tmp_path(dir: &Path) -> PathBuf {
    with_suffix(dir, &format!(".tmp-{}", std::process::id()))
}

fn safetensors_bytes(name: &str, tensors: &HashMap<String, Tensor>, meta: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    // Contiguous CPU copies: safetensors reads raw bytes.
    let mut cpu: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        cpu.push((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    cpu.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), meta)
        .map_err(|e| Error::Other(format!("{name}: cannot serialise safetensors: {e}")))
}

/// Saves `parts` as the checkpoint directory `dir`, replacing any previous one atomically.
pub fn save_checkpoint(dir: &Path, parts: &CheckpointParts) -> Result<()> {
    serde_json::from_str::<serde_json::Value>(&parts.config_json)
        .map_err(|e| Error::config("config_json", format!("not valid JSON: {e}")))?;
    let parent = parent_of(dir);
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    // A previous crash may have left `<dir>.old` as the only complete copy: restore it first.
    recover(dir)?;

    let tmp = tmp_path(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let write_all = || -> Result<()> {
        let opt_meta = HashMap::from([(OPTIMIZER_META_KEY.to_string(), serde_json::to_string(&parts.optimizer_meta)?)]);
        atomic_write(&tmp.join(MODEL_FILE), &safetensors_bytes(MODEL_FILE, &parts.weights, None)?)?;
        atomic_write(&tmp.join(CONFIG_FILE), parts.config_json.as_bytes())?;
        atomic_write(&tmp.join(OPTIMIZER_FILE), &safetensors_bytes(OPTIMIZER_FILE, &parts.optimizer, Some(opt_meta))?)?;
        atomic_write(&tmp.join(TRAINER_STATE_FILE), serde_json::to_string_pretty(&parts.trainer_state)?.as_bytes())?;
        Ok(())
    };
    if let Err(e) = write_all() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }

    let old = old_path(dir);
    if dir.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(&tmp, e))?;
    sync_dir(&parent)?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// If `<dir>` is missing but `<dir>.old` exists (a save died between its two renames), moves
/// `<dir>.old` back. If both exist, `<dir>` is complete and `<dir>.old` is left for the next save
/// to remove. Returns whether a recovery happened.
pub fn recover(dir: &Path) -> Result<bool> {
    let old = old_path(dir);
    if !dir.exists() && old.exists() {
        fs::rename(&old, dir).map_err(|e| Error::io(&old, e))?;
        sync_dir(&parent_of(dir))?;
        return Ok(true);
    }
    Ok(false)
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    pub weights: HashMap<String, Tensor>,
    pub config_json: String,
    pub optimizer: HashMap<String, Tensor>,
    pub optimizer_meta: serde_json::Value,
    pub trainer_state: serde_json::Value,
    /// True when `<dir>` was missing and was restored from `<dir>.old`.
    pub recovered: bool,
}

fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::input(format!("checkpoint {}: `{name}` is missing", dir.display()))
        } else {
            Error::io(&path, e)
        }
    })
}

fn corrupt(dir: &Path, name: &str, e: impl std::fmt::Display) -> Error {
    Error::input(format!("checkpoint {}: `{name}` is corrupt: {e}", dir.display()))
}

/// Loads and validates a checkpoint directory onto `device`, recovering `<dir>.old` if needed.
/// Errors name the missing or corrupt file.
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<LoadedCheckpoint> {
    let recovered = recover(dir)?;
    if !dir.is_dir() {
        return Err(Error::input(format!("checkpoint {}: no such directory (nor a `.old` copy)", dir.display())));
    }
    let model = read_file(dir, MODEL_FILE)?;
    let config = read_file(dir, CONFIG_FILE)?;
    let opt = read_file(dir, OPTIMIZER_FILE)?;
    let state = read_file(dir, TRAINER_STATE_FILE)?;

    let weights = candle_core::safetensors::load_buffer(&model, device).map_err(|e| corrupt(dir, MODEL_FILE, e))?;
    let config_json = String::from_utf8(config).map_err(|e| corrupt(dir, CONFIG_FILE, e))?;
    serde_json::from_str::<serde_json::Value>(&config_json).map_err(|e| corrupt(dir, CONFIG_FILE, e))?;
    let optimizer = candle_core::safetensors::load_buffer(&opt, device).map_err(|e| corrupt(dir, OPTIMIZER_FILE, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&opt).map_err(|e| corrupt(dir, OPTIMIZER_FILE, e))?;
    let optimizer_meta = match header.metadata().as_ref().and_then(|m| m.get(OPTIMIZER_META_KEY)) {
        Some(s) => serde_json::from_str(s).map_err(|e| corrupt(dir, OPTIMIZER_FILE, format!("metadata `{OPTIMIZER_META_KEY}`: {e}")))?,
        None => return Err(corrupt(dir, OPTIMIZER_FILE, format!("metadata key `{OPTIMIZER_META_KEY}` missing"))),
    };
    let trainer_state = serde_json::from_slice(&state).map_err(|e| corrupt(dir, TRAINER_STATE_FILE, e))?;
    Ok(LoadedCheckpoint { weights, config_json, optimizer, optimizer_meta, trainer_state, recovered })
}
