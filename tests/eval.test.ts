/**
 * `bunmind eval ceval` and `bunmind eval ppl` with a random tiny model (vocab 6400, MiniMind's tokenizer):
 * the whole C-Eval val split (counts, totals that add up, chance-level accuracy, repeatable), the protocol
 * re-derived independently for a handful of questions, batched = unbatched, few-shot prompts, CMMLU-style
 * CSVs, bad inputs; perplexity against direct `Model.loss` calls.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { openModelSync, type Model } from "../src/model/model.ts"
import { openTokenizerSync, type Tokenizer } from "../src/tokenizer/tokenizer.ts"
import { applyChatTemplate, loadTokenizerConfig, type TokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { CsvParser, type CsvRow } from "../src/data/csv.ts"
import { CEVAL_CATEGORIES } from "../src/eval/categories.ts"
import { EvalError, lastLogits, letterIds, parseMcCsv, readMcDir, renderQuestion, scoreLogits } from "../src/eval/ceval.ts"
import { bun, cli, repo, shared } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "eval")
const modelDir = join(out, "tiny")
const tokDir = join(shared, "minimind")
const cevalDir = join(shared, "ceval")
const fixtures = join(repo, "tests", "fixtures", "eval")

let model: Model
let tok: Tokenizer
let chat: TokenizerConfig

const readCsvFile = (file: string): Record<string, string>[] => {
  const p = new CsvParser()
  const rows: CsvRow[] = []
  p.push(readFileSync(file, "utf8"), rows)
  expect(p.end(rows)).toBeUndefined()
  const [head, ...body] = rows
  return body.map((r) => Object.fromEntries(head!.fields.map((h, i) => [h, r.fields[i]!])))
}

/** Runs the CLI without blocking the test process, so two runs can overlap. */
const cliAsync = async (args: string[]) => {
  const p = Bun.spawn([bun, join(repo, "src/cli.ts"), ...args], {
    cwd: repo,
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, BUNMIND_PLAIN_PROGRESS: "1" },
  })
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited])
  return { code, stdout, stderr }
}

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  const r = cli(["model", "init", "--preset", "tiny", "--seed", "7", "--out", modelDir])
  expect(r.code).toBe(0)
  model = openModelSync(modelDir)
  tok = openTokenizerSync(tokDir)
  chat = loadTokenizerConfig(tokDir)
})

afterAll(() => {
  model?.free()
  tok?.free()
})

