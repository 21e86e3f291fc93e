//! Parity of the fused ops on a device against a CPU f32 reference: forward outputs and the
//! gradients of every differentiable input, for f32 and bf16 activations, plus the AdamW step.
//! The reference ([`Reference`]) is either the fused CPU ops ([`parity`], which the engine's
//! tests check against op chains and finite differences) or the independent op chains of plain
//! candle ops, the `*_reference` functions ([`parity_against`] with [`Reference::OpChain`]),
//! which share no code with either device's fused kernels.
//!
//! On the GPU machine this is the CUDA kernels' test (`cargo test --features cuda -- --ignored`,
//! or `bm_parity_check` from the C ABI, which `bench/gpu/run.sh` calls); on the CPU it compares
//! the CPU's own paths (bf16: the op chains in bf16 against the f32 fused ops), which keeps the
//! harness and its tolerances honest without a GPU.
//!
//! Error measure: `max |out − ref| / max(max |ref|, 1e-6)` per tensor (relative to the tensor's
//! scale, so near-zero elements do not dominate). Tolerances: [`tolerance`] — f32 1e-4 (summation
//! order and `__expf` differ from the CPU), bf16 2e-2 (inputs are rounded to bf16 on both sides;
//! bf16 outputs carry 2⁻⁹ relative rounding, and gradients pass through one or two bf16 roundings).
use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::train::optim::{AdamW, AdamWConfig, Param};
use crate::Result;

#[derive(Debug, Clone, Serialize)]
pub struct ParityRow {
    pub op: String,
    pub dtype: String,
    /// Which tensor: `out`, `d<input>`, or `param`/`exp_avg` for AdamW.
    pub what: String,
    pub max_abs_err: f64,
    pub rel_err: f64,
    pub tol: f64,
    pub ok: bool,
}

/// The stated tolerance of [`ParityRow::rel_err`] for a dtype of the activations.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 | DType::F16 => 2e-2,
        _ => 1e-4,
    }
}

/// Deterministic inputs, uniform in [−scale, scale): the `"parity"` stream of a seed.
struct Gen(crate::rng::Rng);

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(crate::rng::Rng::stream(seed, "parity"))
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (self.0.uniform_f32() * 2.0 - 1.0) * scale).collect()
    }
}

/// What the device's ops are compared with (always on the CPU, in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The fused CPU ops (`super::rms_norm` etc.): on the CPU itself, f32 rows compare a kernel
    /// with itself (exact), which checks determinism only.
    FusedCpu,
    /// The op chains (`rms_norm_reference`, `swiglu_reference`, `softmax_scaled_reference`,
    /// `token_logprobs_reference`, RoPE from narrow/mul/cat), backward through candle's autograd.
    /// (AdamW rows compare with the CPU AdamW either way.)
    OpChain,
}

struct Ctx<'a> {
    dev: &'a Device,
    dtype: DType,
    reference: Reference,
    rows: Vec<ParityRow>,
}

impl Ctx<'_> {
    /// CPU f32 reference input (rounded to `dtype` first, so both sides see the same values).
    fn cpu(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::from_slice(data, shape, &Device::Cpu)?;
        Ok(if self.dtype == DType::F32 { t } else { t.to_dtype(self.dtype)?.to_dtype(DType::F32)? })
    }
    /// The same input on the device under test, in `dtype`.
    fn dev(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, shape, &Device::Cpu)?.to_dtype(self.dtype)?.to_device(self.dev)?)
    }
    fn compare(&mut self, op: &str, what: &str, got: &Tensor, want: &Tensor) -> Result<()> {
        let got = got.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let want = want.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let tol = tolerance(self.dtype);
        let (mut max_abs, mut scale, mut bad) = (0f64, 0f64, got.len() != want.len());
        for (&g, &w) in got.iter().zip(&want) {
            if !g.is_finite() {
                bad = true;
            }
            max_abs = max_abs.max((g as f64 - w as f64).abs());
            scale = scale.max((w as f64).abs());
        }
        let rel = max_abs / scale.max(1e-6);
        self.rows.push(ParityRow {
            op: op.into(),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            what: what.into(),
            max_abs_err: max_abs,
            rel_err: rel,
            tol,
            ok: !bad && rel <= tol,
        });
        Ok(())
    }
}

