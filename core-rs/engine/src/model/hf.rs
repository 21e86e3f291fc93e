//! Hugging Face `config.json` ⇄ [`ModelConfig`], for every decoder family bunmind computes:
//! MiniMind (v1/v2/3 and bunmind's own canonical form), `llama`, `qwen2`, `qwen3`, `qwen3_moe`.
//!
//! Import ([`import_config`]): the family is `config.model_type` (absent: `minimind`). Every key of
//! the file is either *used*, *irrelevant* to the computation (a fixed list per family, below), or
//! *refused* when its value asks for math bunmind does not implement (the error names the key);
//! any other key is kept out of the model and reported as a warning naming it. Absent keys take the
//! family's own default (transformers' config class defaults, MiniMind's for `minimind`), so a
//! hand-written `{"model_type": "qwen3", ...}` means what it means to transformers. `null` token
//! ids (transformers 5 writes `"pad_token_id": null`) are accepted; a list of eos ids keeps the first.
//!
//! Export ([`export_config`]): the same model in a family's own format, for `transformers`
//! without `trust_remote_code`; [`native_family`] picks the family that computes exactly what
//! bunmind computes, and [`check_family`] says (naming the feature) why a family cannot.
use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::config::{ModelConfig, RopeParameters, RopeScaling};
use crate::{Error, Result};

/// A `config.json` family, by its `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    MiniMind,
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
}

impl Family {
    pub const ALL: [Family; 5] = [Family::MiniMind, Family::Llama, Family::Qwen2, Family::Qwen3, Family::Qwen3Moe];

    pub fn model_type(self) -> &'static str {
        match self {
            Family::MiniMind => "minimind",
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Qwen3Moe => "qwen3_moe",
        }
    }

    /// The transformers class (`architectures[0]`).
    pub fn architecture(self) -> &'static str {
        match self {
            Family::MiniMind => "MiniMindForCausalLM",
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
        }
    }

    /// A family by `model_type`, or by the `--arch` spellings `qwen3-moe` / `qwen3moe`.
    pub fn parse(name: &str) -> Option<Family> {
        match name.to_ascii_lowercase().as_str() {
            "minimind" => Some(Family::MiniMind),
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "qwen3_moe" | "qwen3-moe" | "qwen3moe" => Some(Family::Qwen3Moe),
            _ => None,
        }
    }

    fn supported() -> String {
        Family::ALL.iter().map(|f| f.model_type()).collect::<Vec<_>>().join(", ")
    }
}

/// Keys of transformers' `PretrainedConfig` (and generation defaults that 4.x configs carry) that
/// do not change what the decoder computes: bookkeeping, output switches, attention-kernel choice,
/// task heads and generation defaults (bunmind takes those from `generation_config.json`).
pub const GENERIC_IRRELEVANT: &[&str] = &[
    "architectures", "transformers_version", "torch_dtype", "dtype", "use_cache", "initializer_range", "_name_or_path",
    "auto_map", "output_attentions", "output_hidden_states", "return_dict", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size",
    "add_cross_attention", "tie_encoder_decoder", "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix",
    "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
    "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "_attn_implementation", "attn_implementation", "_attn_implementation_autoset",
    "_commit_hash", "output_router_logits_dtype", "base_model_tp_plan", "base_model_pp_plan", "base_model_ep_plan",
];

/// Per-family keys that do not change the computation (beyond [`GENERIC_IRRELEVANT`]).
pub fn family_irrelevant(f: Family) -> &'static [&'static str] {
    match f {
        // `flash_attn` picks MiniMind's attention kernel (same math).
        Family::MiniMind => &["flash_attn"],
        // transformers ≥ 4.40 no longer splits the projections by `pretraining_tp` (same product).
        Family::Llama => &["pretraining_tp"],
        Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe => &[],
    }
}

