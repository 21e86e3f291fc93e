#!/usr/bin/env bun
/** Every test: the engine's cargo tests, then the bun tests. Exits non-zero if any fails. */
import { resolve } from "node:path"

const root = resolve(import.meta.dir, "..")
const steps: [string, string[], string][] = [
  ["cargo tests (core-rs)", ["cargo", "test", "--release", "--workspace"], resolve(root, "core-rs")],
  ["bun tests", ["bun", "test", "--timeout", "600000", ...process.argv.slice(2)], root],
]
let failed = 0
for (const [name, cmd, cwd] of steps) {
  console.error(`\n=== ${name}: ${cmd.join(" ")}`)
  const p = Bun.spawnSync(cmd, { cwd, stdio: ["inherit", "inherit", "inherit"], env: process.env })
  if (p.exitCode !== 0) {
    console.error(`=== ${name} FAILED (exit ${p.exitCode})`)
    failed++
  }
}
process.exit(failed ? 1 : 0)
