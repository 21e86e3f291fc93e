//! `ModelConfig`: bunmind's one canonical config for every decoder it runs (MiniMind v1/v2/3,
//! Llama, Qwen2, Qwen3, Qwen3-MoE). It is read from a Hugging Face `config.json` of any of those
//! families by [`super::hf`] (which knows each family's field names and defaults and refuses what it
//! cannot compute), and written back in a family's own format by [`super::hf::export_config`].
//! [`ModelConfig::to_json_string`] gives the canonical form (model_type `minimind` plus bunmind's
//! own keys), which [`ModelConfig::from_json_str`] reads back exactly.
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// YaRN scaling of RoPE frequencies (inference only, as upstream's `inference_rope_scaling`).
///
/// With `s = factor`, `L = original_max_position_embeddings`, head dim `d`, base `θ`:
/// `inv_dim(b) = d·ln(L / (2π·b)) / (2·ln θ)`, `low = max(floor(inv_dim(beta_fast)), 0)`,
/// `high = min(ceil(inv_dim(beta_slow)), d/2 − 1)`, `γ_i = clamp((i − low) / max(high − low, 1e-3), 0, 1)`,
/// `f'_i = f_i · ((1 − γ_i) + γ_i / s)`; cos and sin tables are multiplied by `attention_factor`.
/// It only applies when `max_position_embeddings / L > 1` (same rule as upstream MiniMind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(default = "d_yarn_factor")]
    pub factor: f64,
    #[serde(default = "d_yarn_orig")]
    pub original_max_position_embeddings: usize,
    #[serde(default = "d_beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "d_beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "d_one")]
    pub attention_factor: f64,
    /// "yarn" (the only kind supported); HF also spells the key `rope_type`.
    #[serde(default = "d_yarn", alias = "rope_type")]
    pub r#type: String,
}

impl Default for RopeScaling {
    fn default() -> Self {
        RopeScaling {
            factor: 16.0,
            original_max_position_embeddings: 2048,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.0,
            r#type: "yarn".into(),
        }
    }
}

fn d_yarn_factor() -> f64 { 16.0 }
fn d_yarn_orig() -> usize { 2048 }
fn d_beta_fast() -> f64 { 32.0 }
fn d_beta_slow() -> f64 { 1.0 }
fn d_one() -> f64 { 1.0 }
fn d_yarn() -> String { "yarn".into() }
fn d_true() -> bool { true }
fn d_vocab() -> usize { 6400 }
fn d_eps() -> f64 { 1e-6 }
fn d_theta() -> f64 { 1e6 }
fn d_max_pos() -> usize { 32768 }
fn d_experts() -> usize { 4 }
fn d_topk() -> usize { 1 }
fn d_aux() -> f64 { 5e-4 }
fn d_model_type() -> String { "minimind".into() }
fn is_false(b: &bool) -> bool { !*b }

