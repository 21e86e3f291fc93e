/**
 * Loss masks against the real MiniMind tokenizer and chat template: a hand-worked expectation
 * (system + tools + tool call + tool response + think + multi-turn), and MiniMind's rule
 * re-implemented here on token ids for every line of tiny_sft.jsonl / tiny_dpo.jsonl.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { Result } from "effect"
import { loadTokenizerConfig, type TokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync, type Tokenizer } from "../src/tokenizer/tokenizer.ts"
import { EMPTY_THINK } from "../src/data/augment.ts"
import { assistantMask, pretrainSample } from "../src/data/masks.ts"
import { validateRecord, type DataKind, type Validated } from "../src/data/records.ts"
import { makeSampleBuilder, type Outcome } from "../src/data/samples.ts"

const DATA = "/work/shared/data/minimind"
let tok: Tokenizer
let config: TokenizerConfig
beforeAll(() => {
  tok = openTokenizerSync(join(DATA, "tokenizer.json"))
  config = loadTokenizerConfig(DATA)
})
afterAll(() => tok.free())

const validated = <K extends DataKind>(kind: K, value: unknown, line = 1): Validated<K> => {
  const r = validateRecord(kind, { file: "t.jsonl", line, value })
  if (Result.isFailure(r)) throw new Error(r.failure.message)
  return r.success
}
const sampleOf = (o: Outcome | undefined) => {
  if (!o || o._tag !== "Sample") throw new Error(`expected a sample, got ${JSON.stringify(o)}`)
  return o
}
/** The decoded text of each maximal run of mask-1 tokens. */
const maskedSpans = (ids: ArrayLike<number>, mask: ArrayLike<number>): string[] => {
  const spans: string[] = []
  let run: number[] = []
  for (let t = 0; t <= ids.length; t++) {
    if (t < ids.length && mask[t] === 1) run.push(ids[t]!)
    else if (run.length) (spans.push(tok.decode(run, false)), (run = []))
  }
  return spans
}
const NO_AUGMENT = { systemPromptP: 0, stripEmptyThinkP: 0 }

/**
 * MiniMind's generate_labels, written independently of src/data/masks.ts: a left-to-right scan
 * with an "inside an assistant span" flag.
 */
const referenceMask = (ids: ArrayLike<number>): number[] => {
  const open = Array.from(tok.encode("<|im_start|>assistant\n", false))
  const close = Array.from(tok.encode("<|im_end|>\n", false))
  const at = (i: number, seq: number[]) => seq.every((x, k) => ids[i + k] === x)
  const out: number[] = []
  let inside = false
  for (let i = 0; i < ids.length; ) {
    if (!inside && at(i, open)) {
      for (let k = 0; k < open.length && i < ids.length; k++, i++) out.push(0)
      inside = true
    } else if (inside && at(i, close)) {
      for (let k = 0; k < close.length; k++, i++) out.push(1)
      inside = false
    } else {
      out.push(inside ? 1 : 0)
      i++
    }
  }
  return out
}

