//! GGUF export: a bunmind model (+ its HF tokenizer) as one `.gguf` file that llama.cpp and
//! Ollama load as is. The file is written by candle's GGUF writer
//! ([`candle_core::quantized::gguf_file::write`], GGUF v2) with weights as f32, f16 or q8_0
//! ([`QTensor::quantize`]); the metadata mapping is ours.
//!
//! Architecture mapping (llama.cpp's names):
//! - dense, no QK-norm → `llama` (llama.cpp rotates interleaved pairs there, so the rows of q/k of
//!   a rotate-half model are permuted per head: row `2j + c` ← row `c·d/2 + j`);
//! - dense with QK-norm → `qwen3` (rotate-half, "NEOX", as bunmind; an interleaved model gets the
//!   inverse permutation on q/k and on the q/k norm weights);
//! - routed MoE with QK-norm → `qwen3moe`; routed MoE without QK-norm → `llama` with experts
//!   (Mixtral layout). Both renormalise the top-k router weights in llama.cpp.
//!
//! Anything llama.cpp would run but compute differently is refused by [`gguf_unsupported`] (config)
//! or by the tokenizer checks (tokenizer.json), with the offending field named; every tensor of the
//! model must be mapped or the export fails.
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::Value as Json;

use crate::model::RopeParameters;
use crate::model::{Model, ModelConfig};
use crate::{Error, Result};

/// Weight storage in the file. Norm vectors and the MoE router stay f32 in every type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
}

impl GgufType {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(GgufType::F32),
            "f16" => Ok(GgufType::F16),
            "q8_0" | "q8" => Ok(GgufType::Q8_0),
            _ => Err(Error::input(format!("GGUF type `{s}`: expected f32, f16 or q8_0"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::Q8_0 => "q8_0",
        }
    }
    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
        }
    }
    /// `general.file_type` (llama.cpp's `llama_ftype`): ALL_F32, MOSTLY_F16, MOSTLY_Q8_0.
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }
}

/// The llama.cpp architecture a config is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GgufArch {
    #[serde(rename = "llama")]
    Llama,
    #[serde(rename = "qwen3")]
    Qwen3,
    #[serde(rename = "qwen3moe")]
    Qwen3Moe,
}

impl GgufArch {
    pub fn name(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen3 => "qwen3",
            GgufArch::Qwen3Moe => "qwen3moe",
        }
    }
    /// llama.cpp's RoPE for the arch: `llama` rotates interleaved pairs ("normal"), the Qwen
    /// archs rotate halves ("neox").
    fn rope_interleaved(self) -> bool {
        matches!(self, GgufArch::Llama)
    }
}

pub fn gguf_arch(cfg: &ModelConfig) -> GgufArch {
    match (cfg.use_moe, cfg.use_qk_norm()) {
        (false, false) => GgufArch::Llama,
        (false, true) => GgufArch::Qwen3,
        (true, true) => GgufArch::Qwen3Moe,
        (true, false) => GgufArch::Llama,
    }
}

/// YaRN β values llama.cpp uses for these archs (it does not read them from the file for
/// `llama` / `qwen3` / `qwen3moe`).
const LLAMA_CPP_BETA_FAST: f64 = 32.0;
const LLAMA_CPP_BETA_SLOW: f64 = 1.0;

