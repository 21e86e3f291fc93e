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
        if p.weight_decay() {
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
    let dir = tmp("save");
    ad.save_dir(&dir).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    // PEFT's LoraConfig fields, as PeftModel.from_pretrained reads them.
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["use_dora"], false);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    let file = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(file.len(), ad.named_parameters().len());
    assert!(file.keys().all(|k| k.contains(".lora_")), "only adapter tensors are saved");
    // PEFT's names: base_model.model. + the transformers module name.
    assert!(file.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), "{:?}", file.keys().take(3).collect::<Vec<_>>());
    assert!(file.keys().all(|k| k.starts_with("base_model.model.model.layers.")));
    let (back, warnings) = LoraAdapters::load_dir(&dir, &m).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    m.attach_lora(&ad).unwrap();
    let a = m.forward_train(&ids()).unwrap().0;
    m.attach_lora(&back).unwrap();
    let b = m.forward_train(&ids()).unwrap().0;
    assert_eq!(max_diff(&a, &b), 0.0);
    m.detach_lora();
    assert!(max_diff(&a, &m.forward_train(&ids()).unwrap().0) > 1e-3);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bunmind-lora-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Rewrites a saved adapter folder: config edited by `edit`, tensor names mapped by `rename`.
fn rewrite(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>), rename: impl Fn(&str) -> String) {
    let cpath = dir.join("adapter_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cpath).unwrap()).unwrap();
    edit(cfg.as_object_mut().unwrap());
    std::fs::write(&cpath, serde_json::to_string(&cfg).unwrap()).unwrap();
    let wpath = dir.join("adapter_model.safetensors");
    let file = candle_core::safetensors::load(&wpath, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, Tensor> = file.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    candle_core::safetensors::save(&renamed, &wpath).unwrap();
}

fn logits_with(m: &mut Model, ad: &LoraAdapters) -> Tensor {
    m.attach_lora(ad).unwrap();
    let y = m.forward_train(&ids()).unwrap().0;
    m.detach_lora();
    y
}

#[test]
fn old_names_and_peft_defaults_load() {
    let mut m = base();
    let ad = LoraAdapters::new(&m, cfg_all(), 4).unwrap();
    randomise_b(&ad);
    let want = logits_with(&mut m, &ad);
    let dir = tmp("old");
    ad.save_dir(&dir).unwrap();
    // bunmind's old layout: no base_model.model. prefix, task_type as PEFT's default (null),
    // PEFT's metadata fields and an unknown one.
    rewrite(
        &dir,
        |c| {
            c.insert("task_type".into(), serde_json::Value::Null);
            c.insert("peft_version".into(), "0.17.0".into());
            c.insert("base_model_name_or_path".into(), "some/model".into());
            c.insert("init_lora_weights".into(), "gaussian".into());
            c.insert("loftq_config".into(), serde_json::json!({}));
            c.insert("layers_pattern".into(), "layers".into());
            c.insert("frobnicate".into(), 3.into());
        },
        |k| k.strip_prefix("base_model.model.").unwrap().to_string(),
    );
    let (back, warnings) = LoraAdapters::load_dir(&dir, &m).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("`frobnicate`"), "{warnings:?}");
    assert_eq!(max_diff(&want, &logits_with(&mut m, &back)), 0.0);
    // Both names of one tensor: refused.
    let dir2 = tmp("dup");
    ad.save_dir(&dir2).unwrap();
    let wpath = dir2.join("adapter_model.safetensors");
    let mut file = candle_core::safetensors::load(&wpath, &Device::Cpu).unwrap();
    let k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let t = file[k].clone();
    file.insert(k.strip_prefix("base_model.model.").unwrap().to_string(), t);
    candle_core::safetensors::save(&file, &wpath).unwrap();
    let err = LoraAdapters::load_dir(&dir2, &m).unwrap_err().to_string();
    assert!(err.contains("held twice"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn fields_that_change_the_math_are_refused_by_name() {
    let m = base();
    let ad = LoraAdapters::new(&m, cfg_all(), 5).unwrap();
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("use_dora", true.into()),
        ("fan_in_fan_out", true.into()),
        ("rank_pattern", serde_json::json!({"q_proj": 8})),
        ("alpha_pattern", serde_json::json!({"q_proj": 8})),
        ("layers_to_transform", serde_json::json!([0])),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("lora_bias", true.into()),
        ("exclude_modules", serde_json::json!(["o_proj"])),
        ("bias", "all".into()),
        ("bias", "lora_only".into()),
        ("peft_type", "IA3".into()),
        ("task_type", "SEQ_CLS".into()),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"])),
        ("target_modules", serde_json::json!(["embed_tokens"])),
        ("target_modules", serde_json::Value::Null),
        ("r", 0.into()),
        ("trainable_token_indices", serde_json::json!([1, 2])),
        ("layer_replication", serde_json::json!([[0, 1]])),
    ];
    for (field, value) in cases {
        let dir = tmp(&format!("refuse-{field}"));
        ad.save_dir(&dir).unwrap();
        rewrite(&dir, |c| {
            c.insert(field.into(), value.clone());
        }, |k| k.to_string());
        match LoraAdapters::load_dir(&dir, &m) {
            Err(Error::Config { field: f, msg }) => {
                assert_eq!(f, field, "{field} = {value}: {msg}");
                assert!(msg.contains("adapter_config.json"), "the error names the file: {msg}");
            }
            other => panic!("{field} = {value}: expected a config error, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn rslora_scales_by_alpha_over_sqrt_r() {
    let mut m = base();
    // r = 4, alpha = 8: rsLoRA's scale 8/√4 = 4 is plain LoRA's with alpha 16.
    let rs = LoraAdapters::new(&m, LoraConfig { use_rslora: true, ..cfg_all() }, 6).unwrap();
    randomise_b(&rs);
    assert_eq!(rs.config.scale(), 4.0);
    let dir = tmp("rslora");
    rs.save_dir(&dir).unwrap();
    let (back, _) = LoraAdapters::load_dir(&dir, &m).unwrap();
    assert!(back.config.use_rslora);
    let y_rs = logits_with(&mut m, &back);
    rewrite(&dir, |c| {
        c.insert("use_rslora".into(), false.into());
        c.insert("lora_alpha".into(), 16.into());
    }, |k| k.to_string());
    let (plain, _) = LoraAdapters::load_dir(&dir, &m).unwrap();
    assert!(!plain.config.use_rslora);
    let y_plain = logits_with(&mut m, &plain);
    assert!(max_diff(&y_rs, &y_plain) < 1e-5, "{}", max_diff(&y_rs, &y_plain));
    rewrite(&dir, |c| {
        c.insert("lora_alpha".into(), 8.into());
    }, |k| k.to_string());
    let (alpha8, _) = LoraAdapters::load_dir(&dir, &m).unwrap();
    assert!(max_diff(&y_rs, &logits_with(&mut m, &alpha8)) > 1e-3, "the scale matters");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn peft_target_forms_and_moe_experts() {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.vocab_size = 300;
    c.use_moe = true;
    c.num_experts = 3;
    c.num_experts_per_tok = 2;
    let mut m = Model::new(&c, 12, &Device::Cpu).unwrap();
    let experts = LoraConfig { r: 2, lora_alpha: 4.0, target_modules: vec!["gate_proj".into(), "self_attn.q_proj".into()], ..Default::default() };
    let ad = LoraAdapters::new(&m, experts, 7).unwrap();
    // every expert's gate_proj and every layer's q_proj
    assert_eq!(ad.modules().len(), m.num_layers() * (3 + 1));
    assert!(ad.modules().contains(&"model.layers.1.mlp.experts.2.gate_proj".to_string()));
    randomise_b(&ad);
    let want = logits_with(&mut m, &ad);
    let dir = tmp("moe");
    ad.save_dir(&dir).unwrap();
    let file = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(file.contains_key("base_model.model.model.layers.1.mlp.experts.2.gate_proj.lora_B.weight"));
    let (back, _) = LoraAdapters::load_dir(&dir, &m).unwrap();
    assert_eq!(max_diff(&want, &logits_with(&mut m, &back)), 0.0);
    // A regular expression (PEFT: re.fullmatch): the modules the file holds.
    rewrite(&dir, |c| {
        c.insert("target_modules".into(), r".*\.(gate_proj|q_proj)".into());
    }, |k| k.to_string());
    let (re, warnings) = LoraAdapters::load_dir(&dir, &m).unwrap();
    assert_eq!(re.modules(), ad.modules());
    assert!(warnings.iter().any(|w| w.contains("regular expression")), "{warnings:?}");
    assert_eq!(max_diff(&want, &logits_with(&mut m, &re)), 0.0);
    // all-linear: every projection must then be in the file.
    rewrite(&dir, |c| {
        c.insert("target_modules".into(), "all-linear".into());
    }, |k| k.to_string());
    let err = LoraAdapters::load_dir(&dir, &m).unwrap_err().to_string();
    assert!(err.contains("k_proj.lora_A.weight") && err.contains("missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_leaves_clones_alone_and_merged_copy() {
    let mut m = base();
    let plain = m.forward_train(&ids()).unwrap().0;
    let ad = LoraAdapters::new(&m, cfg_all(), 8).unwrap();
    randomise_b(&ad);
    m.attach_lora(&ad).unwrap();
    let with = m.forward_train(&ids()).unwrap().0;
    // merged(): a copy; this model (adapters attached) is unchanged.
    let copy = m.merged().unwrap();
    assert!(!copy.has_lora() && m.has_lora());
    assert!(max_diff(&with, &copy.forward_train(&ids()).unwrap().0) < 1e-4);
    assert_eq!(max_diff(&with, &m.forward_train(&ids()).unwrap().0), 0.0);
    // The merged copy's state dict holds base + scale·B·A.
    let sd = copy.state_dict();
    let w0 = m.state_dict()["model.layers.0.self_attn.q_proj.weight"].clone();
    let (a, b) = ad.get("model.layers.0.self_attn.q_proj").unwrap();
    let expect = (&w0 + b.as_tensor().matmul(a.as_tensor()).unwrap().affine(2.0, 0.0).unwrap()).unwrap();
    assert!(max_diff(&sd["model.layers.0.self_attn.q_proj.weight"], &expect) < 1e-6);
    // merge_lora on a clone: the original keeps its base weights and adapters.
    let mut clone = m.clone();
    clone.merge_lora().unwrap();
    assert_eq!(max_diff(&with, &m.forward_train(&ids()).unwrap().0), 0.0);
    m.detach_lora();
    assert_eq!(max_diff(&plain, &m.forward_train(&ids()).unwrap().0), 0.0);
}
