//! One loaded model + tokenizer and the conversation it is having, in plain Rust (the wasm-bindgen
//! layer in `lib.rs` only converts types). Generation is the engine's [`GenerationSession`], so
//! sampling is the native path's, option for option.
//!
//! A conversation keeps its KV cache between turns: each turn passes the whole rendered
//! conversation; the longest prefix it shares with the cached tokens is reused and only the rest is
//! prefilled (the cache is cut back where they diverge, e.g. when re-encoding a reply gives other
//! ids than the ones sampled).
use std::sync::Arc;

use bunmind_engine::generate::{FinishReason, GenerationOptions, GenerationSession};
use bunmind_engine::model::{count_parameters, Cache, Model, ModelConfig};
use bunmind_engine::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::weights;

/// wasm32 addresses 4 GiB; leave room for the file bytes, the KV cache and activations.
const MAX_F32_WEIGHT_BYTES: usize = 3 << 30;

#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub vocab_size: usize,
    pub tokenizer_vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_parameters: usize,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// How the weights were stored: f32, f16, bf16, int8 (dequantised at load) or mixed.
    pub weights_encoding: String,
    /// Ignored tensors and similar notes from the loader.
    pub warnings: Vec<String>,
}

/// One token of a streamed turn: its id and the text it completes (empty while a multi-byte
/// character is still partial).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: u32,
    pub text: String,
}

pub struct ChatModel {
    model: Arc<Model>,
    tokenizer: Tokenizer,
    info: Info,
    turn: Option<Turn>,
    /// Between turns: the cache and the tokens whose positions it holds.
    idle: Option<(Cache, Vec<u32>)>,
}

struct Turn {
    session: GenerationSession,
    /// Text of the generated tokens already handed out.
    emitted: String,
    reused: usize,
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

/// The tokenizer must cover the model's ids: equal sizes, or an embedding padded up to a multiple
/// of 64 by fewer than 1024 rows (as many checkpoints do: Qwen's 151936 rows for 151665 tokens).
fn check_vocab(tok: usize, model: usize) -> Result<(), String> {
    let padded = model > tok && model % 64 == 0 && model - tok < 1024;
    if tok == model || padded {
        return Ok(());
    }
    Err(format!(
        "tokenizer.json has {tok} tokens but config.json says vocab_size {model}: the tokenizer belongs to another model \
         (export the model with the tokenizer it was trained with)"
    ))
}

/// Parses generation options (the engine's JSON field names); unknown keys are errors.
pub fn parse_options(json: &str) -> Result<GenerationOptions, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|err| format!("generation options: not JSON: {err}"))?;
    let obj = v.as_object().ok_or("generation options: expected a JSON object")?;
    let known = serde_json::to_value(GenerationOptions::default()).map_err(e)?;
    let known = known.as_object().expect("options serialize to an object");
    if let Some(k) = obj.keys().find(|k| !known.contains_key(*k)) {
        let names: Vec<&String> = known.keys().collect();
        return Err(format!("generation options: unknown option {k:?}; known: {names:?}"));
    }
    let opts: GenerationOptions = serde_json::from_value(v).map_err(|err| format!("generation options: {err}"))?;
    opts.validate().map_err(e)?;
    Ok(opts)
}

