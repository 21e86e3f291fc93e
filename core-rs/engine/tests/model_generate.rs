//! Sampling as a plain function, and streaming / batched generation on a fixture checkpoint.
use std::path::PathBuf;
use std::sync::Arc;

use bunmind_engine::generate::{apply_repetition_penalty, filtered_probs, sample, BatchGenerationSession, FinishReason, GenerationOptions, GenerationSession};
use bunmind_engine::model::{Model, Rng};
use candle_core::{Device, Tensor};

fn opts(temperature: f32, top_k: usize, top_p: f32) -> GenerationOptions {
    GenerationOptions { temperature, top_k, top_p, ..Default::default() }
}

#[test]
fn defaults_match_reference() {
    let o = GenerationOptions::default();
    assert_eq!((o.temperature, o.top_p, o.top_k, o.repetition_penalty), (0.85, 0.85, 50, 1.0));
}

#[test]
fn greedy_and_top_k_one_agree() {
    let mut rng = Rng::new(0);
    for trial in 0..50 {
        let logits: Vec<f32> = (0..100).map(|_| rng.normal_f32() * 3.0).collect();
        let best = logits.iter().enumerate().max_by(|a, b| a.1.partial_cmp(b.1).unwrap()).unwrap().0 as u32;
        assert_eq!(sample(&logits, &[], &opts(0.0, 0, 1.0), &mut rng), best, "trial {trial}");
        assert_eq!(sample(&logits, &[], &opts(1.5, 1, 1.0), &mut rng), best, "trial {trial}");
    }
}

#[test]
fn top_k_and_top_p_keep_the_right_sets() {
    let probs = [0.5f32, 0.2, 0.15, 0.1, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let kept = |o: &GenerationOptions| -> Vec<usize> { filtered_probs(&logits, o).iter().enumerate().filter(|(_, &p)| p > 0.0).map(|(i, _)| i).collect() };
    assert_eq!(kept(&opts(1.0, 2, 1.0)), vec![0, 1]);
    // smallest prefix with mass ≥ p: 0.5 < 0.6 → add 0.2 → 0.7 ≥ 0.6
    assert_eq!(kept(&opts(1.0, 0, 0.6)), vec![0, 1]);
    assert_eq!(kept(&opts(1.0, 0, 0.5)), vec![0]);
    assert_eq!(kept(&opts(1.0, 0, 0.86)), vec![0, 1, 2, 3]);
    assert_eq!(kept(&opts(1.0, 3, 0.99)), vec![0, 1, 2]);
    let p = filtered_probs(&logits, &opts(1.0, 0, 0.6));
    assert!((p[0] - 0.5 / 0.7).abs() < 1e-5 && (p[1] - 0.2 / 0.7).abs() < 1e-5);
    // Temperature sharpens.
    let sharp = filtered_probs(&logits, &opts(0.5, 0, 1.0));
    assert!(sharp[0] > 0.5 + 0.1);
}

#[test]
fn sampling_follows_the_distribution_and_the_seed() {
    let logits: Vec<f32> = [0.6f32, 0.3, 0.1].iter().map(|p| p.ln()).collect();
    let o = opts(1.0, 0, 1.0);
    let mut rng = Rng::new(123);
    let mut counts = [0usize; 3];
    for _ in 0..20000 {
        counts[sample(&logits, &[], &o, &mut rng) as usize] += 1;
    }
    let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / 20000.0).collect();
    assert!((freq[0] - 0.6).abs() < 0.02 && (freq[1] - 0.3).abs() < 0.02 && (freq[2] - 0.1).abs() < 0.02, "{freq:?}");
    let draw = |seed| {
        let mut r = Rng::new(seed);
        (0..32).map(|_| sample(&logits, &[], &o, &mut r)).collect::<Vec<_>>()
    };
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
}

#[test]
fn repetition_penalty_is_ctrl_style() {
    let mut l = vec![2.0f32, -2.0, 1.0, 3.0];
    apply_repetition_penalty(&mut l, &[0, 1, 1, 0], 2.0);
    assert_eq!(l, vec![1.0, -4.0, 1.0, 3.0]);
    // A penalty strong enough flips the greedy choice away from a seen token.
    let logits = vec![3.0f32, 2.0, 0.0];
    let o = GenerationOptions { repetition_penalty: 2.0, ..GenerationOptions::greedy() };
    assert_eq!(sample(&logits, &[0], &o, &mut Rng::new(0)), 1);
}

fn fixture_model() -> Arc<Model> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model/dense_gqa");
    Arc::new(Model::load_dir(dir, &Device::Cpu).unwrap().0)
}