describe("hand-worked SFT mask: system + tools + tool call + tool response + think + two more turns", () => {
  const tools = [{ type: "function", function: { name: "get_weather", description: "天气", parameters: { type: "object", properties: { city: { type: "string" } } } } }]
  const record = {
    conversations: [
      { role: "system", content: "你是助手。", tools: JSON.stringify(tools) },
      { role: "user", content: "北京天气？" },
      { role: "assistant", content: "", tool_calls: JSON.stringify([{ name: "get_weather", arguments: { city: "北京" } }]) },
      { role: "tool", content: '{"temp": 20}' },
      { role: "assistant", content: "20度，晴。", reasoning_content: "工具说 20 度。" },
      { role: "user", content: "谢谢" },
      { role: "assistant", content: "不客气！" },
    ],
  }
  // Written out by hand from the template in tokenizer_config.json.
  const toolsJson = '{"type": "function", "function": {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}'
  const span1 = '<think>\n\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>\n'
  const span2 = "<think>\n工具说 20 度。\n</think>\n\n20度，晴。<|im_end|>\n"
  const span3 = "<think>\n\n</think>\n\n不客气！<|im_end|>\n"
  const full =
    "<|im_start|>system\n你是助手。\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
    `You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n${toolsJson}\n</tools>\n\n` +
    'For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' +
    "<|im_start|>user\n北京天气？<|im_end|>\n" +
    `<|im_start|>assistant\n${span1}` +
    '<|im_start|>user\n<tool_response>\n{"temp": 20}\n</tool_response><|im_end|>\n' +
    `<|im_start|>assistant\n${span2}` +
    "<|im_start|>user\n谢谢<|im_end|>\n" +
    `<|im_start|>assistant\n${span3}`

  test("masked spans are exactly the three assistant replies, each through <|im_end|>\\n", () => {
    const b = makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: 2048, augment: NO_AUGMENT })
    const s = sampleOf(b.build([validated("sft", record)])[0]).samples[0]!
    expect(tok.decode(s.ids, false)).toBe(full)
    expect(maskedSpans(s.ids, s.mask)).toEqual([span1, span2, span3])
    expect(Array.from(s.mask)).toEqual(referenceMask(s.ids))
  })
  test("a tools-only system turn (empty content) and an empty tool result are kept: tools preamble rendered, same three spans masked", () => {
    const turns = record.conversations.map((t, i) => (i === 0 ? { ...t, content: "" } : i === 3 ? { ...t, content: "" } : t))
    const b = makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: 2048, augment: { systemPromptP: 1, stripEmptyThinkP: 0 } })
    const o = sampleOf(b.build([validated("sft", { conversations: turns })])[0])
    const s = o.samples[0]!
    // MiniMind's template writes messages[0].content + "\n\n" before "# Tools"; tools also suppress the random system prompt
    const expected = full.replace("<|im_start|>system\n你是助手。\n\n# Tools", "<|im_start|>system\n\n\n# Tools").replace('<tool_response>\n{"temp": 20}\n</tool_response>', "<tool_response>\n\n</tool_response>")
    expect(expected).not.toBe(full)
    expect(tok.decode(s.ids, false)).toBe(expected)
    expect(maskedSpans(s.ids, s.mask)).toEqual([span1, span2, span3])
    expect(Array.from(s.mask)).toEqual(referenceMask(s.ids))
    expect(o.unlabeled).toBeUndefined()
  })
  test("empty-think stripping (p = 1) removes the empty blocks from the masked spans only where empty; tools suppress the system prompt", () => {
    const b = makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: 2048, augment: { systemPromptP: 1, stripEmptyThinkP: 1 } })
    const s = sampleOf(b.build([validated("sft", record)])[0]).samples[0]!
    expect(maskedSpans(s.ids, s.mask)).toEqual([span1.replace(EMPTY_THINK, ""), span2, span3.replace(EMPTY_THINK, "")])
    expect(tok.decode(s.ids, false)).toBe(full.replaceAll(EMPTY_THINK, ""))
  })
  test("truncation inside a reply masks to the end, like upstream; a cut before any reply keeps the sample with no loss token (upstream keeps it), unless unlabeled: skip", () => {
    const whole = sampleOf(makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: 2048, augment: NO_AUGMENT }).build([validated("sft", record)])[0]).samples[0]!
    const cut = whole.ids.length - 3
    const o = sampleOf(makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: cut, augment: NO_AUGMENT }).build([validated("sft", record, 9)])[0])
    expect(o.truncatedFrom).toBe(whole.ids.length)
    expect(o.samples[0]!.ids.length).toBe(cut)
    expect(Array.from(o.samples[0]!.mask)).toEqual(Array.from(whole.mask.subarray(0, cut)))
    const tiny = sampleOf(makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: 20, augment: NO_AUGMENT }).build([validated("sft", record, 9)])[0])
    expect(tiny).toMatchObject({ line: 9, truncatedFrom: whole.ids.length, unlabeled: true })
    expect(Array.from(tiny.samples[0]!.ids)).toEqual(Array.from(whole.ids.subarray(0, 20)))
    expect(Array.from(tiny.samples[0]!.mask)).toEqual(new Array(20).fill(0))
    expect(Array.from(tiny.samples[0]!.mask)).toEqual(referenceMask(tiny.samples[0]!.ids))
    const dropped = makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: 20, unlabeled: "skip", augment: NO_AUGMENT }).build([validated("sft", record, 9)])[0]
    expect(dropped).toEqual({ _tag: "Drop", file: "t.jsonl", line: 9, reason: "no assistant tokens within max_len 20", bad: false, unlabeled: true })
    // a sample with loss tokens is never marked, whatever the mode
    expect(sampleOf(makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: cut, unlabeled: "skip", augment: NO_AUGMENT }).build([validated("sft", record, 9)])[0]).unlabeled).toBeUndefined()
    const skip = makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: cut, overLong: "skip", augment: NO_AUGMENT }).build([validated("sft", record, 9)])[0]
    expect(skip).toMatchObject({ _tag: "Drop", bad: false, reason: `${whole.ids.length} tokens > max_len ${cut}` })
  })
})