impl ChatModel {
    /// Loads a model from the bytes of `tokenizer.json`, `config.json` and `model.safetensors`
    /// (f32, f16, bf16 or bunmind's int8), checking that they belong together.
    pub fn load(tokenizer_json: &[u8], config_json: &[u8], weights_bytes: &[u8]) -> Result<Self, String> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(|err| format!("tokenizer.json: {err}"))?;
        let text = std::str::from_utf8(config_json).map_err(|_| "config.json: not UTF-8 text".to_string())?;
        let cfg = ModelConfig::from_json_str(text).map_err(|err| format!("config.json: {err}"))?;
        check_vocab(tokenizer.vocab_size(), cfg.vocab_size)?;
        let need = count_parameters(&cfg).saturating_mul(4);
        if need > MAX_F32_WEIGHT_BYTES {
            return Err(format!(
                "config.json: this model needs {:.1} GiB of f32 weights, more than a wasm32 module can hold (~3 GiB); export a smaller model",
                need as f64 / (1u64 << 30) as f64
            ));
        }
        let dev = Device::Cpu;
        let (tensors, encoding) = weights::load(weights_bytes, "model.safetensors", &dev)?;
        let (model, warnings) = Model::from_tensors(cfg.clone(), tensors, &dev)
            .map_err(|err| format!("model.safetensors does not match config.json: {err}"))?;
        let info = Info {
            vocab_size: cfg.vocab_size,
            tokenizer_vocab_size: tokenizer.vocab_size(),
            hidden_size: cfg.hidden_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_parameters: model.num_parameters(),
            max_position_embeddings: cfg.max_position_embeddings,
            bos_token_id: cfg.bos_token_id,
            eos_token_id: cfg.eos_token_id,
            weights_encoding: encoding.to_string(),
            warnings,
        };
        Ok(ChatModel { model: Arc::new(model), tokenizer, info, turn: None, idle: None })
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text, add_special_tokens).map_err(e)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(e)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Logits for every position of `ids` from a fresh cache, row-major [T, V].
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, String> {
        if ids.is_empty() {
            return Err("logits: give at least one token".into());
        }
        let v = self.info.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(format!("logits: token id {bad} is out of range for vocab_size {v}"));
        }
        let t = Tensor::new(ids, self.model.device()).and_then(|t| t.unsqueeze(0)).map_err(e)?;
        let out = self.model.forward_all(&t, 0, &mut self.model.new_cache()).map_err(e)?;
        out.flatten_all().and_then(|t| t.to_vec1()).map_err(e)
    }

    /// Starts a turn over the whole conversation `ids` (earlier turns + the new prompt). Returns how
    /// many leading positions were reused from the KV cache.
    pub fn begin(&mut self, ids: &[u32], opts: GenerationOptions) -> Result<usize, String> {
        self.park();
        let (mut cache, held) = self.idle.take().unwrap_or_else(|| (self.model.new_cache(), Vec::new()));
        let mut reuse = held.iter().zip(ids).take_while(|(a, b)| a == b).count();
        if reuse == ids.len() {
            reuse = reuse.saturating_sub(1); // the last prompt token must be fed to get logits
        }
        cache.truncate(reuse).map_err(e)?;
        let session = GenerationSession::with_cache(self.model.clone(), cache, ids, opts).map_err(e)?;
        self.turn = Some(Turn { session, emitted: String::new(), reused: reuse });
        Ok(reuse)
    }

    /// The next token of the current turn and the text it completes, or None when the turn is over.
    pub fn step(&mut self) -> Result<Option<Step>, String> {
        let Some(turn) = self.turn.as_mut() else {
            return Err("no turn in progress: call begin() first".into());
        };
        let Some(id) = turn.session.next_token().map_err(e)? else {
            return Ok(None);
        };
        let text = self.tokenizer.decode(turn.session.generated(), true).map_err(e)?;
        // Hold text back while its last character is an incomplete UTF-8 sequence.
        let done = turn.session.is_finished();
        let delta = if (done || !text.ends_with('\u{FFFD}')) && text.starts_with(&turn.emitted) {
            let d = text[turn.emitted.len()..].to_string();
            turn.emitted = text;
            d
        } else {
            String::new()
        };
        Ok(Some(Step { id, text: delta }))
    }

    pub fn finish_reason(&self) -> Option<&'static str> {
        self.turn.as_ref()?.session.finish_reason().map(|r| match r {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
        })
    }

    /// Token ids generated in the current (or last) turn.
    pub fn generated(&self) -> Vec<u32> {
        self.turn.as_ref().map(|t| t.session.generated().to_vec()).unwrap_or_default()
    }

    pub fn reused(&self) -> usize {
        self.turn.as_ref().map(|t| t.reused).unwrap_or(0)
    }

    /// Positions held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        match (&self.turn, &self.idle) {
            (Some(t), _) => t.session.tokens().len().saturating_sub(1),
            (None, Some((c, _))) => c.seq_len(),
            _ => 0,
        }
    }

    /// Forgets the conversation and its KV cache.
    pub fn reset(&mut self) {
        self.turn = None;
        self.idle = None;
    }

    /// Ends the current turn (finished or not), keeping its cache for the next one.
    fn park(&mut self) {
        if let Some(turn) = self.turn.take() {
            let tokens = turn.session.tokens().to_vec();
            let cache = turn.session.into_cache();
            let n = cache.seq_len();
            self.idle = Some((cache, tokens[..n].to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        assert_eq!(parse_options("").unwrap(), GenerationOptions::default());
        let o = parse_options(r#"{"temperature": 0, "max_new_tokens": 5}"#).unwrap();
        assert_eq!((o.temperature, o.max_new_tokens), (0.0, 5));
        assert!(parse_options(r#"{"temprature": 0}"#).unwrap_err().contains("unknown option \"temprature\""));
        assert!(parse_options(r#"{"top_p": 2}"#).unwrap_err().contains("top_p"));
    }

    #[test]
    fn vocab_rule() {
        assert!(check_vocab(6400, 6400).is_ok());
        assert!(check_vocab(151665, 151936).is_ok());
        assert!(check_vocab(256, 6400).unwrap_err().contains("256 tokens"));
        assert!(check_vocab(6400, 256).is_err());
    }
}