/// `Σ out · r` (r fixed random weights) as the scalar to differentiate: its gradient w.r.t.
/// `out` is `r`, a dense, non-trivial upstream gradient.
fn weighted_sum(out: &Tensor, r: &[f32]) -> Result<Tensor> {
    let r = Tensor::from_slice(r, out.shape(), &Device::Cpu)?.to_device(out.device())?;
    Ok((out.to_dtype(DType::F32)? * r)?.sum_all()?)
}

/// The op under test as a function of its inputs, and its op chain (run for the reference side
/// with [`Reference::OpChain`]).
type OpFn<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Runs the op on the device inputs and the reference (`f`, or `chain` with
/// [`Reference::OpChain`]) on the CPU inputs; compares the outputs and the gradients of every input.
fn check(c: &mut Ctx<'_>, op: &str, inputs: &[(&str, Vec<f32>, Vec<usize>)], f: OpFn<'_>, chain: OpFn<'_>, seed: u64) -> Result<()> {
    let run = |vars: &[Var], f: OpFn<'_>| -> Result<(Tensor, Vec<Tensor>)> {
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts)?;
        let mut g = Gen::new(seed);
        let r = g.vec(out.elem_count(), 1.0);
        let grads = weighted_sum(&out, &r)?.backward()?;
        let gs = vars.iter().map(|v| grads.get(v.as_tensor()).cloned().unwrap_or_else(|| v.zeros_like().unwrap())).collect();
        Ok((out, gs))
    };
    let ref_vars = inputs.iter().map(|(_, d, s)| Ok(Var::from_tensor(&c.cpu(d, s)?)?)).collect::<Result<Vec<_>>>()?;
    let dev_vars = inputs.iter().map(|(_, d, s)| Ok(Var::from_tensor(&c.dev(d, s)?)?)).collect::<Result<Vec<_>>>()?;
    let (want, want_g) = run(&ref_vars, if c.reference == Reference::OpChain { chain } else { f })?;
    let (got, got_g) = run(&dev_vars, f)?;
    c.compare(op, "out", &got, &want)?;
    for (((name, _, _), g), w) in inputs.iter().zip(&got_g).zip(&want_g) {
        c.compare(op, &format!("d{name}"), g, w)?;
    }
    Ok(())
}

/// RoPE on [B, T, H, D] from candle ops (the fallback where the fused op does not apply).
fn rope_chain(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let (b, t, h, d) = x.dims4()?;
    let half = d / 2;
    let c = cos.reshape((1, t, 1, half))?;
    let s = sin.reshape((1, t, 1, half))?;
    if interleaved {
        let x = x.reshape((b, t, h, half, 2))?;
        let (xe, xo) = (x.narrow(4, 0, 1)?.squeeze(4)?, x.narrow(4, 1, 1)?.squeeze(4)?);
        let re = (xe.broadcast_mul(&c)? - xo.broadcast_mul(&s)?)?;
        let im = (xe.broadcast_mul(&s)? + xo.broadcast_mul(&c)?)?;
        Ok(Tensor::stack(&[re, im], 4)?.reshape((b, t, h, d))?)
    } else {
        let (x1, x2) = (x.narrow(3, 0, half)?, x.narrow(3, half, half)?);
        let a = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
        let z = (x2.broadcast_mul(&c)? + x1.broadcast_mul(&s)?)?;
        Ok(Tensor::cat(&[a, z], 3)?)
    }
}

/// Every op's parity on `dev` with activations in `dtype` (f32 or bf16) against the fused CPU
/// ops ([`Reference::FusedCpu`]). Never fails on a mismatch: rows carry `ok`; an `Err` means an
/// op could not run at all.
pub fn parity(dev: &Device, dtype: DType) -> Result<Vec<ParityRow>> {
    parity_against(dev, dtype, Reference::FusedCpu)
}

