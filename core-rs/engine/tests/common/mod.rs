//! Shared by the engine's integration tests (each test binary uses a part of it).
#![allow(dead_code)]
use bunmind_engine::model::ModelConfig;
use bunmind_engine::rng::Rng;
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

/// `n` token ids below `vocab` from the `"test-batch"` stream of `seed` (the engine's one RNG).
pub fn random_tokens(n: usize, vocab: u32, seed: u32) -> Vec<u32> {
    let mut rng = Rng::stream(seed as u64, "test-batch");
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// Deterministic pseudo-random `[b, t]` ids and independent random targets; with `holes`, the
/// mask skips every 7th position and the first two of each row.
pub fn random_batch(b: usize, t: usize, vocab: u32, seed: u32, holes: bool) -> Batch {
    let tokens = random_tokens(2 * b * t, vocab, seed);
    let (ids, targets) = tokens.split_at(b * t);
    let mask = (0..b * t).map(|i| if holes && (i % 7 == 3 || i % t < 2) { 0.0 } else { 1.0 }).collect();
    Batch { ids: ids.to_vec(), targets: targets.to_vec(), mask, b, t }
}

/// A language-model batch: `b` random sequences of `t + 1` tokens, ids = the first `t`, targets
/// = the last `t` (next-token), and a mask with a hole at every 5th position (i % 5 == 2).
pub fn shifted_batch(b: usize, t: usize, vocab: u32, seed: u32) -> Batch {
    let seq = random_tokens(b * (t + 1), vocab, seed);
    let rows = || seq.chunks(t + 1);
    let ids = rows().flat_map(|r| r[..t].to_vec()).collect();
    let targets = rows().flat_map(|r| r[1..].to_vec()).collect();
    let mask = (0..b * t).map(|i| if i % 5 == 2 { 0.0 } else { 1.0 }).collect();
    Batch { ids, targets, mask, b, t }
}
