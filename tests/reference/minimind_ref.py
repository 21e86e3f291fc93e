#!/usr/bin/env python3
"""Plain-numpy reference of the MiniMind model family (written from MiniMind's published model description, not its code), used to
generate tiny random Hugging Face checkpoints and the logits the Rust engine must reproduce.

Each fixture is a folder `<name>/` with `config.json`, `model.safetensors` (written by hand here:
an 8-byte little-endian header length, a JSON header, then raw little-endian data) and
`expected.json` with, per id sequence: `logits_all` [T][V] of the inference forward (YaRN applied
when configured), `train_logits_all` [T][V] (no YaRN) and `aux_loss` (MoE load-balancing loss).

Regenerate:  python3 tests/reference/minimind_ref.py --out tests/fixtures/model
Math is float64; weights are rounded to their stored dtype first (f32, f16 or bf16).
"""
import argparse
import json
import math
import os
import struct

import numpy as np

# ----------------------------------------------------------------------------- the model


def rmsnorm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x):
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def inv_freqs(cfg, scaled):
    """θ^(-2i/d); with YaRN: f·((1-γ) + γ/s), γ a clamp ramp between the beta_fast/beta_slow dims."""
    d, base = head_dim(cfg), cfg["rope_theta"]
    f = np.array([1.0 / base ** (2 * i / d) for i in range(d // 2)])
    rs = cfg.get("rope_scaling")
    attn = 1.0
    if scaled and rs is not None:
        orig, s = rs["original_max_position_embeddings"], rs["factor"]
        attn = rs.get("attention_factor", 1.0)
        if cfg["max_position_embeddings"] / orig > 1.0:
            def dim_of(b):
                return d * math.log(orig / (b * 2 * math.pi)) / (2 * math.log(base))
            lo = max(math.floor(dim_of(rs["beta_fast"])), 0)
            hi = min(math.ceil(dim_of(rs["beta_slow"])), d // 2 - 1)
            gamma = np.clip((np.arange(d // 2) - lo) / max(hi - lo, 0.001), 0.0, 1.0)
            f = f * (1.0 - gamma + gamma / s)
    return f, attn


def rotate(x, pos, cfg, scaled):
    """x: [T, heads, d] at absolute positions pos[T]."""
    f, attn = inv_freqs(cfg, scaled)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * f[None, :]  # [T, d/2]
    c = (np.cos(ang) * attn)[:, None, :]
    s = (np.sin(ang) * attn)[:, None, :]
    out = np.empty_like(x)
    if cfg.get("rope_interleaved"):
        a, b = x[..., 0::2], x[..., 1::2]  # pairs (x0,x1), (x2,x3), ...
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    else:
        h = x.shape[-1] // 2  # pairs (x_i, x_{i+d/2})
        a, b = x[..., :h], x[..., h:]
        out[..., :h] = a * c - b * s
        out[..., h:] = b * c + a * s
    return out


def attention(x, W, pre, cfg, scaled):
    T = x.shape[0]
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    q = (x @ W[pre + "q_proj.weight"].T).reshape(T, nh, d)
    k = (x @ W[pre + "k_proj.weight"].T).reshape(T, nkv, d)
    v = (x @ W[pre + "v_proj.weight"].T).reshape(T, nkv, d)
    if cfg.get("qk_norm"):
        q = rmsnorm(q, W[pre + "q_norm.weight"], cfg["rms_norm_eps"])
        k = rmsnorm(k, W[pre + "k_norm.weight"], cfg["rms_norm_eps"])
    pos = np.arange(T)
    q, k = rotate(q, pos, cfg, scaled), rotate(k, pos, cfg, scaled)
    out = np.zeros((T, nh, d))
    group = nh // nkv
    for h in range(nh):
        kh, vh = k[:, h // group, :], v[:, h // group, :]
        for t in range(T):
            sc = kh[: t + 1] @ q[t, h] / math.sqrt(d)
            out[t, h] = softmax(sc) @ vh[: t + 1]
    return out.reshape(T, nh * d) @ W[pre + "o_proj.weight"].T


def swiglu(x, W, pre):
    return (silu(x @ W[pre + "gate_proj.weight"].T) * (x @ W[pre + "up_proj.weight"].T)) @ W[pre + "down_proj.weight"].T


def moe(x, W, pre, cfg):
    """Returns (y, aux, min top-k margin). aux = coef·E·Σ_e f_e·P_e, f_e = assignments/N."""
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    p = softmax(x @ W[pre + "gate.weight"].T)  # [N, E]
    y = np.zeros_like(x)
    counts = np.zeros(E)
    margin = float("inf")
    for t in range(x.shape[0]):
        order = sorted(range(E), key=lambda e: (-p[t, e], e))
        top = order[:k]
        if k < E:
            margin = min(margin, p[t, order[k - 1]] - p[t, order[k]])
        w = p[t, top]
        if cfg.get("norm_topk_prob", True):
            w = w / (w.sum() + 1e-20)
        for e, we in zip(top, w):
            y[t] += we * swiglu(x[t : t + 1], W, f"{pre}experts.{e}.")[0]
            counts[e] += 1
    for s in range(cfg.get("n_shared_experts", 0)):
        y += swiglu(x, W, f"{pre}shared_experts.{s}.")
    aux = cfg.get("router_aux_loss_coef", 0.0) * E * float(np.sum(counts / x.shape[0] * p.mean(axis=0)))
    return y, aux, margin


def forward(ids, W, cfg, scaled):
    """ids: list[int] → (logits [T, V], aux, routing margin)"""
    eps = cfg["rms_norm_eps"]
    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    aux, margin = 0.0, float("inf")
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        x = x + attention(rmsnorm(x, W[pre + "input_layernorm.weight"], eps), W, pre + "self_attn.", cfg, scaled)
        h = rmsnorm(x, W[pre + "post_attention_layernorm.weight"], eps)
        if cfg.get("use_moe"):
            y, a, m = moe(h, W, pre + "mlp.", cfg)
            aux, margin = aux + a, min(margin, m)
        else:
            y = swiglu(h, W, pre + "mlp.")
        x = x + y
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T, aux, margin


# ----------------------------------------------------------------------------- checkpoints


def param_shapes(cfg):
    h, v, d = cfg["hidden_size"], cfg["vocab_size"], head_dim(cfg)
    nh, nkv, ffn = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (nh * d, h)
        out[p + "self_attn.k_proj.weight"] = (nkv * d, h)
        out[p + "self_attn.v_proj.weight"] = (nkv * d, h)
        out[p + "self_attn.o_proj.weight"] = (h, nh * d)
        if cfg.get("qk_norm"):
            out[p + "self_attn.q_norm.weight"] = (d,)
            out[p + "self_attn.k_norm.weight"] = (d,)
        mlps = [p + "mlp."]
        if cfg.get("use_moe"):
            out[p + "mlp.gate.weight"] = (cfg["num_experts"], h)
            mlps = [f"{p}mlp.experts.{e}." for e in range(cfg["num_experts"])]
            mlps += [f"{p}mlp.shared_experts.{s}." for s in range(cfg.get("n_shared_experts", 0))]
        for m in mlps:
            out[m + "gate_proj.weight"] = (ffn, h)
            out[m + "up_proj.weight"] = (ffn, h)
            out[m + "down_proj.weight"] = (h, ffn)
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = (v, h)
    return out


def to_bf16_bits(a):
    """float64 → bf16 bit patterns (round to nearest even)."""
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def stored(a, dtype):
    """(bytes, value as float64 after rounding to the stored dtype)"""
    if dtype == "F32":
        b = a.astype("<f4")
        return b.tobytes(), b.astype(np.float64)
    if dtype == "F16":
        b = a.astype("<f2")
        return b.tobytes(), b.astype(np.float64)
    if dtype == "BF16":
        bits = to_bf16_bits(a)
        back = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return bits.astype("<u2").tobytes(), back
    raise ValueError(dtype)


def write_safetensors(path, tensors):
    """tensors: {name: (dtype, shape, bytes)}"""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def random_weights(cfg, rng, dtype):
    W, raw = {}, {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:  # norm gains near 1, so a forgotten norm weight shows up
            a = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            a = 0.08 * rng.standard_normal(shape)
        data, W[name] = stored(a, dtype)
        raw[name] = (dtype, shape, data)
    return W, raw


# ----------------------------------------------------------------------------- fixtures


def base_cfg(**kw):
    cfg = {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 1e4,
        "max_position_embeddings": 64, "tie_word_embeddings": True, "use_moe": False, "qk_norm": False,
        "rope_interleaved": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "model_type": "minimind", "architectures": ["MiniMindForCausalLM"],
    }
    cfg.update(kw)
    return cfg


FIXTURES = {
    # Llama-like: GQA 4/2, rotate-half RoPE, tied head
    "dense_gqa": (base_cfg(), "F32"),
    # minimind-3-like: QK-norm, explicit head_dim, untied lm_head.weight, theta 1e6, f16 storage
    "dense_qknorm_lmhead": (base_cfg(hidden_size=48, head_dim=16, num_attention_heads=4, num_key_value_heads=1,
                                     qk_norm=True, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                     intermediate_size=160), "F16"),
    # seed v1: interleaved-pair RoPE, 8 q heads / 4 kv heads
    "v1_interleaved": (base_cfg(num_attention_heads=8, num_key_value_heads=4, rope_interleaved=True), "F32"),
    # minimind2-moe-like: 4 experts, top-2, 1 shared, renormalised
    "moe_top2_shared": (base_cfg(use_moe=True, num_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                                 norm_topk_prob=True, router_aux_loss_coef=0.01, rope_theta=1e6, intermediate_size=48), "F32"),
    # minimind-3-moe-like: 4 experts, top-1, no shared, QK-norm, bf16 storage
    "moe_top1_qknorm": (base_cfg(use_moe=True, num_experts=4, num_experts_per_tok=1, n_shared_experts=0,
                                 norm_topk_prob=True, router_aux_loss_coef=5e-4, qk_norm=True, intermediate_size=48), "BF16"),
    # YaRN scaling active at inference (train logits stay unscaled)
    "dense_yarn": (base_cfg(rope_theta=1e4, max_position_embeddings=256, rope_scaling={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32.0,
        "beta_slow": 1.0, "attention_factor": 1.0}), "F32"),
}

SEQUENCES = [[5], [1, 17, 200, 3, 99, 42, 128], [7, 7, 8, 250, 11, 0, 2]]


def build(name, cfg, dtype, out_dir, seed):
    # Re-draw until every MoE routing decision has a clear margin, so f32 rounding cannot flip it.
    for attempt in range(50):
        rng = np.random.default_rng(seed + 1000 * attempt)
        W, raw = random_weights(cfg, rng, dtype)
        results = []
        min_margin = float("inf")
        for ids in SEQUENCES:
            logits, aux, m = forward(ids, W, cfg, scaled=True)
            train_logits, train_aux, m2 = forward(ids, W, cfg, scaled=False)
            min_margin = min(min_margin, m, m2)
            results.append({
                "ids": ids,
                "logits_all": np.round(logits, 7).tolist(),
                "train_logits_all": np.round(train_logits, 7).tolist(),
                "aux_loss": train_aux,
            })
        if min_margin > 1e-3:
            break
    else:
        raise RuntimeError(f"{name}: no seed gave clear MoE routing margins")
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "model.safetensors"), raw)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"name": name, "dtype": dtype, "sequences": results}, f, separators=(",", ":"))
    print(f"{name}: {len(raw)} tensors, {dtype}, routing margin {min_margin:.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/model")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    for i, (name, (cfg, dtype)) in enumerate(FIXTURES.items()):
        build(name, cfg, dtype, args.out, args.seed + i)


if __name__ == "__main__":
    main()
