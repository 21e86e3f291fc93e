//! The hand-written prefill (`bunmind_engine::fast::prefill`, used by the KV-cached inference
//! forward for a prompt into an empty cache) against candle's graph forward (`forward_train`, no
//! cache): the logits of every prompt position, then decoding further tokens through the cache it
//! filled (keys/values in the cached attention's layout, RoPE positions continuing).
//! Its own binary: no test here turns the fast path off (`BUNMIND_HANDWRITTEN_CPU`).
use bunmind_engine::fast;
use bunmind_engine::model::{LoraAdapters, LoraConfig, Model, ModelConfig};
use candle_core::{Device, Tensor, D};

mod common;
use common::{random_batch, small_config};

fn cfg(hidden: usize, heads: usize, kv: usize, tied: bool, interleaved: bool, qk_norm: bool) -> ModelConfig {
    let mut c = small_config(hidden, heads, kv, tied, interleaved);
    c.vocab_size = 71;
    c.qk_norm = Some(qk_norm);
    c
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn close(got: &Tensor, want: &Tensor, what: &str) {
    let diff = max_abs(&(got - want).unwrap());
    let scale = max_abs(want).max(1e-3);
    assert!(diff <= 2e-5 * scale.max(1.0), "{what}: max |diff| {diff} (scale {scale})");
}

fn check(c: ModelConfig, b: usize, t: usize, extra: usize) {
    check_model(&Model::new(&c, 5, &Device::Cpu).unwrap(), &c, b, t, extra);
}

fn check_model(model: &Model, c: &ModelConfig, b: usize, t: usize, extra: usize) {
    assert!(fast::unsupported(model).is_none());
    let all = random_batch(b, t + extra, c.vocab_size as u32, 9, false).ids;
    let ids = Tensor::from_vec(all.clone(), (b, t + extra), &Device::Cpu).unwrap();
    let (reference, _) = model.forward_train(&ids).unwrap(); // [b, t+extra, V]

    // The fast forward itself: its hidden states through the head give the graph's logits.
    let prompt: Vec<u32> = (0..b).flat_map(|r| all[r * (t + extra)..r * (t + extra) + t].to_vec()).collect();
    let p = fast::prefill(model, &prompt, b, t).unwrap();
    assert_eq!(p.kv.len(), c.num_hidden_layers);
    assert_eq!(p.hidden.len(), b * t * c.hidden_size);

    // Through the model's cached forward (which takes the fast path for a prompt into an empty cache).
    let mut cache = model.new_cache();
    let got = model.forward_all(&ids.narrow(1, 0, t).unwrap(), 0, &mut cache).unwrap();
    close(&got, &reference.narrow(1, 0, t).unwrap(), "prompt logits");
    // Then one token at a time from the cache the fast prefill filled.
    for j in t..t + extra {
        let l = model.forward(&ids.narrow(1, j, 1).unwrap(), j, &mut cache).unwrap();
        close(&l, &reference.narrow(1, j, 1).unwrap().squeeze(1).unwrap(), &format!("decode at {j}"));
    }
    // Greedy picks agree too (the user-visible result).
    let a = got.argmax(D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let r = reference.narrow(1, 0, t).unwrap().argmax(D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(a, r);
}

#[test]
fn gqa_tied_two_rows_across_attention_blocks() {
    check(cfg(32, 4, 2, true, false, false), 2, 70, 3);
}

#[test]
fn mha_untied_interleaved_rope_short_prompt() {
    check(cfg(24, 3, 3, false, true, false), 1, 5, 2);
}

#[test]
fn qk_norm() {
    check(cfg(32, 4, 1, true, false, true), 1, 9, 2);
}

#[test]
fn bad_ids_are_named() {
    let c = cfg(16, 2, 1, true, false, false);
    let model = Model::new(&c, 1, &Device::Cpu).unwrap();
    let err = fast::prefill(&model, &[1, 2, 999, 3], 1, 4).err().unwrap().to_string();
    assert!(err.contains("token id 999 at position 2"), "{err}");
}

#[test]
fn lora_adapters_on_every_projection() {
    // Adapters with non-zero B (scale alpha/r = 2): the prefill adds them as the graph does.
    let c = cfg(32, 4, 2, false, false, true);
    let mut model = Model::new(&c, 5, &Device::Cpu).unwrap();
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec();
    let ad = LoraAdapters::new(&model, LoraConfig { r: 4, lora_alpha: 8.0, target_modules: targets, ..Default::default() }, 3).unwrap();
    for p in ad.named_parameters() {
        if p.name.ends_with("lora_B.weight") {
            let n = p.var.elem_count();
            let v: Vec<f32> = (0..n).map(|i| 0.3 * (i as f32 * 0.37).sin()).collect();
            p.var.set(&Tensor::from_vec(v, p.var.shape().clone(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    let plain = Model::new(&c, 5, &Device::Cpu).unwrap();
    model.attach_lora(&ad).unwrap();
    // The adapters change the prompt's hidden states (else this test would check nothing).
    let ids: Vec<u32> = (0..9).map(|i| i * 5 % 71).collect();
    let (h0, h1) = (fast::prefill(&plain, &ids, 1, 9).unwrap().hidden, fast::prefill(&model, &ids, 1, 9).unwrap().hidden);
    assert!(h0.iter().zip(&h1).any(|(a, b)| (a - b).abs() > 1e-2));
    check_model(&model, &c, 2, 20, 2);
}