describe("eval ceval on the C-Eval val split", () => {
  const runA = join(out, "ceval-a")
  const runB = join(out, "ceval-b")
  let summary: any
  let elapsed = 0

  beforeAll(async () => {
    const args = (dir: string) => ["eval", "ceval", "--model", modelDir, "--tokenizer", tokDir, "--data", cevalDir, "--split", "val", "--out", dir, "--batch-size", "16"]
    const t0 = performance.now()
    const [a, b] = await Promise.all([cliAsync(args(runA)), cliAsync(args(runB))])
    elapsed = (performance.now() - t0) / 1000
    expect(a.stderr).not.toContain("error")
    expect(a.code).toBe(0)
    expect(b.code).toBe(0)
    expect(a.stdout).toContain("TOTAL")
    summary = JSON.parse(readFileSync(join(runA, "summary.json"), "utf8"))
    console.log(`two concurrent full val runs: ${elapsed.toFixed(1)}s`)
  })

  test("1346 questions in 52 per-subject files", () => {
    const csvs = readdirSync(runA).filter((f) => f.endsWith(".csv"))
    expect(csvs.length).toBe(52)
    expect(Object.keys(summary.subjects).length).toBe(52)
    let rows = 0
    for (const f of csvs) {
      const rs = readCsvFile(join(runA, f))
      const subject = f.replace(/\.csv$/, "")
      // Row count equals the input file's question count, and the summary's tally matches the CSV.
      const input = readCsvFile(join(cevalDir, "val", `${subject}_val.csv`))
      expect(rs.length).toBe(input.length)
      expect(rs.map((r) => r.id)).toEqual(input.map((r) => r.id!))
      expect(rs.map((r) => r.answer)).toEqual(input.map((r) => r.answer!))
      expect(summary.subjects[subject].total).toBe(rs.length)
      expect(summary.subjects[subject].correct).toBe(rs.filter((r) => r.correct === "1").length)
      for (const r of rs) {
        expect(r.correct).toBe(r.model_answer === r.answer ? "1" : "0")
        const p = ["prob_A", "prob_B", "prob_C", "prob_D"].map((k) => Number(r[k]))
        expect(Math.abs(p.reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-9)
        expect("ABCD"[p.indexOf(Math.max(...p))]).toBe(r.model_answer!)
      }
      rows += rs.length
    }
    expect(rows).toBe(1346)
    expect(summary.total.total).toBe(1346)
  })

  test("totals add up: subjects = categories = total, with C-Eval's official categories", () => {
    const subj = Object.entries(summary.subjects) as [string, any][]
    const sum = (xs: any[], k: string) => xs.reduce((a, x) => a + x[k], 0)
    expect(sum(subj.map(([, s]) => s), "total")).toBe(summary.total.total)
    expect(sum(subj.map(([, s]) => s), "correct")).toBe(summary.total.correct)
    const cats = Object.values(summary.categories) as any[]
    expect(Object.keys(summary.categories).sort()).toEqual(["Humanities", "Other", "STEM", "Social Science"])
    expect(sum(cats, "total")).toBe(summary.total.total)
    expect(sum(cats, "correct")).toBe(summary.total.correct)
    expect(cats.map((c) => c.subjects).sort()).toEqual([10, 11, 11, 20])
    for (const [name, c] of Object.entries(summary.categories) as [string, any][]) {
      const members = subj.filter(([s]) => CEVAL_CATEGORIES[s] === name).map(([, s]) => s)
      expect(c.total).toBe(sum(members, "total"))
      expect(c.correct).toBe(sum(members, "correct"))
    }
    expect(summary.total.accuracy).toBeCloseTo(summary.total.correct / 1346, 12)
  })

  test("a random model scores near chance", () => {
    expect(summary.total.accuracy).toBeGreaterThan(0.15)
    expect(summary.total.accuracy).toBeLessThan(0.35)
  })

  test("two runs give identical files", () => {
    for (const f of readdirSync(runA)) expect(readFileSync(join(runB, f)).equals(readFileSync(join(runA, f)))).toBe(true)
  })

  test("independent check of the protocol for a handful of questions", () => {
    const ids = ["A", "B", "C", "D"].map((l) => {
      const e = tok.encode(l)
      expect(e.length).toBe(1)
      return e[0]!
    })
    for (const subject of ["logic", "law", "physician", "college_physics", "high_school_history", "accountant"]) {
      const input = readCsvFile(join(cevalDir, "val", `${subject}_val.csv`))
      const written = readCsvFile(join(runA, `${subject}.csv`))
      for (const k of [0, input.length - 1]) {
        const q = input[k]!
        const prompt = applyChatTemplate(
          chat,
          [
            { role: "system", content: "开始回答问题" },
            { role: "user", content: `${q.question}。选择 A: ${q.A}, B: ${q.B}, C: ${q.C}, D: ${q.D}` },
          ],
          { addGenerationPrompt: true },
        )
        expect(prompt.endsWith("<|im_start|>assistant\n") || prompt.includes("<|im_start|>assistant\n")).toBe(true)
        const logits = model.forward(tok.encode(prompt), 1)
        const four = ids.map((id) => logits[id]!)
        let best = 0
        for (let j = 1; j < 4; j++) if (four[j]! > four[best]!) best = j
        const w = written[k]!
        expect(w.id).toBe(q.id!)
        expect(w.model_answer).toBe("ABCD"[best]!)
        const z = four.reduce((a, x) => a + Math.exp(x - four[best]!), 0)
        four.forEach((x, j) => expect(Math.abs(Number(w[`prob_${"ABCD"[j]}`]) - Math.exp(x - four[best]!) / z)).toBeLessThan(1e-5))
      }
    }
  })
})

describe("ceval library", () => {
  test("batched logits equal unbatched ones", () => {
    const subjects = readMcDir(join(cevalDir, "val"), ["logic", "middle_school_geography", "high_school_physics"])
    const qs = subjects.flatMap((s) => s.questions)
    const prompts = tok.encodeBatch(qs.map((q) => renderQuestion(chat, q)))
    // Make sure some batches really hold several rows.
    const lengths = new Map<number, number>()
    for (const p of prompts) lengths.set(p.length, (lengths.get(p.length) ?? 0) + 1)
    expect(Math.max(...lengths.values())).toBeGreaterThan(1)
    const V = model.vocabSize
    const one = lastLogits(model, prompts, 1)
    const many = lastLogits(model, prompts, 64)
    const letters = letterIds(tok)
    let maxDiff = 0
    for (let i = 0; i < qs.length; i++) {
      for (let v = 0; v < V; v++) maxDiff = Math.max(maxDiff, Math.abs(one[i * V + v]! - many[i * V + v]!))
      const a = scoreLogits(one, i * V, letters)
      const b = scoreLogits(many, i * V, letters)
      const sorted = [...a.logits].sort((x, y) => y - x)
      if (sorted[0]! - sorted[1]! > 1e-4) expect(b.predicted).toBe(a.predicted)
    }
    expect(maxDiff).toBeLessThan(1e-4)
  })

  test("few-shot prompts hold k dev examples of the same subject as prior turns", () => {
    const [val] = readMcDir(join(cevalDir, "val"), ["logic"])
    const [dev] = readMcDir(join(cevalDir, "dev"), ["logic"])
    const q = val!.questions[0]!
    for (const k of [0, 1, 3, 5]) {
      const prompt = renderQuestion(chat, q, dev!.questions.slice(0, k))
      expect(prompt.split("<|im_start|>user").length - 1).toBe(k + 1)
      expect(prompt.split("<|im_start|>assistant").length - 1).toBe(k + 1)
      for (const s of dev!.questions.slice(0, k)) {
        expect(prompt).toContain(`${s.question}。选择 A: ${s.choices[0]}`)
        expect(prompt).toMatch(new RegExp(`<\\|im_start\\|>assistant\\n(<think>[\\s\\S]*?</think>\\s*)?${s.answer}<\\|im_end\\|>`))
      }
      for (const s of dev!.questions.slice(k)) expect(prompt).not.toContain(s.question)
      expect(prompt.indexOf(q.question)).toBeGreaterThan(prompt.lastIndexOf("<|im_start|>user"))
    }
  })

  test("the --shots option runs end to end and excludes the question itself on the dev split", async () => {
    const dir = join(out, "shots")
    const r = cli(["eval", "ceval", "--model", modelDir, "--tokenizer", tokDir, "--data", cevalDir, "--split", "val", "--shots", "2", "--limit-subjects", "logic,law", "--out", dir])
    expect(r.code).toBe(0)
    const s = JSON.parse(readFileSync(join(dir, "summary.json"), "utf8"))
    expect(s.shots).toBe(2)
    expect(Object.keys(s.subjects)).toEqual(["law", "logic"])
    expect(s.total.total).toBe(24 + 22)
    expect(readdirSync(dir).sort()).toEqual(["law.csv", "logic.csv", "summary.json"])
    const dev4 = cli(["eval", "ceval", "--model", modelDir, "--tokenizer", tokDir, "--data", cevalDir, "--split", "dev", "--shots", "4", "--limit-subjects", "logic", "--out", join(out, "dev4")])
    expect(dev4.code).toBe(0)
    const dev5 = cli(["eval", "ceval", "--model", modelDir, "--tokenizer", tokDir, "--data", cevalDir, "--split", "dev", "--shots", "5", "--limit-subjects", "logic", "--out", join(out, "dev5")])
    expect(dev5.code).toBe(1)
    expect(dev5.stderr).toContain("logic_dev.csv has only 4 usable example(s)")
  })

  test("CMMLU-style CSV directories (header ,Question,A,B,C,D,Answer) parse and score", () => {
    const parsed = parseMcCsv("agronomy.csv", readFileSync(join(fixtures, "cmmlu", "test", "agronomy.csv"), "utf8"))
    expect(parsed.style).toBe("cmmlu")
    expect(parsed.name).toBe("agronomy")
    expect(parsed.questions.map((q) => q.id)).toEqual(["0", "1", "2"])
    expect(parsed.questions[1]!.question).toBe('土壤的"团粒结构"指的是\n哪一种结构？')
    expect(parsed.questions[2]!.choices[2]).toBe("抗倒伏, 增产")
    expect(parsed.questions.map((q) => q.answer)).toEqual(["B", "C", "B"])

    const dir = join(out, "cmmlu")
    const r = cli(["eval", "ceval", "--model", modelDir, "--tokenizer", tokDir, "--data", join(fixtures, "cmmlu"), "--split", "test", "--shots", "1", "--out", dir])
    expect(r.code).toBe(0)
    const s = JSON.parse(readFileSync(join(dir, "summary.json"), "utf8"))
    expect(s.benchmark).toBe("cmmlu")
    expect(s.total.total).toBe(5)
    expect(s.subjects.agronomy.category).toBe("Other")
    expect(s.subjects.arts.category).toBe("Humanities")
    const rows = readCsvFile(join(dir, "agronomy.csv"))
    expect(rows[1]!.question).toBe('土壤的"团粒结构"指的是\n哪一种结构？')
  })

  test("subject names drop the _val/_dev/_test suffix; C-Eval headers are recognised", () => {
    const s = parseMcCsv("x/computer_network_dev.csv", "id,question,A,B,C,D,answer,explanation\n3,q,a,b,c,d, d ,why\n")
    expect(s.name).toBe("computer_network")
    expect(s.style).toBe("ceval")
    expect(s.questions[0]).toMatchObject({ id: "3", answer: "D", choices: ["a", "b", "c", "d"] })
  })

  test("answer letters must be single tokens", () => {
    expect(() => letterIds({ encode: (t: string) => Uint32Array.from(t === "C" ? [5, 6] : [1]) })).toThrow(/encodes "C" as 2 tokens/)
  })
})

describe("ceval bad inputs", () => {
  const base = () => ["eval", "ceval", "--model", modelDir, "--tokenizer", tokDir, "--out", join(out, "bad-out")]

  test("a missing data directory", () => {
    const r = cli([...base(), "--data", join(out, "no-such-dir")])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("no-such-dir")
    expect(r.stderr).toContain("no such directory")
  })

  test("a CSV without the needed columns names the file and the column", () => {
    const r = cli([...base(), "--data", join(fixtures, "bad")])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("broken_val.csv")
    expect(r.stderr).toContain("missing column(s) D")
    expect(r.stderr).not.toContain("    at ")
  })

  test("an answer outside A-D names file:line", () => {
    const dir = join(out, "bad-answer", "val")
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, "logic_val.csv"), 'id,question,A,B,C,D,answer\n0,"two\nlines",a,b,c,d,A\n1,q,a,b,c,d,E\n')
    const r = cli([...base(), "--data", join(out, "bad-answer")])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("logic_val.csv:4")
    expect(r.stderr).toContain("not one of A, B, C, D")
  })

  test("unknown --limit-subjects, missing dev files for --shots, a split dir with no CSVs", () => {
    const a = cli([...base(), "--data", cevalDir, "--limit-subjects", "logic,astrology"])
    expect(a.code).toBe(1)
    expect(a.stderr).toContain("unknown subject(s) astrology")
    const noDev = join(out, "no-dev")
    mkdirSync(join(noDev, "val"), { recursive: true })
    writeFileSync(join(noDev, "val", "logic_val.csv"), "id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n")
    const b = cli([...base(), "--data", noDev, "--shots", "1"])
    expect(b.code).toBe(1)
    expect(b.stderr).toContain("dev")
    expect(b.stderr).toContain("does not exist")
    const empty = join(out, "empty-split")
    mkdirSync(join(empty, "val"), { recursive: true })
    const c = cli([...base(), "--data", empty])
    expect(c.code).toBe(1)
    expect(c.stderr).toContain("no CSV files")
  })

  test("library errors are typed", () => {
    expect(() => parseMcCsv("f.csv", "")).toThrow(EvalError)
  })
})