/// [`parity`] against the chosen reference.
pub fn parity_against(dev: &Device, dtype: DType, reference: Reference) -> Result<Vec<ParityRow>> {
    let mut c = Ctx { dev, dtype, reference, rows: vec![] };
    let mut g = Gen::new(0x5eed_1234_abcd_0001);

    // RMSNorm: hidden size, a head dim (QK-norm), and an odd length (partial warps).
    for &(rows, d) in &[(96usize, 512usize), (130, 64), (7, 100)] {
        let x = g.vec(rows * d, 2.0);
        let w: Vec<f32> = g.vec(d, 0.5).iter().map(|v| 1.0 + v).collect();
        let f = |t: &[Tensor]| super::rms_norm(&t[0], &t[1], 1e-5);
        let chain = |t: &[Tensor]| super::rmsnorm::rms_norm_reference(&t[0], &t[1], 1e-5);
        check(&mut c, &format!("rms_norm[{rows}x{d}]"), &[("x", x, vec![rows, d]), ("w", w, vec![d])], &f, &chain, 1)?;
    }

    // RoPE on q-shaped and k-shaped inputs (different head counts), both pair layouts.
    let (b, t, hd) = (2usize, 24usize, 64usize);
    let half = hd / 2;
    let pos: Vec<f32> = (0..t * half).map(|k| (k / half) as f32 * (1e4f32).powf(-((k % half) as f32) / half as f32)).collect();
    let cos: Vec<f32> = pos.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = pos.iter().map(|a| a.sin()).collect();
    for &heads in &[8usize, 2] {
        for &interleaved in &[false, true] {
            let x = g.vec(b * t * heads * hd, 1.0);
            let (cos_d, sin_d) = (Tensor::from_slice(&cos, (t, half), dev)?, Tensor::from_slice(&sin, (t, half), dev)?);
            let (cos_c, sin_c) = (Tensor::from_slice(&cos, (t, half), &Device::Cpu)?, Tensor::from_slice(&sin, (t, half), &Device::Cpu)?);
            let tables = |x: &Tensor| if x.device().is_cpu() { (cos_c.clone(), sin_c.clone()) } else { (cos_d.clone(), sin_d.clone()) };
            let chain = |ts: &[Tensor]| -> Result<Tensor> {
                let (cs, sn) = tables(&ts[0]);
                rope_chain(&ts[0], &cs.to_dtype(ts[0].dtype())?, &sn.to_dtype(ts[0].dtype())?, interleaved)
            };
            let f = |ts: &[Tensor]| -> Result<Tensor> {
                let (cs, sn) = tables(&ts[0]);
                match super::rope_bthd(&ts[0], &cs, &sn, interleaved)? {
                    Some(y) => Ok(y),
                    None => chain(ts),
                }
            };
            let name = format!("rope[h={heads},{}]", if interleaved { "interleaved" } else { "half" });
            check(&mut c, &name, &[("x", x, vec![b, t, heads, hd])], &f, &chain, 2)?;
        }
    }

    // SwiGLU at an MLP width.
    let n = 64 * 1408;
    let (gate, up) = (g.vec(n, 3.0), g.vec(n, 1.0));
    let (f, chain) = (|t: &[Tensor]| super::swiglu(&t[0], &t[1]), |t: &[Tensor]| super::swiglu::swiglu_reference(&t[0], &t[1]));
    check(&mut c, "swiglu[64x1408]", &[("gate", gate, vec![64, 1408]), ("up", up, vec![64, 1408])], &f, &chain, 3)?;

    // Masked cross-entropy over the vocabulary: log p(target) (fused, no probabilities stored),
    // then −Σ mask·logp / Σ mask, the training loss; a quarter of the positions masked out.
    let (rows, v) = (48usize, 6400usize);
    let logits = g.vec(rows * v, 4.0);
    let targets: Vec<u32> = (0..rows).map(|i| ((i * 7919) % v) as u32).collect();
    let mask: Vec<f32> = (0..rows).map(|i| if i % 4 == 3 { 0.0 } else { 1.0 }).collect();
    let count = mask.iter().sum::<f32>() as f64;
    let (t_d, t_c) = (Tensor::from_slice(&targets, rows, dev)?, Tensor::from_slice(&targets, rows, &Device::Cpu)?);
    let (m_d, m_c) = (Tensor::from_slice(&mask, rows, dev)?, Tensor::from_slice(&mask, rows, &Device::Cpu)?);
    let xent = move |ts: &[Tensor], fused: bool| -> Result<Tensor> {
        let (tg, m) = if ts[0].device().is_cpu() { (&t_c, &m_c) } else { (&t_d, &m_d) };
        let lp = match if fused { super::token_logprobs_fused(&ts[0], tg)? } else { None } {
            Some(lp) => lp,
            None => crate::train::loss::token_logprobs_reference(&ts[0], tg)?,
        };
        Ok(((lp.to_dtype(DType::F32)? * m)?.sum_all()? * (-1.0 / count))?.reshape(1)?)
    };
    let (xf, xc) = (|ts: &[Tensor]| xent(ts, true), |ts: &[Tensor]| xent(ts, false));
    check(&mut c, "masked_xent[48x6400]", &[("logits", logits, vec![rows, v])], &xf, &xc, 4)?;

    // Attention softmax: causal (training) and plain, [B, KV, rep·T, S] with a scale.
    let (bb, kv, tt) = (2usize, 2usize, 32usize);
    for causal in [true, false] {
        let x = g.vec(bb * kv * 2 * tt * tt, 6.0);
        let f = move |ts: &[Tensor]| super::softmax_scaled(&ts[0], 0.125, causal.then_some((tt, 0)));
        let chain = move |ts: &[Tensor]| super::softmax::softmax_scaled_reference(&ts[0], 0.125, causal.then_some((tt, 0)));
        let name = format!("softmax[{}]", if causal { "causal" } else { "plain" });
        check(&mut c, &name, &[("x", x, vec![bb, kv, 2 * tt, tt])], &f, &chain, 5)?;
    }

    // AdamW: three steps on one decayed and one non-decayed parameter (f32 master weights),
    // gradients in the activation dtype.
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let shapes = [vec![257usize, 33usize], vec![300usize]];
    let inits: Vec<Vec<f32>> = shapes.iter().map(|s| g.vec(s.iter().product(), 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..3).map(|_| shapes.iter().map(|s| g.vec(s.iter().product(), 0.1)).collect()).collect();
    let mut results = vec![];
    for d in [&Device::Cpu, dev] {
        let vars: Vec<Var> = inits.iter().zip(&shapes).map(|(v, s)| Var::from_slice(v, s.as_slice(), d)).collect::<candle_core::Result<_>>()?;
        let params = vars.iter().enumerate().map(|(i, v)| Param::with_decay(format!("p{i}"), v.clone(), i == 0)).collect();
        let mut opt = AdamW::new(params, cfg)?;
        for (k, step_grads) in grads.iter().enumerate() {
            // Gradients through a backward pass (Σ p·g has gradient g), with g rounded to the
            // activation dtype; they arrive in f32, as the f32 master weights' gradients do.
            let mut loss = Tensor::new(0f32, d)?;
            for (v, gd) in vars.iter().zip(step_grads) {
                let gt = Tensor::from_slice(gd, v.shape(), &Device::Cpu)?.to_dtype(dtype)?.to_dtype(DType::F32)?.to_device(d)?;
                loss = (loss + (v.as_tensor() * gt)?.sum_all()?)?;
            }
            opt.step(&loss.backward()?, 1e-2 * (k + 1) as f64)?;
        }
        let (state, _) = opt.export_state()?;
        results.push((vars, state));
    }
    let (ref_vars, ref_state) = &results[0];
    let (dev_vars, dev_state) = &results[1];
    // The update itself is f32 on both sides: f32 tolerance whatever the gradient's dtype.
    let saved = c.dtype;
    c.dtype = DType::F32;
    for (i, (rv, dv)) in ref_vars.iter().zip(dev_vars).enumerate() {
        c.compare("adamw", &format!("p{i}"), dv.as_tensor(), rv.as_tensor())?;
        for k in ["exp_avg", "exp_avg_sq"] {
            let key = format!("p{i}.{k}");
            c.compare("adamw", &key, &dev_state[&key], &ref_state[&key])?;
        }
    }
    for r in c.rows.iter_mut().filter(|r| r.op == "adamw") {
        r.dtype = format!("{:?}-grad", saved).to_lowercase();
    }
    Ok(c.rows)
}
