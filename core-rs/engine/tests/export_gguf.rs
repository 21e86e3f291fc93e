//! GGUF export: the q/k row permutation that moves RoPE between rotate-half and interleaved
//! pairing (checked through bunmind's own forward), the refusals of `gguf_unsupported`, and a file
//! read back with candle's GGUF reader (metadata, shapes, weights).
use std::collections::HashMap;

use bunmind_engine::export::gguf::{rope_half_to_interleaved, rope_interleaved_to_half};
use bunmind_engine::export::{export_gguf, gguf_arch, gguf_unsupported, GgufArch, GgufOptions, GgufTokenizer, GgufType};
use bunmind_engine::model::{Model, ModelConfig, RopeScaling};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

fn tiny(qk: bool, interleaved: bool) -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.vocab_size = 300;
    c.qk_norm = Some(qk);
    c.rope_interleaved = interleaved;
    c
}

/// Random weights scaled ×4 so logits are O(1) and a wrong permutation shows.
fn model(c: &ModelConfig, seed: u64) -> Model {
    let m = Model::new(c, seed, &Device::Cpu).unwrap();
    for p in m.named_parameters() {
        if p.weight_decay() {
            p.var.set(&(p.var.as_tensor() * 4.0).unwrap()).unwrap();
        }
    }
    m
}

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut cache = m.new_cache();
    m.forward_all(&x, 0, &mut cache).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const IDS: &[u32] = &[5, 17, 250, 3, 99, 42, 7, 123, 64, 200];

/// The same model with the other RoPE pairing: q/k rows (and q/k norm weights) permuted.
fn repaired(m: &Model, to_interleaved: bool) -> Model {
    let c = m.config().clone();
    let mut c2 = c.clone();
    c2.rope_interleaved = to_interleaved;
    let mut sd: HashMap<String, Tensor> = m.state_dict();
    let perm = |t: &Tensor, heads: usize| if to_interleaved { rope_half_to_interleaved(t, heads).unwrap() } else { rope_interleaved_to_half(t, heads).unwrap() };
    for i in 0..c.num_hidden_layers {
        for (name, heads) in [("q_proj", c.num_attention_heads), ("k_proj", c.kv_heads()), ("q_norm", 1), ("k_norm", 1)] {
            let key = format!("model.layers.{i}.self_attn.{name}.weight");
            if let Some(t) = sd.get(&key).cloned() {
                sd.insert(key, perm(&t, heads));
            }
        }
    }
    Model::from_tensors(c2, sd, &Device::Cpu).unwrap().0
}

#[test]
fn permutation_moves_rows_as_documented_and_roundtrips() {
    let (heads, hd, cols) = (3usize, 8usize, 5usize);
    let w = Tensor::arange(0f32, (heads * hd * cols) as f32, &Device::Cpu).unwrap().reshape((heads * hd, cols)).unwrap();
    let p = rope_half_to_interleaved(&w, heads).unwrap();
    let (wv, pv) = (w.to_vec2::<f32>().unwrap(), p.to_vec2::<f32>().unwrap());
    for h in 0..heads {
        for j in 0..hd / 2 {
            for c in 0..2 {
                assert_eq!(pv[h * hd + 2 * j + c], wv[h * hd + c * hd / 2 + j], "head {h} pair {j} member {c}");
            }
        }
    }
    assert_ne!(pv, wv);
    let back = rope_interleaved_to_half(&p, heads).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(back, wv);
    assert!(rope_half_to_interleaved(&w, 5).is_err(), "24 rows do not split into 5 heads");
}

#[test]
fn permuted_weights_with_interleaved_rope_compute_the_rotate_half_model() {
    for qk in [false, true] {
        let half = model(&tiny(qk, false), 3);
        let inter = repaired(&half, true);
        let (a, b) = (logits(&half, IDS), logits(&inter, IDS));
        assert!(max_abs(&a, &b) < 1e-4, "qk_norm {qk}: {}", max_abs(&a, &b));
        // Sensitivity: the same weights without the permutation compute something else.
        let mut c = tiny(qk, true);
        c.qk_norm = Some(qk);
        let plain = Model::from_tensors(c, half.state_dict(), &Device::Cpu).unwrap().0;
        assert!(max_abs(&a, &logits(&plain, IDS)) > 1e-2);
        // And back: interleaved → rotate-half (the qwen3 mapping of an interleaved model).
        let again = repaired(&inter, false);
        assert!(max_abs(&a, &logits(&again, IDS)) < 1e-4);
    }
}

