#!/usr/bin/env bash
# bunmind on a GPU machine (H100/H200, CUDA 13.0 driver, PyTorch 2.11+cu130, no package registry),
# in one go and under ~8 minutes: loads the carried CUDA build, runs the kernel parity checks,
# trains minimind2-small for a fixed number of steps, and benchmarks it against PyTorch
# (bf16 autocast + SDPA) on the same model, batch and sequence length; checks data parallelism
# over NCCL (a world of one rank trains exactly like no world; two ranks if two GPUs are visible).
#
#   bash bench/gpu/run.sh                  # from the repository root
#
# Needs: dist/native/libbunmind-cuda.so or its .gz (~15 MB; built elsewhere with
# `bun scripts/build-native.ts --cuda` and carried over), python3 with torch (its nvidia-* wheels provide cuBLAS, NVRTC, cuRAND,
# cudart 13 in nvidia/cu13/lib and NCCL 2 in nvidia/nccl/lib). Writes $OUT (or bench/reports/gpu) /gpu-report.json and gpu-report.md.
# Knobs: STEPS (40), BATCH (16), SEQ (512), WARMUP (5), SKIP_TORCH=1, SKIP_F32=1.
set -u
cd "$(dirname "$0")/../.."
OUTDIR="${OUT:-bench/reports/gpu}"
mkdir -p "$OUTDIR"
for n in info parity bunmind-bf16 torch-bf16 nccl bunmind-bf16-opchains bunmind-f32 torch-f32 gpu-report; do rm -f "$OUTDIR/$n.json" "$OUTDIR/$n.log"; done
STEPS="${STEPS:-40}" BATCH="${BATCH:-16}" SEQ="${SEQ:-512}" WARMUP="${WARMUP:-5}"
LIB="${BUNMIND_CUDA_LIB:-dist/native/libbunmind-cuda.so}"
PY="${PYTHON:-python3}"
log() { echo "[gpu/run.sh $(date +%T)] $*" >&2; }

# Each step under its own time limit, so one hang cannot eat the whole budget, and never past
# DEADLINE seconds since the start (default 450: the machine is lent for ≤ 8 minutes per command).
DEADLINE="${DEADLINE:-450}"
step() { # name seconds command...
  local name="$1" secs="$2"; shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then
    log "$name: skipped (time budget: ${SECONDS}s of ${DEADLINE}s used)"
    echo "{\"error\": \"skipped: time budget used up\"}" >"$OUTDIR/$name.json"
    return 0
  fi
  [ "$secs" -gt "$left" ] && secs="$left"
  log "$name (limit ${secs}s)"
  timeout --kill-after=10 "$secs" "$@" >"$OUTDIR/$name.json" 2>"$OUTDIR/$name.log"
  local rc=$?
  tail -n 40 "$OUTDIR/$name.log" >&2
  [ $rc -eq 124 ] && echo "{\"error\": \"timed out after ${secs}s\"}" >"$OUTDIR/$name.json"
  [ -s "$OUTDIR/$name.json" ] || echo "{\"error\": \"exit $rc, no output (see $name.log)\"}" >"$OUTDIR/$name.json"
  log "$name: exit $rc"
  return 0
}

log "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; } | tee "$OUTDIR/nvidia-smi.txt" >&2
$PY -c 'import torch,sys; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), file=sys.stderr)' || true

if [ ! -f "$LIB" ] && [ -f "$LIB.gz" ]; then
  log "unpacking $LIB.gz"
  gzip -dc "$LIB.gz" >"$LIB.tmp" && mv "$LIB.tmp" "$LIB"
fi
if [ ! -f "$LIB" ]; then
  log "no CUDA build at $LIB(.gz): build it with \`bun scripts/build-native.ts --cuda\` and carry dist/native/libbunmind-cuda.so.gz"
  exit 1
fi
ls -la "$LIB" >&2

# The CUDA 13 libraries of the Python environment (PyTorch's nvidia-* wheels: nvidia/cu13/lib,
# nvidia/nccl/lib, ...), for the dynamic loader.
NV_LIBS="$($PY - <<'PYEOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = []
for r in roots:
    dirs += glob.glob(os.path.join(r, "nvidia", "*", "lib"))
print(":".join(d for d in dict.fromkeys(dirs) if os.path.isdir(d)))
PYEOF
)"
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
{ ldd "$LIB" | grep -E "cuda|cublas|nvrtc|curand|nccl|not found" || true; } >&2

