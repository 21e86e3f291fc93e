//! Accumulating micro-batches then one optimizer step == one step on the concatenated batch.
use bunmind_engine::train::{
    clip_grad_norm, masked_cross_entropy, masked_cross_entropy_sum, train_step, AdamW, AdamWConfig, GradAccumulator,
    MicroLoss, Param, Rng,
};
use candle_core::{Device, Tensor, Var};

const N: usize = 4; // sequences
const T: usize = 5;
const D: usize = 6;
const V: usize = 7;

/// A linear softmax "language model": logits = x·W + b.
struct Lin {
    w: Var,
    b: Var,
}

impl Lin {
    fn new(seed: u64) -> Lin {
        let mut rng = Rng::new(seed);
        let dev = Device::Cpu;
        Lin {
            w: Var::from_tensor(&rng.normal_tensor((D, V), 0.0, 0.5, &dev).unwrap()).unwrap(),
            b: Var::from_tensor(&rng.normal_tensor(V, 0.0, 0.5, &dev).unwrap()).unwrap(),
        }
    }
    fn copy(&self) -> Lin {
        Lin {
            w: Var::from_tensor(&self.w.as_tensor().copy().unwrap()).unwrap(),
            b: Var::from_tensor(&self.b.as_tensor().copy().unwrap()).unwrap(),
        }
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_matmul(self.w.as_tensor())?.broadcast_add(self.b.as_tensor())
    }
    fn params(&self) -> Vec<Param> {
        vec![Param::new("proj.weight", self.w.clone()), Param::new("proj.bias", self.b.clone())]
    }
}

struct Data {
    x: Tensor,
    y: Tensor,
    mask: Tensor,
}

fn data(seed: u64) -> Data {
    let mut rng = Rng::new(seed);
    let dev = Device::Cpu;
    let y: Vec<u32> = (0..N * T).map(|_| rng.below(V as u64) as u32).collect();
    // ragged masks: 5, 2, 4, 1 counted positions
    let lens = [5, 2, 4, 1];
    let mask: Vec<f32> = (0..N * T).map(|i| if i % T < lens[i / T] { 1.0 } else { 0.0 }).collect();
    Data {
        x: rng.normal_tensor((N, T, D), 0.0, 1.0, &dev).unwrap(),
        y: Tensor::from_vec(y, (N, T), &dev).unwrap(),
        mask: Tensor::from_vec(mask, (N, T), &dev).unwrap(),
    }
}

