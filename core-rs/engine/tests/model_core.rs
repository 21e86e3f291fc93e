//! The model on random weights: init determinism, train/inference forward agreement, KV cache,
//! gradients reaching every parameter, dropout, input errors, checkpoint save/load.
use std::collections::HashMap;

use bunmind_engine::model::{Model, ModelConfig, SeededDropout};
use bunmind_engine::Error;
use candle_core::{DType, Device, Tensor};

fn cfg(moe: bool, qk: bool, interleaved: bool, tied: bool) -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.vocab_size = 300;
    c.max_position_embeddings = 64;
    c.qk_norm = Some(qk);
    c.rope_interleaved = interleaved;
    c.tie_word_embeddings = tied;
    if moe {
        c.use_moe = true;
        c.num_experts = 4;
        c.num_experts_per_tok = 2;
        c.n_shared_experts = 1;
        c.intermediate_size = 48;
        c.router_aux_loss_coef = 0.01;
    }
    c
}

/// A random model whose weights are scaled up (×4) so logits are O(1) and differences show.
fn model(c: &ModelConfig, seed: u64) -> Model {
    let m = Model::new(c, seed, &Device::Cpu).unwrap();
    for p in m.named_parameters() {
        if p.weight_decay() {
            p.var.set(&(p.var.as_tensor() * 4.0).unwrap()).unwrap();
        }
    }
    m
}

