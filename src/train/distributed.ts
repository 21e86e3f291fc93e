/**
 * Data-parallel training (`--nproc N`): one process per GPU; every optimizer step's gradients are
 * summed over the ranks (NCCL all-reduce) before clipping and AdamW, so every rank applies the
 * same update to the same weights.
 *
 * - Launch (launch.ts): the parent prepares the data once, then starts N copies of
 *   `src/train/rank-main.ts` with `BUNMIND_RANK=r BUNMIND_WORLD_SIZE=N BUNMIND_LOCAL_RANK=r`
 *   (torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK` are read too), device `cuda:r`.
 * - Rendezvous (core-rs/engine/src/dist): rank 0 writes the NCCL unique id (or, for the `tcp`
 *   backend, its address) atomically to `<stage dir>/dist/rendezvous`; the other ranks wait for
 *   the file, then all join.
 * - Data: a step is `--batch-size × --accum` sequences whatever N is (the sampler, hence resume,
 *   is that of a single process); rank r trains on the r-th contiguous share
 *   ({@link rankMicroBatches}). The loss is a token mean over the whole step, so the
 *   update equals a single process's, and a run resumes with any N that divides the step.
 * - Step: backward per rank → one all-reduce of the control values (loss sum, tokens, stop
 *   requests, which parameters got a gradient) and one of the gradients → clip + AdamW.
 * - Output: rank 0 alone writes metrics, the progress bar, checkpoints and the published model.
 * - Ctrl-C: the launcher asks every rank to stop; they finish the same step and rank 0 writes the
 *   checkpoint.
 * - Backends: `nccl` (GPUs, the default) and `tcp` (host memory over sockets: runs anywhere,
 *   slowly; it exists so the whole path can be tested on a CPU-only machine).
 */
import { loadNativeSync, type Device } from "../native/library.ts"
import type { StageOptions } from "./options.ts"
import { rankVars } from "../util/env.ts"

/** How the ranks exchange gradients: NCCL on GPUs, or plain sockets (CPU; for testing). */
export type DistBackend = "nccl" | "tcp"

export interface DistEnv {
  readonly rank: number
  readonly worldSize: number
  readonly localRank: number
}

const int = (v: string | undefined): number | undefined => (v !== undefined && /^\d+$/.test(v.trim()) ? Number(v.trim()) : undefined)

/** The rank environment of this process (single process when none is set); errors on inconsistent values. */
export function distEnv(env: Record<string, string | undefined> = process.env): DistEnv {
  const vars = rankVars(env)
  const rank = int(vars.rank) ?? 0
  const worldSize = int(vars.worldSize) ?? 1
  const localRank = int(vars.localRank) ?? rank
  if (worldSize < 1) throw new RangeError(`world size ${worldSize}: must be ≥ 1`)
  if (rank >= worldSize) throw new RangeError(`rank ${rank} is outside a world of ${worldSize} processes`)
  return { rank, worldSize, localRank }
}

/** The device a rank trains on: `cuda:<localRank>` for a GPU job (`stage` = the job's device), the CPU otherwise. */
export const rankDevice = (d: DistEnv, stage: Device): Device => (stage === "cpu" ? "cpu" : `cuda:${d.localRank}`)

/** What the machine offers for `--nproc` (from the CUDA library's build and device info). */
export interface NprocFacts {
  /** The CUDA library loaded, or why not. */
  readonly cuda: { ok: true; gpus: number; nccl: boolean } | { ok: false; reason: string }
}

/**
 * Why `--nproc n` on `device` cannot run here, or null when it can. Cheap checks first (the
 * count, the device), then the facts (loaded lazily: only when the device is CUDA and n > 1).
 */
