"""Loads a folder bunmind exported with the real transformers, as a user would (no trust_remote_code).

    python3 tests/interop/hf_check.py DIR SPEC_JSON

SPEC_JSON: {"ids": [...], "greedy_prompt": [...], "greedy_new": N, "messages": [...]}. Writes DIR/hf_logits.f32
(logits of every position of `ids`, [T, V] little-endian f32) and prints JSON: the class transformers picked, the
greedy continuation of `greedy_prompt`, the chat template rendering of `messages` and its token ids, and the
generation config's eos ids.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

d, spec = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
out = {"class": type(model).__name__}
with torch.no_grad():
    logits = model(torch.tensor([spec["ids"]])).logits[0].float().contiguous()
    logits.numpy().astype("<f4").tofile(os.path.join(d, "hf_logits.f32"))
    if spec.get("greedy_prompt"):
        p = torch.tensor([spec["greedy_prompt"]])
        g = model.generate(p, max_new_tokens=spec["greedy_new"], do_sample=False, eos_token_id=None, pad_token_id=0,
                           min_new_tokens=spec["greedy_new"])
        out["greedy"] = g[0, p.shape[1]:].tolist()
if os.path.exists(os.path.join(d, "tokenizer.json")):
    tok = AutoTokenizer.from_pretrained(d)
    text = tok.apply_chat_template(spec["messages"], tokenize=False, add_generation_prompt=True)
    out["chat_text"] = text
    out["chat_ids"] = tok(text, add_special_tokens=False)["input_ids"]
out["eos"] = GenerationConfig.from_pretrained(d).eos_token_id
print(json.dumps(out, ensure_ascii=False))
