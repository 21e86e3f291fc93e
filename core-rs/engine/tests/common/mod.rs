//! Shared by the engine's integration tests (each test binary uses a part of it).
#![allow(dead_code)]
use bunmind_engine::model::ModelConfig;
use bunmind_engine::trainer::Batch;

/// A two-layer model of the `tiny` preset resized for gradient checks: vocab 53, intermediate
/// 1.5 × hidden, RoPE θ 1000, 256 positions.
pub fn small_config(hidden: usize, heads: usize, kv: usize, tied: bool, interleaved: bool) -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.hidden_size = hidden;
    c.num_attention_heads = heads;
    c.num_key_value_heads = Some(kv);
    c.intermediate_size = hidden * 3 / 2;
    c.vocab_size = 53;
    c.num_hidden_layers = 2;
    c.max_position_embeddings = 256;
    c.tie_word_embeddings = tied;
    c.rope_interleaved = interleaved;
    c.rope_theta = 1000.0;
    c
}

/// Deterministic pseudo-random `[b, t]` ids and targets (xorshift32 from `seed`); with `holes`,
/// the mask skips every 7th position and the first two of each row.
pub fn random_batch(b: usize, t: usize, vocab: u32, seed: u32, holes: bool) -> Batch {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let ids: Vec<u32> = (0..b * t).map(|_| next() % vocab).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| next() % vocab).collect();
    let mask = (0..b * t).map(|i| if holes && (i % 7 == 3 || i % t < 2) { 0.0 } else { 1.0 }).collect();
    Batch { ids, targets, mask, b, t }
}