/// HF tokenizers' ByteLevel split (GPT-2's), which llama.cpp's `gpt-2` pre-tokenizer implements.
const GPT2_SPLIT_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// config.json keys this exporter knows. Any other key must hold a neutral value (null, false, 0,
/// "", [] or {}), or the export is refused: a field added later may change the math.
const KNOWN_CONFIG_KEYS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "moe_intermediate_size",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "use_moe",
    "num_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "norm_topk_prob",
    "router_aux_loss_coef",
    "qk_norm",
    "rope_interleaved",
    "rope_scaling",
    "inference_rope_scaling",
    "rope_parameters",
    "dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "model_type",
    "architectures",
];
const KNOWN_ROPE_SCALING_KEYS: &[&str] = &["factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "type"];

fn neutral(v: &Json) -> bool {
    match v {
        Json::Null => true,
        Json::Bool(b) => !b,
        Json::Number(n) => n.as_f64() == Some(0.0),
        Json::String(s) => s.is_empty(),
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
    }
}

/// YaRN in the form bunmind computes it, when it is active for inference.
struct Yarn {
    factor: f64,
    orig: usize,
    attention_factor: f64,
}

/// `Ok(None)`: no scaling at inference; `Err(reason)`: scaling llama.cpp cannot reproduce.
fn yarn_mapping(cfg: &ModelConfig) -> std::result::Result<Option<Yarn>, String> {
    // transformers' kinds (imported models, or MiniMind's YaRN after a save in a native family).
    match &cfg.rope_parameters {
        None => {}
        Some(RopeParameters::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor, truncate }) => {
            if !truncate {
                return Err("config field `rope_parameters.truncate` = false: llama.cpp always rounds the YaRN correction range".into());
            }
            if *beta_fast != LLAMA_CPP_BETA_FAST || *beta_slow != LLAMA_CPP_BETA_SLOW {
                return Err(format!(
                    "config field `rope_parameters.beta_fast`/`beta_slow` = {beta_fast}/{beta_slow}: llama.cpp's llama/qwen3 archs always use {LLAMA_CPP_BETA_FAST}/{LLAMA_CPP_BETA_SLOW}"
                ));
            }
            // transformers and llama.cpp both clamp the ramp to [0, head_dim − 1].
            return Ok(Some(Yarn { factor: *factor, orig: *original_max_position_embeddings, attention_factor: *attention_factor }));
        }
        Some(other) => {
            let kind = serde_json::to_value(other).ok().and_then(|v| v.get("rope_type").and_then(|t| t.as_str()).map(String::from)).unwrap_or_default();
            return Err(format!("config field `rope_parameters.rope_type` = `{kind}`: not mapped to GGUF (only yarn is)"));
        }
    }
    let Some(s) = cfg.effective_rope_scaling() else { return Ok(None) };
    let field = if cfg.rope_scaling.is_some() { "rope_scaling" } else { "inference_rope_scaling" };
    if !s.r#type.eq_ignore_ascii_case("yarn") {
        return Err(format!("config field `{field}.type` = `{}`: only YaRN is mapped to GGUF", s.r#type));
    }
    // bunmind applies YaRN only when max_position_embeddings exceeds the original context.
    if cfg.max_position_embeddings as f64 / s.original_max_position_embeddings as f64 <= 1.0 {
        return Ok(None);
    }
    if s.beta_fast != LLAMA_CPP_BETA_FAST || s.beta_slow != LLAMA_CPP_BETA_SLOW {
        return Err(format!(
            "config field `{field}.beta_fast`/`beta_slow` = {}/{}: llama.cpp's llama/qwen3 archs always use {LLAMA_CPP_BETA_FAST}/{LLAMA_CPP_BETA_SLOW}",
            s.beta_fast, s.beta_slow
        ));
    }
    // The ramp's upper correction dim: bunmind clamps it to d/2 − 1, llama.cpp to d − 1; they agree
    // when the unclamped value is already ≤ d/2 − 1.
    let d = cfg.head_dim() as f64;
    let orig = s.original_max_position_embeddings as f64;
    let high = (d * (orig / (s.beta_slow * 2.0 * std::f64::consts::PI)).ln() / (2.0 * cfg.rope_theta.ln())).ceil();
    if high > d / 2.0 - 1.0 {
        return Err(format!(
            "config field `{field}.original_max_position_embeddings` = {}: the YaRN ramp ends past the last rotary pair (head_dim {}, rope_theta {}), where bunmind and llama.cpp clamp it differently",
            s.original_max_position_embeddings,
            cfg.head_dim(),
            cfg.rope_theta
        ));
    }
    Ok(Some(Yarn { factor: s.factor, orig: s.original_max_position_embeddings, attention_factor: s.attention_factor }))
}

/// Why `cfg` cannot be written as a GGUF file that llama.cpp computes identically, or `None`.
/// The reason names the config field.
pub fn gguf_unsupported(cfg: &ModelConfig) -> Option<String> {
    if let Ok(Json::Object(obj)) = serde_json::to_value(cfg) {
        for (k, v) in &obj {
            if !KNOWN_CONFIG_KEYS.contains(&k.as_str()) && !neutral(v) {
                return Some(format!("config field `{k}` = {v}: not known to the GGUF exporter, which cannot tell whether llama.cpp would compute it"));
            }
        }
        if let Some(Json::Object(rs)) = obj.get("rope_scaling") {
            for (k, v) in rs {
                if !KNOWN_ROPE_SCALING_KEYS.contains(&k.as_str()) && !neutral(v) {
                    return Some(format!("config field `rope_scaling.{k}` = {v}: not known to the GGUF exporter"));
                }
            }
        }
    }
    if cfg.use_moe {
        if cfg.n_shared_experts > 0 {
            return Some(format!(
                "config field `n_shared_experts` = {}: shared experts have no GGUF mapping (llama.cpp's qwen3moe has none, and its shared-expert archs gate them, unlike MiniMind)",
                cfg.n_shared_experts
            ));
        }
        if !cfg.norm_topk_prob && cfg.num_experts_per_tok < cfg.num_experts {
            return Some(format!(
                "config field `norm_topk_prob` = false: llama.cpp's qwen3moe and llama MoE always renormalise the top-{} router weights",
                cfg.num_experts_per_tok
            ));
        }
    }
    if let Err(reason) = yarn_mapping(cfg) {
        return Some(reason);
    }
    None
}

// ------------------------------------------------------------------------------------ tokenizer

/// The tokenizer files that go into the GGUF metadata.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.json` text (HF tokenizers, byte-level BPE).
    pub json: String,
    /// `tokenizer_config.json` text, if any (special tokens, `chat_template`).
    pub config: Option<String>,
    /// Overrides the chat template of `config` (e.g. from `chat_template.jinja`).
    pub chat_template: Option<String>,
    /// Where the texts came from, for error messages.
    pub source: String,
}

