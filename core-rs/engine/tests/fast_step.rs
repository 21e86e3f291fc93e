//! The hand-written dense training step (`bunmind_engine::fast`) against two independent
//! references: candle's autograd over the model's training graph (loss and every parameter's
//! gradient), and central finite differences of the loss.
use bunmind_engine::fast;
use bunmind_engine::model::{LoraConfig, Model, ModelConfig};
use bunmind_engine::train::masked_cross_entropy_sum;
use bunmind_engine::trainer::{Batch, Trainer, TrainerConfig};
use candle_core::{Device, Tensor};

mod common;
use common::random_batch as batch;

fn cfg(hidden: usize, heads: usize, kv: usize, tied: bool, interleaved: bool) -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.hidden_size = hidden;
    c.num_attention_heads = heads;
    c.num_key_value_heads = Some(kv);
    c.intermediate_size = hidden * 3 / 2;
    c.vocab_size = 53;
    c.num_hidden_layers = 2;
    c.max_position_embeddings = 256;
    c.tie_word_embeddings = tied;
    c.rope_interleaved = interleaved;
    c.rope_theta = 1000.0;
    c
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
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                p.var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
                fast::lm_step(&model, &bt.ids, &bt.targets, &bt.mask, bt.b, bt.t).unwrap().loss_sum
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            p.var.set(&Tensor::from_vec(base.clone(), shape.clone(), &Device::Cpu).unwrap()).unwrap();
            let an = g[i] as f64;
            assert!((fd - an).abs() <= 2e-2 * an.abs().max(0.05), "{}[{i}]: finite difference {fd} vs analytic {an}", p.name);
            checked += 1;
        }
    }
    assert!(checked >= 3 * 20);
}

#[test]
fn trainer_fast_and_autograd_steps_agree() {
    // Same seed, same batches: five optimizer steps with the fast step and with autograd.
    let c = cfg(32, 4, 2, true, false);
    let run = |fast_on: bool| {
        std::env::set_var("BUNMIND_FAST_STEP", if fast_on { "1" } else { "0" });
        let model = Model::new(&c, 1, &Device::Cpu).unwrap();
        let mut tr = Trainer::new(model, TrainerConfig::default(), None, None).unwrap();
        let losses: Vec<f64> = (0..5)
            .map(|_| {
                let micro = [batch(2, 40, c.vocab_size as u32, 1, true), batch(1, 40, c.vocab_size as u32, 100, true)];
                tr.step(&micro, 3e-3).unwrap().loss
            })
            .collect();
        std::env::remove_var("BUNMIND_FAST_STEP");
        losses
    };
    let (a, b) = (run(true), run(false));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-3 * y.abs(), "fast {a:?} vs autograd {b:?}");
    }
    assert!(a[4] < a[0], "loss should fall: {a:?}");
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
    let base = Model::new(&cfg(16, 4, 2, true, false), 1, &Device::Cpu).unwrap();
    let tr = Trainer::new(base, TrainerConfig { lora: Some(LoraConfig::default()), ..Default::default() }, None, None).unwrap();
    assert!(fast::unsupported(&tr.model).unwrap().contains("LoRA"));
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