describe("eval ppl", () => {
  const docs = [
    "Once upon a time there was a little fox who liked to read books.",
    "小猫在院子里晒太阳，它很开心。",
    "The quick brown fox jumps over the lazy dog. ".repeat(12),
    "一二三四五六七八九十".repeat(15),
    "Short.",
  ]

  /** Independent: [bos] + ids + [eos], non-overlapping targets in windows of ≤ maxLen inputs, one row per call. */
  const direct = (maxLen: number, texts: readonly string[] = docs) => {
    const bos = tok.tokenToId("<|im_start|>")!
    const eos = tok.tokenToId("<|im_end|>")!
    let sum = 0
    let count = 0
    for (const d of texts) {
      const s = [bos, ...tok.encode(d), eos]
      for (let start = 0; start < s.length - 1; start += maxLen) {
        const w = s.slice(start, start + maxLen + 1)
        const ids = Uint32Array.from(w.slice(0, -1))
        const targets = Uint32Array.from(w.slice(1))
        const l = model.loss(ids, targets, new Float32Array(ids.length).fill(1), 1)
        sum += l.sum
        count += l.count
      }
    }
    return { sum, count }
  }

  const parse = (stdout: string) => ({
    tokens: Number(/tokens:\s+(\d+)/.exec(stdout)![1]),
    nll: Number(/mean NLL:\s+([\d.]+)/.exec(stdout)![1]),
    ppl: Number(/ppl:\s+([\d.]+)/.exec(stdout)![1]),
  })

  test("JSONL: ppl = exp(sum/count) of direct Model.loss calls", () => {
    const file = join(out, "ppl.jsonl")
    writeFileSync(file, docs.map((text) => JSON.stringify({ text })).join("\n") + "\n")
    for (const maxLen of [512, 16]) {
      const r = cli(["eval", "ppl", "--model", modelDir, "--tokenizer", tokDir, "--data", file, "--max-len", String(maxLen), "--batch-size", "3"])
      expect(r.code).toBe(0)
      const got = parse(r.stdout)
      const want = direct(maxLen)
      expect(got.tokens).toBe(want.count)
      expect(Math.abs(got.nll - want.sum / want.count)).toBeLessThan(1e-5)
      expect(Math.abs(got.ppl / Math.exp(want.sum / want.count) - 1)).toBeLessThan(1e-4)
    }
    // Every token but each document's first is a target, whatever the window size.
    const total = docs.reduce((a, d) => a + tok.encode(d).length + 1, 0)
    expect(direct(16).count).toBe(total)
  })

  test("text files work too", () => {
    const file = join(out, "ppl.txt")
    writeFileSync(file, docs.join("\n\n") + "\n")
    const r = cli(["eval", "ppl", "--model", modelDir, "--tokenizer", tokDir, "--data", file, "--max-len", "64"])
    expect(r.code).toBe(0)
    // The text reader trims each document.
    const want = direct(64, docs.map((d) => d.trim()))
    expect(parse(r.stdout).tokens).toBe(want.count)
    expect(Math.abs(parse(r.stdout).nll - want.sum / want.count)).toBeLessThan(1e-5)
  })

  test("empty, missing and malformed files give clear errors", () => {
    const empty = join(out, "empty.jsonl")
    writeFileSync(empty, "")
    const a = cli(["eval", "ppl", "--model", modelDir, "--tokenizer", tokDir, "--data", empty])
    expect(a.code).toBe(1)
    expect(a.stderr).toContain("no documents")
    const b = cli(["eval", "ppl", "--model", modelDir, "--tokenizer", tokDir, "--data", join(out, "missing.jsonl")])
    expect(b.code).toBe(1)
    expect(b.stderr).toContain("missing.jsonl: no such file")
    const bad = join(out, "notext.jsonl")
    writeFileSync(bad, '{"text": "fine"}\n{"content": "no text"}\n')
    const c = cli(["eval", "ppl", "--model", modelDir, "--tokenizer", tokDir, "--data", bad])
    expect(c.code).toBe(1)
    expect(c.stderr).toContain("notext.jsonl:2")
    const d = cli(["eval", "ppl", "--model", modelDir, "--tokenizer", tokDir, "--data", bad, "--max-len", "100000"])
    expect(d.code).toBe(1)
    expect(d.stderr).toContain("--max-len 100000")
  })
})
