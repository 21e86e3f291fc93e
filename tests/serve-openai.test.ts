/**
 * `bunmind serve` against the official `openai` client (pinned 7.59.0): list models, complete, stream,
 * stop sequences, max_tokens, usage, errors, API key. Expected outputs come from running the same
 * prompt directly on a native generation session in this process (seeded sampling is deterministic),
 * and prompt token counts from rendering the chat template independently.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import OpenAI from "openai"
import { openSessionSync, type GenerationOptions } from "../src/model/generate.ts"
import { openModelSync, type Model } from "../src/model/model.ts"
import { applyChatTemplate, loadTokenizerConfig, type ChatMessage, type TokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync, type Tokenizer } from "../src/tokenizer/tokenizer.ts"
import { health, makeTinyModel, readSse, spawnServer, waitForHealth, type ServerProcess } from "./serve-fixture.ts"

const KEY = "sk-test-123"
let dir: string
let server: ServerProcess
let client: OpenAI
let model: Model
let tok: Tokenizer
let cfg: TokenizerConfig

beforeAll(async () => {
  dir = makeTinyModel()
  server = await spawnServer(["--model", dir, "--model-name", "tiny", "--api-key", KEY])
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 })
  model = openModelSync(dir)
  tok = openTokenizerSync(dir)
  cfg = loadTokenizerConfig(dir)
}, 60_000)

afterAll(async () => {
  // Interrupted by SIGINT (Ctrl-C): finalizers ran, the exit code says "interrupted".
  expect(await server?.stop()).toBe(130)
  model?.free()
  tok?.free()
}, 60_000)

const chat = (content: string): ChatMessage[] => [{ role: "system", content: "You are helpful." }, { role: "user", content }]

/** Tokens of the rendered prompt, computed here without the server. */
const promptIds = (messages: ChatMessage[], thinking = false) => tok.encode(applyChatTemplate(cfg, messages, { addGenerationPrompt: true, enableThinking: thinking }))

/** What the server should produce: the native session run directly on the same prompt and options. */
function reference(messages: ChatMessage[], o: GenerationOptions) {
  const s = openSessionSync(model, promptIds(messages), { stopTokenIds: [2], ...o })
  const ids: number[] = []
  try {
    for (;;) {
      const t = s.next()
      if (t === undefined) break
      ids.push(t)
      if (s.finished) break
    }
    return { ids, text: tok.decode(ids, true), info: s.info() }
  } finally {
    s.free()
  }
}

const SAMPLING = { temperature: 1, top_p: 1, seed: 7 } as const
const REF_SAMPLING = { temperature: 1, topP: 1, topK: 0, seed: 7 }

test("lists and retrieves the served model", async () => {
  const list = await client.models.list()
  expect(list.data.map((m) => m.id)).toEqual(["tiny"])
  expect((await client.models.retrieve("tiny")).id).toBe("tiny")
  expect(await client.models.retrieve("nope").then(() => null, (e) => e)).toBeInstanceOf(OpenAI.NotFoundError)
})

test("a non-streaming completion matches direct generation, with exact usage", async () => {
  const messages = chat("Tell me about the sea.")
  const ref = reference(messages, { ...REF_SAMPLING, maxNewTokens: 40 })
  expect(ref.text.length).toBeGreaterThan(0)
  const r = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 40, ...SAMPLING, top_k: 0 } as any)
  expect(r.object).toBe("chat.completion")
  expect(r.choices[0]!.message.content).toBe(ref.text)
  expect(r.choices[0]!.finish_reason).toBe(ref.info.finish_reason === "stop" ? "stop" : "length")
  expect(r.usage).toEqual({ prompt_tokens: promptIds(messages).length, completion_tokens: ref.ids.length, total_tokens: promptIds(messages).length + ref.ids.length })
})

test("absent sampling fields take MiniMind's defaults (0.85 / 0.85 / top-k 50)", async () => {
  const messages = chat("defaults")
  const ref = reference(messages, { temperature: 0.85, topP: 0.85, topK: 50, seed: 3, maxNewTokens: 24 })
  const other = reference(messages, { temperature: 1, topP: 1, topK: 0, seed: 3, maxNewTokens: 24 })
  expect(ref.text).not.toBe(other.text)
  const r = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 24, seed: 3 })
  expect(r.choices[0]!.message.content).toBe(ref.text)
})

test("temperature 0 is greedy decoding", async () => {
  const messages = chat("hi")
  const ref = reference(messages, { temperature: 0, maxNewTokens: 16 })
  const r = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 16, temperature: 0 })
  expect(r.choices[0]!.message.content).toBe(ref.text)
  expect(r.usage!.completion_tokens).toBe(ref.ids.length)
})

