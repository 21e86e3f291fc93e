/** Shared setup for the edge (wasm) tests and bench: the wasm build, random checkpoints, native references. */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { repo, shared } from "./cli.ts"

export const outDir = resolve(repo, "tests/.out/edge")
export const pkgDir = resolve(repo, "dist/wasm/pkg")
export const minimindTokenizer = join(shared, "minimind")
export const parityFile = resolve(repo, "tests/fixtures/tokenizer/minimind_parity.json")

function sh(cmd: string[], what: string, cwd = repo, env: Record<string, string> = {}): string {
  const p = Bun.spawnSync(cmd, { cwd, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" })
  if (p.exitCode !== 0) throw new Error(`${what} failed (exit ${p.exitCode}): ${cmd.join(" ")}\n${p.stderr.toString().slice(-4000)}`)
  return p.stdout.toString()
}

/** Builds dist/wasm/pkg (+ pkg-nosimd) when missing. */
export function ensureWasm(): void {
  if (existsSync(join(pkgDir, "bunmind_wasm_bg.wasm")) && existsSync(resolve(pkgDir, "../pkg-nosimd/bunmind_wasm_bg.wasm"))) return
  sh([process.execPath, "scripts/build-wasm.ts"], "wasm build (bun scripts/build-wasm.ts)")
}

/** Runs the engine's native `edge_tools` example (release build; honours CARGO_TARGET_DIR). */
export function edgeTools(args: string[], env: Record<string, string> = {}): string {
  return sh(["cargo", "run", "--release", "--quiet", "--example", "edge_tools", "--", ...args], "native edge_tools", resolve(repo, "core-rs"), env)
}

/**
 * A random checkpoint of an engine preset with MiniMind's tokenizer beside it (what `bunmind export edge --model`
 * takes). Reused across runs: the init is seeded, so the files are the same every time.
 */
export function randomModel(preset: string, seed = 7): string {
  const dir = join(outDir, `${preset}-seed${seed}`)
  if (!existsSync(join(dir, "model.safetensors"))) {
    mkdirSync(dir, { recursive: true })
    edgeTools(["init", preset, String(seed), dir])
  }
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    if (!existsSync(join(dir, f))) writeFileSync(join(dir, f), readFileSync(join(minimindTokenizer, f)))
  }
  return dir
}

/** Spawns `bunmind export ...` through the edge command alone (the root CLI registers it as `export`). */
export function edgeCli(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const script = `
    import { NodeRuntime, NodeServices } from "@effect/platform-node"
    import { Cause, Effect } from "effect"
    import { Command } from "effect/cli"
    import { edgeCommand } from ${JSON.stringify(resolve(repo, "src/cli/edge.ts"))}
    const root = Command.make("bunmind").pipe(Command.withSubcommands([edgeCommand]))
    Command.run(root, { version: "test" }).pipe(
      Effect.catchCause((c) => Effect.sync(() => { process.stderr.write("error: " + (Cause.squash(c)?.message ?? String(c)) + "\\n"); process.exitCode = 1 })),
      Effect.provide(NodeServices.layer),
      NodeRuntime.runMain({ disableErrorReporting: true }),
    )`
  const file = join(outDir, "edge-cli.ts")
  mkdirSync(outDir, { recursive: true })
  writeFileSync(file, script)
  const p = Bun.spawnSync([process.execPath, file, ...args], { cwd: repo, stdout: "pipe", stderr: "pipe" })
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() }
}

/** A byte-level BPE tokenizer.json with just the 256 byte tokens (no merges): a tokenizer of "another vocab". */
export function byteTokenizerJson(): string {
  const bs: number[] = []
  for (let b = 33; b <= 126; b++) bs.push(b)
  for (let b = 161; b <= 172; b++) bs.push(b)
  for (let b = 174; b <= 255; b++) bs.push(b)
  const cs = [...bs]
  let n = 0
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b)
      cs.push(256 + n++)
    }
  }
  const vocab: Record<string, number> = {}
  bs.forEach((b, i) => (vocab[String.fromCodePoint(cs[i]!)] = b))
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true }
  return JSON.stringify({
    version: "1.0", truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  })
}
