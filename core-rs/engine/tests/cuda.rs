//! The CUDA build's pieces that can be checked without a GPU, and the GPU checks themselves
//! (`#[ignore]`d: `cargo test --release --features cuda --test cuda -- --ignored` on a machine
//! with an NVIDIA GPU; `bench/gpu/run.sh` runs the same parity through the C ABI).
//!
//! - device names and the CPU build's refusal of CUDA (see also `device.rs`'s unit tests);
//! - the parity harness of the fused ops on the CPU against the independent op chains
//!   (`*_reference`; f32: the fused CPU kernels, bf16: the op chains in bf16, each within the
//!   stated tolerance), and against the fused CPU ops themselves (exact: determinism);
//! - bf16 autocast of the training forward, on the CPU (slow there, but the same code path as
//!   on CUDA apart from the kernels): f32 master weights and optimizer, loss close to f32.
use bunmind_engine::device::{device_by_name, DeviceSpec};
use bunmind_engine::model::{Model, ModelConfig};
use bunmind_engine::ops::parity::{parity, parity_against, tolerance, Reference};
use bunmind_engine::trainer::{Batch, Trainer, TrainerConfig};
use candle_core::{DType, Device};

mod common;

fn tiny() -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.vocab_size = 64;
    c.max_position_embeddings = 64;
    c.qk_norm = Some(true);
    c
}

fn batch(b: usize, t: usize, vocab: u32) -> Batch {
    common::random_batch(b, t, vocab, 12345, true)
}

#[test]
fn device_names() {
    assert_eq!(DeviceSpec::parse("cuda:2").unwrap(), DeviceSpec::Cuda(2));
    assert!(device_by_name("cpu").unwrap().is_cpu());
    if !cfg!(feature = "cuda") {
        let e = device_by_name("cuda").unwrap_err().to_string();
        assert!(e.contains("CPU build"), "{e}");
    }
}

#[test]
fn parity_harness_on_cpu() {
    // Against the op chains (`*_reference`, plain candle ops: no code shared with the fused CPU
    // kernels): f32 rows are close but not bitwise equal (the two sides are different code);
    // bf16 rows are the op chains in bf16 against the f32 op chains.
    for dt in [DType::F32, DType::BF16] {
        let rows = parity_against(&Device::Cpu, dt, Reference::OpChain).unwrap();
        assert!(rows.len() >= 20, "{}", rows.len());
        for r in &rows {
            assert!(r.ok, "{r:?}");
        }
        let kernels: Vec<_> = rows.iter().filter(|r| r.op != "adamw").collect();
        assert_eq!(kernels.iter().map(|r| r.tol).fold(0.0, f64::max), tolerance(dt));
        if dt == DType::F32 {
            assert!(kernels.iter().any(|r| r.rel_err > 0.0), "every row exact: the reference is not independent code");
        }
    }
    // Against the fused CPU ops (`parity`, what `bm_parity_check` compares a device with): on the
    // CPU itself the f32 rows compare a kernel with itself, so they must be exact — a check of
    // determinism (same inputs, same bits), not of correctness.
    for r in parity(&Device::Cpu, DType::F32).unwrap() {
        assert!(r.ok, "{r:?}");
        if r.op != "adamw" {
            assert_eq!(r.rel_err, 0.0, "{r:?}");
        }
    }
}

fn train_steps(autocast: &str, steps: usize) -> (Vec<f64>, Trainer) {
    let m = Model::new(&tiny(), 7, &Device::Cpu).unwrap();
    let cfg = TrainerConfig { autocast: Some(autocast.into()), grad_clip: Some(1.0), ..TrainerConfig::default() };
    let mut tr = Trainer::new(m, cfg, None, None).unwrap();
    let losses = (0..steps).map(|_| tr.step(&[batch(2, 16, 64)], 3e-3).unwrap().loss).collect();
    (losses, tr)
}