fn rows(d: &Data, start: usize, len: usize) -> Data {
    Data { x: d.x.narrow(0, start, len).unwrap(), y: d.y.narrow(0, start, len).unwrap(), mask: d.mask.narrow(0, start, len).unwrap() }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * y.abs().max(1.0), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn accumulated_grads_equal_full_batch_grads() {
    let m = Lin::new(1);
    let d = data(2);
    let full = masked_cross_entropy(&m.forward(&d.x).unwrap(), &d.y, &d.mask).unwrap();
    let g_full = full.backward().unwrap();

    let mut acc = GradAccumulator::new(vec![m.w.clone(), m.b.clone()]);
    let mut total = 0usize;
    for (s, l) in [(0, 1), (1, 2), (3, 1)] {
        let part = rows(&d, s, l);
        let ls = masked_cross_entropy_sum(&m.forward(&part.x).unwrap(), &part.y, &part.mask).unwrap();
        total += ls.count;
        acc.add(&ls.sum.backward().unwrap()).unwrap();
    }
    assert_eq!(total, 12);
    assert_eq!(acc.micro_steps(), 3);
    let g_acc = acc.finish(1.0 / total as f64).unwrap();
    assert_eq!(acc.micro_steps(), 0);
    for v in [&m.w, &m.b] {
        assert_close(&flat(g_acc.get(v.as_tensor()).unwrap()), &flat(g_full.get(v.as_tensor()).unwrap()), 1e-6, "grad");
    }
}

#[test]
fn train_step_with_micro_batches_equals_one_big_step() {
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let big = Lin::new(3);
    let small = big.copy();
    let d = data(4);
    let mut opt_big = AdamW::new(big.params(), cfg).unwrap();
    let mut opt_small = AdamW::new(small.params(), cfg).unwrap();
    let max_norm = 0.05; // small enough that clipping is active
    for step in 0..4 {
        let lr = 1e-2 / (1.0 + step as f64);
        // reference: the whole batch at once
        let loss = masked_cross_entropy(&big.forward(&d.x).unwrap(), &d.y, &d.mask).unwrap();
        let loss_big = loss.to_scalar::<f32>().unwrap() as f64;
        let mut g = loss.backward().unwrap();
        let vars = opt_big.vars();
        let norm_big = clip_grad_norm(&mut g, &vars, max_norm).unwrap();
        opt_big.step(&g, lr).unwrap();

        // micro-batches of 1, 2, 1 sequences with a global token count
        let parts = [rows(&d, 0, 1), rows(&d, 1, 2), rows(&d, 3, 1)];
        let report = train_step(&mut opt_small, parts.iter(), lr, Some(max_norm), |p| {
            let ls = masked_cross_entropy_sum(&small.forward(&p.x)?, &p.y, &p.mask)?;
            Ok(MicroLoss::new(ls.sum, ls.count as f64))
        })
        .unwrap();
        assert!(norm_big > max_norm, "clipping should be active");
        assert!((report.grad_norm - norm_big).abs() < 1e-5 * norm_big, "{} vs {norm_big}", report.grad_norm);
        assert!((report.loss - loss_big).abs() < 1e-5, "{} vs {loss_big}", report.loss);
        assert_eq!((report.micro_batches, report.weight, report.applied), (3, 12.0, true));
        assert_eq!(report.stats.updated, 2);
        assert_close(&flat(small.w.as_tensor()), &flat(big.w.as_tensor()), 1e-5, "w");
        assert_close(&flat(small.b.as_tensor()), &flat(big.b.as_tensor()), 1e-5, "b");
    }
    // and training actually moved the weights
    assert_ne!(flat(big.w.as_tensor()), flat(Lin::new(3).w.as_tensor()));
}

#[test]
fn mean_of_means_mode_matches_upstream_formula() {
    // upstream MiniMind: loss_i = mean CE of micro-batch i; grad = Σ grad(loss_i) / accum_steps
    let m = Lin::new(5);
    let d = data(6);
    let parts = [rows(&d, 0, 2), rows(&d, 2, 2)];
    let mut reference = GradAccumulator::new(vec![m.w.clone()]);
    let mut want_loss = 0.0;
    for p in &parts {
        let l = (masked_cross_entropy(&m.forward(&p.x).unwrap(), &p.y, &p.mask).unwrap() / 2.0).unwrap();
        want_loss += l.to_scalar::<f32>().unwrap() as f64;
        reference.add(&l.backward().unwrap()).unwrap();
    }
    let want = flat(reference.finish(1.0).unwrap().get(m.w.as_tensor()).unwrap());

    let m2 = m.copy();
    let mut opt = AdamW::new(vec![Param::new("proj.weight", m2.w.clone())], AdamWConfig { weight_decay: 0.0, ..Default::default() }).unwrap();
    let w_before = flat(m2.w.as_tensor());
    let r = train_step(&mut opt, parts.iter(), 1e-3, None, |p| {
        Ok(MicroLoss::new(masked_cross_entropy(&m2.forward(&p.x)?, &p.y, &p.mask)?, 1.0))
    })
    .unwrap();
    assert!((r.loss - want_loss).abs() < 1e-6);
    // first AdamW step moves each weight by lr·sign(g) (up to ε): compare directions
    let w_after = flat(m2.w.as_tensor());
    for i in 0..want.len() {
        let delta = w_after[i] - w_before[i];
        assert!((delta + 1e-3 * want[i].signum()).abs() < 1e-6, "[{i}] delta {delta} grad {}", want[i]);
    }
}

#[test]
fn train_step_skips_non_finite_and_rejects_empty() {
    let m = Lin::new(7);
    let mut opt = AdamW::new(m.params(), AdamWConfig::default()).unwrap();
    let before = flat(m.w.as_tensor());
    let r = train_step(&mut opt, [()], 1e-2, Some(1.0), |_| {
        let l = (m.w.as_tensor().sum_all()? * f64::INFINITY)?;
        Ok(MicroLoss::new(l, 1.0))
    })
    .unwrap();
    assert!(!r.applied && !r.grad_norm.is_finite());
    assert_eq!(flat(m.w.as_tensor()), before);
    assert!(train_step(&mut opt, std::iter::empty::<()>(), 1e-2, None, |_| unreachable!()).is_err());
}
