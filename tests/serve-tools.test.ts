/**
 * Tool calls and think blocks end to end through the HTTP server and the `openai` client. A random
 * model never writes `<tool_call>` blocks, so the server runs here on a scripted engine that replays
 * fixed text as tokens (through the real tokenizer, detokenizer, parser and SSE writer); the
 * engine also records the prompt it was given, to check that `tools` reach the chat template.
 */
import { afterAll, beforeAll, expect, test } from "bun:test"
import OpenAI from "openai"
import type { GenerationOptions } from "../src/model/generate.ts"
import type { ModelConfig } from "../src/model/model.ts"
import type { Engine, Handle, Sink } from "../src/serve/engine.ts"
import { listen, type Listening } from "../src/serve/server.ts"
import { loadTokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync, type Tokenizer } from "../src/tokenizer/tokenizer.ts"
import { shared } from "./helpers/cli.ts"

class ScriptedEngine implements Engine {
  readonly kind = "scripted"
  readonly config = { max_position_embeddings: 2048, eos_token_id: 2 } as ModelConfig
  readonly stopTokenIds = [2]
  readonly broken = undefined
  inflight = 0
  script = ""
  prompts: string[] = []

  constructor(readonly tok: Tokenizer) {}

  submit(prompt: Uint32Array, options: GenerationOptions, sink: Sink): Handle {
    this.prompts.push(this.tok.decode(prompt))
    const ids = [...this.tok.encode(this.script), 2].slice(0, options.maxNewTokens)
    let i = 0
    let cancelled = false
    this.inflight++
    const step = () => {
      if (cancelled || i === ids.length) {
        this.inflight--
        const reason = cancelled ? undefined : ids[i - 1] === 2 ? "stop" : "length"
        return sink.end(cancelled ? { cancelled: true } : { info: { prompt_tokens: prompt.length, generated_tokens: i, finish_reason: reason as "stop" } })
      }
      sink.token(ids[i++]!)
      setImmediate(step)
    }
    setImmediate(step)
    return { cancel: () => void (cancelled = true) }
  }

  async close() {}
}

let tok: Tokenizer
let engine: ScriptedEngine
let server: Listening
let client: OpenAI

beforeAll(async () => {
  tok = openTokenizerSync(`${shared}/minimind`)
  engine = new ScriptedEngine(tok)
  server = await listen({ engine, tokenizer: tok, tokenizerConfig: loadTokenizerConfig(`${shared}/minimind`), modelName: "scripted" })
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 })
}, 60_000)

afterAll(async () => {
  await server?.close()
  tok?.free()
}, 60_000)

const tools = [
  {
    type: "function" as const,
    function: { name: "get_weather", description: "Weather for a city", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
  },
]
const CALL = 'I will look it up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

test("tools go to the chat template, and <tool_call> blocks come back as tool_calls", async () => {
  engine.script = CALL
  const r = await client.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "Weather in Paris?" }], tools })
  const prompt = engine.prompts.at(-1)!
  expect(prompt).toContain("# Tools")
  expect(prompt).toContain('"name": "get_weather"')
  const c = r.choices[0]!
  expect(c.finish_reason).toBe("tool_calls")
  expect(c.message.content).toBe("I will look it up.")
  expect(c.message.tool_calls).toHaveLength(1)
  const call = c.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall
  expect(call.type).toBe("function")
  expect(call.id).toMatch(/^call_/)
  expect(call.function.name).toBe("get_weather")
  expect(JSON.parse(call.function.arguments)).toEqual({ city: "Paris" })
  // usage counts every scripted token, end-of-turn included.
  expect(r.usage!.completion_tokens).toBe(tok.encode(CALL).length + 1)
})

test("streamed tool calls arrive as a tool_calls delta with finish_reason tool_calls", async () => {
  engine.script = CALL
  const stream = await client.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "Weather?" }], tools, stream: true })
  let content = ""
  let finish: string | null = null
  const calls: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = []
  for await (const ch of stream) {
    content += ch.choices[0]?.delta.content ?? ""
    calls.push(...(ch.choices[0]?.delta.tool_calls ?? []))
    finish = ch.choices[0]?.finish_reason ?? finish
  }
  expect(content).toBe("I will look it up.")
  expect(content).not.toContain("<tool_call>")
  expect(finish).toBe("tool_calls")
  expect(calls.map((c) => [c.index, c.function?.name, JSON.parse(c.function!.arguments!)])).toEqual([[0, "get_weather", { city: "Paris" }]])
})

test("a tool result turn renders as <tool_response> in the prompt", async () => {
  engine.script = "It is sunny."
  const r = await client.chat.completions.create({
    model: "scripted",
    tools,
    messages: [
      { role: "user", content: "Weather in Paris?" },
      { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } }] },
      { role: "tool", tool_call_id: "call_1", content: '{"sky": "clear"}' },
    ],
  })
  const prompt = engine.prompts.at(-1)!
  expect(prompt).toContain('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
  expect(prompt).toContain('<tool_response>\n{"sky": "clear"}\n</tool_response>')
  expect(r.choices[0]!.message.content).toBe("It is sunny.")
  expect(r.choices[0]!.finish_reason).toBe("stop")
})

test("tool_choice none: no tools in the prompt, tool call text stays text", async () => {
  engine.script = CALL
  const r = await client.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "x" }], tools, tool_choice: "none" })
  expect(engine.prompts.at(-1)).not.toContain("# Tools")
  expect(r.choices[0]!.message.content).toBe(CALL)
  expect(r.choices[0]!.finish_reason).toBe("stop")
})

test("a think block is split into reasoning_content, streaming and not", async () => {
  engine.script = "Let me think.\nStep two.\n</think>\n\nThe answer is 4."
  const body = { model: "scripted", messages: [{ role: "user" as const, content: "2+2?" }], enable_thinking: true }
  const r = await client.chat.completions.create(body as any)
  expect(engine.prompts.at(-1)!.endsWith("<|im_start|>assistant\n<think>\n")).toBe(true)
  const m = r.choices[0]!.message as any
  expect(m.reasoning_content).toBe("Let me think.\nStep two.")
  expect(m.content).toBe("The answer is 4.")

  const stream = await client.chat.completions.create({ ...body, stream: true } as any)
  let reasoning = ""
  let content = ""
  let sawReasoningFirst = false
  for await (const ch of stream as any as AsyncIterable<any>) {
    const d = ch.choices[0]?.delta ?? {}
    if (d.reasoning_content && content === "") sawReasoningFirst = true
    reasoning += d.reasoning_content ?? ""
    content += d.content ?? ""
  }
  expect(sawReasoningFirst).toBe(true)
  expect(reasoning).toBe("Let me think.\nStep two.")
  expect(content).toBe("The answer is 4.")
})

test("with thinking off the prompt closes an empty think block", async () => {
  engine.script = "Four."
  const r = await client.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "2+2?" }] })
  expect(engine.prompts.at(-1)!.endsWith("<think>\n\n</think>\n\n")).toBe(true)
  expect(r.choices[0]!.message.content).toBe("Four.")
  expect((r.choices[0]!.message as any).reasoning_content).toBeUndefined()
})