describe("MiniMind's rule on the published tiny files", () => {
  const lines = (name: string) => readFileSync(join(DATA, name), "utf8").split("\n").filter((l) => l.trim())
  test("tiny_sft.jsonl: every line's mask equals the reference scan, and the spans are the assistant replies", () => {
    const records = lines("tiny_sft.jsonl").map((l, i) => validated("sft", JSON.parse(l), i + 1))
    for (const augment of [NO_AUGMENT, { systemPromptP: 1, stripEmptyThinkP: 1 }]) {
      const out = makeSampleBuilder(tok, { config }, { kind: "sft", maxLen: 768, augment }).build(records)
      expect(out.length).toBe(records.length)
      out.forEach((o, i) => {
        const s = sampleOf(o).samples[0]!
        expect(Array.from(s.mask)).toEqual(referenceMask(s.ids))
        const replies = records[i]!.record.conversations.filter((t) => t.role === "assistant")
        const think = augment.stripEmptyThinkP ? "" : EMPTY_THINK
        expect(maskedSpans(s.ids, s.mask)).toEqual(replies.map((t) => `${think}${t.content}<|im_end|>\n`))
        const text = tok.decode(s.ids, false)
        if (augment.systemPromptP && records[i]!.record.conversations[0]!.role !== "system") expect(text).toStartWith("<|im_start|>system\n")
      })
    }
  })
  test("tiny_dpo.jsonl: chosen and rejected are masked by the same rule", () => {
    const records = lines("tiny_dpo.jsonl").map((l, i) => validated("dpo", JSON.parse(l), i + 1))
    const out = makeSampleBuilder(tok, { config }, { kind: "dpo", maxLen: 1024, augment: { stripEmptyThinkP: 0 } }).build(records)
    out.forEach((o, i) => {
      const [chosen, rejected] = sampleOf(o).samples
      const rec = records[i]!.record
      for (const [s, turns] of [[chosen!, rec.chosen], [rejected!, rec.rejected]] as const) {
        expect(Array.from(s.mask)).toEqual(referenceMask(s.ids))
        expect(maskedSpans(s.ids, s.mask)).toEqual([`${EMPTY_THINK}${turns[1]!.content}<|im_end|>\n`])
      }
    })
  })
  test("tiny_pretrain.jsonl: [bos] + text + [eos], mask 1 on every token; truncation keeps eos", () => {
    const records = lines("tiny_pretrain.jsonl").map((l, i) => validated("pretrain", JSON.parse(l), i + 1))
    const out = makeSampleBuilder(tok, { config }, { kind: "pretrain", maxLen: 340 }).build(records)
    out.forEach((o, i) => {
      const s = sampleOf(o).samples[0]!
      expect(Array.from(s.ids)).toEqual([1, ...tok.encode(records[i]!.record.text, false), 2])
      expect(s.mask.every((m) => m === 1)).toBe(true)
    })
    const short = sampleOf(makeSampleBuilder(tok, undefined, { kind: "pretrain", maxLen: 5 }).build([records[0]!])[0])
    expect(Array.from(short.samples[0]!.ids)).toEqual([1, ...tok.encode(records[0]!.record.text, false).slice(0, 3), 2])
    expect(short.truncatedFrom).toBeGreaterThan(5)
  })
})

describe("assistantMask edge cases (plain ids)", () => {
  const open = [1, 7, 9]
  const close = [2, 9]
  test("spans start after the opener, end after the closer; unterminated spans run to the end", () => {
    expect(Array.from(assistantMask([5, 1, 7, 9, 4, 4, 2, 9, 1, 7, 9, 3], open, close))).toEqual([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1])
    expect(Array.from(assistantMask([1, 7, 9, 2, 9], open, close))).toEqual([0, 0, 0, 1, 1])
    expect(Array.from(assistantMask([1, 7, 3, 2, 9], open, close))).toEqual([0, 0, 0, 0, 0])
    expect(Array.from(assistantMask([1, 7, 9, 4, 2], open, close))).toEqual([0, 0, 0, 1, 1])
  })
  test("pretrainSample keeps bos and eos at every max_len", () => {
    expect(Array.from(pretrainSample([10, 11, 12], 1, 2, 4).ids)).toEqual([1, 10, 11, 2])
    expect(Array.from(pretrainSample([10, 11, 12], 1, 2, 3).ids)).toEqual([1, 10, 2])
  })
})