#[test]
fn bf16_autocast_trains_with_f32_master_weights() {
    let (f32_losses, f32_tr) = train_steps("f32", 3);
    let (bf16_losses, bf16_tr) = train_steps("bf16", 3);
    assert_eq!(f32_tr.compute_dtype(), "f32");
    assert_eq!(bf16_tr.compute_dtype(), "bf16");
    for (a, b) in f32_losses.iter().zip(&bf16_losses) {
        assert!(b.is_finite());
        assert!((a - b).abs() / a.abs() < 2e-2, "f32 {a} vs bf16 {b}");
    }
    // Learning happens in bf16 as in f32.
    assert!(bf16_losses[2] < bf16_losses[0], "{bf16_losses:?}");
    // Master weights stay f32; the inference forward is f32 and close to the f32-trained model's.
    for p in bf16_tr.model.named_parameters() {
        assert_eq!(p.var.dtype(), DType::F32, "{}", p.name);
    }
    let ids = candle_core::Tensor::new(&[[1u32, 5, 9, 3]], &Device::Cpu).unwrap();
    let la = f32_tr.model.forward(&ids, 0, &mut f32_tr.model.new_cache()).unwrap();
    let lb = bf16_tr.model.forward(&ids, 0, &mut bf16_tr.model.new_cache()).unwrap();
    assert_eq!(lb.dtype(), DType::F32);
    let diff = (la - lb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 0.05, "{diff}");
}

#[test]
fn autocast_default_is_f32_on_cpu_and_bad_values_are_config_errors() {
    let m = Model::new(&tiny(), 7, &Device::Cpu).unwrap();
    let tr = Trainer::new(m.clone(), TrainerConfig::default(), None, None).unwrap();
    assert_eq!(tr.compute_dtype(), "f32");
    let bad = TrainerConfig { autocast: Some("fp8".into()), ..TrainerConfig::default() };
    let e = Trainer::new(m, bad, None, None).err().unwrap().to_string();
    assert!(e.contains("autocast"), "{e}");
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;

    fn gpu() -> Device {
        device_by_name("cuda:0").expect("these tests need an NVIDIA GPU (run them with --ignored on the GPU machine)")
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn kernels_match_the_cpu_reference_f32() {
        let rows = parity(&gpu(), DType::F32).unwrap();
        let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }

    /// The fused CUDA kernels against the op chains on the CPU (`*_reference`: plain candle ops,
    /// sharing no code with either device's fused kernels), forward and every input's gradient.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn kernels_match_the_op_chain_reference() {
        for dt in [DType::F32, DType::BF16] {
            let rows = parity_against(&gpu(), dt, Reference::OpChain).unwrap();
            assert!(rows.len() >= 20, "{}", rows.len());
            let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
            assert!(bad.is_empty(), "{dt:?}: {bad:#?}");
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn kernels_match_the_cpu_reference_bf16() {
        let rows = parity(&gpu(), DType::BF16).unwrap();
        let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn training_step_matches_the_cpu_in_f32_and_learns_in_bf16() {
        let dev = gpu();
        let cpu = Model::new(&tiny(), 7, &Device::Cpu).unwrap();
        let cuda = Model::new(&tiny(), 7, &dev).unwrap();
        let cfg = |a: &str| TrainerConfig { autocast: Some(a.into()), ..TrainerConfig::default() };
        let mut tc = Trainer::new(cpu, cfg("f32"), None, None).unwrap();
        let mut tg = Trainer::new(cuda.clone(), cfg("f32"), None, None).unwrap();
        for _ in 0..3 {
            let a = tc.step(&[batch(2, 16, 64)], 3e-3).unwrap();
            let b = tg.step(&[batch(2, 16, 64)], 3e-3).unwrap();
            assert!((a.loss - b.loss).abs() / a.loss < 1e-4, "{} vs {}", a.loss, b.loss);
            assert!((a.grad_norm - b.grad_norm).abs() / a.grad_norm < 1e-3, "{} vs {}", a.grad_norm, b.grad_norm);
        }
        let mut tb = Trainer::new(Model::new(&tiny(), 7, &dev).unwrap(), TrainerConfig::default(), None, None).unwrap();
        assert_eq!(tb.compute_dtype(), "bf16");
        let l: Vec<f64> = (0..5).map(|_| tb.step(&[batch(2, 16, 64)], 3e-3).unwrap().loss).collect();
        assert!(l[4] < l[0], "{l:?}");
    }
}
