//! The model's training forward and the trainer, checked against independent references:
//! finite differences for every parameter's gradient (dense and MoE, with masks), overfitting,
//! exact resume, LoRA-only training, DPO and distillation moving the right way.
use bunmind_engine::model::{LoraAdapters, LoraConfig, Model, ModelConfig};
use bunmind_engine::train::{check_gradients, masked_cross_entropy, GradCheckConfig};
use bunmind_engine::trainer::{Batch, Objective, Trainer, TrainerConfig};
use candle_core::{Device, Tensor};

mod common;
use common::shifted_batch as batch;

fn tiny(moe: bool, qk_norm: bool) -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.hidden_size = 16;
    c.num_attention_heads = 4;
    c.num_key_value_heads = Some(2);
    c.intermediate_size = 24;
    c.vocab_size = 40;
    c.num_hidden_layers = 2;
    c.max_position_embeddings = 64;
    c.qk_norm = Some(qk_norm);
    if moe {
        c.use_moe = true;
        c.num_experts = 3;
        c.num_experts_per_tok = 2;
        c.n_shared_experts = 1;
        c.router_aux_loss_coef = 0.05;
    }
    c
}

fn grad_check(cfg: ModelConfig) {
    let model = Model::new(&cfg, 7, &Device::Cpu).unwrap();
    let bt = batch(2, 6, cfg.vocab_size as u32, 3);
    let ids = Tensor::from_slice(&bt.ids, (bt.b, bt.t), &Device::Cpu).unwrap();
    let targets = Tensor::from_slice(&bt.targets, (bt.b, bt.t), &Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&bt.mask, (bt.b, bt.t), &Device::Cpu).unwrap();
    let vars: Vec<(String, candle_core::Var)> = model.named_parameters().into_iter().map(|p| (p.name, p.var)).collect();
    assert!(!vars.is_empty());
    let report = check_gradients(
        &vars,
        || {
            let (logits, aux) = model.forward_train(&ids)?;
            Ok((masked_cross_entropy(&logits, &targets, &mask)? + aux)?)
        },
        &GradCheckConfig { max_elems_per_var: 24, ..GradCheckConfig::default() },
    )
    .unwrap();
    // Every parameter must receive a gradient that matches finite differences.
    assert!(report.passed(), "{report}");
    assert_eq!(report.vars.len(), vars.len());
}

#[test]
fn every_parameter_gradient_matches_finite_differences_biases_and_hf_rope() {
    // Imported-model features: q/k/v/o and MLP biases (Llama attention_bias + mlp_bias) and
    // transformers' YaRN, which (unlike MiniMind's) applies to the training forward too.
    let mut c = tiny(false, false);
    (c.qkv_bias, c.o_bias, c.mlp_bias) = (true, true, true);
    c.rope_parameters = Some(bunmind_engine::model::RopeParameters::Yarn {
        factor: 4.0,
        original_max_position_embeddings: 16,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: 1.1386,
        truncate: true,
    });
    grad_check(c);
}

#[test]
fn every_parameter_gradient_matches_finite_differences_dense() {
    grad_check(tiny(false, false));
}

#[test]
fn every_parameter_gradient_matches_finite_differences_dense_qk_norm() {
    grad_check(tiny(false, true));
}

#[test]
fn every_parameter_gradient_matches_finite_differences_moe() {
    grad_check(tiny(true, false));
}

fn run(cfg: &ModelConfig, tc: TrainerConfig, steps: usize, lr: f64) -> (Trainer, Vec<f64>) {
    let model = Model::new(cfg, 1, &Device::Cpu).unwrap();
    let mut tr = Trainer::new(model, tc, None, None).unwrap();
    let bt = batch(4, 8, cfg.vocab_size as u32, 11);
    let losses = (0..steps).map(|_| tr.step(std::slice::from_ref(&bt), lr).unwrap().loss).collect();
    (tr, losses)
}

#[test]
fn tiny_model_overfits_a_small_batch() {
    let cfg = tiny(false, false);
    let (_, losses) = run(&cfg, TrainerConfig { weight_decay: 0.0, ..Default::default() }, 200, 1e-2);
    let first = losses[0];
    let last = *losses.last().unwrap();
    assert!(first > 3.0, "initial loss {first} should be near ln(40) = 3.69");
    assert!(last < 0.1, "loss after 200 steps: {last} (losses {:?})", &losses[losses.len() - 5..]);
}

