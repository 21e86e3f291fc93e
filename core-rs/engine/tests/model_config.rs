//! ModelConfig: presets, parameter counts against MiniMind's published sizes, JSON compatibility, validation.
use bunmind_engine::model::{count_parameters, param_specs, ModelConfig};
use bunmind_engine::Error;

fn assert_about(name: &str, want_millions: f64, tol: f64) {
    let cfg = ModelConfig::preset(name).unwrap();
    let got = count_parameters(&cfg) as f64 / 1e6;
    assert!((got - want_millions).abs() <= tol, "{name}: {got:.2}M parameters, REFERENCE says {want_millions}M");
}

#[test]
fn preset_parameter_counts_match_reference() {
    assert_about("minimind2-small", 25.8, 0.05);
    assert_about("minimind-3", 63.9, 0.05);
    assert_about("minimind-v1", 26.9, 0.05);
    assert_about("minimind2", 104.0, 1.0);
    assert_about("minimind2-moe", 145.0, 1.0);
    assert_about("minimind-3-moe", 198.0, 1.0);
}

#[test]
fn preset_shapes() {
    let v1 = ModelConfig::preset("minimind-v1").unwrap();
    assert_eq!((v1.intermediate_size, v1.rope_theta, v1.rms_norm_eps, v1.max_position_embeddings), (1408, 1e4, 1e-5, 512));
    assert!(v1.rope_interleaved && !v1.use_qk_norm());
    let m3 = ModelConfig::preset("minimind-3").unwrap();
    assert_eq!((m3.intermediate_size, m3.kv_heads(), m3.head_dim()), (2432, 4, 96));
    assert!(m3.use_qk_norm() && !m3.rope_interleaved);
    let moe = ModelConfig::preset("minimind-3-moe").unwrap();
    assert_eq!((moe.num_experts, moe.num_experts_per_tok, moe.n_shared_experts), (4, 1, 0));
    let moe2 = ModelConfig::preset("minimind2-moe").unwrap();
    assert_eq!((moe2.num_experts, moe2.num_experts_per_tok, moe2.n_shared_experts), (4, 2, 1));
    assert!(ModelConfig::preset("tiny").unwrap().hidden_size <= 64);
    match ModelConfig::preset("nope") {
        Err(Error::Config { field, .. }) => assert_eq!(field, "preset"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn tied_presets_have_no_lm_head() {
    let cfg = ModelConfig::preset("minimind2-small").unwrap();
    assert!(!param_specs(&cfg).iter().any(|s| s.name == "lm_head.weight"));
    let untied = ModelConfig { tie_word_embeddings: false, ..cfg.clone() };
    assert_eq!(count_parameters(&untied) - count_parameters(&cfg), 6400 * 512);
}

#[test]
fn json_round_trip_and_hf_fields() {
    for name in ModelConfig::PRESETS {
        let cfg = ModelConfig::preset(name).unwrap();
        let back = ModelConfig::from_json_str(&cfg.to_json_string().unwrap()).unwrap();
        assert_eq!(back.head_dim(), cfg.head_dim());
        assert_eq!(back.use_qk_norm(), cfg.use_qk_norm());
        assert_eq!(count_parameters(&back), count_parameters(&cfg), "{name}");
    }
    // An upstream MiniMind config: its extra keys are known (no warning), eos as a list keeps the first.
    let text = r#"{"hidden_size": 768, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 4, "intermediate_size": 2432, "vocab_size": 6400, "hidden_act": "silu",
        "flash_attn": true, "eos_token_id": [2, 0], "model_type": "minimind", "rope_theta": 1000000.0,
        "qk_norm": true}"#;
    let (cfg, warnings) = ModelConfig::import_json_str(text).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(cfg.use_qk_norm());
    assert_eq!(cfg.eos_token_id, Some(2));
    assert_eq!(count_parameters(&cfg), count_parameters(&ModelConfig::preset("minimind-3").unwrap()));
    // Upstream's inference_rope_scaling switch turns on the default YaRN parameters.
    let cfg = ModelConfig::from_json_str(&text.replace("\"flash_attn\": true", "\"inference_rope_scaling\": true")).unwrap();
    assert_eq!(cfg.effective_rope_scaling().unwrap().factor, 16.0);
    // The same sizes as transformers' Qwen3: q/k-norm always, untied by default, `flash_attn` unknown there.
    let (q, warnings) = ModelConfig::import_json_str(&text.replace("\"minimind\"", "\"qwen3\"").replace("\"qk_norm\": true", "\"use_cache\": true")).unwrap();
    assert!(q.use_qk_norm() && !q.tie_word_embeddings);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("`flash_attn`"), "{warnings:?}");
}

#[test]
fn minimind_v2_router_fields() {
    // MiniMind v2 names the router settings n_routed_experts / aux_loss_alpha and renormalises the
    // kept weights only for k > 1.
    let v2 = r#"{"hidden_size": 640, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
        "intermediate_size": 1728, "use_moe": true, "n_routed_experts": 4, "num_experts_per_tok": 1,
        "n_shared_experts": 1, "norm_topk_prob": true, "aux_loss_alpha": 0.1, "scoring_func": "softmax",
        "seq_aux": true, "model_type": "minimind"}"#;
    let (c, warnings) = ModelConfig::import_json_str(v2).unwrap();
    assert_eq!((c.num_experts, c.n_shared_experts, c.router_aux_loss_coef, c.norm_topk_prob), (4, 1, 0.1, false));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("`seq_aux`"));
    let k2 = ModelConfig::from_json_str(&v2.replace("\"num_experts_per_tok\": 1", "\"num_experts_per_tok\": 2")).unwrap();
    assert!(k2.norm_topk_prob);
    assert_eq!(field_of(ModelConfig::from_json_str(&v2.replace("\"softmax\"", "\"sigmoid\""))), "scoring_func");
}

fn field_of(r: Result<ModelConfig, Error>) -> String {
    match r {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn validation_names_the_field() {
    let base = ModelConfig::preset("tiny").unwrap();
    let bad = |f: &dyn Fn(&mut ModelConfig)| {
        let mut c = base.clone();
        f(&mut c);
        field_of(c.validate().map(|_| c.clone()))
    };
    assert_eq!(bad(&|c| c.num_key_value_heads = Some(3)), "num_key_value_heads");
    assert_eq!(bad(&|c| c.hidden_size = 66), "hidden_size");
    assert_eq!(bad(&|c| c.head_dim = Some(15)), "head_dim");
    assert_eq!(bad(&|c| c.vocab_size = 0), "vocab_size");
    assert_eq!(bad(&|c| c.dropout = 1.5), "dropout");
    assert_eq!(bad(&|c| { c.use_moe = true; c.num_experts_per_tok = 5 }), "num_experts_per_tok");
    assert_eq!(bad(&|c| c.eos_token_id = Some(99999)), "eos_token_id");
    assert_eq!(bad(&|c| c.rope_scaling = Some(bunmind_engine::model::RopeScaling { r#type: "linear".into(), ..Default::default() })), "rope_scaling.type");
    let missing = ModelConfig::from_json_str(r#"{"num_hidden_layers": 2}"#);
    assert_eq!(field_of(missing), "hidden_size");
}
