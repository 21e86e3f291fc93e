//! LoRA adapters: zero-init B leaves the model unchanged, merge equals base + adapter, adapters
//! save/load alone, gradients reach the adapters.
use bunmind_engine::model::{LoraAdapters, LoraConfig, Model, ModelConfig};
use bunmind_engine::Error;
use candle_core::{Device, Tensor};

fn base() -> Model {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.vocab_size = 300;
    c.qk_norm = Some(true);
    let m = Model::new(&c, 11, &Device::Cpu).unwrap();
    for p in m.named_parameters() {
        if p.weight_decay {
            p.var.set(&(p.var.as_tensor() * 4.0).unwrap()).unwrap();
        }
    }
    m
}

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 50, 7, 299, 3, 3, 120]], &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Gives every B matrix non-zero values so the adapters change the output.
fn randomise_b(ad: &LoraAdapters) {
    for p in ad.named_parameters() {
        if p.name.ends_with("lora_B.weight") {
            let r = Tensor::randn(0f32, 0.3, p.var.shape(), &Device::Cpu).unwrap();
            p.var.set(&r).unwrap();
        }
    }
}

fn cfg_all() -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec(),
        ..Default::default()
    }
}

#[test]
fn default_targets_and_names() {
    let m = base();
    let ad = LoraAdapters::new(&m, LoraConfig::default(), 0).unwrap();
    assert_eq!(ad.config.r, 16);
    assert_eq!(ad.modules().len(), 2 * m.num_layers());
    let names: Vec<String> = ad.named_parameters().into_iter().map(|p| p.name).collect();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
    assert!(names.contains(&"model.layers.1.self_attn.o_proj.lora_B.weight".to_string()));
    let (a, b) = ad.get("model.layers.0.self_attn.q_proj").unwrap();
    assert_eq!(a.dims(), &[16, 64]);
    assert_eq!(b.dims(), &[64, 16]);
    assert_eq!(b.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let bad = LoraConfig { target_modules: vec!["qkv".into()], ..Default::default() };
    match LoraAdapters::new(&m, bad, 0) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "target_modules"),
        other => panic!("expected config error, got {other:?}"),
    }
}

#[test]
fn zero_b_is_identity_and_merge_matches_adapter() {
    let mut m = base();
    let x = ids();
    let before = m.forward_train(&x).unwrap().0;
    let ad = LoraAdapters::new(&m, cfg_all(), 1).unwrap();
    m.attach_lora(&ad).unwrap();
    assert_eq!(max_diff(&before, &m.forward_train(&x).unwrap().0), 0.0);
    randomise_b(&ad); // shared Vars: visible through the attached model
    let with_adapter = m.forward_train(&x).unwrap().0;
    assert!(max_diff(&before, &with_adapter) > 1e-2, "adapters had no effect");
    let cached = m.forward_all(&x, 0, &mut m.new_cache()).unwrap();
    assert!(max_diff(&with_adapter, &cached) <= 1e-4);
    m.merge_lora().unwrap();
    assert!(!m.has_lora());
    let merged = m.forward_train(&x).unwrap().0;
    let d = max_diff(&with_adapter, &merged);
    assert!(d <= 1e-5, "merged vs adapter diff {d}");
}

#[test]
fn gradients_reach_adapters() {
    let mut m = base();
    let ad = LoraAdapters::new(&m, LoraConfig::default(), 2).unwrap();
    m.attach_lora(&ad).unwrap();
    let loss = m.forward_train(&ids()).unwrap().0.sqr().unwrap().mean_all().unwrap();
    let g = loss.backward().unwrap();
    for p in ad.named_parameters() {
        let grad = g.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient", p.name));
        // With B = 0 only B gets a non-zero gradient on the first step.
        if p.name.ends_with("lora_B.weight") {
            assert!(grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{}", p.name);
        }
    }
}

#[test]
fn adapters_save_and_load_alone() {
    let mut m = base();
    let ad = LoraAdapters::new(&m, cfg_all(), 3).unwrap();
    randomise_b(&ad);
    let dir = std::env::temp_dir().join(format!("bunmind-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ad.save_dir(&dir).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    let file = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(file.len(), ad.named_parameters().len());
    assert!(file.keys().all(|k| k.contains(".lora_")), "only adapter tensors are saved");
    let back = LoraAdapters::load_dir(&dir, &m).unwrap();
    m.attach_lora(&ad).unwrap();
    let a = m.forward_train(&ids()).unwrap().0;
    m.attach_lora(&back).unwrap();
    let b = m.forward_train(&ids()).unwrap().0;
    assert_eq!(max_diff(&a, &b), 0.0);
    m.detach_lora();
    assert!(max_diff(&a, &m.forward_train(&ids()).unwrap().0) > 1e-3);
    std::fs::remove_dir_all(&dir).unwrap();
}
