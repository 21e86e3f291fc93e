//! Sampling and streaming generation with the KV cache.
//!
//! [`sample`] is a plain function of (logits, history, options, rng): repetition penalty (CTRL:
//! positive logits ÷ p, negative × p, over the distinct tokens of prompt + generated) → greedy
//! when `temperature <= 0` → ÷ temperature → top-k (keep logits ≥ the k-th largest) → top-p (keep
//! the smallest prefix of the sorted distribution whose mass ≥ p) → draw from the softmax.
//!
//! [`GenerationSession`] prefills the prompt on the first [`GenerationSession::next_token`] call and
//! then feeds one token per call, so a caller (FFI) can stream one token per call.
//! [`BatchGenerationSession`] decodes several prompts in lock step: prompts are left-padded with
//! `pad_token_id` and the pad keys are masked (RoPE is relative, so each row matches decoding it
//! alone); row i samples from its own RNG seeded with `seed + i`.
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::{Cache, Model, Rng};
use crate::{Error, Result};

/// Generation options; defaults are upstream MiniMind's (`eval_llm.py` / `serve_openai_api.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationOptions {
    /// 0 (or less) = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    pub max_new_tokens: usize,
    /// Generation ends after one of these is produced (the stop token is yielded).
    pub stop_token_ids: Vec<u32>,
    pub seed: u64,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        GenerationOptions {
            temperature: 0.85,
            top_k: 50,
            top_p: 0.85,
            repetition_penalty: 1.0,
            max_new_tokens: 512,
            stop_token_ids: vec![2],
            seed: 42,
        }
    }
}

