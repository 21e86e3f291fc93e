//! Tokenizer exports: load, encode (single and batch), decode, vocabulary lookups, save, and
//! training as a polled background job.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bunmind_engine::tokenizer::{Tokenizer, TrainOptions, TrainProgress};

use crate::handles::{self, Kind};
use crate::*;

fn tok(h: u32) -> FfiResult<Arc<Tokenizer>> {
    handles::get::<Tokenizer>(h, Kind::Tokenizer).map_err(FfiError::handle)
}

/// Load a `tokenizer.json` (or a directory holding one).
///
/// # Safety
/// `path` must point at `len` bytes; `out` at a writable u32.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_load(path: *const u8, len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let path = str_arg(path, len, "path")?;
        let t = Tokenizer::from_path(path)?;
        write_out(out, handles::insert(Kind::Tokenizer, t), "out")?;
        Ok(BM_OK)
    })
}

/// Load a tokenizer from the bytes of a `tokenizer.json`.
///
/// # Safety
/// `json` must point at `len` bytes; `out` at a writable u32.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_from_json(json: *const u8, len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let t = Tokenizer::from_bytes(bytes_arg(json, len, "json")?)?;
        write_out(out, handles::insert(Kind::Tokenizer, t), "out")?;
        Ok(BM_OK)
    })
}

#[no_mangle]
pub extern "C" fn bm_tokenizer_free(h: u32) -> i32 {
    guard(|| {
        handles::remove(h, Kind::Tokenizer).map_err(FfiError::handle)?;
        Ok(BM_OK)
    })
}

/// `{"vocab_size": n}` as JSON.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_info(h: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let t = tok(h)?;
        let info = serde_json::json!({ "vocab_size": t.vocab_size() });
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}

/// Encode UTF-8 text into `out_ids` (capacity `cap`); `*out_len` receives the number of ids (also
/// when the buffer was too small, with status `BM_BUFFER_TOO_SMALL`).
///
/// # Safety
/// `text` must point at `text_len` bytes, `out_ids` at `cap` u32s, `out_len` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_encode(
    h: u32,
    text: *const u8,
    text_len: usize,
    add_special: u8,
    out_ids: *mut u32,
    cap: usize,
    out_len: *mut u32,
) -> i32 {
    guard(|| {
        let t = tok(h)?;
        let text = str_arg(text, text_len, "text")?;
        let ids = t.encode(text, add_special != 0)?;
        write_out(out_len, ids.len() as u32, "out_len")?;
        if ids.len() > cap {
            return Ok(BM_BUFFER_TOO_SMALL);
        }
        out_slice(out_ids, cap, "out_ids")?[..ids.len()].copy_from_slice(&ids);
        Ok(BM_OK)
    })
}

/// Encode `n` texts in parallel. The texts are concatenated UTF-8 in `text`, text `i` spanning
/// bytes `offsets[i]..offsets[i+1]` (`offsets` has `n + 1` entries). Ids are written back to back
/// into `out_ids`, and `out_offsets` (`n + 1` entries) receives where each text's ids start. When
/// `cap` is too small, `BM_BUFFER_TOO_SMALL` is returned with `out_offsets[n]` = ids needed.
///
/// # Safety
/// Pointers must be valid for the lengths given above.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_encode_batch(
    h: u32,
    text: *const u8,
    text_len: usize,
    offsets: *const u32,
    n: usize,
    add_special: u8,
    out_ids: *mut u32,
    cap: usize,
    out_offsets: *mut u32,
) -> i32 {
    guard(|| {
        let t = tok(h)?;
        let bytes = bytes_arg(text, text_len, "text")?;
        let offsets = slice_arg(offsets, n + 1, "offsets")?;
        let mut texts = Vec::with_capacity(n);
        for i in 0..n {
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            if a > b || b > bytes.len() {
                return Err(FfiError::arg(format!("offsets[{i}..{}] = {a}..{b} is outside the text of {} bytes", i + 1, bytes.len())));
            }
            let s = std::str::from_utf8(&bytes[a..b]).map_err(|e| {
                FfiError::arg(format!("text {i} is not valid UTF-8: invalid byte at offset {}", e.valid_up_to()))
            })?;
            texts.push(s);
        }
        let encoded = t.encode_batch(texts, add_special != 0)?;
        let outs = out_slice(out_offsets, n + 1, "out_offsets")?;
        let mut total = 0usize;
        for (i, ids) in encoded.iter().enumerate() {
            outs[i] = total as u32;
            total += ids.len();
        }
        outs[n] = u32::try_from(total).map_err(|_| FfiError::arg("more than 4G ids in one batch"))?;
        if total > cap {
            return Ok(BM_BUFFER_TOO_SMALL);
        }
        let dst = out_slice(out_ids, cap, "out_ids")?;
        for (i, ids) in encoded.iter().enumerate() {
            let start = outs[i] as usize;
            dst[start..start + ids.len()].copy_from_slice(ids);
        }
        Ok(BM_OK)
    })
}

