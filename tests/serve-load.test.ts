/**
 * `bunmind serve` under load and abuse, over loopback only (bounded: a tiny model, fixed token counts).
 * - 32 concurrent streaming requests all complete, progress together (round-robin), while /health
 *   keeps answering within 100 ms; memory returns to its baseline afterwards.
 * - ≥ 200 malformed requests (broken bodies, wrong types, wrong methods, bad headers, raw garbage
 *   on the socket) get only 4xx answers and the server keeps serving.
 */
import { afterAll, beforeAll, expect, test } from "bun:test"
import { health, makeTinyModel, spawnServer, waitForHealth, type ServerProcess } from "./serve-fixture.ts"
import { rng } from "../src/util/rng.ts"

const KEY = "load-key"
let server: ServerProcess
const auth = { authorization: `Bearer ${KEY}`, "content-type": "application/json" }

beforeAll(async () => {
  server = await spawnServer(["--model", makeTinyModel(), "--model-name", "tiny", "--api-key", KEY])
}, 60_000)

afterAll(async () => {
  await server?.stop()
}, 60_000)

interface StreamResult {
  tokens: number
  done: boolean
  firstTokenAt: number
  endAt: number
}

/** One streaming request read to the end; times are performance.now() values. */
async function stream(i: number, maxTokens: number): Promise<StreamResult> {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({
      model: "tiny",
      messages: [{ role: "user", content: `request number ${i}` }],
      max_tokens: maxTokens,
      ignore_eos: true,
      temperature: 0.8,
      seed: i,
      stream: true,
      stream_options: { include_usage: true },
    }),
  })
  expect(res.status).toBe(200)
  const reader = res.body!.getReader()
  const dec = new TextDecoder()
  let buf = ""
  let firstTokenAt = 0
  let tokens = -1
  let done = false
  for (;;) {
    const { value, done: end } = await reader.read()
    if (end) break
    buf += dec.decode(value, { stream: true })
    let k: number
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, k)
      buf = buf.slice(k + 2)
      if (!ev.startsWith("data: ")) continue
      const data = ev.slice(6)
      if (data === "[DONE]") {
        done = true
        continue
      }
      const j = JSON.parse(data)
      if (j.usage) tokens = j.usage.completion_tokens
      const d = j.choices[0]?.delta
      if (firstTokenAt === 0 && d && d.role === undefined) firstTokenAt = performance.now()
    }
  }
  return { tokens, done, firstTokenAt, endAt: performance.now() }
}

/** Runs `n` concurrent streams while polling /health; returns the streams and the /health latencies (ms). */
async function load(n: number, maxTokens: number) {
  const latencies: number[] = []
  let running = true
  const poller = (async () => {
    while (running) {
      const t0 = performance.now()
      const r = await fetch(`${server.url}/health`)
      await r.json()
      latencies.push(performance.now() - t0)
      await Bun.sleep(20)
    }
  })()
  const results = await Promise.all(Array.from({ length: n }, (_, i) => stream(i, maxTokens)))
  running = false
  await poller
  return { results, latencies }
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]!

test("32 concurrent streams complete fairly; /health stays under 100 ms; memory returns to baseline", async () => {
  const idle = await waitForHealth(server.url, (h) => h.inflight === 0)
  // Warm-up round of the same size: allocator pools (KV caches) and the JIT reach their steady state.
  await load(32, 96)
  await waitForHealth(server.url, (h) => h.inflight === 0)
  const baseline = server.rss()

  for (let round = 0; round < 2; round++) {
    const { results, latencies } = await load(32, 96)
    for (const r of results) expect({ tokens: r.tokens, done: r.done }).toEqual({ tokens: 96, done: true })
    // Round-robin: every stream had its first token before any stream finished.
    const lastFirst = Math.max(...results.map((r) => r.firstTokenAt))
    const firstEnd = Math.min(...results.map((r) => r.endAt))
    expect(lastFirst).toBeLessThan(firstEnd)
    const p50 = pct(latencies, 0.5)
    const p99 = pct(latencies, 0.99)
    const max = Math.max(...latencies)
    console.log(`[serve-load] round ${round}: /health over ${latencies.length} polls under 32 streams: p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${max.toFixed(1)} ms`)
    expect(latencies.length).toBeGreaterThan(10)
    // The bound: /health answers within 100 ms during the load. On a shared 2-core machine
    // a rare poll can land behind an OS scheduling hiccup, so the bound is on p99, with a looser cap on the max.
    expect(p99).toBeLessThan(100)
    expect(max).toBeLessThan(250)
    const after = await waitForHealth(server.url, (h) => h.inflight === 0)
    expect(after.live_handles).toBe(idle.live_handles)
  }
  await Bun.sleep(200)
  const growth = server.rss() - baseline
  console.log(`[serve-load] RSS baseline ${(baseline / 2 ** 20).toFixed(1)} MiB, after 2 × 32 streams ${((baseline + growth) / 2 ** 20).toFixed(1)} MiB`)
  expect(growth).toBeLessThan(32 * 2 ** 20)
}, 120_000)

