//! bunmind's C ABI, called from Bun over bun:ffi (and usable from Deno.dlopen or any C caller).
//!
//! Rules every export follows:
//! - returns an `i32` status (`BM_OK` = 0); on failure the message is fetched with `bm_last_error`
//!   (thread-local, so concurrent workers don't see each other's errors);
//! - catches panics and turns them into `BM_PANIC`;
//! - takes handles as `u32` ids checked against the handle table (stale, freed and wrong-kind
//!   handles are errors, never undefined behaviour);
//! - takes configs as UTF-8 JSON (`ptr`, `len`) and bulk data as caller-owned typed arrays; output
//!   that may not fit returns `BM_BUFFER_TOO_SMALL` with the needed size written, so the caller can
//!   grow its buffer and call again. No allocation crosses the boundary.
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod export;
pub mod handles;
pub mod kernels;
pub mod model;
pub mod session;
mod tokenizer;
pub mod trainer;

pub use export::*;
pub use kernels::*;
pub use model::*;
pub use session::*;
pub use tokenizer::*;
pub use trainer::*;

/// Bumped on every incompatible change of an export's signature or meaning. The TS loader refuses
/// a library whose version differs from the one it was written for.
pub const ABI_VERSION: u32 = 2;

pub const BM_OK: i32 = 0;
pub const BM_ERROR: i32 = 1;
pub const BM_BUFFER_TOO_SMALL: i32 = 2;
pub const BM_BAD_HANDLE: i32 = 3;
pub const BM_PANIC: i32 = 4;
pub const BM_INVALID_ARGUMENT: i32 = 5;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// An error on its way out of an export.
pub struct FfiError {
    pub code: i32,
    pub message: String,
}

impl FfiError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        FfiError { code, message: message.into() }
    }
    pub fn handle(message: String) -> Self {
        FfiError::new(BM_BAD_HANDLE, message)
    }
    pub fn arg(message: impl Into<String>) -> Self {
        FfiError::new(BM_INVALID_ARGUMENT, message)
    }
}

impl From<bunmind_engine::Error> for FfiError {
    fn from(e: bunmind_engine::Error) -> Self {
        FfiError::new(BM_ERROR, e.to_string())
    }
}

pub type FfiResult<T> = Result<T, FfiError>;

fn set_last_error(msg: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// Run an export's body: catch panics, record the error message, return the status code.
pub fn guard(f: impl FnOnce() -> FfiResult<i32>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            set_last_error(e.message);
            e.code
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(format!("internal error (panic in the native library): {msg}"));
            BM_PANIC
        }
    }
}

/// Borrow `len` bytes at `ptr` as UTF-8. A null pointer is allowed only with `len == 0`.
///
/// # Safety
/// `ptr` must point at `len` readable bytes for the duration of the call.
pub unsafe fn str_arg<'a>(ptr: *const u8, len: usize, what: &str) -> FfiResult<&'a str> {
    let bytes = bytes_arg(ptr, len, what)?;
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::arg(format!("{what} is not valid UTF-8: invalid byte at offset {}", e.valid_up_to()))
    })
}

/// # Safety
/// `ptr` must point at `len` readable bytes for the duration of the call.
pub unsafe fn bytes_arg<'a>(ptr: *const u8, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::arg(format!("{what}: null pointer with length {len}")));
    }
    Ok(std::slice::from_raw_parts(ptr, len))
}

/// # Safety
/// `ptr` must point at `len` readable, aligned `T`s.
pub unsafe fn slice_arg<'a, T>(ptr: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::arg(format!("{what}: null pointer with length {len}")));
    }
    Ok(std::slice::from_raw_parts(ptr, len))
}

/// # Safety
/// `ptr` must point at `cap` writable, aligned `T`s.
pub unsafe fn out_slice<'a, T>(ptr: *mut T, cap: usize, what: &str) -> FfiResult<&'a mut [T]> {
    if cap == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(FfiError::arg(format!("{what}: null pointer with capacity {cap}")));
    }
    Ok(std::slice::from_raw_parts_mut(ptr, cap))
}

/// # Safety
/// `out` must be null or point at a writable `T`.
pub unsafe fn write_out<T>(out: *mut T, value: T, what: &str) -> FfiResult<()> {
    if out.is_null() {
        return Err(FfiError::arg(format!("{what}: null output pointer")));
    }
    out.write(value);
    Ok(())
}

/// Copy `bytes` into the caller's buffer; `BM_BUFFER_TOO_SMALL` (with the size needed written to
/// `out_len`) when it doesn't fit.
///
/// # Safety
/// `buf` must point at `cap` writable bytes; `out_len` at a writable u32.
pub unsafe fn write_bytes(bytes: &[u8], buf: *mut u8, cap: usize, out_len: *mut u32) -> FfiResult<i32> {
    let n = u32::try_from(bytes.len()).map_err(|_| FfiError::arg("output larger than 4 GiB"))?;
    write_out(out_len, n, "out_len")?;
    if bytes.len() > cap {
        return Ok(BM_BUFFER_TOO_SMALL);
    }
    out_slice(buf, cap, "output buffer")?[..bytes.len()].copy_from_slice(bytes);
    Ok(BM_OK)
}

#[no_mangle]
pub extern "C" fn bm_abi_version() -> u32 {
    ABI_VERSION
}

/// Copy the calling thread's last error message into `buf` (truncated to `cap`); returns the
/// full message length in bytes.
///
/// # Safety
/// `buf` must point at `cap` writable bytes (or be null with `cap == 0`).
#[no_mangle]
pub unsafe extern "C" fn bm_last_error(buf: *mut u8, cap: usize) -> usize {
    LAST_ERROR.with(|e| {
        let msg = e.borrow();
        let bytes = msg.as_bytes();
        if !buf.is_null() && cap > 0 {
            // Never cut a UTF-8 sequence in half.
            let mut n = bytes.len().min(cap);
            while n > 0 && !msg.is_char_boundary(n) {
                n -= 1;
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, n);
        }
        bytes.len()
    })
}

/// Build facts as JSON: version, ABI, compiled features, device support.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_build_info(buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let info = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "abi": ABI_VERSION,
            "cuda": cfg!(feature = "cuda"),
            "cuda_kernels": bunmind_engine::ops::cuda::KERNELS_BUILT,
            "nccl": bunmind_engine::dist::has_nccl(),
            "threads": rayon_threads(),
        });
        write_bytes(info.to_string().as_bytes(), buf, cap, out_len)
    })
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Number of live handles of every kind (for leak tests).
#[no_mangle]
pub extern "C" fn bm_live_handles() -> u32 {
    handles::live_count() as u32
}

/// Panics inside the guard on purpose, so the caller can check that a native panic becomes an
/// error and not a crash.
#[no_mangle]
pub extern "C" fn bm_debug_panic() -> i32 {
    guard(|| panic!("deliberate panic requested by bm_debug_panic"))
}
