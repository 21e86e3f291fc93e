//! Finite-difference gradient checker for any scalar loss built from candle `Var`s.
//!
//! For each checked element `x` of each var it compares the analytic gradient from
//! `loss.backward()` with the central difference `(L(x+ε) − L(x−ε)) / (x₊ − x₋)`, where `x₊`, `x₋`
//! are the perturbed values *as actually stored* in the var's dtype (in f32, `x ± ε` rounds; dividing
//! by the stored difference instead of `2ε` removes that error). Losses are read back as f64.
//!
//! An element passes when `|analytic − numeric| ≤ atol + rtol · max(|analytic|, |numeric|)`.
//! Defaults ([`GradCheckConfig::default`]) suit f32: ε = 1e-3, rtol = 1e-2, atol = 1e-3. The
//! truncation error of central differences is O(ε²·f‴) and the f32 rounding error of the loss is
//! about 1e-7·|L|/ε, so ε near 1e-3 balances both for O(1) losses; use [`GradCheckConfig::f64`]
//! for f64 vars. Keep losses O(1) (a mean, not a sum over thousands of elements).
//!
//! A var whose gradient is absent from the grad store while the loss numerically depends on it is
//! reported as [`VarStatus::Missing`]: this is what candle's fused ops (`softmax_last_dim`,
//! `rms_norm`, `rope`, `sdpa`) do silently.
use candle_core::{DType, Tensor, Var};

use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradCheckConfig {
    pub eps: f64,
    pub rtol: f64,
    pub atol: f64,
    /// Vars with more elements than this get a random sample of this many elements checked.
    pub max_elems_per_var: usize,
    /// Seed of the sample choice.
    pub seed: u64,
}

impl Default for GradCheckConfig {
    fn default() -> Self {
        GradCheckConfig { eps: 1e-3, rtol: 1e-2, atol: 1e-3, max_elems_per_var: 64, seed: 0 }
    }
}

