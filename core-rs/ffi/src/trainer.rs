//! Trainer exports. One `bm_trainer_step` = one optimizer step over `n_micro` micro-batches; the
//! caller owns the LR schedule, the sampler and the checkpoint cadence.
use std::path::Path;
use std::sync::Mutex;

use bunmind_engine::trainer::{Batch, Trainer, TrainerConfig};

use crate::handles::{self, Kind};
use crate::model::{model, ModelEntry};
use crate::*;

fn trainer(h: u32) -> FfiResult<std::sync::Arc<Mutex<Trainer>>> {
    handles::get::<Mutex<Trainer>>(h, Kind::Trainer).map_err(FfiError::handle)
}

/// Create a trainer over model `m` (which it trains in place: the model handle sees the updates).
/// `config` is JSON (objective, weight_decay, beta1, beta2, eps, grad_clip, seed, lora);
/// `reference` / `teacher` are model handles or 0.
///
/// # Safety
/// `config` must point at `len` bytes; `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_new(m: u32, config: *const u8, len: usize, reference: u32, teacher: u32, out: *mut u32) -> i32 {
    guard(|| {
        let policy = (*model(m)?.get()).clone();
        let text = str_arg(config, len, "config")?;
        let cfg: TrainerConfig = if text.trim().is_empty() {
            TrainerConfig::default()
        } else {
            serde_json::from_str(text).map_err(|e| FfiError::arg(format!("trainer config: {e}")))?
        };
        let reference = if reference != 0 { Some((*model(reference)?.get()).clone()) } else { None };
        let teacher = if teacher != 0 { Some((*model(teacher)?.get()).clone()) } else { None };
        let t = Trainer::new(policy, cfg, reference, teacher)?;
        write_out(out, handles::insert(Kind::Trainer, Mutex::new(t)), "out")?;
        Ok(BM_OK)
    })
}

#[no_mangle]
pub extern "C" fn bm_trainer_free(h: u32) -> i32 {
    guard(|| {
        handles::remove(h, Kind::Trainer).map_err(FfiError::handle)?;
        Ok(BM_OK)
    })
}

/// Micro-batch `i` has `rows[i]` rows of `t` tokens; the arrays hold them back to back.
unsafe fn batches(ids: *const u32, targets: *const u32, mask: *const f32, rows: &[usize], t: usize) -> FfiResult<Vec<Batch>> {
    let total: usize = rows.iter().map(|&b| b * t).sum();
    let (ids, targets, mask) = (slice_arg(ids, total, "ids")?, slice_arg(targets, total, "targets")?, slice_arg(mask, total, "mask")?);
    let mut at = 0;
    Ok(rows
        .iter()
        .map(|&b| {
            let r = at..at + b * t;
            at = r.end;
            Batch { ids: ids[r.clone()].to_vec(), targets: targets[r.clone()].to_vec(), mask: mask[r].to_vec(), b, t }
        })
        .collect())
}

/// One optimizer step at learning rate `lr` over `n_micro` micro-batches of `[b, t]` laid out
/// back to back. Writes the step's JSON result (loss, grad_norm, tokens, ...).
///
/// # Safety
/// Arrays must hold `n_micro·b·t` values; see [`write_bytes`] for the output.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_step(
    h: u32,
    ids: *const u32,
    targets: *const u32,
    mask: *const f32,
    n_micro: usize,
    b: usize,
    t: usize,
    lr: f64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut u32,
) -> i32 {
    guard(|| step_into(h, lr, || batches(ids, targets, mask, &vec![b; n_micro], t), buf, cap, out_len))
}

/// One step of trainer `h` over the micro-batches `micro` makes (after the LR check); the
/// result as JSON into `buf`.
unsafe fn step_into(h: u32, lr: f64, micro: impl FnOnce() -> FfiResult<Vec<Batch>>, buf: *mut u8, cap: usize, out_len: *mut u32) -> FfiResult<i32> {
    let tr = trainer(h)?;
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(FfiError::arg(format!("learning rate {lr} must be finite and ≥ 0")));
    }
    let micro = micro()?;
    let r = tr.lock().unwrap_or_else(|p| p.into_inner()).step(&micro, lr)?;
    write_bytes(serde_json::to_string(&r).map_err(|e| FfiError::arg(e.to_string()))?.as_bytes(), buf, cap, out_len)
}

/// [`bm_trainer_step`] over micro-batches of different row counts (`rows[i]` rows of `t` tokens
/// each, laid out back to back): the short last batch of an epoch, or a rank's share of it.
/// `n_micro` may be 0 on a rank of a data-parallel job that holds no rows of this step.
///
/// # Safety
/// `rows` must hold `n_micro` values; arrays `Σ rows · t` values; see [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_step_rows(
    h: u32,
    ids: *const u32,
    targets: *const u32,
    mask: *const f32,
    n_micro: usize,
    rows: *const u32,
    t: usize,
    lr: f64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut u32,
) -> i32 {
    guard(|| {
        step_into(
            h,
            lr,
            || {
                let rows: Vec<usize> = slice_arg(rows, n_micro, "rows")?.iter().map(|&r| r as usize).collect();
                batches(ids, targets, mask, &rows, t)
            },
            buf,
            cap,
            out_len,
        )
    })
}

