//! The `nccl` backend of `dist` on real GPUs (`#[ignore]`d: they need an NVIDIA GPU and
//! libnccl.so.2 — PyTorch's nvidia-nccl-cu13 wheel has it in `nvidia/nccl/lib`):
//!
//!   cargo test --release --features nccl --test nccl -- --ignored
//!
//! On one GPU the job has one rank, so every collective is an identity: the values must come back
//! unchanged (same shapes and dtypes), and a trainer that joined must train exactly like one that
//! did not. With two or more GPUs, two ranks (threads, one GPU each) check real sums.
//! `bench/gpu/bunmind_gpu.py nccl` runs the same checks through the C ABI.
#![cfg(feature = "nccl")]

use bunmind_engine::device::device_by_name;
use bunmind_engine::dist::{connect, DistConfig};
use bunmind_engine::model::{Model, ModelConfig};
use bunmind_engine::trainer::{Batch, Trainer, TrainerConfig};
use candle_core::{DType, Device, Tensor};

fn gpu(n: usize) -> Device {
    device_by_name(&format!("cuda:{n}")).expect("these tests need an NVIDIA GPU (run them with --ignored on the GPU machine)")
}

fn rendezvous(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bunmind-nccl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("rendezvous")
}

fn cfg(tag: &str, rank: usize, world: usize) -> DistConfig {
    DistConfig { backend: "nccl".into(), rank, world_size: world, rendezvous: rendezvous(tag), timeout_s: 60.0 }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
#[ignore = "needs an NVIDIA GPU and libnccl.so.2"]
fn a_world_of_one_gives_every_value_back() {
    let dev = gpu(0);
    let mut col = connect(&cfg("one", 0, 1), &dev).unwrap();
    assert_eq!((col.rank(), col.world_size(), col.backend()), (0, 1, "nccl"));

    let mut host = vec![1.5, -2.0, 1e300, 0.0, 3.25];
    col.all_reduce_host(&mut host).unwrap();
    assert_eq!(host, vec![1.5, -2.0, 1e300, 0.0, 3.25]);
    col.all_reduce_host(&mut []).unwrap();

    let a = Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((2, 3, 4)).unwrap();
    let b = Tensor::new(&[-1f32, 0.5, 7.0], &dev).unwrap();
    let c = Tensor::new(&[[2f32, 4.0], [8.0, 16.0]], &dev).unwrap().t().unwrap(); // not contiguous
    let ins = [a, b, c];
    for outs in [col.all_reduce_tensors(&ins).unwrap(), col.broadcast_tensors(&ins, 0).unwrap()] {
        assert_eq!(outs.len(), ins.len());
        for (i, o) in ins.iter().zip(&outs) {
            assert_eq!(o.dims(), i.dims());
            assert_eq!(o.dtype(), i.dtype());
            assert!(o.device().same_device(&dev));
            assert_eq!(values(o), values(i));
        }
    }
    // One tensor (the in-place buffer must be a copy, not the caller's tensor), bf16 (summed in
    // bf16), and a mix of dtypes (summed in f32, handed back in each tensor's dtype).
    let one = Tensor::new(&[3f32, 1.0, 4.0, 1.0, 5.0], &dev).unwrap();
    let out = col.all_reduce_tensors(std::slice::from_ref(&one)).unwrap();
    assert_eq!(values(&out[0]), vec![3.0, 1.0, 4.0, 1.0, 5.0]);
    let h = Tensor::new(&[0.5f32, -0.25, 2.0], &dev).unwrap().to_dtype(DType::BF16).unwrap();
    let out = col.all_reduce_tensors(std::slice::from_ref(&h)).unwrap();
    assert_eq!(out[0].dtype(), DType::BF16);
    assert_eq!(values(&out[0]), vec![0.5, -0.25, 2.0]);
    let out = col.all_reduce_tensors(&[h.clone(), one.clone()]).unwrap();
    assert_eq!((out[0].dtype(), out[1].dtype()), (DType::BF16, DType::F32));
    assert_eq!(values(&out[1]), vec![3.0, 1.0, 4.0, 1.0, 5.0]);
    assert!(col.all_reduce_tensors(&[]).unwrap().is_empty());

    let e = col.broadcast_tensors(&[one.clone()], 1).unwrap_err().to_string();
    assert!(e.contains("root 1"), "{e}");
    // A CPU tensor is refused with a clear error (NCCL works on this rank's GPU).
    let cpu = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let e = col.all_reduce_tensors(&[cpu]).unwrap_err().to_string();
    assert!(e.contains("data-parallel (nccl)"), "{e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU and libnccl.so.2"]
fn a_trainer_in_a_world_of_one_trains_like_one_alone() {
    let dev = gpu(0);
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.vocab_size = 64;
    c.max_position_embeddings = 64;
    let batch = |s: u32| {
        let ids: Vec<u32> = (0..2 * 16).map(|i| (i * 7 + s * 13) % 64).collect();
        let targets: Vec<u32> = (0..2 * 16).map(|i| (i * 11 + s * 5 + 1) % 64).collect();
        Batch { ids, targets, mask: vec![1.0; 32], b: 2, t: 16 }
    };
    let mut alone = Trainer::new(Model::new(&c, 7, &dev).unwrap(), TrainerConfig::default(), None, None).unwrap();
    let mut joined = Trainer::new(Model::new(&c, 7, &dev).unwrap(), TrainerConfig::default(), None, None).unwrap();
    joined.join(connect(&cfg("trainer", 0, 1), &dev).unwrap()).unwrap();
    assert_eq!(joined.dist_info(), Some((0, 1, "nccl")));
    for s in 0..3 {
        let a = alone.step(&[batch(s)], 3e-3).unwrap();
        let b = joined.step(&[batch(s)], 3e-3).unwrap();
        assert!((a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(), "step {s}: loss {} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() <= 1e-5 * a.grad_norm.abs(), "step {s}: grad norm {} vs {}", a.grad_norm, b.grad_norm);
    }
    for (p, q) in alone.model.named_parameters().iter().zip(joined.model.named_parameters()) {
        let d = (p.var.as_tensor() - q.var.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-6, "{}: differs by {d}", p.name);
    }
}

#[test]
#[ignore = "needs two NVIDIA GPUs and libnccl.so.2"]
fn two_ranks_on_two_gpus_sum_and_broadcast() {
    let n = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().unwrap_or(0);
    if n < 2 {
        eprintln!("skipped: {n} GPU(s) visible (NCCL needs one GPU per rank)");
        return;
    }
    let base = cfg("two", 0, 2);
    let handles: Vec<_> = (0..2)
        .map(|r| {
            let c = DistConfig { rank: r, ..base.clone() };
            std::thread::spawn(move || {
                let dev = gpu(r);
                let mut col = connect(&c, &dev).unwrap();
                let mut host = vec![r as f64, 1.0];
                col.all_reduce_host(&mut host).unwrap();
                let a = Tensor::new(&[[r as f32, 1.0], [2.0, -(r as f32)]], &dev).unwrap();
                let b = Tensor::new(&[10.0f32 * r as f32], &dev).unwrap();
                let sums = col.all_reduce_tensors(&[a.clone(), b]).unwrap();
                let bc = col.broadcast_tensors(&[a], 1).unwrap();
                (host, values(&sums[0]), values(&sums[1]), values(&bc[0]))
            })
        })
        .collect();
    for h in handles {
        let (host, a, b, bc) = h.join().unwrap();
        assert_eq!(host, vec![1.0, 2.0]);
        assert_eq!(a, vec![1.0, 2.0, 4.0, -1.0]);
        assert_eq!(b, vec![10.0]);
        assert_eq!(bc, vec![1.0, 1.0, 2.0, -1.0]);
    }
}
