#!/usr/bin/env python3
"""bunmind's CUDA build on the GPU machine, driven from Python through its C ABI (ctypes): no Bun,
no cargo and no package registry needed there, only the carried `dist/native/libbunmind-cuda.so`.

  python3 bench/gpu/bunmind_gpu.py info                      build + device info
  python3 bench/gpu/bunmind_gpu.py parity                    fused kernels vs the CPU reference (f32, bf16)
  python3 bench/gpu/bunmind_gpu.py train --steps 40 ...      minimind2-small training steps, timed
  python3 bench/gpu/bunmind_gpu.py nccl --steps 8 ...        data-parallel over NCCL: a world of one rank
                                                             trains exactly like no world (+ the step
                                                             time it costs); 2 ranks if 2 GPUs are visible

Every command prints one JSON object on stdout (progress on stderr). The CUDA libraries the build
links (cuBLAS/cuBLASLt 13, NVRTC 13, cuRAND 10, cudart 13, NCCL 2) are found through LD_LIBRARY_PATH
(`run.sh` sets it from the Python environment's nvidia/*/lib dirs), or preloaded here from the
same dirs; libcuda.so.1 comes from the driver.
"""
import argparse
import ctypes
import glob
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from data import synthetic_batch  # noqa: E402

DEPS = ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libnvrtc.so.13", "libcurand.so.10", "libnccl.so.2"]


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
        "bm_trainer_join": ([ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int32),
        "bm_trainer_model": ([ctypes.c_uint32, u32p], ctypes.c_int32),
        "bm_model_forward": (
            [ctypes.c_uint32, u32p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint8, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t],
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

    def step(self, h, ids, targets, mask, b, t, lr, n_micro=1):
        """One optimizer step; with n_micro > 1 the arrays hold that many [b, t] batches back to back."""
        n = n_micro * b * t
        ia, ta, ma = (ctypes.c_uint32 * n)(*ids), (ctypes.c_uint32 * n)(*targets), (ctypes.c_float * n)(*mask)
        return self.read(
            "bm_trainer_step", lambda buf, cap, ln: self.lib.bm_trainer_step(h, ia, ta, ma, n_micro, b, t, lr, buf, cap, ln)
        )

    def join(self, h, config):
        c = json.dumps(config).encode()
        self.check("bm_trainer_join", self.lib.bm_trainer_join(h, c, len(c)))

    def trainer_logits(self, h, ids, b, t, vocab):
        """Last-position logits [b·V] of the trainer's current weights on `ids`."""
        m = ctypes.c_uint32(0)
        self.check("bm_trainer_model", self.lib.bm_trainer_model(h, ctypes.byref(m)))
        try:
            out = (ctypes.c_float * (b * vocab))()
            ia = (ctypes.c_uint32 * (b * t))(*ids)
            self.check("bm_model_forward", self.lib.bm_model_forward(m.value, ia, b, t, 0, out, b * vocab))
            return list(out)
        finally:
            self.lib.bm_model_free(m.value)


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


def nccl_version():
    """NCCL's version as loaded with the library (e.g. "2.27.7"), or None."""
    try:
        v = ctypes.c_int(0)
        if ctypes.CDLL("libnccl.so.2").ncclGetVersion(ctypes.byref(v)) != 0:
            return None
        n = v.value  # 2.9+: major*10000 + minor*100 + patch
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    except OSError:
        return None


def gpu_count():
    """GPUs the driver shows this process (CUDA_VISIBLE_DEVICES applies), without loading torch."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
        n = ctypes.c_int(0)
        if cu.cuInit(0) != 0 or cu.cuDeviceGetCount(ctypes.byref(n)) != 0:
            return 0
        return n.value
    except OSError:
        return 0


def rel_diff(x, y):
    return max((abs(p - q) / max(abs(p), abs(q), 1e-12) for p, q in zip(x, y)), default=0.0)


def logits_diff(x, y):
    """Largest |x - y| relative to the largest |x|."""
    scale = max((abs(v) for v in x), default=1.0) or 1.0
    return max((abs(p - q) for p, q in zip(x, y)), default=0.0) / scale


def nccl_trainer(nat, a, device):
    model = nat.model_init({"preset": a.preset, "device": device}, a.seed)
    vocab = nat.model_info(model)["config"]["vocab_size"]
    tcfg = {"seed": a.seed, "weight_decay": 0.01, "grad_clip": 1.0}
    if a.autocast:
        tcfg["autocast"] = a.autocast
    tr = nat.trainer_new(model, tcfg)
    nat.lib.bm_model_free(model)  # the trainer keeps its own handle on the weights
    return tr, vocab


def cmd_nccl_rank(nat, a):
    """One rank of the 2-GPU check (started by `nccl`): joins, trains on its shard, reports."""
    tr, vocab = nccl_trainer(nat, a, a.device)
    t0 = time.perf_counter()
    nat.join(tr, {"backend": "nccl", "rank": a.rank, "world_size": a.world, "rendezvous": a.rendezvous, "timeout_s": 60})
    join_s = time.perf_counter() - t0
    losses = []
    for s in range(a.steps):
        ids, targets, mask = synthetic_batch(s * a.world + a.rank, a.batch, a.seq, vocab, a.seed)
        losses.append(nat.step(tr, ids, targets, mask, a.batch, a.seq, a.lr)["loss"])
    probe = synthetic_batch(10_000, 2, a.seq, vocab, a.seed)[0]
    out = {"rank": a.rank, "join_s": join_s, "losses": losses, "logits": nat.trainer_logits(tr, probe, 2, a.seq, vocab)}
    nat.lib.bm_trainer_free(tr)
    return out


def nccl_two_ranks(nat, a, deadline):
    """Two ranks on cuda:0 and cuda:1 (subprocesses), checked against one process that takes both
    ranks' batches as two micro-batches of one step (the same sum of gradients)."""
    tmp = tempfile.mkdtemp(prefix="bunmind-nccl-")
    try:
        rdv = os.path.join(tmp, "rendezvous")
        common = ["--lib", a.lib, "--preset", a.preset, "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq),
                  "--lr", str(a.lr), "--seed", str(a.seed), "--world", "2", "--rendezvous", rdv]
        if a.autocast:
            common += ["--autocast", a.autocast]
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "nccl-rank", "--rank", str(r), "--device", f"cuda:{r}", *common],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        ranks = []
        for r, p in enumerate(procs):
            try:
                so, se = p.communicate(timeout=max(5.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                return {"ok": False, "error": f"rank {r} did not finish in time"}
            try:
                ranks.append(json.loads(so.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                return {"ok": False, "error": f"rank {r} exit {p.returncode}: {se[-2000:]}"}
            if "error" in ranks[-1]:
                return {"ok": False, "error": f"rank {r}: {ranks[-1]['error']}"}
        # The reference: one process, both shards as micro-batches of each step.
        tr, vocab = nccl_trainer(nat, a, "cuda:0")
        ref = []
        for s in range(a.steps):
            b0, b1 = (synthetic_batch(s * 2 + r, a.batch, a.seq, vocab, a.seed) for r in range(2))
            ref.append(nat.step(tr, b0[0] + b1[0], b0[1] + b1[1], b0[2] + b1[2], a.batch, a.seq, a.lr, n_micro=2)["loss"])
        probe = synthetic_batch(10_000, 2, a.seq, vocab, a.seed)[0]
        ref_logits = nat.trainer_logits(tr, probe, 2, a.seq, vocab)
        compute = nat.trainer_info(tr)["compute_dtype"]
        nat.lib.bm_trainer_free(tr)
        tol = 2e-2 if compute == "bf16" else 1e-4
        out = {
            "join_s": [r["join_s"] for r in ranks],
            "losses_rank0": ranks[0]["losses"],
            "losses_reference": ref,
            "rank_loss_rel_diff": rel_diff(ranks[0]["losses"], ranks[1]["losses"]),
            "rank_logits_rel_diff": logits_diff(ranks[0]["logits"], ranks[1]["logits"]),
            "reference_loss_rel_diff": rel_diff(ranks[0]["losses"], ref),
            "reference_logits_rel_diff": logits_diff(ref_logits, ranks[0]["logits"]),
            "tolerance": tol,
        }
        # The ranks hold identical weights (same update from the same summed gradients).
        out["ok"] = out["rank_loss_rel_diff"] == 0 and out["rank_logits_rel_diff"] == 0 and \
            out["reference_loss_rel_diff"] <= tol and out["reference_logits_rel_diff"] <= tol
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_nccl(nat, a):
    """NCCL data parallelism on the GPU machine. One GPU: a trainer that joined a world of one rank
    (every all-reduce an identity) must train exactly like one that did not, and the step time
    difference is what the collectives cost. Two or more GPUs: also a 2-rank job."""
    t_start = time.perf_counter()
    deadline = t_start + a.budget
    build = nat.build_info()
    out = {"build_nccl": bool(build.get("nccl")), "nccl_version": nccl_version(), "gpus": gpu_count()}
    if not out["build_nccl"]:
        raise RuntimeError(f"this CUDA build has no NCCL (build info: {json.dumps(build)}); rebuild with `bun scripts/build-native.ts --cuda`")
    alone, vocab = nccl_trainer(nat, a, a.device)
    joined, _ = nccl_trainer(nat, a, a.device)
    tmp = tempfile.mkdtemp(prefix="bunmind-nccl-")
    try:
        t0 = time.perf_counter()
        nat.join(joined, {"backend": "nccl", "rank": 0, "world_size": 1, "rendezvous": os.path.join(tmp, "rendezvous"), "timeout_s": 60})
        out["join_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tinfo = nat.trainer_info(joined)
    out["dist"] = tinfo.get("dist")
    out["compute_dtype"] = tinfo["compute_dtype"]
    log(f"{a.preset} on {a.device}, compute {tinfo['compute_dtype']}, NCCL {out['nccl_version']}, joined {out['dist']} in {out['join_s']:.2f} s; "
        f"{a.steps} steps (+{a.warmup} warmup) of {a.batch}x{a.seq} on each trainer")
    la, lb, ga, gb, ta, tb = [], [], [], [], [], []
    for s in range(a.warmup + a.steps):
        ids, targets, mask = synthetic_batch(s, a.batch, a.seq, vocab, a.seed)
        # Alternate which trainer goes first, so neither always runs on a warmer GPU.
        order = [(alone, la, ga, ta), (joined, lb, gb, tb)]
        for tr, losses, norms, times in order if s % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            r = nat.step(tr, ids, targets, mask, a.batch, a.seq, a.lr)
            dt = time.perf_counter() - t0
            losses.append(r["loss"])
            norms.append(r["grad_norm"])
            if s >= a.warmup:
                times.append(dt)
        log(f"step {s}: loss {la[-1]:.6f} alone, {lb[-1]:.6f} joined; {ta[-1] * 1000 if ta else 0:.1f} / {tb[-1] * 1000 if tb else 0:.1f} ms")
    probe = synthetic_batch(10_000, 2, a.seq, vocab, a.seed)[0]
    logits_a = nat.trainer_logits(alone, probe, 2, a.seq, vocab)
    logits_b = nat.trainer_logits(joined, probe, 2, a.seq, vocab)
    nat.lib.bm_trainer_free(alone)
    nat.lib.bm_trainer_free(joined)
    # A world of one sums nothing: the same arithmetic, so equal up to run-to-run GPU noise.
    tol = 1e-3 if tinfo["compute_dtype"] == "bf16" else 1e-5
    ta.sort()
    tb.sort()
    med_a, med_b = ta[len(ta) // 2], tb[len(tb) // 2]
    out.update({
        "preset": a.preset,
        "batch": a.batch,
        "seq": a.seq,
        "steps": a.steps,
        "losses_alone": la,
        "losses_joined": lb,
        "loss_rel_diff": rel_diff(la, lb),
        "grad_norm_rel_diff": rel_diff(ga, gb),
        "logits_rel_diff": logits_diff(logits_a, logits_b),
        "bitwise_equal": la == lb and ga == gb and logits_a == logits_b,
        "tolerance": tol,
        "median_step_ms_alone": med_a * 1000,
        "median_step_ms_joined": med_b * 1000,
        "allreduce_overhead_ms": (med_b - med_a) * 1000,
        "allreduce_overhead_pct": (med_b / med_a - 1) * 100,
    })
    out["world1_ok"] = out["loss_rel_diff"] <= tol and out["grad_norm_rel_diff"] <= tol and out["logits_rel_diff"] <= tol
    log(f"world of one: loss diff {out['loss_rel_diff']:.1e}, logits diff {out['logits_rel_diff']:.1e} (tol {tol:.0e}) -> "
        f"{'ok' if out['world1_ok'] else 'FAILED'}; step {med_a * 1000:.1f} ms alone, {med_b * 1000:.1f} ms joined")
    if out["gpus"] >= 2:
        if time.perf_counter() > deadline - 15:
            out["two_ranks"] = {"skipped": "time budget used up"}
        else:
            out["two_ranks"] = nccl_two_ranks(nat, a, deadline)
            t2 = out["two_ranks"]
            log(f"two ranks: {'ok' if t2.get('ok') else 'FAILED'} " + (t2["error"] if "error" in t2 else
                f"(ranks differ by {t2['rank_loss_rel_diff']:.1e} in loss, {t2['rank_logits_rel_diff']:.1e} in logits; "
                f"vs one process with both batches: {t2['reference_loss_rel_diff']:.1e}, {t2['reference_logits_rel_diff']:.1e}; tol {t2['tolerance']:.0e})"))
    else:
        out["two_ranks"] = {"skipped": "one GPU" if out["gpus"] == 1 else f"{out['gpus']} GPUs visible"}
    out["ok"] = out["world1_ok"] and out["two_ranks"].get("ok", True)
    out["seconds"] = round(time.perf_counter() - t_start, 2)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["info", "parity", "train", "nccl", "nccl-rank"])
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
    p.add_argument("--budget", type=float, default=40.0, help="nccl: seconds the whole check may take")
    # nccl-rank (started by `nccl` on machines with 2+ GPUs)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--rendezvous", default=None)
    a = p.parse_args()
    try:
        nat = Native(a.lib)
        out = {"info": cmd_info, "parity": cmd_parity, "train": cmd_train, "nccl": cmd_nccl, "nccl-rank": cmd_nccl_rank}[a.command](nat, a)
    except (OSError, RuntimeError) as e:
        print(json.dumps({"error": str(e)}))
        sys.exit(1)
    print(json.dumps(out))
    if a.command in ("parity", "nccl") and not out.get("ok"):
        sys.exit(2)


if __name__ == "__main__":
    main()