/// Reads keys of one JSON object, remembering which were looked at.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    /// The object's name in errors: `` (top level) or `rope_parameters.`.
    prefix: &'static str,
    seen: RefCell<BTreeSet<String>>,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl<'a> Reader<'a> {
    fn new(obj: &'a Map<String, Value>, prefix: &'static str) -> Self {
        Reader { obj, prefix, seen: RefCell::new(BTreeSet::new()) }
    }
    fn name(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }
    /// The value of `k` (null counts as absent), marking it used.
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.seen.borrow_mut().insert(k.to_string());
        self.obj.get(k).filter(|v| !v.is_null())
    }
    fn has(&self, k: &str) -> bool {
        self.obj.get(k).is_some_and(|v| !v.is_null())
    }
    fn bad(&self, k: &str, want: &str, v: &Value) -> Error {
        Error::config(self.name(k), format!("expected {want}, got {} ({v})", kind_of(v)))
    }
    fn usize(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| self.bad(k, "a non-negative integer", v)),
        }
    }
    fn req_usize(&self, k: &str) -> Result<usize> {
        self.usize(k)?.ok_or_else(|| Error::config(self.name(k), "missing: required"))
    }
    fn f64(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.bad(k, "a number", v)),
        }
    }
    fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.bad(k, "true or false", v)),
        }
    }
    fn str(&self, k: &str) -> Result<Option<&'a str>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.bad(k, "a string", v)),
        }
    }
    fn object(&self, k: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_object().map(Some).ok_or_else(|| self.bad(k, "an object", v)),
        }
    }
    /// A token id: an integer, null (none), or a list of ids (the first is kept).
    fn token_id(&self, k: &str) -> Result<Option<Option<u32>>> {
        self.seen.borrow_mut().insert(k.to_string());
        let Some(v) = self.obj.get(k) else { return Ok(None) };
        let one = |x: &Value| x.as_u64().filter(|&i| i <= u32::MAX as u64).map(|i| i as u32);
        match v {
            Value::Null => Ok(Some(None)),
            Value::Array(items) => {
                let ids: Option<Vec<u32>> = items.iter().map(one).collect();
                let ids = ids.ok_or_else(|| self.bad(k, "a token id, a list of token ids or null", v))?;
                Ok(Some(ids.first().copied()))
            }
            _ => one(v).map(|i| Some(Some(i))).ok_or_else(|| self.bad(k, "a token id, a list of token ids or null", v)),
        }
    }
    fn ignore(&self, keys: &[&str]) {
        let mut s = self.seen.borrow_mut();
        for k in keys {
            s.insert(k.to_string());
        }
    }
    /// Refuses a key unless its value is one the computation does not depend on.
    fn require(&self, k: &str, ok: impl Fn(&Value) -> bool, why: &str) -> Result<()> {
        match self.get(k) {
            Some(v) if !ok(v) => Err(Error::config(self.name(k), format!("{v} is not supported: {why}"))),
            _ => Ok(()),
        }
    }
    /// Warnings for every key nobody looked at.
    fn leftovers(&self, what: &str) -> Vec<String> {
        let seen = self.seen.borrow();
        self.obj
            .keys()
            .filter(|k| !seen.contains(*k))
            .map(|k| format!("config field `{}{k}` is not known to bunmind for {what}; ignored", self.prefix))
            .collect()
    }
}

/// transformers' `yarn_get_mscale`.
fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

