import { afterAll, describe, expect, test } from "bun:test"
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Exit, Stream } from "effect"
import { BadRecordLog } from "../src/data/bad-records.ts"
import { readLines } from "../src/data/chunks.ts"
import { CsvParser, readCsv } from "../src/data/csv.ts"
import { readJsonl } from "../src/data/jsonl.ts"
import { readParquet } from "../src/data/parquet.ts"
import { readRecords } from "../src/data/read.ts"
import { readText } from "../src/data/text.ts"

const dir = mkdtempSync(join(tmpdir(), "bunmind-data-readers-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
const file = (name: string, content: string | Uint8Array) => {
  const p = join(dir, name)
  writeFileSync(p, content)
  return p
}
const collect = <A, E>(s: Stream.Stream<A, E>) => Effect.runPromise(Stream.runCollect(s))
const fails = async <A, E>(s: Stream.Stream<A, E>): Promise<E> => {
  const exit = await Effect.runPromiseExit(Stream.runCollect(s))
  if (Exit.isSuccess(exit)) throw new Error("expected the stream to fail")
  const err = exit.cause.reasons.find((r) => r._tag === "Fail")
  if (!err || err._tag !== "Fail") throw new Error(`expected a typed failure, got ${exit.cause}`)
  return err.error as E
}
const quiet = (mode: "skip" | "fail" = "skip") => new BadRecordLog({ mode, log: false })

describe("readLines", () => {
  test("numbers lines, strips CR and BOM, keeps the last line without newline, at every chunk size", async () => {
    const p = file("lines.txt", "\uFEFFa\r\nbé€\n\nlast")
    for (const chunk of [1, 2, 3, 5, 64]) {
      const lines = await collect(readLines(p, chunk))
      expect(lines).toEqual([
        { line: 1, text: "a" },
        { line: 2, text: "bé€" },
        { line: 3, text: "" },
        { line: 4, text: "last" },
      ])
    }
  })
  test("a missing file is a DataReadError naming it", async () => {
    const e = await fails(readLines(join(dir, "nope.txt")))
    expect(e._tag).toBe("DataReadError")
    expect(e.message).toContain("nope.txt")
  })
})

describe("readJsonl", () => {
  const p = file("mixed.jsonl", '{"text":"a"}\n\n{"text": "b"\n  \n{"text":"c"}\r\n[1,2]\n')
  test("records carry file and line; blank lines are skipped", async () => {
    const bad = quiet()
    const recs = await collect(readJsonl(p, { bad, chunkBytes: 4 }))
    expect(recs.map((r) => [r.line, r.value])).toEqual([
      [1, { text: "a" }],
      [5, { text: "c" }],
      [6, [1, 2]],
    ])
    expect(recs[0]!.file).toBe(p)
    expect(bad.skipped).toBe(1)
    expect(bad.warnings[0]).toStartWith(`skipped ${p}:3: invalid JSON:`)
  })
  test("fail mode stops at the first malformed line with file:line and the parser message", async () => {
    const e = await fails(readJsonl(p))
    expect(e._tag).toBe("BadRecord")
    expect(e.message).toStartWith(`${p}:3: invalid JSON: `)
    expect(e.message.length).toBeGreaterThan(`${p}:3: invalid JSON: `.length)
  })
})

describe("CSV (RFC 4180)", () => {
  const parse = (text: string, pieces = 1) => {
    const parser = new CsvParser()
    const rows: { line: number; fields: string[] }[] = []
    const size = Math.ceil(text.length / pieces)
    for (let i = 0; i < text.length; i += size) parser.push(text.slice(i, i + size), rows)
    const open = parser.end(rows)
    return { rows, open }
  }
  const tricky = 'id,text\r\n1,"a, b"\r\n2,"say ""hi"""\n3,"two\nlines\r\nhere"\n\n4,plain\n5,""\n6,\n'
  const expected = [
    { line: 1, fields: ["id", "text"] },
    { line: 2, fields: ["1", "a, b"] },
    { line: 3, fields: ["2", 'say "hi"'] },
    { line: 4, fields: ["3", "two\nlines\r\nhere"] },
    { line: 8, fields: ["4", "plain"] },
    { line: 9, fields: ["5", ""] },
    { line: 10, fields: ["6", ""] },
  ]
  test("quoted commas, doubled quotes, embedded CRLF/LF newlines, empty fields, line numbers", () => {
    expect(parse(tricky)).toEqual({ rows: expected, open: undefined })
  })
  test("any split of the input into chunks parses the same", () => {
    for (let pieces = 2; pieces <= tricky.length; pieces += 3) expect(parse(tricky, pieces).rows).toEqual(expected)
  })
  test("last row without a newline; a quote left open is reported with its start line", () => {
    expect(parse("a,b\n1,2").rows).toEqual([
      { line: 1, fields: ["a", "b"] },
      { line: 2, fields: ["1", "2"] },
    ])
    expect(parse('a\n"x\ny').open).toBe(2)
  })
  test("readCsv: records keyed by header; wrong field counts are bad records with line numbers", async () => {
    const p = file("rows.csv", 'text,n\n"hello, ""world""\nsecond line",1\nonly-one-field\nplain,2\n"never closed,3\n')
    const bad = quiet()
    const recs = await collect(readCsv(p, { bad, chunkBytes: 5 }))
    expect(recs.map((r) => [r.line, r.value])).toEqual([
      [2, { text: 'hello, "world"\nsecond line', n: "1" }],
      [5, { text: "plain", n: "2" }],
    ])
    expect(bad.skipped).toBe(2)
    expect(bad.warnings[0]).toBe(`skipped ${p}:4: expected 2 fields (text,n), got 1; quote fields that contain commas or newlines`)
    expect(bad.warnings[1]).toBe(`skipped ${p}:6: quoted field never closed before the end of the file`)
  })
  test("seed v1 SFT CSV (pandas style, with an index column) reads as q/a/history records", async () => {
    const p = file(
      "sft_v1.csv",
      ',history,q,a\n0,[],你好,"你好！有什么可以帮你？"\n1,"[[\'1+1=?\', \'2\'], [""it\'s"", \'yes\']]",再说一次,"好的,\n再说一次"\n',
    )
    const recs = await collect(readRecords(p))
    expect(recs.map((r) => r.value)).toEqual([
      { "": "0", history: "[]", q: "你好", a: "你好！有什么可以帮你？" },
      { "": "1", history: "[['1+1=?', '2'], [\"it's\", 'yes']]", q: "再说一次", a: "好的,\n再说一次" },
    ])
  })
})

describe("plain text", () => {
  test("blank lines separate documents when there is no <|endoftext|>", async () => {
    const p = file("docs.txt", "\n\nfirst doc\nsecond line\n\n\n  \nsecond doc\n")
    const recs = await collect(readText(p, { chunkBytes: 3 }))
    expect(recs.map((r) => [r.line, r.value])).toEqual([
      [3, { text: "first doc\nsecond line" }],
      [8, { text: "second doc" }],
    ])
  })
  test("<|endoftext|> separates documents and blank lines stay inside", async () => {
    const p = file("eot.txt", "para one\n\npara two<|endoftext|>next doc\n<|endoftext|>\n<|endoftext|>last\n")
    const recs = await collect(readRecords(p))
    expect(recs.map((r) => [r.line, r.value])).toEqual([
      [1, { text: "para one\n\npara two" }],
      [3, { text: "next doc" }],
      [5, { text: "last" }],
    ])
  })
})

describe("Parquet", () => {
  const fixtures = join(import.meta.dir, "fixtures", "data")
  test("zstd, list<struct> column, two row groups: rows numbered across groups", async () => {
    const recs = await collect(readParquet(join(fixtures, "sft.parquet")))
    expect(recs.length).toBe(5)
    expect(recs.map((r) => r.line)).toEqual([1, 2, 3, 4, 5])
    expect(recs[3]!.value).toEqual({
      conversations: [
        { role: "user", content: "问题 3", reasoning_content: null },
        { role: "assistant", content: "回答 3", reasoning_content: "想一想" },
      ],
    })
  })
  test("snappy, three row groups, int64 column as number; dispatch by extension", async () => {
    const recs = await collect(readRecords(join(fixtures, "pretrain.parquet")))
    expect(recs.map((r) => r.value)).toEqual(Array.from({ length: 6 }, (_, i) => ({ text: `document ${i}: 你好, world`, n: i })))
  })
  test("a file that is not Parquet is a DataReadError", async () => {
    const e = await fails(readParquet(file("fake.parquet", "not parquet at all")))
    expect(e._tag).toBe("DataReadError")
    expect(e.message).toContain("fake.parquet")
  })
})

describe("readRecords dispatch", () => {
  test("unknown extension and JSON-array .json files are refused with a hint", async () => {
    const e1 = await fails(readRecords(file("data.xml", "<a/>")))
    expect(e1.message).toContain('unknown input format ".xml"')
    const e2 = await fails(readRecords(file("arr.json", '[{"text":"a"}]')))
    expect(e2.message).toContain("JSON array")
    const ok = await collect(readRecords(file("lines.json", '{"text":"a"}\n')))
    expect(ok.map((r) => r.value)).toEqual([{ text: "a" }])
  })
  test("the stream closes its file when a consumer stops early (take)", async () => {
    const p = file("many.jsonl", Array.from({ length: 1000 }, (_, i) => JSON.stringify({ text: `t${i}` })).join("\n"))
    const fds = () => readdirSync("/proc/self/fd").length
    const before = fds()
    for (let i = 0; i < 20; i++) {
      const first = await collect(readRecords(p, { chunkBytes: 64 }).pipe(Stream.take(3)))
      expect(first.map((r) => r.line)).toEqual([1, 2, 3])
    }
    expect(fds()).toBeLessThanOrEqual(before + 2)
  })
})