/// Decode ids to UTF-8 text in `buf`.
///
/// # Safety
/// `ids` must point at `n` u32s; see [`write_bytes`] for the output.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_decode(
    h: u32,
    ids: *const u32,
    n: usize,
    skip_special: u8,
    buf: *mut u8,
    cap: usize,
    out_len: *mut u32,
) -> i32 {
    guard(|| {
        let t = tok(h)?;
        let ids = slice_arg(ids, n, "ids")?;
        let text = t.decode(ids, skip_special != 0)?;
        write_bytes(text.as_bytes(), buf, cap, out_len)
    })
}

/// The id of `token`, or `u32::MAX` when it is not in the vocabulary.
///
/// # Safety
/// `token` must point at `len` bytes; `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_token_to_id(h: u32, token: *const u8, len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let t = tok(h)?;
        let s = str_arg(token, len, "token")?;
        write_out(out, t.token_to_id(s).unwrap_or(u32::MAX), "out")?;
        Ok(BM_OK)
    })
}

/// The token string of `id` (byte-level alphabet form), or `BM_ERROR` when out of range.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_id_to_token(h: u32, id: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let t = tok(h)?;
        let s = t
            .id_to_token(id)
            .ok_or_else(|| FfiError::arg(format!("token id {id} is out of range for a vocabulary of {}", t.vocab_size())))?;
        write_bytes(s.as_bytes(), buf, cap, out_len)
    })
}

/// The tokenizer as `tokenizer.json` text.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_to_json(h: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let t = tok(h)?;
        write_bytes(t.to_json()?.as_bytes(), buf, cap, out_len)
    })
}

/// Save `tokenizer.json` into directory `dir` (created if needed), atomically.
///
/// # Safety
/// `dir` must point at `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_save(h: u32, dir: *const u8, len: usize) -> i32 {
    guard(|| {
        let t = tok(h)?;
        t.save(str_arg(dir, len, "dir")?)?;
        Ok(BM_OK)
    })
}

// ---- training as a background job ------------------------------------------------------------

struct TrainJob {
    progress: Arc<TrainProgress>,
    thread: Mutex<Option<JoinHandle<()>>>,
    result: Arc<Mutex<Option<Result<Tokenizer, String>>>>,
    started: std::time::Instant,
}

