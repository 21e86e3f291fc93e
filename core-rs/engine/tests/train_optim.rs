//! AdamW against a plain f64 implementation of PyTorch's formula; state export/import; clipping.
use std::collections::HashMap;

use bunmind_engine::train::{
    clip_grad_norm, default_decay, global_grad_norm, params_from_varmap, AdamW, AdamWConfig, Param, Rng,
};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

fn rand_var(rng: &mut Rng, shape: &[usize]) -> Var {
    Var::from_tensor(&rng.normal_tensor(shape, 0.0, 1.0, &Device::Cpu).unwrap()).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// PyTorch `torch.optim.AdamW` single-tensor update, in f64.
struct RefAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl RefAdamW {
    fn step(&mut self, g: &[f64], lr: f64, c: &AdamWConfig, decay: bool) {
        self.t += 1;
        let wd = if decay { c.weight_decay } else { 0.0 };
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        for i in 0..self.p.len() {
            self.p[i] *= 1.0 - lr * wd;
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g[i];
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g[i] * g[i];
            let denom = self.v[i].sqrt() / bc2.sqrt() + c.eps;
            self.p[i] -= lr / bc1 * self.m[i] / denom;
        }
    }
}

fn setup(seed: u64) -> Vec<Param> {
    let mut rng = Rng::new(seed);
    vec![
        Param::new("model.layers.0.mlp.up_proj.weight", rand_var(&mut rng, &[3, 4])),
        Param::new("model.layers.0.input_layernorm.weight", rand_var(&mut rng, &[4])),
        Param::new("lm_head.weight", rand_var(&mut rng, &[2, 4])),
    ]
}

#[test]
fn default_decay_rule() {
    assert!(default_decay("model.layers.0.self_attn.q_proj.weight", 2));
    assert!(!default_decay("model.layers.0.input_layernorm.weight", 1));
    assert!(!default_decay("model.norm.weight", 2)); // by name even if 2-D
    assert!(!default_decay("head.bias", 2));
    assert!(!default_decay("scale", 1)); // 1-D
    assert!(!default_decay("scalar", 0));
}

#[test]
fn adamw_matches_pytorch_formula_over_steps_with_skips() {
    let config = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let params = setup(1);
    let decays: Vec<bool> = params.iter().map(|p| p.decay).collect();
    assert_eq!(decays, [true, false, true]);
    let mut refs: Vec<RefAdamW> = params
        .iter()
        .map(|p| {
            let n = p.var.elem_count();
            RefAdamW { p: flat(p.var.as_tensor()), m: vec![0.0; n], v: vec![0.0; n], t: 0 }
        })
        .collect();
    let mut opt = AdamW::new(params.clone(), config).unwrap();
    let mut rng = Rng::new(2);
    for step in 0..8 {
        let lr = 1e-2 * (1.0 + step as f64) / 3.0;
        let mut grads = GradStore::default();
        let mut skipped = 0;
        for (i, p) in params.iter().enumerate() {
            // param 2 has no gradient on steps 2 and 5
            if i == 2 && (step == 2 || step == 5) {
                skipped += 1;
                continue;
            }
            let g = rng.normal_tensor(p.var.shape().clone(), 0.0, if step == 4 { 1e-6 } else { 0.5 }, &Device::Cpu).unwrap();
            refs[i].step(&flat(&g), lr, &config, decays[i]);
            grads.insert(p.var.as_tensor(), g);
        }
        let stats = opt.step(&grads, lr).unwrap();
        assert_eq!(stats.skipped_no_grad, skipped);
        assert_eq!(stats.updated, 3 - skipped);
        if skipped > 0 {
            assert_eq!(stats.skipped_names, ["lm_head.weight"]);
        }
        for (p, r) in params.iter().zip(&refs) {
            for (a, b) in flat(p.var.as_tensor()).iter().zip(&r.p) {
                assert!((a - b).abs() < 2e-6 * b.abs().max(1.0), "step {step} `{}`: {a} vs {b}", p.name);
            }
        }
    }
    assert_eq!(opt.steps(), 8);
    assert_eq!(refs[2].t, 6, "reference counted skipped steps");
}

#[test]
fn adamw_agrees_with_candle_nn_adamw_when_all_params_decay() {
    use candle_nn::Optimizer;
    let mut rng = Rng::new(3);
    let a = rand_var(&mut rng, &[5, 3]);
    let b = Var::from_tensor(&a.as_tensor().copy().unwrap()).unwrap();
    let mut ours = AdamW::new(vec![Param::with_decay("w", a.clone(), true)], AdamWConfig::default()).unwrap();
    let pc = candle_nn::ParamsAdamW { lr: 3e-3, ..Default::default() };
    let mut theirs = candle_nn::AdamW::new(vec![b.clone()], pc).unwrap();
    let x = rng.normal_tensor((4, 5), 0.0, 1.0, &Device::Cpu).unwrap();
    for _ in 0..5 {
        let ga = x.matmul(a.as_tensor()).unwrap().tanh().unwrap().sum_all().unwrap().backward().unwrap();
        let gb = x.matmul(b.as_tensor()).unwrap().tanh().unwrap().sum_all().unwrap().backward().unwrap();
        ours.step(&ga, 3e-3).unwrap();
        theirs.step(&gb).unwrap();
    }
    for (p, q) in flat(a.as_tensor()).iter().zip(flat(b.as_tensor())) {
        assert!((p - q).abs() < 1e-6, "{p} vs {q}");
    }
}

fn grads_for(params: &[Param], rng: &mut Rng) -> GradStore {
    let mut g = GradStore::default();
    for p in params {
        g.insert(p.var.as_tensor(), rng.normal_tensor(p.var.shape().clone(), 0.0, 1.0, &Device::Cpu).unwrap());
    }
    g
}

fn clone_params(params: &[Param]) -> Vec<Param> {
    params
        .iter()
        .map(|p| Param::with_decay(p.name.clone(), Var::from_tensor(&p.var.as_tensor().copy().unwrap()).unwrap(), p.decay))
        .collect()
}

#[test]
fn exported_state_resumes_identically() {
    let config = AdamWConfig::default();
    let a = setup(4);
    let mut opt_a = AdamW::new(a.clone(), config).unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..3 {
        opt_a.step(&grads_for(&a, &mut rng), 1e-2).unwrap();
    }
    let (tensors, meta) = opt_a.export_state().unwrap();
    assert_eq!(tensors.len(), 6);
    assert!(tensors.contains_key("lm_head.weight.exp_avg_sq"));
    let meta: serde_json::Value = serde_json::from_str(&serde_json::to_string(&meta).unwrap()).unwrap();

    let b = clone_params(&a);
    let mut opt_b = AdamW::new(b.clone(), config).unwrap();
    opt_b.load_state(&tensors, &meta).unwrap();
    assert_eq!(opt_b.steps(), 3);
    let mut rng_b = rng.clone();
    for _ in 0..3 {
        opt_a.step(&grads_for(&a, &mut rng), 1e-2).unwrap();
        opt_b.step(&grads_for(&b, &mut rng_b), 1e-2).unwrap();
    }
    for (pa, pb) in a.iter().zip(&b) {
        assert_eq!(flat(pa.var.as_tensor()), flat(pb.var.as_tensor()), "`{}` diverged after resume", pa.name);
    }
}

#[test]
fn load_state_names_the_offending_parameter() {
    let a = setup(6);
    let mut opt = AdamW::new(a.clone(), AdamWConfig::default()).unwrap();
    opt.step(&grads_for(&a, &mut Rng::new(7)), 1e-3).unwrap();
    let (tensors, meta) = opt.export_state().unwrap();

    // wrong shape of a moment tensor
    let mut bad = tensors.clone();
    bad.insert("lm_head.weight.exp_avg".into(), Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap());
    let mut fresh = AdamW::new(clone_params(&a), AdamWConfig::default()).unwrap();
    let e = fresh.load_state(&bad, &meta).unwrap_err().to_string();
    assert!(e.contains("lm_head.weight.exp_avg") && e.contains("shape"), "{e}");
    assert_eq!(fresh.steps(), 0, "failed load must not change state");

    // missing moment tensor
    let mut bad = tensors.clone();
    bad.remove("model.layers.0.input_layernorm.weight.exp_avg_sq");
    let e = fresh.load_state(&bad, &meta).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.input_layernorm.weight"), "{e}");

    // model has a parameter the state lacks
    let mut more = clone_params(&a);
    more.push(Param::new("extra.weight", rand_var(&mut Rng::new(8), &[2, 2])));
    let e = AdamW::new(more, AdamWConfig::default()).unwrap().load_state(&tensors, &meta).unwrap_err().to_string();
    assert!(e.contains("extra.weight"), "{e}");

    // state has a parameter the model lacks
    let fewer = clone_params(&a[..2]);
    let e = AdamW::new(fewer, AdamWConfig::default()).unwrap().load_state(&tensors, &meta).unwrap_err().to_string();
    assert!(e.contains("lm_head.weight") && e.contains("not a parameter"), "{e}");

    // parameter shape changed
    let mut reshaped = clone_params(&a);
    reshaped[0] = Param::new("model.layers.0.mlp.up_proj.weight", rand_var(&mut Rng::new(9), &[4, 3]));
    let e = AdamW::new(reshaped, AdamWConfig::default()).unwrap().load_state(&tensors, &meta).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.mlp.up_proj.weight"), "{e}");
}

#[test]
fn params_from_varmap_sorted_with_decay_flags() {
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    vb.get((2, 2), "b.weight").unwrap();
    vb.get(2, "a.norm.weight").unwrap();
    let ps = params_from_varmap(&vm);
    let names: Vec<(&str, bool)> = ps.iter().map(|p| (p.name.as_str(), p.decay)).collect();
    assert_eq!(names, [("a.norm.weight", false), ("b.weight", true)]);
    assert!(AdamW::new(vec![ps[0].clone(), ps[0].clone()], AdamWConfig::default()).is_err());
}

#[test]
fn clip_grad_norm_pytorch_semantics() {
    let mut rng = Rng::new(10);
    let vars = [rand_var(&mut rng, &[3, 3]), rand_var(&mut rng, &[5]), rand_var(&mut rng, &[2])];
    let mut grads = GradStore::default();
    let mut ref_sq = 0.0;
    let mut originals = HashMap::new();
    for (i, v) in vars[..2].iter().enumerate() {
        let g = rng.normal_tensor(v.shape().clone(), 0.0, 2.0, &Device::Cpu).unwrap();
        ref_sq += flat(&g).iter().map(|x| x * x).sum::<f64>();
        originals.insert(i, flat(&g));
        grads.insert(v.as_tensor(), g);
    }
    let ref_norm = ref_sq.sqrt();
    assert!((global_grad_norm(&grads, &vars).unwrap() - ref_norm).abs() < 1e-9 * ref_norm);

    // above the limit: scaled by max/(norm+1e-6)
    let max = ref_norm / 4.0;
    let before = clip_grad_norm(&mut grads, &vars, max).unwrap();
    assert!((before - ref_norm).abs() < 1e-9 * ref_norm);
    let coef = max / (ref_norm + 1e-6);
    for (i, v) in vars[..2].iter().enumerate() {
        for (a, b) in flat(grads.get(v.as_tensor()).unwrap()).iter().zip(&originals[&i]) {
            assert!((a - b * coef).abs() < 1e-6, "{a} vs {}", b * coef);
        }
    }
    assert!(grads.get(vars[2].as_tensor()).is_none());
    let after = global_grad_norm(&grads, &vars).unwrap();
    assert!((after - max).abs() < 1e-5 * max, "{after} vs {max}");

    // below the limit: untouched
    let snapshot = flat(grads.get(vars[0].as_tensor()).unwrap());
    let n = clip_grad_norm(&mut grads, &vars, 10.0 * max).unwrap();
    assert!((n - after).abs() < 1e-9);
    assert_eq!(flat(grads.get(vars[0].as_tensor()).unwrap()), snapshot);
}
