//! The CUDA side of the fused ops: launches of bunmind's own kernels (`<repo>/cuda/*.cu`, compiled
//! to PTX for sm_90 by `build.rs` under the `cuda` feature). Each op's `CustomOp` in this module's
//! siblings has a `cpu_fwd` and a `cuda_fwd` calling in here, and one `bwd` built from the same
//! ops, so the model code is the same on both devices.
//!
//! Dtypes: activations f32 or bf16 (math in f32 inside the kernels; outputs in the input dtype,
//! except the log-probabilities of the cross-entropy, always f32); RoPE tables f32; AdamW master
//! weights and moments f32 with an f32 or bf16 gradient.
//!
//! `BUNMIND_CUDA_FUSED=0` turns the fused kernels off on CUDA (the op chains run instead), for
//! A/B measurements and as a fallback.

/// Whether this build carries bunmind's own CUDA kernels.
pub const KERNELS_BUILT: bool = cfg!(feature = "cuda");

/// Fused kernels on CUDA tensors: on unless `BUNMIND_CUDA_FUSED=0` (read once per process).
pub fn cuda_fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| KERNELS_BUILT && crate::env::cuda_fused())
}

#[cfg(feature = "cuda")]
pub use imp::*;

#[cfg(feature = "cuda")]
mod imp {
    use std::sync::Arc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
    use candle_core::{bail, CudaDevice, CudaStorage, DType, InplaceOp3, Layout, Result, Shape, Storage, Tensor};

    #[allow(dead_code)]
    mod ptx {
        include!(concat!(env!("OUT_DIR"), "/bunmind_ptx.rs"));
    }
    /// The compute capability the PTX was generated for (e.g. "90").
    pub const COMPUTE_CAP: &str = ptx::COMPUTE_CAP;

    /// Threads per block of the row kernels.
    const ROW_THREADS: u32 = 256;
    /// Rows per partial sum of the RMSNorm weight gradient (fixed: reproducible sums).
    const DW_BLOCK_ROWS: usize = 64;

    fn load(dev: &CudaDevice, module: &str, ptx: &str, name: &str) -> Result<(CudaFunction, Arc<CudaStream>)> {
        let f = dev.get_or_load_custom_func(name, module, ptx)?;
        Ok((f.into_cuda_function(), dev.cuda_stream()))
    }

