//! bunmind in the browser: the engine's tokenizer, model and sampling behind wasm-bindgen.
//!
//! ```js
//! import init, { ChatModel } from "./pkg/bunmind_wasm.js"
//! await init()                                   // or init({ module_or_path: wasmBytes }) under Bun/Deno
//! const m = new ChatModel(tokenizerJson, configJson, safetensors)   // Uint8Arrays; throws on bad input
//! m.begin(m.encode(renderedChat, false), JSON.stringify({ temperature: 0.7, max_new_tokens: 256 }))
//! for (let s; (s = m.step()); ) print(s.text)    // one token per call: { id, text }
//! ```
//! Errors are thrown as JS `Error`s with a message for the person at the page. Chat templates are
//! rendered in JS (`src/edge/runtime.ts`, the same renderer as the server) and passed here as ids.
pub mod chat;
pub mod weights;

use wasm_bindgen::prelude::*;

/// The message of the last Rust panic (a panic aborts the module: the page must reload it).
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if let Ok(mut slot) = LAST_PANIC.lock() {
                *slot = Some(info.to_string());
            }
        }))
    });
}

/// After a `RuntimeError: unreachable` from this module: the panic message, if there was one.
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.lock().ok()?.clone()
}

/// Whether this build uses 128-bit SIMD.
#[wasm_bindgen(js_name = simdEnabled)]
pub fn simd_enabled() -> bool {
    cfg!(target_feature = "simd128")
}

fn err(msg: String) -> JsError {
    JsError::new(&msg)
}

fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsError> {
    let s = serde_json::to_string(v).map_err(|e| JsError::new(&e.to_string()))?;
    js_sys_json_parse(&s)
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = JSON, js_name = parse, catch)]
    fn json_parse(s: &str) -> Result<JsValue, JsValue>;
}

fn js_sys_json_parse(s: &str) -> Result<JsValue, JsError> {
    json_parse(s).map_err(|_| JsError::new("internal: JSON.parse failed"))
}

/// A model, its tokenizer, and the conversation it is having (with its KV cache).
#[wasm_bindgen]
pub struct ChatModel {
    inner: chat::ChatModel,
}

#[wasm_bindgen]
impl ChatModel {
    /// Loads from the bytes of `tokenizer.json`, `config.json` and `model.safetensors` (f32, f16,
    /// bf16, or int8 as `bunmind export edge --quantize int8` writes it).
    #[wasm_bindgen(constructor)]
    pub fn new(tokenizer_json: &[u8], config_json: &[u8], weights: &[u8]) -> Result<ChatModel, JsError> {
        install_panic_hook();
        Ok(ChatModel { inner: chat::ChatModel::load(tokenizer_json, config_json, weights).map_err(err)? })
    }

    /// `{ vocab_size, tokenizer_vocab_size, hidden_size, num_hidden_layers, num_parameters,
    /// max_position_embeddings, bos_token_id, eos_token_id, weights_encoding, warnings }`
    pub fn info(&self) -> Result<JsValue, JsError> {
        to_js(self.inner.info())
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, JsError> {
        self.inner.encode(text, add_special_tokens).map_err(err)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, JsError> {
        self.inner.decode(ids, skip_special_tokens).map_err(err)
    }

    #[wasm_bindgen(js_name = tokenToId)]
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// f32 logits of every position of `ids` (fresh cache), row-major `[ids.length, vocab_size]`.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, JsError> {
        self.inner.logits(ids).map_err(err)
    }

    /// Starts a turn. `ids`: the whole conversation so far, ending with the prompt for the reply
    /// (earlier turns' positions are reused from the KV cache where they match). `options`: JSON
    /// with the native path's fields (temperature, top_k, top_p, repetition_penalty,
    /// max_new_tokens, stop_token_ids, seed). Returns how many positions were reused.
    pub fn begin(&mut self, ids: &[u32], options: &str) -> Result<usize, JsError> {
        let opts = chat::parse_options(options).map_err(err)?;
        self.inner.begin(ids, opts).map_err(err)
    }

    /// The next token as `{ id, text }`, or `undefined` when the turn is over.
    pub fn step(&mut self) -> Result<JsValue, JsError> {
        match self.inner.step().map_err(err)? {
            Some(s) => to_js(&s),
            None => Ok(JsValue::UNDEFINED),
        }
    }

    /// Runs the turn to its end and returns the generated ids.
    pub fn finish(&mut self) -> Result<Vec<u32>, JsError> {
        while self.inner.step().map_err(err)?.is_some() {}
        Ok(self.inner.generated())
    }

    /// "stop", "length", "context_full", or undefined while running.
    #[wasm_bindgen(js_name = finishReason)]
    pub fn finish_reason(&self) -> Option<String> {
        self.inner.finish_reason().map(str::to_string)
    }

    /// Ids generated in the current (or last) turn.
    pub fn generated(&self) -> Vec<u32> {
        self.inner.generated()
    }

    /// Positions currently held in the KV cache.
    #[wasm_bindgen(js_name = cachedTokens)]
    pub fn cached_tokens(&self) -> usize {
        self.inner.cached_tokens()
    }

    /// Forgets the conversation and its KV cache.
    pub fn reset(&mut self) {
        self.inner.reset()
    }
}

/// Re-encodes a safetensors file: "bf16" or "int8" (per-row symmetric) for the 2-D tensors, or
/// "none". Used by `bunmind export edge --quantize`.
#[wasm_bindgen]
pub fn quantize(safetensors: &[u8], encoding: &str) -> Result<Vec<u8>, JsError> {
    install_panic_hook();
    let enc = weights::Encoding::parse(encoding).map_err(err)?;
    weights::quantize(safetensors, enc).map_err(err)
}
