#!/usr/bin/env python3
"""Runs upstream MiniMind's own trainer code, unmodified, as the oracle of the parity suite
(tests/upstream-parity.test.ts).

Upstream's files are imported from `../shared/data/minimind-src` (never copied here): the model
(`model/model_minimind.py`, `model/model_lora.py`), the datasets (`dataset/lm_dataset.py`: their
tokenisation, truncation, padding and loss masks) and the stage's `train_epoch` from
`trainer/train_<stage>.py` (its LR schedule `get_lr`, loss, gradient accumulation, clipping and
AdamW steps). Only what upstream's `__main__` block builds is built here, the way it builds it:
the model from bunmind's initial weights, `optim.AdamW(params, lr)`, a disabled GradScaler, no
autocast on the CPU, and a DataLoader whose batches are the ones bunmind's sampler drew (upstream
draws its own with `torch.randperm`; the order is the one thing the test hands over).

Recorded through wrappers around torch (upstream's own code is not touched): per micro-batch the
loss it backpropagates (`Tensor.backward`, times `accumulation_steps`), per optimizer step the
gradient norm `clip_grad_norm_` returns and the learning rate in the optimizer at that moment.
Upstream's SFT/DPO datasets augment with Python's `random` on every access (a random system
prompt when `random() < 0.2`, empty think blocks stripped when `random() > 0.2`); `"random": x`
pins `random.random()` to x, so both sides can be given the same draws (0.5: no system prompt,
strip = bunmind's `--random-system-prompt 0 --strip-empty-think 1`).

    python3 minimind_upstream.py spec.json out.json
spec: {"src", "stage", "model_dir", "teacher_dir"?, "adapter"?, "data", "tokenizer", "batches",
       "max_seq_len", "lr", "accum", "grad_clip", "beta"?, "alpha"?, "temperature"?, "dtype"?,
       "random"?, "masks_only"?}
"""
import json
import os
import random
import sys
import tempfile
from argparse import Namespace
from contextlib import nullcontext

import torch
from safetensors.torch import load_file

spec = json.load(open(sys.argv[1]))
out_path = os.path.abspath(sys.argv[2])
src = os.path.abspath(spec["src"])
sys.path.insert(0, src)
torch.manual_seed(0)
dtype = torch.float64 if spec.get("dtype") == "f64" else torch.float32
if "random" in spec:
    random.random = lambda: spec["random"]
if dtype == torch.float64:
    # An f64 reference: upstream's RMSNorm computes in `x.float()` (f32) and casts back; keep f64.
    _float = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else _float(self, *a, **k)

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

CONFIG_KEYS = [
    "hidden_size", "num_hidden_layers", "use_moe", "dropout", "vocab_size", "bos_token_id", "eos_token_id",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "intermediate_size",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "num_experts",
    "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "router_aux_loss_coef",
]


