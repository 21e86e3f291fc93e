"""Baseline for bench/tokenizer.ts: HF `tokenizers` (Python) encode throughput on the same
documents. Prints one JSON object. Usage: tokenizer_bench.py <tokenizer.json> <docs.json> <reps>"""
import json
import statistics
import sys
import time

import tokenizers
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
docs = json.load(open(sys.argv[2], encoding="utf-8"))
reps = int(sys.argv[3])
nbytes = sum(len(d.encode("utf-8")) for d in docs)


def timed(fn):
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        n = fn()
        samples.append(time.perf_counter() - t0)
    return samples, n


def single():
    n = 0
    for d in docs:
        n += len(tok.encode(d, add_special_tokens=False).ids)
    return n


def batch():
    n = 0
    for i in range(0, len(docs), 1024):
        for e in tok.encode_batch(docs[i : i + 1024], add_special_tokens=False):
            n += len(e.ids)
    return n


s_single, tokens = timed(single)
s_batch, _ = timed(batch)
print(json.dumps({
    "version": tokenizers.__version__,
    "bytes": nbytes,
    "tokens": tokens,
    "single_s": s_single,
    "batch_s": s_batch,
}))