/// Transformers' RoPE scaling (`rope_parameters` in transformers 5, `rope_scaling` in 4.x) for the
/// HF families: unlike MiniMind's [`RopeScaling`], it applies in training and inference alike, and
/// each kind computes the frequencies exactly as `transformers.modeling_rope_utils` does (see
/// `super::rope`). Defaults are resolved on import, so every value here is the one in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeParameters {
    /// `f_i / factor`.
    Linear { factor: f64 },
    /// Llama 3.1's wavelength-banded scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// YaRN as transformers computes it (ramp over `find_correction_range`, capped at `head_dim − 1`).
    Yarn { factor: f64, original_max_position_embeddings: usize, beta_fast: f64, beta_slow: f64, attention_factor: f64, truncate: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (plain multi-head attention) when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    /// Per-expert FFN size; defaults to `intermediate_size` (upstream's `moe_intermediate_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_intermediate_size: Option<usize>,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub use_moe: bool,
    #[serde(default = "d_experts")]
    pub num_experts: usize,
    #[serde(default = "d_topk")]
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub n_shared_experts: usize,
    #[serde(default = "d_true")]
    pub norm_topk_prob: bool,
    #[serde(default = "d_aux")]
    pub router_aux_loss_coef: f64,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3 / minimind-3). `None` = not stated: on for
    /// `model_type` "qwen3"; when loading a checkpoint, inferred from the presence of `q_norm` weights.
    #[serde(default)]
    pub qk_norm: Option<bool>,
    /// The seed v1's RoPE that rotates interleaved pairs (x0,x1),(x2,x3)… instead of HF rotate-half.
    #[serde(default)]
    pub rope_interleaved: bool,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Upstream's switch: when true and `rope_scaling` is absent, YaRN with the default parameters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inference_rope_scaling: bool,
    /// HF-style RoPE scaling (applies in training too); see [`RopeParameters`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Biases on the q, k and v projections (Qwen2; Llama/Qwen3 `attention_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama/Qwen3 `attention_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub o_bias: bool,
    /// Biases on the dense MLP's projections (Llama `mlp_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mlp_bias: bool,
    #[serde(default)]
    pub dropout: f64,
    /// `None` where the checkpoint has none (HF writes `null`); a raw prompt then starts without one.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// The first of the config's eos ids (`None`: stop on the tokenizer's / generation_config's).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Only used to fill left padding (masked), so `None` means 0.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "d_model_type")]
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// Upstream v1 rule: `4·dim → int(2·h/3) → round up to a multiple of 64` (1408 for 512).
pub fn v1_ffn_size(hidden: usize) -> usize {
    let h = 2 * (4 * hidden) / 3;
    h.div_ceil(64) * 64
}

/// Upstream minimind-3 rule: `ceil(hidden·π/64)·64` (2432 for 768).
pub fn v3_ffn_size(hidden: usize) -> usize {
    ((hidden as f64 * std::f64::consts::PI / 64.0).ceil() as usize) * 64
}

