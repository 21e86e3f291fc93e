//! Data-parallel steps (`Trainer::join` + the `tcp` collective, ranks as threads) against the
//! plain reference: one trainer that sees every micro-batch. Same losses, same weights after
//! several steps, the same on every rank — for the hand-written dense step, the autograd MoE path
//! (experts that get no token on some rank) and LoRA.
use bunmind_engine::dist::{tcp::TcpCollective, DistConfig};
use bunmind_engine::model::{LoraConfig, Model, ModelConfig};
use bunmind_engine::trainer::{Batch, Trainer, TrainerConfig};
use candle_core::Device;

mod common;
use common::random_batch as batch;

fn cfg(moe: bool) -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.hidden_size = 32;
    c.num_attention_heads = 4;
    c.num_key_value_heads = Some(2);
    c.intermediate_size = 48;
    c.vocab_size = 61;
    c.num_hidden_layers = 2;
    c.max_position_embeddings = 64;
    if moe {
        c.use_moe = true;
        c.num_experts = 4;
        c.num_experts_per_tok = 1;
    }
    c
}

struct Run {
    losses: Vec<f64>,
    tokens: Vec<f64>,
    weights: Vec<(String, Vec<f32>)>,
    /// The trained LoRA adapters (A and B per module; empty without LoRA).
    adapters: Vec<(String, Vec<f32>)>,
}

