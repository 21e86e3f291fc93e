//! Native side of the edge (wasm) checks: makes random checkpoints, writes the reference outputs the
//! wasm build must reproduce, and times native decoding for `bench/edge.ts`.
//!
//!   cargo run --release --example edge_tools -- init <preset> <seed> <dir>
//!   cargo run --release --example edge_tools -- reference <model_dir> <tokenizer.json> <parity.json> <out.json>
//!   RAYON_NUM_THREADS=1 cargo run --release --example edge_tools -- decode-bench <model_dir> <tokens> <reps> <id>...
use std::sync::Arc;
use std::time::Instant;

use bunmind_engine::generate::{GenerationOptions, GenerationSession};
use bunmind_engine::model::{Model, ModelConfig};
use bunmind_engine::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Chat-shaped prompts (ChatML, as MiniMind's template renders them) for logits and generation.
const PROMPTS: &[&str] = &[
    "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox",
];

fn sampled_options() -> GenerationOptions {
    GenerationOptions {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.9,
        repetition_penalty: 1.1,
        max_new_tokens: 24,
        stop_token_ids: vec![],
        seed: 7,
    }
}

fn greedy_options(n: usize) -> GenerationOptions {
    GenerationOptions { max_new_tokens: n, stop_token_ids: vec![], ..GenerationOptions::greedy() }
}

fn init(preset: &str, seed: u64, dir: &str) -> Res<()> {
    let cfg = ModelConfig::preset(preset)?;
    Model::new(&cfg, seed, &Device::Cpu)?.save_dir(dir)?;
    println!("{}", json!({ "dir": dir, "preset": preset, "seed": seed }));
    Ok(())
}

fn reference(model_dir: &str, tokenizer: &str, parity: &str, out: &str) -> Res<()> {
    let tok = Tokenizer::from_path(tokenizer)?;
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(parity)?)?;
    let parity_ids: Vec<Vec<u32>> = cases["cases"]
        .as_array()
        .ok_or("parity file has no `cases`")?
        .iter()
        .map(|c| tok.encode(c["text"].as_str().unwrap_or_default(), false))
        .collect::<Result<_, _>>()?;
    let (model, _) = Model::load_dir(model_dir, &Device::Cpu)?;
    let model = Arc::new(model);
    let mut prompts = Vec::new();
    for text in PROMPTS {
        let ids = tok.encode(text, false)?;
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits: Vec<f32> = model.forward_all(&t, 0, &mut model.new_cache())?.flatten_all()?.to_vec1()?;
        let greedy = GenerationSession::new(model.clone(), &ids, greedy_options(32))?.run()?;
        // A random model's greedy output repeats one token; the penalty makes a varied greedy path.
        let penalized = GenerationOptions { repetition_penalty: 4.0, ..greedy_options(32) };
        let greedy_penalized = GenerationSession::new(model.clone(), &ids, penalized)?.run()?;
        let sampled = GenerationSession::new(model.clone(), &ids, sampled_options())?.run()?;
        prompts.push(json!({ "text": text, "ids": ids, "logits": logits, "greedy": greedy, "greedy_penalized": greedy_penalized, "sampled": sampled }));
    }
    // A second turn: the first prompt, its greedy reply, then a new user message. Native decodes
    // it from scratch; the wasm side must get the same ids while reusing its KV cache.
    let first = tok.encode(PROMPTS[0], false)?;
    let reply = GenerationSession::new(model.clone(), &first, greedy_options(8))?.run()?;
    let mut turn2 = first.clone();
    turn2.extend(&reply);
    turn2.extend(tok.encode("<|im_end|>\n<|im_start|>user\n再说一遍<|im_end|>\n<|im_start|>assistant\n", false)?);
    let turn2_greedy = GenerationSession::new(model.clone(), &turn2, greedy_options(16))?.run()?;
    let doc = json!({
        "model_dir": model_dir,
        "sampled_options": sampled_options(),
        "parity_ids": parity_ids,
        "prompts": prompts,
        "conversation": { "turn1": first, "turn1_reply": reply, "turn2": turn2, "turn2_greedy": turn2_greedy },
    });
    std::fs::write(out, serde_json::to_string(&doc)?)?;
    println!("{}", json!({ "out": out }));
    Ok(())
}

fn decode_bench(model_dir: &str, tokens: usize, reps: usize, ids: &[u32]) -> Res<()> {
    let t0 = Instant::now();
    let (model, _) = Model::load_dir(model_dir, &Device::Cpu)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let model = Arc::new(model);
    let mut prefill_ms = Vec::new();
    let mut tok_s = Vec::new();
    for _ in 0..reps {
        let mut s = GenerationSession::new(model.clone(), ids, greedy_options(tokens + 1))?;
        let t = Instant::now();
        s.next_token()?; // prefill + first token
        prefill_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let mut n = 0;
        while s.next_token()?.is_some() {
            n += 1;
        }
        tok_s.push(n as f64 / t.elapsed().as_secs_f64());
    }
    println!("{}", json!({ "load_ms": load_ms, "prefill_ms": prefill_ms, "decode_tok_s": tok_s, "tokens": tokens }));
    Ok(())
}

fn main() -> Res<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).map(String::as_str).ok_or_else(|| format!("missing argument {i}; see the file's header for usage"));
    match a.first().map(String::as_str) {
        Some("init") => init(arg(1)?, arg(2)?.parse()?, arg(3)?),
        Some("reference") => reference(arg(1)?, arg(2)?, arg(3)?, arg(4)?),
        Some("decode-bench") => {
            let ids: Vec<u32> = a[4..].iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
            decode_bench(arg(1)?, arg(2)?.parse()?, arg(3)?.parse()?, &ids)
        }
        _ => Err("usage: edge_tools init|reference|decode-bench ... (see examples/edge_tools.rs)".into()),
    }
}
