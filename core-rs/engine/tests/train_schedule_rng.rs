//! LR schedule against upstream's formula; RNG known answers, statistics and resume.
use bunmind_engine::train::{cosine_lr, CosineSchedule, Rng, RngState};
use candle_core::Device;

/// MiniMind `trainer_utils.get_lr`, written out independently.
fn upstream_get_lr(step: u64, total: u64, lr: f64) -> f64 {
    lr * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos()))
}

#[test]
fn cosine_matches_upstream_without_warmup() {
    let s = CosineSchedule::new(5e-4, 1000);
    for step in 0..=1000 {
        let (got, want) = (s.lr_at(step), upstream_get_lr(step, 1000, 5e-4));
        assert!((got - want).abs() < 1e-15, "step {step}: {got} vs {want}");
    }
    assert_eq!(s.lr_at(0), 5e-4);
    assert!((s.lr_at(1000) - 5e-5).abs() < 1e-18);
    assert!((s.lr_at(500) - 2.75e-4).abs() < 1e-15); // midpoint = (lr + min)/2
    assert!((s.lr_at(5000) - 5e-5).abs() < 1e-18, "held at min after total");
}

#[test]
fn warmup_is_linear_then_cosine_over_the_remaining_steps() {
    let s = CosineSchedule::new(1e-3, 110).with_warmup(10);
    assert_eq!(s.lr_at(0), 0.0);
    assert!((s.lr_at(5) - 5e-4).abs() < 1e-18);
    assert!((s.lr_at(10) - 1e-3).abs() < 1e-18);
    // seed v1: decay_ratio = (it − warmup)/(total − warmup)
    assert!((s.lr_at(60) - 5.5e-4).abs() < 1e-15);
    assert!((s.lr_at(110) - 1e-4).abs() < 1e-18);
    let mut prev = f64::INFINITY;
    for step in 10..=110 {
        let lr = s.lr_at(step);
        assert!(lr <= prev, "not monotone after warmup at {step}");
        prev = lr;
    }
    assert_eq!(cosine_lr(3, 2, 1.0, 5, 0.1), 0.6, "warmup wins while step < warmup");
    assert_eq!(cosine_lr(7, 2, 1.0, 5, 0.1), 0.1);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<CosineSchedule>(&json).unwrap(), s);
}

#[test]
fn xoshiro_known_answers() {
    // Reference outputs of xoshiro256** (Blackman & Vigna's C code) from state {1, 2, 3, 4}.
    let mut r = Rng::from_state(RngState([1, 2, 3, 4])).unwrap();
    let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
    assert_eq!(got, [11520, 0, 1509978240, 1215971899390074240]);
    // splitmix64(0) first output, as in Vigna's splitmix64.c
    assert_eq!(Rng::new(0).state().0[0], 0xE220A8397B1DCDAF);
}

#[test]
fn state_roundtrips_through_json_and_resumes_the_same_stream() {
    let mut a = Rng::new(42);
    for _ in 0..1000 {
        a.next_u64();
    }
    let json = serde_json::to_string(&a.state()).unwrap();
    assert!(json.starts_with("[\"0x"), "{json}");
    let mut b = Rng::from_state(serde_json::from_str::<RngState>(&json).unwrap()).unwrap();
    for _ in 0..100 {
        assert_eq!(a.next_u64(), b.next_u64());
        assert_eq!(a.normal_f32(), b.normal_f32());
    }
    let ma = a.bernoulli_mask((3, 4), 0.7, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mb = b.bernoulli_mask((3, 4), 0.7, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(ma, mb);
    assert!(serde_json::from_str::<RngState>("[\"0x0\",\"0x0\",\"0x0\",\"0x0\"]").is_err());
    assert!(serde_json::from_str::<RngState>("[\"0x1\"]").is_err());
    assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
}

#[test]
fn distributions_have_the_right_moments() {
    let mut r = Rng::new(7);
    let n = 200_000;
    let u: Vec<f64> = (0..n).map(|_| r.uniform_f32() as f64).collect();
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = u.iter().sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 0.005, "uniform mean {mean}");
    let z: Vec<f64> = (0..n).map(|_| r.normal_f32() as f64).collect();
    let zm = z.iter().sum::<f64>() / n as f64;
    let zv = z.iter().map(|x| (x - zm).powi(2)).sum::<f64>() / n as f64;
    let tail = z.iter().filter(|x| x.abs() > 1.96).count() as f64 / n as f64;
    assert!(zm.abs() < 0.01 && (zv - 1.0).abs() < 0.02, "normal mean {zm} var {zv}");
    assert!((tail - 0.05).abs() < 0.005, "two-sided 5% tail {tail}");
}

#[test]
fn bernoulli_mask_is_inverted_dropout() {
    let mut r = Rng::new(8);
    let keep = 0.8f32;
    let m = r.bernoulli_mask((100, 100), keep, &Device::Cpu).unwrap();
    assert_eq!(m.dims(), [100, 100]);
    let v = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|&x| x == 0.0 || x == 1.0 / keep));
    let kept = v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64;
    assert!((kept - 0.8).abs() < 0.015, "kept {kept}");
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!((mean - 1.0).abs() < 0.02, "expectation preserved: {mean}");
    assert!(r.bernoulli_mask(3, 0.0, &Device::Cpu).is_err());
    assert!(r.bernoulli_mask(3, 1.0, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap() == [1.0; 3]);
}

#[test]
fn shuffle_and_below_are_uniform() {
    let mut r = Rng::new(9);
    let p = r.permutation(1000);
    let mut sorted = p.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(p, sorted);
    // every item lands in every position of a 4-permutation about equally often
    let mut counts = [[0u32; 4]; 4];
    for _ in 0..40_000 {
        let mut a = [0usize, 1, 2, 3];
        r.shuffle(&mut a);
        for (pos, &item) in a.iter().enumerate() {
            counts[item][pos] += 1;
        }
    }
    for row in counts {
        for c in row {
            assert!((c as i64 - 10_000).abs() < 400, "{counts:?}");
        }
    }
    // below(3) over 2^64 is not a power of two: bias would show up with plain modulo of small ranges
    let mut hist = [0u32; 3];
    for _ in 0..30_000 {
        hist[r.below(3) as usize] += 1;
    }
    assert!(hist.iter().all(|&h| (h as i64 - 10_000).abs() < 400), "{hist:?}");
}