/// RoPE as transformers reads it: `rope_theta` + `rope_parameters` (5.x) or `rope_scaling` (4.x,
/// only when `legacy_scaling`; MiniMind's own `rope_scaling` means something else).
fn read_hf_rope(
    r: &Reader,
    max_pos: usize,
    default_theta: f64,
    legacy_scaling: bool,
    warnings: &mut Vec<String>,
) -> Result<(f64, Option<RopeParameters>)> {
    let theta_top = r.f64("rope_theta")?;
    let orig_top = r.usize("original_max_position_embeddings")?;
    r.require("partial_rotary_factor", |v| v.as_f64() == Some(1.0), "bunmind rotates the whole head (partial_rotary_factor 1)")?;
    let (dict, prefix) = match r.object("rope_parameters")? {
        Some(d) => {
            if legacy_scaling {
                // Both spellings (a 5.x file edited by hand, or written for 4.x too): they must agree.
                if let Some(legacy) = r.object("rope_scaling")? {
                    let kind = |m: &Map<String, Value>| {
                        m.get("rope_type").or_else(|| m.get("type")).and_then(|t| t.as_str()).unwrap_or("default").to_string()
                    };
                    let strip = |m: &Map<String, Value>| {
                        let mut m = m.clone();
                        for k in ["rope_type", "type", "rope_theta"] {
                            m.remove(k);
                        }
                        m
                    };
                    if kind(legacy) != kind(d) || strip(legacy) != strip(d) {
                        return Err(Error::config(
                            "rope_scaling",
                            "disagrees with rope_parameters (transformers 5 reads rope_parameters, 4.x rope_scaling); make them equal or remove one",
                        ));
                    }
                }
            }
            (Some(d), "rope_parameters.")
        }
        None if legacy_scaling => (r.object("rope_scaling")?, "rope_scaling."),
        None => (None, "rope_parameters."),
    };
    let Some(d) = dict else {
        return Ok((theta_top.unwrap_or(default_theta), None));
    };
    let p = Reader::new(d, prefix);
    let theta = p.f64("rope_theta")?.or(theta_top).unwrap_or(default_theta);
    p.require("partial_rotary_factor", |v| v.as_f64() == Some(1.0), "bunmind rotates the whole head (partial_rotary_factor 1)")?;
    let kind = match p.str("rope_type")? {
        Some(t) => {
            p.ignore(&["type"]);
            t.to_string()
        }
        None => p.str("type")?.unwrap_or("default").to_string(),
    };
    let need = |k: &str| p.f64(k)?.ok_or_else(|| Error::config(p.name(k), format!("missing: required for rope_type `{kind}`")));
    let out = match kind.as_str() {
        "default" => {
            // transformers ignores scaling keys for the default kind.
            p.ignore(&["factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow"]);
            None
        }
        "linear" => Some(RopeParameters::Linear { factor: need("factor")? }),
        "llama3" => Some(RopeParameters::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: orig_top.or(p.usize("original_max_position_embeddings")?).unwrap_or(max_pos),
        }),
        "yarn" => {
            let orig = p.usize("original_max_position_embeddings")?;
            let orig = orig_top.or(orig).unwrap_or(max_pos);
            let factor = p.f64("factor")?.unwrap_or(max_pos as f64 / orig as f64);
            let (mscale, mscale_all) = (p.f64("mscale")?, p.f64("mscale_all_dim")?);
            let attention_factor = match p.f64("attention_factor")? {
                Some(a) => a,
                None => match (mscale.filter(|&m| m != 0.0), mscale_all.filter(|&m| m != 0.0)) {
                    (Some(m), Some(a)) => yarn_mscale(factor, m) / yarn_mscale(factor, a),
                    _ => yarn_mscale(factor, 1.0),
                },
            };
            // transformers: `get("beta_fast") or 32`, so 0 also means the default.
            let beta_fast = p.f64("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0);
            let beta_slow = p.f64("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0);
            let truncate = p.bool("truncate")?.unwrap_or(true);
            Some(RopeParameters::Yarn { factor, original_max_position_embeddings: orig, beta_fast, beta_slow, attention_factor, truncate })
        }
        other => {
            return Err(Error::config(
                p.name("rope_type"),
                format!("`{other}` is not supported; bunmind computes the default, linear, llama3 and yarn kinds"),
            ))
        }
    };
    warnings.extend(p.leftovers("RoPE parameters"));
    Ok((theta, out))
}

fn token_ids(r: &Reader, c: &mut ModelConfig, bos: Option<u32>, eos: Option<u32>) -> Result<()> {
    c.bos_token_id = r.token_id("bos_token_id")?.unwrap_or(bos);
    c.eos_token_id = r.token_id("eos_token_id")?.unwrap_or(eos);
    c.pad_token_id = r.token_id("pad_token_id")?.unwrap_or(None);
    Ok(())
}

/// bunmind's own keys on HF-family exports (`"bunmind": {"dropout": …}`): training settings the
/// family has no field for.
fn read_bunmind_extras(r: &Reader, c: &mut ModelConfig) -> Result<()> {
    if let Some(extra) = r.object("bunmind")? {
        let e = Reader::new(extra, "bunmind.");
        if let Some(d) = e.f64("dropout")? {
            c.dropout = d;
        }
        if let Some(w) = e.leftovers("bunmind's settings").into_iter().next() {
            return Err(Error::config("bunmind", w));
        }
    }
    Ok(())
}

fn silu_only(r: &Reader) -> Result<()> {
    r.require("hidden_act", |v| v.as_str() == Some("silu"), "bunmind's MLP is SwiGLU (hidden_act silu)")
}

fn no_sliding_window(r: &Reader) -> Result<()> {
    r.require("use_sliding_window", |v| v.as_bool() == Some(false), "bunmind attends over the full context")?;
    // Only read when use_sliding_window is on (refused above).
    r.ignore(&["sliding_window", "max_window_layers"]);
    r.require(
        "layer_types",
        |v| v.as_array().is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention"))),
        "every layer must be full_attention",
    )
}

/// A config object of any supported family → (canonical config, warnings). Not yet validated.
pub fn import_config(v: &Value) -> Result<(ModelConfig, Vec<String>)> {
    let obj = v.as_object().ok_or_else(|| Error::config("config.json", format!("expected a JSON object, got {}", kind_of(v))))?;
    let r = Reader::new(obj, "");
    let mt = r.str("model_type")?.unwrap_or("minimind");
    let fam = Family::parse(mt).filter(|f| f.model_type() == mt.to_ascii_lowercase()).ok_or_else(|| {
        Error::config("model_type", format!("`{mt}` is not supported; bunmind reads {}", Family::supported()))
    })?;
    r.ignore(GENERIC_IRRELEVANT);
    r.ignore(family_irrelevant(fam));
    r.require("quantization_config", |_| false, "quantized checkpoints are not supported; give f32, f16 or bf16 weights")?;
    let mut warnings = Vec::new();
    let mut c = if fam == Family::MiniMind { import_minimind(&r, &mut warnings)? } else { import_hf(&r, fam, &mut warnings)? };
    read_bunmind_extras(&r, &mut c)?;
    c.model_type = "minimind".into();
    c.architectures = vec![Family::MiniMind.architecture().into()];
    warnings.extend(r.leftovers(&format!("model_type `{}`", fam.model_type())));
    Ok((c, warnings))
}

fn import_hf(r: &Reader, fam: Family, warnings: &mut Vec<String>) -> Result<ModelConfig> {
    let moe = fam == Family::Qwen3Moe;
    let qwen = fam != Family::Llama;
    let mut c = ModelConfig::default_for_import();
    c.hidden_size = r.req_usize("hidden_size")?;
    c.num_hidden_layers = r.req_usize("num_hidden_layers")?;
    c.num_attention_heads = r.req_usize("num_attention_heads")?;
    c.num_key_value_heads = Some(r.usize("num_key_value_heads")?.unwrap_or(c.num_attention_heads));
    c.head_dim = r.usize("head_dim")?.or(match fam {
        Family::Qwen3 | Family::Qwen3Moe => Some(128),
        _ => None,
    });
    c.intermediate_size = r.usize("intermediate_size")?.unwrap_or(match fam {
        Family::Llama => 11008,
        Family::Qwen3Moe => 6144,
        _ => 22016,
    });
    c.vocab_size = r.usize("vocab_size")?.unwrap_or(if qwen { 151936 } else { 32000 });
    c.max_position_embeddings = r.usize("max_position_embeddings")?.unwrap_or(if qwen { 32768 } else { 2048 });
    c.rms_norm_eps = r.f64("rms_norm_eps")?.unwrap_or(1e-6);
    c.tie_word_embeddings = r.bool("tie_word_embeddings")?.unwrap_or(false);
    silu_only(r)?;
    r.require("attention_dropout", |v| v.as_f64() == Some(0.0), "set it to 0 (bunmind's training dropout is `bunmind.dropout`)")?;
    let (theta, rope) = read_hf_rope(r, c.max_position_embeddings, 10000.0, true, warnings)?;
    c.rope_theta = theta;
    c.rope_parameters = rope;
    c.qk_norm = Some(matches!(fam, Family::Qwen3 | Family::Qwen3Moe));
    match fam {
        Family::Llama => {
            let b = r.bool("attention_bias")?.unwrap_or(false);
            (c.qkv_bias, c.o_bias) = (b, b);
            c.mlp_bias = r.bool("mlp_bias")?.unwrap_or(false);
        }
        Family::Qwen2 => {
            // Qwen2's q/k/v projections always carry a bias, o_proj never does.
            (c.qkv_bias, c.o_bias) = (true, false);
            no_sliding_window(r)?;
        }
        Family::Qwen3 | Family::Qwen3Moe => {
            let b = r.bool("attention_bias")?.unwrap_or(false);
            (c.qkv_bias, c.o_bias) = (b, b);
            no_sliding_window(r)?;
        }
        Family::MiniMind => unreachable!(),
    }
    let (bos, eos) = if qwen { (None, None) } else { (Some(1), Some(2)) };
    token_ids(r, &mut c, bos, eos)?;
    if moe {
        c.use_moe = true;
        c.num_experts = match r.usize("num_experts")? {
            Some(n) => {
                r.ignore(&["num_local_experts"]);
                n
            }
            None => r.usize("num_local_experts")?.unwrap_or(128),
        };
        c.num_experts_per_tok = r.usize("num_experts_per_tok")?.unwrap_or(8);
        c.moe_intermediate_size = Some(r.usize("moe_intermediate_size")?.unwrap_or(768));
        c.norm_topk_prob = r.bool("norm_topk_prob")?.unwrap_or(false);
        c.n_shared_experts = 0;
        r.require("decoder_sparse_step", |v| v.as_u64() == Some(1), "every layer must be a MoE layer (decoder_sparse_step 1)")?;
        r.require("mlp_only_layers", |v| v.as_array().is_some_and(|a| a.is_empty()), "every layer must be a MoE layer (mlp_only_layers [])")?;
        // transformers adds the router loss to the training loss only with output_router_logits.
        let coef = r.f64("router_aux_loss_coef")?.unwrap_or(0.001);
        c.router_aux_loss_coef = if r.bool("output_router_logits")?.unwrap_or(false) { coef } else { 0.0 };
    }
    Ok(c)
}

fn import_minimind(r: &Reader, warnings: &mut Vec<String>) -> Result<ModelConfig> {
    let mut c = ModelConfig::default_for_import();
    c.hidden_size = r.req_usize("hidden_size")?;
    c.num_hidden_layers = r.req_usize("num_hidden_layers")?;
    c.num_attention_heads = r.req_usize("num_attention_heads")?;
    c.num_key_value_heads = r.usize("num_key_value_heads")?;
    c.head_dim = r.usize("head_dim")?;
    c.intermediate_size = r.req_usize("intermediate_size")?;
    c.moe_intermediate_size = r.usize("moe_intermediate_size")?;
    c.vocab_size = r.usize("vocab_size")?.unwrap_or(6400);
    c.rms_norm_eps = r.f64("rms_norm_eps")?.unwrap_or(1e-6);
    c.max_position_embeddings = r.usize("max_position_embeddings")?.unwrap_or(32768);
    c.tie_word_embeddings = r.bool("tie_word_embeddings")?.unwrap_or(true);
    silu_only(r)?;
    c.dropout = r.f64("dropout")?.unwrap_or(0.0);
    c.use_moe = r.bool("use_moe")?.unwrap_or(false);
    // MiniMind v2 spelled the router settings differently and renormalised top-k weights only for k > 1.
    let v2 = ["n_routed_experts", "aux_loss_alpha", "scoring_func", "seq_aux"].iter().any(|k| r.has(k));
    c.num_experts = match r.usize("n_routed_experts")? {
        Some(n) => n,
        None => r.usize("num_experts")?.unwrap_or(4),
    };
    r.ignore(&["num_experts"]);
    c.num_experts_per_tok = r.usize("num_experts_per_tok")?.unwrap_or(1);
    c.n_shared_experts = r.usize("n_shared_experts")?.unwrap_or(0);
    c.norm_topk_prob = r.bool("norm_topk_prob")?.unwrap_or(true) && !(v2 && c.num_experts_per_tok == 1);
    c.router_aux_loss_coef = match r.f64("aux_loss_alpha")? {
        Some(a) => a,
        None => r.f64("router_aux_loss_coef")?.unwrap_or(5e-4),
    };
    r.ignore(&["router_aux_loss_coef"]);
    r.require("scoring_func", |v| v.as_str() == Some("softmax"), "bunmind's router scores with softmax")?;
    if c.use_moe && r.bool("seq_aux")? == Some(true) && c.router_aux_loss_coef > 0.0 {
        warnings.push(
            "config field `seq_aux` is true: MiniMind v2's sequence-level router loss is not implemented; training uses the batch-level loss (inference is unaffected)"
                .into(),
        );
    }
    r.ignore(&["seq_aux"]);
    c.qk_norm = r.bool("qk_norm")?;
    c.rope_interleaved = r.bool("rope_interleaved")?.unwrap_or(false);
    c.inference_rope_scaling = r.bool("inference_rope_scaling")?.unwrap_or(false);
    c.rope_scaling = match r.get("rope_scaling") {
        None => None,
        Some(v) => Some(serde_json::from_value::<RopeScaling>(v.clone()).map_err(|e| Error::config("rope_scaling", e.to_string()))?),
    };
    let (theta, rope) = read_hf_rope(r, c.max_position_embeddings, 1e6, false, warnings)?;
    c.rope_theta = theta;
    c.rope_parameters = rope;
    c.qkv_bias = r.bool("qkv_bias")?.unwrap_or(false);
    c.o_bias = r.bool("o_bias")?.unwrap_or(false);
    c.mlp_bias = r.bool("mlp_bias")?.unwrap_or(false);
    token_ids(r, &mut c, Some(1), Some(2))?;
    Ok(c)
}

/// MiniMind's inference-time YaRN as transformers' `yarn` parameters, when the two compute the
/// same frequencies (checked value by value); `Ok(None)` when MiniMind's scaling is inactive.
fn minimind_yarn_as_hf(cfg: &ModelConfig) -> std::result::Result<Option<RopeParameters>, String> {
    let Some(s) = cfg.effective_rope_scaling() else { return Ok(None) };
    if cfg.max_position_embeddings as f64 / s.original_max_position_embeddings as f64 <= 1.0 {
        return Ok(None);
    }
    let hf = RopeParameters::Yarn {
        factor: s.factor,
        original_max_position_embeddings: s.original_max_position_embeddings,
        beta_fast: s.beta_fast,
        beta_slow: s.beta_slow,
        attention_factor: s.attention_factor,
        truncate: true,
    };
    let mine = super::rope::Rope::new(cfg);
    let theirs = super::rope::Rope::new(&ModelConfig { rope_scaling: None, inference_rope_scaling: false, rope_parameters: Some(hf.clone()), ..cfg.clone() });
    // Same formula, different order of operations: equal to a few ulps.
    let (a, b) = (mine.inference_frequencies(), theirs.inference_frequencies());
    let close = a.1 == b.1 && a.0.iter().zip(&b.0).all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()));
    if close {
        Ok(Some(hf))
    } else {
        Err("MiniMind's YaRN (rope_scaling) differs from transformers' yarn for this head size".into())
    }
}