/// Greedy continuation recomputed from scratch (no cache) at every step.
fn greedy_no_cache(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut toks = prompt.to_vec();
    for _ in 0..n {
        let ids = Tensor::new(toks.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let (logits, _) = m.forward_train(&ids).unwrap();
        let last: Vec<f32> = logits.squeeze(0).unwrap().get(toks.len() - 1).unwrap().to_vec1().unwrap();
        let best = last.iter().enumerate().max_by(|a, b| a.1.partial_cmp(b.1).unwrap()).unwrap().0 as u32;
        toks.push(best);
    }
    toks[prompt.len()..].to_vec()
}

#[test]
fn streaming_session_matches_uncached_greedy() {
    let m = fixture_model();
    let prompt = [1u32, 17, 200, 3];
    let o = GenerationOptions { max_new_tokens: 12, stop_token_ids: vec![], ..GenerationOptions::greedy() };
    let mut s = GenerationSession::new(m.clone(), &prompt, o).unwrap();
    let mut streamed = vec![];
    while let Some(t) = s.next_token().unwrap() {
        streamed.push(t);
    }
    assert_eq!(s.finish_reason(), Some(FinishReason::Length));
    assert_eq!(streamed, greedy_no_cache(&m, &prompt, 12));
    assert_eq!(s.generated(), streamed.as_slice());
    assert_eq!(s.next_token().unwrap(), None);
}

#[test]
fn stop_tokens_seeds_and_limits() {
    let m = fixture_model();
    let prompt = [5u32, 6, 7];
    let sampled = |seed| GenerationSession::new(m.clone(), &prompt, GenerationOptions { seed, max_new_tokens: 20, stop_token_ids: vec![], temperature: 1.5, top_k: 0, top_p: 1.0, ..Default::default() }).unwrap().run().unwrap();
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1), sampled(2));
    // Stop on the first greedy token: exactly one token, reason Stop.
    let first = greedy_no_cache(&m, &prompt, 1)[0];
    let mut s = GenerationSession::new(m.clone(), &prompt, GenerationOptions { stop_token_ids: vec![first], ..GenerationOptions::greedy() }).unwrap();
    assert_eq!(s.run().unwrap(), vec![first]);
    assert_eq!(s.finish_reason(), Some(FinishReason::Stop));
    // The context window (64) ends generation.
    let long: Vec<u32> = (0..60).map(|i| (i * 7 % 250) as u32 + 3).collect();
    let mut s = GenerationSession::new(m.clone(), &long, GenerationOptions { max_new_tokens: 100, stop_token_ids: vec![], ..GenerationOptions::greedy() }).unwrap();
    assert_eq!(s.run().unwrap().len(), 4);
    assert_eq!(s.finish_reason(), Some(FinishReason::ContextFull));
    assert!(GenerationSession::new(m.clone(), &[], GenerationOptions::default()).is_err());
    assert!(GenerationSession::new(m.clone(), &[999], GenerationOptions::default()).is_err());
}

#[test]
fn batch_generation_matches_single_sequences() {
    let m = fixture_model();
    let prompts = vec![vec![1u32, 17, 200, 3, 99], vec![9u32, 8], vec![250u32, 4, 4]];
    let o = GenerationOptions { max_new_tokens: 8, stop_token_ids: vec![], ..GenerationOptions::greedy() };
    let batch = BatchGenerationSession::new(m.clone(), &prompts, o.clone()).unwrap().run().unwrap();
    for (p, got) in prompts.iter().zip(&batch) {
        assert_eq!(got, &greedy_no_cache(&m, p, 8), "prompt {p:?}");
    }
    // Rows finish independently on their stop token.
    let stop = batch[1][2];
    let o = GenerationOptions { stop_token_ids: vec![stop], ..o };
    let mut s = BatchGenerationSession::new(m.clone(), &prompts, o).unwrap();
    let out = s.run().unwrap();
    for (row, full) in batch.iter().enumerate() {
        let want = match full.iter().position(|&t| t == stop) {
            Some(i) => full[..=i].to_vec(),
            None => full.clone(),
        };
        assert_eq!(out[row], want, "row {row}");
    }
    assert_eq!(s.finish_reasons()[1], Some(FinishReason::Stop));
}

#[test]
fn continued_conversation_reuses_the_cache() {
    let m = fixture_model();
    let o = GenerationOptions { max_new_tokens: 6, stop_token_ids: vec![], ..GenerationOptions::greedy() };
    let turn1 = [1u32, 17, 200, 3];
    let mut s = GenerationSession::new(m.clone(), &turn1, o.clone()).unwrap();
    let reply = s.run().unwrap();
    let history = s.tokens().to_vec();
    let cache = s.into_cache();
    // Every token but the last sampled one has been fed.
    assert_eq!(cache.seq_len(), history.len() - 1);
    // Turn 2 appends a user message; only the tail is prefilled, and the result equals a fresh
    // session over the whole history.
    let mut turn2 = history.clone();
    turn2.extend([2u32, 1, 42, 43]);
    let mut cont = GenerationSession::with_cache(m.clone(), cache, &turn2, o.clone()).unwrap();
    let got = cont.run().unwrap();
    assert_eq!(got, greedy_no_cache(&m, &turn2, 6));
    assert_eq!(reply.len(), 6);
    // A cache that already covers the whole conversation is refused (nothing to feed).
    let all = cont.tokens().to_vec();
    let full = cont.into_cache();
    let n = full.seq_len();
    assert!(GenerationSession::with_cache(m.clone(), full.clone(), &all[..n], o.clone()).is_err());
    // A prompt that diverges after 5 tokens: truncate the cache there and re-feed the rest.
    let mut cut = full;
    cut.truncate(5).unwrap();
    assert_eq!(cut.seq_len(), 5);
    let mut other = all[..5].to_vec();
    other.extend([77u32, 78, 79]);
    let got = GenerationSession::with_cache(m.clone(), cut, &other, o).unwrap().run().unwrap();
    assert_eq!(got, greedy_no_cache(&m, &other, 6));
}
