//! The parameter list of a config (HF names, shapes, kinds) and the seeded initialisation.
//!
//! Init (upstream: HF `PreTrainedModel._init_weights` with `initializer_range` 0.02, the same as the
//! seed v1's `_init_weights`): every Linear weight and the embedding ~ N(0, 0.02²); RMSNorm weights
//! = 1, biases = 0. Drawn in list order from one [`Rng`] seeded by the caller: same seed → same weights.
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use super::config::ModelConfig;
use super::rng::Rng;
use crate::Result;

pub const INIT_STD: f64 = 0.02;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Embedding,
    Linear,
    /// The MoE router `mlp.gate.weight`.
    Router,
    Norm,
    /// A projection's bias (zero-initialised, as `nn.Linear` biases in transformers' init).
    Bias,
}

impl ParamKind {
    /// AdamW weight decay applies to matrices, not to norm gains or biases.
    pub fn weight_decay(self) -> bool {
        !matches!(self, ParamKind::Norm | ParamKind::Bias)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

fn spec(name: String, shape: Vec<usize>, kind: ParamKind) -> ParamSpec {
    ParamSpec { name, shape, kind }
}

/// `{prefix}.weight` [out, in], then `{prefix}.bias` [out] when `bias`.
fn linear_specs(out: &mut Vec<ParamSpec>, prefix: String, o: usize, i: usize, bias: bool) {
    out.push(spec(format!("{prefix}.weight"), vec![o, i], ParamKind::Linear));
    if bias {
        out.push(spec(format!("{prefix}.bias"), vec![o], ParamKind::Bias));
    }
}

fn mlp_specs(out: &mut Vec<ParamSpec>, prefix: &str, hidden: usize, ffn: usize, bias: bool) {
    linear_specs(out, format!("{prefix}.gate_proj"), ffn, hidden, bias);
    linear_specs(out, format!("{prefix}.up_proj"), ffn, hidden, bias);
    linear_specs(out, format!("{prefix}.down_proj"), hidden, ffn, bias);
}

/// Every parameter the config implies, in a fixed order (HF names).
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let (h, v, hd) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim());
    let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
    let mut out = vec![spec("model.embed_tokens.weight".into(), vec![v, h], ParamKind::Embedding)];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push(spec(format!("{p}.input_layernorm.weight"), vec![h], ParamKind::Norm));
        linear_specs(&mut out, format!("{p}.self_attn.q_proj"), nh * hd, h, cfg.qkv_bias);
        linear_specs(&mut out, format!("{p}.self_attn.k_proj"), nkv * hd, h, cfg.qkv_bias);
        linear_specs(&mut out, format!("{p}.self_attn.v_proj"), nkv * hd, h, cfg.qkv_bias);
        linear_specs(&mut out, format!("{p}.self_attn.o_proj"), h, nh * hd, cfg.o_bias);
        if cfg.use_qk_norm() {
            out.push(spec(format!("{p}.self_attn.q_norm.weight"), vec![hd], ParamKind::Norm));
            out.push(spec(format!("{p}.self_attn.k_norm.weight"), vec![hd], ParamKind::Norm));
        }
        out.push(spec(format!("{p}.post_attention_layernorm.weight"), vec![h], ParamKind::Norm));
        if cfg.use_moe {
            out.push(spec(format!("{p}.mlp.gate.weight"), vec![cfg.num_experts, h], ParamKind::Router));
            for e in 0..cfg.num_experts {
                mlp_specs(&mut out, &format!("{p}.mlp.experts.{e}"), h, cfg.expert_ffn_size(), false);
            }
            for s in 0..cfg.n_shared_experts {
                mlp_specs(&mut out, &format!("{p}.mlp.shared_experts.{s}"), h, cfg.expert_ffn_size(), false);
            }
        } else {
            mlp_specs(&mut out, &format!("{p}.mlp"), h, cfg.intermediate_size, cfg.mlp_bias);
        }
    }
    out.push(spec("model.norm.weight".into(), vec![h], ParamKind::Norm));
    if !cfg.tie_word_embeddings {
        out.push(spec("lm_head.weight".into(), vec![v, h], ParamKind::Linear));
    }
    out
}

/// Total number of scalars in `param_specs(cfg)` (tied lm_head counted once).
pub fn count_parameters(cfg: &ModelConfig) -> usize {
    param_specs(cfg).iter().map(|s| s.shape.iter().product::<usize>()).sum()
}

/// A VarMap (f32) holding freshly initialised parameters.
pub fn init_varmap(cfg: &ModelConfig, seed: u64, dev: &Device) -> Result<VarMap> {
    let mut rng = Rng::new(seed);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for s in param_specs(cfg) {
            let n: usize = s.shape.iter().product();
            let vals = match s.kind {
                ParamKind::Norm => vec![1f32; n],
                ParamKind::Bias => vec![0f32; n],
                _ => rng.normal_vec(n, INIT_STD),
            };
            let t = Tensor::from_vec(vals, s.shape.as_slice(), dev)?;
            data.insert(s.name, Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}