#[test]
fn unsupported_configs_name_the_field() {
    let ok = tiny(false, false);
    assert_eq!(gguf_unsupported(&ok), None);
    assert_eq!(gguf_arch(&ok), GgufArch::Llama);
    assert_eq!(gguf_arch(&tiny(true, false)), GgufArch::Qwen3);

    let mut moe = tiny(true, false);
    moe.use_moe = true;
    moe.num_experts = 4;
    moe.num_experts_per_tok = 2;
    assert_eq!(gguf_arch(&moe), GgufArch::Qwen3Moe);
    assert_eq!(gguf_unsupported(&moe), None);
    let mut shared = moe.clone();
    shared.n_shared_experts = 1;
    assert!(gguf_unsupported(&shared).unwrap().contains("`n_shared_experts`"));
    let mut nonorm = moe.clone();
    nonorm.norm_topk_prob = false;
    assert!(gguf_unsupported(&nonorm).unwrap().contains("`norm_topk_prob`"));
    // Renormalising all experts' weights changes nothing: top-k = all is exportable either way.
    nonorm.num_experts_per_tok = 4;
    assert_eq!(gguf_unsupported(&nonorm), None);

    let mut yarn = tiny(false, false);
    yarn.rope_scaling = Some(RopeScaling { factor: 4.0, original_max_position_embeddings: 16, ..RopeScaling::default() });
    assert_eq!(gguf_unsupported(&yarn), None);
    yarn.rope_scaling.as_mut().unwrap().beta_fast = 16.0;
    assert!(gguf_unsupported(&yarn).unwrap().contains("beta_fast"));
    // YaRN that bunmind leaves off (max_position_embeddings ≤ the original context) needs no mapping.
    let mut off = tiny(false, false);
    off.rope_scaling = Some(RopeScaling { beta_fast: 16.0, original_max_position_embeddings: off.max_position_embeddings, ..RopeScaling::default() });
    assert_eq!(gguf_unsupported(&off), None);
}

