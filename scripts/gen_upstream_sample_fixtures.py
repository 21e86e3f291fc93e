#!/usr/bin/env python3
"""Generate tests/fixtures/data/upstream_samples.json: token ids and loss masks that upstream MiniMind's
own dataset classes (`dataset/lm_dataset.py`: SFTDataset, DPODataset) build for records bunmind used
to drop: empty or missing contents (a system turn that only carries tools, an empty tool result, an
empty user turn), and samples whose assistant reply lies beyond max_length.

The oracle is upstream's code itself, imported from a checkout of jingyaogong/minimind (default
../shared/data/minimind-src), run with MiniMind's tokenizer. Only its random augmentation
(`pre_processing_chat` / `post_processing_chat`) is switched off; bunmind tests that separately.
tests/data-upstream-samples.test.ts builds the same records through src/data and compares.

    python3 scripts/gen_upstream_sample_fixtures.py
    python3 scripts/gen_upstream_sample_fixtures.py --minimind-src DIR --minimind-dir DIR

Needs `pip install torch datasets transformers jinja2 tokenizers`.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
DEFAULT_SRC = os.environ.get("BUNMIND_MINIMIND_SRC", os.path.join(SHARED, "minimind-src") if os.path.isdir(SHARED) else "/work/shared/data/minimind-src")
DEFAULT_DIR = os.environ.get("BUNMIND_MINIMIND_DIR", os.path.join(SHARED, "minimind") if os.path.isdir(SHARED) else "/work/shared/data/minimind")
OUT = os.path.join(REPO, "tests", "fixtures", "data", "upstream_samples.json")

TOOLS = json.dumps(
    [{"type": "function", "function": {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    ensure_ascii=False,
)
CALL = json.dumps([{"name": "get_weather", "arguments": {"city": "北京"}}], ensure_ascii=False)
LONG_PROMPT = "请详细解释一下为什么天空是蓝色的，" * 12


def u(c=None, **kw):
    return {"role": "user", **({"content": c} if c is not None else {}), **kw}


def a(c=None, **kw):
    return {"role": "assistant", **({"content": c} if c is not None else {}), **kw}


def s(c=None, **kw):
    return {"role": "system", **({"content": c} if c is not None else {}), **kw}


def t(c=None, **kw):
    return {"role": "tool", **({"content": c} if c is not None else {}), **kw}


def sft_cases():
    return [
        ("tools-only system turn (empty content), empty tool result", 512,
         [s("", tools=TOOLS), u("北京天气？"), a("", tool_calls=CALL), t(""), a("查不到。")]),
        ("tools-only system turn with no content key: upstream's template fails", 512,
         [s(tools=TOOLS), u("北京天气？"), a("晴。")]),
        ("leading system turn with no content key, no tools: upstream's template fails", 512,
         [s(), u("hi"), a("hello")]),
        ("empty system content without tools", 512, [s(""), u("hi"), a("hello")]),
        ("empty and blank user turns", 512, [u(""), a("你好"), u("  \n"), a("还在。")]),
        ("user turn with no content key", 512, [u("q"), a("a"), u(), a("b")]),
        ("tool result with no content key", 512, [u("北京天气？"), a("", tool_calls=CALL), t(), a("不知道。")]),
        ("empty assistant reply without tool_calls, and one with no content key", 512, [u("q"), a(""), u("q2"), a()]),
        ("later system turn with no content key renders empty", 512, [u("q"), a("a"), s(), u("q2"), a("b")]),
        ("truncated before the assistant reply: kept with no loss token", 48, [u(LONG_PROMPT), a("因为瑞利散射。")]),
        ("truncated inside the assistant reply", 24, [u("天空为什么是蓝色？"), a("因为瑞利散射，短波长的蓝光散射得更多。")]),
    ]


def dpo_cases():
    return [
        ("pair truncated before both replies: kept with no loss token", 40,
         {"chosen": [u(LONG_PROMPT), a("因为瑞利散射。")], "rejected": [u(LONG_PROMPT), a("不知道。")]}),
        ("pair with an empty system turn and an empty rejected reply", 256,
         {"chosen": [s(""), u("1+1=?"), a("2")], "rejected": [s(""), u("1+1=?"), a("")]}),
    ]


def strip_pad(ids, pad):
    n = len(ids)
    while n > 0 and ids[n - 1] == pad:
        n -= 1
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minimind-src", default=DEFAULT_SRC, help="checkout of jingyaogong/minimind (holds dataset/lm_dataset.py)")
    p.add_argument("--minimind-dir", default=DEFAULT_DIR, help="directory with MiniMind's tokenizer.json + tokenizer_config.json")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    sys.path.insert(0, args.minimind_src)
    import dataset.lm_dataset as L
    import transformers
    from transformers import AutoTokenizer

    # Upstream's random augmentation off (a random system prompt, stripping empty think blocks).
    L.pre_processing_chat = lambda conversations, add_system_ratio=0.2: conversations
    L.post_processing_chat = lambda prompt, empty_think_ratio=0.2: prompt

    tok = AutoTokenizer.from_pretrained(args.minimind_dir)
    pad = tok.pad_token_id
    lm_src = os.path.join(args.minimind_src, "dataset", "lm_dataset.py")
    out = []
    with tempfile.TemporaryDirectory() as tmp:

        def one(cls, record, max_length):
            path = os.path.join(tmp, f"case{len(out)}.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            ds = cls(path, tok, max_length=max_length)
            try:
                return ds[0], None
            except Exception as e:  # what upstream's trainer would die on
                return None, f"{type(e).__name__}: {e}"

        for name, max_length, conversations in sft_cases():
            record = {"conversations": conversations}
            got, error = one(L.SFTDataset, record, max_length)
            case = {"name": name, "kind": "sft", "max_length": max_length, "record": record}
            if error:
                out.append({**case, "upstream_error": error})
                continue
            x, y = (v.tolist() for v in got)
            n = strip_pad(x, pad)
            assert all(v == -100 for v in y[n:]), f"{name}: upstream labels padding"
            out.append({**case, "ids": x[:n], "mask": [int(v != -100) for v in y[:n]]})

        for name, max_length, record in dpo_cases():
            got, error = one(L.DPODataset, record, max_length)
            case = {"name": name, "kind": "dpo", "max_length": max_length, "record": record}
            if error:
                out.append({**case, "upstream_error": error})
                continue
            sides = {}
            for side in ("chosen", "rejected"):
                x, y, m = (got[f"{k}_{side}"].tolist() for k in ("x", "y", "mask"))
                ids = x + y[-1:]
                n = strip_pad(ids, pad)
                assert all(v == 0 for v in m[n - 1 :]), f"{name}: upstream masks padding"
                # DPODataset returns mask[1:] (targets); position 0 can never be a target.
                sides[side] = {"ids": ids[:n], "mask": [0] + m[: n - 1]}
            out.append({**case, **sides})

    with open(lm_src, "rb") as f:
        lm_sha = hashlib.sha256(f.read()).hexdigest()
    fixture = {
        "generator": "scripts/gen_upstream_sample_fixtures.py",
        "oracle": "upstream dataset/lm_dataset.py SFTDataset / DPODataset __getitem__, augmentation off; ids unpadded, mask = labels != -100 (SFT) or loss_mask (DPO)",
        "lm_dataset_sha256": lm_sha,
        "transformers": transformers.__version__,
        "cases": out,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} cases to {os.path.relpath(args.out, REPO)}")


if __name__ == "__main__":
    main()