impl GgufTokenizer {
    /// Reads `tokenizer.json` (a file, or the one in a directory) and, beside it,
    /// `tokenizer_config.json` and `chat_template.jinja` when present.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        let json = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let read_opt = |name: &str| -> Result<Option<String>> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(Some(std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?))
            } else {
                Ok(None)
            }
        };
        let config = read_opt("tokenizer_config.json")?;
        let chat_template = read_opt("chat_template.jinja")?;
        Ok(GgufTokenizer { json, config, chat_template, source: file.display().to_string() })
    }
}

const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

struct TokenizerMeta {
    pre: &'static str,
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    add_bos: bool,
    add_eos: bool,
    unk: Option<u32>,
    chat_template: Option<String>,
    warnings: Vec<String>,
}

fn tok_err(src: &str, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{src}: field `{field}`: {msg}"))
}

/// A special-token entry of tokenizer_config.json: `"<s>"` or `{"content": "<s>", ...}`.
fn special_content(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

fn tokenizer_meta(tok: &GgufTokenizer, cfg: &ModelConfig) -> Result<TokenizerMeta> {
    let src = tok.source.as_str();
    let root: Json = serde_json::from_str(&tok.json).map_err(|e| Error::Tokenizer(format!("{src}: not valid JSON: {e}")))?;
    let model = root.get("model").ok_or_else(|| tok_err(src, "model", "missing"))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    if mtype != "BPE" {
        return Err(tok_err(src, "model.type", format!("`{mtype}`: only byte-level BPE (GGUF `gpt2`) is exported")));
    }
    if model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false) {
        return Err(tok_err(src, "model.byte_fallback", "true: byte-fallback BPE (SentencePiece style) is not byte-level BPE"));
    }
    if model.get("ignore_merges").and_then(Json::as_bool).unwrap_or(false) {
        return Err(tok_err(src, "model.ignore_merges", "true: llama.cpp's gpt-2 pre-tokenizer always applies the merges"));
    }
    for f in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if let Some(v) = model.get(f) {
            if !neutral(v) {
                return Err(tok_err(src, &format!("model.{f}"), format!("{v}: not supported by llama.cpp's BPE")));
            }
        }
    }
    if let Some(d) = model.get("dropout").and_then(Json::as_f64) {
        if d > 0.0 {
            return Err(tok_err(src, "model.dropout", format!("{d}: BPE dropout changes tokenization")));
        }
    }
    if let Some(n) = root.get("normalizer") {
        if !n.is_null() {
            return Err(tok_err(src, "normalizer", format!("{}: llama.cpp's gpt2 tokenizer applies no normalizer", n.get("type").unwrap_or(n))));
        }
    }
    // The pre-tokenizer: plain ByteLevel with the GPT-2 regex is llama.cpp's `gpt-2`.
    let pre = root.get("pre_tokenizer").cloned().unwrap_or(Json::Null);
    let pre_name = match pre.get("type").and_then(Json::as_str) {
        Some("ByteLevel") => {
            if pre.get("add_prefix_space").and_then(Json::as_bool).unwrap_or(false) {
                return Err(tok_err(src, "pre_tokenizer.add_prefix_space", "true: llama.cpp's gpt-2 pre-tokenizer adds no prefix space"));
            }
            if !pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true) {
                return Err(tok_err(src, "pre_tokenizer.use_regex", "false: llama.cpp's gpt-2 pre-tokenizer splits with the GPT-2 regex"));
            }
            "gpt-2"
        }
        other => {
            return Err(tok_err(
                src,
                "pre_tokenizer",
                format!("{}: only a plain ByteLevel pre-tokenizer (GPT-2 regex) is mapped to a llama.cpp pre-tokenizer", other.unwrap_or("null")),
            ))
        }
    };
    match root.get("decoder").and_then(|d| d.get("type")).and_then(Json::as_str) {
        Some("ByteLevel") => {}
        other => return Err(tok_err(src, "decoder", format!("{}: expected ByteLevel", other.unwrap_or("null")))),
    }

    let n_vocab = cfg.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![TOKEN_UNUSED; n_vocab];
    let vocab = model.get("vocab").and_then(Json::as_object).ok_or_else(|| tok_err(src, "model.vocab", "missing or not an object"))?;
    for (piece, id) in vocab {
        let id = id.as_u64().ok_or_else(|| tok_err(src, "model.vocab", format!("`{piece}`: id is not an integer")))? as usize;
        if id >= n_vocab {
            return Err(tok_err(src, "model.vocab", format!("token `{piece}` has id {id}, out of range for the model's vocab_size {n_vocab}")));
        }
        tokens[id] = Some(piece.clone());
        types[id] = TOKEN_NORMAL;
    }
    for t in root.get("added_tokens").and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]) {
        let content = t.get("content").and_then(Json::as_str).ok_or_else(|| tok_err(src, "added_tokens", "entry without `content`"))?;
        let id = t.get("id").and_then(Json::as_u64).ok_or_else(|| tok_err(src, "added_tokens", format!("`{content}` without an `id`")))? as usize;
        if id >= n_vocab {
            return Err(tok_err(src, "added_tokens", format!("`{content}` has id {id}, out of range for the model's vocab_size {n_vocab}")));
        }
        for f in ["lstrip", "rstrip", "single_word"] {
            if t.get(f).and_then(Json::as_bool).unwrap_or(false) {
                return Err(tok_err(src, &format!("added_tokens[{content}].{f}"), "true: not represented in GGUF"));
            }
        }
        let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
        tokens[id] = Some(content.to_string());
        types[id] = if special { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
    }
    let mut warnings = Vec::new();
    let holes = tokens.iter().filter(|t| t.is_none()).count();
    if holes > 0 {
        warnings.push(format!("{holes} of the model's {n_vocab} token ids have no token in {src}; written as unused [PAD<id>] tokens"));
    }
    let tokens: Vec<String> = tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();
    {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if let Some(j) = seen.insert(t.as_str(), i) {
                return Err(tok_err(src, "model.vocab", format!("token `{t}` appears at ids {j} and {i}; GGUF needs unique tokens")));
            }
        }
    }
    let merges = model.get("merges").and_then(Json::as_array).ok_or_else(|| tok_err(src, "model.merges", "missing"))?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                let (a, b) = (p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or(""));
                if a.contains(' ') || b.contains(' ') {
                    Err(tok_err(src, "model.merges", format!("merge {i} has a space inside a token; GGUF merges are space-separated")))
                } else {
                    Ok(format!("{a} {b}"))
                }
            }
            other => Err(tok_err(src, "model.merges", format!("merge {i} is {other}, expected \"a b\" or [\"a\", \"b\"]"))),
        })
        .collect::<Result<Vec<_>>>()?;

    // BOS/EOS added when encoding: ask the HF tokenizer itself.
    let hf = crate::tokenizer::Tokenizer::from_bytes(tok.json.as_bytes()).map_err(|e| Error::Tokenizer(format!("{src}: {e}")))?;
    let probe = "a";
    let plain = hf.encode(probe, false)?;
    let with = hf.encode(probe, true)?;
    let (mut add_bos, mut add_eos) = (false, false);
    if with != plain {
        let mut rest: &[u32] = &with;
        if rest.len() > plain.len() && Some(rest[0]) == cfg.bos_token_id {
            add_bos = true;
            rest = &rest[1..];
        }
        if rest.len() > plain.len() && Some(rest[rest.len() - 1]) == cfg.eos_token_id {
            add_eos = true;
            rest = &rest[..rest.len() - 1];
        }
        if rest != plain.as_slice() {
            return Err(tok_err(
                src,
                "post_processor",
                format!("encoding {probe:?} gives {with:?} with special tokens and {plain:?} without; only a BOS/EOS around the text can be represented"),
            ));
        }
    }

    let tcfg: Option<Json> = match &tok.config {
        Some(text) => Some(serde_json::from_str(text).map_err(|e| Error::Tokenizer(format!("tokenizer_config.json beside {src}: not valid JSON: {e}")))?),
        None => None,
    };
    let id_of = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
    let mut unk = None;
    if let Some(c) = &tcfg {
        if let Some(u) = c.get("unk_token").and_then(special_content) {
            unk = id_of(u);
        }
        for (key, want) in [("bos_token", cfg.bos_token_id), ("eos_token", cfg.eos_token_id), ("pad_token", cfg.pad_token_id)] {
            if let Some(s) = c.get(key).and_then(special_content) {
                match id_of(s) {
                    Some(id) if Some(id) == want => {}
                    got => warnings.push(format!(
                        "tokenizer_config.json `{key}` is `{s}` (id {}), the model config says id {}; the GGUF uses the model config's",
                        got.map(|i| i.to_string()).unwrap_or_else(|| "none".into()),
                        want.map(|i| i.to_string()).unwrap_or_else(|| "none".into())
                    )),
                }
            }
        }
        if let Some(b) = c.get("add_bos_token").and_then(Json::as_bool) {
            if b != add_bos {
                warnings.push(format!("tokenizer_config.json says add_bos_token {b}, but tokenizer.json adds {}a BOS; the GGUF follows tokenizer.json", if add_bos { "" } else { "no " }));
            }
        }
    }
    let chat_template = match &tok.chat_template {
        Some(t) => Some(t.clone()),
        None => match tcfg.as_ref().and_then(|c| c.get("chat_template")) {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: the `default` one.
            Some(Json::Array(list)) => list
                .iter()
                .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|e| e.get("template").and_then(Json::as_str))
                .map(str::to_string),
            _ => None,
        },
    };
    if chat_template.is_none() {
        warnings.push("no chat template found (tokenizer_config.json `chat_template` or chat_template.jinja); chat front ends will guess one".into());
    }
    let types_vec = types;
    Ok(TokenizerMeta { pre: pre_name, tokens, types: types_vec, merges, add_bos, add_eos, unk, chat_template, warnings })
}

