/** A real browser for the edge tests and bench: Debian's chromium driven by playwright-core, and a loopback static server. */
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, normalize, resolve } from "node:path"
import type { BrowserContext } from "playwright-core"

export const CHROMIUM = process.env.BUNMIND_CHROMIUM ?? "/usr/bin/chromium"

/** TOOLCHAINS.md's flags for Debian's chromium in a container. */
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

export interface Browser {
  context: BrowserContext
  close: () => Promise<void>
}

/** A headless chromium with a fresh profile (its own Cache API storage), removed on close. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: run \`bun scripts/build-wasm.ts --browser\` (apt-get install chromium) or set BUNMIND_CHROMIUM`)
  }
  const { chromium } = await import("playwright-core")
  const profile = mkdtempSync(join(tmpdir(), "bunmind-chromium-"))
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1000, height: 760 } })
  return {
    context,
    close: async () => {
      await context.close().catch(() => {})
      rmSync(profile, { recursive: true, force: true })
    },
  }
}

export interface StaticServer {
  url: string
  /** Path (without leading slash) → replacement body, to serve broken files. */
  overrides: Map<string, Uint8Array | string>
  stop: () => void
}

/** Serves `dir` on 127.0.0.1 (a secure context, so the Cache API works), never cacheable over HTTP. */
export function serveStatic(dir: string): StaticServer {
  const root = resolve(dir)
  const overrides = new Map<string, Uint8Array | string>()
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 120,
    fetch(req) {
      let path = decodeURIComponent(new URL(req.url).pathname).replace(/^\/+/, "")
      if (path === "" || path.endsWith("/")) path += "index.html"
      const headers = { "cache-control": "no-store" }
      const o = overrides.get(path)
      const file = Bun.file(join(root, normalize(path)))
      if (o !== undefined) return new Response(o as BodyInit, { headers: { ...headers, "content-type": file.type } })
      if (!join(root, normalize(path)).startsWith(root)) return new Response("forbidden", { status: 403 })
      return file.exists().then((ok) => (ok ? new Response(file, { headers }) : new Response("not found", { status: 404, headers })))
    },
  })
  return { url: `http://127.0.0.1:${server.port}/`, overrides, stop: () => server.stop(true) }
}
