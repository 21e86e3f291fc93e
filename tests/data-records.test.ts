import { describe, expect, test } from "bun:test"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Exit, Result, Stream } from "effect"
import { BadRecordLog } from "../src/data/bad-records.ts"
import { parsePyLiteral } from "../src/data/py-literal.ts"
import { readRecords } from "../src/data/read.ts"
import { validateRecord, validateRecords, type DataKind } from "../src/data/records.ts"

const check = (kind: DataKind, value: unknown, file = "sft.jsonl", line = 17): unknown => {
  const r = validateRecord(kind, { file, line, value })
  return Result.isSuccess(r) ? r.success.record : r.failure.message
}
const user = (content: string) => ({ role: "user", content })
const assistant = (content: string) => ({ role: "assistant", content })

describe("SFT records", () => {
  test("a wrong role names file:line, the field path, the allowed values and what was found", () => {
    expect(check("sft", { conversations: [user("a"), assistant("b"), { role: "bot", content: "c" }] })).toBe(
      'sft.jsonl:17: conversations[2].role: expected one of system|user|assistant|tool, got "bot"',
    )
  })
  test("missing fields, wrong types, no assistant turn are refused", () => {
    expect(check("sft", {})).toBe("sft.jsonl:17: conversations: missing")
    expect(check("sft", { conversations: "hi" })).toBe('sft.jsonl:17: conversations: expected array, got "hi"')
    expect(check("sft", { conversations: [{ role: "user", content: 4 }, assistant("b")] })).toStartWith("sft.jsonl:17: conversations[0].content: expected ")
    expect(check("sft", { conversations: [user("q")] })).toBe("sft.jsonl:17: conversations: no assistant turn: nothing to train on")
    expect(check("sft", { conversations: [] })).toBe("sft.jsonl:17: conversations: empty conversation")
    expect(check("sft", { conversations: [{ role: 3, content: 4 }, assistant("b")] })).toBe(
      "sft.jsonl:17: conversations[0].role: expected one of system|user|assistant|tool, got 3 (and 1 more problem)",
    )
    expect(check("sft", "text")).toBe('sft.jsonl:17: expected a JSON object, got "text"')
  })
  test("empty contents are kept on every turn, as upstream trains on them; a null or absent content stays absent", () => {
    // upstream renders these through the chat template and trains on the record (tests/data-upstream-samples.test.ts)
    expect(check("sft", { conversations: [user(""), assistant("b")] })).toEqual({ conversations: [user(""), assistant("b")] })
    expect(check("sft", { conversations: [user("  \n"), assistant("")] })).toEqual({ conversations: [user("  \n"), assistant("")] })
    expect(check("sft", { conversations: [{ role: "user" }, assistant("b"), { role: "user", content: null }, { role: "assistant", content: null }] })).toEqual({
      conversations: [{ role: "user" }, assistant("b"), { role: "user" }, { role: "assistant" }],
    })
    expect(check("sft", { conversations: [{ role: "system", content: "" }, user("q"), assistant("a"), { role: "tool", content: "" }, assistant("b")] })).toEqual({
      conversations: [{ role: "system", content: "" }, user("q"), assistant("a"), { role: "tool", content: "" }, assistant("b")],
    })
  })
  test("tools and tool_calls: JSON strings are parsed; an empty assistant content is fine with tool_calls", () => {
    const rec = check("sft", {
      conversations: [
        { role: "system", content: "s", tools: '[{"type":"function","function":{"name":"f"}}]' },
        user("q"),
        { role: "assistant", content: "", tool_calls: '[{"name":"f","arguments":{}}]' },
        { role: "tool", content: "{}" },
        { role: "assistant", content: "done", reasoning_content: null, tool_calls: null },
      ],
    })
    expect(rec).toEqual({
      conversations: [
        { role: "system", content: "s", tools: [{ type: "function", function: { name: "f" } }] },
        { role: "user", content: "q" },
        { role: "assistant", content: "", tool_calls: [{ name: "f", arguments: {} }] },
        { role: "tool", content: "{}" },
        { role: "assistant", content: "done" },
      ],
    })
    expect(check("sft", { conversations: [{ role: "system", content: "s", tools: "[{" }, user("q"), assistant("a")] })).toStartWith(
      "sft.jsonl:17: conversations[0].tools: invalid JSON: ",
    )
    expect(check("sft", { conversations: [user("q"), { role: "assistant", content: "", tool_calls: '{"name":"f"}' }] })).toBe(
      'sft.jsonl:17: conversations[1].tool_calls: expected a JSON array, got {"name":"f"}',
    )
  })
  test("a system turn that only carries tools (empty or no content) is kept with its tools", () => {
    const tools = '[{"type":"function","function":{"name":"f"}}]'
    const parsed = [{ type: "function", function: { name: "f" } }]
    expect(check("sft", { conversations: [{ role: "system", content: "", tools }, user("q"), assistant("a")] })).toEqual({
      conversations: [{ role: "system", content: "", tools: parsed }, user("q"), assistant("a")],
    })
    expect(check("sft", { conversations: [{ role: "system", tools, tool_calls: "" }, user("q"), assistant("a")] })).toEqual({
      conversations: [{ role: "system", tools: parsed }, user("q"), assistant("a")],
    })
    expect(check("sft", { conversations: [{ role: "system", content: "", tools: "{oops" }, user("q"), assistant("a")] })).toStartWith(
      "sft.jsonl:17: conversations[0].tools: invalid JSON: ",
    )
  })
  test("seed v1 rows (history, q, a) become conversations; bad history names the column", () => {
    expect(check("sft", { history: "[['h1', 'a1'], ['lonely'], (\"it's\", 'a\\n2')]", q: "q", a: "a" })).toEqual({
      conversations: [user("h1"), assistant("a1"), user("it's"), assistant("a\n2"), user("q"), assistant("a")],
    })
    expect(check("sft", { history: "[]", q: "q", a: "a" }, "sft_data_single.csv", 5)).toEqual({ conversations: [user("q"), assistant("a")] })
    expect(check("sft", { history: "[['h1'", q: "q", a: "a" }, "s.csv", 5)).toBe(
      `s.csv:5: history: not a Python list literal: expected "," or "]" at offset 6`,
    )
    expect(check("sft", { history: "[]", q: "", a: " " }, "s.csv", 5)).toEqual({ conversations: [user(""), assistant(" ")] })
    expect(check("sft", { history: "[]", q: "q" }, "s.csv", 5)).toBe("s.csv:5: a: missing")
  })
})

