/**
 * Records upstream MiniMind trains on and bunmind used to drop, against upstream's own dataset code:
 * tests/fixtures/data/upstream_samples.json holds the ids and loss masks that `SFTDataset` /
 * `DPODataset` (dataset/lm_dataset.py, augmentation off) build for them, or the error upstream dies
 * on (regenerate with `python3 scripts/gen_upstream_sample_fixtures.py`). Each record must validate,
 * render, tokenize, truncate and mask here to exactly the same thing — and be refused where upstream
 * fails.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import { join } from "node:path"
import { Result } from "effect"
import { loadTokenizerConfig, type TokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync, type Tokenizer } from "../src/tokenizer/tokenizer.ts"
import { validateRecord, type DataKind } from "../src/data/records.ts"
import { makeSampleBuilder, type Outcome } from "../src/data/samples.ts"

const DATA = "/work/shared/data/minimind"
interface Side {
  ids: number[]
  mask: number[]
}
interface Case {
  name: string
  kind: "sft" | "dpo"
  max_length: number
  record: Record<string, unknown>
  upstream_error?: string
  ids?: number[]
  mask?: number[]
  chosen?: Side
  rejected?: Side
}
const fixture: { cases: Case[] } = await Bun.file(join(import.meta.dir, "fixtures/data/upstream_samples.json")).json()

let tok: Tokenizer
let config: TokenizerConfig
beforeAll(() => {
  tok = openTokenizerSync(join(DATA, "tokenizer.json"))
  config = loadTokenizerConfig(DATA)
})
afterAll(() => tok.free())

const NO_AUGMENT = { systemPromptP: 0, stripEmptyThinkP: 0 }
const build = (c: Case, unlabeled?: "keep" | "skip"): Outcome => {
  const r = validateRecord(c.kind as DataKind, { file: "u.jsonl", line: 3, value: c.record })
  if (Result.isFailure(r)) throw new Error(`validation refused it: ${r.failure.message}`)
  return makeSampleBuilder(tok, { config }, { kind: c.kind, maxLen: c.max_length, augment: NO_AUGMENT, ...(unlabeled ? { unlabeled } : {}) }).build([r.success])[0]!
}
const sides = (c: Case): Side[] => (c.kind === "sft" ? [{ ids: c.ids!, mask: c.mask! }] : [c.chosen!, c.rejected!])
const noLossToken = (s: Side) => s.mask.slice(1).every((m) => m === 0)

describe("records upstream trains on: same ids and loss mask as upstream's SFTDataset / DPODataset", () => {
  test("the fixture covers what it is for", () => {
    const names = fixture.cases.map((c) => c.name).join("\n")
    expect(names).toContain("tools-only system turn")
    expect(fixture.cases.filter((c) => c.upstream_error).length).toBeGreaterThanOrEqual(2)
    expect(fixture.cases.filter((c) => !c.upstream_error && sides(c).some(noLossToken)).map((c) => c.kind).sort()).toEqual(["dpo", "sft"])
    // the tools preamble is really rendered for the tools-only system turn
    const tools = fixture.cases.find((c) => c.name.startsWith("tools-only system turn (empty content)"))!
    expect(tok.decode(tools.ids!, false)).toStartWith("<|im_start|>system\n\n\n# Tools\n\nYou may call one or more functions")
    expect(tok.decode(tools.ids!, false)).toContain("<|im_start|>user\n<tool_response>\n\n</tool_response><|im_end|>\n")
  })

  test.each(fixture.cases.filter((c) => !c.upstream_error).map((c) => [c.name, c] as const))("%s", (_name, c) => {
    const o = build(c)
    if (o._tag !== "Sample") throw new Error(`dropped: ${o.reason}`)
    const want = sides(c)
    expect(o.samples.length).toBe(want.length)
    o.samples.forEach((s, k) => {
      expect(Array.from(s.ids)).toEqual(want[k]!.ids)
      expect(Array.from(s.mask)).toEqual(want[k]!.mask)
    })
    expect(o.unlabeled ?? false).toBe(want.some(noLossToken))
  })

  test.each(fixture.cases.filter((c) => c.upstream_error).map((c) => [c.name, c] as const))("%s: skipped as a bad record here too", (_name, c) => {
    const o = build(c)
    expect(o).toMatchObject({ _tag: "Drop", bad: true, line: 3 })
    if (o._tag !== "Drop") return
    expect(o.reason).toStartWith("chat template: ")
    expect(o.reason).toEndWith("(conversations[0] has no content: null or absent)")
  })

  test("unlabeled: \"skip\" drops exactly the samples without a loss token, not bad, and says why", () => {
    for (const c of fixture.cases.filter((c) => !c.upstream_error)) {
      const o = build(c, "skip")
      if (sides(c).some(noLossToken)) {
        expect(o).toEqual({ _tag: "Drop", file: "u.jsonl", line: 3, reason: `no assistant tokens within max_len ${c.max_length}`, bad: false, unlabeled: true })
      } else {
        expect(o._tag).toBe("Sample")
      }
    }
  })
})