impl Drop for TrainJob {
    fn drop(&mut self) {
        // Freeing a running job cancels it and waits, so no thread outlives its handle.
        self.progress.cancel.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn job(h: u32) -> FfiResult<Arc<TrainJob>> {
    handles::get::<TrainJob>(h, Kind::TokenizerTrainJob).map_err(FfiError::handle)
}

/// Start training a tokenizer on a native thread. `config` is JSON with the fields of
/// `TrainOptions` (`files`, `vocab_size`, `min_frequency`, `scheme`, `max_token_length`).
/// Poll with `bm_tokenizer_train_poll`, collect with `bm_tokenizer_train_finish`.
///
/// # Safety
/// `config` must point at `len` bytes; `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_train_start(config: *const u8, len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let cfg = str_arg(config, len, "config")?;
        let opts: TrainOptions = serde_json::from_str(cfg)
            .map_err(|e| FfiError::arg(format!("tokenizer training config: {e}")))?;
        // Validate the scheme before spawning, so the error arrives synchronously.
        bunmind_engine::tokenizer::Scheme::parse(&opts.scheme)?;
        let progress = Arc::new(TrainProgress::default());
        let result = Arc::new(Mutex::new(None));
        let (p, r) = (progress.clone(), result.clone());
        let thread = std::thread::Builder::new()
            .name("bunmind-tokenizer-train".into())
            .spawn(move || {
                let out = catch_unwind(AssertUnwindSafe(|| Tokenizer::train(&opts, &p)));
                let out = match out {
                    Ok(Ok(t)) => Ok(t),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("internal error (panic) while training the tokenizer".to_string()),
                };
                *r.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
            })
            .map_err(|e| FfiError::new(BM_ERROR, format!("could not start the training thread: {e}")))?;
        let job = TrainJob { progress, thread: Mutex::new(Some(thread)), result, started: std::time::Instant::now() };
        write_out(out, handles::insert(Kind::TokenizerTrainJob, job), "out")?;
        Ok(BM_OK)
    })
}

/// Progress as JSON: `{"state": "running"|"done"|"failed", "phase": "reading"|"merging"|"done",
/// "bytes_read", "bytes_total", "documents", "elapsed_s", "error"?}`.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_train_poll(h: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let j = job(h)?;
        let p = &j.progress;
        let result = j.result.lock().unwrap_or_else(|p| p.into_inner());
        let (state, error) = match result.as_ref() {
            None => ("running", None),
            Some(Ok(_)) => ("done", None),
            Some(Err(e)) => ("failed", Some(e.clone())),
        };
        let phase = match p.phase.load(Ordering::Relaxed) {
            0 => "reading",
            1 => "merging",
            _ => "done",
        };
        // The reader finishes before merges start; show that phase once all bytes are in.
        let phase = if phase == "reading" && state == "running" && p.bytes_read.load(Ordering::Relaxed) >= p.bytes_total.load(Ordering::Relaxed) {
            "merging"
        } else {
            phase
        };
        let info = serde_json::json!({
            "state": state,
            "phase": phase,
            "bytes_read": p.bytes_read.load(Ordering::Relaxed),
            "bytes_total": p.bytes_total.load(Ordering::Relaxed),
            "documents": p.documents.load(Ordering::Relaxed),
            "elapsed_s": j.started.elapsed().as_secs_f64(),
            "error": error,
        });
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}

/// Wait for the job, then hand over the trained tokenizer as a new handle (the job keeps nothing).
///
/// # Safety
/// `out` must point at a writable u32.
#[no_mangle]
pub unsafe extern "C" fn bm_tokenizer_train_finish(h: u32, out: *mut u32) -> i32 {
    guard(|| {
        let j = job(h)?;
        if let Some(t) = j.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        let result = j
            .result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| FfiError::new(BM_ERROR, "the trained tokenizer was already taken from this job"))?;
        let t = result.map_err(|e| FfiError::new(BM_ERROR, e))?;
        write_out(out, handles::insert(Kind::Tokenizer, t), "out")?;
        Ok(BM_OK)
    })
}

/// Ask a running job to stop; `finish` then reports it as cancelled.
#[no_mangle]
pub extern "C" fn bm_tokenizer_train_cancel(h: u32) -> i32 {
    guard(|| {
        job(h)?.progress.cancel.store(true, Ordering::Relaxed);
        Ok(BM_OK)
    })
}

/// Free a job; a running job is cancelled and joined first.
#[no_mangle]
pub extern "C" fn bm_tokenizer_train_free(h: u32) -> i32 {
    guard(|| {
        let j = job(h)?;
        handles::remove(h, Kind::TokenizerTrainJob).map_err(FfiError::handle)?;
        drop(j); // last reference: Drop cancels and joins
        Ok(BM_OK)
    })
}
