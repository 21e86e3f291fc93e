//! `dst (+)= a · b` on strided f32 matrices through the `gemm` crate (the kernels candle's CPU
//! matmul runs), without candle's zero-filled output, copies of transposed operands, or the
//! separate add that accumulating a gradient costs in candle's backprop.
use gemm::Parallelism;

/// A read-only strided matrix view: element (i, j) is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

// SAFETY: a `Mat` is only a (pointer, strides) triple; the kernels that hold one read the data
// while its owner keeps it alive and unmodified (see each call site).
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// Row-major matrix whose rows are `ld` floats apart.
    pub(crate) fn rows(p: *const f32, ld: usize) -> Mat {
        Mat { ptr: p, rs: ld as isize, cs: 1 }
    }
    /// Transpose of a row-major matrix whose rows are `ld` floats apart.
    pub(crate) fn t(p: *const f32, ld: usize) -> Mat {
        Mat { ptr: p, rs: 1, cs: ld as isize }
    }
}

/// A pointer that may cross threads (for disjoint writes from parallel tasks).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `dst[m×n] (+)= a[m×k] · b[k×n]`; dst is row-major with rows `ld` floats apart; `acc` adds to
/// dst instead of overwriting it. `threads` > 1 splits the product over rayon.
///
/// # Safety
/// Every element addressed through `a`, `b` and `dst` must be valid, and `dst` must not overlap
/// `a` or `b` or be written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm(m: usize, n: usize, k: usize, dst: *mut f32, ld: usize, acc: bool, a: Mat, b: Mat, threads: usize) {
    mm_scaled(m, n, k, dst, ld, acc, a, b, 1.0, threads)
}

/// `dst[m×n] (+)= s · a[m×k] · b[k×n]`: [`mm`] with the product scaled by `s` (in the kernel).
///
/// # Safety
/// As [`mm`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm_scaled(m: usize, n: usize, k: usize, dst: *mut f32, ld: usize, acc: bool, a: Mat, b: Mat, s: f32, threads: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * ld), n).fill(0.0);
            }
        }
        return;
    }
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    gemm::gemm(m, n, k, dst, 1, ld as isize, acc, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0f32, s, false, false, false, par);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(m: usize, n: usize, k: usize, a: impl Fn(usize, usize) -> f32, b: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum::<f64>() as f32;
            }
        }
        c
    }

    #[test]
    fn strided_products_and_accumulation() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect(); // [m, k]
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).cos()).collect(); // [n, k] = bᵀ
        let want = plain(m, n, k, |i, p| a[i * k + p], |p, j| bt[j * k + p]);
        for threads in [1, 2] {
            let mut c = vec![f32::NAN; m * n];
            unsafe { mm(m, n, k, c.as_mut_ptr(), n, false, Mat::rows(a.as_ptr(), k), Mat::t(bt.as_ptr(), k), threads) };
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5);
            }
            unsafe { mm(m, n, k, c.as_mut_ptr(), n, true, Mat::rows(a.as_ptr(), k), Mat::t(bt.as_ptr(), k), threads) };
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 2.0 * y).abs() < 1e-5);
            }
            unsafe { mm_scaled(m, n, k, c.as_mut_ptr(), n, true, Mat::rows(a.as_ptr(), k), Mat::t(bt.as_ptr(), k), -0.5, threads) };
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 1.5 * y).abs() < 1e-5);
            }
        }
    }
}
