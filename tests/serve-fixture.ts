/** Shared set-up for the serve tests: a tiny random model with MiniMind's tokenizer, and `bunmind serve` run as a user runs it. */
import { copyFileSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { bun, cli, repo, shared } from "./helpers/cli.ts"

/** `model init --preset tiny` (random weights, vocab 6400) with the tokenizer files beside it. */
export function makeTinyModel(seed = 42): string {
  const dir = join(mkdtempSync(join(tmpdir(), "bunmind-serve-")), "tiny")
  const r = cli(["model", "init", "--preset", "tiny", "--out", dir, "--seed", String(seed)])
  if (r.code !== 0) throw new Error(`model init failed: ${r.stderr}`)
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(shared, "minimind", f), join(dir, f))
  return dir
}

export interface ServerProcess {
  readonly url: string
  readonly proc: ReturnType<typeof Bun.spawn>
  /** Resident memory of the server process, in bytes (Linux /proc). */
  rss(): number
  /** SIGINT, as Ctrl-C; resolves with the exit code. */
  stop(): Promise<number>
  /** Everything the server wrote to stderr so far. */
  stderr(): string
}

/** Starts `bunmind serve --port 0 ...` and waits for the URL it prints. */
export async function spawnServer(args: string[]): Promise<ServerProcess> {
  const proc = Bun.spawn([bun, resolve(repo, "src/cli.ts"), "serve", "--port", "0", ...args], { cwd: repo, stdout: "pipe", stderr: "pipe" })
  let err = ""
  void (async () => {
    const r = (proc.stderr as ReadableStream<Uint8Array>).getReader()
    for (let c = await r.read(); !c.done; c = await r.read()) err += new TextDecoder().decode(c.value)
  })()
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader()
  let out = ""
  const deadline = Date.now() + 30_000
  while (!/bunmind serve: (http:\/\/\S+)/.test(out)) {
    if (Date.now() > deadline) throw new Error(`server did not start: ${out}\n${err}`)
    const { value, done } = await reader.read()
    if (done) throw new Error(`server exited (${await proc.exited}): ${out}\n${err}`)
    out += new TextDecoder().decode(value)
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  void (async () => {
    for (;;) if ((await reader.read()).done) break
  })()
  const url = /bunmind serve: (http:\/\/\S+)/.exec(out)![1]!
  return {
    url,
    proc,
    rss: () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${proc.pid}/status`, "utf8"))![1]) * 1024,
    async stop() {
      proc.kill("SIGINT")
      const t = setTimeout(() => proc.kill("SIGKILL"), 10_000)
      const code = await proc.exited
      clearTimeout(t)
      return code
    },
    stderr: () => err,
  }
}

export interface Health {
  status: string
  inflight: number
  live_handles: number
}

export const health = async (url: string): Promise<Health> => (await fetch(`${url}/health`)).json() as Promise<Health>

/** Polls /health until `ok(h)` (or throws after `ms`). */
export async function waitForHealth(url: string, ok: (h: Health) => boolean, ms = 5000): Promise<Health> {
  const end = Date.now() + ms
  let h = await health(url)
  while (!ok(h)) {
    if (Date.now() > end) throw new Error(`health never reached the expected state: ${JSON.stringify(h)}`)
    await Bun.sleep(25)
    h = await health(url)
  }
  return h
}

/** Reads an SSE response: the JSON of each `data:` event, and whether `[DONE]` came last. */
export async function readSse(res: Response): Promise<{ events: any[]; done: boolean }> {
  const text = await res.text()
  const datas = text
    .split("\n\n")
    .map((b) => b.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n"))
    .filter((d) => d !== "")
  const done = datas.at(-1) === "[DONE]"
  return { events: datas.filter((d) => d !== "[DONE]").map((d) => JSON.parse(d)), done }
}