#[test]
fn resume_reproduces_the_loss_sequence_exactly() {
    let mut cfg = tiny(true, true);
    cfg.dropout = 0.1; // dropout masks come from the trainer's RNG: they must resume too
    let tc = TrainerConfig::default();
    let batches: Vec<Batch> = (0..6).map(|i| batch(2, 8, cfg.vocab_size as u32, 100 + i)).collect();
    let lrs = [1e-3, 2e-3, 3e-3, 2e-3, 1e-3, 5e-4];

    let mut straight = Trainer::new(Model::new(&cfg, 5, &Device::Cpu).unwrap(), tc.clone(), None, None).unwrap();
    let want: Vec<f64> = (0..6).map(|i| straight.step(&[batches[i].clone()], lrs[i]).unwrap().loss).collect();

    let dir = std::env::temp_dir().join(format!("bm-resume-{}", std::process::id()));
    let mut first = Trainer::new(Model::new(&cfg, 5, &Device::Cpu).unwrap(), tc.clone(), None, None).unwrap();
    let mut got: Vec<f64> = (0..3).map(|i| first.step(&[batches[i].clone()], lrs[i]).unwrap().loss).collect();
    first.save_checkpoint(&dir, serde_json::json!({ "sampler": 3 })).unwrap();
    drop(first);
    // A fresh process would build the model from another seed: the checkpoint must override it.
    let mut second = Trainer::new(Model::new(&cfg, 999, &Device::Cpu).unwrap(), tc, None, None).unwrap();
    let extra = second.load_checkpoint(&dir).unwrap();
    assert_eq!(extra["sampler"], 3);
    assert_eq!(second.step_count(), 3);
    got.extend((3..6).map(|i| second.step(&[batches[i].clone()], lrs[i]).unwrap().loss));
    assert_eq!(got, want, "resumed losses must equal the uninterrupted run bit for bit");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let cfg = tiny(false, false);
    let a = batch(2, 8, cfg.vocab_size as u32, 1);
    let b = batch(2, 8, cfg.vocab_size as u32, 2);
    let big = Batch {
        ids: [a.ids.clone(), b.ids.clone()].concat(),
        targets: [a.targets.clone(), b.targets.clone()].concat(),
        mask: [a.mask.clone(), b.mask.clone()].concat(),
        b: 4,
        t: 8,
    };
    let mut t1 = Trainer::new(Model::new(&cfg, 3, &Device::Cpu).unwrap(), TrainerConfig::default(), None, None).unwrap();
    let mut t2 = Trainer::new(Model::new(&cfg, 3, &Device::Cpu).unwrap(), TrainerConfig::default(), None, None).unwrap();
    let r1 = t1.step(&[a, b], 1e-3).unwrap();
    let r2 = t2.step(&[big], 1e-3).unwrap();
    assert!((r1.loss - r2.loss).abs() < 1e-5, "{} vs {}", r1.loss, r2.loss);
    assert!((r1.grad_norm - r2.grad_norm).abs() < 1e-4 * r2.grad_norm.max(1.0));
    let w1 = t1.model.state_dict();
    let w2 = t2.model.state_dict();
    for (k, v) in &w1 {
        let d = (v - &w2[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{k}: {d}");
    }
}

/// Tensors with storage of their own (a state dict shares the Vars' storage).
fn deep_copy(w: std::collections::HashMap<String, Tensor>) -> std::collections::HashMap<String, Tensor> {
    w.into_iter().map(|(k, v)| (k, v.copy().unwrap())).collect()
}

#[test]
fn lora_trains_only_the_adapters_and_merges_exactly() {
    let cfg = tiny(false, false);
    let base = Model::new(&cfg, 4, &Device::Cpu).unwrap();
    let before = deep_copy(base.state_dict()); // (AdamW updates the Vars' storage in place)
    let tc = TrainerConfig { lora: Some(LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() }), ..Default::default() };
    let mut tr = Trainer::new(base, tc, None, None).unwrap();
    assert!(tr.trainable_parameters() < 1000);
    let bt = batch(2, 8, cfg.vocab_size as u32, 9);
    let l0 = tr.step(std::slice::from_ref(&bt), 1e-2).unwrap().loss;
    let mut l = l0;
    for _ in 0..30 {
        l = tr.step(std::slice::from_ref(&bt), 1e-2).unwrap().loss;
    }
    assert!(l < l0 - 0.1, "LoRA training should lower the loss: {l0} → {l}");
    // Base weights untouched.
    for (k, v) in tr.model.state_dict() {
        let d = (&v - &before[&k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} changed during LoRA training");
    }
    let ids = Tensor::from_slice(&bt.ids, (bt.b, bt.t), &Device::Cpu).unwrap();
    let (with_adapter, _) = tr.model.forward_train(&ids).unwrap();
    tr.model.merge_lora().unwrap();
    let (merged, _) = tr.model.forward_train(&ids).unwrap();
    let d = (with_adapter - merged).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-4, "merged logits differ from base+adapter by {d}");
}

#[test]
fn lora_dropout_is_drawn_without_model_dropout() {
    // lora_dropout masks the adapters' inputs even when the model itself has no dropout: the
    // gradients of B (hence the second step's loss) differ from a dropout-free run (by ~1e-4
    // here; ~2e-7 when no mask is drawn, the fast step's rounding against autograd's).
    let cfg = tiny(false, false);
    assert_eq!(cfg.dropout, 0.0);
    let bt = batch(2, 8, cfg.vocab_size as u32, 9);
    let losses = |p: f64| {
        let tc = TrainerConfig { lora: Some(LoraConfig { r: 4, lora_alpha: 8.0, lora_dropout: p, ..LoraConfig::default() }), ..Default::default() };
        let mut tr = Trainer::new(Model::new(&cfg, 4, &Device::Cpu).unwrap(), tc, None, None).unwrap();
        (0..2).map(|_| tr.step(std::slice::from_ref(&bt), 1e-2).unwrap().loss).collect::<Vec<f64>>()
    };
    let (plain, dropped) = (losses(0.0), losses(0.5));
    assert!((plain[0] - dropped[0]).abs() < 1e-5, "B = 0 at first: same first loss {plain:?} vs {dropped:?}");
    assert!((plain[1] - dropped[1]).abs() > 2e-5, "LoRA dropout had no effect: {plain:?} vs {dropped:?}");
}

#[test]
fn full_training_of_a_model_carrying_adapters_updates_the_base() {
    // Adapters attached before a full-weight trainer (as `bm_model_load_lora` without merging
    // allows) stay fixed while every base weight trains: the step must give the base gradients.
    let cfg = tiny(false, false);
    let mut model = Model::new(&cfg, 4, &Device::Cpu).unwrap();
    let ad = LoraAdapters::new(&model, LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() }, 1).unwrap();
    model.attach_lora(&ad).unwrap();
    let before = deep_copy(model.state_dict());
    let mut tr = Trainer::new(model, TrainerConfig::default(), None, None).unwrap();
    let bt = batch(2, 8, cfg.vocab_size as u32, 9);
    tr.step(std::slice::from_ref(&bt), 1e-2).unwrap();
    for (k, v) in tr.model.state_dict() {
        let d = (&v - &before[&k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d > 0.0, "{k} did not train");
    }
}

#[test]
fn dpo_lowers_its_loss_and_prefers_chosen() {
    let cfg = tiny(false, false);
    let policy = Model::new(&cfg, 6, &Device::Cpu).unwrap();
    let reference = Model::new(&cfg, 6, &Device::Cpu).unwrap();
    let tc = TrainerConfig { objective: Objective::Dpo { beta: 0.5 }, ..Default::default() };
    let mut tr = Trainer::new(policy, tc, Some(reference), None).unwrap();
    let chosen = batch(2, 8, cfg.vocab_size as u32, 21);
    let rejected = batch(2, 8, cfg.vocab_size as u32, 22);
    let pair = Batch {
        ids: [chosen.ids, rejected.ids].concat(),
        targets: [chosen.targets, rejected.targets].concat(),
        mask: [chosen.mask, rejected.mask].concat(),
        b: 4,
        t: 8,
    };
    let first = tr.step(std::slice::from_ref(&pair), 5e-3).unwrap();
    // Policy == reference at the start: loss = ln 2.
    assert!((first.loss - std::f64::consts::LN_2).abs() < 1e-4, "{}", first.loss);
    let mut last = first.clone();
    for _ in 0..20 {
        last = tr.step(std::slice::from_ref(&pair), 5e-3).unwrap();
    }
    assert!(last.loss < first.loss - 0.1, "{} → {}", first.loss, last.loss);
    assert!(last.dpo.unwrap().reward_margin > 0.0);
}

#[test]
fn distillation_pulls_the_student_toward_the_teacher() {
    let cfg = tiny(false, false);
    let student = Model::new(&cfg, 8, &Device::Cpu).unwrap();
    let teacher = Model::new(&cfg, 9, &Device::Cpu).unwrap();
    let tc = TrainerConfig { objective: Objective::Distill { alpha: 0.0, temperature: 1.5 }, weight_decay: 0.0, ..Default::default() };
    let mut tr = Trainer::new(student, tc, None, Some(teacher)).unwrap();
    let bt = batch(2, 8, cfg.vocab_size as u32, 31);
    let k0 = tr.step(std::slice::from_ref(&bt), 5e-3).unwrap().kl.unwrap();
    let mut k = k0;
    for _ in 0..30 {
        k = tr.step(std::slice::from_ref(&bt), 5e-3).unwrap().kl.unwrap();
    }
    assert!(k < k0 * 0.5, "KL should drop: {k0} → {k}");
}

#[test]
fn bad_batches_and_objectives_are_clear_errors() {
    let cfg = tiny(false, false);
    let model = Model::new(&cfg, 1, &Device::Cpu).unwrap();
    let e = Trainer::new(model, TrainerConfig { objective: Objective::Dpo { beta: 0.1 }, ..Default::default() }, None, None).err().unwrap();
    assert!(e.to_string().contains("reference"), "{e}");
    let (mut tr, _) = run(&cfg, TrainerConfig::default(), 0, 0.0);
    let mut bt = batch(2, 4, 40, 1);
    bt.mask.pop();
    let e = tr.step(&[bt], 1e-3).unwrap_err().to_string();
    assert!(e.contains("mask") && e.contains("expected"), "{e}");
    let mut bt = batch(1, 4, 40, 1);
    bt.ids[2] = 4000;
    let e = tr.step(&[bt], 1e-3).unwrap_err().to_string();
    assert!(e.contains("4000"), "{e}");
}