export function nprocProblem(n: number, device: Device, facts: () => NprocFacts, backend: DistBackend = "nccl"): string | null {
  if (!(Number.isInteger(n) && n >= 1)) return `--nproc ${n}: must be a positive integer (the number of GPUs to train on)`
  if (n === 1) return null
  if (backend === "tcp") return device === "cpu" || device === "cuda" || device === "cuda:0" ? null : `--nproc ${n}: ranks use cuda:0..cuda:${n - 1}, so pass --device cuda, not --device ${device}`
  const what = `--nproc ${n}: data-parallel training runs one process per GPU and sums the gradients over them with NCCL, so it needs --device cuda, the CUDA build of the library (with NCCL) and ${n} GPUs`
  if (device === "cpu") {
    return `${what}; this run is on the CPU: leave out --nproc (or use --nproc 1). (To try the data-parallel path on the CPU anyway, slowly, add --dist-backend tcp.)`
  }
  if (device !== "cuda" && device !== "cuda:0") return `${what}; ranks use cuda:0..cuda:${n - 1}, so pass --device cuda, not --device ${device}`
  const f = facts().cuda
  if (!f.ok) return `${what}: ${f.reason}`
  if (f.gpus < n) return `${what}; this machine has ${f.gpus} GPU(s)`
  if (!f.nccl) return `${what}; this CUDA build has no NCCL: rebuild it with \`bun scripts/build-native.ts --cuda\`, or use --nproc 1`
  return null
}

/** {@link NprocFacts} of this machine: loads the CUDA library and asks it for the GPUs. */
export function machineFacts(): NprocFacts {
  try {
    const lib = loadNativeSync("cuda")
    const info = lib.openDevice("cuda:0")
    const build = lib.buildInfo() as { nccl?: boolean }
    return { cuda: { ok: true, gpus: info.gpus.length, nccl: build.nccl === true } }
  } catch (e) {
    return { cuda: { ok: false, reason: (e as Error).message } }
  }
}

/**
 * The rows of one optimizer step that a rank trains on, as micro-batches. A step is always
 * `batchSize × accum` sequences whatever the number of ranks (the global batch of a single
 * process); each of `worldSize` ranks takes a contiguous share and splits it into micro-batches of
 * at most `batchSize` rows. The loss is a token mean over the whole step and the gradients are
 * summed over the ranks, so the update does not depend on the split: a run can resume with a
 * different number of GPUs. A short step (the end of an epoch) that does not split evenly gives
 * the first ranks one row more; a rank may then get no rows at all.
 */
export function rankMicroBatches(stepIndices: ArrayLike<number>, batchSize: number, rank: number, worldSize: number): number[][] {
  const total = stepIndices.length
  const from = Math.floor((rank * total) / worldSize)
  const share = Math.floor(((rank + 1) * total) / worldSize) - from
  const mine = Array.from({ length: share }, (_, i) => stepIndices[from + i]!)
  if (share === 0) return []
  if (total % worldSize === 0) {
    // Even split: equal micro-batches (fixed shapes on every rank).
    let m = Math.min(batchSize, share)
    while (share % m !== 0) m--
    return Array.from({ length: share / m }, (_, k) => mine.slice(k * m, (k + 1) * m))
  }
  const parts = Math.ceil(share / batchSize)
  return Array.from({ length: parts }, (_, k) => mine.slice(Math.floor((k * share) / parts), Math.floor(((k + 1) * share) / parts)))
}

/** Why `worldSize` ranks cannot split this stage's steps, or null. */
export function rankSplitProblem(o: Pick<StageOptions, "batchSize" | "accum" | "accumMean">, worldSize: number): string | null {
  if (worldSize > 1 && o.accumMean === "micro")
    return `--accum-mean micro averages per-micro-batch means, which depend on how ranks split a step: use the default token mean with --nproc ${worldSize}`
  const total = o.batchSize * o.accum
  return total % worldSize === 0
    ? null
    : `--nproc ${worldSize} must divide the sequences of one optimizer step (--batch-size ${o.batchSize} × --accum ${o.accum} = ${total}): e.g. --accum ${o.accum * worldSize}`
}
