"""transformers modelling code for bunmind's canonical MiniMind format (`model_type: "minimind"`).

Computes what bunmind computes (core-rs/engine/src/model): a decoder of N blocks
`h = x + attn(rms(x)); y = h + mlp(rms(h))`, a final RMSNorm and an LM head (tied to the embedding unless
`lm_head.weight` exists). Tensor names are Hugging Face Llama's; MoE layers add `mlp.gate.weight` (router),
`mlp.experts.{e}.*` and `mlp.shared_experts.{s}.*`.

- RMSNorm: `w · x / sqrt(mean(x²) + eps)` in f32; with `qk_norm`, per head on q and k before RoPE.
- Attention: grouped-query (kv head `h // (H / KV)`), causal, softmax in f32, scale `1/sqrt(head_dim)`.
- RoPE: rotate-half pairs `(x_i, x_{i+d/2})`, or interleaved pairs `(x_{2i}, x_{2i+1})` (`rope_interleaved`,
  the seed v1). Frequencies: `rope_parameters` (transformers' linear / llama3 / yarn), else MiniMind's YaRN
  (`rope_scaling`, or its defaults when `inference_rope_scaling`) when `max_position_embeddings` exceeds the
  original length; cos and sin are multiplied by the attention factor. bunmind trains without MiniMind's YaRN and
  infers with it; this file is for inference, so it always applies it.
- MLP: SwiGLU `down(silu(gate(x)) · up(x))`. MoE: `p = softmax(router(x))` over experts, keep the top k (ties:
  the lower index), renormalise the kept weights by `sum + 1e-20` when `norm_topk_prob`,
  `y = Σ_kept p_e · expert_e(x) + Σ_s shared_s(x)`.

Works with transformers 4.4x (`past_key_values`) and 5.x (`cache`); `generate` uses transformers' KV cache.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, __version__ as _transformers_version
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_bunmind_minimind import MiniMindConfig

_V5 = int(_transformers_version.split(".")[0]) >= 5
# The field of CausalLMOutputWithPast holding the cache: `cache` in transformers 5.2x, `past_key_values` before.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class MiniMindRMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------- RoPE
def _transformers_scaled(inv_freq, config, p):
    """transformers' linear / llama3 / yarn frequencies (modeling_rope_utils), with bunmind's defaults."""
    d, theta = config.head_dim, float(config.rope_theta)
    kind = p.get("rope_type", p.get("type", "default"))
    orig = getattr(config, "original_max_position_embeddings", None) or p.get("original_max_position_embeddings")
    orig = orig or config.max_position_embeddings
    if kind == "linear":
        return inv_freq / p["factor"], 1.0
    if kind == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        low_wl, high_wl = orig / low, orig / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
        smooth = (orig / wavelen - low) / (high - low)
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        return torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled), 1.0
    if kind == "yarn":
        factor = p.get("factor") or config.max_position_embeddings / orig
        mscale = lambda s, m: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
        attention_factor = p.get("attention_factor")
        if attention_factor is None:
            m, m_all = p.get("mscale"), p.get("mscale_all_dim")
            attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor, 1.0)
        beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1
        corr = lambda rot: (d * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))
        low, high = corr(beta_fast), corr(beta_slow)
        if p.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
        pos_freqs = theta ** (torch.arange(0, d, 2, device="cpu").float() / d)
        keep = 1 - ramp  # share of the unscaled ("extrapolated") frequency
        return (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep, float(attention_factor)
    if kind == "default":
        return inv_freq, 1.0
    raise ValueError(f"rope_parameters.rope_type {kind!r} is not supported (default, linear, llama3, yarn)")


def _minimind_yarn(inv_freq, config, s):
    """MiniMind's YaRN (bunmind's rope.rs `minimind_yarn`); None when the context is not longer than the original."""
    d, theta = config.head_dim, float(config.rope_theta)
    orig = s.get("original_max_position_embeddings", 2048)
    if config.max_position_embeddings / orig <= 1.0:
        return None
    factor, beta_fast, beta_slow = s.get("factor", 16.0), s.get("beta_fast", 32.0), s.get("beta_slow", 1.0)
    inv_dim = lambda b: (d * math.log(orig / (b * 2 * math.pi))) / (2 * math.log(theta))
    low, high = max(math.floor(inv_dim(beta_fast)), 0), min(math.ceil(inv_dim(beta_slow)), d // 2 - 1)
    ramp = ((torch.arange(d // 2, dtype=torch.float32, device="cpu") - low) / max(high - low, 0.001)).clamp(0, 1)
    return inv_freq * (1 - ramp + ramp / factor)


def rope_frequencies(config):
    """(inverse frequencies [head_dim/2] f32, factor on cos and sin) in effect for inference."""
    d = config.head_dim
    inv_freq = 1.0 / (float(config.rope_theta) ** (torch.arange(0, d, 2, dtype=torch.int64, device="cpu").float() / d))
    if config.rope_parameters:
        return _transformers_scaled(inv_freq, config, config.rope_parameters)
    s = config.rope_scaling
    if s is None and config.inference_rope_scaling:
        s = {}  # MiniMind's defaults: factor 16, original 2048, beta_fast 32, beta_slow 1, attention_factor 1
    if s is not None:
        kind = s.get("type", s.get("rope_type", "yarn"))
        if kind != "yarn":
            raise ValueError(f"rope_scaling.type {kind!r} is not supported (only MiniMind's yarn)")
        scaled = _minimind_yarn(inv_freq, config, s)
        if scaled is not None:
            return scaled, float(s.get("attention_factor", 1.0))
    return inv_freq, 1.0


def apply_rope(x, cos, sin, interleaved):
    """x [B, H, T, D]; cos/sin [B, T, D/2] (one angle per rotated pair)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    if interleaved:
        xe, xo = x[..., 0::2], x[..., 1::2]
        return torch.stack((xe * cos - xo * sin, xe * sin + xo * cos), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# ----------------------------------------------------------------------------------------------------- layers
class MiniMindAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        h, hd = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.n_heads * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, self.n_kv * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, self.n_kv * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, h, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = MiniMindRMSNorm(hd, config.rms_norm_eps)
            self.k_norm = MiniMindRMSNorm(hd, config.rms_norm_eps)
        self.qk_norm, self.interleaved = config.qk_norm, config.rope_interleaved

    def forward(self, x, cos, sin, mask, cache):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin, self.interleaved)
        k = apply_rope(k.transpose(1, 2), cos, sin, self.interleaved)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        rep = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        y = torch.softmax(scores, dim=-1).to(v.dtype) @ v  # [B, H, T, D]
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MiniMindMLP(nn.Module):
    def __init__(self, hidden, ffn, bias):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=bias)
        self.up_proj = nn.Linear(hidden, ffn, bias=bias)
        self.down_proj = nn.Linear(ffn, hidden, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MiniMindMoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, ffn = config.hidden_size, config.moe_intermediate_size
        self.gate = nn.Linear(h, config.num_experts, bias=False)  # router, weight [E, hidden]
        self.experts = nn.ModuleList(MiniMindMLP(h, ffn, False) for _ in range(config.num_experts))
        self.shared_experts = nn.ModuleList(MiniMindMLP(h, ffn, False) for _ in range(config.n_shared_experts))
        self.top_k, self.norm_topk_prob = config.num_experts_per_tok, config.norm_topk_prob

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(x).float(), dim=-1)  # [N, E]
        # A stable descending sort keeps the lower index first among equal probabilities.
        top = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, : self.top_k]
        kept = torch.zeros_like(probs).scatter_(1, top, 1.0)
        w = probs * kept
        if self.norm_topk_prob:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = kept[:, e].nonzero().squeeze(-1)
            if rows.numel():
                y.index_add_(0, rows, expert(x[rows]) * w[rows, e, None].to(x.dtype))
        for shared in self.shared_experts:
            y = y + shared(x)
        return y.view(shape)


class MiniMindBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = MiniMindRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MiniMindAttention(config, layer_idx)
        self.post_attention_layernorm = MiniMindRMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.use_moe:
            self.mlp = MiniMindMoE(config)
        else:
            self.mlp = MiniMindMLP(config.hidden_size, config.intermediate_size, config.mlp_bias)

    def forward(self, x, cos, sin, mask, cache):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


# ------------------------------------------------------------------------------------------------------ models
class MiniMindPreTrainedModel(PreTrainedModel):
    config_class = MiniMindConfig
    base_model_prefix = "model"
    _no_split_modules = ["MiniMindBlock"]
    _supports_cache_class = True


class MiniMindModel(MiniMindPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MiniMindBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = MiniMindRMSNorm(config.hidden_size, config.rms_norm_eps)
        # Computed on CPU at first use: not a buffer, so no loading path (meta device, init) can touch it.
        self._rope = None
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t, _ = x.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # left padding: each row counts positions from its first real token
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
        elif position_ids is None:
            position_ids = torch.arange(past, past + t, device=x.device).expand(b, t)
        if self._rope is None:
            self._rope = rope_frequencies(self.config)
        inv_freq, factor = self._rope
        # f32 angles, as bunmind (and MiniMind) compute them
        angles = position_ids.float()[..., None] * inv_freq.to(x.device)
        cos, sin = angles.cos() * factor, angles.sin() * factor
        mask = _attention_mask(attention_mask, b, t, past, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return self.norm(x)


def _attention_mask(attention_mask, b, t, past, device):
    """Additive f32 mask [B|1, 1, T, past+T]: causal, and masking the padding of a 2D `attention_mask`.

    Masked scores get the lowest finite f32, not -inf: a padding query sees no key at all, and -inf would make its
    softmax (and, through the next layer's keys, every row) NaN."""
    if attention_mask is not None and attention_mask.dim() == 4:  # already built (transformers' static caches)
        if attention_mask.dtype != torch.bool:
            return attention_mask.float()
        allowed = attention_mask
    else:
        s = past + t
        allowed = torch.arange(s, device=device)[None, :] <= torch.arange(past, s, device=device)[:, None]  # [T, S]
        allowed = allowed[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, -s:].bool()
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if _V5 else ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        cache=None,
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
        h = self.model(input_ids, attention_mask, position_ids, cache if use_cache else None, inputs_embeds)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})


# So that save_pretrained (transformers 4.x included) copies this code and keeps config.json's auto_map.
MiniMindConfig.register_for_auto_class()
MiniMindForCausalLM.register_for_auto_class("AutoModelForCausalLM")
