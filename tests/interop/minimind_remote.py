"""Loads a MiniMind-format folder (model_type "minimind") with transformers and bunmind's remote code.

    python3 tests/interop/minimind_remote.py perturb DIR
        Adds noise to every norm gain and bias of DIR/model.safetensors (init makes them 1 and 0), so that a
        dropped or misplaced one shows in the logits, and scales the projections up (q/k ×8, the other matrices
        but the embedding ×3): sharper attention makes RoPE's details matter, and greedy decoding of a random
        model then varies instead of repeating one token.

    python3 tests/interop/minimind_remote.py check DIR SPEC_JSON
        SPEC_JSON: {"ids": [...], "greedy_prompt": [...], "greedy_new": N, "batch_prompts": [[...], ...],
        "save": true, "control": {...}}. Loads DIR with `AutoModelForCausalLM.from_pretrained(DIR,
        trust_remote_code=True)`, writes DIR/remote_logits.f32 (logits of every position of `ids`, [T, V]
        little-endian f32, one full forward without cache) and prints JSON: the model and config classes, whether
        lm_head is tied, the largest difference between the full forward and a token-by-token forward through the
        KV cache, the greedy continuation of `greedy_prompt` from `generate`, and those of `batch_prompts`
        generated as one left-padded batch. With `save`, it also writes the model with `save_pretrained` to
        DIR/saved; with `control` (config keys), it loads DIR again with those keys changed
        (`from_pretrained(DIR, trust_remote_code=True, **control)`, the tests' negative control) and writes that
        model's logits to DIR/control_logits.f32.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file


def perturb(d):
    p = os.path.join(d, "model.safetensors")
    t = load_file(p)
    g = torch.Generator().manual_seed(5)
    for k in sorted(t):
        if k.endswith(".bias") or "norm" in k:
            t[k] = t[k] + 0.3 * torch.randn(t[k].shape, generator=g)
        elif "q_proj" in k or "k_proj" in k:
            t[k] = t[k] * 8
        elif t[k].dim() == 2 and "embed_tokens" not in k:
            t[k] = t[k] * 3
    save_file(t, p, metadata={"format": "pt"})


def load(d, **overrides):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True, **overrides).eval()


def check(d, spec):
    model = load(d)
    out = {
        "class": type(model).__name__,
        "config_class": type(model.config).__name__,
        "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
    }
    with torch.no_grad():
        ids = torch.tensor([spec["ids"]])
        logits = model(ids, use_cache=False).logits[0].float().contiguous()
        logits.numpy().astype("<f4").tofile(os.path.join(d, "remote_logits.f32"))
        # The same logits one token at a time through the KV cache.
        cache, steps = None, []
        for i in range(ids.shape[1]):
            r = model(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
            cache = r["cache"] if "cache" in r else r["past_key_values"]
            steps.append(r.logits[0, -1])
        out["cache_vs_full"] = (torch.stack(steps) - logits).abs().max().item()
        if spec.get("greedy_prompt"):
            p = torch.tensor([spec["greedy_prompt"]])
            n = spec["greedy_new"]
            g = model.generate(p, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
            out["greedy"] = g[0, p.shape[1] :].tolist()
        if spec.get("batch_prompts"):
            # a left-padded batch, as a user would pass it (attention_mask 0 on the padding)
            rows = spec["batch_prompts"]
            width = max(len(r) for r in rows)
            ids_b = torch.tensor([[0] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            n = spec["greedy_new"]
            g = model.generate(ids_b, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
            out["batch_greedy"] = g[:, width:].tolist()
        if spec.get("save"):
            model.save_pretrained(os.path.join(d, "saved"))
        if spec.get("control") is not None:
            control = load(d, **spec["control"])(ids, use_cache=False).logits[0].float().contiguous()
            control.numpy().astype("<f4").tofile(os.path.join(d, "control_logits.f32"))
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "perturb":
        perturb(sys.argv[2])
    elif sys.argv[1] == "check":
        check(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}: perturb DIR | check DIR SPEC_JSON")