impl GenerationOptions {
    pub fn greedy() -> Self {
        GenerationOptions { temperature: 0.0, ..Default::default() }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() {
            return Err(Error::input("temperature must be a finite number (0 = greedy)"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::input(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::input(format!("repetition_penalty {} must be > 0", self.repetition_penalty)));
        }
        Ok(())
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Applies the CTRL repetition penalty in place over the distinct ids of `history`.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in history {
        let i = id as usize;
        if i < logits.len() && !seen[i] {
            seen[i] = true;
            logits[i] = if logits[i] > 0.0 { logits[i] / penalty } else { logits[i] * penalty };
        }
    }
}

/// The probability distribution after temperature, top-k and top-p (zeros for removed tokens).
/// Requires `temperature > 0`.
pub fn filtered_probs(logits: &[f32], opts: &GenerationOptions) -> Vec<f32> {
    let v = logits.len();
    let mut l: Vec<f32> = logits.iter().map(|x| x / opts.temperature).collect();
    if opts.top_k > 0 && opts.top_k < v {
        let mut sorted = l.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        let kth = sorted[opts.top_k - 1];
        l.iter_mut().filter(|x| **x < kth).for_each(|x| *x = f32::NEG_INFINITY);
    }
    let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = l.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    if opts.top_p < 1.0 {
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        let mut cum = 0.0f32;
        let mut keep = vec![false; v];
        for &i in &order {
            keep[i] = true;
            cum += p[i];
            if cum >= opts.top_p {
                break;
            }
        }
        let mut total = 0.0;
        for i in 0..v {
            if !keep[i] {
                p[i] = 0.0;
            }
            total += p[i];
        }
        p.iter_mut().for_each(|x| *x /= total);
    }
    p
}

/// Picks the next token from one row of logits. `history` = prompt + generated so far.
pub fn sample(logits: &[f32], history: &[u32], opts: &GenerationOptions, rng: &mut Rng) -> u32 {
    let mut l = logits.to_vec();
    apply_repetition_penalty(&mut l, history, opts.repetition_penalty);
    if opts.temperature <= 0.0 || opts.top_k == 1 {
        return argmax(&l);
    }
    let p = filtered_probs(&l, opts);
    let u = rng.uniform_f64() as f32;
    let mut cum = 0.0f32;
    let mut last_kept = argmax(&p);
    for (i, &pi) in p.iter().enumerate() {
        if pi > 0.0 {
            cum += pi;
            last_kept = i as u32;
            if u < cum {
                return i as u32;
            }
        }
    }
    last_kept // rounding left u ≥ Σp: take the last kept token
}

/// Why a session stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The sequence reached `max_position_embeddings`.
    ContextFull,
}

/// One sequence: prefill + incremental decode, one token per `next_token` call.
pub struct GenerationSession {
    model: Arc<Model>,
    cache: Cache,
    opts: GenerationOptions,
    rng: Rng,
    tokens: Vec<u32>,
    prompt_len: usize,
    finish: Option<FinishReason>,
}

fn check_prompt(model: &Model, prompt: &[u32], what: &str) -> Result<()> {
    let cfg = model.config();
    if prompt.is_empty() {
        return Err(Error::input(format!("{what} is empty; start it with at least one token{})", cfg.bos_token_id.map(|b| format!(" (e.g. bos {b})")).unwrap_or_default())));
    }
    if let Some((pos, &id)) = prompt.iter().enumerate().find(|(_, &id)| id as usize >= cfg.vocab_size) {
        return Err(Error::input(format!("token id {id} at position {pos} of {what} is out of range for vocab_size {}", cfg.vocab_size)));
    }
    if prompt.len() > cfg.max_position_embeddings {
        return Err(Error::input(format!(
            "{what} has {} tokens, more than max_position_embeddings {}",
            prompt.len(),
            cfg.max_position_embeddings
        )));
    }
    Ok(())
}

impl GenerationSession {
    pub fn new(model: Arc<Model>, prompt: &[u32], opts: GenerationOptions) -> Result<Self> {
        opts.validate()?;
        check_prompt(&model, prompt, "the prompt")?;
        Ok(GenerationSession {
            cache: model.new_cache(),
            rng: Rng::stream(opts.seed, "sample"),
            tokens: prompt.to_vec(),
            prompt_len: prompt.len(),
            finish: if opts.max_new_tokens == 0 { Some(FinishReason::Length) } else { None },
            model,
            opts,
        })
    }

    /// Continues a conversation: `tokens` is the whole history (earlier turns + the new prompt) and
    /// `cache` already holds its first `cache.seq_len()` positions (from [`GenerationSession::into_cache`]
    /// of the previous turn), so only the new tail is prefilled. Generation counts from the end of
    /// `tokens`; the repetition penalty sees the whole history.
    pub fn with_cache(model: Arc<Model>, cache: Cache, tokens: &[u32], opts: GenerationOptions) -> Result<Self> {
        opts.validate()?;
        check_prompt(&model, tokens, "the conversation")?;
        if cache.seq_len() >= tokens.len() {
            return Err(Error::input(format!(
                "the KV cache holds {} positions but the conversation has only {} tokens; give at least one new token",
                cache.seq_len(),
                tokens.len()
            )));
        }
        Ok(GenerationSession {
            cache,
            rng: Rng::stream(opts.seed, "sample"),
            tokens: tokens.to_vec(),
            prompt_len: tokens.len(),
            finish: if opts.max_new_tokens == 0 { Some(FinishReason::Length) } else { None },
            model,
            opts,
        })
    }

    /// The KV cache, for [`GenerationSession::with_cache`]. It holds every token but the last
    /// generated one (which was sampled, not yet fed).
    pub fn into_cache(self) -> Cache {
        self.cache
    }

    /// The next token, or None once finished (see [`GenerationSession::finish_reason`]).
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        let max_pos = self.model.config().max_position_embeddings;
        let dev = self.model.device().clone();
        let logits = if self.cache.seq_len() == 0 {
            let ids = Tensor::new(self.tokens.as_slice(), &dev)?.unsqueeze(0)?;
            self.model.forward(&ids, 0, &mut self.cache)?
        } else {
            if self.tokens.len() >= max_pos {
                self.finish = Some(FinishReason::ContextFull);
                return Ok(None);
            }
            let pos = self.cache.seq_len();
            let ids = Tensor::new(&self.tokens[pos..], &dev)?.unsqueeze(0)?;
            self.model.forward(&ids, pos, &mut self.cache)?
        };
        let logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let tok = sample(&logits, &self.tokens, &self.opts, &mut self.rng);
        self.tokens.push(tok);
        if self.opts.stop_token_ids.contains(&tok) {
            self.finish = Some(FinishReason::Stop);
        } else if self.generated().len() >= self.opts.max_new_tokens {
            self.finish = Some(FinishReason::Length);
        }
        Ok(Some(tok))
    }

    /// Runs to the end and returns the generated tokens.
    pub fn run(&mut self) -> Result<Vec<u32>> {
        while self.next_token()?.is_some() {}
        Ok(self.generated().to_vec())
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
    /// Prompt followed by the generated tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }
}

/// Several prompts decoded together (left-padded batch, one shared KV cache).
pub struct BatchGenerationSession {
    model: Arc<Model>,
    cache: Cache,
    opts: GenerationOptions,
    rngs: Vec<Rng>,
    /// Per row: prompt + generated (unpadded).
    tokens: Vec<Vec<u32>>,
    prompt_lens: Vec<usize>,
    pads: Vec<usize>,
    finish: Vec<Option<FinishReason>>,
}

impl BatchGenerationSession {
    pub fn new(model: Arc<Model>, prompts: &[Vec<u32>], opts: GenerationOptions) -> Result<Self> {
        opts.validate()?;
        if prompts.is_empty() {
            return Err(Error::input("no prompts given"));
        }
        for (i, p) in prompts.iter().enumerate() {
            check_prompt(&model, p, &format!("prompt {i}"))?;
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let done = if opts.max_new_tokens == 0 { Some(FinishReason::Length) } else { None };
        Ok(BatchGenerationSession {
            cache: Cache::with_left_padding(model.num_layers(), pads.clone()),
            rngs: (0..prompts.len()).map(|i| Rng::stream(opts.seed.wrapping_add(i as u64), "sample")).collect(),
            tokens: prompts.to_vec(),
            prompt_lens: prompts.iter().map(Vec::len).collect(),
            finish: vec![done; prompts.len()],
            pads,
            model,
            opts,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_finished(&self) -> bool {
        self.finish.iter().all(Option::is_some)
    }

    /// One decode step for all rows: Some(token) for rows still running, None for finished ones.
    pub fn next_tokens(&mut self) -> Result<Vec<Option<u32>>> {
        let b = self.batch_size();
        if self.is_finished() {
            return Ok(vec![None; b]);
        }
        let dev = self.model.device().clone();
        let pad_id = self.model.config().pad_id();
        let logits = if self.cache.seq_len() == 0 {
            let rows: Vec<Vec<u32>> = (0..b)
                .map(|i| std::iter::repeat(pad_id).take(self.pads[i]).chain(self.tokens[i].iter().copied()).collect())
                .collect();
            self.model.forward(&Tensor::new(rows, &dev)?, 0, &mut self.cache)?
        } else {
            let pos = self.cache.seq_len();
            if pos + 1 > self.model.config().max_position_embeddings {
                self.finish.iter_mut().filter(|f| f.is_none()).for_each(|f| *f = Some(FinishReason::ContextFull));
                return Ok(vec![None; b]);
            }
            let last: Vec<u32> = self.tokens.iter().map(|t| *t.last().unwrap_or(&pad_id)).collect();
            self.model.forward(&Tensor::new(last.as_slice(), &dev)?.unsqueeze(1)?, pos, &mut self.cache)?
        };
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut out = vec![None; b];
        for i in 0..b {
            if self.finish[i].is_some() {
                continue; // the row's last token is fed again to keep the batch aligned; output unused
            }
            let tok = sample(&logits[i], &self.tokens[i], &self.opts, &mut self.rngs[i]);
            self.tokens[i].push(tok);
            out[i] = Some(tok);
            let n = self.tokens[i].len() - self.prompt_lens[i];
            if self.opts.stop_token_ids.contains(&tok) {
                self.finish[i] = Some(FinishReason::Stop);
            } else if n >= self.opts.max_new_tokens {
                self.finish[i] = Some(FinishReason::Length);
            }
        }
        Ok(out)
    }

    /// Runs until every row has finished; returns each row's generated tokens.
    pub fn run(&mut self) -> Result<Vec<Vec<u32>>> {
        let mut outs = vec![Vec::new(); self.batch_size()];
        while !self.is_finished() {
            for (o, t) in outs.iter_mut().zip(self.next_tokens()?) {
                if let Some(t) = t {
                    o.push(t);
                }
            }
        }
        Ok(outs)
    }

    /// Row i's generated tokens so far.
    pub fn generated(&self, i: usize) -> &[u32] {
        &self.tokens[i][self.prompt_lens[i]..]
    }

    pub fn finish_reasons(&self) -> &[Option<FinishReason>] {
        &self.finish
    }
}
