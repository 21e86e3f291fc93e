//! The fused ops in `bunmind_engine::ops`: forward against the plain candle op chains, backward
//! against finite differences (`check_gradients`) and against the op chain's backward.
use bunmind_engine::ops;
use bunmind_engine::train::{check_gradients, GradCheckConfig, Rng};
use candle_core::{Device, Tensor, Var};

fn var(seed: u64, shape: &[usize], std: f32) -> Var {
    let mut rng = Rng::new(seed);
    Var::from_tensor(&rng.normal_tensor(shape, 0.0, std, &Device::Cpu).unwrap()).unwrap()
}

/// Fixed non-uniform weights of `shape`, so that a weighted sum is not invariant under the op.
fn weights(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn softmax_scaled_forward_matches_op_chain() {
    // [B, KV, rep·T, S] grouped scores with T = 5 queries at offset 3 (S = 8), plus plain rows
    let x = var(1, &[2, 2, 2 * 5, 8], 2.0);
    for causal in [None, Some((5, 3))] {
        let xx = x.as_tensor().clone();
        let fused = ops::softmax_scaled(&xx, 0.7, causal).unwrap();
        let chain = ops::softmax::softmax_scaled_reference(&xx, 0.7, causal).unwrap();
        assert!(max_abs_diff(&fused, &chain) < 1e-6, "{causal:?}");
    }
    // causal over a square block: masked entries are exactly 0, rows sum to 1
    let x = var(2, &[3, 6, 6], 1.0);
    let y = ops::softmax_scaled(x.as_tensor(), 1.0, Some((6, 0))).unwrap();
    let v: Vec<Vec<Vec<f32>>> = y.to_vec3().unwrap();
    for m in &v {
        for (i, row) in m.iter().enumerate() {
            assert!(row[i + 1..].iter().all(|&p| p == 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
    let chain = ops::softmax::softmax_scaled_reference(x.as_tensor(), 1.0, Some((6, 0))).unwrap();
    assert!(max_abs_diff(&y, &chain) < 1e-6);
}

#[test]
fn softmax_scaled_gradients() {
    let cfg = GradCheckConfig::default();
    for (causal, shape) in [(None, vec![3, 7]), (Some((4, 2)), vec![2, 8, 6]), (Some((5, 0)), vec![2, 5, 5])] {
        let x = var(3, &shape, 1.0);
        let w = weights(&shape);
        let r = check_gradients(
            &[("scores".into(), x.clone())],
            || Ok((ops::softmax_scaled(x.as_tensor(), 0.8, causal)? * &w)?.sum_all()?),
            &cfg,
        )
        .unwrap();
        assert!(r.passed(), "{causal:?}: {r}");
        // and the same gradient as the op chain's backward
        let gf = (ops::softmax_scaled(x.as_tensor(), 0.8, causal).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (ops::softmax::softmax_scaled_reference(x.as_tensor(), 0.8, causal).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (gf, gc) = (gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
        assert!(max_abs_diff(gf, gc) < 1e-5, "{causal:?}");
    }
}

#[test]
fn softmax_scaled_is_deterministic_and_rejects_bad_causal_blocks() {
    let x = var(4, &[4, 64, 64], 3.0);
    let a: Vec<f32> = ops::softmax_scaled(x.as_tensor(), 0.5, Some((64, 0))).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = ops::softmax_scaled(x.as_tensor(), 0.5, Some((64, 0))).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a, b);
    assert!(ops::softmax_scaled(x.as_tensor(), 1.0, Some((7, 0))).is_err());
}

#[test]
fn rms_norm_forward_matches_op_chain() {
    let x = var(5, &[3, 4, 32], 1.5);
    let w = var(6, &[32], 1.0);
    let fused = ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    let chain = ops::rmsnorm::rms_norm_reference(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    assert!(max_abs_diff(&fused, &chain) < 1e-5);
    // same as candle's fused (gradient-free) inference kernel
    let infer = candle_nn::ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    assert!(max_abs_diff(&fused, &infer) < 1e-5);
}

#[test]
fn rms_norm_gradients_for_x_and_weight() {
    // more rows than one weight-gradient block (64) so the blocked sum is exercised
    let x = var(7, &[3, 50, 6], 1.0);
    let w = var(8, &[6], 1.0);
    let wt = weights(&[3, 50, 6]);
    let loss = || -> bunmind_engine::Result<Tensor> {
        Ok(((ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)? * &wt)?.sum_all()? / 150.0)?)
    };
    let r = check_gradients(&[("h".into(), x.clone()), ("norm.weight".into(), w.clone())], loss, &GradCheckConfig::default())
        .unwrap();
    assert!(r.passed(), "{r}");
    assert_eq!(r.vars.len(), 2);
    let gf = loss().unwrap().backward().unwrap();
    let gc = ((ops::rmsnorm::rms_norm_reference(x.as_tensor(), w.as_tensor(), 1e-5).unwrap() * &wt).unwrap().sum_all().unwrap()
        / 150.0)
        .unwrap()
        .backward()
        .unwrap();
    for v in [&x, &w] {
        assert!(max_abs_diff(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap()) < 1e-5);
    }
}

#[test]
fn rms_norm_weight_gradient_is_deterministic() {
    let x = var(9, &[700, 24], 1.0);
    let w = var(10, &[24], 1.0);
    let run = || -> Vec<f32> {
        let g = (ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap() * weights(&[700, 24]))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        g.get(w.as_tensor()).unwrap().to_vec1().unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn token_logprobs_fused_matches_op_chain_and_gradients() {
    use bunmind_engine::train::{masked_cross_entropy, token_logprobs, token_logprobs_reference};
    let logits = var(11, &[2, 5, 9], 2.0);
    let targets = Tensor::from_vec((0..10u32).map(|i| (i * 4) % 9).collect::<Vec<_>>(), (2, 5), &Device::Cpu).unwrap();
    let fused = ops::token_logprobs_fused(logits.as_tensor(), &targets).unwrap().unwrap();
    let chain = token_logprobs_reference(logits.as_tensor(), &targets).unwrap();
    assert_eq!(fused.dims(), &[2, 5]);
    assert!(max_abs_diff(&fused, &chain) < 1e-5);
    // gradient of a masked CE (mask with holes) through the fused op
    let mask = Tensor::from_vec(vec![1f32, 1., 0., 1., 1., 0., 1., 1., 1., 0.], (2, 5), &Device::Cpu).unwrap();
    let r = check_gradients(
        &[("logits".into(), logits.clone())],
        || masked_cross_entropy(logits.as_tensor(), &targets, &mask),
        &GradCheckConfig::default(),
    )
    .unwrap();
    assert!(r.passed(), "{r}");
    let w = weights(&[2, 5]);
    let gf = (token_logprobs(logits.as_tensor(), &targets).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (token_logprobs_reference(logits.as_tensor(), &targets).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(max_abs_diff(gf.get(logits.as_tensor()).unwrap(), gc.get(logits.as_tensor()).unwrap()) < 1e-5);
    // out-of-range targets are an error, not a panic
    let bad = Tensor::from_vec(vec![9u32; 10], (2, 5), &Device::Cpu).unwrap();
    assert!(ops::token_logprobs_fused(logits.as_tensor(), &bad).is_err());
}

#[test]
fn swiglu_forward_and_gradients() {
    let g = var(12, &[4, 3, 10], 2.0);
    let u = var(13, &[4, 3, 10], 1.0);
    let fused = ops::swiglu(g.as_tensor(), u.as_tensor()).unwrap();
    let chain = ops::swiglu::swiglu_reference(g.as_tensor(), u.as_tensor()).unwrap();
    // candle's silu uses std `exp`, the fused op the kernels' polynomial `exp` (≤ 2 ulp)
    let scale = chain.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(max_abs_diff(&fused, &chain) <= 1e-6 * scale, "{} vs scale {scale}", max_abs_diff(&fused, &chain));
    let w = weights(&[4, 3, 10]);
    let loss = || -> bunmind_engine::Result<Tensor> { Ok(((ops::swiglu(g.as_tensor(), u.as_tensor())? * &w)?.sum_all()? / 12.0)?) };
    let r = check_gradients(&[("gate".into(), g.clone()), ("up".into(), u.clone())], loss, &GradCheckConfig::default()).unwrap();
    assert!(r.passed(), "{r}");
    let gf = loss().unwrap().backward().unwrap();
    let gc = ((ops::swiglu::swiglu_reference(g.as_tensor(), u.as_tensor()).unwrap() * &w).unwrap().sum_all().unwrap() / 12.0)
        .unwrap()
        .backward()
        .unwrap();
    for v in [&g, &u] {
        assert!(max_abs_diff(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap()) < 1e-5);
    }
}

#[test]
fn rope_bthd_forward_and_gradients_both_layouts() {
    use bunmind_engine::model::{rope::Rope, ModelConfig};
    for interleaved in [false, true] {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        cfg.hidden_size = 24;
        cfg.num_attention_heads = 3; // head_dim 8
        cfg.num_key_value_heads = Some(3);
        cfg.rope_interleaved = interleaved;
        let rope = Rope::new(&cfg);
        let (cos, sin) = rope.tables(0, 5, false, &Device::Cpu).unwrap();
        let x = var(14, &[2, 5, 3, 8], 1.0); // [B, T, H, D]
        let fused = ops::rope_bthd(x.as_tensor(), &cos, &sin, interleaved).unwrap().unwrap();
        let chain = rope.apply_train(&x.as_tensor().transpose(1, 2).unwrap(), &cos, &sin).unwrap().transpose(1, 2).unwrap();
        assert!(max_abs_diff(&fused, &chain) < 1e-6, "interleaved={interleaved}");
        // and candle's fused inference kernel
        let infer = rope.apply(&x.as_tensor().transpose(1, 2).unwrap(), &cos, &sin).unwrap().transpose(1, 2).unwrap();
        assert!(max_abs_diff(&fused, &infer) < 1e-6);
        let w = weights(&[2, 5, 3, 8]);
        let r = check_gradients(
            &[("q".into(), x.clone())],
            || Ok(((rope.apply_train_bthd(x.as_tensor(), &cos, &sin)? * &w)?.sum_all()? / 10.0)?),
            &GradCheckConfig::default(),
        )
        .unwrap();
        assert!(r.passed(), "interleaved={interleaved}: {r}");
        // and the same gradient as the op chain's backward
        let gf = (ops::rope_bthd(x.as_tensor(), &cos, &sin, interleaved).unwrap().unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let chain = rope.apply_train(&x.as_tensor().transpose(1, 2).unwrap(), &cos, &sin).unwrap().transpose(1, 2).unwrap();
        let gc = (chain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap()) < 1e-6, "interleaved={interleaved}");
    }
}

/// Every fused op's output and input gradients, as flat vectors.
fn all_ops_fwd_bwd() -> Vec<Vec<f32>> {
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let mut out = vec![];
    let mut run = |y: Tensor, vars: &[&Var]| {
        let g = (&y * weights(y.dims())).unwrap().sum_all().unwrap().backward().unwrap();
        out.push(flat(&y));
        for v in vars {
            out.push(flat(g.get(v.as_tensor()).unwrap()));
        }
    };
    let (x, w) = (var(20, &[300, 96], 1.0), var(21, &[96], 1.0));
    run(ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap(), &[&x, &w]);
    let (g, u) = (var(22, &[70, 1000], 2.0), var(23, &[70, 1000], 1.0));
    run(ops::swiglu(g.as_tensor(), u.as_tensor()).unwrap(), &[&g, &u]);
    let s = var(24, &[2, 4, 64, 64], 2.0);
    run(ops::softmax_scaled(s.as_tensor(), 0.125, Some((64, 0))).unwrap(), &[&s]);
    let l = var(25, &[3, 40, 500], 2.0);
    let t = Tensor::from_vec((0..120u32).map(|i| (i * 37) % 500).collect::<Vec<_>>(), (3, 40), &Device::Cpu).unwrap();
    run(ops::token_logprobs_fused(l.as_tensor(), &t).unwrap().unwrap(), &[&l]);
    let q = var(26, &[2, 50, 4, 16], 1.0);
    let pos: Vec<f32> = (0..50 * 8).map(|k| (k / 8) as f32 * 0.3f32.powi((k % 8) as i32)).collect();
    let cos = Tensor::from_vec(pos.iter().map(|a| a.cos()).collect::<Vec<_>>(), (50, 8), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(pos.iter().map(|a| a.sin()).collect::<Vec<_>>(), (50, 8), &Device::Cpu).unwrap();
    run(ops::rope_bthd(q.as_tensor(), &cos, &sin, false).unwrap().unwrap(), &[&q]);
    out
}

#[test]
fn fused_ops_do_not_depend_on_the_thread_count() {
    let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(all_ops_fwd_bwd);
    let one = on(1);
    assert_eq!(one.len(), 12);
    assert_eq!(one, on(3), "results differ between 1 and 3 threads");
}
