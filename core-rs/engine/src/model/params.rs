//! The parameter list of a config (HF names, shapes, kinds) and the seeded initialisation.
//!
//! Init (upstream: HF `PreTrainedModel._init_weights` with `initializer_range` 0.02, the same as the
//! seed v1's `_init_weights`): every Linear weight and the embedding ~ N(0, 0.02²); RMSNorm weights
//! = 1, biases = 0. Drawn in walk order from the `"init"` stream of the caller's seed
//! ([`Rng::stream`]): same seed → same weights.
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use super::config::ModelConfig;
use crate::rng::Rng;
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
    /// A LoRA adapter matrix (`lora_A` / `lora_B`; see `model::lora`).
    Adapter,
}

impl ParamKind {
    /// The one weight-decay rule: AdamW decays matrices (embedding, projections, router, LoRA
    /// adapters), not norm gains or biases.
    pub fn weight_decay(self) -> bool {
        !matches!(self, ParamKind::Norm | ParamKind::Bias)
    }

    /// [`ParamKind::weight_decay`], or every parameter when `decay_norms` (upstream MiniMind's
    /// `optim.AdamW(model.parameters())`, the trainer's `decay_norms`).
    pub fn decays(self, decay_norms: bool) -> bool {
        decay_norms || self.weight_decay()
    }

    /// The kind of a tensor outside a model's parameter walk (a bare VarMap, a test's
    /// parameters), from its name and rank: `*norm*` or any tensor of rank ≤ 1 is a norm-like
    /// gain, `*.bias` a bias, anything else a matrix.
    pub fn infer(name: &str, rank: usize) -> ParamKind {
        if name.ends_with(".bias") {
            ParamKind::Bias
        } else if name.contains("norm") || rank <= 1 {
            ParamKind::Norm
        } else {
            ParamKind::Linear
        }
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

/// A projection: `{prefix}.weight` [out, in], and `{prefix}.bias` [out] when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearParams {
    /// The module's name (`model.layers.0.self_attn.q_proj`).
    pub prefix: String,
    pub weight: ParamSpec,
    pub bias: Option<ParamSpec>,
}

fn linear(prefix: String, o: usize, i: usize, bias: bool) -> LinearParams {
    LinearParams {
        weight: spec(format!("{prefix}.weight"), vec![o, i], ParamKind::Linear),
        bias: bias.then(|| spec(format!("{prefix}.bias"), vec![o], ParamKind::Bias)),
        prefix,
    }
}

/// A SwiGLU MLP's three projections.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpParams {
    pub gate_proj: LinearParams,
    pub up_proj: LinearParams,
    pub down_proj: LinearParams,
}