B="bench/gpu/bunmind_gpu.py"
ARGS=(--steps "$STEPS" --batch "$BATCH" --seq "$SEQ" --warmup "$WARMUP")
step info 45 $PY "$B" info
step parity 120 $PY "$B" parity
step bunmind-bf16 120 $PY "$B" train --autocast bf16 "${ARGS[@]}"
[ "${SKIP_TORCH:-0}" = 1 ] || step torch-bf16 90 $PY bench/gpu/torch_bench.py --dtype bf16 "${ARGS[@]}"
# Data parallelism over NCCL: joined (world of one) vs alone, same batches; 2 ranks with 2+ GPUs.
step nccl 45 $PY "$B" nccl --autocast bf16 --steps 8 --warmup 3 --batch 8 --seq 256 --budget 38
# The same bunmind run with candle's op chains instead of bunmind's kernels (A/B of the kernels).
BUNMIND_CUDA_FUSED=0 step bunmind-bf16-opchains 60 $PY "$B" train --autocast bf16 --steps 12 --warmup 3 --batch "$BATCH" --seq "$SEQ"
if [ "${SKIP_F32:-0}" != 1 ]; then
  step bunmind-f32 60 $PY "$B" train --autocast f32 --steps 12 --warmup 3 --batch "$BATCH" --seq "$SEQ"
  [ "${SKIP_TORCH:-0}" = 1 ] || step torch-f32 45 $PY bench/gpu/torch_bench.py --dtype f32 --steps 12 --warmup 3 --batch "$BATCH" --seq "$SEQ"
fi

$PY - "$OUTDIR" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
runs = {}
for name in ["info", "parity", "bunmind-bf16", "torch-bf16", "nccl", "bunmind-bf16-opchains", "bunmind-f32", "torch-f32"]:
    f = os.path.join(out, name + ".json")
    if os.path.exists(f):
        try:
            runs[name] = json.loads(open(f).read().strip().splitlines()[-1])
        except Exception as e:
            runs[name] = {"error": f"unreadable: {e}"}
json.dump(runs, open(os.path.join(out, "gpu-report.json"), "w"), indent=1)
lines = ["# bunmind on the GPU", ""]
p = runs.get("parity", {})
if "rows" in p:
    bad = [r for r in p["rows"] if not r["ok"]]
    lines.append(f"Kernel parity vs the CPU reference: {'all ' + str(len(p['rows'])) + ' checks ok' if not bad else str(len(bad)) + ' FAILED'} (tolerance f32 1e-4, bf16 2e-2, relative to each tensor's scale)")
    for r in bad:
        lines.append(f"- FAILED {r['op']} {r['dtype']} {r['what']}: rel {r['rel_err']:.2e} > {r['tol']:.0e}")
else:
    lines.append(f"Kernel parity: {p.get('error', 'not run')}")
lines += ["", "| run | compute | batch×seq | median step (ms) | tokens/s | loss first → last |", "|---|---|---|---|---|---|"]
for name in ["bunmind-bf16", "torch-bf16", "bunmind-bf16-opchains", "bunmind-f32", "torch-f32"]:
    r = runs.get(name)
    if not r:
        continue
    if "error" in r:
        lines.append(f"| {name} | error: {r['error'][:120]} | | | | |")
        continue
    lines.append(f"| {name} ({r['engine']}) | {r['compute_dtype']} | {r['batch']}×{r['seq']} | {r['median_step_s'] * 1000:.1f} | {r['tokens_per_s']:,.0f} | {r['loss_first']:.3f} → {r['loss_last']:.3f} |")
n = runs.get("nccl", {})
if "world1_ok" in n:
    t2 = n.get("two_ranks", {})
    two = t2.get("skipped") or ("ok" if t2.get("ok") else f"FAILED {t2.get('error', t2)}")
    lines += ["", f"NCCL {n.get('nccl_version')} (world of one rank, {n['compute_dtype']}, {n['batch']}×{n['seq']}): "
              f"{'same training as without NCCL' if n['world1_ok'] else 'DIFFERS from training without NCCL'} "
              f"(loss rel diff {n['loss_rel_diff']:.1e}, logits {n['logits_rel_diff']:.1e}, bitwise {n['bitwise_equal']}); "
              f"step {n['median_step_ms_alone']:.1f} ms alone, {n['median_step_ms_joined']:.1f} ms joined "
              f"({n['allreduce_overhead_pct']:+.1f}%); two ranks: {two}"]
elif n:
    lines += ["", f"NCCL: {n.get('error', 'no result')}"]
b, t = runs.get("bunmind-bf16", {}), runs.get("torch-bf16", {})
if "tokens_per_s" in b and "tokens_per_s" in t:
    lines += ["", f"bunmind / PyTorch throughput (bf16): {b['tokens_per_s'] / t['tokens_per_s']:.2f}×"]
open(os.path.join(out, "gpu-report.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
log "report: $OUTDIR/gpu-report.md"