test("≥ 200 malformed requests get 4xx answers only, and the server keeps serving", async () => {
  // Seeded (util/rng.ts), so a failing fuzz case can be replayed.
  const rand = rng(1234, "test/serve-fuzz")
  const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!
  const valid = () => ({ model: "tiny", messages: [{ role: "user", content: "hi" }], max_tokens: 4 })
  // Each field with values that must be rejected.
  const invalid: Record<string, unknown[]> = {
    model: [null, 5, [], {}, "no-such-model", ""],
    messages: [null, [], "hi", [{}], [{ role: "user" }].map((m) => ({ ...m, content: 3 })), [{ role: "wizard", content: "x" }], [null], [[1]], [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }]],
    max_tokens: [0, -1, 1.5, "4", 10 ** 9, true, {}],
    temperature: [-0.1, 2.5, "0", [], Number.MAX_VALUE],
    top_p: [0, -1, 1.01, "1", null as unknown as number, {}].filter((x) => x !== null),
    top_k: [-5, 0.5, "x"],
    stop: [3, [1], [null], {}],
    seed: [1.5, "x", []],
    n: [0, 2, "1"],
    stream: ["yes", 1, []],
    tools: ["x", [{ type: "nope" }], [{ type: "function" }], {}],
    frequency_penalty: [3, -3, "x"],
    repetition_penalty: [0, -1, 11, "x"],
    logprobs: [true, "x"],
  }
  const cases: Array<{ what: string; init: RequestInit & { method: string }; path: string }> = []
  const post = (what: string, body: BodyInit, headers: Record<string, string> = auth) => cases.push({ what, path: "/v1/chat/completions", init: { method: "POST", headers, body } })
  for (let i = 0; i < 120; i++) {
    const b: Record<string, unknown> = valid()
    const field = pick(Object.keys(invalid))
    b[field] = pick(invalid[field]!)
    post(`field ${field}=${JSON.stringify(b[field])}`, JSON.stringify(b))
  }
  const validText = JSON.stringify(valid())
  for (let i = 0; i < 40; i++) {
    const kind = pick(["truncated", "bytes", "scalar", "nested"])
    if (kind === "truncated") post("truncated JSON", validText.slice(0, Math.floor(rand() * (validText.length - 1))))
    else if (kind === "bytes") post("random bytes", new Uint8Array(Array.from({ length: 1 + Math.floor(rand() * 200) }, () => Math.floor(rand() * 256))))
    else if (kind === "scalar") post("JSON scalar", pick(["null", "1", '"x"', "[]", "true", "[{}]"]))
    else post("deep nesting", "[".repeat(5000) + "]".repeat(5000))
  }
  for (let i = 0; i < 20; i++) {
    const headers = pick<Record<string, string>>([
      {},
      { authorization: "Bearer wrong" },
      { authorization: "Basic Zm9vOmJhcg==" },
      { authorization: "Bearer" },
      { authorization: `bearer  ${KEY}x` },
    ])
    post(`bad auth ${JSON.stringify(headers)}`, validText, { "content-type": "application/json", ...headers })
  }
  for (const method of ["GET", "PUT", "DELETE", "PATCH"]) cases.push({ what: `${method} completions`, path: "/v1/chat/completions", init: { method, headers: auth } })
  for (const method of ["POST", "PUT", "DELETE"]) {
    cases.push({ what: `${method} models`, path: "/v1/models", init: { method, headers: auth, body: "{}" } })
    cases.push({ what: `${method} health`, path: "/health", init: { method, body: "x" } })
  }
  for (const path of ["/v1", "/v1/completions", "/v1/embeddings", "/../etc/passwd", "/v1/chat/completions/extra", "/%ff", "/v1/models/nope"]) {
    cases.push({ what: `path ${path}`, path, init: { method: pick(["GET", "POST"]), headers: auth, body: undefined } })
  }
  // Wrong content types, and a body over the size limit.
  post("text/plain garbage", "model=tiny", { ...auth, "content-type": "text/plain" })
  post("form body", "model=tiny&messages=hi", { ...auth, "content-type": "application/x-www-form-urlencoded" })
  post("oversized body", JSON.stringify({ ...valid(), messages: [{ role: "user", content: "x".repeat(17 * 2 ** 20) }] }))
  expect(cases.length).toBeGreaterThanOrEqual(200)

  const statuses = new Map<number, number>()
  for (let i = 0; i < cases.length; i += 8) {
    await Promise.all(
      cases.slice(i, i + 8).map(async (c) => {
        const res = await fetch(`${server.url}${c.path}`, c.init)
        const text = await res.text()
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
        if (res.status < 400 || res.status >= 500) throw new Error(`${c.what}: expected a 4xx, got ${res.status} ${text.slice(0, 200)}`)
        if (res.status !== 413) {
          const err = JSON.parse(text).error
          expect(Object.keys(err).sort()).toEqual(["code", "message", "param", "type"])
        }
      }),
    )
  }
  // Garbage that is not HTTP at all, straight on the socket.
  const { hostname, port } = new URL(server.url)
  for (const junk of ["GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "\x00\x01\x02\x03", "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999\r\n\r\n{"]) {
    const reply = await new Promise<string>((resolve) => {
      let got = ""
      void Bun.connect({
        hostname,
        port: Number(port),
        socket: {
          open: (s) => {
            s.write(junk)
            setTimeout(() => s.end(), 300)
          },
          data: (_s, d) => void (got += d.toString()),
          close: () => resolve(got),
          error: () => resolve(got),
        },
      })
    })
    const status = /^HTTP\/1\.1 (\d+)/.exec(reply)?.[1]
    if (status !== undefined) expect(Number(status)).toBeGreaterThanOrEqual(400)
  }
  console.log(`[serve-load] fuzz: ${cases.length} requests, statuses ${JSON.stringify(Object.fromEntries(statuses))}`)

  // Still alive and still correct.
  expect((await health(server.url)).status).toBe("ok")
  const ok = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: auth, body: validText })
  expect(ok.status).toBe(200)
  expect((await ok.json()).usage.completion_tokens).toBeGreaterThan(0)
  expect(server.proc.exitCode).toBeNull()
}, 120_000)
