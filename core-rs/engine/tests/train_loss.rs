//! Losses against plain f64 loop references, and their gradients against finite differences.
use bunmind_engine::train::{
    check_gradients, distill_loss, dpo_loss, masked_cross_entropy, masked_cross_entropy_sum, sequence_logprobs,
    GradCheckConfig, Rng,
};
use candle_core::{DType, Device, Tensor, Var};

const B: usize = 2;
const T: usize = 3;
const V: usize = 5;

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * rng.normal_f32()).collect()
}

struct Batch {
    logits: Vec<f32>,
    targets: Vec<u32>,
    mask: Vec<f32>,
}

fn batch(seed: u64, scale: f32) -> Batch {
    let mut rng = Rng::new(seed);
    Batch {
        logits: randn(&mut rng, B * T * V, scale),
        targets: (0..B * T).map(|_| rng.below(V as u64) as u32).collect(),
        // mask values other than 0/1 count as 1 (indicator); negative counts as 0
        mask: vec![1.0, 1.0, 0.0, 0.0, 2.0, -1.0],
    }
}

fn tensors(b: &Batch) -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    (
        Tensor::from_slice(&b.logits, (B, T, V), &dev).unwrap(),
        Tensor::from_slice(&b.targets, (B, T), &dev).unwrap(),
        Tensor::from_slice(&b.mask, (B, T), &dev).unwrap(),
    )
}

/// log p(target) at (b, t), in f64 with the textbook formula.
fn ref_logp(logits: &[f32], b: usize, t: usize, target: usize, temp: f64) -> Vec<f64> {
    let row: Vec<f64> = logits[(b * T + t) * V..(b * T + t + 1) * V].iter().map(|&x| x as f64 / temp).collect();
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    let _ = target;
    row.iter().map(|x| x - lse).collect()
}

fn ref_ce(b: &Batch) -> (f64, usize) {
    let (mut sum, mut n) = (0.0, 0);
    for bi in 0..B {
        for ti in 0..T {
            if b.mask[bi * T + ti] > 0.0 {
                let tgt = b.targets[bi * T + ti] as usize;
                sum -= ref_logp(&b.logits, bi, ti, tgt, 1.0)[tgt];
                n += 1;
            }
        }
    }
    (sum, n)
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn masked_ce_matches_f64_reference_even_for_huge_logits() {
    for (seed, scale) in [(1, 1.0), (2, 3.0), (3, 80.0)] {
        let b = batch(seed, scale);
        let (logits, targets, mask) = tensors(&b);
        let (ref_sum, ref_n) = ref_ce(&b);
        let got = scalar(&masked_cross_entropy(&logits, &targets, &mask).unwrap());
        assert!(got.is_finite(), "scale {scale}: loss not finite");
        let want = ref_sum / ref_n as f64;
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "scale {scale}: {got} vs {want}");
        let s = masked_cross_entropy_sum(&logits, &targets, &mask).unwrap();
        assert_eq!(s.count, ref_n);
        assert!((scalar(&s.sum) - ref_sum).abs() <= 1e-5 * ref_sum.abs().max(1.0));
    }
}

#[test]
fn masked_ce_in_bf16_is_computed_in_f32() {
    let b = batch(4, 2.0);
    let (logits, targets, mask) = tensors(&b);
    let bf = logits.to_dtype(DType::BF16).unwrap();
    // reference on the bf16-rounded logits
    let rounded = Batch { logits: bf.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap(), ..b };
    let (s, n) = ref_ce(&rounded);
    let got = scalar(&masked_cross_entropy(&bf, &targets, &mask).unwrap());
    assert!((got - s / n as f64).abs() < 1e-5, "{got} vs {}", s / n as f64);
}

#[test]
fn masked_ce_rejects_empty_mask_and_bad_shapes() {
    let b = batch(5, 1.0);
    let (logits, targets, _) = tensors(&b);
    let zeros = Tensor::zeros((B, T), DType::F32, &Device::Cpu).unwrap();
    let err = masked_cross_entropy(&logits, &targets, &zeros).unwrap_err().to_string();
    assert!(err.contains("no position"), "{err}");
    let bad = Tensor::zeros((B, T + 1), DType::F32, &Device::Cpu).unwrap();
    assert!(masked_cross_entropy(&logits, &targets, &bad).is_err());
    let i64_targets = targets.to_dtype(DType::I64).unwrap();
    assert!(masked_cross_entropy(&logits, &i64_targets, &zeros).unwrap_err().to_string().contains("u32"));
}

