//! The gradient checker must pass correct compositions and FAIL on gradient-dropping fused ops and
//! on ops with a wrong backward.
use bunmind_engine::train::{check_gradients, GradCheckConfig, Rng, VarStatus};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor, Var, D};

fn var(seed: u64, shape: &[usize]) -> Var {
    let mut rng = Rng::new(seed);
    Var::from_tensor(&rng.normal_tensor(shape, 0.0, 1.0, &Device::Cpu).unwrap()).unwrap()
}

fn weights(n: usize) -> Tensor {
    // fixed, non-uniform weights so the loss is not invariant under the ops' symmetries
    Tensor::from_vec((0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect::<Vec<_>>(), n, &Device::Cpu).unwrap()
}

/// loss = Σ softmax(x) · w  / rows   (the softmax drops to a constant sum without the weights)
fn softmax_loss(x: &Var, fused: bool) -> candle_core::Result<Tensor> {
    let (rows, cols) = x.dims2()?;
    let s = if fused { candle_nn::ops::softmax_last_dim(x.as_tensor())? } else { candle_nn::ops::softmax(x.as_tensor(), D::Minus1)? };
    s.broadcast_mul(&weights(cols))?.sum_all()? / rows as f64
}

fn rms_loss(x: &Var, alpha: &Var, fused: bool) -> candle_core::Result<Tensor> {
    let (rows, cols) = x.dims2()?;
    let y = if fused {
        candle_nn::ops::rms_norm(x.as_tensor(), alpha.as_tensor(), 1e-5)?
    } else {
        candle_nn::ops::rms_norm_slow(x.as_tensor(), alpha.as_tensor(), 1e-5)?
    };
    y.broadcast_mul(&weights(cols))?.sum_all()? / rows as f64
}

#[test]
fn passes_on_differentiable_softmax_and_rms_norm() {
    let x = var(1, &[3, 6]);
    let alpha = var(2, &[6]);
    let cfg = GradCheckConfig::default();
    let r = check_gradients(&[("x".into(), x.clone())], || Ok(softmax_loss(&x, false)?), &cfg).unwrap();
    assert!(r.passed(), "{r}");
    assert_eq!(r.vars[0].checked, 18);
    let r = check_gradients(&[("x".into(), x.clone()), ("norm.weight".into(), alpha.clone())], || Ok(rms_loss(&x, &alpha, false)?), &cfg)
        .unwrap();
    assert!(r.passed(), "{r}");
    r.into_result().unwrap();
}

#[test]
fn fails_naming_the_var_on_fused_softmax() {
    let x = var(3, &[3, 6]);
    let r = check_gradients(&[("attn.scores".into(), x.clone())], || Ok(softmax_loss(&x, true)?), &GradCheckConfig::default())
        .unwrap();
    assert!(!r.passed());
    assert!(matches!(r.vars[0].status, VarStatus::Missing { .. }), "{r}");
    let msg = r.into_result().unwrap_err().to_string();
    assert!(msg.contains("`attn.scores`") && msg.contains("MISSING"), "{msg}");
}

#[test]
fn fails_on_fused_rms_norm_for_both_inputs() {
    let x = var(4, &[3, 6]);
    let alpha = var(5, &[6]);
    let r = check_gradients(
        &[("h".into(), x.clone()), ("model.norm.weight".into(), alpha.clone())],
        || Ok(rms_loss(&x, &alpha, true)?),
        &GradCheckConfig::default(),
    )
    .unwrap();
    assert!(r.vars.iter().all(|v| matches!(v.status, VarStatus::Missing { .. })), "{r}");
    let msg = r.into_result().unwrap_err().to_string();
    assert!(msg.contains("`h`") && msg.contains("`model.norm.weight`"), "{msg}");
}

/// x² whose backward is deliberately wrong (returns g·x instead of 2·g·x).
struct BadSquare;

impl CustomOp1 for BadSquare {
    fn name(&self) -> &'static str {
        "bad-square"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else { candle_core::bail!("f32 only") };
        let (start, end) = l.contiguous_offsets().expect("contiguous");
        Ok((CpuStorage::F32(data[start..end].iter().map(|x| x * x).collect()), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.mul(arg)?))
    }
}

#[test]
fn fails_on_a_wrong_backward_and_reports_the_element() {
    let x = var(6, &[4]);
    let good = check_gradients(&[("x".into(), x.clone())], || Ok(x.as_tensor().sqr()?.mean_all()?), &GradCheckConfig::default()).unwrap();
    assert!(good.passed(), "{good}");
    let bad = check_gradients(
        &[("x".into(), x.clone())],
        || Ok(x.as_tensor().apply_op1(BadSquare)?.mean_all()?),
        &GradCheckConfig::default(),
    )
    .unwrap();
    match &bad.vars[0].status {
        VarStatus::Wrong { analytic, numeric, .. } => assert!((numeric / analytic - 2.0).abs() < 1e-2, "{bad}"),
        s => panic!("expected Wrong, got {s:?}"),
    }
    assert!(bad.into_result().unwrap_err().to_string().contains("WRONG"));
}

#[test]
fn samples_big_vars_and_restores_values_and_flags_unused_vars() {
    let big = var(7, &[40, 50]);
    let unused = var(8, &[3]);
    let before: Vec<f32> = big.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let cfg = GradCheckConfig { max_elems_per_var: 25, ..GradCheckConfig::default() };
    let r = check_gradients(
        &[("big".into(), big.clone()), ("unused".into(), unused.clone())],
        || Ok((big.as_tensor().sin()?.flatten_all()?.mul(&weights(2000))?.sum_all()? / 40.0)?),
        &cfg,
    )
    .unwrap();
    assert_eq!(r.vars[0].checked, 25);
    assert_eq!(r.vars[0].numel, 2000);
    assert_eq!(r.vars[1].status, VarStatus::Unused);
    assert!(r.passed(), "{r}");
    assert!(r.vars[0].max_abs_err > 0.0, "{r}");
    let after: Vec<f32> = big.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(before, after, "vars must be restored bit-exactly");
}

#[test]
fn f64_config_is_tight() {
    let x = Var::from_tensor(&Tensor::new(&[0.3f64, -1.2, 2.0], &Device::Cpu).unwrap()).unwrap();
    let r = check_gradients(&[("x".into(), x.clone())], || Ok(x.as_tensor().exp()?.sin()?.sum_all()?), &GradCheckConfig::f64()).unwrap();
    assert!(r.passed(), "{r}");
    assert!(r.vars[0].max_abs_err < 1e-7, "{r}");
}
