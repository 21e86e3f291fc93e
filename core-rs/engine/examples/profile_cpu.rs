//! Where a training step and an inference forward of minimind2-small spend their time on the CPU.
//!
//!   CARGO_TARGET_DIR=/work/cargo-target cargo build --release --example profile_cpu
//!   RAYON_NUM_THREADS=2 /work/cargo-target/release/examples/profile_cpu [b] [t] [reps]
//!
//! Part 1 times the phases of one optimizer step exactly as the trainer runs them (forward_train,
//! masked CE, backward, gradient scaling, clip, AdamW) and the inference forward.
//! Part 2 re-builds each piece of one layer at the same shapes from the same candle ops the engine
//! uses (they are `pub(crate)` there, so they are mirrored here) and times its forward alone and
//! forward + backward, next to candle's fused kernel where one exists (no backward), so that each
//! cost can be multiplied by the layer count and compared with Part 1.
use std::time::Instant;

use bunmind_engine::model::rope::Rope;
use bunmind_engine::model::{Model, ModelConfig};
use bunmind_engine::train::{
    clip_grad_norm, masked_cross_entropy_sum, AdamW, AdamWConfig, GradAccumulator, Param,
};
use candle_core::{DType, Device, Tensor, Var, D};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median milliseconds of `f` over `reps` runs after one warm-up.
fn time_ms(reps: usize, mut f: impl FnMut() -> R<()>) -> R<f64> {
    f()?;
    let mut s = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        s.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(s))
}

/// Forward alone, and forward + backward of `Σ y·r` (r a fixed random tensor), in ms. The cost of
/// the probe itself (`Σ z·r` and its backward for a leaf `z` of y's shape) is subtracted from the
/// forward + backward figure, so that "bwd" is the backward of `f` alone.
fn fwd_bwd(reps: usize, inputs: &[Var], f: &dyn Fn(&[Tensor]) -> R<Tensor>) -> R<(f64, f64)> {
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&xs)?;
    let r = Tensor::randn(0f32, 1f32, y.shape(), y.device())?;
    let fwd = time_ms(reps, || {
        let y = f(&xs)?;
        let _ = y.sum_all()?.to_scalar::<f32>()?; // force nothing lazy (candle is eager anyway)
        Ok(())
    })?;
    let both = time_ms(reps, || {
        let y = f(&xs)?;
        let g = (y * &r)?.sum_all()?.backward()?;
        assert!(g.get(inputs[0].as_tensor()).is_some());
        Ok(())
    })?;
    let z = Var::from_tensor(&r.zeros_like()?)?;
    let probe = time_ms(reps, || {
        let g = (z.as_tensor() * &r)?.sum_all()?.backward()?;
        assert!(g.get(z.as_tensor()).is_some());
        Ok(())
    })?;
    Ok((fwd, (both - probe).max(fwd)))
}

fn row(name: &str, (f, fb): (f64, f64), per_step: usize, note: &str) {
    println!(
        "{name:<46} fwd {f:>8.2} ms  fwd+bwd {fb:>8.2} ms  bwd {:>8.2} ms  ×{per_step:<2} = {:>8.1} ms/step  {note}",
        fb - f,
        fb * per_step as f64
    );
}

fn matmul_t(x: &Tensor, w: &Tensor) -> R<Tensor> {
    let dims = x.dims().to_vec();
    let n_in = *dims.last().unwrap();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, n_in))?.matmul(&w.t()?)?;
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    Ok(y.reshape(out)?)
}

fn softmax_train(x: &Tensor) -> R<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

fn repeat_kv(x: &Tensor, rep: usize) -> R<Tensor> {
    let (b, kv, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?.broadcast_as((b, kv, rep, s, d))?.reshape((b, kv * rep, s, d))?)
}

fn rms_train(x: &Tensor, w: &Tensor, eps: f64) -> R<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

fn causal_mask(t: usize, dev: &Device) -> R<Tensor> {
    let m: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
    Ok(Tensor::from_vec(m, (t, t), dev)?)
}

fn gflops(flops: f64, ms: f64) -> f64 {
    flops / ms / 1e6
}

