"""Random models built with upstream MiniMind's own model code (../shared/data/minimind-src, imported unmodified).

    python3 tests/interop/minimind_models.py OUT_DIR

Writes, each with ids.json + logits.f32 (every position, [T, V] f32) from upstream's forward:
  OUT_DIR/hf/          MiniMindForCausalLM.save_pretrained (model_type minimind, transformers 5 layout)
  OUT_DIR/small.pth    torch.save of the same model's state dict in half precision (as upstream saves), with
                       OUT_DIR/small-pth/{ids.json,logits.f32} computed from the half-rounded weights, and
                       OUT_DIR/small-config.json (upstream's config of it)
  OUT_DIR/m3.pth       a minimind-3 preset-sized model (no config: bunmind must recognise the preset), likewise
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..", "shared", "data", "minimind-src")))
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * n if "norm" in name else 0.05 * n)


def reference(model, d, vocab, t=24):
    os.makedirs(d, exist_ok=True)
    ids = torch.randint(0, vocab, (1, t), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(ids).logits[0].float().contiguous()
    json.dump(ids[0].tolist(), open(os.path.join(d, "ids.json"), "w"))
    logits.numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))


def half_rounded(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def main(out):
    os.makedirs(out, exist_ok=True)
    cfg = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=160,
                         vocab_size=6400, max_position_embeddings=512)
    m = MiniMindForCausalLM(cfg).eval()
    randomise(m, 11)
    m.save_pretrained(os.path.join(out, "hf"))
    reference(m, os.path.join(out, "hf"), cfg.vocab_size)
    torch.save({k: v.half() for k, v in m.state_dict().items()}, os.path.join(out, "small.pth"))
    json.dump(json.load(open(os.path.join(out, "hf", "config.json"))), open(os.path.join(out, "small-config.json"), "w"))
    reference(half_rounded(m), os.path.join(out, "small-pth"), cfg.vocab_size)
    # minimind-3 (768 × 8, the preset bunmind must recognise from the shapes alone).
    m3 = MiniMindForCausalLM(MiniMindConfig()).eval()
    randomise(m3, 12)
    torch.save({k: v.half() for k, v in m3.state_dict().items()}, os.path.join(out, "m3.pth"))
    reference(half_rounded(m3), os.path.join(out, "m3-pth"), 6400, t=8)


if __name__ == "__main__":
    main(sys.argv[1])
