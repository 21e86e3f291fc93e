//! The hand-written dense training step (`bunmind_engine::fast`) against two independent
//! references: candle's autograd over the model's training graph (loss and every parameter's
//! gradient), and central finite differences of the loss; for full training and for LoRA
//! adapters on a frozen base (gradients of the adapters only).
use bunmind_engine::fast;
use bunmind_engine::model::{LoraAdapters, LoraConfig, Model, ModelConfig};
use bunmind_engine::train::masked_cross_entropy_sum;
use bunmind_engine::trainer::{Batch, Trainer, TrainerConfig};
use candle_core::{Device, Tensor};

mod common;
use common::{random_batch as batch, small_config as cfg};


/// (Σ CE(θ + h·eᵢ) − Σ CE(θ − h·eᵢ)) / 2h for entry `i` of `var` (whose values are `base`),
/// from the fast step's loss; `var` is restored afterwards.
fn central_difference(model: &Model, bt: &Batch, var: &candle_core::Var, base: &[f32], shape: &candle_core::Shape, i: usize, h: f32) -> f64 {
    let at = |delta: f32| {
        let mut v = base.to_vec();
        v[i] += delta;
        var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
        fast::lm_step(model, &bt.ids, &bt.targets, &bt.mask, bt.b, bt.t).unwrap().loss_sum
    };
    let fd = (at(h) - at(-h)) / (2.0 * h as f64);
    var.set(&Tensor::from_vec(base.to_vec(), shape.clone(), &Device::Cpu).unwrap()).unwrap();
    fd
}

/// The autograd reference: Σ masked CE, its count, and d/dθ for every parameter by name.
fn autograd(model: &Model, bt: &Batch) -> (f64, usize, Vec<(String, Vec<f32>)>) {
    let dev = Device::Cpu;
    let ids = Tensor::from_slice(&bt.ids, (bt.b, bt.t), &dev).unwrap();
    let targets = Tensor::from_slice(&bt.targets, (bt.b, bt.t), &dev).unwrap();
    let mask = Tensor::from_slice(&bt.mask, (bt.b, bt.t), &dev).unwrap();
    let (logits, _) = model.forward_train(&ids).unwrap();
    let ce = masked_cross_entropy_sum(&logits, &targets, &mask).unwrap();
    let grads = ce.sum.backward().unwrap();
    let loss = ce.sum.to_scalar::<f32>().unwrap() as f64;
    let g = model
        .named_parameters()
        .into_iter()
        .map(|p| (p.name.clone(), grads.get(p.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    (loss, ce.count, g)
}

fn compare(c: ModelConfig, b: usize, t: usize, holes: bool) {
    let model = Model::new(&c, 11, &Device::Cpu).unwrap();
    assert!(fast::unsupported(&model).is_none());
    let bt = batch(b, t, c.vocab_size as u32, 5, holes);
    let (loss, count, want) = autograd(&model, &bt);
    let got = fast::lm_step(&model, &bt.ids, &bt.targets, &bt.mask, b, t).unwrap();
    assert_eq!(got.count, count);
    assert!((got.loss_sum - loss).abs() <= 1e-4 * loss.abs().max(1.0), "loss {} vs autograd {loss}", got.loss_sum);
    let params = model.named_parameters();
    assert_eq!(params.len(), want.len());
    for (p, (name, w)) in params.iter().zip(&want) {
        let g = got.grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g.len(), w.len(), "{name}");
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 2e-4 * scale, "{name}: max |fast − autograd| = {worst} (max |grad| {scale})");
    }
}

fn all_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
}

