"""Runs GGUF files through the real llama.cpp (llama-cpp-python) for tests/interop-gguf.test.ts.

stdin: JSON {"jobs": [{"gguf": path, "ids": [int], "greedy": n}], "tokenize": [{"gguf": path,
"tokenizer_json": path, "texts": [str]}]}.
stdout: JSON {"jobs": [{"logits": [[float] per position], "greedy": [int], "n_vocab": int,
"arch": str}], "tokenize": [{"llama": [[int]], "llama_special": [[int]], "hf": [[int]],
"hf_special": [[int]], "llama_detok": [str], "hf_detok": [str]}]}.

llama.cpp runs on the CPU with an f32 KV cache and logits for every position; greedy decoding is
argmax over llama.cpp's own logits, one token at a time through its KV cache.
"""
import json
import sys

import numpy as np
from llama_cpp import Llama, llama_cpp as C


def run_job(job):
    ids = job["ids"]
    n_greedy = job.get("greedy", 0)
    llm = Llama(
        model_path=job["gguf"],
        n_ctx=max(64, len(ids) + n_greedy + 8),
        n_batch=max(64, len(ids)),
        n_threads=2,
        n_threads_batch=2,
        logits_all=True,
        type_k=C.GGML_TYPE_F32,
        type_v=C.GGML_TYPE_F32,
        n_gpu_layers=0,
        seed=0,
        verbose=False,
    )
    arch = llm.metadata.get("general.architecture")
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    greedy = []
    last = logits[-1]
    for _ in range(n_greedy):
        tok = int(np.argmax(last))
        greedy.append(tok)
        llm.eval([tok])
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    out = {"logits": logits.tolist(), "greedy": greedy, "n_vocab": llm.n_vocab(), "arch": arch}
    llm.close()
    return out


def run_tokenize(job):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(job["tokenizer_json"])
    llm = Llama(model_path=job["gguf"], vocab_only=True, verbose=False)
    out = {"llama": [], "llama_special": [], "hf": [], "hf_special": [], "llama_detok": [], "hf_detok": []}
    for text in job["texts"]:
        b = text.encode("utf-8")
        # parse special tokens in both (HF always matches added tokens in text).
        lt = llm.tokenize(b, add_bos=False, special=True)
        out["llama"].append(lt)
        out["llama_special"].append(llm.tokenize(b, add_bos=True, special=True))
        out["hf"].append(hf.encode(text, add_special_tokens=False).ids)
        out["hf_special"].append(hf.encode(text, add_special_tokens=True).ids)
        out["llama_detok"].append(llm.detokenize(lt, special=True).decode("utf-8", errors="replace"))
        out["hf_detok"].append(hf.decode(out["hf"][-1], skip_special_tokens=False))
    llm.close()
    return out


def main():
    req = json.load(sys.stdin)
    res = {"jobs": [run_job(j) for j in req.get("jobs", [])], "tokenize": [run_tokenize(t) for t in req.get("tokenize", [])]}
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