// -------------------------------------------------------------------------------------- tensors

/// Permutes the rows of a per-head projection `[n_heads·d, …]` (or a `[d]` norm weight with
/// `n_heads` 1) from rotate-half order to interleaved-pair order: new row `2j + c` of each head is
/// old row `c·d/2 + j` (c ∈ {0, 1}). RoPE on the result with interleaved pairs equals RoPE on the
/// input with rotate-half, and q·k is unchanged when q and k are permuted alike.
pub fn rope_half_to_interleaved(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    permute_rope_rows(w, n_heads, true)
}

/// The inverse of [`rope_half_to_interleaved`].
pub fn rope_interleaved_to_half(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    permute_rope_rows(w, n_heads, false)
}

fn permute_rope_rows(w: &Tensor, n_heads: usize, to_interleaved: bool) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = *dims.first().ok_or_else(|| Error::input("rope permutation of a scalar"))?;
    if n_heads == 0 || rows % n_heads != 0 || (rows / n_heads) % 2 != 0 {
        return Err(Error::input(format!("rope permutation: {rows} rows do not split into {n_heads} heads of even size")));
    }
    let half = rows / n_heads / 2;
    let rest: usize = dims[1..].iter().product();
    let (a, b) = if to_interleaved { (2, half) } else { (half, 2) };
    Ok(w.reshape((n_heads, a, b, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

struct Entry {
    name: String,
    tensor: QTensor,
}

/// Storage of one tensor: 1-D tensors and the router in f32; q8_0 needs rows that are a multiple
/// of 32 values (else f16).
fn encode(name: &str, t: &Tensor, ty: GgufType, keep_f32: bool, fallbacks: &mut Vec<String>) -> Result<Entry> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?;
    let mut dt = if keep_f32 || t.rank() < 2 { GgmlDType::F32 } else { ty.ggml() };
    if dt == GgmlDType::Q8_0 && t.dim(t.rank() - 1)? % dt.block_size() != 0 {
        fallbacks.push(format!("{name}: rows of {} values are not a multiple of 32; stored as f16", t.dim(t.rank() - 1)?));
        dt = GgmlDType::F16;
    }
    let q = QTensor::quantize(&t, dt).map_err(|e| Error::tensor(name, format!("cannot store as {dt:?}: {e}")))?;
    Ok(Entry { name: name.to_string(), tensor: q })
}

// --------------------------------------------------------------------------------------- export

#[derive(Debug, Clone)]
pub struct GgufOptions {
    pub ty: GgufType,
    /// `general.name`.
    pub name: String,
    pub tokenizer: GgufTokenizer,
    /// Where the model came from (its directory), for error messages; may be empty.
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GgufReport {
    pub path: String,
    pub architecture: GgufArch,
    #[serde(rename = "type")]
    pub ty: GgufType,
    pub tensors: usize,
    pub metadata_keys: usize,
    pub bytes: u64,
    pub vocab_size: usize,
    pub merges: usize,
    pub tokenizer_pre: String,
    pub add_bos_token: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Text of the EOS token (where generation stops).
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
    /// Whether q/k rows were permuted for the arch's RoPE pairing.
    pub rope_permuted: bool,
    pub rope_scaling: Option<String>,
    pub warnings: Vec<String>,
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}
fn u(v: usize) -> Result<Value> {
    Ok(Value::U32(u32::try_from(v).map_err(|_| Error::input(format!("{v} does not fit a GGUF u32")))?))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `model` (+ tokenizer) as a GGUF file at `out`: `<out>.tmp`, then renamed over `out`.
pub fn export_gguf(model: &Model, opts: &GgufOptions, out: &Path) -> Result<GgufReport> {
    let cfg = model.config();
    let what = if opts.source.is_empty() { "the model".to_string() } else { opts.source.clone() };
    if let Some(reason) = gguf_unsupported(cfg) {
        return Err(Error::Other(format!("cannot export {what} to GGUF: {reason}")));
    }
    if model.has_lora() {
        return Err(Error::input(format!("cannot export {what} to GGUF: it has unmerged LoRA adapters; merge them first")));
    }
    let yarn = yarn_mapping(cfg).map_err(|r| Error::Other(format!("cannot export {what} to GGUF: {r}")))?;
    let arch = gguf_arch(cfg);
    let a = arch.name();
    let tok = tokenizer_meta(&opts.tokenizer, cfg)?;
    let mut warnings = tok.warnings.clone();

    let hd = cfg.head_dim();
    let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
    let permute = cfg.rope_interleaved != arch.rope_interleaved();
    let qk = |t: &Tensor, heads: usize| -> Result<Tensor> {
        match (permute, arch.rope_interleaved()) {
            (false, _) => Ok(t.clone()),
            (true, true) => rope_half_to_interleaved(t, heads),
            (true, false) => rope_interleaved_to_half(t, heads),
        }
    };

    let mut params = model.state_dict();
    let mut take = |name: &str| -> Result<Tensor> {
        params.remove(name).ok_or_else(|| Error::tensor(name, "missing from the model (needed for the GGUF mapping)"))
    };
    let ty = opts.ty;
    let mut fallbacks = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    entries.push(encode("token_embd.weight", &take("model.embed_tokens.weight")?, ty, false, &mut fallbacks)?);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let b = format!("blk.{i}");
        entries.push(encode(&format!("{b}.attn_norm.weight"), &take(&format!("{p}.input_layernorm.weight"))?, ty, true, &mut fallbacks)?);
        entries.push(encode(&format!("{b}.attn_q.weight"), &qk(&take(&format!("{p}.self_attn.q_proj.weight"))?, nh)?, ty, false, &mut fallbacks)?);
        entries.push(encode(&format!("{b}.attn_k.weight"), &qk(&take(&format!("{p}.self_attn.k_proj.weight"))?, nkv)?, ty, false, &mut fallbacks)?);
        entries.push(encode(&format!("{b}.attn_v.weight"), &take(&format!("{p}.self_attn.v_proj.weight"))?, ty, false, &mut fallbacks)?);
        entries.push(encode(&format!("{b}.attn_output.weight"), &take(&format!("{p}.self_attn.o_proj.weight"))?, ty, false, &mut fallbacks)?);
        if cfg.use_qk_norm() {
            entries.push(encode(&format!("{b}.attn_q_norm.weight"), &qk(&take(&format!("{p}.self_attn.q_norm.weight"))?, 1)?, ty, true, &mut fallbacks)?);
            entries.push(encode(&format!("{b}.attn_k_norm.weight"), &qk(&take(&format!("{p}.self_attn.k_norm.weight"))?, 1)?, ty, true, &mut fallbacks)?);
        }
        entries.push(encode(&format!("{b}.ffn_norm.weight"), &take(&format!("{p}.post_attention_layernorm.weight"))?, ty, true, &mut fallbacks)?);
        if cfg.use_moe {
            entries.push(encode(&format!("{b}.ffn_gate_inp.weight"), &take(&format!("{p}.mlp.gate.weight"))?, ty, true, &mut fallbacks)?);
            for (proj, gg) in [("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")] {
                let experts = (0..cfg.num_experts)
                    .map(|e| take(&format!("{p}.mlp.experts.{e}.{proj}.weight")))
                    .collect::<Result<Vec<_>>>()?;
                // [E, out, in]: ggml's {in, out, E}.
                let stacked = Tensor::stack(&experts, 0)?;
                entries.push(encode(&format!("{b}.{gg}.weight"), &stacked, ty, false, &mut fallbacks)?);
            }
        } else {
            entries.push(encode(&format!("{b}.ffn_gate.weight"), &take(&format!("{p}.mlp.gate_proj.weight"))?, ty, false, &mut fallbacks)?);
            entries.push(encode(&format!("{b}.ffn_up.weight"), &take(&format!("{p}.mlp.up_proj.weight"))?, ty, false, &mut fallbacks)?);
            entries.push(encode(&format!("{b}.ffn_down.weight"), &take(&format!("{p}.mlp.down_proj.weight"))?, ty, false, &mut fallbacks)?);
        }
    }
    entries.push(encode("output_norm.weight", &take("model.norm.weight")?, ty, true, &mut fallbacks)?);
    if !cfg.tie_word_embeddings {
        entries.push(encode("output.weight", &take("lm_head.weight")?, ty, false, &mut fallbacks)?);
    }
    if let Some(left) = {
        let mut k: Vec<&String> = params.keys().collect();
        k.sort();
        k.first().map(|s| s.to_string())
    } {
        return Err(Error::tensor(left, "has no GGUF mapping; refusing to write a file without it"));
    }
    warnings.extend(fallbacks);
    // What Ollama's built-in (Go) engines for these archs read differently from llama.cpp, from
    // their source: they cannot be tested here, so they are reported rather than refused.
    if arch != GgufArch::Llama {
        warnings.push(format!(
            "Ollama's built-in {} engine splits text with Qwen2's regex whatever tokenizer.ggml.pre says (digits one by one, …), unlike this tokenizer; llama.cpp follows the file",
            arch.name()
        ));
    }
    if arch == GgufArch::Llama && hd * nh != cfg.hidden_size {
        warnings.push(format!("head_dim {hd} × {nh} heads ≠ hidden_size {}: Ollama's built-in llama engine assumes hidden_size / heads; llama.cpp reads attention.key_length", cfg.hidden_size));
    }

    // Metadata.
    let ffn = if cfg.use_moe && arch == GgufArch::Llama { cfg.expert_ffn_size() } else { cfg.intermediate_size };
    let k = |key: &str| format!("{a}.{key}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(a)),
        ("general.name".into(), s(&opts.name)),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (k("context_length"), u(cfg.max_position_embeddings)?),
        (k("embedding_length"), u(cfg.hidden_size)?),
        (k("block_count"), u(cfg.num_hidden_layers)?),
        (k("feed_forward_length"), u(ffn)?),
        (k("attention.head_count"), u(nh)?),
        (k("attention.head_count_kv"), u(nkv)?),
        (k("attention.key_length"), u(hd)?),
        (k("attention.value_length"), u(hd)?),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (k("rope.dimension_count"), u(hd)?),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("vocab_size"), u(cfg.vocab_size)?),
    ];
    if cfg.use_moe {
        meta.push((k("expert_count"), u(cfg.num_experts)?));
        meta.push((k("expert_used_count"), u(cfg.num_experts_per_tok)?));
        if arch == GgufArch::Qwen3Moe {
            meta.push((k("expert_feed_forward_length"), u(cfg.expert_ffn_size())?));
        }
    }
    let rope_scaling = yarn.as_ref().map(|y| {
        // llama.cpp scales cos/sin by (1 + 0.1·ln s)·attn_factor under YaRN; bunmind by attention_factor.
        let attn = y.attention_factor / (1.0 + 0.1 * y.factor.ln());
        meta.push((k("rope.scaling.type"), s("yarn")));
        meta.push((k("rope.scaling.factor"), Value::F32(y.factor as f32)));
        meta.push((k("rope.scaling.original_context_length"), Value::U32(y.orig as u32)));
        meta.push((k("rope.scaling.attn_factor"), Value::F32(attn as f32)));
        format!("yarn factor {} over {} positions, attention factor {}", y.factor, y.orig, y.attention_factor)
    });
    if rope_scaling.is_some() {
        warnings.push("YaRN is written as rope.scaling.*, which llama.cpp applies; Ollama's built-in llama/qwen3 engines read only rope.freq_scale".into());
    }
    meta.push(("tokenizer.ggml.model".into(), s("gpt2")));
    meta.push(("tokenizer.ggml.pre".into(), s(tok.pre)));
    // Ollama's own llama engine splits text with the regex in this key (Llama 3's when absent);
    // llama.cpp ignores it and follows `tokenizer.ggml.pre`.
    meta.push(("tokenizer.ggml.pretokenizer".into(), s(GPT2_SPLIT_REGEX)));
    meta.push(("tokenizer.ggml.tokens".into(), Value::Array(tok.tokens.iter().map(|t| s(t)).collect())));
    meta.push(("tokenizer.ggml.token_type".into(), Value::Array(tok.types.iter().map(|&t| Value::I32(t)).collect())));
    meta.push(("tokenizer.ggml.merges".into(), Value::Array(tok.merges.iter().map(|m| s(m)).collect())));
    for (key, id) in [("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_token_id), ("padding_token_id", cfg.pad_token_id)] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    if let Some(unk) = tok.unk {
        meta.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(unk)));
    }
    meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(tok.add_bos)));
    meta.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(tok.add_eos)));
    if let Some(t) = &tok.chat_template {
        meta.push(("tokenizer.chat_template".into(), s(t)));
    }

    // Write atomically.
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = entries.iter().map(|e| (e.name.as_str(), &e.tensor)).collect();
    let tmp = tmp_path(out);
    let write = || -> Result<()> {
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::new(f);
        gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(|e| Error::Other(format!("{}: cannot write GGUF: {e}", tmp.display())))?;
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?.sync_all().map_err(|e| Error::io(&tmp, e))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    let eos_token = cfg.eos_token_id.and_then(|e| tok.tokens.get(e as usize).cloned());
    Ok(GgufReport {
        path: out.display().to_string(),
        architecture: arch,
        ty,
        tensors: entries.len(),
        metadata_keys: meta.len(),
        bytes,
        vocab_size: cfg.vocab_size,
        merges: tok.merges.len(),
        tokenizer_pre: tok.pre.to_string(),
        add_bos_token: tok.add_bos,
        bos_token_id: cfg.bos_token_id,
        eos_token_id: cfg.eos_token_id,
        eos_token,
        chat_template: tok.chat_template,
        rope_permuted: permute,
        rope_scaling,
        warnings,
    })
}