impl GradCheckConfig {
    /// Tighter settings for f64 vars.
    pub fn f64() -> Self {
        GradCheckConfig { eps: 1e-6, rtol: 1e-6, atol: 1e-8, max_elems_per_var: 64, seed: 0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum VarStatus {
    Ok,
    /// No gradient in the store, but the numeric gradient is non-zero (a gradient-dropping op).
    Missing { max_numeric: f64 },
    /// No gradient in the store and the loss does not numerically depend on the var either.
    Unused,
    /// Worst element outside tolerance.
    Wrong { index: usize, analytic: f64, numeric: f64 },
}

#[derive(Debug, Clone)]
pub struct VarReport {
    pub name: String,
    pub numel: usize,
    /// Number of elements compared.
    pub checked: usize,
    pub max_abs_err: f64,
    /// Max of `|a − n| / max(|a|, |n|, atol)` over checked elements.
    pub max_rel_err: f64,
    pub status: VarStatus,
}

impl VarReport {
    pub fn passed(&self) -> bool {
        matches!(self.status, VarStatus::Ok | VarStatus::Unused)
    }
}

#[derive(Debug, Clone)]
pub struct GradCheckReport {
    pub vars: Vec<VarReport>,
}

impl GradCheckReport {
    pub fn passed(&self) -> bool {
        self.vars.iter().all(VarReport::passed)
    }

    /// `Ok(())` when every var passed, else an error naming each failing var and why.
    pub fn into_result(self) -> Result<()> {
        let failures: Vec<String> = self
            .vars
            .iter()
            .filter(|r| !r.passed())
            .map(|r| match &r.status {
                VarStatus::Missing { max_numeric } => format!(
                    "`{}`: gradient MISSING from the grad store (numeric |grad| up to {max_numeric:.3e}); \
                     an op on its path drops gradients (fused softmax/rms_norm/rope/sdpa?)",
                    r.name
                ),
                VarStatus::Wrong { index, analytic, numeric } => format!(
                    "`{}`: gradient WRONG at flat index {index}: analytic {analytic:.6e}, numeric {numeric:.6e} \
                     (max abs err {:.3e}, max rel err {:.3e})",
                    r.name, r.max_abs_err, r.max_rel_err
                ),
                _ => unreachable!(),
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Other(format!("gradient check failed: {}", failures.join("; "))))
        }
    }
}

impl std::fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.vars {
            writeln!(
                f,
                "{:<40} {:>4}/{:<6} abs {:.2e} rel {:.2e} {:?}",
                r.name, r.checked, r.numel, r.max_abs_err, r.max_rel_err, r.status
            )?;
        }
        Ok(())
    }
}

fn read_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn scalar_f64(loss: &Tensor) -> Result<f64> {
    if loss.elem_count() != 1 {
        return Err(Error::input(format!("gradcheck: loss must be a scalar, got shape {:?}", loss.shape())));
    }
    Ok(loss.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

fn write_f64(var: &Var, data: &[f64]) -> Result<()> {
    let t = Tensor::from_slice(data, var.shape(), var.device())?.to_dtype(var.dtype())?;
    var.set(&t)?;
    Ok(())
}

/// Checks the gradients of `loss_fn` with respect to every `(name, var)`. The vars are restored to
/// their original values afterwards (also on error). `loss_fn` must be deterministic.
pub fn check_gradients<F>(vars: &[(String, Var)], loss_fn: F, cfg: &GradCheckConfig) -> Result<GradCheckReport>
where
    F: Fn() -> Result<Tensor>,
{
    let loss = loss_fn()?;
    scalar_f64(&loss)?;
    let grads = loss.backward()?;
    let mut rng = Rng::stream(cfg.seed, "gradcheck");
    let mut reports = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let original = read_f64(var.as_tensor())?;
        let numel = original.len();
        let indices: Vec<usize> = if numel <= cfg.max_elems_per_var {
            (0..numel).collect()
        } else {
            let mut p = rng.permutation(numel);
            p.truncate(cfg.max_elems_per_var);
            p.sort_unstable();
            p
        };
        let analytic = match grads.get(var.as_tensor()) {
            Some(g) => Some(read_f64(g)?),
            None => None,
        };
        let numeric = numeric_grads(var, &original, &indices, &loss_fn, cfg.eps);
        write_f64(var, &original)?; // restore even if a perturbed forward failed
        let numeric = numeric?;

        let mut report = VarReport {
            name: name.clone(),
            numel,
            checked: indices.len(),
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            status: VarStatus::Ok,
        };
        let max_numeric = numeric.iter().fold(0.0f64, |m, n| m.max(n.abs()));
        match analytic {
            None => {
                report.max_abs_err = max_numeric;
                report.max_rel_err = if max_numeric > cfg.atol { 1.0 } else { 0.0 };
                report.status = if max_numeric > cfg.atol { VarStatus::Missing { max_numeric } } else { VarStatus::Unused };
            }
            Some(a) => {
                let mut worst: Option<(f64, usize, f64, f64)> = None; // (excess, index, a, n)
                for (&i, &n) in indices.iter().zip(&numeric) {
                    let ai = a[i];
                    let abs = (ai - n).abs();
                    let scale = ai.abs().max(n.abs());
                    report.max_abs_err = report.max_abs_err.max(abs);
                    report.max_rel_err = report.max_rel_err.max(abs / scale.max(cfg.atol));
                    let excess = abs - (cfg.atol + cfg.rtol * scale);
                    if excess > 0.0 && worst.is_none_or(|w| excess > w.0) {
                        worst = Some((excess, i, ai, n));
                    }
                }
                if let Some((_, index, analytic, numeric)) = worst {
                    report.status = VarStatus::Wrong { index, analytic, numeric };
                }
            }
        }
        reports.push(report);
    }
    Ok(GradCheckReport { vars: reports })
}

fn numeric_grads<F>(var: &Var, original: &[f64], indices: &[usize], loss_fn: &F, eps: f64) -> Result<Vec<f64>>
where
    F: Fn() -> Result<Tensor>,
{
    let mut work = original.to_vec();
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        let x = original[i];
        work[i] = x + eps;
        write_f64(var, &work)?;
        let x_plus = read_f64(&var.as_tensor().flatten_all()?.narrow(0, i, 1)?)?[0];
        let l_plus = scalar_f64(&loss_fn()?)?;
        work[i] = x - eps;
        write_f64(var, &work)?;
        let x_minus = read_f64(&var.as_tensor().flatten_all()?.narrow(0, i, 1)?)?[0];
        let l_minus = scalar_f64(&loss_fn()?)?;
        work[i] = x;
        out.push((l_plus - l_minus) / (x_plus - x_minus));
    }
    Ok(out)
}