describe("pretrain and DPO records", () => {
  test("pretrain: text must be a non-empty string", () => {
    expect(check("pretrain", { text: "hello" })).toEqual({ text: "hello" })
    expect(check("pretrain", { text: " \n" }, "p.jsonl", 3)).toBe("p.jsonl:3: text: empty text")
    expect(check("pretrain", { text: 5 }, "p.jsonl", 3)).toBe("p.jsonl:3: text: expected string, got 5")
    expect(check("pretrain", { body: "x" }, "p.jsonl", 3)).toBe("p.jsonl:3: text: missing")
  })
  test("dpo: chosen and rejected are each checked, with their own field names", () => {
    const pair = [user("q"), assistant("a")]
    expect(check("dpo", { chosen: pair, rejected: pair })).toEqual({ chosen: pair, rejected: pair })
    expect(check("dpo", { chosen: pair, rejected: [user("q")] }, "d.jsonl", 2)).toBe("d.jsonl:2: rejected: no assistant turn: nothing to train on")
    expect(check("dpo", { chosen: pair }, "d.jsonl", 2)).toBe("d.jsonl:2: rejected: missing")
    expect(check("dpo", { chosen: [user("q"), { role: "assistant", content: "" }], rejected: pair }, "d.jsonl", 2)).toEqual({
      chosen: [user("q"), assistant("")],
      rejected: pair,
    })
    expect(check("dpo", { chosen: pair, rejected: [] }, "d.jsonl", 2)).toBe("d.jsonl:2: rejected: empty conversation")
  })
})

describe("onBadRecord over a file", () => {
  const dir = mkdtempSync(join(tmpdir(), "bunmind-data-records-"))
  const p = join(dir, "sft.jsonl")
  const good = JSON.stringify({ conversations: [user("q"), assistant("a")] })
  writeFileSync(
    p,
    [
      good,
      "{not json",
      JSON.stringify({ conversations: [user("q"), { role: "bot", content: "x" }] }),
      good,
      JSON.stringify({ conversations: [user("q")] }),
      good,
    ].join("\n"),
  )
  test("skip: bad lines are counted and the first warnings name file:line", async () => {
    const bad = new BadRecordLog({ mode: "skip", maxWarnings: 2, log: false })
    const recs = await Effect.runPromise(Stream.runCollect(readRecords(p, { bad }).pipe(validateRecords("sft", bad))))
    expect(recs.map((r) => r.line)).toEqual([1, 4, 6])
    expect(bad.skipped).toBe(3)
    expect(bad.warnings.length).toBe(2)
    expect(bad.warnings[0]).toStartWith(`skipped ${p}:2: invalid JSON`)
    expect(bad.warnings[1]).toBe(`skipped ${p}:3: conversations[1].role: expected one of system|user|assistant|tool, got "bot"`)
    expect(bad.summary()).toBe("3 records skipped, 0 warnings (first 2 shown)")
  })
  test("fail: the first bad record stops the stream as a typed BadRecord", async () => {
    const bad = new BadRecordLog({ mode: "fail" })
    const exit = await Effect.runPromiseExit(Stream.runCollect(readRecords(p, { bad }).pipe(validateRecords("sft", bad))))
    expect(Exit.isFailure(exit)).toBe(true)
    const reason = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
    expect(reason?._tag).toBe("Fail")
    const error = reason?._tag === "Fail" ? (reason.error as { _tag: string; line: number; file: string }) : undefined
    expect(error?._tag).toBe("BadRecord")
    expect(error?.line).toBe(2)
  })
})

describe("Python literals (v1 history)", () => {
  test("lists, tuples, quotes, escapes, numbers, None/True/False, adjacent strings", () => {
    expect(parsePyLiteral(`[('a', "b's"), ['\\u4f60\\x41\\n\\\\', 1, -2.5, None, True, False], 'x' "y"]`)).toEqual([
      ["a", "b's"],
      ["你A\n\\", 1, -2.5, null, true, false],
      "xy",
    ])
    expect(parsePyLiteral("'''multi\nline'''")).toBe("multi\nline")
  })
  test("anything else is refused, never evaluated", () => {
    expect(() => parsePyLiteral("__import__('os')")).toThrow("unexpected character at offset 0")
    expect(() => parsePyLiteral("[1, 2")).toThrow()
    expect(() => parsePyLiteral("[1] x")).toThrow("trailing text")
  })
})
