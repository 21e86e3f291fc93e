//! Shared by the engine's integration tests.
use bunmind_engine::trainer::Batch;

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
