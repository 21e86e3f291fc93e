//! The decoder: token embedding → N × [RMSNorm → attention → residual; RMSNorm → MLP/MoE →
//! residual] → RMSNorm → LM head (tied to the embedding unless `lm_head.weight` exists).
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use super::attention::{AttnMask, Attention};
use super::cache::Cache;
use super::config::ModelConfig;
use super::dropout::{DropoutSource, ForwardCtx};
use super::linear::{matmul_t, Linear};
use super::mlp::{FeedForward, Mlp, MoeMlp};
use super::norm::RmsNorm;
use super::params::{init_varmap, param_specs, FfnParams, LinearParams, MlpParams, ParamKind, ParamLayout, ParamSpec};
use super::rope::Rope;
use crate::{Error, Result};

/// One parameter as the trainer sees it: its name and kind from the parameter walk
/// ([`ParamLayout`]; LoRA adapters: [`ParamKind::Adapter`]).
#[derive(Debug, Clone)]
pub struct NamedParam {
    pub name: String,
    pub var: Var,
    pub kind: ParamKind,
}

impl NamedParam {
    /// Whether AdamW decays it ([`ParamKind::weight_decay`]: not norm gains, not biases).
    pub fn weight_decay(&self) -> bool {
        self.kind.weight_decay()
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) self_attn: Attention,
    pub(crate) post_attention_layernorm: RmsNorm,
    pub(crate) mlp: FeedForward,
}

fn norm_fwd(n: &RmsNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    if train {
        n.forward_train(x)
    } else {
        n.forward(x)
    }
}

impl Block {
    /// x: [B, T, hidden] → ([B, T, hidden], optional MoE aux loss)
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        mask: AttnMask<'_>,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &mut ForwardCtx,
    ) -> Result<(Tensor, Option<Tensor>)> {
        // Under autocast the residual stream stays f32 (as PyTorch autocast leaves it): the
        // branches compute in the autocast dtype and are cast back where they join it.
        let a = norm_fwd(&self.input_layernorm, x, ctx.train)?;
        let h = (x + self.self_attn.forward(&a, rope, cos, sin, mask, kv, ctx)?.to_dtype(x.dtype())?)?;
        let m = norm_fwd(&self.post_attention_layernorm, &h, ctx.train)?;
        let (m, aux) = self.mlp.forward(&m, ctx)?;
        Ok(((&h + m.to_dtype(h.dtype())?)?, aux))
    }
}

#[derive(Clone)]
pub struct Model {
    pub(crate) cfg: ModelConfig,
    pub(crate) varmap: VarMap,
    pub(crate) device: Device,
    pub(crate) embed_tokens: Tensor, // [V, hidden]
    pub(crate) layers: Vec<Block>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Option<Linear>, // None when tied
    pub(crate) rope: Rope,
    /// Mixed precision of the training forward (None: f32 throughout). See [`Model::set_autocast`].
    pub(crate) autocast: Option<DType>,
}

impl Model {
    /// A freshly initialised model (see `params` for the init scheme); same seed → same weights.
    pub fn new(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let varmap = init_varmap(cfg, seed, device)?;
        Self::from_varmap(cfg, varmap, device)
    }