fn ids(rows: &[&[u32]]) -> Tensor {
    Tensor::new(rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

const SEQ: [&[u32]; 2] = [&[1, 5, 77, 200, 3, 9, 9, 150], &[4, 4, 299, 0, 13, 60, 2, 1]];

fn all_configs() -> Vec<ModelConfig> {
    let mut biased = cfg(false, false, false, false);
    (biased.qkv_bias, biased.o_bias, biased.mlp_bias) = (true, true, true);
    biased.rope_parameters = Some(bunmind_engine::model::RopeParameters::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    });
    vec![cfg(false, false, false, true), cfg(false, true, false, false), cfg(false, false, true, true), cfg(true, true, false, true), biased]
}

#[test]
fn init_is_deterministic_and_scaled_like_minimind() {
    let c = cfg(false, true, false, true);
    let a = Model::new(&c, 7, &Device::Cpu).unwrap();
    let b = Model::new(&c, 7, &Device::Cpu).unwrap();
    let d = Model::new(&c, 8, &Device::Cpu).unwrap();
    let (sa, sb, sd) = (a.state_dict(), b.state_dict(), d.state_dict());
    let name = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(max_diff(&sa[name], &sb[name]), 0.0);
    assert!(max_diff(&sa[name], &sd[name]) > 0.0);
    let emb = sa["model.embed_tokens.weight"].flatten_all().unwrap();
    let std = emb.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    assert!((std - 0.02).abs() < 0.001, "embedding std {std}");
    let norm = sa["model.layers.1.self_attn.k_norm.weight"].to_vec1::<f32>().unwrap();
    assert!(norm.iter().all(|&x| x == 1.0));
    assert_eq!(a.num_parameters(), bunmind_engine::model::count_parameters(&c));
}

#[test]
fn named_parameters_and_weight_decay() {
    let m = Model::new(&cfg(true, true, false, false), 0, &Device::Cpu).unwrap();
    let ps = m.named_parameters();
    assert_eq!(ps.iter().map(|p| p.var.elem_count()).sum::<usize>(), m.num_parameters());
    for p in &ps {
        let is_norm = p.name.ends_with("norm.weight") || p.name.ends_with("layernorm.weight");
        assert_eq!(p.weight_decay(), !is_norm, "{}", p.name);
    }
    for n in ["lm_head.weight", "model.layers.0.mlp.gate.weight", "model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.0.mlp.shared_experts.0.up_proj.weight"] {
        assert!(ps.iter().any(|p| p.name == n), "missing {n}");
    }
}

#[test]
fn one_decay_rule_for_walk_and_bare_names() {
    // The kind-based rule of the parameter walk and the name-based rule for tensors outside it
    // (`default_decay`, through `ParamKind::infer`) agree on every parameter of every shape,
    // biases and the decay-every-parameter option included.
    use bunmind_engine::model::{param_specs, ParamKind};
    use bunmind_engine::train::default_decay;
    for c in all_configs() {
        for s in param_specs(&c) {
            assert_eq!(default_decay(&s.name, s.shape.len()), s.kind.weight_decay(), "{}", s.name);
            assert!(s.kind.decays(true), "{}", s.name);
        }
    }
    assert!(ParamKind::Adapter.decays(false) && !ParamKind::Bias.decays(false) && !ParamKind::Norm.decays(false));
}

#[test]
fn train_and_inference_forwards_agree() {
    for c in all_configs() {
        let m = model(&c, 3);
        let x = ids(&SEQ);
        let (train, _) = m.forward_train(&x).unwrap();
        let mut cache = m.new_cache();
        let inf = m.forward_all(&x, 0, &mut cache).unwrap();
        let d = max_diff(&train, &inf);
        assert!(d <= 1e-4, "{c:?}: train vs inference diff {d}");
        assert!(train.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "logits too small to compare");
    }
}

#[test]
fn incremental_decode_matches_full_forward() {
    for c in all_configs() {
        let m = model(&c, 4);
        let x = ids(&SEQ);
        let full = m.forward_all(&x, 0, &mut m.new_cache()).unwrap(); // [B, T, V]
        let mut cache = m.new_cache();
        let first = m.forward(&x.narrow(1, 0, 3).unwrap(), 0, &mut cache).unwrap();
        assert!(max_diff(&first, &full.narrow(1, 2, 1).unwrap().squeeze(1).unwrap()) <= 1e-4);
        for p in 3..8 {
            let out = m.forward(&x.narrow(1, p, 1).unwrap(), p, &mut cache).unwrap();
            let d = max_diff(&out, &full.narrow(1, p, 1).unwrap().squeeze(1).unwrap());
            assert!(d <= 1e-4, "pos {p}: diff {d}");
        }
    }
}

#[test]
fn left_padded_batch_matches_single_rows() {
    use bunmind_engine::model::Cache;
    let c = cfg(false, true, false, true);
    let m = model(&c, 5);
    let short: &[u32] = &[9, 8, 7];
    let long: &[u32] = &[1, 2, 3, 4, 5, 6];
    let mut cache = Cache::with_left_padding(m.num_layers(), vec![3, 0]);
    let batch = m.forward(&ids(&[&[0, 0, 0, 9, 8, 7], long]), 0, &mut cache).unwrap();
    let single = m.forward(&ids(&[short]), 0, &mut m.new_cache()).unwrap();
    assert!(max_diff(&batch.narrow(0, 0, 1).unwrap(), &single) <= 1e-4);
    // One more step for both rows.
    let step = m.forward(&ids(&[&[42], &[43]]), 6, &mut cache).unwrap();
    let mut c1 = m.new_cache();
    let s1 = m.forward(&ids(&[&[9, 8, 7, 42]]), 0, &mut c1).unwrap();
    assert!(max_diff(&step.narrow(0, 0, 1).unwrap(), &s1) <= 1e-4);
}

#[test]
fn gradients_reach_every_parameter() {
    for c in [cfg(false, true, false, false), cfg(false, false, true, true), cfg(true, true, false, true)] {
        let m = model(&c, 6);
        let (logits, aux) = m.forward_train(&ids(&SEQ)).unwrap();
        let loss = (logits.sqr().unwrap().mean_all().unwrap() + aux).unwrap();
        let grads = loss.backward().unwrap();
        for p in m.named_parameters() {
            let routed_expert = p.name.contains(".experts.");
            match grads.get(p.var.as_tensor()) {
                Some(g) => {
                    let n = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(n > 0.0 || routed_expert, "{}: zero gradient", p.name);
                }
                None => assert!(routed_expert, "{}: no gradient (a fused op dropped it?)", p.name),
            }
        }
    }
}

#[test]
fn moe_aux_loss_is_positive_and_differentiable() {
    let m = model(&cfg(true, false, false, true), 7);
    let (_, aux) = m.forward_train(&ids(&SEQ)).unwrap();
    let v = aux.to_scalar::<f32>().unwrap();
    // Σ_e f_e·P_e·E ≥ k·(1/E)·E… at least positive and O(coef·k).
    assert!(v > 0.0 && v < 0.01 * 2.0 * 4.0, "aux {v}");
    let g = aux.backward().unwrap();
    let router = m.named_parameters().into_iter().find(|p| p.name == "model.layers.0.mlp.gate.weight").unwrap();
    assert!(g.get(router.var.as_tensor()).is_some(), "aux loss must reach the router");
    let dense = model(&cfg(false, false, false, true), 7);
    assert_eq!(dense.forward_train(&ids(&SEQ)).unwrap().1.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn dropout_is_seeded_and_off_by_default() {
    let mut c = cfg(false, false, false, true);
    c.dropout = 0.3;
    let m = model(&c, 8);
    let x = ids(&SEQ);
    let (plain, _) = m.forward_train(&x).unwrap();
    let (a, _) = m.forward_train_with(&x, Some(&mut SeededDropout::new(1))).unwrap();
    let (b, _) = m.forward_train_with(&x, Some(&mut SeededDropout::new(1))).unwrap();
    let (d, _) = m.forward_train_with(&x, Some(&mut SeededDropout::new(2))).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(max_diff(&a, &d) > 1e-3);
    assert!(max_diff(&a, &plain) > 1e-3);
    let inf = m.forward_all(&x, 0, &mut m.new_cache()).unwrap();
    assert!(max_diff(&plain, &inf) <= 1e-4, "inference must not drop out");
}

fn input_err<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Input(m)) => m,
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let mut c = cfg(false, false, false, true);
    c.vocab_size = 6400;
    let m = Model::new(&c, 0, &Device::Cpu).unwrap();
    let msg = input_err(m.forward_train(&ids(&[&[1, 2, 3, 7000]])));
    assert_eq!(msg, "token id 7000 at position 3 is out of range for vocab_size 6400");
    let msg = input_err(m.forward(&ids(&[&[1, 2, 3, 7000]]), 0, &mut m.new_cache()));
    assert!(msg.contains("7000 at position 3"), "{msg}");
    let long: Vec<u32> = vec![1; 65];
    assert!(input_err(m.forward_train(&ids(&[&long]))).contains("max_position_embeddings 64"));
    let flat = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
    assert!(input_err(m.forward_train(&flat)).contains("[batch, seq]"));
    let f = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
    assert!(input_err(m.forward_train(&f)).contains("u32"));
    let mut cache = m.new_cache();
    m.forward(&ids(&[&[1, 2]]), 0, &mut cache).unwrap();
    assert!(input_err(m.forward(&ids(&[&[3]]), 5, &mut cache)).contains("start_pos 5"));
    // Decoding past the context window.
    let mut cache = m.new_cache();
    m.forward(&ids(&[&[1; 64]]), 0, &mut cache).unwrap();
    assert!(input_err(m.forward(&ids(&[&[1]]), 64, &mut cache)).contains("exceeds max_position_embeddings"));
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bunmind-model-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn save_load_round_trip() {
    for (tag, c) in [("tied", cfg(true, true, false, true)), ("untied", cfg(false, false, true, false))] {
        let m = model(&c, 9);
        let dir = tmpdir(tag);
        m.save_dir(&dir).unwrap();
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        let file = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(file.contains_key("lm_head.weight"), !c.tie_word_embeddings);
        let (back, warnings) = Model::load_dir(&dir, &Device::Cpu).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(back.config().use_qk_norm(), c.use_qk_norm());
        let x = ids(&SEQ);
        assert_eq!(max_diff(&m.forward_train(&x).unwrap().0, &back.forward_train(&x).unwrap().0), 0.0);
        // bf16 storage loads back as f32, close to the original.
        m.save_dir_as(&dir, DType::BF16).unwrap();
        let (bf, _) = Model::load_dir(&dir, &Device::Cpu).unwrap();
        let d = max_diff(&m.forward_train(&x).unwrap().0, &bf.forward_train(&x).unwrap().0);
        assert!(d > 0.0 && d < 0.5, "bf16 diff {d}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn load_errors_name_the_tensor_or_field() {
    let c = cfg(false, true, false, false);
    let m = model(&c, 10);
    let sd = m.state_dict();
    let dev = Device::Cpu;
    let tensor_err = |tensors: HashMap<String, Tensor>, cfg: ModelConfig| match Model::from_tensors(cfg, tensors, &dev) {
        Err(Error::Tensor { name, msg }) => (name, msg),
        other => panic!("expected a tensor error, got {:?}", other.map(|_| ())),
    };
    let mut t = sd.clone();
    t.remove("model.layers.1.self_attn.v_proj.weight");
    assert_eq!(tensor_err(t, c.clone()).0, "model.layers.1.self_attn.v_proj.weight");
    let mut t = sd.clone();
    t.remove("lm_head.weight");
    let (name, msg) = tensor_err(t, c.clone());
    assert_eq!(name, "lm_head.weight");
    assert!(msg.contains("tie_word_embeddings"));
    let mut t = sd.clone();
    t.insert("model.norm.weight".into(), Tensor::ones(63, DType::F32, &dev).unwrap());
    let (name, msg) = tensor_err(t, c.clone());
    assert_eq!(name, "model.norm.weight");
    assert!(msg.contains("[64]") && msg.contains("[63]"), "{msg}");
    // Extra tensors: ignored with a warning; a tied config ignores lm_head.weight.
    let mut t = sd.clone();
    t.insert("model.rotary_emb.inv_freq".into(), Tensor::ones(8, DType::F32, &dev).unwrap());
    let (_, w) = Model::from_tensors(ModelConfig { tie_word_embeddings: true, ..c.clone() }, t, &dev).unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    // Config/weight structure mismatch: a config error naming the field.
    let fewer = ModelConfig { num_hidden_layers: 1, ..c.clone() };
    match Model::from_tensors(fewer, sd.clone(), &dev) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "num_hidden_layers"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
    // qk_norm unspecified: inferred from the weights.
    let (m2, _) = Model::from_tensors(ModelConfig { qk_norm: None, ..c.clone() }, sd.clone(), &dev).unwrap();
    assert!(m2.config().use_qk_norm());
    // Missing files name the path.
    let err = Model::load_dir("/nonexistent-bunmind", &dev).unwrap_err().to_string();
    assert!(err.contains("/nonexistent-bunmind/config.json"), "{err}");
}

#[test]
fn real_presets_build_and_agree() {
    for name in ["minimind2-small", "minimind-v1"] {
        let c = ModelConfig::preset(name).unwrap();
        let m = Model::new(&c, 42, &Device::Cpu).unwrap();
        assert_eq!(m.num_parameters(), bunmind_engine::model::count_parameters(&c));
        let x = ids(&[&[1, 300, 6399, 2, 45]]);
        let (train, _) = m.forward_train(&x).unwrap();
        assert_eq!(train.dims(), &[1, 5, 6400]);
        let inf = m.forward_all(&x, 0, &mut m.new_cache()).unwrap();
        assert!(max_diff(&train, &inf) <= 1e-4, "{name}");
    }
}

#[test]
fn model_and_sessions_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<bunmind_engine::model::LoraAdapters>();
    assert_send::<bunmind_engine::generate::GenerationSession>();
    assert_send::<bunmind_engine::generate::BatchGenerationSession>();
    assert_send::<bunmind_engine::model::Cache>();
}
