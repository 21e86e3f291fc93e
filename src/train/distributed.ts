/**
 * Data-parallel training (`--nproc N`): one process per GPU, gradients averaged with an NCCL
 * all-reduce before clipping and AdamW, so every rank applies the same update.
 *
 * What works today is the part that needs no GPU: checking `--nproc` (on the CPU, without the
 * CUDA build, without NCCL in the build or with fewer GPUs than N it fails with a message that
 * says which of these is missing), the rank environment, and the per-rank data sharding. The
 * launch and the all-reduce are designed below and not built yet (the CUDA library has no NCCL):
 *
 * - Launch: the parent validates, then spawns N copies of the same command with `--nproc 1` and
 *   `BUNMIND_RANK=r BUNMIND_WORLD_SIZE=N BUNMIND_LOCAL_RANK=r` (torchrun's `RANK`, `WORLD_SIZE`,
 *   `LOCAL_RANK` are read too), device `cuda:r`, and forwards SIGINT/SIGTERM; its exit status is
 *   the first failing rank's.
 * - NCCL id: rank 0 calls `ncclGetUniqueId`, writes the 128 bytes atomically to
 *   `<stage dir>/nccl-id` (`BUNMIND_NCCL_ID_FILE`); the other ranks poll for the file (timeout),
 *   then all call `ncclCommInitRank(N, id, r)`. The file is removed when the stage ends.
 * - Data: every rank runs the same seeded global sampler with batch `b·N` and takes its own
 *   contiguous slice ({@link shardIndices}); the sampler state (hence resume) is the same on every
 *   rank and equals a single process's with batch `b·N`.
 * - Step: backward per rank → all-reduce(sum)/N of every gradient and of the loss/token sums →
 *   clip + AdamW (identical on every rank).
 * - Output: rank 0 alone writes metrics, the progress bar, checkpoints and the published model;
 *   other ranks are quiet ({@link isLogger}).
 */
import { loadNativeSync, type Device } from "../native/library.ts"

export interface DistEnv {
  readonly rank: number
  readonly worldSize: number
  readonly localRank: number
  /** Where rank 0 publishes the NCCL unique id (see the module doc). */
  readonly ncclIdFile?: string
}

const int = (v: string | undefined): number | undefined => (v !== undefined && /^\d+$/.test(v.trim()) ? Number(v.trim()) : undefined)

/** The rank environment of this process (single process when none is set); errors on inconsistent values. */
export function distEnv(env: Record<string, string | undefined> = process.env): DistEnv {
  const rank = int(env.BUNMIND_RANK ?? env.RANK) ?? 0
  const worldSize = int(env.BUNMIND_WORLD_SIZE ?? env.WORLD_SIZE) ?? 1
  const localRank = int(env.BUNMIND_LOCAL_RANK ?? env.LOCAL_RANK) ?? rank
  if (worldSize < 1) throw new RangeError(`world size ${worldSize}: must be ≥ 1`)
  if (rank >= worldSize) throw new RangeError(`rank ${rank} is outside a world of ${worldSize} processes`)
  return { rank, worldSize, localRank, ...(env.BUNMIND_NCCL_ID_FILE ? { ncclIdFile: env.BUNMIND_NCCL_ID_FILE } : {}) }
}

/** Whether this rank writes logs, metrics and checkpoints (rank 0 only). */
export const isLogger = (d: DistEnv): boolean => d.rank === 0

/** The device a rank trains on: `cuda:<localRank>`. */
export const rankDevice = (d: DistEnv): Device => `cuda:${d.localRank}`

/**
 * Rank `rank`'s share of a global batch of `batchSize · worldSize` sample indices: the contiguous
 * slice `[rank·b, (rank+1)·b)`. The union over ranks is the global batch, with no overlap.
 */
export function shardIndices(global: ArrayLike<number>, rank: number, worldSize: number): Uint32Array {
  if (!(Number.isInteger(worldSize) && worldSize >= 1)) throw new RangeError(`world size ${worldSize}: must be a positive integer`)
  if (!(Number.isInteger(rank) && rank >= 0 && rank < worldSize)) throw new RangeError(`rank ${rank} outside 0..${worldSize - 1}`)
  if (global.length % worldSize !== 0) {
    throw new RangeError(`a global batch of ${global.length} does not split evenly over ${worldSize} ranks`)
  }
  const b = global.length / worldSize
  return Uint32Array.from({ length: b }, (_, i) => global[rank * b + i]!)
}

/** What the machine offers for `--nproc` (from the CUDA library's build and device info). */
export interface NprocFacts {
  /** The CUDA library loaded, or why not. */
  readonly cuda: { ok: true; gpus: number; nccl: boolean } | { ok: false; reason: string }
}

/**
 * Why `--nproc n` on `device` cannot run here, or null when it can. Cheap checks first (the
 * count, the device), then the facts (loaded lazily: only when the device is CUDA and n > 1).
 */
export function nprocProblem(n: number, device: Device, facts: () => NprocFacts): string | null {
  if (!(Number.isInteger(n) && n >= 1)) return `--nproc ${n}: must be a positive integer (the number of GPUs to train on)`
  if (n === 1) return null
  const what = `--nproc ${n}: data-parallel training runs one process per GPU and averages the gradients with NCCL, so it needs --device cuda, the CUDA build of the library (with NCCL) and ${n} GPUs`
  if (device === "cpu") return `${what}; this run is on the CPU: leave out --nproc (or use --nproc 1)`
  if (device !== "cuda" && device !== "cuda:0") return `${what}; ranks use cuda:0..cuda:${n - 1}, so pass --device cuda, not --device ${device}`
  const f = facts().cuda
  if (!f.ok) return `${what}: ${f.reason}`
  if (f.gpus < n) return `${what}; this machine has ${f.gpus} GPU(s)`
  if (!f.nccl) return `${what}; this CUDA build has no NCCL support yet (data-parallel training is designed but not built): use --nproc 1`
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