    /// Build the module tree over an existing VarMap that holds every tensor of the config's
    /// parameter walk ([`ParamLayout`]) in f32 (names and shapes are checked, in walk order).
    pub fn from_varmap(cfg: &ModelConfig, varmap: VarMap, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let layout = ParamLayout::new(cfg);
        let eps = cfg.rms_norm_eps;
        let parts = {
            let data = varmap.data().lock().expect("varmap lock");
            let get = |s: &ParamSpec| -> Result<Tensor> {
                let v = data.get(&s.name).ok_or_else(|| Error::tensor(&s.name, "missing from the VarMap"))?;
                if v.dims() != s.shape.as_slice() {
                    return Err(Error::tensor(&s.name, format!("expected shape {:?}, got {:?}", s.shape, v.dims())));
                }
                Ok(v.as_tensor().clone())
            };
            for s in layout.specs() {
                get(&s)?;
            }
            let lin = |l: &LinearParams| -> Result<Linear> {
                Ok(Linear::new(l.prefix.clone(), get(&l.weight)?).with_bias(l.bias.as_ref().map(&get).transpose()?))
            };
            let rms = |s: &ParamSpec| -> Result<RmsNorm> { Ok(RmsNorm::new(get(s)?, eps)) };
            let mlp = |m: &MlpParams| -> Result<Mlp> {
                Ok(Mlp { gate_proj: lin(&m.gate_proj)?, up_proj: lin(&m.up_proj)?, down_proj: lin(&m.down_proj)? })
            };
            let mut layers = Vec::with_capacity(layout.layers.len());
            for l in &layout.layers {
                let (q_norm, k_norm) = match &l.qk_norm {
                    Some((q, k)) => (Some(rms(q)?), Some(rms(k)?)),
                    None => (None, None),
                };
                let self_attn = Attention {
                    q_proj: lin(&l.q_proj)?,
                    k_proj: lin(&l.k_proj)?,
                    v_proj: lin(&l.v_proj)?,
                    o_proj: lin(&l.o_proj)?,
                    q_norm,
                    k_norm,
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.kv_heads(),
                    head_dim: cfg.head_dim(),
                    dropout: cfg.dropout,
                };
                let mlp = match &l.mlp {
                    FfnParams::Dense(m) => FeedForward::Dense(mlp(m)?),
                    FfnParams::Moe { gate, experts, shared_experts } => FeedForward::Moe(MoeMlp {
                        gate: get(gate)?,
                        experts: experts.iter().map(&mlp).collect::<Result<_>>()?,
                        shared_experts: shared_experts.iter().map(&mlp).collect::<Result<_>>()?,
                        top_k: cfg.num_experts_per_tok,
                        norm_topk_prob: cfg.norm_topk_prob,
                        aux_loss_coef: cfg.router_aux_loss_coef,
                    }),
                };
                layers.push(Block {
                    input_layernorm: rms(&l.input_layernorm)?,
                    self_attn,
                    post_attention_layernorm: rms(&l.post_attention_layernorm)?,
                    mlp,
                });
            }
            let lm_head = match &layout.lm_head {
                Some(s) => Some(Linear::new("lm_head", get(s)?)),
                None => None,
            };
            (get(&layout.embed_tokens)?, layers, rms(&layout.norm)?, lm_head)
        };
        let (embed_tokens, layers, norm, lm_head) = parts;
        Ok(Model {
            cfg: cfg.clone(),
            varmap,
            device: device.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg),
            autocast: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Mixed precision for the training forward ([`Model::forward_train`]): `Some(BF16)` runs
    /// the matmuls, attention and MLP in bf16 from the f32 master weights (cast at use, so the
    /// gradients and the optimizer stay f32), keeps the residual stream and the norms in f32,
    /// and produces bf16 logits (the loss reads them in f32). `None` (the default): f32
    /// throughout. Inference ([`Model::forward`]) is always f32.
    pub fn set_autocast(&mut self, dtype: Option<DType>) {
        self.autocast = dtype;
    }

    pub fn autocast(&self) -> Option<DType> {
        self.autocast
    }
    /// The VarMap (f32) holding every base parameter under its HF name.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Number of scalar parameters (a tied lm_head is counted once).
    pub fn num_parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// All base parameters in the walk's order, with their kinds (hence weight-decay flags).
    pub fn named_parameters(&self) -> Vec<NamedParam> {
        let data = self.varmap.data().lock().expect("varmap lock");
        param_specs(&self.cfg)
            .into_iter()
            .filter_map(|s| {
                data.get(&s.name).map(|v| NamedParam { name: s.name.clone(), var: v.clone(), kind: s.kind })
            })
            .collect()
    }

    /// A fresh KV cache for one batch.
    pub fn new_cache(&self) -> Cache {
        Cache::new(self.layers.len())
    }

    /// Checks ids [B, T] (integer dtype) against vocab and position limits; returns them as u32.
    fn check_ids(&self, ids: &Tensor, start_pos: usize) -> Result<(Tensor, usize, usize)> {
        let (b, t) = ids.dims2().map_err(|_| {
            Error::input(format!("expected token ids of shape [batch, seq], got shape {:?}", ids.dims()))
        })?;
        if b == 0 || t == 0 {
            return Err(Error::input(format!("empty input: token ids have shape [{b}, {t}]")));
        }
        let ids = match ids.dtype() {
            DType::U32 => ids.clone(),
            DType::U8 | DType::I64 => ids.to_dtype(DType::U32)?,
            other => return Err(Error::input(format!("token ids must be u32 (or i64/u8), got {other:?}"))),
        };
        if start_pos + t > self.cfg.max_position_embeddings {
            return Err(Error::input(format!(
                "sequence of {} tokens (start position {start_pos} + {t} new) exceeds max_position_embeddings {}",
                start_pos + t,
                self.cfg.max_position_embeddings
            )));
        }
        let v = self.cfg.vocab_size;
        for (row, seq) in ids.to_vec2::<u32>()?.iter().enumerate() {
            if let Some((pos, &id)) = seq.iter().enumerate().find(|(_, &id)| id as usize >= v) {
                let row = if b > 1 { format!(" (batch row {row})") } else { String::new() };
                return Err(Error::input(format!(
                    "token id {id} at position {}{row} is out of range for vocab_size {v}",
                    start_pos + pos
                )));
            }
        }
        Ok((ids, b, t))
    }

    /// ids [B, T] → embeddings [B, T, hidden]
    fn embed(&self, ids: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        Ok(self.embed_tokens.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?)
    }

    /// h: [..., hidden] → logits [..., V]
    fn head(&self, h: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match &self.lm_head {
            Some(l) => l.forward(h, ctx),
            None => matmul_t(&ctx.cast(h)?, &ctx.cast(&self.embed_tokens)?),
        }
    }

    /// Training forward, built only from differentiable ops, no dropout.
    /// ids: [B, T] u32 → (logits [B, T, V] f32, MoE aux loss scalar; 0 for dense models)
    pub fn forward_train(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        self.forward_train_with(ids, None)
    }

    /// As [`Model::forward_train`], with dropout (`config.dropout` on embeddings, attention
    /// probabilities and attention output; LoRA dropout on adapter inputs) drawn from `dropout`.
    /// `None` = no dropout. RoPE uses the unscaled frequencies (YaRN is inference only).
    pub fn forward_train_with(&self, ids: &Tensor, dropout: Option<&mut dyn DropoutSource>) -> Result<(Tensor, Tensor)> {
        crate::ops::alloc::tune_for_training();
        let (ids, b, t) = self.check_ids(ids, 0)?;
        let mut ctx = ForwardCtx::train(dropout);
        ctx.autocast = self.autocast;
        let dev = &self.device;
        let (cos, sin) = self.rope.tables(0, t, false, dev)?;
        let mut x = self.embed(&ids, b, t)?;
        x = ctx.dropout(&x, self.cfg.dropout)?;
        let mut aux = Tensor::new(0f32, dev)?;
        for layer in &self.layers {
            let (y, a) = layer.forward(&x, &self.rope, &cos, &sin, AttnMask::Causal { offset: 0 }, None, &mut ctx)?;
            x = y;
            if let Some(a) = a {
                aux = (aux + a)?;
            }
        }
        let x = self.norm.forward_train(&x)?;
        Ok((self.head(&x, &mut ctx)?, aux))
    }

    /// Inference trunk with the KV cache: ids [B, T] at `start_pos` → final-normed hidden [B, T, hidden]
    fn hidden_cached(&self, ids: &Tensor, start_pos: usize, cache: &mut Cache) -> Result<Tensor> {
        if cache.layers.len() != self.layers.len() {
            return Err(Error::input(format!(
                "cache has {} layers but the model has {}; create it with Model::new_cache",
                cache.layers.len(),
                self.layers.len()
            )));
        }
        if start_pos != cache.seq_len() {
            return Err(Error::input(format!(
                "start_pos {start_pos} does not match the cache, which holds {} positions",
                cache.seq_len()
            )));
        }
        let (ids, b, t) = self.check_ids(ids, start_pos)?;
        if let Some((k, _)) = cache.layers.first().and_then(|l| l.as_ref()) {
            if k.dim(0)? != b {
                return Err(Error::input(format!("batch size {b} does not match the cache's {}", k.dim(0)?)));
            }
        }
        let pads = cache.left_padding();
        if !pads.is_empty() && pads.len() != b {
            return Err(Error::input(format!("cache has left padding for {} rows, input has {b}", pads.len())));
        }
        let padded = cache.left_padding().iter().any(|&p| p > 0);
        // A prompt into an empty cache: the hand-written forward when it applies (dense CPU f32).
        #[cfg(not(target_arch = "wasm32"))]
        if start_pos == 0 && t > 1 && !padded && crate::path::choose(self, crate::path::Work::Prefill).is_handwritten() {
            return self.prefill_fast(&ids, b, t, cache);
        }
        let mut ctx = ForwardCtx::inference();
        let dev = &self.device;
        let (cos, sin) = self.rope.tables(start_pos, t, true, dev)?;
        let add_mask = if padded { cache.mask(b, t, start_pos, dev)? } else { None };
        let mask = match &add_mask {
            Some(m) => AttnMask::Additive(m),
            None if t == 1 => AttnMask::None,
            None => AttnMask::Causal { offset: start_pos },
        };
        let mut x = self.embed(&ids, b, t)?;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &self.rope, &cos, &sin, mask, Some(slot), &mut ctx)?.0;
        }
        cache.advance(t);
        self.norm.forward(&x)
    }