/// GPT-2's byte → printable-char map, for a byte-level tokenizer.json without merges.
fn byte_level_tokenizer(n_added: usize) -> String {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    let mut vocab = serde_json::Map::new();
    let added: Vec<serde_json::Value> = (0..n_added)
        .map(|i| serde_json::json!({"id": i, "content": format!("<|s{i}|>"), "special": true, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false}))
        .collect();
    for i in 0..n_added {
        vocab.insert(format!("<|s{i}|>"), serde_json::json!(i));
    }
    for (i, (_, c)) in pairs.iter().enumerate() {
        vocab.insert(char::from_u32(*c).unwrap().to_string(), serde_json::json!(n_added + i));
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}

#[test]
fn written_file_reads_back_with_metadata_shapes_and_weights() {
    let mut c = tiny(true, false);
    c.vocab_size = 3 + 256 + 5; // 5 ids without a token: written as unused [PAD<id>]
    c.tie_word_embeddings = false;
    c.intermediate_size = 200; // ffn_down rows of 200 values: no q8_0 blocks
    let m = model(&c, 9);
    let dir = std::env::temp_dir().join(format!("bunmind-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.gguf");
    let tok = GgufTokenizer { json: byte_level_tokenizer(3), config: None, chat_template: Some("{{ messages }}".into()), source: "inline".into() };
    let report = export_gguf(&m, &GgufOptions { ty: GgufType::F32, name: "t".into(), tokenizer: tok, source: String::new() }, &out).unwrap();
    assert_eq!(report.architecture, GgufArch::Qwen3);
    assert!(!out.with_extension("gguf.tmp").exists());
    let mut f = std::fs::File::open(&out).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let md = |k: &str| content.metadata.get(k).unwrap_or_else(|| panic!("missing {k}"));
    assert_eq!(md("general.architecture").to_string().unwrap(), "qwen3");
    assert_eq!(md("qwen3.block_count").to_u32().unwrap() as usize, c.num_hidden_layers);
    assert_eq!(md("qwen3.attention.head_count_kv").to_u32().unwrap() as usize, c.kv_heads());
    assert_eq!(md("tokenizer.ggml.pre").to_string().unwrap(), "gpt-2");
    let tokens = md("tokenizer.ggml.tokens").to_vec().unwrap();
    assert_eq!(tokens.len(), c.vocab_size);
    assert_eq!(tokens[0].to_string().unwrap(), "<|s0|>");
    assert_eq!(tokens[c.vocab_size - 1].to_string().unwrap(), &format!("[PAD{}]", c.vocab_size - 1));
    let types = md("tokenizer.ggml.token_type").to_vec().unwrap();
    assert_eq!((types[0].to_i32().unwrap(), types[3].to_i32().unwrap(), types[c.vocab_size - 1].to_i32().unwrap()), (3, 1, 5));
    assert!(!md("tokenizer.ggml.add_bos_token").to_bool().unwrap());
    assert!(report.warnings.iter().any(|w| w.contains("5 of the model's")));
    // Shapes (ggml order: innermost first) and values.
    let info = &content.tensor_infos["blk.0.attn_q.weight"];
    assert_eq!(info.shape.dims(), &[c.num_attention_heads * c.head_dim(), c.hidden_size]);
    let sd = m.state_dict();
    let embd = content.tensor(&mut f, "token_embd.weight", &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
    let want = &sd["model.embed_tokens.weight"];
    assert_eq!(embd.dims(), want.dims());
    assert_eq!(embd.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert!(content.tensor_infos.contains_key("output.weight"));
    // qwen3 keeps rotate-half: q is stored unpermuted.
    let q = content.tensor(&mut f, "blk.1.attn_q.weight", &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
    assert_eq!(q.flatten_all().unwrap().to_vec1::<f32>().unwrap(), sd["model.layers.1.self_attn.q_proj.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap());

    // q8_0 falls back to f16 for rows that are not a multiple of 32 and says so; nothing else changes.
    let out8 = dir.join("m8.gguf");
    let tok = GgufTokenizer { json: byte_level_tokenizer(3), config: None, chat_template: None, source: "inline".into() };
    let r8 = export_gguf(&m, &GgufOptions { ty: GgufType::Q8_0, name: "t".into(), tokenizer: tok, source: String::new() }, &out8).unwrap();
    assert!(r8.bytes < report.bytes);
    let mut f8 = std::fs::File::open(&out8).unwrap();
    let c8 = gguf_file::Content::read(&mut f8).unwrap();
    assert_eq!(c8.tensor_infos["blk.0.attn_q.weight"].ggml_dtype, candle_core::quantized::GgmlDType::Q8_0);
    assert_eq!(c8.tensor_infos["blk.0.attn_norm.weight"].ggml_dtype, candle_core::quantized::GgmlDType::F32);
    assert_eq!(c8.tensor_infos["blk.0.ffn_down.weight"].ggml_dtype, candle_core::quantized::GgmlDType::F16);
    assert_eq!(c8.tensor_infos["blk.0.ffn_up.weight"].ggml_dtype, candle_core::quantized::GgmlDType::Q8_0);
    assert!(r8.warnings.iter().any(|w| w.contains("blk.0.ffn_down.weight")), "{:?}", r8.warnings);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn refuses_a_tokenizer_bigger_than_the_model_vocab() {
    let c = tiny(false, false); // vocab 300 < 3 + 256 + 100 tokens
    let m = model(&c, 1);
    let out = std::env::temp_dir().join(format!("bunmind-gguf-refuse-{}.gguf", std::process::id()));
    let tok = GgufTokenizer { json: byte_level_tokenizer(100), config: None, chat_template: None, source: "inline".into() };
    let e = export_gguf(&m, &GgufOptions { ty: GgufType::F32, name: "t".into(), tokenizer: tok, source: String::new() }, &out).unwrap_err().to_string();
    assert!(e.contains("vocab_size 300"), "{e}");
    assert!(!out.exists());
}
