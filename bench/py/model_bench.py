#!/usr/bin/env python3
"""PyTorch eager (CPU) baseline for bench/model.ts: minimind2-small written from
MiniMind's published architecture (not upstream code): pre-norm decoder, RMSNorm (eps 1e-5), rotate-half RoPE
(theta 1e6), GQA with repeat_kv, SwiGLU MLP, LM head tied to the embedding, no biases, N(0, 0.02) init.

Attention: torch.nn.functional.scaled_dot_product_attention (as upstream MiniMind does when it is
available): is_causal=True for training and prefill, no mask for one-token decode steps.
KV cache: per-layer torch.cat of the new k/v onto the cached ones (as upstream MiniMind).

It is a worker driven by bench/model.ts over stdin/stdout, one JSON object per line, so that
bunmind and PyTorch samples can be interleaved (the machine may be shared):
  -> {"op": "init", "config": {...}, "threads": 2, "seed": 42}
  -> {"op": "train", "b": 4, "t": 512}         one optimizer step; replies {"s": seconds, "loss": ..}
  -> {"op": "forward", "b": 4, "t": 512}       prefill (logits of the last position, no grad)
  -> {"op": "decode", "prompt": 32, "new": 128} greedy decode at batch 1; prefill and decode timed apart
  -> {"op": "rss"}                              peak and current RSS of this process
  -> {"op": "quit"}
Every reply is one line of JSON; errors reply {"error": "..."}.
"""
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, d):
        self.hidden = d["hidden_size"]
        self.layers = d["num_hidden_layers"]
        self.heads = d["num_attention_heads"]
        self.kv_heads = d.get("num_key_value_heads") or self.heads
        self.head_dim = d.get("head_dim") or self.hidden // self.heads
        self.ffn = d["intermediate_size"]
        self.vocab = d["vocab_size"]
        self.theta = d["rope_theta"]
        self.eps = d["rms_norm_eps"]
        self.max_pos = d.get("max_position_embeddings", 32768)
        assert d.get("tie_word_embeddings", True), "the baseline implements the tied head only"
        assert not d.get("use_moe", False), "the baseline implements the dense model only"
        assert not d.get("qk_norm", False), "the baseline has no QK-norm"


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(head_dim, theta, length):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv)  # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):  # x [B, H, T, D]; cos/sin [T, D]
    return x * cos + rotate_half(x) * sin


def repeat_kv(x, rep):  # [B, KV, S, D] -> [B, KV*rep, S, D]
    if rep == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, rep, s, d).reshape(b, kv * rep, s, d)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.d = c.heads, c.kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)

    def forward(self, x, cos, sin, past=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        rep = self.h // self.kv
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        # Causal for a block that starts at position 0 (training, prefill); a single new token
        # attends to every cached key, so no mask.
        causal = t > 1
        assert past is None or t == 1, "the baseline decodes one token at a time after the prefill"
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        y = y.transpose(1, 2).reshape(b, t, self.h * self.d)
        return self.o_proj(y), present


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden, c.ffn, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.ffn, bias=False)
        self.down_proj = nn.Linear(c.ffn, c.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden, c.eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.eps)
        self.mlp = Mlp(c)

    def forward(self, x, cos, sin, past=None):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, past)
        h = x + a
        return h + self.mlp(self.post_attention_layernorm(h)), present


class MiniMind(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.layers)])
        self.norm = RMSNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
        cos, sin = rope_tables(c.head_dim, c.theta, 4096)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids, start=0, cache=None, last_only=False):
        b, t = ids.shape
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        x = self.embed_tokens(ids)
        presents = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, cos, sin, None if cache is None else cache[i])
            presents.append(present)
        x = self.norm(x)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x), presents


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Worker:
    def __init__(self):
        self.model = None
        self.opt = None
        self.gen = None

    def batch(self, b, t):
        ids = torch.randint(3, self.model.c.vocab, (b, t), generator=self.gen)
        targets = torch.roll(ids, -1, dims=1)
        mask = torch.ones(b, t)
        mask[:, -1] = 0
        return ids, targets, mask

    def op_init(self, m):
        threads = int(m["threads"])
        torch.set_num_threads(threads)
        torch.manual_seed(int(m.get("seed", 42)))
        self.gen = torch.Generator().manual_seed(int(m.get("seed", 42)))
        self.model = MiniMind(Config(m["config"]))
        # torch.optim.AdamW defaults (foreach is only the default for CUDA tensors), weight decay
        # 0.01 as bunmind's trainer; MiniMind calls optim.AdamW(params, lr).
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        n = sum(p.numel() for p in self.model.parameters())
        return {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "params": n,
            "attention": "F.scaled_dot_product_attention",
            "mkldnn": torch.backends.mkldnn.is_available(),
            "rss_mib": current_rss_mib(),
        }

    def op_train(self, m):
        ids, targets, mask = self.batch(m["b"], m["t"])
        model, opt = self.model, self.opt
        model.train()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits, _ = model(ids)
        nll = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), reduction="none")
        loss = (nll * mask.view(-1)).sum() / mask.sum()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        s = time.perf_counter() - t0
        return {"s": s, "loss": loss.item(), "grad_norm": float(gn)}

    @torch.inference_mode()
    def op_forward(self, m):
        ids, _, _ = self.batch(m["b"], m["t"])
        self.model.eval()
        t0 = time.perf_counter()
        logits, _ = self.model(ids, last_only=True)
        s = time.perf_counter() - t0
        return {"s": s, "checksum": float(logits[:, -1, :8].sum())}

    @torch.inference_mode()
    def op_decode(self, m):
        ids, _, _ = self.batch(1, m["prompt"])
        new = int(m["new"])
        model = self.model
        model.eval()
        t0 = time.perf_counter()
        logits, cache = model(ids, start=0, last_only=True)  # prefill
        tok = logits[:, -1, :].argmax(-1, keepdim=True)
        out = [int(tok)]
        t1 = time.perf_counter()
        pos = ids.shape[1]
        for _ in range(new - 1):
            logits, cache = model(tok, start=pos, cache=cache)
            tok = logits[:, -1, :].argmax(-1, keepdim=True)
            out.append(int(tok))
            pos += 1
        t2 = time.perf_counter()
        return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decoded": new - 1, "tokens": out[:8]}

    def op_rss(self, m):
        return {"peak_rss_mib": peak_rss_mib(), "rss_mib": current_rss_mib()}


def main():
    w = Worker()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        m = json.loads(line)
        op = m.get("op")
        if op == "quit":
            break
        try:
            reply = getattr(w, f"op_{op}")(m)
        except Exception as e:  # noqa: BLE001 - report any failure to the driver
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