test("streaming yields the same text, a finish reason, usage, and ends with [DONE]", async () => {
  const messages = chat("Write a poem.")
  const ref = reference(messages, { ...REF_SAMPLING, maxNewTokens: 30 })
  const stream = await client.chat.completions.create({
    model: "tiny",
    messages: messages as any,
    max_tokens: 30,
    stream: true,
    stream_options: { include_usage: true },
    ...SAMPLING,
    top_k: 0,
  } as any)
  let text = ""
  let finish: string | null = null
  let usage: unknown
  let chunks = 0
  for await (const c of stream as any as AsyncIterable<OpenAI.ChatCompletionChunk>) {
    chunks++
    expect(c.object).toBe("chat.completion.chunk")
    text += c.choices[0]?.delta.content ?? ""
    finish = c.choices[0]?.finish_reason ?? finish
    if (c.usage) usage = c.usage
  }
  expect(chunks).toBeGreaterThan(5)
  expect(text).toBe(ref.text)
  expect(finish).toBe(ref.info.finish_reason === "stop" ? "stop" : "length")
  expect(usage).toEqual({ prompt_tokens: promptIds(messages).length, completion_tokens: ref.ids.length, total_tokens: promptIds(messages).length + ref.ids.length })

  // The raw wire format: data lines, the final `data: [DONE]`.
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "tiny", messages, max_tokens: 5, stream: true }),
  })
  expect(res.headers.get("content-type")).toContain("text/event-stream")
  const sse = await readSse(res)
  expect(sse.done).toBe(true)
  expect(sse.events.at(-1).choices[0].finish_reason).not.toBeNull()
})

test("max_tokens is honoured exactly", async () => {
  const messages = chat("Count.")
  for (const n of [1, 7]) {
    const ref = reference(messages, { ...REF_SAMPLING, maxNewTokens: n })
    const r = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: n, ...SAMPLING, top_k: 0 } as any)
    expect(r.usage!.completion_tokens).toBe(ref.ids.length)
    expect(ref.ids.length).toBe(n)
    expect(r.choices[0]!.finish_reason).toBe("length")
  }
  // max_completion_tokens (the newer name) works the same.
  const r = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_completion_tokens: 3, ...SAMPLING } as any)
  expect(r.usage!.completion_tokens).toBe(3)
})

test("stop sequences cut the output before their first occurrence, streaming or not", async () => {
  const messages = chat("Tell me a story.")
  const ref = reference(messages, { ...REF_SAMPLING, maxNewTokens: 60 })
  // A stop string taken from the middle of the known output.
  const text = ref.text
  const stop = [...text].slice(12, 14).join("")
  expect(stop.length).toBeGreaterThan(0)
  const expected = text.slice(0, text.indexOf(stop))
  const r = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 60, stop: [stop, "\u0000never"], ...SAMPLING, top_k: 0 } as any)
  expect(r.choices[0]!.message.content).toBe(expected)
  expect(r.choices[0]!.finish_reason).toBe("stop")
  expect(r.usage!.completion_tokens).toBeLessThan(ref.ids.length)

  const stream = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 60, stop, stream: true, ...SAMPLING, top_k: 0 } as any)
  let streamed = ""
  let finish: string | null = null
  for await (const c of stream as any as AsyncIterable<OpenAI.ChatCompletionChunk>) {
    streamed += c.choices[0]?.delta.content ?? ""
    finish = c.choices[0]?.finish_reason ?? finish
  }
  expect(streamed).toBe(expected)
  expect(streamed).not.toContain(stop)
  expect(finish).toBe("stop")
})

test("frequency_penalty maps to the CTRL repetition penalty (documented mapping)", async () => {
  const messages = chat("Repeat after me.")
  const ask = (extra: Record<string, number>) =>
    client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 20, ...SAMPLING, top_k: 0, ...extra } as any).then((r) => r.choices[0]!.message.content)
  const plain = reference(messages, { ...REF_SAMPLING, maxNewTokens: 20 })
  // frequency_penalty 2 → repetition penalty 2; -2 → 0.5; repetition_penalty is taken as is.
  for (const [extra, rp] of [
    [{ frequency_penalty: 2 }, 2],
    [{ presence_penalty: -2 }, 0.5],
    [{ repetition_penalty: 1.3, frequency_penalty: 2 }, 1.3],
  ] as const) {
    const ref = reference(messages, { ...REF_SAMPLING, maxNewTokens: 20, repetitionPenalty: rp })
    expect(ref.text).not.toBe(plain.text)
    expect(await ask(extra)).toBe(ref.text)
  }
})

