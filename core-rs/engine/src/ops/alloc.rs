//! Allocator tuning for training on glibc (Linux).
//!
//! Every candle op allocates its output. With glibc's defaults, buffers above the mmap threshold
//! (128 KiB, raised dynamically up to 32 MiB) are `mmap`ed and `munmap`ed on free, and the heap
//! top is trimmed back to the OS, so most multi-megabyte activations and gradients of a training
//! step come from fresh pages: a page fault plus kernel zeroing per 4 KiB (measured: ~45% of a
//! step of the demo model went to page faults, `clear_page` and munmap).
//! [`tune_for_training`] raises the mmap threshold and the trim threshold once per process so
//! freed buffers are reused from the heap instead. The cost: the process keeps its peak heap
//! (which a training loop reaches again every step anyway). Set `BUNMIND_MALLOC_TUNE=0` to skip.
use std::sync::Once;

static TUNE: Once = Once::new();

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    extern "C" {
        pub fn mallopt(param: i32, value: i32) -> i32;
    }
    pub const M_TRIM_THRESHOLD: i32 = -1;
    pub const M_MMAP_THRESHOLD: i32 = -3;
}

/// Applies the tuning once per process (no-op off glibc, or with `BUNMIND_MALLOC_TUNE=0`).
/// Returns whether it is active.
pub fn tune_for_training() -> bool {
    static mut ACTIVE: bool = false;
    TUNE.call_once(|| {
        if !crate::env::malloc_tune() {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is called once, under `Once`.
        unsafe {
            // Largest accepted mmap threshold (glibc caps it; try 1 GiB, then its 32 MiB max).
            let mmap_ok = glibc::mallopt(glibc::M_MMAP_THRESHOLD, 1 << 30) == 1
                || glibc::mallopt(glibc::M_MMAP_THRESHOLD, 32 << 20) == 1;
            let trim_ok = glibc::mallopt(glibc::M_TRIM_THRESHOLD, i32::MAX) == 1;
            ACTIVE = mmap_ok && trim_ok;
        }
    });
    // SAFETY: written only inside call_once, which has completed here.
    unsafe { ACTIVE }
}
