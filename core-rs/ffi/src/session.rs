//! Generation sessions: prefill + incremental decode with a KV cache, one token per call, so the
//! caller can stream (and stop) between tokens. Batch sessions decode several prompts together.
use std::sync::Mutex;

use bunmind_engine::generate::{BatchGenerationSession, FinishReason, GenerationOptions, GenerationSession};

use crate::handles::{self, Kind};
use crate::model::model;
use crate::*;

pub const NO_TOKEN: u32 = u32::MAX;

fn options(json: &str) -> FfiResult<GenerationOptions> {
    let o: GenerationOptions = if json.trim().is_empty() {
        GenerationOptions::default()
    } else {
        serde_json::from_str(json).map_err(|e| FfiError::arg(format!("generation options: {e}")))?
    };
    o.validate()?;
    Ok(o)
}

fn reason(r: Option<FinishReason>) -> Option<&'static str> {
    r.map(|r| match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ContextFull => "context_full",
    })
}

/// Start generating from `prompt` (`n` ids) with `options` JSON (temperature, top_k, top_p,
/// repetition_penalty, max_new_tokens, stop_token_ids, seed; missing fields take defaults).
///
/// # Safety
/// `prompt` must point at `n` u32s, `opts` at `len` bytes, `out` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_session_new(m: u32, prompt: *const u32, n: usize, opts: *const u8, len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let model = model(m)?.get();
        let prompt = slice_arg(prompt, n, "prompt")?;
        let o = options(str_arg(opts, len, "options")?)?;
        let s = GenerationSession::new(model, prompt, o)?;
        write_out(out, handles::insert(Kind::Session, Mutex::new(s)), "out")?;
        Ok(BM_OK)
    })
}

/// Produce the next token into `*token` (`NO_TOKEN` when the session had already ended);
/// `*done` = 1 once the session has ended (after a stop token, max tokens, or a full context).
///
/// # Safety
/// `token` and `done` must point at writable u32s.
#[no_mangle]
pub unsafe extern "C" fn bm_session_next(s: u32, token: *mut u32, done: *mut u32) -> i32 {
    guard(|| {
        let sess = handles::get::<Mutex<GenerationSession>>(s, Kind::Session).map_err(FfiError::handle)?;
        let mut sess = sess.lock().unwrap_or_else(|p| p.into_inner());
        let t = sess.next_token()?;
        write_out(token, t.unwrap_or(NO_TOKEN), "token")?;
        write_out(done, sess.is_finished() as u32, "done")?;
        Ok(BM_OK)
    })
}

/// `{"prompt_tokens", "generated_tokens", "finish_reason": null|"stop"|"length"|"context_full"}`.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_session_info(s: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let sess = handles::get::<Mutex<GenerationSession>>(s, Kind::Session).map_err(FfiError::handle)?;
        let sess = sess.lock().unwrap_or_else(|p| p.into_inner());
        let info = serde_json::json!({
            "prompt_tokens": sess.tokens().len() - sess.generated().len(),
            "generated_tokens": sess.generated().len(),
            "finish_reason": reason(sess.finish_reason()),
        });
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}

#[no_mangle]
pub extern "C" fn bm_session_free(s: u32) -> i32 {
    guard(|| {
        handles::remove(s, Kind::Session).map_err(FfiError::handle)?;
        Ok(BM_OK)
    })
}

/// Several prompts at once: prompt `i` is `ids[offsets[i]..offsets[i+1]]` (`n + 1` offsets).
///
/// # Safety
/// Pointers must be valid for the lengths described.
#[no_mangle]
pub unsafe extern "C" fn bm_batch_session_new(m: u32, ids: *const u32, offsets: *const u32, n: usize, opts: *const u8, len: usize, out: *mut u32) -> i32 {
    guard(|| {
        let model = model(m)?.get();
        let offsets = slice_arg(offsets, n + 1, "offsets")?;
        let total = offsets[n] as usize;
        let ids = slice_arg(ids, total, "ids")?;
        let mut prompts = Vec::with_capacity(n);
        for i in 0..n {
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            if a > b || b > total {
                return Err(FfiError::arg(format!("offsets[{i}..{}] = {a}..{b} is outside the {total} ids", i + 1)));
            }
            prompts.push(ids[a..b].to_vec());
        }
        let o = options(str_arg(opts, len, "options")?)?;
        let s = BatchGenerationSession::new(model, &prompts, o)?;
        write_out(out, handles::insert(Kind::BatchSession, Mutex::new(s)), "out")?;
        Ok(BM_OK)
    })
}

/// One decode step for every row: `tokens[i]` = the row's new token or `NO_TOKEN` once it ended;
/// `*done` = 1 when every row has ended.
///
/// # Safety
/// `tokens` must point at `n` u32s (the batch size), `done` at a u32.
#[no_mangle]
pub unsafe extern "C" fn bm_batch_session_next(s: u32, tokens: *mut u32, n: usize, done: *mut u32) -> i32 {
    guard(|| {
        let sess = handles::get::<Mutex<BatchGenerationSession>>(s, Kind::BatchSession).map_err(FfiError::handle)?;
        let mut sess = sess.lock().unwrap_or_else(|p| p.into_inner());
        if n != sess.batch_size() {
            return Err(FfiError::arg(format!("tokens buffer has {n} slots, the batch has {}", sess.batch_size())));
        }
        let next = sess.next_tokens()?;
        let out = out_slice(tokens, n, "tokens")?;
        for (o, t) in out.iter_mut().zip(next) {
            *o = t.unwrap_or(NO_TOKEN);
        }
        write_out(done, sess.is_finished() as u32, "done")?;
        Ok(BM_OK)
    })
}

#[no_mangle]
pub extern "C" fn bm_batch_session_free(s: u32) -> i32 {
    guard(|| {
        handles::remove(s, Kind::BatchSession).map_err(FfiError::handle)?;
        Ok(BM_OK)
    })
}