/// `c`'s model with adapters on `targets` (rank 4, alpha 8: scale 2) whose B matrices are
/// non-zero (B = 0 at init would zero every gradient of A).
fn lora_model(c: &ModelConfig, targets: &[String], seed: u64) -> (Model, LoraAdapters) {
    let mut model = Model::new(c, seed, &Device::Cpu).unwrap();
    let lc = LoraConfig { r: 4, lora_alpha: 8.0, target_modules: targets.to_vec(), ..Default::default() };
    let ad = LoraAdapters::new(&model, lc, seed + 1).unwrap();
    for (j, p) in ad.named_parameters().into_iter().enumerate() {
        // B ~ 0.3·sin, A scaled up to 0.1-ish: the adapters visibly change the output.
        let n = p.var.elem_count();
        let v: Vec<f32> = if p.name.ends_with("lora_B.weight") {
            (0..n).map(|i| 0.3 * ((i * 7 + j * 13) as f32 * 0.37).sin()).collect()
        } else {
            p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x * 5.0).collect()
        };
        p.var.set(&Tensor::from_vec(v, p.var.shape().clone(), &Device::Cpu).unwrap()).unwrap();
    }
    model.attach_lora(&ad).unwrap();
    (model, ad)
}

/// LoRA: the fast step's loss and adapter gradients against autograd's, and its GradStore holds
/// the adapters' tensors and nothing else (no frozen base weight).
fn compare_lora(c: ModelConfig, targets: &[String], b: usize, t: usize) {
    let (model, ad) = lora_model(&c, targets, 21);
    assert!(fast::unsupported_step(&model).is_none());
    let bt = batch(b, t, c.vocab_size as u32, 6, true);
    let dev = Device::Cpu;
    let ids = Tensor::from_slice(&bt.ids, (b, t), &dev).unwrap();
    let tg = Tensor::from_slice(&bt.targets, (b, t), &dev).unwrap();
    let mask = Tensor::from_slice(&bt.mask, (b, t), &dev).unwrap();
    let (logits, _) = model.forward_train(&ids).unwrap();
    let ce = masked_cross_entropy_sum(&logits, &tg, &mask).unwrap();
    let want = ce.sum.backward().unwrap();
    let loss = ce.sum.to_scalar::<f32>().unwrap() as f64;

    let got = fast::lm_step(&model, &bt.ids, &bt.targets, &bt.mask, b, t).unwrap();
    assert_eq!(got.count, ce.count);
    assert!((got.loss_sum - loss).abs() <= 1e-4 * loss.abs().max(1.0), "loss {} vs autograd {loss}", got.loss_sum);
    let params = ad.named_parameters();
    assert_eq!(params.len(), 2 * targets.len() * c.num_hidden_layers);
    assert_eq!(got.grads.get_ids().count(), params.len(), "the GradStore holds exactly the adapter tensors");
    for p in model.named_parameters() {
        assert!(got.grads.get(p.var.as_tensor()).is_none(), "{}: frozen base weight got a gradient", p.name);
    }
    for p in &params {
        let name = &p.name;
        let w = want.get(p.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = got.grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), p.var.dims(), "{name}");
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3, "{name}: the reference gradient is ~0 ({scale}); the test would be vacuous");
        let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 2e-4 * scale, "{name}: max |fast − autograd| = {worst} (max |grad| {scale})");
    }
}

#[test]
fn lora_q_o_matches_autograd_gqa_tied() {
    // t = 70 spans two causal blocks; MiniMind's default targets.
    compare_lora(cfg(32, 4, 2, true, false), &["q_proj".into(), "o_proj".into()], 2, 70);
}

#[test]
fn lora_all_projections_match_autograd_qk_norm_untied() {
    let mut c = cfg(24, 3, 1, false, true);
    c.qk_norm = Some(true);
    compare_lora(c, &all_targets(), 3, 17);
}

