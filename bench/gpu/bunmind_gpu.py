#!/usr/bin/env python3
"""bunmind's CUDA build on the GPU machine, driven from Python through its C ABI (ctypes): no Bun,
no cargo and no package registry needed there, only the carried `dist/native/libbunmind-cuda.so`.

  python3 bench/gpu/bunmind_gpu.py info                      build + device info
  python3 bench/gpu/bunmind_gpu.py parity                    fused kernels vs the CPU reference (f32, bf16)
  python3 bench/gpu/bunmind_gpu.py train --steps 40 ...      minimind2-small training steps, timed

Every command prints one JSON object on stdout (progress on stderr). The CUDA libraries the build
links (cuBLAS/cuBLASLt 13, NVRTC 13, cuRAND 10, cudart 13) are found through LD_LIBRARY_PATH
(`run.sh` sets it from the Python environment's nvidia/*/lib dirs), or preloaded here from the
same dirs; libcuda.so.1 comes from the driver.
"""
import argparse
import ctypes
import glob
import json
import os
import site
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from data import synthetic_batch  # noqa: E402

DEPS = ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libnvrtc.so.13", "libcurand.so.10"]


def nvidia_lib_dirs():
    roots = site.getsitepackages() + [site.getusersitepackages()]
    dirs = []
    for r in roots:
        dirs += glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "nvidia", "cu13", "lib"))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def load_library(path):
    for dep in DEPS:  # a library already loaded under its soname satisfies the dependency
        for d in nvidia_lib_dirs():
            f = os.path.join(d, dep)
            if os.path.exists(f):
                try:
                    ctypes.CDLL(f, mode=ctypes.RTLD_GLOBAL)
                    break
                except OSError:
                    pass
    lib = ctypes.CDLL(path)
    u8p, u32p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_uint32)
    sig = {
        "bm_abi_version": ([], ctypes.c_uint32),
        "bm_last_error": ([ctypes.c_char_p, ctypes.c_size_t], ctypes.c_size_t),
        "bm_build_info": ([ctypes.c_char_p, ctypes.c_size_t, u32p], ctypes.c_int32),
        "bm_device_info": ([ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, u32p], ctypes.c_int32),
        "bm_parity_check": ([ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, u32p], ctypes.c_int32),
        "bm_model_init": ([ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64, u32p], ctypes.c_int32),
        "bm_model_free": ([ctypes.c_uint32], ctypes.c_int32),
        "bm_model_info": ([ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t, u32p], ctypes.c_int32),
        "bm_trainer_new": ([ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_uint32, u32p], ctypes.c_int32),
        "bm_trainer_free": ([ctypes.c_uint32], ctypes.c_int32),
        "bm_trainer_info": ([ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t, u32p], ctypes.c_int32),
        "bm_trainer_step": (
            [ctypes.c_uint32, u32p, u32p, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t,
             ctypes.c_double, ctypes.c_char_p, ctypes.c_size_t, u32p],
            ctypes.c_int32,
        ),
        "bm_trainer_eval": (
            [ctypes.c_uint32, u32p, u32p, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_double)],
            ctypes.c_int32,
        ),
    }
    for name, (args, ret) in sig.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, ret
    del u8p
    return lib


class Native:
    def __init__(self, path):
        self.lib = load_library(path)
        self.path = path

    def error(self):
        buf = ctypes.create_string_buffer(8192)
        n = self.lib.bm_last_error(buf, len(buf))
        return buf.raw[: min(n, len(buf))].decode("utf-8", "replace")

    def check(self, fn, code):
        if code != 0:
            raise RuntimeError(f"{fn}: {self.error()}")

    def read(self, fn, call, cap=1 << 16):
        n = ctypes.c_uint32(0)
        for _ in range(3):
            buf = ctypes.create_string_buffer(cap)
            code = call(buf, cap, ctypes.byref(n))
            if code == 2:  # BUFFER_TOO_SMALL
                cap = max(n.value, cap * 2)
                continue
            self.check(fn, code)
            return json.loads(buf.raw[: n.value].decode())
        raise RuntimeError(f"{fn}: output kept growing")

    def build_info(self):
        return self.read("bm_build_info", lambda b, c, n: self.lib.bm_build_info(b, c, n))

    def device_info(self, dev):
        d = dev.encode()
        return self.read("bm_device_info", lambda b, c, n: self.lib.bm_device_info(d, len(d), b, c, n))

    def parity(self, dev):
        d = dev.encode()
        return self.read("bm_parity_check", lambda b, c, n: self.lib.bm_parity_check(d, len(d), b, c, n), 1 << 20)

    def model_init(self, config, seed):
        c = json.dumps(config).encode()
        h = ctypes.c_uint32(0)
        self.check("bm_model_init", self.lib.bm_model_init(c, len(c), seed, ctypes.byref(h)))
        return h.value

    def model_info(self, h):
        return self.read("bm_model_info", lambda b, c, n: self.lib.bm_model_info(h, b, c, n))

    def trainer_new(self, model, config):
        c = json.dumps(config).encode()
        h = ctypes.c_uint32(0)
        self.check("bm_trainer_new", self.lib.bm_trainer_new(model, c, len(c), 0, 0, ctypes.byref(h)))
        return h.value

    def trainer_info(self, h):
        return self.read("bm_trainer_info", lambda b, c, n: self.lib.bm_trainer_info(h, b, c, n))

    def step(self, h, ids, targets, mask, b, t, lr):
        n = b * t
        ia, ta, ma = (ctypes.c_uint32 * n)(*ids), (ctypes.c_uint32 * n)(*targets), (ctypes.c_float * n)(*mask)
        return self.read(
            "bm_trainer_step", lambda buf, cap, ln: self.lib.bm_trainer_step(h, ia, ta, ma, 1, b, t, lr, buf, cap, ln)
        )


