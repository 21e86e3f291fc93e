import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Exit, Result, Stream } from "effect"
import { loadTokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync, type Tokenizer } from "../src/tokenizer/tokenizer.ts"
import { BadRecordLog } from "../src/data/bad-records.ts"
import { formatDatasetInspection, formatShardInspection, inspectDataset, inspectShards } from "../src/data/inspect.ts"
import { prepareShards } from "../src/data/prepare.ts"
import { readRecords } from "../src/data/read.ts"
import { validateRecords } from "../src/data/records.ts"
import { BatchSampler, epochPermutation } from "../src/data/sampler.ts"
import { makeSampleBuilder } from "../src/data/samples.ts"
import { openShards } from "../src/data/shards.ts"

const DATA = "/work/shared/data/minimind"
const dir = mkdtempSync(join(tmpdir(), "bunmind-data-shards-"))
let tok: Tokenizer
beforeAll(() => {
  tok = openTokenizerSync(join(DATA, "tokenizer.json"))
})
afterAll(() => {
  tok.free()
  rmSync(dir, { recursive: true, force: true })
})
const run = <A, E>(e: Effect.Effect<A, E>) => Effect.runPromise(e)
const failure = async <A, E>(e: Effect.Effect<A, E>): Promise<E> => {
  const exit = await Effect.runPromiseExit(e)
  if (Exit.isSuccess(exit)) throw new Error("expected failure")
  const r = exit.cause.reasons.find((x) => x._tag === "Fail")
  if (r?._tag !== "Fail") throw new Error(`expected a typed failure, got ${exit.cause}`)
  return r.error
}

