"""Random models of each decoder family, built and saved by the real transformers, with their logits.

    python3 tests/interop/hf_models.py OUT_DIR [CASE ...]

For every case: OUT_DIR/<case>/ holds what `save_pretrained` wrote (possibly edited into a
transformers-4.x layout, sharded, or in bf16), plus `ids.json` (the probe ids) and `logits.f32` (the
reference logits of every position, [T, V] little-endian f32), computed by transformers in f32 from
the stored weights. Also writes OUT_DIR/fields.json: every key of each family's default config
(`to_dict()`), which bunmind must use, refuse, or know to be irrelevant.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=256)


def rope(theta, **kw):
    return {"rope_theta": theta, "rope_type": kw.pop("rope_type", "default"), **kw}


CASES = {
    "llama": (LlamaConfig, dict(rope_parameters=rope(10000.0))),
    "llama_bias_headdim_tied": (LlamaConfig, dict(attention_bias=True, mlp_bias=True, head_dim=32, tie_word_embeddings=True,
                                                  rope_parameters=rope(500000.0))),
    "llama_linear": (LlamaConfig, dict(rope_parameters=rope(10000.0, rope_type="linear", factor=2.0))),
    "llama_llama3": (LlamaConfig, dict(rope_parameters=rope(10000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                            high_freq_factor=4.0, original_max_position_embeddings=64))),
    "llama_yarn": (LlamaConfig, dict(rope_parameters=rope(10000.0, rope_type="yarn", factor=4.0, original_max_position_embeddings=64))),
    # transformers 4.x layout: rope_theta + rope_scaling at the top level, no rope_parameters.
    "llama_yarn_v4": (LlamaConfig, dict(rope_parameters=rope(10000.0, rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
                                        _v4=True)),
    "llama_bf16": (LlamaConfig, dict(rope_parameters=rope(10000.0), _dtype=torch.bfloat16)),
    "llama_sharded": (LlamaConfig, dict(rope_parameters=rope(10000.0), _shard="40KB")),
    "qwen2": (Qwen2Config, dict(rope_parameters=rope(1000000.0))),
    "qwen3": (Qwen3Config, dict(head_dim=32, tie_word_embeddings=True, rope_parameters=rope(1000000.0))),
    "qwen3_bias": (Qwen3Config, dict(head_dim=16, attention_bias=True, rope_parameters=rope(10000.0))),
    "qwen3_moe": (Qwen3MoeConfig, dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
                                       head_dim=16, rope_parameters=rope(10000.0))),
    "qwen3_moe_norm": (Qwen3MoeConfig, dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                                            head_dim=16, rope_parameters=rope(10000.0))),
    # MiniMind's vocabulary: trained and chatted with in the tests, through the CLI.
    "qwen2_mm": (Qwen2Config, dict(vocab_size=6400, rope_parameters=rope(1000000.0))),
    "llama_llama3_mm": (LlamaConfig, dict(vocab_size=6400, rope_parameters=rope(10000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                                             high_freq_factor=4.0, original_max_position_embeddings=64))),
}


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.08 * noise)


def v4_layout(path):
    cfg = json.load(open(path))
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    kind = rp.pop("rope_type")
    cfg["rope_scaling"] = None if kind == "default" else {"type": kind, **rp}
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = "float32"
    cfg["transformers_version"] = "4.57.0"
    json.dump(cfg, open(path, "w"), indent=2)


def build(out, name):
    cls, kw = CASES[name]
    kw = dict(kw)
    v4, dtype, shard = kw.pop("_v4", False), kw.pop("_dtype", None), kw.pop("_shard", None)
    cfg = cls(**{**SMALL, **kw})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    randomise(model, 1234 + len(name))
    d = os.path.join(out, name)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(d, **({"max_shard_size": shard} if shard else {}))
    if v4:
        v4_layout(os.path.join(d, "config.json"))
    # The reference: transformers reads the folder back (as a user's load would) and runs in f32.
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (1, 40), generator=g)
    with torch.no_grad():
        logits = ref(ids).logits[0].float().contiguous()
    json.dump(ids[0].tolist(), open(os.path.join(d, "ids.json"), "w"))
    logits.numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))


def fields(out):
    res = {}
    for cls, extra in [(LlamaConfig, {}), (Qwen2Config, {}), (Qwen3Config, {}), (Qwen3MoeConfig, {})]:
        c = cls(**SMALL, **extra)
        res[c.model_type] = sorted(c.to_dict().keys())
    json.dump(res, open(os.path.join(out, "fields.json"), "w"), indent=1)


if __name__ == "__main__":
    out = sys.argv[1]
    names = sys.argv[2:] or list(CASES)
    os.makedirs(out, exist_ok=True)
    for n in names:
        build(out, n)
    fields(out)
    print(json.dumps(names))