#[test]
fn masked_ce_gradient_is_softmax_minus_onehot_over_count() {
    let b = batch(6, 2.0);
    let (logits, targets, mask) = tensors(&b);
    let var = Var::from_tensor(&logits).unwrap();
    let loss = masked_cross_entropy(var.as_tensor(), &targets, &mask).unwrap();
    let grad: Vec<f32> = loss.backward().unwrap().get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let (_, n) = ref_ce(&b);
    for bi in 0..B {
        for ti in 0..T {
            let tgt = b.targets[bi * T + ti] as usize;
            let lp = ref_logp(&b.logits, bi, ti, tgt, 1.0);
            for v in 0..V {
                let want = if b.mask[bi * T + ti] > 0.0 {
                    (lp[v].exp() - if v == tgt { 1.0 } else { 0.0 }) / n as f64
                } else {
                    0.0
                };
                let got = grad[(bi * T + ti) * V + v] as f64;
                assert!((got - want).abs() < 1e-6, "({bi},{ti},{v}): {got} vs {want}");
            }
        }
    }
    // and the independent finite-difference check
    let report = check_gradients(
        &[("logits".into(), var.clone())],
        || masked_cross_entropy(var.as_tensor(), &targets, &mask),
        &GradCheckConfig::default(),
    )
    .unwrap();
    report.into_result().unwrap();
}

#[test]
fn sequence_logprobs_matches_reference_and_gradchecks() {
    let b = batch(7, 2.0);
    let (logits, targets, mask) = tensors(&b);
    let got: Vec<f32> = sequence_logprobs(&logits, &targets, &mask).unwrap().to_vec1().unwrap();
    for bi in 0..B {
        let mut want = 0.0;
        for ti in 0..T {
            if b.mask[bi * T + ti] > 0.0 {
                let tgt = b.targets[bi * T + ti] as usize;
                want += ref_logp(&b.logits, bi, ti, tgt, 1.0)[tgt];
            }
        }
        assert!((got[bi] as f64 - want).abs() < 1e-5, "row {bi}: {} vs {want}", got[bi]);
    }
    let var = Var::from_tensor(&logits).unwrap();
    check_gradients(
        &[("logits".into(), var.clone())],
        || Ok(sequence_logprobs(var.as_tensor(), &targets, &mask)?.sum_all()?),
        &GradCheckConfig::default(),
    )
    .unwrap()
    .into_result()
    .unwrap();
}

fn ref_dpo(pc: &[f64], pr: &[f64], rc: &[f64], rr: &[f64], beta: f64) -> (f64, f64, f64) {
    let n = pc.len() as f64;
    let mut loss = 0.0;
    let mut acc = 0.0;
    let mut margin = 0.0;
    for i in 0..pc.len() {
        let z = beta * ((pc[i] - pr[i]) - (rc[i] - rr[i]));
        loss += -(1.0 / (1.0 + (-z).exp())).ln();
        let (c, r) = (beta * (pc[i] - rc[i]), beta * (pr[i] - rr[i]));
        margin += c - r;
        if c > r {
            acc += 1.0;
        }
    }
    (loss / n, margin / n, acc / n)
}

#[test]
fn dpo_loss_matches_reference_and_only_policy_gets_gradients() {
    let dev = Device::Cpu;
    let pc = [-12.0, -30.5, -8.25, -40.0];
    let pr = [-14.0, -29.0, -9.0, -41.5];
    let rc = [-13.0, -30.0, -8.0, -40.5];
    let rr = [-13.5, -29.5, -9.5, -41.0];
    let t = |v: &[f64]| Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), v.len(), &dev).unwrap();
    let beta = 0.15;
    let (vc, vr) = (Var::from_tensor(&t(&pc)).unwrap(), Var::from_tensor(&t(&pr)).unwrap());
    let (rcv, rrv) = (Var::from_tensor(&t(&rc)).unwrap(), Var::from_tensor(&t(&rr)).unwrap());
    let (loss, metrics) = dpo_loss(vc.as_tensor(), vr.as_tensor(), rcv.as_tensor(), rrv.as_tensor(), beta).unwrap();
    let (want, margin, acc) = ref_dpo(&pc, &pr, &rc, &rr, beta);
    assert!((scalar(&loss) - want).abs() < 1e-6, "{} vs {want}", scalar(&loss));
    assert!((metrics.reward_margin - margin).abs() < 1e-6);
    assert_eq!(metrics.accuracy, acc);
    assert!((metrics.chosen_reward - metrics.rejected_reward - margin).abs() < 1e-6);

    let grads = loss.backward().unwrap();
    assert!(grads.get(rcv.as_tensor()).is_none() && grads.get(rrv.as_tensor()).is_none(), "reference must be detached");
    let report = check_gradients(
        &[("pi_chosen".into(), vc.clone()), ("pi_rejected".into(), vr.clone())],
        || Ok(dpo_loss(vc.as_tensor(), vr.as_tensor(), rcv.as_tensor(), rrv.as_tensor(), beta)?.0),
        &GradCheckConfig::default(),
    )
    .unwrap();
    report.into_result().unwrap();
}