describe("prepareShards → openShards round trip", () => {
  test("SFT: stored sequences equal the sample builder's output; batches are shifted and padded", async () => {
    const out = join(dir, "sft")
    const res = await run(prepareShards({ input: join(DATA, "tiny_sft.jsonl"), tokenizer: DATA, kind: "sft", outDir: out, maxLen: 128, shardTokens: 128, log: false }))
    expect(res.index.records).toBe(3)
    expect(res.index.shards.length).toBeGreaterThan(1) // 128-token shards force a rollover
    expect(readdirSync(out).sort()).toContain("index.json")
    expect(readdirSync(dir).filter((n) => n.includes(".tmp-"))).toEqual([])

    const recs = await run(Stream.runCollect(readRecords(join(DATA, "tiny_sft.jsonl")).pipe(validateRecords("sft", new BadRecordLog()))))
    const expected = makeSampleBuilder(tok, { config: loadTokenizerConfig(DATA) }, { kind: "sft", maxLen: 128 }).build(recs)
    const set = await run(openShards(out))
    expect(set.numSamples).toBe(3)
    expected.forEach((o, i) => {
      if (o._tag !== "Sample") throw new Error("dropped")
      expect(Array.from(set.sequence(i).ids)).toEqual(Array.from(o.samples[0]!.ids))
      expect(Array.from(set.sequence(i).mask)).toEqual(Array.from(o.samples[0]!.mask))
    })
    expect(res.index.tokens).toBe(expected.reduce((n, o) => n + (o._tag === "Sample" ? o.samples[0]!.ids.length : 0), 0))
    expect(res.index.tokenizer.sha256).toBe(new Bun.CryptoHasher("sha256").update(readFileSync(join(DATA, "tokenizer.json"))).digest("hex"))

    const T = 40
    const b = set.getBatch([2, 0], T)
    expect([b.ids.length, b.targets.length, b.mask.length]).toEqual([2 * T, 2 * T, 2 * T])
    for (const [row, i] of [[0, 2], [1, 0]] as const) {
      const s = set.sequence(i)
      const n = Math.min(s.ids.length - 1, T)
      for (let t = 0; t < T; t++) {
        // inputs run one further than targets: the last token is fed (no target), as upstream
        expect(b.ids[row * T + t]).toBe(t < Math.min(s.ids.length, T) ? s.ids[t]! : 0)
        expect(b.targets[row * T + t]).toBe(t < n ? s.ids[t + 1]! : 0)
        expect(b.mask[row * T + t]).toBe(t < n ? s.mask[t + 1]! : 0)
      }
    }
    const long = set.getBatch([0], 200) // longer than the sample: padding is masked out
    const len0 = set.sequence(0).ids.length
    expect(Array.from(long.mask.subarray(len0 - 1))).toEqual(new Array(200 - len0 + 1).fill(0))
    expect(Array.from(long.ids.subarray(len0)).every((x) => x === 0)).toBe(true) // ids: the last token is an input too
  })

  test("pretrain packed: fixed rows holding every sample's tokens in order; DPO pairs", async () => {
    const out = join(dir, "packed")
    const res = await run(prepareShards({ input: join(DATA, "tiny_pretrain.jsonl"), tokenizer: join(DATA, "tokenizer.json"), kind: "pretrain", outDir: out, maxLen: 16, pack: true, log: false }))
    const set = await run(openShards(out))
    expect(set.index.layout).toBe("packed")
    const texts = readFileSync(join(DATA, "tiny_pretrain.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l).text as string)
    const stream = texts.flatMap((t) => [1, ...tok.encode(t, false), 2])
    expect(set.numSamples).toBe(Math.ceil(stream.length / 16))
    const stored = Array.from({ length: set.numSamples }, (_, i) => Array.from(set.sequence(i).ids)).flat()
    expect(stored.slice(0, stream.length)).toEqual(stream)
    expect(stored.slice(stream.length).every((x) => x === 0)).toBe(true)
    expect(res.index.targetTokens).toBeGreaterThan(0)

    const dpo = await run(prepareShards({ input: join(DATA, "tiny_dpo.jsonl"), tokenizer: DATA, kind: "dpo", outDir: join(dir, "dpo"), maxLen: 256, log: false }))
    expect([dpo.index.records, dpo.index.sequences]).toEqual([2, 4])
    const pairs = await run(openShards(join(dir, "dpo")))
    expect(pairs.numSamples).toBe(2)
    const { chosen, rejected } = pairs.getPairBatch([1], 64)
    expect(tok.decode(Array.from(chosen.targets).filter((_, t) => chosen.mask[t] === 1), false)).toContain("tokenizer 负责把文本切分")
    expect(tok.decode(Array.from(rejected.targets).filter((_, t) => rejected.mask[t] === 1), false)).toContain("tokenizer 是一个数据库")
    expect(() => pairs.getBatch([0], 8)).toThrow("getPairBatch")
  })

  test("bad records: skip counts them (index.json too); fail leaves no output and no temp dir", async () => {
    const input = join(dir, "dirty.jsonl")
    const ok = (c: string) => JSON.stringify({ conversations: [{ role: "user", content: "q" }, { role: "assistant", content: c }] })
    writeFileSync(input, [ok("a"), "{oops", JSON.stringify({ conversations: [{ role: "bot", content: "x" }] }), ok("b".repeat(300))].join("\n"))
    const res = await run(prepareShards({ input, tokenizer: DATA, kind: "sft", outDir: join(dir, "dirty"), maxLen: 64, onBadRecord: "skip", log: false }))
    expect([res.index.records, res.skipped, res.index.skipped, res.index.truncated]).toEqual([2, 2, 2, 1])
    expect(res.warnings[0]).toStartWith(`skipped ${input}:2: invalid JSON`)
    expect(res.warnings[1]).toBe(`skipped ${input}:3: conversations[0].role: expected one of system|user|assistant|tool, got "bot"`)
    expect(res.warnings[2]).toMatch(new RegExp(`^${input}:4: \\d+ tokens > max_len 64, truncated$`))
    expect(res.summary).toContain("2 records skipped, 1 warning")

    const failed = join(dir, "failed")
    const e = await failure(prepareShards({ input, tokenizer: DATA, kind: "sft", outDir: failed, maxLen: 64, onBadRecord: "fail", log: false }))
    expect(e._tag).toBe("BadRecord")
    expect(e.message).toStartWith(`${input}:2: invalid JSON`)
    expect(existsSync(failed)).toBe(false)
    expect(readdirSync(dir).filter((n) => n.includes(".tmp-"))).toEqual([])
  })

  test("samples with no assistant token within max_len: kept and counted by default (as upstream), dropped with unlabeled: skip", async () => {
    const long = "为什么天空是蓝色的？".repeat(20)
    const ok = (q: string, a: string) => ({ conversations: [{ role: "user", content: q }, { role: "assistant", content: a }] })
    const tools = '[{"type":"function","function":{"name":"f"}}]'
    const input = join(dir, "unlabeled.jsonl")
    writeFileSync(
      input,
      [
        ok("q", "a"),
        ok(long, "瑞利散射。"), // cut before the reply at max_len 32
        { conversations: [{ role: "system", content: "", tools }, { role: "user", content: "" }, { role: "assistant", content: "b" }] }, // all kept now
      ].map((r) => JSON.stringify(r)).join("\n"),
    )
    // No random system prompt (the default draws 0.2 per record from the seeded RNG): record 1 must stay within max_len.
    const augment = { systemPromptP: 0 }
    const kept = await run(prepareShards({ input, tokenizer: DATA, kind: "sft", outDir: join(dir, "unlabeled-keep"), maxLen: 32, augment, log: false }))
    // record 3 renders the tools preamble (> 32 tokens), so it too is cut before its reply
    expect([kept.index.records, kept.skipped, kept.unlabeled, kept.index.unlabeled, kept.index.options.unlabeled]).toEqual([3, 0, 2, 2, "keep"])
    expect(kept.summary).toEndWith("; 0 records skipped, 2 warnings; 2 samples without a loss token kept (as upstream; --skip-unlabeled drops them)")
    expect(kept.warnings[0]).toMatch(new RegExp(`^${input}:2: \\d+ tokens > max_len 32, truncated \\(no assistant token left: kept without a loss token, as upstream\\)$`))
    expect(kept.warnings[1]).toStartWith(`${input}:3: `)
    expect(kept.warnings.length).toBe(2)
    const set = await run(openShards(kept.outDir))
    expect(set.numSamples).toBe(3)
    expect(Array.from(set.sequence(1).mask)).toEqual(new Array(32).fill(0))
    expect(tok.decode(set.sequence(2).ids, false)).toStartWith("<|im_start|>system\n\n\n# Tools")
    const b = set.getBatch([0, 1], 31) // an all-zero row beside a labelled one
    expect(b.mask.subarray(31).every((m) => m === 0)).toBe(true)
    expect(b.mask.subarray(0, 31).some((m) => m === 1)).toBe(true)
    expect(formatShardInspection(await run(inspectShards(kept.outDir)))).toContain("2 without a loss token (kept)")

    const skipped = await run(prepareShards({ input, tokenizer: DATA, kind: "sft", outDir: join(dir, "unlabeled-skip"), maxLen: 32, unlabeled: "skip", augment, log: false }))
    expect([skipped.index.records, skipped.skipped, skipped.unlabeled, skipped.index.unlabeled, skipped.index.options.unlabeled]).toEqual([1, 2, 2, 2, "skip"])
    expect(skipped.warnings[0]).toBe(`skipped ${input}:2: no assistant tokens within max_len 32`)
    expect(skipped.summary).toEndWith("; 2 records skipped, 0 warnings; 2 samples without a loss token skipped (--skip-unlabeled)")
    const roomy = await run(prepareShards({ input, tokenizer: DATA, kind: "sft", outDir: join(dir, "unlabeled-none"), maxLen: 512, log: false }))
    expect([roomy.index.records, roomy.unlabeled]).toEqual([3, 0])
    expect(roomy.summary).not.toContain("loss token")

    // DPO: a pair whose sides both lose their reply is kept; getPairBatch serves its all-zero masks
    const dpoIn = join(dir, "unlabeled-dpo.jsonl")
    const pair = (q: string) => ({ chosen: ok(q, "好").conversations, rejected: ok(q, "坏").conversations })
    writeFileSync(dpoIn, [pair("q"), pair(long)].map((r) => JSON.stringify(r)).join("\n"))
    const dpo = await run(prepareShards({ input: dpoIn, tokenizer: DATA, kind: "dpo", outDir: join(dir, "unlabeled-dpo"), maxLen: 32, log: false }))
    expect([dpo.index.records, dpo.unlabeled, dpo.index.sequences]).toEqual([2, 1, 4])
    expect(dpo.summary).toEndWith("; 1 pair with a side without a loss token kept (as upstream; --skip-unlabeled drops them)")
    const pairs = await run(openShards(dpo.outDir))
    const { chosen, rejected } = pairs.getPairBatch([1, 0], 31)
    for (const side of [chosen, rejected]) {
      expect(side.mask.subarray(0, 31).every((m) => m === 0)).toBe(true)
      expect(side.mask.subarray(31).some((m) => m === 1)).toBe(true)
    }
    const dpoSkip = await run(prepareShards({ input: dpoIn, tokenizer: DATA, kind: "dpo", outDir: join(dir, "unlabeled-dpo-skip"), maxLen: 32, unlabeled: "skip", log: false }))
    expect([dpoSkip.index.records, dpoSkip.skipped, dpoSkip.unlabeled]).toEqual([1, 1, 1])
  })

  test("re-preparing replaces an older shard dir; a foreign directory is never overwritten", async () => {
    const out = join(dir, "again")
    const opts = { input: join(DATA, "tiny_pretrain.jsonl"), tokenizer: DATA, kind: "pretrain" as const, outDir: out, maxLen: 64, log: false }
    await run(prepareShards(opts))
    const again = await run(prepareShards({ ...opts, maxLen: 8 }))
    expect((await run(openShards(out))).index.maxLen).toBe(8)
    expect(again.index.truncated).toBe(4)
    const foreign = join(dir, "foreign")
    mkdirSync(foreign)
    writeFileSync(join(foreign, "notes.txt"), "mine")
    const e = await failure(prepareShards({ ...opts, outDir: foreign }))
    expect(e.message).toContain("not a bunmind shard directory")
    expect(readFileSync(join(foreign, "notes.txt"), "utf8")).toBe("mine")
  })

  test("seed v1 CSV (history, q, a) and plain text prepare like their JSONL equivalents", async () => {
    const csv = join(dir, "sft_v1.csv")
    writeFileSync(csv, ',history,q,a\n0,"[[\'你好\', \'你好！\']]",1+1=?,"等于 2。"\n')
    const jsonl = join(dir, "sft_v1.jsonl")
    const turns = [["user", "你好"], ["assistant", "你好！"], ["user", "1+1=?"], ["assistant", "等于 2。"]]
    writeFileSync(jsonl, JSON.stringify({ conversations: turns.map(([role, content]) => ({ role, content })) }) + "\n")
    const fromCsv = await run(prepareShards({ input: csv, tokenizer: DATA, kind: "sft", outDir: join(dir, "v1csv"), maxLen: 128, log: false }))
    const fromJsonl = await run(prepareShards({ input: jsonl, tokenizer: DATA, kind: "sft", outDir: join(dir, "v1jsonl"), maxLen: 128, log: false }))
    const a = (await run(openShards(fromCsv.outDir))).sequence(0)
    const b = (await run(openShards(fromJsonl.outDir))).sequence(0)
    // the record sits on line 2 of the CSV and line 1 of the JSONL, so augmentation draws differ: compare without them
    expect(tok.decode(a.ids, false).replace(/^<\|im_start\|>system\n.*?<\|im_end\|>\n/s, "").replaceAll("<think>\n\n</think>\n\n", "")).toBe(
      tok.decode(b.ids, false).replace(/^<\|im_start\|>system\n.*?<\|im_end\|>\n/s, "").replaceAll("<think>\n\n</think>\n\n", ""),
    )
    const txt = join(dir, "docs.txt")
    writeFileSync(txt, "first document\n\nsecond document\n")
    const t = await run(prepareShards({ input: txt, tokenizer: DATA, kind: "pretrain", outDir: join(dir, "txt"), maxLen: 64, log: false }))
    const set = await run(openShards(t.outDir))
    expect([0, 1].map((i) => tok.decode(set.sequence(i).ids, false))).toEqual([
      "<|im_start|>first document<|im_end|>",
      "<|im_start|>second document<|im_end|>",
    ])
  })

  test("openShards: missing or damaged directories are ShardErrors that say what to do", async () => {
    expect((await failure(openShards(join(dir, "nothing")))).message).toContain("no index.json")
    const out = join(dir, "sft")
    const broken = join(dir, "broken")
    mkdirSync(broken)
    const index = JSON.parse(readFileSync(join(out, "index.json"), "utf8"))
    writeFileSync(join(broken, "index.json"), JSON.stringify({ ...index, schemaVersion: 99 }))
    expect((await failure(openShards(broken))).message).toContain("prepare the data again")
  })

  test("inspectShards / inspectDataset report counts, lengths, loss share and a rendered sample", async () => {
    const r = await run(inspectShards(join(dir, "sft"), { sampleIndex: 2, decode: (ids) => tok.decode(ids, false) }))
    expect(r.sequences).toBe(3)
    expect(r.lengths.max).toBeGreaterThanOrEqual(r.lengths.median)
    expect(r.targetShare).toBeGreaterThan(0)
    expect(r.targetShare).toBeLessThan(1)
    expect(r.sample?.rendered).toContain("<|im_start|>assistant\n⟦")
    expect(r.sample?.rendered).toEndWith("<|im_end|>\n⟧")
    expect(formatShardInspection(r)).toContain("loss on ")
    const d = await run(inspectDataset(join(dir, "dirty.jsonl")))
    expect([d.records, d.valid, d.invalid, d.unreadable, d.kind]).toEqual([3, 2, 1, 1, "sft"])
    expect(formatDatasetInspection(d)).toContain(`${join(dir, "dirty.jsonl")}:3: conversations[0].role`)
  })
})

describe("BatchSampler", () => {
  test("one epoch is a permutation; same seed → same order; epochs and seeds differ", () => {
    const p = epochPermutation(1000, 7, 0)
    expect(Array.from(p).sort((a, b) => a - b)).toEqual(Array.from({ length: 1000 }, (_, i) => i))
    expect(Array.from(epochPermutation(1000, 7, 0))).toEqual(Array.from(p))
    expect(Array.from(epochPermutation(1000, 7, 1))).not.toEqual(Array.from(p))
    expect(Array.from(epochPermutation(1000, 8, 0))).not.toEqual(Array.from(p))
  })
  test("resuming from state() at any step sees exactly the batches of an uninterrupted run", () => {
    const options = { numSamples: 103, batchSize: 10, seed: 42 }
    const straight = new BatchSampler(options)
    const all = Array.from({ length: 35 }, () => straight.next()) // crosses three epoch boundaries (10 batches/epoch)
    expect(all.map((b) => b.epoch)).toEqual(Array.from({ length: 35 }, (_, i) => Math.floor(i / 10)))
    for (const stop of [0, 1, 9, 10, 17, 30]) {
      const first = new BatchSampler(options)
      for (let i = 0; i < stop; i++) first.next()
      const saved = JSON.parse(JSON.stringify(first.state()))
      const resumed = BatchSampler.fromState(saved, 103)
      const rest = Array.from({ length: 35 - stop }, () => resumed.next())
      expect(rest.map((b) => [b.epoch, b.step, Array.from(b.indices)])).toEqual(all.slice(stop).map((b) => [b.epoch, b.step, Array.from(b.indices)]))
    }
    expect(() => BatchSampler.fromState(straight.state(), 104)).toThrow("resume with the same prepared shards")
  })
  test("dropLast keeps shapes fixed; dropLast false yields the remainder", () => {
    const keep = new BatchSampler({ numSamples: 25, batchSize: 10, dropLast: false, shuffle: false })
    expect([...keep.restOfEpoch()].map((b) => b.indices.length)).toEqual([10, 10, 5])
    expect(new BatchSampler({ numSamples: 25, batchSize: 10 }).batchesPerEpoch).toBe(2)
    expect(() => new BatchSampler({ numSamples: 5, batchSize: 10 })).toThrow("lower the batch size")
  })
})