/// Joins a data-parallel job (one rank of it): `config` is JSON `{"backend": "nccl"|"tcp",
/// "rank", "world_size", "rendezvous": <file>, "timeout_s"}`. Blocks until every rank has joined
/// (or the timeout), then broadcasts the trainable weights from rank 0. Later steps sum the
/// gradients over the ranks.
///
/// # Safety
/// `config` must point at `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_join(h: u32, config: *const u8, len: usize) -> i32 {
    guard(|| {
        let tr = trainer(h)?;
        let text = str_arg(config, len, "config")?;
        let cfg: bunmind_engine::dist::DistConfig = serde_json::from_str(text).map_err(|e| FfiError::arg(format!("data-parallel config: {e}")))?;
        let mut tr = tr.lock().unwrap_or_else(|p| p.into_inner());
        let col = bunmind_engine::dist::connect(&cfg, tr.model.device())?;
        tr.join(col)?;
        Ok(BM_OK)
    })
}

/// Asks every rank to stop after the next step (`on` ≠ 0; 0 withdraws the request): that step's
/// result has `"stop": true` on every rank, so all of them stop after the same step.
#[no_mangle]
pub extern "C" fn bm_trainer_request_stop(h: u32, on: i32) -> i32 {
    guard(|| {
        trainer(h)?.lock().unwrap_or_else(|p| p.into_inner()).request_stop(on != 0);
        Ok(BM_OK)
    })
}

/// Held-out masked cross-entropy on the trainer's current model: writes `[sum, count]`.
///
/// # Safety
/// Arrays must hold `b·t` values; `out` two f64s.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_eval(h: u32, ids: *const u32, targets: *const u32, mask: *const f32, b: usize, t: usize, out: *mut f64) -> i32 {
    guard(|| {
        let tr = trainer(h)?;
        let batch = batches(ids, targets, mask, &[b], t)?.pop().expect("one batch");
        let (sum, count) = tr.lock().unwrap_or_else(|p| p.into_inner()).eval_lm(&batch)?;
        let o = out_slice(out, 2, "out")?;
        o[0] = sum;
        o[1] = count;
        Ok(BM_OK)
    })
}

/// Resumable checkpoint (weights or adapters, optimizer, RNG, step, caller's `extra` JSON), atomic.
///
/// # Safety
/// `dir` / `extra` must point at their lengths in bytes.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_save_checkpoint(h: u32, dir: *const u8, dir_len: usize, extra: *const u8, extra_len: usize) -> i32 {
    guard(|| {
        let tr = trainer(h)?;
        let dir = str_arg(dir, dir_len, "dir")?;
        let extra = str_arg(extra, extra_len, "extra")?;
        let extra: serde_json::Value =
            if extra.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(extra).map_err(|e| FfiError::arg(format!("extra: {e}")))? };
        tr.lock().unwrap_or_else(|p| p.into_inner()).save_checkpoint(Path::new(dir), extra)?;
        Ok(BM_OK)
    })
}

/// Restore a checkpoint into this trainer; writes the saved `extra` JSON.
///
/// # Safety
/// `dir` must point at `len` bytes; see [`write_bytes`] for the output.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_load_checkpoint(h: u32, dir: *const u8, len: usize, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let tr = trainer(h)?;
        let dir = str_arg(dir, len, "dir")?;
        let extra = tr.lock().unwrap_or_else(|p| p.into_inner()).load_checkpoint(Path::new(dir))?;
        write_bytes(extra.to_string().as_bytes(), buf, cap, out_len)
    })
}

/// `{"step", "trainable_parameters", "compute_dtype", "device", "config", "dist", "step_path",
/// "step_path_reason"}`: `step_path` is `"handwritten"` or `"autograd"`, `step_path_reason` why
/// autograd (null for the hand-written step).
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_info(h: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let tr = trainer(h)?;
        let tr = tr.lock().unwrap_or_else(|p| p.into_inner());
        let path = tr.step_path();
        let info = serde_json::json!({
            "step": tr.step_count(),
            "trainable_parameters": tr.trainable_parameters(),
            "compute_dtype": tr.compute_dtype(),
            "device": bunmind_engine::device::device_name(tr.model.device()),
            "config": serde_json::to_value(tr.config()).unwrap_or_default(),
            "dist": tr.dist_info().map(|(rank, world_size, backend)| serde_json::json!({"rank": rank, "world_size": world_size, "backend": backend})),
            "step_path": path.name(),
            "step_path_reason": path.reason(),
        });
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}

/// A model handle on the trainer's current weights (LoRA attached when training adapters), for
/// sampling or evaluation during training. It shares the weights: later steps are visible.
///
/// # Safety
/// `out` must point at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_model(h: u32, out: *mut u32) -> i32 {
    guard(|| {
        let tr = trainer(h)?;
        let m = tr.lock().unwrap_or_else(|p| p.into_inner()).model.clone();
        write_out(out, handles::insert(Kind::Model, ModelEntry::new(m, vec![])), "out")?;
        Ok(BM_OK)
    })
}

/// Save LoRA adapters alone (adapter_config.json + adapter_model.safetensors) into `dir`.
///
/// # Safety
/// `dir` must point at `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bm_trainer_save_adapters(h: u32, dir: *const u8, len: usize) -> i32 {
    guard(|| {
        let tr = trainer(h)?;
        let dir = str_arg(dir, len, "dir")?;
        let tr = tr.lock().unwrap_or_else(|p| p.into_inner());
        let a = tr.adapters.as_ref().ok_or_else(|| FfiError::arg("this trainer trains full weights, not LoRA adapters"))?;
        a.save_dir(dir)?;
        Ok(BM_OK)
    })
}