    /// The contiguous range of `l` in `s`, or an error naming the op and operand.
    fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, op: &str, what: &str) -> Result<CudaView<'a, T>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.slice(a..b)),
            None => bail!("{op}: {what} must be contiguous"),
        }
    }

    fn dtype_name(s: &CudaStorage) -> Result<&'static str> {
        Ok(match s.dtype() {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            d => bail!("bunmind CUDA kernels take f32 or bf16, got {d:?}"),
        })
    }

    /// Grid for `n` elements with a grid-stride loop (at most 64K blocks of 256).
    fn elementwise(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 65535) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    /// One block per row; threads: the row length rounded up to a warp, at most ROW_THREADS.
    fn per_row(rows: usize, len: usize) -> LaunchConfig {
        let threads = (len.div_ceil(32) * 32).clamp(32, ROW_THREADS as usize) as u32;
        LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
    }

    fn check_rows(rows: usize) -> Result<()> {
        if rows > i32::MAX as usize {
            bail!("too many rows for one launch: {rows}");
        }
        Ok(())
    }

    /// An uninitialised buffer of `n` elements of the same type as `_like` (every kernel below
    /// writes all of its output).
    fn alloc_like<T: DeviceRepr>(dev: &CudaDevice, _like: &CudaSlice<T>, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the caller's kernel writes every element before the buffer is read.
        unsafe { dev.alloc::<T>(n.max(1)) }
    }

    fn wrap<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
        CudaStorage::wrap_cuda_slice(s, dev.clone())
    }

    // ---------------------------------------------------------------- RMSNorm

    /// y = w ⊙ x · rsqrt(mean(x²) + eps) over the last dim; x and w of one dtype.
    pub fn rms_norm_fwd(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, eps: f32) -> Result<(CudaStorage, Shape)> {
        let d = *lx.shape().dims().last().unwrap_or(&0);
        if d == 0 || lw.shape().dims() != [d] {
            bail!("rms_norm: weight must be [{d}], got {:?}", lw.shape());
        }
        let rows = lx.shape().elem_count() / d;
        check_rows(rows)?;
        let dev = x.device();
        let name = format!("rmsnorm_fwd_{}", dtype_name(x)?);
        let (f, stream) = load(dev, "bunmind_rmsnorm", ptx::RMSNORM, &name)?;
        let cfg = per_row(rows, d);
        macro_rules! go {
            ($xs:expr, $ws:expr) => {{
                let (xv, wv) = (view($xs, lx, "rms_norm", "x")?, view($ws, lw, "rms_norm", "weight")?);
                let out = alloc_like(dev, $xs, rows * d)?;
                let (di, e) = (d as i32, eps);
                let mut b = stream.launch_builder(&f);
                b.arg(&xv).arg(&wv).arg(&out).arg(&di).arg(&e);
                // SAFETY: argument types and sizes match the kernel's signature.
                unsafe { b.launch(cfg) }.w()?;
                wrap(out, dev)
            }};
        }
        let out = match (&x.slice, &w.slice) {
            (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(ws)) => go!(xs, ws),
            (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(ws)) => go!(xs, ws),
            _ => bail!("rms_norm: x ({:?}) and weight ({:?}) must both be f32 or both bf16", x.dtype(), w.dtype()),
        };
        Ok((out, lx.shape().clone()))
    }

    /// dx of RMSNorm from (x, w, dy).
    pub fn rms_norm_bwd_x(
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let d = *lx.shape().dims().last().unwrap_or(&0);
        if d == 0 || lw.shape().dims() != [d] || lg.shape() != lx.shape() {
            bail!("rms_norm bwd: shapes x {:?}, w {:?}, grad {:?} do not fit", lx.shape(), lw.shape(), lg.shape());
        }
        let rows = lx.shape().elem_count() / d;
        check_rows(rows)?;
        let dev = x.device();
        let name = format!("rmsnorm_bwd_x_{}", dtype_name(x)?);
        let (f, stream) = load(dev, "bunmind_rmsnorm", ptx::RMSNORM, &name)?;
        let cfg = per_row(rows, d);
        macro_rules! go {
            ($xs:expr, $ws:expr, $gs:expr) => {{
                let xv = view($xs, lx, "rms_norm bwd", "x")?;
                let wv = view($ws, lw, "rms_norm bwd", "weight")?;
                let gv = view($gs, lg, "rms_norm bwd", "grad")?;
                let out = alloc_like(dev, $xs, rows * d)?;
                let (di, e) = (d as i32, eps);
                let mut b = stream.launch_builder(&f);
                b.arg(&xv).arg(&wv).arg(&gv).arg(&out).arg(&di).arg(&e);
                // SAFETY: argument types and sizes match the kernel's signature.
                unsafe { b.launch(cfg) }.w()?;
                wrap(out, dev)
            }};
        }
        let out = match (&x.slice, &w.slice, &g.slice) {
            (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b), CudaStorageSlice::F32(c)) => go!(a, b, c),
            (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b), CudaStorageSlice::BF16(c)) => go!(a, b, c),
            _ => bail!("rms_norm bwd: x, weight and grad must share one dtype (f32 or bf16)"),
        };
        Ok((out, lx.shape().clone()))
    }

    /// dw of RMSNorm from (x, dy): row statistics, fixed row blocks, blocks summed in order.
    pub fn rms_norm_bwd_w(x: &CudaStorage, lx: &Layout, g: &CudaStorage, lg: &Layout, eps: f32) -> Result<(CudaStorage, Shape)> {
        let d = *lx.shape().dims().last().unwrap_or(&0);
        if d == 0 || lg.shape() != lx.shape() {
            bail!("rms_norm bwd: grad {:?} must match x {:?}", lg.shape(), lx.shape());
        }
        let rows = lx.shape().elem_count() / d;
        check_rows(rows)?;
        let dev = x.device();
        let s = dtype_name(x)?;
        let (f_inv, stream) = load(dev, "bunmind_rmsnorm", ptx::RMSNORM, &format!("rmsnorm_inv_{s}"))?;
        let (f_part, _) = load(dev, "bunmind_rmsnorm", ptx::RMSNORM, &format!("rmsnorm_dw_partial_{s}"))?;
        let (f_sum, _) = load(dev, "bunmind_rmsnorm", ptx::RMSNORM, &format!("rmsnorm_dw_sum_{s}"))?;
        // Fixed 64-row blocks (more rows per block only past the grid's 65535 y-limit).
        let rows_per_block = DW_BLOCK_ROWS.max(rows.div_ceil(65535));
        let nblocks = rows.div_ceil(rows_per_block).max(1);
        let col_blocks = d.div_ceil(256) as u32;
        macro_rules! go {
            ($xs:expr, $gs:expr) => {{
                let xv = view($xs, lx, "rms_norm bwd", "x")?;
                let gv = view($gs, lg, "rms_norm bwd", "grad")?;
                // SAFETY: each buffer is fully written by the kernel that produces it.
                let inv = unsafe { dev.alloc::<f32>(rows.max(1))? };
                let partial = unsafe { dev.alloc::<f32>(nblocks * d)? };
                let dw = alloc_like(dev, $xs, d)?;
                let (di, e, ri, rpb, nb) = (d as i32, eps, rows as i32, rows_per_block as i32, nblocks as i32);
                let mut b = stream.launch_builder(&f_inv);
                b.arg(&xv).arg(&inv).arg(&di).arg(&e);
                // SAFETY: argument types and sizes match the kernels' signatures.
                unsafe { b.launch(per_row(rows, d)) }.w()?;
                let mut b = stream.launch_builder(&f_part);
                b.arg(&xv).arg(&gv).arg(&inv).arg(&partial).arg(&ri).arg(&di).arg(&rpb);
                let cfg = LaunchConfig { grid_dim: (col_blocks, nblocks as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                unsafe { b.launch(cfg) }.w()?;
                let mut b = stream.launch_builder(&f_sum);
                b.arg(&partial).arg(&dw).arg(&nb).arg(&di);
                let cfg = LaunchConfig { grid_dim: (col_blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                unsafe { b.launch(cfg) }.w()?;
                wrap(dw, dev)
            }};
        }
        let out = match (&x.slice, &g.slice) {
            (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b)) => go!(a, b),
            (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b)) => go!(a, b),
            _ => bail!("rms_norm bwd: x and grad must share one dtype (f32 or bf16)"),
        };
        Ok((out, Shape::from_dims(&[d])))
    }

    // ---------------------------------------------------------------- RoPE

    /// Rotation of x [B, T, H, D] by cos/sin [T, D/2] (f32); `inverse` rotates by −θ.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        x: &CudaStorage,
        lx: &Layout,
        cos: &CudaStorage,
        lc: &Layout,
        sin: &CudaStorage,
        ls: &Layout,
        interleaved: bool,
        inverse: bool,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, t, h, d) = lx.shape().dims4()?;
        let half = d / 2;
        if d % 2 != 0 || lc.shape().dims() != [t, half] || ls.shape().dims() != [t, half] {
            bail!("rope: x {:?} needs cos/sin [{t}, {half}], got {:?} / {:?}", lx.shape(), lc.shape(), ls.shape());
        }
        let (CudaStorageSlice::F32(cs), CudaStorageSlice::F32(ss)) = (&cos.slice, &sin.slice) else {
            bail!("rope: the cos/sin tables must be f32 on CUDA")
        };
        let rows = b * t * h;
        check_rows(rows)?;
        let dev = x.device();
        let (f, stream) = load(dev, "bunmind_rope", ptx::ROPE, &format!("rope_{}", dtype_name(x)?))?;
        let cv = view(cs, lc, "rope", "cos")?;
        let sv = view(ss, ls, "rope", "sin")?;
        let cfg = elementwise(rows * half);
        macro_rules! go {
            ($xs:expr) => {{
                let xv = view($xs, lx, "rope", "x")?;
                let out = alloc_like(dev, $xs, rows * d)?; // each pair written by one thread
                let (ri, ti, hi, di) = (rows as i32, t as i32, h as i32, d as i32);
                let (il, sgn) = (interleaved as i32, if inverse { -1f32 } else { 1f32 });
                let mut bl = stream.launch_builder(&f);
                bl.arg(&xv).arg(&cv).arg(&sv).arg(&out).arg(&ri).arg(&ti).arg(&hi).arg(&di).arg(&il).arg(&sgn);
                // SAFETY: argument types and sizes match the kernel's signature.
                unsafe { bl.launch(cfg) }.w()?;
                wrap(out, dev)
            }};
        }
        let out = match &x.slice {
            CudaStorageSlice::F32(xs) => go!(xs),
            CudaStorageSlice::BF16(xs) => go!(xs),
            _ => bail!("rope: x must be f32 or bf16, got {:?}", x.dtype()),
        };
        Ok((out, lx.shape().clone()))
    }

    // ---------------------------------------------------------------- SwiGLU

    pub fn swiglu_fwd(g: &CudaStorage, lg: &Layout, u: &CudaStorage, lu: &Layout) -> Result<(CudaStorage, Shape)> {
        if lg.shape() != lu.shape() {
            bail!("swiglu: gate {:?} and up {:?} differ in shape", lg.shape(), lu.shape());
        }
        let n = lg.shape().elem_count();
        let dev = g.device();
        let (f, stream) = load(dev, "bunmind_swiglu", ptx::SWIGLU, &format!("swiglu_fwd_{}", dtype_name(g)?))?;
        macro_rules! go {
            ($gs:expr, $us:expr) => {{
                let (gv, uv) = (view($gs, lg, "swiglu", "gate")?, view($us, lu, "swiglu", "up")?);
                let out = alloc_like(dev, $gs, n)?;
                let mut b = stream.launch_builder(&f);
                b.arg(&gv).arg(&uv).arg(&out).arg(&n);
                // SAFETY: argument types and sizes match the kernel's signature (n: size_t).
                unsafe { b.launch(elementwise(n)) }.w()?;
                wrap(out, dev)
            }};
        }
        let out = match (&g.slice, &u.slice) {
            (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b)) => go!(a, b),
            (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b)) => go!(a, b),
            _ => bail!("swiglu: gate and up must share one dtype (f32 or bf16)"),
        };
        Ok((out, lg.shape().clone()))
    }

    /// dg (`wrt_gate`) or du of SwiGLU from (g, u, dy).
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_bwd(
        g: &CudaStorage,
        lg: &Layout,
        u: &CudaStorage,
        lu: &Layout,
        dy: &CudaStorage,
        ld: &Layout,
        wrt_gate: bool,
    ) -> Result<(CudaStorage, Shape)> {
        if lg.shape() != lu.shape() || lg.shape() != ld.shape() {
            bail!("swiglu bwd: shape mismatch");
        }
        let n = lg.shape().elem_count();
        let dev = g.device();
        let (f, stream) = load(dev, "bunmind_swiglu", ptx::SWIGLU, &format!("swiglu_bwd_{}", dtype_name(g)?))?;
        macro_rules! go {
            ($gs:expr, $us:expr, $ds:expr) => {{
                let gv = view($gs, lg, "swiglu bwd", "gate")?;
                let uv = view($us, lu, "swiglu bwd", "up")?;
                let dv = view($ds, ld, "swiglu bwd", "grad")?;
                let out = alloc_like(dev, $gs, n)?;
                let w = wrt_gate as i32;
                let mut b = stream.launch_builder(&f);
                b.arg(&gv).arg(&uv).arg(&dv).arg(&out).arg(&n).arg(&w);
                // SAFETY: argument types and sizes match the kernel's signature.
                unsafe { b.launch(elementwise(n)) }.w()?;
                wrap(out, dev)
            }};
        }
        let out = match (&g.slice, &u.slice, &dy.slice) {
            (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b), CudaStorageSlice::F32(c)) => go!(a, b, c),
            (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b), CudaStorageSlice::BF16(c)) => go!(a, b, c),
            _ => bail!("swiglu bwd: gate, up and grad must share one dtype (f32 or bf16)"),
        };
        Ok((out, lg.shape().clone()))
    }

    // ---------------------------------------------------------------- cross-entropy

    fn xent_rows(lx: &Layout, lt: &Layout, op: &str) -> Result<(usize, usize)> {
        let dims = lx.shape().dims();
        let v = *dims.last().unwrap_or(&0);
        if v == 0 || lt.shape().dims() != &dims[..dims.len() - 1] {
            bail!("{op}: targets {:?} must be logits {:?} without the last dim", lt.shape(), lx.shape());
        }
        if v > i32::MAX as usize {
            bail!("{op}: vocabulary of {v} too large");
        }
        let rows = lt.shape().elem_count();
        check_rows(rows)?;
        Ok((rows, v))
    }

    /// log p(target) per row (f32 output whatever the logits' dtype).
    pub fn xent_fwd(x: &CudaStorage, lx: &Layout, t: &CudaStorage, lt: &Layout) -> Result<(CudaStorage, Shape)> {
        let (rows, v) = xent_rows(lx, lt, "token_logprobs")?;
        let CudaStorageSlice::U32(ts) = &t.slice else { bail!("token_logprobs: targets must be u32") };
        let dev = x.device();
        let (f, stream) = load(dev, "bunmind_xent", ptx::XENT, &format!("xent_fwd_{}", dtype_name(x)?))?;
        let tv = view(ts, lt, "token_logprobs", "targets")?;
        // SAFETY: one block per row writes logp[row].
        let out = unsafe { dev.alloc::<f32>(rows.max(1))? };
        let vi = v as i32;
        macro_rules! go {
            ($xs:expr) => {{
                let xv = view($xs, lx, "token_logprobs", "logits")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&xv).arg(&tv).arg(&out).arg(&vi);
                // SAFETY: argument types and sizes match the kernel's signature; one block per row.
                unsafe { b.launch(per_row(rows, v)) }.w()?;
            }};
        }
        if rows > 0 {
            match &x.slice {
                CudaStorageSlice::F32(xs) => go!(xs),
                CudaStorageSlice::BF16(xs) => go!(xs),
                _ => bail!("token_logprobs: logits must be f32 or bf16, got {:?}", x.dtype()),
            }
        }
        Ok((wrap(out, dev), lt.shape().clone()))
    }

    /// dx = dy · (onehot − softmax) from (logits, targets, [logp, dy] f32); in the logits' dtype.
    pub fn xent_bwd(
        x: &CudaStorage,
        lx: &Layout,
        t: &CudaStorage,
        lt: &Layout,
        lp: &CudaStorage,
        llp: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, v) = xent_rows(lx, lt, "token_logprobs bwd")?;
        if llp.shape().elem_count() != 2 * rows {
            bail!("token_logprobs bwd: [logp, grad] {:?} does not match targets {:?}", llp.shape(), lt.shape());
        }
        let CudaStorageSlice::U32(ts) = &t.slice else { bail!("token_logprobs bwd: targets must be u32") };
        let CudaStorageSlice::F32(ls) = &lp.slice else { bail!("token_logprobs bwd: [logp, grad] must be f32") };
        let dev = x.device();
        let (f, stream) = load(dev, "bunmind_xent", ptx::XENT, &format!("xent_bwd_{}", dtype_name(x)?))?;
        let tv = view(ts, lt, "token_logprobs bwd", "targets")?;
        let lv = view(ls, llp, "token_logprobs bwd", "[logp, grad]")?;
        let vi = v as i32;
        macro_rules! go {
            ($xs:expr) => {{
                let xv = view($xs, lx, "token_logprobs bwd", "logits")?;
                let out = alloc_like(dev, $xs, rows * v)?;
                if rows > 0 {
                    let mut b = stream.launch_builder(&f);
                    b.arg(&xv).arg(&tv).arg(&lv).arg(&out).arg(&vi);
                    // SAFETY: argument types and sizes match the kernel's signature.
                    unsafe { b.launch(per_row(rows, v)) }.w()?;
                }
                wrap(out, dev)
            }};
        }
        let out = match &x.slice {
            CudaStorageSlice::F32(xs) => go!(xs),
            CudaStorageSlice::BF16(xs) => go!(xs),
            _ => bail!("token_logprobs bwd: logits must be f32 or bf16, got {:?}", x.dtype()),
        };
        Ok((out, lx.shape().clone()))
    }

    // ---------------------------------------------------------------- softmax

    fn softmax_dims(l: &Layout, causal: Option<(usize, usize)>) -> Result<(usize, usize, i32, i32)> {
        let s = *l.shape().dims().last().unwrap_or(&0);
        if s == 0 {
            bail!("softmax_scaled: empty last dim");
        }
        let rows = l.shape().elem_count() / s;
        check_rows(rows)?;
        let (t, off) = causal.unwrap_or((0, 0));
        if causal.is_some() && (t == 0 || rows % t != 0) {
            bail!("softmax_scaled: causal block t={t} does not divide {rows} rows");
        }
        Ok((rows, s, t as i32, off as i32))
    }

    pub fn softmax_fwd(x: &CudaStorage, lx: &Layout, scale: f32, causal: Option<(usize, usize)>) -> Result<(CudaStorage, Shape)> {
        let (rows, s, t, off) = softmax_dims(lx, causal)?;
        let dev = x.device();
        let (f, stream) = load(dev, "bunmind_softmax", ptx::SOFTMAX, &format!("softmax_fwd_{}", dtype_name(x)?))?;
        let si = s as i32;
        macro_rules! go {
            ($xs:expr) => {{
                let xv = view($xs, lx, "softmax_scaled", "input")?;
                let out = alloc_like(dev, $xs, rows * s)?;
                let mut b = stream.launch_builder(&f);
                b.arg(&xv).arg(&out).arg(&si).arg(&scale).arg(&t).arg(&off);
                // SAFETY: argument types and sizes match the kernel's signature.
                unsafe { b.launch(per_row(rows, s)) }.w()?;
                wrap(out, dev)
            }};
        }
        let out = match &x.slice {
            CudaStorageSlice::F32(xs) => go!(xs),
            CudaStorageSlice::BF16(xs) => go!(xs),
            _ => bail!("softmax_scaled: input must be f32 or bf16, got {:?}", x.dtype()),
        };
        Ok((out, lx.shape().clone()))
    }

    pub fn softmax_bwd(
        y: &CudaStorage,
        ly: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        scale: f32,
        causal: Option<(usize, usize)>,
    ) -> Result<(CudaStorage, Shape)> {
        if ly.shape() != lg.shape() {
            bail!("softmax_scaled bwd: shape mismatch {:?} vs {:?}", ly.shape(), lg.shape());
        }
        let (rows, s, t, off) = softmax_dims(ly, causal)?;
        let dev = y.device();
        let (f, stream) = load(dev, "bunmind_softmax", ptx::SOFTMAX, &format!("softmax_bwd_{}", dtype_name(y)?))?;
        let si = s as i32;
        macro_rules! go {
            ($ys:expr, $gs:expr) => {{
                let yv = view($ys, ly, "softmax_scaled bwd", "output")?;
                let gv = view($gs, lg, "softmax_scaled bwd", "grad")?;
                let out = alloc_like(dev, $ys, rows * s)?;
                let mut b = stream.launch_builder(&f);
                b.arg(&yv).arg(&gv).arg(&out).arg(&si).arg(&scale).arg(&t).arg(&off);
                // SAFETY: argument types and sizes match the kernel's signature.
                unsafe { b.launch(per_row(rows, s)) }.w()?;
                wrap(out, dev)
            }};
        }
        let out = match (&y.slice, &g.slice) {
            (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b)) => go!(a, b),
            (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b)) => go!(a, b),
            _ => bail!("softmax_scaled bwd: output and grad must share one dtype (f32 or bf16)"),
        };
        Ok((out, ly.shape().clone()))
    }

    // ---------------------------------------------------------------- AdamW

    /// Hyperparameters of one fused AdamW step (see `cuda/adamw.cu` for the arithmetic).
    #[derive(Debug, Clone, Copy)]
    pub struct AdamWStep {
        pub beta1: f32,
        pub beta2: f32,
        pub decay: f32,
        pub step: f32,
        pub inv_sqrt_bc2: f32,
        pub eps: f32,
    }

    /// One fused AdamW step in place: p, g, m, v all f32 (p, m and v written).
    /// m and v are the optimizer's own buffers (never shared with another tensor); the kernel
    /// writes them through their device pointers, which is why they come in by shared reference.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        p: &mut CudaStorage,
        lp: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        m: &CudaStorage,
        lm: &Layout,
        v: &CudaStorage,
        lv: &Layout,
        h: AdamWStep,
    ) -> Result<()> {
        let n = lp.shape().elem_count();
        if lg.shape().elem_count() != n || lm.shape().elem_count() != n || lv.shape().elem_count() != n {
            bail!("adamw: parameter, gradient and moments differ in size");
        }
        for (l, what) in [(lp, "parameter"), (lg, "gradient"), (lm, "exp_avg"), (lv, "exp_avg_sq")] {
            if l.contiguous_offsets().is_none() {
                bail!("adamw: the {what} must be contiguous");
            }
        }
        let dev = p.device().clone();
        let (f, stream) = load(&dev, "bunmind_adamw", ptx::ADAMW, "adamw_f32")?;
        let (CudaStorageSlice::F32(ms), CudaStorageSlice::F32(vs)) = (&m.slice, &v.slice) else {
            bail!("adamw: moments must be f32")
        };
        let mv = view(ms, lm, "adamw", "exp_avg")?;
        let vv = view(vs, lv, "adamw", "exp_avg_sq")?;
        let (po, _) = lp.contiguous_offsets().expect("checked above");
        let CudaStorageSlice::F32(ps) = &mut p.slice else { bail!("adamw: parameter must be f32 (the master weights)") };
        let mut pv = ps.slice_mut(po..po + n);
        let AdamWStep { beta1, beta2, decay, step, inv_sqrt_bc2, eps } = h;
        macro_rules! go {
            ($gv:expr) => {{
                let gv = $gv;
                let mut b = stream.launch_builder(&f);
                b.arg(&mut pv).arg(&gv).arg(&mv).arg(&vv).arg(&n);
                b.arg(&beta1).arg(&beta2).arg(&decay).arg(&step).arg(&inv_sqrt_bc2).arg(&eps);
                // SAFETY: argument types and sizes match the kernel's signature; m and v are
                // exclusively owned by the optimizer (see above).
                unsafe { b.launch(elementwise(n)) }.w()?;
            }};
        }
        match &g.slice {
            CudaStorageSlice::F32(gs) => go!(view(gs, lg, "adamw", "gradient")?),
            _ => bail!("adamw: the gradient must be f32 (the master weights' gradient), got {:?}", g.dtype()),
        }
        Ok(())
    }

    /// The fused AdamW step as an in-place op on the parameter, with (exp_avg, exp_avg_sq) as the
    /// other operands and the gradient carried along (candle's in-place ops take three tensors).
    pub struct AdamWOp {
        pub grad: Tensor,
        pub h: AdamWStep,
    }

    impl InplaceOp3 for AdamWOp {
        fn name(&self) -> &'static str {
            "bunmind-adamw"
        }

        fn cpu_fwd(
            &self,
            _: &mut candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            bail!("bunmind-adamw is the CUDA kernel; the CPU path uses the moment/update ops of train::optim")
        }

        fn cuda_fwd(&self, p: &mut CudaStorage, lp: &Layout, m: &CudaStorage, lm: &Layout, v: &CudaStorage, lv: &Layout) -> Result<()> {
            let (gs, lg) = self.grad.storage_and_layout();
            let Storage::Cuda(gs) = &*gs else { bail!("adamw: the gradient is not on the CUDA device") };
            adamw(p, lp, gs, lg, m, lm, v, lv, self.h)
        }
    }
}