/// Why `family` cannot hold `cfg` exactly (naming the feature), or Ok.
pub fn check_family(cfg: &ModelConfig, family: Family) -> std::result::Result<(), String> {
    let name = family.architecture();
    let no = |what: &str| Err(format!("{name} has no {what}"));
    if family == Family::MiniMind {
        return Ok(());
    }
    if cfg.rope_interleaved {
        return no("interleaved RoPE (rope_interleaved, the seed v1 layout)");
    }
    minimind_yarn_as_hf(cfg).map_err(|e| format!("{name}: {e}"))?;
    match family {
        Family::Llama | Family::Qwen2 if cfg.use_qk_norm() => no("q/k norm (qk_norm)"),
        Family::Qwen3 | Family::Qwen3Moe if !cfg.use_qk_norm() => no("layer without q/k norm (qk_norm false)"),
        Family::Llama | Family::Qwen2 | Family::Qwen3 if cfg.use_moe => no("mixture-of-experts layers (use_moe)"),
        Family::Qwen3Moe if !cfg.use_moe => no("dense layers (use_moe false)"),
        Family::Qwen3Moe if cfg.n_shared_experts > 0 => no("shared experts (n_shared_experts)"),
        Family::Qwen2 if !cfg.qkv_bias || cfg.o_bias => no("layout other than biases on q/k/v only (qkv_bias, o_bias)"),
        Family::Llama | Family::Qwen3 | Family::Qwen3Moe if cfg.qkv_bias != cfg.o_bias => no("biases on q/k/v without o_proj (qkv_bias, o_bias)"),
        Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe if cfg.mlp_bias => no("MLP biases (mlp_bias)"),
        _ => Ok(()),
    }
}