#[test]
fn dpo_loss_is_stable_for_extreme_margins() {
    let dev = Device::Cpu;
    let one = |x: f32| Tensor::new(&[x], &dev).unwrap();
    let z0 = one(0.0);
    // z = +2000·β → loss ≈ 0 ; z = −2000·β → loss ≈ 2000·β
    let (lo, _) = dpo_loss(&one(1000.0), &one(-1000.0), &z0, &z0, 0.5).unwrap();
    let (hi, _) = dpo_loss(&one(-1000.0), &one(1000.0), &z0, &z0, 0.5).unwrap();
    assert!(scalar(&lo).abs() < 1e-6, "{}", scalar(&lo));
    assert!((scalar(&hi) - 1000.0).abs() < 1e-3, "{}", scalar(&hi));
}

fn ref_distill(s: &Batch, teacher: &[f32], tv: usize, alpha: f64, temp: f64) -> (f64, f64, f64) {
    let (ce_sum, n) = ref_ce(s);
    let ce = ce_sum / n as f64;
    let mut kl = 0.0;
    for bi in 0..B {
        for ti in 0..T {
            if s.mask[bi * T + ti] <= 0.0 {
                continue;
            }
            // teacher cut to the student's vocabulary
            let row: Vec<f32> = teacher[(bi * T + ti) * tv..(bi * T + ti) * tv + V].to_vec();
            let mut padded = vec![0f32; B * T * V];
            padded[(bi * T + ti) * V..(bi * T + ti + 1) * V].copy_from_slice(&row);
            let lt = ref_logp(&padded, bi, ti, 0, temp);
            let ls = ref_logp(&s.logits, bi, ti, 0, temp);
            for v in 0..V {
                kl += lt[v].exp() * (lt[v] - ls[v]);
            }
        }
    }
    kl /= n as f64;
    (alpha * ce + (1.0 - alpha) * temp * temp * kl, ce, kl)
}

#[test]
fn distill_loss_matches_reference_and_gradchecks() {
    let s = batch(8, 2.0);
    let tv = V + 2; // teacher has a larger vocabulary
    let mut rng = Rng::new(99);
    let teacher = randn(&mut rng, B * T * tv, 2.0);
    let (logits, targets, mask) = tensors(&s);
    let tlogits = Tensor::from_slice(&teacher, (B, T, tv), &Device::Cpu).unwrap();
    for (alpha, temp) in [(0.5, 1.5), (0.0, 1.0), (1.0, 2.0), (0.3, 0.7)] {
        let d = distill_loss(&logits, &tlogits, &targets, &mask, alpha, temp).unwrap();
        let (want, ce, kl) = ref_distill(&s, &teacher, tv, alpha, temp);
        assert!((scalar(&d.loss) - want).abs() < 1e-5, "α {alpha} T {temp}: {} vs {want}", scalar(&d.loss));
        assert!((scalar(&d.ce) - ce).abs() < 1e-5);
        assert!((scalar(&d.kl) - kl).abs() < 1e-5);
    }
    let sv = Var::from_tensor(&logits).unwrap();
    let tvar = Var::from_tensor(&tlogits).unwrap();
    let report = check_gradients(
        &[("student".into(), sv.clone()), ("teacher".into(), tvar.clone())],
        || Ok(distill_loss(sv.as_tensor(), tvar.as_tensor(), &targets, &mask, 0.5, 1.5)?.loss),
        &GradCheckConfig::default(),
    )
    .unwrap();
    // the teacher is detached: no gradient, though the loss depends on it numerically
    assert!(report.vars[0].passed(), "{report}");
    assert!(matches!(report.vars[1].status, bunmind_engine::train::VarStatus::Missing { .. }), "{report}");
    // KL of identical distributions is 0
    let same = distill_loss(&logits, &logits, &targets, &mask, 0.0, 1.5).unwrap();
    assert!(scalar(&same.kl).abs() < 1e-6);
}

