import { existsSync, readFileSync } from "node:fs"
import { resolve } from "node:path"

export const repo = resolve(import.meta.dir, "..", "..")
export const shared = resolve(repo, "..", "shared", "data")
export const bun = process.execPath

/** Runs the bunmind CLI as a user would; returns exit code, stdout and stderr. */
export function cli(args: string[], stdin?: string, env: Record<string, string> = {}) {
  const p = Bun.spawnSync([bun, resolve(repo, "src/cli.ts"), ...args], {
    cwd: repo,
    stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin),
    env: { ...process.env, BUNMIND_PLAIN_PROGRESS: "1", ...env },
  })
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() }
}

export function python(code: string, args: string[] = []) {
  const p = Bun.spawnSync(["python3", "-c", code, ...args], { cwd: repo })
  if (p.exitCode !== 0) throw new Error(`python failed: ${p.stderr.toString()}`)
  return p.stdout.toString()
}

/** Starts the bunmind CLI in the background (stdout/stderr piped). */
export const spawnCli = (args: string[], env: Record<string, string> = {}) =>
  Bun.spawn([bun, resolve(repo, "src/cli.ts"), ...args], { cwd: repo, stdout: "pipe", stderr: "pipe", env: { ...process.env, BUNMIND_PLAIN_PROGRESS: "1", ...env } })

/** Waits until `metricsFile` has `n` lines; throws if `proc` exits first or after ~60 s. */
export async function waitForMetrics(metricsFile: string, n: number, proc: ReturnType<typeof spawnCli>): Promise<void> {
  for (let i = 0; i < 2400; i++) {
    if (existsSync(metricsFile) && readFileSync(metricsFile, "utf8").trim().split("\n").filter(Boolean).length >= n) return
    if (proc.exitCode !== null) throw new Error(`training exited early: ${await new Response(proc.stderr).text()}`)
    await Bun.sleep(25)
  }
  throw new Error(`training did not reach step ${n} in time`)
}