impl ModelConfig {
    /// The names accepted by [`ModelConfig::preset`].
    pub const PRESETS: &'static [&'static str] = &[
        "minimind-v1",
        "minimind2-small",
        "minimind2",
        "minimind2-moe",
        "minimind-3",
        "minimind-3-moe",
        "tiny",
    ];

    fn base(hidden: usize, layers: usize, heads: usize, kv: usize, ffn: usize) -> Self {
        ModelConfig {
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            head_dim: None,
            intermediate_size: ffn,
            moe_intermediate_size: None,
            vocab_size: 6400,
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            max_position_embeddings: 32768,
            tie_word_embeddings: true,
            use_moe: false,
            num_experts: 4,
            num_experts_per_tok: 1,
            n_shared_experts: 0,
            norm_topk_prob: true,
            router_aux_loss_coef: 5e-4,
            qk_norm: Some(false),
            rope_interleaved: false,
            rope_scaling: None,
            inference_rope_scaling: false,
            rope_parameters: None,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            dropout: 0.0,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            pad_token_id: Some(0),
            model_type: "minimind".into(),
            architectures: vec!["MiniMindForCausalLM".into()],
        }
    }

    /// The starting point of [`super::hf::import_config`] (every field is then read or defaulted).
    pub(crate) fn default_for_import() -> Self {
        ModelConfig { qk_norm: None, ..Self::base(0, 0, 0, 0, 0) }
    }

    /// A named preset: the model sizes MiniMind publishes (its README's model table; vocab 6400, tied embeddings).
    pub fn preset(name: &str) -> Result<Self> {
        let c = match name {
            "minimind-v1" => ModelConfig {
                rope_theta: 1e4,
                rope_interleaved: true,
                max_position_embeddings: 512,
                ..Self::base(512, 8, 16, 8, v1_ffn_size(512))
            },
            "minimind2-small" => Self::base(512, 8, 8, 2, v1_ffn_size(512)),
            "minimind2" => Self::base(768, 16, 8, 2, v1_ffn_size(768)),
            "minimind2-moe" => ModelConfig {
                use_moe: true,
                num_experts: 4,
                num_experts_per_tok: 2,
                n_shared_experts: 1,
                ..Self::base(640, 8, 8, 2, v1_ffn_size(640))
            },
            "minimind-3" => ModelConfig {
                qk_norm: Some(true),
                rms_norm_eps: 1e-6,
                ..Self::base(768, 8, 8, 4, v3_ffn_size(768))
            },
            "minimind-3-moe" => ModelConfig {
                qk_norm: Some(true),
                rms_norm_eps: 1e-6,
                use_moe: true,
                num_experts: 4,
                num_experts_per_tok: 1,
                n_shared_experts: 0,
                norm_topk_prob: true,
                ..Self::base(768, 8, 8, 4, v3_ffn_size(768))
            },
            "tiny" => ModelConfig { max_position_embeddings: 2048, ..Self::base(64, 2, 4, 2, 192) },
            _ => {
                return Err(Error::config(
                    "preset",
                    format!("unknown preset `{name}`; known: {}", Self::PRESETS.join(", ")),
                ))
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Parse a `config.json` text of any supported family (see [`super::hf`]) and validate it;
    /// warnings (fields bunmind does not know) are dropped: use [`ModelConfig::import_json_str`].
    pub fn from_json_str(s: &str) -> Result<Self> {
        Ok(Self::import_json_str(s)?.0)
    }

    /// As [`ModelConfig::from_json_str`], also returning the warnings, each naming its field.
    pub fn import_json_str(s: &str) -> Result<(Self, Vec<String>)> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| Error::config("config.json", format!("not valid JSON: {e}")))?;
        let (c, warnings) = super::hf::import_config(&v)?;
        c.validate()?;
        Ok((c, warnings))
    }

    /// The canonical JSON (model_type `minimind` with bunmind's own keys; read back exactly).
    pub fn to_json_string(&self) -> Result<String> {
        let mut c = self.clone();
        c.model_type = "minimind".into();
        c.architectures = vec!["MiniMindForCausalLM".into()];
        c.qk_norm = Some(c.use_qk_norm());
        c.num_key_value_heads = Some(c.kv_heads());
        c.head_dim = Some(c.head_dim());
        Ok(serde_json::to_string_pretty(&c)?)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn use_qk_norm(&self) -> bool {
        self.qk_norm.unwrap_or(self.model_type.eq_ignore_ascii_case("qwen3"))
    }
    pub fn expert_ffn_size(&self) -> usize {
        self.moe_intermediate_size.unwrap_or(self.intermediate_size)
    }
    /// The YaRN parameters in effect for inference, if any.
    pub fn effective_rope_scaling(&self) -> Option<RopeScaling> {
        match (&self.rope_scaling, self.inference_rope_scaling) {
            (Some(s), _) => Some(s.clone()),
            (None, true) => Some(RopeScaling::default()),
            (None, false) => None,
        }
    }

    /// The id that fills left padding (masked out, so any in-range id works).
    pub fn pad_id(&self) -> u32 {
        self.pad_token_id.unwrap_or(0)
    }
    /// Whether any projection carries a bias.
    pub fn has_bias(&self) -> bool {
        self.qkv_bias || self.o_bias || self.mlp_bias
    }

    /// Checks every constraint the model relies on; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let pos = |field: &str, v: usize| -> Result<()> {
            if v == 0 {
                Err(Error::config(field, "must be > 0"))
            } else {
                Ok(())
            }
        };
        pos("hidden_size", self.hidden_size)?;
        pos("num_hidden_layers", self.num_hidden_layers)?;
        pos("num_attention_heads", self.num_attention_heads)?;
        pos("intermediate_size", self.intermediate_size)?;
        pos("vocab_size", self.vocab_size)?;
        pos("max_position_embeddings", self.max_position_embeddings)?;
        let kv = self.kv_heads();
        pos("num_key_value_heads", kv)?;
        if self.num_attention_heads % kv != 0 {
            return Err(Error::config(
                "num_key_value_heads",
                format!("{kv} must divide num_attention_heads {}", self.num_attention_heads),
            ));
        }
        match self.head_dim {
            Some(0) => return Err(Error::config("head_dim", "must be > 0")),
            Some(_) => {}
            None if self.hidden_size % self.num_attention_heads != 0 => {
                return Err(Error::config(
                    "hidden_size",
                    format!(
                        "{} is not divisible by num_attention_heads {}; set head_dim explicitly",
                        self.hidden_size, self.num_attention_heads
                    ),
                ))
            }
            None => {}
        }
        if self.head_dim() % 2 != 0 {
            return Err(Error::config("head_dim", format!("{} must be even for RoPE", self.head_dim())));
        }
        if !(self.rms_norm_eps > 0.0) {
            return Err(Error::config("rms_norm_eps", "must be > 0"));
        }
        if !(self.rope_theta > 1.0) {
            return Err(Error::config("rope_theta", "must be > 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("dropout", format!("{} must be in [0, 1)", self.dropout)));
        }
        if self.use_moe {
            pos("num_experts", self.num_experts)?;
            if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_experts {
                return Err(Error::config(
                    "num_experts_per_tok",
                    format!("{} must be in 1..={} (num_experts)", self.num_experts_per_tok, self.num_experts),
                ));
            }
            if let Some(0) = self.moe_intermediate_size {
                return Err(Error::config("moe_intermediate_size", "must be > 0"));
            }
            if self.router_aux_loss_coef < 0.0 {
                return Err(Error::config("router_aux_loss_coef", "must be >= 0"));
            }
        }
        if let Some(s) = &self.rope_scaling {
            if !s.r#type.eq_ignore_ascii_case("yarn") {
                return Err(Error::config("rope_scaling.type", format!("`{}` is not supported; only `yarn`", s.r#type)));
            }
            if !(s.factor >= 1.0) {
                return Err(Error::config("rope_scaling.factor", "must be >= 1"));
            }
            if s.original_max_position_embeddings == 0 {
                return Err(Error::config("rope_scaling.original_max_position_embeddings", "must be > 0"));
            }
        }
        if let Some(p) = &self.rope_parameters {
            if self.rope_scaling.is_some() || self.inference_rope_scaling {
                return Err(Error::config("rope_parameters", "cannot be combined with MiniMind's rope_scaling / inference_rope_scaling"));
            }
            if self.rope_interleaved {
                return Err(Error::config("rope_parameters", "cannot be combined with rope_interleaved"));
            }
            let factor = match p {
                RopeParameters::Linear { factor } | RopeParameters::Llama3 { factor, .. } | RopeParameters::Yarn { factor, .. } => *factor,
            };
            if !(factor > 0.0) {
                return Err(Error::config("rope_parameters.factor", format!("{factor} must be > 0")));
            }
            if let RopeParameters::Llama3 { low_freq_factor, high_freq_factor, original_max_position_embeddings, .. } = p {
                if !(high_freq_factor > low_freq_factor) {
                    return Err(Error::config("rope_parameters.high_freq_factor", "must be greater than low_freq_factor"));
                }
                if *original_max_position_embeddings == 0 {
                    return Err(Error::config("rope_parameters.original_max_position_embeddings", "must be > 0"));
                }
            }
            if let RopeParameters::Yarn { original_max_position_embeddings: 0, .. } = p {
                return Err(Error::config("rope_parameters.original_max_position_embeddings", "must be > 0"));
            }
        }
        if self.use_moe && self.mlp_bias {
            return Err(Error::config("mlp_bias", "biases on expert projections are not supported"));
        }
        for (f, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id), ("pad_token_id", self.pad_token_id)] {
            let Some(id) = id else { continue };
            if id as usize >= self.vocab_size {
                return Err(Error::config(f, format!("{id} is out of range for vocab_size {}", self.vocab_size)));
            }
        }
        Ok(())
    }
}