/// The native transformers family that computes exactly this model, if any.
pub fn native_family(cfg: &ModelConfig) -> std::result::Result<Family, String> {
    let candidates: &[Family] = match (cfg.use_moe, cfg.use_qk_norm()) {
        (true, _) => &[Family::Qwen3Moe],
        (false, true) => &[Family::Qwen3],
        (false, false) => &[Family::Llama, Family::Qwen2],
    };
    let mut why = Vec::new();
    for &f in candidates {
        match check_family(cfg, f) {
            Ok(()) => return Ok(f),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

/// `cfg` as `family`'s `config.json` (transformers 5 layout, with `rope_theta` / `rope_scaling`
/// also at the top level for 4.x); `dtype`: "float32", "float16" or "bfloat16".
pub fn export_config(cfg: &ModelConfig, family: Family, dtype: &str) -> Result<Value> {
    check_family(cfg, family).map_err(|e| Error::config("architecture", e))?;
    if family == Family::MiniMind {
        let mut v: Value = serde_json::from_str(&cfg.to_json_string()?)?;
        let o = v.as_object_mut().expect("config serialises to an object");
        o.insert("hidden_act".into(), json!("silu"));
        o.insert("torch_dtype".into(), json!(dtype));
        o.insert("dtype".into(), json!(dtype));
        return Ok(v);
    }
    let rope = match &cfg.rope_parameters {
        Some(p) => Some(p.clone()),
        None => minimind_yarn_as_hf(cfg).map_err(|e| Error::config("rope_scaling", e))?,
    };
    let mut rope_params = match &rope {
        Some(p) => serde_json::to_value(p)?,
        None => json!({"rope_type": "default"}),
    };
    rope_params.as_object_mut().expect("object").insert("rope_theta".into(), json!(cfg.rope_theta));
    let mut o = Map::new();
    let mut put = |k: &str, v: Value| {
        o.insert(k.into(), v);
    };
    put("architectures", json!([family.architecture()]));
    put("model_type", json!(family.model_type()));
    put("hidden_size", json!(cfg.hidden_size));
    put("intermediate_size", json!(cfg.intermediate_size));
    put("num_hidden_layers", json!(cfg.num_hidden_layers));
    put("num_attention_heads", json!(cfg.num_attention_heads));
    put("num_key_value_heads", json!(cfg.kv_heads()));
    put("head_dim", json!(cfg.head_dim()));
    put("hidden_act", json!("silu"));
    put("max_position_embeddings", json!(cfg.max_position_embeddings));
    put("rms_norm_eps", json!(cfg.rms_norm_eps));
    put("vocab_size", json!(cfg.vocab_size));
    put("tie_word_embeddings", json!(cfg.tie_word_embeddings));
    put("bos_token_id", json!(cfg.bos_token_id));
    put("eos_token_id", json!(cfg.eos_token_id));
    put("pad_token_id", json!(cfg.pad_token_id));
    put("attention_dropout", json!(0.0));
    put("rope_theta", json!(cfg.rope_theta));
    put("rope_scaling", rope.as_ref().map(|_| rope_params.clone()).unwrap_or(Value::Null));
    put("rope_parameters", rope_params);
    put("initializer_range", json!(0.02));
    put("use_cache", json!(true));
    put("torch_dtype", json!(dtype));
    put("dtype", json!(dtype));
    match family {
        Family::Llama => {
            put("attention_bias", json!(cfg.qkv_bias));
            put("mlp_bias", json!(cfg.mlp_bias));
        }
        Family::Qwen2 => {
            put("use_sliding_window", json!(false));
            put("sliding_window", Value::Null);
        }
        Family::Qwen3 | Family::Qwen3Moe => {
            put("attention_bias", json!(cfg.qkv_bias));
            put("use_sliding_window", json!(false));
            put("sliding_window", Value::Null);
        }
        Family::MiniMind => unreachable!(),
    }
    if family == Family::Qwen3Moe {
        put("num_experts", json!(cfg.num_experts));
        put("num_local_experts", json!(cfg.num_experts));
        put("num_experts_per_tok", json!(cfg.num_experts_per_tok));
        put("moe_intermediate_size", json!(cfg.expert_ffn_size()));
        put("norm_topk_prob", json!(cfg.norm_topk_prob));
        put("decoder_sparse_step", json!(1));
        put("mlp_only_layers", json!([]));
        put("router_aux_loss_coef", json!(cfg.router_aux_loss_coef));
        put("output_router_logits", json!(cfg.router_aux_loss_coef > 0.0));
    }
    if cfg.dropout > 0.0 {
        put("bunmind", json!({"dropout": cfg.dropout}));
    }
    Ok(Value::Object(o))
}
