/**
 * The output parser on its own: stop sequences, think blocks and tool calls must come out the same
 * however the text is split into pieces (the detokenizer can cut anywhere), and stop sequences are
 * never emitted. Expectations are written out by hand from the text.
 */
import { describe, expect, test } from "bun:test"
import { IncrementalDecoder, OutputParser, parseToolCalls, type ParseOptions } from "../src/serve/output.ts"
import { openTokenizerSync } from "../src/tokenizer/tokenizer.ts"
import { shared } from "./helpers/cli.ts"

/** Feeds `text` in pieces of the given sizes; returns the concatenated deltas and the final state. */
function run(text: string, opts: ParseOptions, sizes: (i: number) => number) {
  const p = new OutputParser(opts)
  let content = ""
  let reasoning = ""
  const take = (ds: { content?: string; reasoning?: string }[]) =>
    ds.forEach((d) => {
      content += d.content ?? ""
      reasoning += d.reasoning ?? ""
    })
  let i = 0
  let k = 0
  while (i < text.length && !p.stopped) {
    const n = Math.max(1, sizes(k++))
    take(p.push(text.slice(i, i + n)))
    i += n
  }
  take(p.finish())
  expect(content).toBe(p.content)
  expect(reasoning).toBe(p.reasoning)
  return { content, reasoning, toolCalls: p.toolCalls, stopped: p.stopped }
}

const splits: Array<[string, (i: number) => number]> = [
  ["whole", () => 1e9],
  ["chars", () => 1],
  ["pairs", () => 2],
  ["irregular", (i) => [3, 1, 5, 2, 7][i % 5]!],
]

describe.each(splits)("split %s", (_name, sizes) => {
  test("plain text passes through unchanged", () => {
    const r = run("Hello, world.\n\nSecond line ", {}, sizes)
    expect(r).toEqual({ content: "Hello, world.\n\nSecond line ", reasoning: "", toolCalls: [], stopped: false })
  })

  test("output is cut before the first stop sequence, which is never emitted", () => {
    expect(run("one two STOP three", { stop: ["STOP"] }, sizes)).toMatchObject({ content: "one two ", stopped: true })
    expect(run("abcXYdefXYZ", { stop: ["XYZ", "de"] }, sizes)).toMatchObject({ content: "abcXY", stopped: true })
    // A stop sequence's prefix at the very end is released when the output ends without it.
    expect(run("ends with ST", { stop: ["STOP"] }, sizes)).toMatchObject({ content: "ends with ST", stopped: false })
  })

  test("a thinking prompt's output splits at </think>", () => {
    const r = run("\nfirst I think\nsecond\n\n</think>\n\nThe answer.", { startInThink: true }, sizes)
    expect(r).toMatchObject({ reasoning: "first I think\nsecond", content: "The answer." })
  })

  test("a <think> block produced by the model is split off too", () => {
    expect(run("<think>\nhmm\n</think>\n\nyes", {}, sizes)).toMatchObject({ reasoning: "hmm", content: "yes" })
    // `<thinker>` is not a think block.
    expect(run("<thinker> ok", {}, sizes)).toMatchObject({ reasoning: "", content: "<thinker> ok" })
  })

  test("an unfinished think block stays reasoning", () => {
    expect(run("still thinking\n", { startInThink: true }, sizes)).toMatchObject({ reasoning: "still thinking", content: "" })
  })

  test("stop sequences apply to the raw text, think block included", () => {
    expect(run("abc</think>\n\nde", { startInThink: true, stop: ["d"] }, sizes)).toMatchObject({ reasoning: "abc", content: "", stopped: true })
  })

  test("tool calls become structured calls; text before them stays content", () => {
    const text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "now", "arguments": "{}"}\n</tool_call>'
    const r = run(text, { parseTools: true }, sizes)
    expect(r.content).toBe("Let me check.")
    expect(r.toolCalls.map((c) => c.function)).toEqual([
      { name: "get_weather", arguments: '{"city":"Paris"}' },
      { name: "now", arguments: "{}" },
    ])
    expect(new Set(r.toolCalls.map((c) => c.id)).size).toBe(2)
  })

  test("a tool call block that is not JSON is returned as text", () => {
    const text = "x <tool_call>\nnot json\n</tool_call>"
    expect(run(text, { parseTools: true }, sizes)).toMatchObject({ content: text, toolCalls: [] })
  })

  test("without tools in the request, tool call text is plain content", () => {
    const text = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    expect(run(text, {}, sizes)).toMatchObject({ content: text, toolCalls: [] })
  })
})

test("parseToolCalls skips calls without a string name", () => {
  expect(parseToolCalls('<tool_call>{"arguments": {}}</tool_call><tool_call>{"name": "ok"}</tool_call>').map((c) => c.function)).toEqual([
    { name: "ok", arguments: "{}" },
  ])
})

test("the incremental decoder emits whole characters and adds up to a full decode", () => {
  const tok = openTokenizerSync(`${shared}/minimind`)
  try {
    const text = "你好，世界！ naïve café 🙂 end"
    const ids = Array.from(tok.encode(text))
    const d = new IncrementalDecoder(tok)
    const pieces = ids.map((id) => d.push(id))
    pieces.push(d.flush())
    expect(pieces.join("")).toBe(tok.decode(ids, true))
    expect(pieces.join("")).toBe(text)
    for (const p of pieces) expect(p).not.toContain("\uFFFD")
    // Some token ended inside a multi-byte character and was held back (an empty piece).
    expect(pieces.some((p) => p === "")).toBe(true)
  } finally {
    tok.free()
  }
})
