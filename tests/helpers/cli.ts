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
