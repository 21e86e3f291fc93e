/**
 * Every `BUNMIND_*` environment variable that `src/` reads, read here and nowhere else (README,
 * "Environment variables", has the table of all of them, Rust core and bench/test scripts included).
 *
 * Each accessor reads `process.env` when it is called, not when this module loads: a test or a
 * launcher that sets a variable before the first use is seen. Variables that only bench/, tests/
 * or scripts/ read stay in those files (documented in the same table).
 */
type Env = Record<string, string | undefined>

/** A non-negative number from `name`, or `fallback` when it is unset or not a number. */
const num = (name: string, fallback: number): number => {
  const v = process.env[name]
  if (v === undefined || v.trim() === "") return fallback
  const n = Number(v)
  return Number.isFinite(n) ? n : fallback
}

/** `BUNMIND_DEBUG` (any non-empty value): the CLI prints the stack trace of an unexpected error. */
export const debug = (): boolean => Boolean(process.env.BUNMIND_DEBUG)

/** `BUNMIND_PLAIN_PROGRESS=1`: progress bars write plain log lines even on a terminal. */
export const plainProgress = (): boolean => process.env.BUNMIND_PLAIN_PROGRESS === "1"

/** `BUNMIND_API_KEY`: the key `bunmind serve` requires when `--api-key` is not given (empty = none). */
export const apiKey = (): string | undefined => process.env.BUNMIND_API_KEY || undefined

/** `BUNMIND_LIB` / `BUNMIND_CUDA_LIB`: the CPU / CUDA build of the native library to load
 *  instead of `dist/native/libbunmind-{cpu,cuda}.<so|dylib>`. */
export const libraryOverride = (kind: "cpu" | "cuda"): string | undefined => process.env[kind === "cpu" ? "BUNMIND_LIB" : "BUNMIND_CUDA_LIB"]

/** `BUNMIND_CUDA_LIB_PATH` (`:`-separated): directories searched first for the CUDA 13 libraries
 *  (cudart, cuBLAS, cuBLASLt, NVRTC, cuRAND, NCCL) when the dynamic loader does not find them. */
export const cudaLibPath = (): string[] => (process.env.BUNMIND_CUDA_LIB_PATH ?? "").split(":").filter((d) => d !== "")

/**
 * A rank process's place in a data-parallel job: `BUNMIND_RANK`, `BUNMIND_WORLD_SIZE`,
 * `BUNMIND_LOCAL_RANK` (set by the launcher, `src/train/launch.ts`), falling back to torchrun's
 * `RANK`, `WORLD_SIZE`, `LOCAL_RANK`. Raw strings; `distEnv` parses and checks them.
 */
export const rankVars = (env: Env = process.env) => ({
  rank: env.BUNMIND_RANK ?? env.RANK,
  worldSize: env.BUNMIND_WORLD_SIZE ?? env.WORLD_SIZE,
  localRank: env.BUNMIND_LOCAL_RANK ?? env.LOCAL_RANK,
})

/** `BUNMIND_DIST_BACKEND` (set by the launcher): `nccl` (default) or `tcp`. */
export const distBackend = (): "nccl" | "tcp" => (process.env.BUNMIND_DIST_BACKEND === "tcp" ? "tcp" : "nccl")

/** `BUNMIND_RENDEZVOUS` (set by the launcher): the file through which rank 0 publishes the job's address. */
export const rendezvousFile = (): string | undefined => process.env.BUNMIND_RENDEZVOUS

/** `BUNMIND_DIST_TIMEOUT`: seconds a rank waits for the others (0 or unset: the engine's default, 600). */
export const distTimeoutS = (): number => num("BUNMIND_DIST_TIMEOUT", 0)

/** `BUNMIND_DIST_GRACE`: seconds the launcher gives its ranks, once it has asked them to stop (Ctrl-C, end
 *  of the job), to finish the step and exit before it terminates them (default 300). */
export const distGraceS = (): number => num("BUNMIND_DIST_GRACE", 300)

/** `BUNMIND_DIST_STOP_AT=k` (test hook): rank 0 asks every rank to stop after step k, as Ctrl-C would (0 = off). */
export const distStopAt = (): number => num("BUNMIND_DIST_STOP_AT", 0)
