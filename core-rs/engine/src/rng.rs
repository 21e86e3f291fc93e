//! The one RNG of the Rust core: xoshiro256** (Blackman & Vigna) seeded through splitmix64, with
//! named streams. Weight init, LoRA init, dropout masks, sampling, gradient-check subsets and test
//! inputs each draw from their own stream of the run's seed ([`Rng::stream`]), so adding draws to
//! one never shifts another, and the same seed gives the same bits on every platform (wasm
//! included).
//!
//! The whole state is four `u64` words, so a checkpoint stores it (`trainer_state.json` `rng`) and
//! a resumed run continues the exact same stream. In JSON the words are written as hex strings:
//! JavaScript reads JSON numbers as f64 and would silently round words above 2^53.
//!
//! | Stream | Drawn by |
//! |---|---|
//! | `"init"` | `model::params::init_varmap` (N(0, 0.02²) weights, in walk order) |
//! | `"lora"` | `LoraAdapters::new` (the A matrices) |
//! | `"dropout"` | the trainer's dropout masks (the checkpointed state), `SeededDropout` |
//! | `"sample"` | generation (`generate`; batch row `i` uses seed + i) |
//! | `"gradcheck"` | `train::check_gradients` (which elements it probes) |
//! | `"parity"` | `ops::parity` (kernel parity inputs) |
use candle_core::{Device, Shape, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The complete RNG state. Serialises as `["0x…", "0x…", "0x…", "0x…"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngState(pub [u64; 4]);

impl Serialize for RngState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let words: Vec<String> = self.0.iter().map(|w| format!("{w:#018x}")).collect();
        words.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RngState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let words = Vec::<String>::deserialize(d)?;
        if words.len() != 4 {
            return Err(D::Error::custom(format!("rng state needs 4 words, got {}", words.len())));
        }
        let mut out = [0u64; 4];
        for (o, w) in out.iter_mut().zip(&words) {
            let hex = w.strip_prefix("0x").unwrap_or(w);
            *o = u64::from_str_radix(hex, 16)
                .map_err(|e| D::Error::custom(format!("rng state word `{w}`: {e}")))?;
        }
        if out == [0; 4] {
            return Err(D::Error::custom("rng state is all zeros (xoshiro256** would only emit zeros)"));
        }
        Ok(RngState(out))
    }
}

/// FNV-1a, 64 bits: a stream name's tag.
fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

/// xoshiro256** generator. Not cryptographic; fast and statistically strong for ML use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// Seeds the four state words from `seed` through splitmix64 (never all zero).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)];
        Rng { s }
    }

    /// The stream `name` of `seed`: [`Rng::new`] of `seed ^ FNV-1a(name)`. Different names give
    /// independent generators for one seed; the same (seed, name) always the same stream.
    pub fn stream(seed: u64, name: &str) -> Self {
        Rng::new(seed ^ fnv1a64(name))
    }

    pub fn state(&self) -> RngState {
        RngState(self.s)
    }

    pub fn from_state(state: RngState) -> Result<Self> {
        if state.0 == [0; 4] {
            return Err(Error::input("rng state is all zeros: not a state this generator can reach"));
        }
        Ok(Rng { s: state.0 })
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 random bits (every value exactly representable in f32).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box–Muller. Uses two uniforms per call and keeps no spare value,
    /// so the state stays the four words.
    pub fn normal_f64(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform_f64(); // (0, 1]: ln never sees 0
        let u2 = self.uniform_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// [`Rng::normal_f64`] rounded to f32.
    pub fn normal_f32(&mut self) -> f32 {
        self.normal_f64() as f32
    }

    /// `n` i.i.d. N(mean, std²) f32 values.
    pub fn normal_vec(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n).map(|_| mean + std * self.normal_f32()).collect()
    }

    /// Uniform integer in [0, n) without modulo bias (Lemire's multiply-shift with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A uniformly random permutation of 0..n.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }

    /// Inverted-dropout mask: each element is `1/keep_prob` with probability `keep_prob`, else 0,
    /// as an f32 tensor on `device`. Multiply activations by it in training; no rescale at inference.
    pub fn bernoulli_mask(&mut self, shape: impl Into<Shape>, keep_prob: f32, device: &Device) -> Result<Tensor> {
        if !(keep_prob > 0.0 && keep_prob <= 1.0) {
            return Err(Error::input(format!("bernoulli_mask: keep_prob must be in (0, 1], got {keep_prob}")));
        }
        let shape = shape.into();
        let scale = 1.0 / keep_prob;
        let data: Vec<f32> = (0..shape.elem_count())
            .map(|_| if self.uniform_f32() < keep_prob { scale } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    }

    /// Tensor of i.i.d. N(mean, std²) f32 values on `device` (for initialisation, e.g. LoRA A).
    pub fn normal_tensor(&mut self, shape: impl Into<Shape>, mean: f32, std: f32, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Ok(Tensor::from_vec(self.normal_vec(shape.elem_count(), mean, std), shape, device)?)
    }
}