def log(msg):
    print(f"[bunmind-gpu] {msg}", file=sys.stderr, flush=True)


def cmd_info(nat, a):
    out = {"library": nat.path, "abi": nat.lib.bm_abi_version(), "build": nat.build_info()}
    try:
        out["device"] = nat.device_info(a.device)
    except RuntimeError as e:
        out["device_error"] = str(e)
    return out


def cmd_parity(nat, a):
    t0 = time.perf_counter()
    r = nat.parity(a.device)
    r["seconds"] = round(time.perf_counter() - t0, 2)
    for row in r["rows"]:
        flag = "ok " if row["ok"] else "BAD"
        log(f"{flag} {row['op']:<24} {row['dtype']:<10} {row['what']:<14} rel {row['rel_err']:.2e} (tol {row['tol']:.0e})")
    return r


def cmd_train(nat, a):
    cfg = {"preset": a.preset, "device": a.device}
    model = nat.model_init(cfg, a.seed)
    info = nat.model_info(model)
    vocab = info["config"]["vocab_size"]
    tcfg = {"seed": a.seed, "weight_decay": 0.01, "grad_clip": 1.0}
    if a.autocast:
        tcfg["autocast"] = a.autocast
    tr = nat.trainer_new(model, tcfg)
    tinfo = nat.trainer_info(tr)
    log(f"{a.preset}: {info['num_parameters'] / 1e6:.1f}M params on {info['device']}, compute {tinfo['compute_dtype']}, "
        f"batch {a.batch}x{a.seq}, {a.steps} steps (+{a.warmup} warmup)")
    losses, times = [], []
    for s in range(a.warmup + a.steps):
        ids, targets, mask = synthetic_batch(s, a.batch, a.seq, vocab, a.seed)
        t0 = time.perf_counter()
        r = nat.step(tr, ids, targets, mask, a.batch, a.seq, a.lr)  # returns after the loss is on the host
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
        losses.append(r["loss"])
        if s % 10 == 0 or s == a.warmup + a.steps - 1:
            log(f"step {s}: loss {r['loss']:.4f} grad_norm {r['grad_norm']:.3f} {dt * 1000:.1f} ms")
    nat.lib.bm_trainer_free(tr)
    nat.lib.bm_model_free(model)
    times.sort()
    med = times[len(times) // 2]
    return {
        "engine": "bunmind (candle CUDA, bunmind kernels)" if os.environ.get("BUNMIND_CUDA_FUSED", "1") != "0" else "bunmind (candle CUDA, op chains)",
        "preset": a.preset,
        "params": info["num_parameters"],
        "compute_dtype": tinfo["compute_dtype"],
        "batch": a.batch,
        "seq": a.seq,
        "steps": a.steps,
        "median_step_s": med,
        "mean_step_s": sum(times) / len(times),
        "tokens_per_s": a.batch * a.seq / med,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["info", "parity", "train"])
    p.add_argument("--lib", default=os.environ.get("BUNMIND_CUDA_LIB", os.path.join(REPO, "dist", "native", "libbunmind-cuda.so")))
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--preset", default="minimind2-small")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--autocast", choices=["bf16", "f32"], default=None)
    a = p.parse_args()
    try:
        nat = Native(a.lib)
        out = {"info": cmd_info, "parity": cmd_parity, "train": cmd_train}[a.command](nat, a)
    except (OSError, RuntimeError) as e:
        print(json.dumps({"error": str(e)}))
        sys.exit(1)
    print(json.dumps(out))
    if a.command == "parity" and not out.get("ok"):
        sys.exit(2)


if __name__ == "__main__":
    main()