def load_model(model_dir):
    """A MiniMindForCausalLM with bunmind's config.json and model.safetensors."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    if cfg.get("n_shared_experts", 0) or cfg.get("rope_interleaved") or cfg.get("qk_norm") is False:
        sys.exit(f"{model_dir}: upstream's current model has no shared experts / interleaved RoPE and always has q/k norms")
    config = MiniMindConfig(**{k: cfg[k] for k in CONFIG_KEYS if cfg.get(k) is not None}, flash_attn=True)
    model = MiniMindForCausalLM(config)
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        sys.exit(f"{model_dir}: weights do not match upstream's model: missing {missing}, unexpected {unexpected}")
    return model.to(dtype), config


stage = spec["stage"]
tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
from dataset.lm_dataset import DPODataset, PretrainDataset, SFTDataset  # noqa: E402

Dataset = {"pretrain": PretrainDataset, "sft": SFTDataset, "lora": SFTDataset, "distill": SFTDataset, "dpo": DPODataset}[stage]
ds = Dataset(spec["data"], tokenizer, max_length=spec["max_seq_len"])

if spec.get("masks_only"):
    # The samples exactly as upstream's dataset class returns them (input ids and loss positions).
    rows = []
    for i in range(len(ds)):
        item = ds[i]
        if stage == "dpo":
            rows.append({side: {"ids": item[f"x_{side}"].tolist() + [item[f"y_{side}"][-1].item()],
                                "mask": [0] + item[f"mask_{side}"].tolist()} for side in ("chosen", "rejected")})
        else:
            ids, labels = item
            rows.append({"ids": ids.tolist(), "mask": [int(l != -100) for l in labels.tolist()]})
    json.dump({"rows": rows}, open(out_path, "w"))
    sys.exit(0)

import trainer.trainer_utils  # noqa: E402,F401  (upstream's `trainer` package, from src)
script = {"sft": "full_sft", "distill": "distillation"}.get(stage, stage)
T = __import__(f"trainer.train_{script}", fromlist=["train_epoch"])

model, config = load_model(spec["model_dir"])
model.train()
work = tempfile.mkdtemp(prefix="minimind-upstream-")
os.makedirs(os.path.join(work, "cwd"))
os.chdir(os.path.join(work, "cwd"))  # upstream writes '../checkpoints' next to the working directory

if stage == "lora":
    from model.model_lora import apply_lora
    # bunmind saves PEFT's names (base_model.model.<module>.lora_A.weight)
    adapter = {k.removeprefix("base_model.model."): v for k, v in load_file(spec["adapter"]).items()}
    apply_lora(model, rank=spec["lora_rank"])
    # bunmind's initial adapters (A ~ N(0, 0.02²) from its own RNG, B = 0) in upstream's modules.
    for name, module in model.named_modules():
        if hasattr(module, "lora"):
            a, b = adapter.pop(f"{name}.lora_A.weight", None), adapter.pop(f"{name}.lora_B.weight", None)
            if a is None or b is None:
                sys.exit(f"adapter: no bunmind adapter for upstream's LoRA module {name}")
            module.lora.A.weight.data.copy_(a.to(dtype))
            module.lora.B.weight.data.copy_(b.to(dtype))
            module.lora.to(dtype)
    if adapter:
        sys.exit(f"adapter: bunmind adapts modules upstream does not: {sorted(adapter)}")
    for name, p in model.named_parameters():
        p.requires_grad = "lora" in name
    params = [p for name, p in model.named_parameters() if "lora" in name]
else:
    params = list(model.parameters())

# As upstream's __main__ (CPU: no autocast, GradScaler disabled).
T.args = Namespace(
    device="cpu", dtype="float32", epochs=1, learning_rate=spec["lr"], accumulation_steps=spec["accum"],
    grad_clip=spec["grad_clip"] if spec["grad_clip"] else float("inf"), log_interval=10**9, save_interval=10**9,
    save_dir=os.path.join(work, "out"), save_weight=stage, lora_name="lora", max_seq_len=spec["max_seq_len"],
    alpha=spec.get("alpha", 0.5), temperature=spec.get("temperature", 1.0), beta=spec.get("beta", 0.1),
)
os.makedirs(T.args.save_dir, exist_ok=True)
T.model = model
T.lm_config = config
T.lm_config_student = config
T.optimizer = torch.optim.AdamW(params, lr=spec["lr"])
T.scaler = torch.amp.GradScaler("cuda", enabled=False)
T.autocast_ctx = nullcontext()

micro_losses, grad_norms, lrs = [], [], []
clip = torch.nn.utils.clip_grad_norm_


def recording_clip(parameters, max_norm, *a, **k):
    norm = clip(parameters, max_norm, *a, **k)
    grad_norms.append(float(norm))
    lrs.append(T.optimizer.param_groups[-1]["lr"])
    return norm


torch.nn.utils.clip_grad_norm_ = recording_clip
torch.Tensor.backward = (lambda backward: lambda self, *a, **k: (micro_losses.append(float(self) * spec["accum"]), backward(self, *a, **k))[1])(torch.Tensor.backward)

loader = torch.utils.data.DataLoader(ds, batch_sampler=spec["batches"], num_workers=0)
iters = len(spec["batches"])
if stage == "dpo":
    ref_model, _ = load_model(spec["model_dir"])
    ref_model.eval().requires_grad_(False)
    T.train_epoch(0, loader, iters, ref_model, config, 0, None, spec["beta"])
elif stage == "distill":
    teacher, _ = load_model(spec["teacher_dir"])
    T.train_epoch(0, loader, iters, teacher, config, 0, None, spec["alpha"], spec["temperature"])
elif stage == "lora":
    T.train_epoch(0, loader, iters, params, 0, None)
else:
    T.train_epoch(0, loader, iters, 0, None)

# Loss of an optimizer step = mean of its micro-batches' losses (upstream backpropagates loss/accum).
steps, a = [], spec["accum"]
for s in range(0, len(micro_losses), a):
    chunk = micro_losses[s:s + a]
    steps.append(sum(chunk) / len(chunk))
if spec.get("dump_weights"):
    # The weights after training (diagnostics: which tensor moved differently).
    from safetensors.torch import save_file
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or not config.tie_word_embeddings}, os.path.abspath(spec["dump_weights"]))
json.dump({"micro_losses": micro_losses, "step_losses": steps, "grad_norms": grad_norms, "lrs": lrs}, open(out_path, "w"))
