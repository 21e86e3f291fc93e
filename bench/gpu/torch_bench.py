#!/usr/bin/env python3
"""PyTorch baseline on the GPU for bench/gpu/run.sh: the same minimind2-small as the CPU baseline
(bench/py/model_bench.py's model code, imported, not copied), trained on the same synthetic
batches (data.py) with the same settings as bunmind's trainer: AdamW (lr, β, ε, weight decay
0.01), global-norm clip 1.0, masked mean cross-entropy.

GPU setup: bf16 autocast (`torch.autocast("cuda", torch.bfloat16)`, f32 master weights),
attention through F.scaled_dot_product_attention (flash / memory-efficient kernels), AdamW with
`fused=True`. `--dtype f32` runs without autocast (TF32 matmuls off) for the f32 comparison.
Prints one JSON object on stdout.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "py"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from data import synthetic_batch  # noqa: E402
from model_bench import Config, MiniMind  # noqa: E402

# minimind2-small as bunmind's preset (core-rs/engine/src/model/config.rs).
PRESETS = {
    "minimind2-small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                            intermediate_size=1408, vocab_size=6400, rope_theta=1e6, rms_norm_eps=1e-5,
                            max_position_embeddings=32768, tie_word_embeddings=True),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="minimind2-small")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--device", default="cuda:0", help="cpu only for a smoke test of this script")
    a = p.parse_args()

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = PRESETS[a.preset]
    model = MiniMind(Config(cfg)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[torch-gpu] {a.preset}: {n_params / 1e6:.1f}M params, {a.dtype}, batch {a.batch}x{a.seq}", file=sys.stderr)
    losses, times = [], []
    model.train()
    for s in range(a.warmup + a.steps):
        ids, targets, mask = synthetic_batch(s, a.batch, a.seq, cfg["vocab_size"], a.seed)
        ids = torch.tensor(ids, dtype=torch.long).view(a.batch, a.seq)
        targets = torch.tensor(targets, dtype=torch.long).view(-1)
        mask = torch.tensor(mask, dtype=torch.float32).view(-1)
        sync()
        t0 = time.perf_counter()
        # Host → device copies inside the timed region, as bunmind's step receives host arrays.
        ids, targets, mask = ids.to(dev, non_blocking=True), targets.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            logits, _ = model(ids)
        nll = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets, reduction="none")
        loss = (nll * mask).sum() / mask.sum()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()  # synchronises, like bunmind's step returning its loss
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
        losses.append(lv)
        if s % 10 == 0 or s == a.warmup + a.steps - 1:
            print(f"[torch-gpu] step {s}: loss {lv:.4f} grad_norm {float(gn):.3f} {dt * 1000:.1f} ms", file=sys.stderr)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({
        "engine": f"PyTorch {torch.__version__} eager, {'bf16 autocast' if a.dtype == 'bf16' else 'f32'} + SDPA, fused AdamW",
        "preset": a.preset,
        "params": n_params,
        "compute_dtype": a.dtype,
        "batch": a.batch,
        "seq": a.seq,
        "steps": a.steps,
        "median_step_s": med,
        "mean_step_s": sum(times) / len(times),
        "tokens_per_s": a.batch * a.seq / med,
        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
    }))


if __name__ == "__main__":
    main()