fn weights(tr: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut w: Vec<(String, Vec<f32>)> =
        tr.export_weights().unwrap().into_iter().map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn adapters(tr: &Trainer) -> Vec<(String, Vec<f32>)> {
    let Some(ad) = &tr.adapters else { return vec![] };
    ad.named_parameters().into_iter().map(|p| (p.name, p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

fn trainer(c: &ModelConfig, model_seed: u64, tc: &TrainerConfig) -> Trainer {
    Trainer::new(Model::new(c, model_seed, &Device::Cpu).unwrap(), tc.clone(), None, None).unwrap()
}

/// `steps` steps over `micro` (per step) in one trainer.
fn single(c: &ModelConfig, tc: &TrainerConfig, steps: &[Vec<Batch>]) -> Run {
    let mut tr = trainer(c, 3, tc);
    let (mut losses, mut tokens) = (vec![], vec![]);
    for micro in steps {
        let r = tr.step(micro, 5e-3).unwrap();
        assert_eq!(r.world_size, 1);
        losses.push(r.loss);
        tokens.push(r.tokens);
    }
    Run { losses, tokens, weights: weights(&tr), adapters: adapters(&tr) }
}

/// The same steps over `world` ranks: rank r gets the micro-batches `i` with `i % world == r`.
/// Ranks other than 0 start from different random weights: joining must replace them.
fn data_parallel(c: &ModelConfig, tc: &TrainerConfig, steps: &[Vec<Batch>], world: usize, tag: &str) -> Vec<Run> {
    let dir = std::env::temp_dir().join(format!("bunmind-dist-step-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let (c, tc, dir) = (c.clone(), tc.clone(), dir.clone());
            let mine: Vec<Vec<Batch>> =
                steps.iter().map(|m| m.iter().enumerate().filter(|(i, _)| i % world == rank).map(|(_, b)| b.clone()).collect()).collect();
            std::thread::spawn(move || {
                let mut tr = trainer(&c, 3 + 100 * rank as u64, &tc);
                let col = TcpCollective::connect(&DistConfig {
                    backend: "tcp".into(),
                    rank,
                    world_size: world,
                    rendezvous: dir.join("rendezvous"),
                    timeout_s: 60.0,
                })
                .unwrap();
                tr.join(Box::new(col)).unwrap();
                assert_eq!(tr.dist_info(), Some((rank, world, "tcp")));
                let (mut losses, mut tokens) = (vec![], vec![]);
                for micro in &mine {
                    let r = tr.step(micro, 5e-3).unwrap();
                    assert_eq!(r.world_size, world);
                    losses.push(r.loss);
                    tokens.push(r.tokens);
                }
                Run { losses, tokens, weights: weights(&tr), adapters: adapters(&tr) }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Same names, and every tensor within `tol` of the reference's largest magnitude.
fn assert_close(reference: &[(String, Vec<f32>)], got: &[(String, Vec<f32>)], tol: f32, what: &str) {
    assert_eq!(reference.len(), got.len(), "{what}");
    for ((n, a), (m, b)) in reference.iter().zip(got) {
        assert_eq!(n, m);
        let scale = a.iter().fold(0f32, |s, x| s.max(x.abs())).max(1e-3);
        let diff = a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
        assert!(diff <= tol * scale, "{what}: `{n}` differs by {diff} (scale {scale})");
    }
}

fn assert_same(reference: &Run, got: &Run, tol: f32, what: &str) {
    for (i, (a, b)) in reference.losses.iter().zip(&got.losses).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{what}: step {i} loss {a} vs {b}");
    }
    assert_eq!(reference.tokens, got.tokens, "{what}: tokens are summed over the ranks");
    // The adapters themselves (what a LoRA checkpoint and the PEFT export hold), then the weights
    // as published (merged with the adapters under LoRA).
    assert_close(&reference.adapters, &got.adapters, tol, &format!("{what}: adapter"));
    assert_close(&reference.weights, &got.weights, tol, what);
}

fn check(c: ModelConfig, tc: TrainerConfig, world: usize, holes: bool, tag: &str) {
    let v = c.vocab_size as u32;
    // The same four micro-batches every step, so the reference visibly learns them.
    let steps: Vec<Vec<Batch>> = (0..4).map(|_| (0..4).map(|i| batch(2, 16, v, i + 1, holes)).collect()).collect();
    let reference = single(&c, &tc, &steps);
    assert!(reference.losses[3] < reference.losses[0], "{tag}: the reference should learn: {:?}", reference.losses);
    if tc.lora.is_some() {
        // Adapters exist and trained: every B left its zero init.
        assert!(!reference.adapters.is_empty(), "{tag}: no adapters");
        for (n, b) in reference.adapters.iter().filter(|(n, _)| n.contains("lora_B")) {
            assert!(b.iter().any(|&x| x != 0.0), "{tag}: `{n}` never moved");
        }
    }
    let ranks = data_parallel(&c, &tc, &steps, world, tag);
    for (r, run) in ranks.iter().enumerate() {
        assert_same(&reference, run, 1e-4, &format!("{tag}, rank {r}"));
    }
    // Every rank holds exactly the same weights.
    for run in &ranks[1..] {
        assert_eq!(run.weights, ranks[0].weights, "{tag}: ranks diverged");
        assert_eq!(run.adapters, ranks[0].adapters, "{tag}: ranks' adapters diverged");
    }
}

#[test]
fn dense_two_and_four_ranks_match_one_process() {
    let c = cfg(false);
    check(c.clone(), TrainerConfig::default(), 2, true, "dense-2");
    check(c, TrainerConfig::default(), 4, true, "dense-4");
}

#[test]
fn moe_autograd_path_matches_one_process() {
    // Full masks: the MoE aux loss is weighted by each rank's own tokens.
    check(cfg(true), TrainerConfig::default(), 2, false, "moe");
}

#[test]
fn gradients_only_some_ranks_have_are_summed_and_ones_no_rank_has_stay_absent() {
    // Var `a` gets a gradient on rank 0 only, `b` on both, `c` on none (e.g. MoE experts no
    // token was routed to): after the all-reduce, `a` = rank 0's on both ranks, `c` is absent
    // (AdamW then skips it, as a single process would).
    use bunmind_engine::train::GradAccumulator;
    use candle_core::{backprop::GradStore, Tensor, Var};
    let dir = std::env::temp_dir().join(format!("bunmind-dist-presence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let handles: Vec<_> = (0..2usize)
        .map(|rank| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let dev = Device::Cpu;
                let vars: Vec<Var> = (0..3).map(|_| Var::zeros(2, candle_core::DType::F32, &dev).unwrap()).collect();
                let mut acc = GradAccumulator::new(vars.clone());
                let mut g = GradStore::default();
                if rank == 0 {
                    g.insert(vars[0].as_tensor(), Tensor::new(&[1f32, 2.], &dev).unwrap());
                }
                g.insert(vars[1].as_tensor(), Tensor::new(&[10f32 * (rank as f32 + 1.), 0.5], &dev).unwrap());
                acc.add(&g).unwrap();
                let mut col = TcpCollective::connect(&DistConfig {
                    backend: "tcp".into(),
                    rank,
                    world_size: 2,
                    rendezvous: dir.join("rdv"),
                    timeout_s: 30.0,
                })
                .unwrap();
                let mut presence = acc.presence();
                bunmind_engine::dist::Collective::all_reduce_host(&mut col, &mut presence).unwrap();
                assert_eq!(presence, vec![1.0, 2.0, 0.0]);
                acc.all_reduce(&mut col, &presence).unwrap();
                let out = acc.finish(1.0).unwrap();
                let get = |i: usize| out.get(vars[i].as_tensor()).map(|t| t.to_vec1::<f32>().unwrap());
                (get(0), get(1), get(2))
            })
        })
        .collect();
    for h in handles {
        let (a, b, c) = h.join().unwrap();
        assert_eq!(a, Some(vec![1.0, 2.0]));
        assert_eq!(b, Some(vec![30.0, 1.0]));
        assert_eq!(c, None);
    }
}

#[test]
fn lora_adapters_match_one_process() {
    let tc = TrainerConfig {
        lora: Some(LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into(), "o_proj".into()],
            peft_type: "LORA".into(),
            bias: "none".into(),
            task_type: "CAUSAL_LM".into(),
            use_rslora: false,
        }),
        ..TrainerConfig::default()
    };
    check(cfg(false), tc, 2, true, "lora");
}

#[test]
fn a_stop_request_on_one_rank_reaches_every_rank() {
    let c = cfg(false);
    let dir = std::env::temp_dir().join(format!("bunmind-dist-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (c, dir) = (c.clone(), dir.clone());
            std::thread::spawn(move || {
                let mut tr = trainer(&c, 3, &TrainerConfig::default());
                let cfg = DistConfig { backend: "tcp".into(), rank, world_size: 2, rendezvous: dir.join("rdv"), timeout_s: 60.0 };
                tr.join(Box::new(TcpCollective::connect(&cfg).unwrap())).unwrap();
                let mut stops = vec![];
                for s in 0..3 {
                    if rank == 1 && s == 1 {
                        tr.request_stop(true);
                    }
                    stops.push(tr.step(&[batch(2, 16, c.vocab_size as u32, s + 7 * rank as u32, false)], 1e-3).unwrap().stop);
                }
                stops
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![false, true, false]);
    }
}