#[test]
fn lora_matches_finite_differences() {
    // Central differences of Σ CE on entries of every third adapter tensor (A and B of q, v, up, ...).
    let c = cfg(16, 4, 2, false, false);
    let (model, ad) = lora_model(&c, &all_targets(), 5);
    let bt = batch(2, 9, c.vocab_size as u32, 9, true);
    let step = fast::lm_step(&model, &bt.ids, &bt.targets, &bt.mask, bt.b, bt.t).unwrap();
    let h = 1e-2f32;
    let mut checked = 0;
    for p in ad.named_parameters().into_iter().step_by(3) {
        let base = p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = step.grads.get(p.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let shape = p.var.as_tensor().shape().clone();
        // The entry with the largest gradient, and two fixed ones.
        let big = (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
        for &i in &[big, 0, base.len() / 2] {
            let fd = central_difference(&model, &bt, &p.var, &base, &shape, i, h);
            let an = g[i] as f64;
            if i == big {
                assert!(an.abs() > 2e-3, "{}: largest gradient {an} is too small to check", p.name);
            }
            // 2% relative, with a floor above the f32 loss's noise (~5e-5 here).
            assert!((fd - an).abs() <= 2e-2 * an.abs().max(0.01), "{}[{i}]: finite difference {fd} vs analytic {an}", p.name);
            checked += 1;
        }
    }
    assert!(checked >= 3 * 9, "{checked}");
}

#[test]
fn matches_autograd_gqa_tied_with_mask_holes_and_several_attention_blocks() {
    // t = 150 spans three 64-row causal blocks (the last one partial).
    compare(cfg(32, 4, 2, true, false), 2, 150, true);
}

#[test]
fn matches_autograd_mha_untied_interleaved_rope() {
    compare(cfg(24, 3, 3, false, true), 3, 17, true);
}

#[test]
fn matches_autograd_gqa_rep4_single_row() {
    compare(cfg(32, 8, 2, true, false), 1, 66, false);
}

#[test]
fn matches_autograd_with_qk_norm() {
    let mut c = cfg(32, 4, 2, true, false);
    c.qk_norm = Some(true);
    compare(c, 2, 70, true);
}

#[test]
fn matches_finite_differences() {
    // Central differences of Σ CE in f64 arithmetic on the f32 model: perturb single weights.
    let c = cfg(16, 4, 2, true, false);
    let model = Model::new(&c, 3, &Device::Cpu).unwrap();
    let bt = batch(2, 9, c.vocab_size as u32, 9, true);
    let step = fast::lm_step(&model, &bt.ids, &bt.targets, &bt.mask, bt.b, bt.t).unwrap();
    let h = 1e-2f32;
    let mut checked = 0;
    for p in model.named_parameters() {
        let base = p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = step.grads.get(p.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let shape = p.var.as_tensor().shape().clone();
        for &i in &[0, base.len() / 3, base.len() - 1] {
            let fd = central_difference(&model, &bt, &p.var, &base, &shape, i, h);
            let an = g[i] as f64;
            assert!((fd - an).abs() <= 2e-2 * an.abs().max(0.05), "{}[{i}]: finite difference {fd} vs analytic {an}", p.name);
            checked += 1;
        }
    }
    assert!(checked >= 3 * 20);
}

#[test]
fn trainer_fast_and_autograd_steps_agree() {
    // Same seed, same batches: five optimizer steps with the fast step and with autograd, for full
    // training and for LoRA. (One test function: it toggles BUNMIND_FAST_STEP, the old name of BUNMIND_HANDWRITTEN_CPU,
    // which is global.)
    let run = |c: &ModelConfig, tc: &TrainerConfig, lr: f64, fast_on: bool| {
        std::env::set_var("BUNMIND_FAST_STEP", if fast_on { "1" } else { "0" });
        let model = Model::new(c, 1, &Device::Cpu).unwrap();
        let mut tr = Trainer::new(model, tc.clone(), None, None).unwrap();
        // The trainer takes the fast step exactly when the switch is on and the model qualifies.
        assert!(fast::unsupported_step(&tr.model).is_none());
        assert_eq!(fast::enabled(), fast_on);
        let want = if fast_on { "handwritten" } else { "autograd" };
        assert_eq!(tr.step_path().name(), want);
        assert_eq!(tr.step_path().reason().is_some(), !fast_on);
        let losses: Vec<f64> = (0..5)
            .map(|_| {
                let micro = [batch(2, 40, c.vocab_size as u32, 1, true), batch(1, 40, c.vocab_size as u32, 100, true)];
                let r = tr.step(&micro, lr).unwrap();
                assert_eq!(r.step_path, want);
                r.loss
            })
            .collect();
        std::env::remove_var("BUNMIND_FAST_STEP");
        losses
    };
    let mut qk = cfg(32, 4, 2, false, false);
    qk.qk_norm = Some(true);
    let lora = |targets: Vec<String>| TrainerConfig {
        lora: Some(LoraConfig { r: 4, lora_alpha: 8.0, target_modules: targets, ..Default::default() }),
        ..Default::default()
    };
    let cases = [
        ("full", cfg(32, 4, 2, true, false), TrainerConfig::default(), 3e-3),
        ("LoRA q,o", cfg(32, 4, 2, true, false), lora(vec!["q_proj".into(), "o_proj".into()]), 2e-2),
        ("LoRA all, QK-norm, untied", qk, lora(all_targets()), 2e-2),
    ];
    for (what, c, tc, lr) in &cases {
        let (a, b) = (run(c, tc, *lr, true), run(c, tc, *lr, false));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-3 * y.abs(), "{what}: fast {a:?} vs autograd {b:?}");
        }
        assert!(a[4] < a[0], "{what}: loss should fall: {a:?}");
    }
}

#[test]
fn declines_what_it_does_not_implement() {
    let mut moe = cfg(16, 4, 2, true, false);
    moe.use_moe = true;
    moe.num_experts = 2;
    let m = Model::new(&moe, 1, &Device::Cpu).unwrap();
    assert!(fast::unsupported(&m).unwrap().contains("mixture"));
    let mut bf = Model::new(&cfg(16, 4, 2, true, false), 1, &Device::Cpu).unwrap();
    bf.set_autocast(Some(candle_core::DType::BF16));
    assert!(fast::unsupported(&bf).unwrap().contains("autocast"));
    // LoRA without dropout trains here; with dropout on the adapters' inputs it does not (the
    // forward alone, e.g. prefill, still applies: inference draws no dropout).
    let base = Model::new(&cfg(16, 4, 2, true, false), 1, &Device::Cpu).unwrap();
    let tr = Trainer::new(base, TrainerConfig { lora: Some(LoraConfig::default()), ..Default::default() }, None, None).unwrap();
    assert!(fast::unsupported_step(&tr.model).is_none());
    let base = Model::new(&cfg(16, 4, 2, true, false), 1, &Device::Cpu).unwrap();
    let lc = LoraConfig { lora_dropout: 0.1, ..Default::default() };
    let tr = Trainer::new(base, TrainerConfig { lora: Some(lc), ..Default::default() }, None, None).unwrap();
    assert!(fast::unsupported_step(&tr.model).unwrap().contains("LoRA dropout"));
    assert!(fast::unsupported(&tr.model).is_none());
    let bt = batch(1, 8, 53, 1, false);
    let e = fast::lm_step(&tr.model, &bt.ids, &bt.targets, &bt.mask, 1, 8).err().unwrap().to_string();
    assert!(e.contains("LoRA dropout"), "{e}");
    let mut dc = cfg(16, 4, 2, true, false);
    dc.dropout = 0.1;
    assert!(fast::unsupported_step(&Model::new(&dc, 1, &Device::Cpu).unwrap()).unwrap().contains("dropout"));
}

#[test]
fn bad_input_is_named() {
    let c = cfg(16, 4, 2, true, false);
    let model = Model::new(&c, 1, &Device::Cpu).unwrap();
    let mut bt = batch(1, 8, c.vocab_size as u32, 1, false);
    bt.ids[5] = 999;
    let e = fast::lm_step(&model, &bt.ids, &bt.targets, &bt.mask, 1, 8).err().unwrap().to_string();
    assert!(e.contains("token id 999 at position 5"), "{e}");
    let mut bt = batch(1, 8, c.vocab_size as u32, 1, false);
    bt.targets[2] = 77;
    let e = fast::lm_step(&model, &bt.ids, &bt.targets, &bt.mask, 1, 8).err().unwrap().to_string();
    assert!(e.contains("target id 77"), "{e}");
    let long = batch(1, 300, c.vocab_size as u32, 1, false);
    let e = fast::lm_step(&model, &long.ids, &long.targets, &long.mask, 1, 300).err().unwrap().to_string();
    assert!(e.contains("max_position_embeddings"), "{e}");
}
