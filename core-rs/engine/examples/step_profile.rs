//! Times the phases of one training step on a small model: forward, loss, backward, optimizer.
//!   cargo run --release --example step_profile -- [hidden layers vocab seq batch]
//!   cargo run --release --example step_profile -- PRESET [seq batch]      (e.g. minimind2-small)
//! `FAST=1` times the hand-written step (`bunmind_engine::fast::lm_step`) instead of autograd.
//! `LORA=1` (MiniMind's adapters: rank 16 on q_proj, o_proj), `LORA=all` (all seven projections)
//! or `LORA=q_proj,v_proj,...` times whole `Trainer::step`s of LoRA training instead (one
//! micro-batch, grad clipping, AdamW on the adapters); `LORA_R` sets the rank. The trainer takes
//! the hand-written step unless `BUNMIND_HANDWRITTEN_CPU=0` (old name `BUNMIND_FAST_STEP`).
use std::time::Instant;

use bunmind_engine::model::lora::LORA_TARGETS;
use bunmind_engine::model::{LoraConfig, Model, ModelConfig};
use bunmind_engine::train::{masked_cross_entropy_sum, AdamW, AdamWConfig, Param};
use bunmind_engine::trainer::{Batch, Trainer, TrainerConfig};
use candle_core::{Device, Tensor};

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0])
}

fn main() -> bunmind_engine::Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &String| s.parse::<usize>().unwrap();
    let (cfg, t, b) = match raw.first() {
        Some(p) if p.parse::<usize>().is_err() => {
            let (t, b) = match &raw[1..] {
                [t, b] => (num(t), num(b)),
                _ => (256, 4),
            };
            (ModelConfig::preset(p)?, t, b)
        }
        _ => {
            let args: Vec<usize> = raw.iter().map(num).collect();
            let (h, l, v, t, b) = match args.as_slice() {
                [h, l, v, t, b] => (*h, *l, *v, *t, *b),
                _ => (64, 2, 2000, 128, 8),
            };
            let mut cfg = ModelConfig::preset("tiny")?;
            cfg.hidden_size = h;
            cfg.num_hidden_layers = l;
            cfg.vocab_size = v;
            cfg.intermediate_size = h * 3;
            (cfg, t, b)
        }
    };
    let v = cfg.vocab_size;
    let iters: usize = std::env::var("ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let dev = Device::Cpu;
    if let Ok(targets) = std::env::var("LORA") {
        let target_modules: Vec<String> = match targets.as_str() {
            "1" => LoraConfig::default().target_modules,
            "all" => LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            list => list.split(',').map(|s| s.trim().to_string()).collect(),
        };
        let r: usize = std::env::var("LORA_R").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
        let lora = LoraConfig { r, lora_alpha: r as f64, target_modules, ..Default::default() };
        let path = if bunmind_engine::fast::enabled() { "hand-written step" } else { "autograd (BUNMIND_HANDWRITTEN_CPU=0)" };
        println!("LoRA r={r} on {:?}, {path}, hidden {} × {} layers, vocab {v}, batch {b}×{t}", lora.target_modules, cfg.hidden_size, cfg.num_hidden_layers);
        let model = Model::new(&cfg, 1, &dev)?;
        let mut tr = Trainer::new(model, TrainerConfig { lora: Some(lora), ..Default::default() }, None, None)?;
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % v) as u32).collect();
        let batch = Batch { ids, targets, mask: vec![1.0; b * t], b, t };
        let mut totals = Vec::new();
        for it in 0..=iters {
            let t0 = Instant::now();
            let r = tr.step(std::slice::from_ref(&batch), 1e-3)?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if it > 0 {
                totals.push(ms);
                println!("trainer step {ms:.1} ms (loss {:.4})", r.loss);
            }
        }
        let (med, min) = median(totals);
        println!("median trainer step {med:.1} ms over {iters} steps (min {min:.1})");
        return Ok(());
    }
    let model = Model::new(&cfg, 1, &dev)?;
    let params: Vec<Param> = model.named_parameters().into_iter().map(|p| Param::of(p, false)).collect();
    let mut opt = AdamW::new(params, AdamWConfig::default())?;
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
    let ids_v = ids.clone();
    let mask_v = vec![1f32; b * t];
    let fast = std::env::var("FAST").map(|v| v == "1").unwrap_or(false);
    let ids = Tensor::from_vec(ids, (b, t), &dev)?;
    let targets = ids.clone();
    let mask = Tensor::ones((b, t), candle_core::DType::F32, &dev)?;
    let mut totals = Vec::new();
    for it in 0..=iters {
        let t0 = Instant::now();
        let (t1, t2, grads) = if fast {
            // The hand-written step: forward + loss + backward in one call (timed as "backward").
            let t1 = Instant::now();
            let s = bunmind_engine::fast::lm_step(&model, &ids_v, &ids_v, &mask_v, b, t)?;
            (t1, t1, s.grads)
        } else {
            let (logits, aux) = model.forward_train(&ids)?;
            let t1 = Instant::now();
            let ce = masked_cross_entropy_sum(&logits, &targets, &mask)?;
            let loss = (ce.sum + aux)?;
            let t2 = Instant::now();
            (t1, t2, loss.backward()?)
        };
        let t3 = Instant::now();
        opt.step(&grads, 1e-3)?;
        let t4 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        if it > 0 {
            totals.push(ms(t0, t4));
            println!("forward {:.1} ms, loss {:.1} ms, backward {:.1} ms, adamw {:.1} ms, total {:.1} ms", ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t0, t4));
        }
    }
    let n = totals.len();
    let (med, min) = median(totals);
    println!("median total {med:.1} ms over {n} steps (min {min:.1})");
    Ok(())
}
