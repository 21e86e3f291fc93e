//! Times the phases of one training step on a small model: forward, loss, backward, optimizer.
//!   cargo run --release --example step_profile -- [hidden layers vocab seq batch]
//! `FAST=1` times the hand-written step (`bunmind_engine::fast::lm_step`) instead of autograd.
use std::time::Instant;

use bunmind_engine::model::{Model, ModelConfig};
use bunmind_engine::train::{masked_cross_entropy_sum, AdamW, AdamWConfig, Param};
use candle_core::{Device, Tensor};

fn main() -> bunmind_engine::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (h, l, v, t, b) = match args.as_slice() {
        [h, l, v, t, b] => (*h, *l, *v, *t, *b),
        _ => (64, 2, 2000, 128, 8),
    };
    let mut cfg = ModelConfig::preset("tiny")?;
    cfg.hidden_size = h;
    cfg.num_hidden_layers = l;
    cfg.vocab_size = v;
    cfg.intermediate_size = h * 3;
    let dev = Device::Cpu;
    let model = Model::new(&cfg, 1, &dev)?;
    let params: Vec<Param> = model.named_parameters().into_iter().map(|p| Param::with_decay(p.name, p.var, p.weight_decay)).collect();
    let mut opt = AdamW::new(params, AdamWConfig::default())?;
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
    let ids_v = ids.clone();
    let mask_v = vec![1f32; b * t];
    let fast = std::env::var("FAST").map(|v| v == "1").unwrap_or(false);
    let ids = Tensor::from_vec(ids, (b, t), &dev)?;
    let targets = ids.clone();
    let mask = Tensor::ones((b, t), candle_core::DType::F32, &dev)?;
    let iters: usize = std::env::var("ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
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
    totals.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("median total {:.1} ms over {} steps (min {:.1})", totals[totals.len() / 2], totals.len(), totals[0]);
    Ok(())
}