fn mlp(prefix: &str, hidden: usize, ffn: usize, bias: bool) -> MlpParams {
    MlpParams {
        gate_proj: linear(format!("{prefix}.gate_proj"), ffn, hidden, bias),
        up_proj: linear(format!("{prefix}.up_proj"), ffn, hidden, bias),
        down_proj: linear(format!("{prefix}.down_proj"), hidden, ffn, bias),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FfnParams {
    Dense(MlpParams),
    Moe { gate: ParamSpec, experts: Vec<MlpParams>, shared_experts: Vec<MlpParams> },
}

/// One decoder layer's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams {
    pub input_layernorm: ParamSpec,
    pub q_proj: LinearParams,
    pub k_proj: LinearParams,
    pub v_proj: LinearParams,
    pub o_proj: LinearParams,
    /// `(q_norm, k_norm)` when the config uses QK-norm.
    pub qk_norm: Option<(ParamSpec, ParamSpec)>,
    pub post_attention_layernorm: ParamSpec,
    pub mlp: FfnParams,
}

/// The parameter walk of a config: every parameter (HF name, shape, kind) in the model's
/// structure. The one source of the names and shapes: [`param_specs`] flattens it (init order,
/// checkpoint and export names), `Model::from_varmap` builds the module tree from it, the
/// hand-written step labels its weights with it, and AdamW's decay flags come from its kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    pub embed_tokens: ParamSpec,
    pub layers: Vec<LayerParams>,
    pub norm: ParamSpec,
    /// `None` when tied to the embedding.
    pub lm_head: Option<ParamSpec>,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> ParamLayout {
        let (h, v, hd) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let norm = |name: &str, dim: usize| spec(format!("{p}.{name}.weight"), vec![dim], ParamKind::Norm);
                let mlp = if cfg.use_moe {
                    let ffn = cfg.expert_ffn_size();
                    FfnParams::Moe {
                        gate: spec(format!("{p}.mlp.gate.weight"), vec![cfg.num_experts, h], ParamKind::Router),
                        experts: (0..cfg.num_experts).map(|e| mlp(&format!("{p}.mlp.experts.{e}"), h, ffn, false)).collect(),
                        shared_experts: (0..cfg.n_shared_experts)
                            .map(|s| mlp(&format!("{p}.mlp.shared_experts.{s}"), h, ffn, false))
                            .collect(),
                    }
                } else {
                    FfnParams::Dense(mlp(&format!("{p}.mlp"), h, cfg.intermediate_size, cfg.mlp_bias))
                };
                LayerParams {
                    input_layernorm: norm("input_layernorm", h),
                    q_proj: linear(format!("{p}.self_attn.q_proj"), nh * hd, h, cfg.qkv_bias),
                    k_proj: linear(format!("{p}.self_attn.k_proj"), nkv * hd, h, cfg.qkv_bias),
                    v_proj: linear(format!("{p}.self_attn.v_proj"), nkv * hd, h, cfg.qkv_bias),
                    o_proj: linear(format!("{p}.self_attn.o_proj"), h, nh * hd, cfg.o_bias),
                    qk_norm: cfg.use_qk_norm().then(|| (norm("self_attn.q_norm", hd), norm("self_attn.k_norm", hd))),
                    post_attention_layernorm: norm("post_attention_layernorm", h),
                    mlp,
                }
            })
            .collect();
        ParamLayout {
            embed_tokens: spec("model.embed_tokens.weight".into(), vec![v, h], ParamKind::Embedding),
            layers,
            norm: spec("model.norm.weight".into(), vec![h], ParamKind::Norm),
            lm_head: (!cfg.tie_word_embeddings).then(|| spec("lm_head.weight".into(), vec![v, h], ParamKind::Linear)),
        }
    }

    /// Every parameter in the fixed order: embedding; per layer input norm, q/k/v/o (weight then
    /// bias), QK-norms, post-attention norm, MLP (router, experts, shared experts); final norm;
    /// lm_head.
    pub fn specs(&self) -> Vec<ParamSpec> {
        fn lin(out: &mut Vec<ParamSpec>, l: &LinearParams) {
            out.push(l.weight.clone());
            out.extend(l.bias.clone());
        }
        fn mlp(out: &mut Vec<ParamSpec>, m: &MlpParams) {
            for l in [&m.gate_proj, &m.up_proj, &m.down_proj] {
                lin(out, l);
            }
        }
        let mut out = vec![self.embed_tokens.clone()];
        for l in &self.layers {
            out.push(l.input_layernorm.clone());
            for p in [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj] {
                lin(&mut out, p);
            }
            if let Some((q, k)) = &l.qk_norm {
                out.extend([q.clone(), k.clone()]);
            }
            out.push(l.post_attention_layernorm.clone());
            match &l.mlp {
                FfnParams::Dense(m) => mlp(&mut out, m),
                FfnParams::Moe { gate, experts, shared_experts } => {
                    out.push(gate.clone());
                    experts.iter().chain(shared_experts).for_each(|m| mlp(&mut out, m));
                }
            }
        }
        out.push(self.norm.clone());
        out.extend(self.lm_head.clone());
        out
    }
}

/// Every parameter the config implies, in a fixed order (HF names): [`ParamLayout::specs`].
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    ParamLayout::new(cfg).specs()
}

/// Total number of scalars in `param_specs(cfg)` (tied lm_head counted once).
pub fn count_parameters(cfg: &ModelConfig) -> usize {
    param_specs(cfg).iter().map(|s| s.shape.iter().product::<usize>()).sum()
}

/// A VarMap (f32) holding freshly initialised parameters.
pub fn init_varmap(cfg: &ModelConfig, seed: u64, dev: &Device) -> Result<VarMap> {
    let mut rng = Rng::stream(seed, "init");
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for s in param_specs(cfg) {
            let n: usize = s.shape.iter().product();
            let vals = match s.kind {
                ParamKind::Norm => vec![1f32; n],
                ParamKind::Bias => vec![0f32; n],
                _ => rng.normal_vec(n, 0.0, INIT_STD as f32),
            };
            let t = Tensor::from_vec(vals, s.shape.as_slice(), dev)?;
            data.insert(s.name, Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}
