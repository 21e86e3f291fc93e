#!/usr/bin/env python3
"""
The Python side of tests/interop-peft.test.ts: Hugging Face transformers + the real `peft`
(PyPI) as the oracle for bunmind's LoRA adapters, both ways.

    python3 tests/interop/peft_interop.py SPEC.json OUT.json

SPEC is {"ops": [{"op": ..., ...}, ...]}, run in order in one process (torch + transformers +
peft take seconds to import); OUT gets the list of the ops' JSON results. Ops:
  perturb       {model_dir, seed, scale}: rewrites model.safetensors with every matrix ×scale and
                norm weights 1 + N(0, 0.3²), so that every tensor (and any mistake) shows in the
                logits (bunmind's init is N(0, 0.02²) matrices and unit norms).
  peft_logits   {model_dir, adapter_dir, ids}: base logits, PeftModel.from_pretrained(base,
                adapter_dir) logits, and merge_and_unload() logits; checks PEFT loaded every tensor
                of the adapter file into its LoRA modules (a name PEFT does not recognise only warns).
  make_adapter  {model_dir, out_dir, seed, lora: {LoraConfig kwargs}, edit?: {...}}: get_peft_model
                with that LoraConfig, A and B drawn at random (PEFT's init has B = 0: a no-op),
                save_pretrained(out_dir); `edit` then overwrites adapter_config.json fields (for
                fields PEFT itself normalises away). Returns PEFT's logits on `ids` when given.
  merge_check   {base_dir, adapter_dir, merged_dir}: an independent merge W + s·B·A (s = alpha/r,
                or alpha/√r with use_rslora) from the adapter file, against merged_dir's weights.
"""
import json
import math
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

torch.manual_seed(0)
torch.set_num_threads(2)


def hf_model_from_bunmind(model_dir):
    """The transformers model of a bunmind model folder. bunmind saves in the native transformers family
    (Llama / Qwen3 here: `bunmind export hf`'s format), so this is a plain from_pretrained, no
    trust_remote_code, and the family must be a native one."""
    from transformers import AutoModelForCausalLM

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("model_type") not in ("llama", "qwen2", "qwen3", "qwen3_moe"):
        raise SystemExit(f"{model_dir}/config.json: model_type {cfg.get('model_type')!r} is not a native transformers family")
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.to(torch.float32).tolist()


def op_perturb(spec):
    path = Path(spec["model_dir"]) / "model.safetensors"
    g = torch.Generator().manual_seed(spec["seed"])
    sd = load_file(str(path))
    out = {}
    for k in sorted(sd):
        v = sd[k].to(torch.float32)
        if v.dim() == 1:
            v = 1.0 + 0.3 * torch.randn(v.shape, generator=g)
        else:
            v = v * spec["scale"]
        out[k] = v.contiguous()
    save_file(out, str(path), metadata={"format": "pt"})
    return {"tensors": len(out)}


def peft_model(base, adapter_dir):
    """PeftModel.from_pretrained, with the warnings it raised and a check that every tensor of
    the adapter file is now the value of a LoRA parameter of the wrapped model."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, adapter_dir)
    pm.eval()
    params = dict(pm.named_parameters())
    file = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    unmatched, differ = [], []
    for k, v in file.items():
        # PEFT's file names drop the adapter name: ...q_proj.lora_A.weight ↔ ...q_proj.lora_A.default.weight
        pname = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        if pname not in params:
            unmatched.append(k)
        elif not torch.equal(params[pname].detach().to(torch.float32), v.to(torch.float32)):
            differ.append(k)
    lora_params = [n for n in params if ".lora_A." in n or ".lora_B." in n]
    return pm, {
        "file_tensors": len(file),
        "peft_lora_params": len(lora_params),
        "unmatched": unmatched,
        "differ": differ,
        "warnings": [str(w.message) for w in caught],
    }


def op_peft_logits(spec):
    base = hf_model_from_bunmind(spec["model_dir"])
    ids = spec["ids"]
    plain = logits(base, ids)
    pm, load = peft_model(base, spec["adapter_dir"])
    with_adapter = logits(pm, ids)
    merged = pm.merge_and_unload()
    return {"base": plain, "peft": with_adapter, "peft_merged": logits(merged, ids), "load": load}


def op_make_adapter(spec):
    from peft import LoraConfig, get_peft_model

    base = hf_model_from_bunmind(spec["model_dir"])
    plain = logits(base, spec["ids"]) if "ids" in spec else None
    pm = get_peft_model(base, LoraConfig(**spec["lora"]))
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_A." in name or ".lora_B." in name or "lora_magnitude_vector" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    pm.eval()
    out = Path(spec["out_dir"])
    pm.save_pretrained(str(out))
    if spec.get("edit"):
        cpath = out / "adapter_config.json"
        cfg = json.loads(cpath.read_text())
        cfg.update(spec["edit"])
        cpath.write_text(json.dumps(cfg, indent=2))
    res = {"files": sorted(p.name for p in out.iterdir()), "config": json.loads((out / "adapter_config.json").read_text())}
    if "ids" in spec:
        res["base"] = plain
        res["peft"] = logits(pm, spec["ids"])
    return res


def op_merge_check(spec):
    base = load_file(str(Path(spec["base_dir"]) / "model.safetensors"))
    merged = load_file(str(Path(spec["merged_dir"]) / "model.safetensors"))
    cfg = json.loads((Path(spec["adapter_dir"]) / "adapter_config.json").read_text())
    ad = load_file(str(Path(spec["adapter_dir"]) / "adapter_model.safetensors"))
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    expect = {k: v.to(torch.float64) for k, v in base.items()}
    modules = 0
    for k in ad:
        if not k.endswith(".lora_A.weight"):
            continue
        module = k[: -len(".lora_A.weight")]
        a = ad[k].to(torch.float64)
        b = ad[module + ".lora_B.weight"].to(torch.float64)
        wname = module.removeprefix("base_model.model.") + ".weight"
        expect[wname] = expect[wname] + s * (b @ a)
        modules += 1
    if set(merged) != set(base):
        return {"error": f"tensor names differ: only merged {sorted(set(merged) - set(base))}, only base {sorted(set(base) - set(merged))}"}
    adapted = {k.removeprefix("base_model.model.")[: -len(".lora_A.weight")] + ".weight" for k in ad if k.endswith(".lora_A.weight")}
    max_adapted = max((float((merged[k].to(torch.float64) - expect[k]).abs().max()) for k in adapted), default=0.0)
    max_other = max((float((merged[k].to(torch.float64) - expect[k]).abs().max()) for k in merged if k not in adapted), default=0.0)
    moved = max((float((merged[k].to(torch.float64) - base[k].to(torch.float64)).abs().max()) for k in adapted), default=0.0)
    return {"modules": modules, "scale": s, "max_diff_adapted": max_adapted, "max_diff_other": max_other, "max_change_from_base": moved}


OPS = {"perturb": op_perturb, "peft_logits": op_peft_logits, "make_adapter": op_make_adapter, "merge_check": op_merge_check}

if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for o in spec["ops"]:
        try:
            results.append(OPS[o["op"]](o))
        except Exception as e:  # noqa: BLE001 - reported per op, with what it was doing
            raise SystemExit(f"op {o['op']} ({o.get('out_dir') or o.get('adapter_dir') or o.get('model_dir')}): {type(e).__name__}: {e}")
    Path(sys.argv[2]).write_text(json.dumps(results))