    /// [`crate::fast::prefill`] into an empty `cache`: keys/values laid out `[B, KV, T, D]` as the
    /// cached attention stores them → final-normed hidden [B, T, hidden].
    #[cfg(not(target_arch = "wasm32"))]
    fn prefill_fast(&self, ids: &Tensor, b: usize, t: usize, cache: &mut Cache) -> Result<Tensor> {
        let idv: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let p = crate::fast::prefill(self, &idv, b, t)?;
        let (kvh, d) = (self.cfg.kv_heads(), self.cfg.head_dim());
        for (slot, (k, v)) in cache.layers.iter_mut().zip(p.kv) {
            let k = Tensor::from_vec(k, (b, t, kvh, d), &self.device)?.transpose(1, 2)?.contiguous()?;
            let v = Tensor::from_vec(v, (b, t, kvh, d), &self.device)?.transpose(1, 2)?.contiguous()?;
            *slot = Some((k, v));
        }
        cache.advance(t);
        Ok(Tensor::from_vec(p.hidden, (b, t, self.cfg.hidden_size), &self.device)?)
    }

    /// Inference forward with the KV cache (fused kernels, no gradients needed).
    /// ids: [B, T] at positions `start_pos..start_pos+T` (must equal `cache.seq_len()`)
    /// → logits of the last position [B, V]
    pub fn forward(&self, ids: &Tensor, start_pos: usize, cache: &mut Cache) -> Result<Tensor> {
        let h = self.hidden_cached(ids, start_pos, cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?; // [B, hidden]
        self.head(&last, &mut ForwardCtx::inference())
    }

    /// As [`Model::forward`] but returns logits for every new position: [B, T, V]
    pub fn forward_all(&self, ids: &Tensor, start_pos: usize, cache: &mut Cache) -> Result<Tensor> {
        let h = self.hidden_cached(ids, start_pos, cache)?;
        self.head(&h, &mut ForwardCtx::inference())
    }

    /// Every Linear that LoRA may target (attention and MLP/expert projections), in order.
    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for l in self.layers.iter_mut() {
            let a = &mut l.self_attn;
            out.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let mlps: Vec<&mut Mlp> = match &mut l.mlp {
                FeedForward::Dense(m) => vec![m],
                FeedForward::Moe(m) => m.experts.iter_mut().chain(m.shared_experts.iter_mut()).collect(),
            };
            for m in mlps {
                out.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
            }
        }
        out
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for l in self.layers.iter() {
            let a = &l.self_attn;
            out.extend([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]);
            let mlps: Vec<&Mlp> = match &l.mlp {
                FeedForward::Dense(m) => vec![m],
                FeedForward::Moe(m) => m.experts.iter().chain(m.shared_experts.iter()).collect(),
            };
            for m in mlps {
                out.extend([&m.gate_proj, &m.up_proj, &m.down_proj]);
            }
        }
        out
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("config", &self.cfg).field("num_parameters", &self.num_parameters()).finish()
    }
}