/// The gradient of every loss at a tie (z = 0, equal logits: where a relu, |·| or max would be
/// differentiated at its kink) against the exact value and central differences.
#[test]
fn dpo_gradient_is_exact_at_zero_margin() {
    let dev = Device::Cpu;
    // reference = policy, as at step 1 of a DPO run from the reference: z = 0 for every pair
    let pc = [-12.0f32, -30.5, -8.25];
    let pr = [-14.0f32, -29.0, -9.0];
    let (vc, vr) = (Var::new(&pc[..], &dev).unwrap(), Var::new(&pr[..], &dev).unwrap());
    let (rc, rr) = (Tensor::new(&pc[..], &dev).unwrap(), Tensor::new(&pr[..], &dev).unwrap());
    for beta in [0.1, 0.15, 1.0] {
        let (loss, _) = dpo_loss(vc.as_tensor(), vr.as_tensor(), &rc, &rr, beta).unwrap();
        assert!((scalar(&loss) - std::f64::consts::LN_2).abs() < 1e-6);
        let g = loss.backward().unwrap();
        // d/dπc mean_b −log σ(β z_b) = −β σ(−0)/n = −β/(2n); d/dπr = +β/(2n)
        let n = pc.len() as f64;
        for (var, sign) in [(&vc, -1.0), (&vr, 1.0)] {
            let got: Vec<f32> = g.get(var.as_tensor()).unwrap().to_vec1().unwrap();
            for x in got {
                let want = sign * beta / (2.0 * n);
                assert!((x as f64 - want).abs() <= 1e-7 * want.abs().max(1.0), "β {beta}: {x} vs {want}");
            }
        }
    }
    let report = check_gradients(
        &[("pi_chosen".into(), vc.clone()), ("pi_rejected".into(), vr.clone())],
        || Ok(dpo_loss(vc.as_tensor(), vr.as_tensor(), &rc, &rr, 0.15)?.0),
        &GradCheckConfig::default(),
    )
    .unwrap();
    report.into_result().unwrap();
}

#[test]
fn neg_log_sigmoid_gradient_everywhere_including_zero() {
    let dev = Device::Cpu;
    let zs = [-50.0f32, -3.0, -1e-3, 0.0, 1e-3, 3.0, 50.0];
    let z = Var::new(&zs[..], &dev).unwrap();
    let y = bunmind_engine::train::loss::neg_log_sigmoid(z.as_tensor()).unwrap();
    let vals: Vec<f32> = y.to_vec1().unwrap();
    let g: Vec<f32> = y.sum_all().unwrap().backward().unwrap().get(z.as_tensor()).unwrap().to_vec1().unwrap();
    for ((&zi, &v), &gi) in zs.iter().zip(&vals).zip(&g) {
        let zi = zi as f64;
        let want = (1.0 + (-zi).exp()).ln(); // −log σ(z)
        let want_g = 1.0 / (1.0 + (-zi).exp()) - 1.0; // σ(z) − 1
        assert!((v as f64 - want).abs() <= 1e-6 * want.max(1.0), "z {zi}: {v} vs {want}");
        assert!((gi as f64 - want_g).abs() <= 1e-6, "z {zi}: slope {gi} vs {want_g}");
    }
}

#[test]
fn cross_entropy_and_distill_gradients_at_tied_logits() {
    // every logit equal: the max used for the log-sum-exp shift is a tie in every row
    let mut s = batch(5, 1.0);
    s.logits.iter_mut().for_each(|x| *x = 0.25);
    let (logits, targets, mask) = tensors(&s);
    let v = Var::from_tensor(&logits).unwrap();
    let ce = masked_cross_entropy(v.as_tensor(), &targets, &mask).unwrap();
    let g: Vec<f32> = ce.backward().unwrap().get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let n = s.mask.iter().filter(|&&m| m > 0.0).count() as f64;
    for (pos, row) in g.chunks(V).enumerate() {
        let counted = s.mask[pos] > 0.0;
        for (k, &x) in row.iter().enumerate() {
            let onehot = if k == s.targets[pos] as usize { 1.0 } else { 0.0 };
            let want = if counted { (1.0 / V as f64 - onehot) / n } else { 0.0 };
            assert!((x as f64 - want).abs() < 1e-7, "pos {pos} k {k}: {x} vs {want}");
        }
    }
    let tl = Tensor::from_slice(&s.logits, (B, T, V), &Device::Cpu).unwrap();
    for (name, f) in [
        ("ce", Box::new(|| masked_cross_entropy(v.as_tensor(), &targets, &mask)) as Box<dyn Fn() -> bunmind_engine::Result<Tensor>>),
        ("distill", Box::new(|| Ok(distill_loss(v.as_tensor(), &tl, &targets, &mask, 0.5, 1.5)?.loss))),
    ] {
        let report = check_gradients(&[("logits".into(), v.clone())], &f, &GradCheckConfig::default()).unwrap();
        assert!(report.vars[0].passed(), "{name}: {report}");
    }
}