test("thinking on: the prompt opens a <think> block and its text comes back as reasoning_content", async () => {
  const messages = chat("Why is the sky blue?")
  const ids = promptIds(messages, true)
  expect(tok.decode(ids).endsWith("<think>\n")).toBe(true)
  const s = openSessionSync(model, ids, { ...REF_SAMPLING, maxNewTokens: 20, stopTokenIds: [2] })
  const out: number[] = []
  for (let t = s.next(); t !== undefined; t = s.finished ? undefined : s.next()) out.push(t)
  s.free()
  const text = tok.decode(out, true)
  expect(text).not.toContain("</think>")
  const r = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 20, enable_thinking: true, ...SAMPLING, top_k: 0 } as any)
  expect(r.usage!.prompt_tokens).toBe(ids.length)
  // Random weights never close the block: all of it is reasoning (without the framing newlines).
  const m = r.choices[0]!.message as any
  expect(m.content).toBe("")
  expect(m.reasoning_content).toBe(text.replace(/^\n+/, "").replace(/\n+$/, ""))
  // The vLLM-style switch does the same.
  const r2 = await client.chat.completions.create({ model: "tiny", messages: messages as any, max_tokens: 20, chat_template_kwargs: { enable_thinking: true }, ...SAMPLING, top_k: 0 } as any)
  expect((r2.choices[0]!.message as any).reasoning_content).toBe(m.reasoning_content)
})

describe("errors are OpenAI-shaped", () => {
  test("a wrong API key is 401; /health needs none", async () => {
    const bad = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 })
    expect(await bad.models.list().then(() => null, (e) => e)).toBeInstanceOf(OpenAI.AuthenticationError)
    const none = await fetch(`${server.url}/v1/models`)
    expect(none.status).toBe(401)
    expect((await none.json()).error.code).toBe("invalid_api_key")
    expect((await health(server.url)).status).toBe("ok")
  })

  test("an unknown model is 404", async () => {
    const e = await client.chat.completions.create({ model: "gpt-4", messages: [{ role: "user", content: "x" }] }).catch((e) => e)
    expect(e).toBeInstanceOf(OpenAI.NotFoundError)
    expect(e.code).toBe("model_not_found")
  })

  test("bad requests are 400 with the offending param", async () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ messages: [] }, "messages"],
      [{ messages: [{ role: "robot", content: "x" }] }, "messages[0].role"],
      [{ messages: [{ role: "user", content: 5 }] }, "messages[0].content"],
      [{ temperature: "hot" }, "temperature"],
      [{ temperature: 3 }, "temperature"],
      [{ top_p: 0 }, "top_p"],
      [{ max_tokens: 0 }, "max_tokens"],
      [{ max_tokens: 5000 }, "max_tokens"],
      [{ n: 2 }, "n"],
      [{ stop: 7 }, "stop"],
      [{ messages: [{ role: "user", content: "word ".repeat(3000) }] }, "messages"],
    ]
    for (const [patch, param] of cases) {
      const body = { model: "tiny", messages: [{ role: "user", content: "hi" }], ...patch }
      const e = await client.chat.completions.create(body as any).catch((e) => e)
      expect(e).toBeInstanceOf(OpenAI.BadRequestError)
      expect({ param: e.param, type: e.type }).toEqual({ param, type: "invalid_request_error" })
      expect(typeof e.error.message).toBe("string")
    }
    const long = await client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "word ".repeat(3000) }] }).catch((e) => e)
    expect(long.code).toBe("context_length_exceeded")
  })

  test("malformed JSON is 400 invalid_json", async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${KEY}` }, body: '{"model": "tiny",' })
    expect(res.status).toBe(400)
    const b = await res.json()
    expect(Object.keys(b.error).sort()).toEqual(["code", "message", "param", "type"])
    expect(b.error.code).toBe("invalid_json")
  })
})

test("a client that disconnects mid-stream stops its generation and frees the session", async () => {
  const before = await waitForHealth(server.url, (h) => h.inflight === 0)
  const ac = new AbortController()
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "go on forever" }], max_tokens: 2000, ignore_eos: true, stream: true }),
    signal: ac.signal,
  })
  const reader = res.body!.getReader()
  for (let i = 0; i < 5; i++) await reader.read()
  const during = await health(server.url)
  expect(during.inflight).toBe(1)
  expect(during.live_handles).toBe(before.live_handles + 1)
  ac.abort()
  // 2000 tokens would take seconds; the session is gone well before.
  const after = await waitForHealth(server.url, (h) => h.inflight === 0, 3000)
  expect(after.live_handles).toBe(before.live_handles)
})