fn main() -> R<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric args: b t reps")).collect();
    let b = *args.first().unwrap_or(&4);
    let t = *args.get(1).unwrap_or(&512);
    let reps = *args.get(2).unwrap_or(&3);
    let dev = Device::Cpu;
    let cfg = ModelConfig::preset("minimind2-small")?;
    let (hid, nh, nkv, hd, ffn, voc) =
        (cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim(), cfg.intermediate_size, cfg.vocab_size);
    let layers = cfg.num_hidden_layers;
    let threads = candle_core::utils::get_num_threads();
    println!("minimind2-small, b={b} t={t}, {threads} threads (RAYON_NUM_THREADS), median of {reps}");
    let model = Model::new(&cfg, 42, &dev)?;

    // ------------------------------------------------------------------ Part 1: phases
    let n = b * t;
    let ids: Vec<u32> = (0..n).map(|i| 3 + ((i as u64 * 2654435761) % (voc as u64 - 3)) as u32).collect();
    let tg: Vec<u32> = (0..n).map(|i| ids[(i + 1) % n]).collect();
    let ids = Tensor::from_vec(ids, (b, t), &dev)?;
    let targets = Tensor::from_vec(tg, (b, t), &dev)?;
    let mask = Tensor::ones((b, t), DType::F32, &dev)?;
    let params: Vec<Param> =
        model.named_parameters().into_iter().map(|p| Param::of(p, false)).collect();
    let vars: Vec<Var> = params.iter().map(|p| p.var.clone()).collect();
    let mut opt = AdamW::new(params, AdamWConfig::default())?;
    let mut ph: [Vec<f64>; 7] = Default::default();
    for rep in 0..=reps {
        let mut lap = Instant::now();
        let mut mark = |i: usize, ph: &mut [Vec<f64>; 7]| {
            if rep > 0 {
                ph[i].push(lap.elapsed().as_secs_f64() * 1e3);
            }
            lap = Instant::now();
        };
        let (logits, _aux) = model.forward_train(&ids)?;
        mark(0, &mut ph);
        let ce = masked_cross_entropy_sum(&logits, &targets, &mask)?;
        let _ = ce.sum.to_scalar::<f32>()?;
        mark(1, &mut ph);
        let grads = ce.sum.backward()?;
        mark(2, &mut ph);
        let mut acc = GradAccumulator::new(vars.clone());
        acc.add(&grads)?;
        drop(grads);
        let mut g = acc.finish(1.0 / ce.count as f64)?;
        mark(3, &mut ph);
        let _norm = clip_grad_norm(&mut g, &vars, 1.0)?;
        mark(4, &mut ph);
        opt.step(&g, 1e-4)?;
        mark(5, &mut ph);
        drop((logits, ce, g));
        mark(6, &mut ph);
    }
    let names = ["forward_train", "masked CE (+ host sync)", "backward", "grad accumulate + scale 1/N", "clip_grad_norm (f64)", "AdamW step", "drop graph"];
    let meds: Vec<f64> = ph.iter().map(|v| median(v.clone())).collect();
    let total: f64 = meds.iter().sum();
    println!("\n== training step phases (engine code) ==");
    for (nm, m) in names.iter().zip(&meds) {
        println!("{nm:<30} {m:>9.1} ms  {:>5.1}%", 100.0 * m / total);
    }
    println!("{:<30} {total:>9.1} ms  → {:.0} tokens/s", "total", n as f64 / total * 1e3);
    let inf = time_ms(reps, || {
        let mut cache = model.new_cache();
        let _ = model.forward(&ids, 0, &mut cache)?;
        Ok(())
    })?;
    println!("inference forward (fused kernels, last-position head): {inf:.1} ms → {:.0} tokens/s", n as f64 / inf * 1e3);

    // ------------------------------------------------------------------ Part 2: pieces of one layer
    println!("\n== pieces of the training graph at b={b} t={t} (× count per step) ==");
    let var = |shape: &[usize]| -> R<Var> { Ok(Var::from_tensor(&(Tensor::randn(0f32, 1f32, shape, &dev)? * 0.02)?)?) };
    let x = var(&[b, t, hid])?;
    let wq = var(&[nh * hd, hid])?;
    let wk = var(&[nkv * hd, hid])?;
    let wg = var(&[ffn, hid])?;
    let wd = var(&[hid, ffn])?;
    let emb = var(&[voc, hid])?;
    let xf = var(&[b, t, ffn])?;
    let q = var(&[b, nh, t, hd])?;
    let k = var(&[b, nkv, t, hd])?;
    let v = var(&[b, nkv, t, hd])?;
    let scores = var(&[b, nh, t, t])?;
    let gain = Var::from_tensor(&Tensor::ones(hid, DType::F32, &dev)?)?;
    let mask_tt = causal_mask(t, &dev)?;
    let rope = Rope::new(&cfg);
    let (cos, sin) = rope.tables(0, t, false, &dev)?;
    let rep = nh / nkv;
    let scale = 1.0 / (hd as f64).sqrt();

    let lin = |o: usize, i: usize| 2.0 * n as f64 * o as f64 * i as f64;
    let r = fwd_bwd(reps, &[x.clone(), wq.clone()], &|a| matmul_t(&a[0], &a[1]))?;
    row("q/o proj  [N,512]·[512,512]ᵀ", r, 2 * layers, &format!("{:.1} GFLOP/s fwd", gflops(lin(hid, hid), r.0)));
    let r = fwd_bwd(reps, &[x.clone(), wk.clone()], &|a| matmul_t(&a[0], &a[1]))?;
    row("k/v proj  [N,512]·[128,512]ᵀ", r, 2 * layers, &format!("{:.1} GFLOP/s fwd", gflops(lin(nkv * hd, hid), r.0)));
    let r = fwd_bwd(reps, &[x.clone(), wg.clone()], &|a| matmul_t(&a[0], &a[1]))?;
    row("gate/up   [N,512]·[1408,512]ᵀ", r, 2 * layers, &format!("{:.1} GFLOP/s fwd", gflops(lin(ffn, hid), r.0)));
    let r = fwd_bwd(reps, &[xf.clone(), wd.clone()], &|a| matmul_t(&a[0], &a[1]))?;
    row("down      [N,1408]·[512,1408]ᵀ", r, layers, &format!("{:.1} GFLOP/s fwd", gflops(lin(hid, ffn), r.0)));
    let r = fwd_bwd(reps, &[xf.clone()], &|a| Ok((a[0].silu()? * &a[0])?))?;
    row("silu(g)·u  [N,1408]", r, layers, "");
    let r = fwd_bwd(reps, &[x.clone(), gain.clone()], &|a| rms_train(&a[0], &a[1], 1e-5))?;
    row("RMSNorm composition [N,512]", r, 2 * layers + 1, "");
    let fused = time_ms(reps, || {
        let _ = candle_nn::ops::rms_norm(x.as_tensor(), gain.as_tensor(), 1e-5)?;
        Ok(())
    })?;
    println!("{:<46} fwd {fused:>8.2} ms  (no backward in candle-nn 0.11)", "  candle_nn::ops::rms_norm (fused)");
    let r = fwd_bwd(reps, &[q.clone()], &|a| Ok(rope.apply_train(&a[0], &cos, &sin)?))?;
    row("RoPE apply_train q [B,8,T,64]", r, layers, "");
    let r = fwd_bwd(reps, &[k.clone()], &|a| Ok(rope.apply_train(&a[0], &cos, &sin)?))?;
    row("RoPE apply_train k [B,2,T,64]", r, layers, "");
    let fused = time_ms(reps, || {
        let _ = rope.apply(q.as_tensor(), &cos, &sin)?;
        Ok(())
    })?;
    println!("{:<46} fwd {fused:>8.2} ms  (no backward)", "  candle_nn::rotary_emb::rope q (fused)");
    let r = fwd_bwd(reps, &[k.clone()], &|a| repeat_kv(&a[0], rep))?;
    row("repeat_kv k or v [B,2,T,64]→[B,8,T,64]", r, 2 * layers, "");
    let kr = repeat_kv(k.as_tensor(), rep)?;
    let r = fwd_bwd(reps, &[q.clone()], &|a| Ok((a[0].contiguous()?.matmul(&kr.t()?)? * scale)?))?;
    let att_fl = 2.0 * (b * nh * t * t * hd) as f64;
    row("scores q·kᵀ·scale [B,8,T,T]", r, layers, &format!("{:.1} GFLOP/s fwd (full T×T; causal half is wasted)", gflops(att_fl, r.0)));
    let r = fwd_bwd(reps, &[scores.clone()], &|a| Ok(a[0].broadcast_add(&mask_tt)?))?;
    row("+ causal mask (broadcast_add)", r, layers, "");
    let r = fwd_bwd(reps, &[scores.clone()], &|a| softmax_train(&a[0]))?;
    row("softmax_train (max/sub/exp/sum/div)", r, layers, "");
    let fused = time_ms(reps, || {
        let _ = candle_nn::ops::softmax_last_dim(scores.as_tensor())?;
        Ok(())
    })?;
    println!("{:<46} fwd {fused:>8.2} ms  (no backward in candle-nn 0.11)", "  candle_nn::ops::softmax_last_dim (fused)");
    let vr = repeat_kv(v.as_tensor(), rep)?;
    let r = fwd_bwd(reps, &[scores.clone()], &|a| Ok(a[0].matmul(&vr)?))?;
    row("probs·v [B,8,T,T]·[B,8,T,64]", r, layers, &format!("{:.1} GFLOP/s fwd", gflops(att_fl, r.0)));
    let r = fwd_bwd(reps, &[q.clone()], &|a| Ok(a[0].transpose(1, 2)?.reshape((b, t, nh * hd))?))?;
    row("y transpose+reshape (copy) [B,T,512]", r, layers, "");
    let r = fwd_bwd(reps, &[x.clone(), emb.clone()], &|a| matmul_t(&a[0], &a[1]))?;
    row("LM head [N,512]·[6400,512]ᵀ", r, 1, &format!("{:.1} GFLOP/s fwd", gflops(lin(voc, hid), r.0)));
    let logits = var(&[b, t, voc])?;
    let r = fwd_bwd(reps, &[logits.clone()], &|a| {
        let ce = masked_cross_entropy_sum(&a[0], &targets, &mask)?;
        Ok(ce.sum.reshape(1)?)
    })?;
    row("masked CE over V=6400 (gather + logsumexp)", r, 1, "");
    let idsf = ids.flatten_all()?;
    let r = fwd_bwd(reps, &[emb.clone()], &|a| Ok(a[0].index_select(&idsf, 0)?))?;
    row("embedding index_select (bwd = index_add)", r, 1, "");
    let r = fwd_bwd(reps, &[x.clone()], &|a| Ok((&a[0] + &a[0])?))?;
    row("residual add [N,512]", r, 2 * layers, "");
    Ok(())
}
