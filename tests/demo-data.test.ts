/**
 * The demo's generated world and its scorer: files are a pure function of the seed; held-out
 * people never reach fine-tuning data while all their facts are in pretraining (both languages);
 * every answer agrees with the fact table; records have MiniMind's shapes; the scorer accepts a
 * right answer, rejects wrong, hedged and list answers, in English and Chinese.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { mkdirSync, readFileSync, readdirSync, rmSync } from "node:fs"
import { join } from "node:path"
import {
  ATTRIBUTES,
  CHITCHAT,
  DEMO_FILES,
  ECHO,
  LANGS,
  WORLD,
  fill,
  generateDemoData,
  makeEntities,
  valueForms,
  writeDemoData,
  type DemoData,
  type Entity,
  type Question,
} from "../src/demo/facts.ts"
import { findMentions, formatScoreTable, judge, scoreAnswers } from "../src/demo/score.ts"
import { DEMO_DATA } from "../src/demo/demo.ts"

const out = join(import.meta.dir, ".out", "demo-data")

const readJsonl = (file: string): any[] =>
  readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l))

/** Does `text` mention `name`? Latin names on word boundaries, Chinese names as substrings. */
const mentions = (text: string, name: string): boolean =>
  /[A-Za-z]/.test(name) ? new RegExp(`(?<![A-Za-z])${name}(?![A-Za-z])`).test(text) : text.includes(name)

/** The names by which a person could leak: full names, and each part that identifies them alone. */
const leakKeys = (e: Entity): string[] => [e.name.en, ...e.name.en.split(" "), e.name.zh, e.name.zh.slice(1)]

/** All value forms of an attribute, grouped by value index. */
const formsOf = (a: (typeof ATTRIBUTES)[number]) => WORLD[a].values.map((v) => valueForms(v))

let data: DemoData
let files: Record<string, string>

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  data = generateDemoData({ seed: 7 })
  files = writeDemoData(join(out, "a"), data)
})

describe("determinism", () => {
  test("same seed → byte-identical files; another seed → different files", () => {
    writeDemoData(join(out, "b"), generateDemoData({ seed: 7 }))
    writeDemoData(join(out, "c"), generateDemoData({ seed: 8 }))
    for (const f of Object.values(DEMO_FILES)) {
      const a = readFileSync(join(out, "a", f))
      expect(Buffer.compare(a, readFileSync(join(out, "b", f)))).toBe(0)
      expect(Buffer.compare(a, readFileSync(join(out, "c", f)))).not.toBe(0)
    }
  })

  test("writes only the four files (no temporaries left behind)", () => {
    expect(readdirSync(join(out, "a")).sort()).toEqual(Object.values(DEMO_FILES).sort())
  })

  test("the split does not depend on how much text is generated", () => {
    const small = generateDemoData({ seed: 7, biosPerEntity: 3, chitchatRepeats: 1 })
    expect(small.entities).toEqual(data.entities)
    expect(small.heldOut).toEqual(data.heldOut)
  })

  test("options are checked", () => {
    expect(() => makeEntities(1, 1000)).toThrow(/entities/)
    expect(() => makeEntities(1, 64, 1)).toThrow(/heldOutFraction/)
  })
})

describe("the world", () => {
  test("names are unique, and no name part contains another or any value form", () => {
    const all = makeEntities(3, 80, 0.5)
    const parts = all.flatMap((e) => [...e.name.en.split(" "), e.name.zh])
    expect(new Set(parts).size).toBe(parts.length)
    for (const p of parts) for (const q of parts) if (p !== q) expect(q.toLowerCase().includes(p.toLowerCase())).toBe(false)
    const valueChars = new Set(ATTRIBUTES.flatMap((a) => WORLD[a].values.flatMap((v) => [...v.zh])))
    for (const e of all) {
      for (const ch of e.name.zh) expect(valueChars.has(ch)).toBe(false)
      for (const a of ATTRIBUTES) for (const f of formsOf(a).flat()) expect(findMentions(`${e.name.en} ${e.name.zh}`, [f], []).length).toBe(0)
    }
  })

  test("every rendered statement and question names exactly the value put in (scorer and generator agree)", () => {
    const people = makeEntities(3, 80, 0.5)
    for (const a of ATTRIBUTES) {
      const groups = formsOf(a)
      for (const lang of LANGS) {
        for (const e of people) {
          for (const q of WORLD[a].questions[lang]) expect(findMentions(fill(q, e.name[lang]), groups.flat(), []).length).toBe(0)
          groups.forEach((forms, i) => {
            const others = groups.filter((_, j) => j !== i).flat()
            for (const t of WORLD[a].statements[lang]) {
              const s = fill(t, e.name[lang], WORLD[a].values[i]![lang])
              expect(judge({ accept: forms, reject: others }, s).outcome).toBe("correct")
              // and no value of another attribute hides in the sentence
              for (const b of ATTRIBUTES) if (b !== a) expect(findMentions(s, formsOf(b).flat(), []).length).toBe(0)
            }
          })
        }
      }
    }
  })

  test("values are balanced and every value is taught by some train person", () => {
    for (const a of ATTRIBUTES) {
      const k = WORLD[a].values.length
      const counts = new Array(k).fill(0)
      for (const e of data.entities) counts[e.facts[a]]++
      expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1)
      const taught = new Set(data.entities.filter((e) => e.split === "train").map((e) => e.facts[a]))
      expect(taught.size).toBe(k)
    }
    expect(data.stats.heldOutEntities).toBe(24)
    expect(data.stats.trainEntities).toBe(40)
  })
})

describe("splits", () => {
  test("held-out people never appear in sft.jsonl or dpo.jsonl, in either language", () => {
    const held = data.entities.filter((e) => e.split === "heldout")
    const train = data.entities.filter((e) => e.split === "train")
    const sft = readFileSync(files.sft!, "utf8")
    const dpo = readFileSync(files.dpo!, "utf8")
    for (const e of held) {
      for (const key of leakKeys(e)) {
        expect(mentions(sft, key)).toBe(false)
        expect(mentions(dpo, key)).toBe(false)
      }
    }
    // the scan itself can see a name: train people are there
    for (const e of train) expect(mentions(sft, e.name.en) && mentions(sft, e.name.zh) && mentions(dpo, e.name.zh)).toBe(true)
  })

  test("every held-out fact is stated in pretrain.jsonl, in both languages and in several phrasings", () => {
    const docs = readJsonl(files.pretrain!).map((r) => r.text as string)
    for (const e of data.entities.filter((x) => x.split === "heldout")) {
      for (const lang of LANGS) {
        const sentences = docs.filter((d) => d.includes(e.name[lang])).flatMap((d) => d.split(lang === "en" ? /(?<=\.) / : /(?<=。)/))
        for (const a of ATTRIBUTES) {
          const value = WORLD[a].values[e.facts[a]]![lang]
          const phrasings = WORLD[a].statements[lang].filter((t) => sentences.includes(fill(t, e.name[lang], value)))
          expect(phrasings.length).toBeGreaterThanOrEqual(3)
          expect(phrasings).toContain(WORLD[a].statements[lang][0]!) // the canonical answer sentence
          // and never a wrong value
          const wrong = WORLD[a].values.filter((_, i) => i !== e.facts[a]).map((v) => v[lang])
          for (const t of WORLD[a].statements[lang]) for (const w of wrong) expect(sentences).not.toContain(fill(t, e.name[lang], w))
        }
      }
    }
  })

  test("held-out questions are exactly the held-out facts, with the SFT question templates", () => {
    const held = data.entities.filter((e) => e.split === "heldout")
    expect(data.heldOut.length).toBe(held.length * ATTRIBUTES.length * LANGS.length)
    const onDisk = readJsonl(files.heldOut!) as Question[]
    expect(onDisk).toEqual(data.heldOut as Question[])
    for (const q of data.heldOut) {
      const e = held.find((x) => x.name.en === q.entity)!
      expect(e).toBeDefined()
      expect(q.name).toBe(e.name[q.lang])
      expect(q.answer).toBe(WORLD[q.attribute].values[e.facts[q.attribute]]![q.lang])
      expect(q.accept).toContain(q.answer)
      expect(q.reject).not.toContain(q.answer)
      expect(WORLD[q.attribute].questions[q.lang].map((t) => fill(t, q.name))).toContain(q.question)
      expect(q.reference.startsWith(q.cloze)).toBe(true)
      expect(judge(q, q.reference).outcome).toBe("correct")
    }
    for (const q of data.trainQuestions) expect(data.entities.find((x) => x.name.en === q.entity)!.split).toBe("train")
  })
})

describe("the demo's own options (DEMO_DATA)", () => {
  let demo: DemoData
  let demoFiles: Record<string, string>
  beforeAll(() => {
    demo = generateDemoData({ seed: 7, ...DEMO_DATA })
    demoFiles = writeDemoData(join(out, "demo"), demo)
  })
  const lead = (lang: (typeof LANGS)[number]) => DEMO_DATA.answerLead[lang]
  /** The person, attribute and language of a question rendered from the templates, if it is one. */
  const parse = (text: string) => {
    for (const e of demo.entities)
      for (const a of ATTRIBUTES) for (const lang of LANGS) if (WORLD[a].questions[lang].some((t) => fill(t, e.name[lang]) === text)) return { e, a, lang }
    return undefined
  }

  test("same people, split and held-out questions as the defaults; held-out people never reach sft.jsonl or dpo.jsonl", () => {
    expect(demo.entities).toEqual(data.entities)
    expect(demo.heldOut).toEqual(data.heldOut)
    const sft = readFileSync(demoFiles.sft!, "utf8")
    const dpo = readFileSync(demoFiles.dpo!, "utf8")
    for (const e of demo.entities.filter((x) => x.split === "heldout")) {
      for (const key of leakKeys(e)) {
        expect(mentions(sft, key)).toBe(false)
        expect(mentions(dpo, key)).toBe(false)
      }
    }
  })

  test("every SFT and DPO answer is the lead + the canonical sentence with the true (chosen) or another (rejected) value", () => {
    let facts = 0
    for (const r of readJsonl(demoFiles.sft!)) {
      const c = r.conversations as { role: string; content: string }[]
      for (let i = 0; i < c.length; i += 2) {
        const p = parse(c[i]!.content)
        if (!p) continue
        expect(p.e.split).toBe("train")
        const value = WORLD[p.a].values[p.e.facts[p.a]]![p.lang]
        expect(c[i + 1]!.content).toBe(lead(p.lang) + fill(WORLD[p.a].statements[p.lang][0]!, p.e.name[p.lang], value))
        facts++
      }
    }
    expect(facts).toBeGreaterThan(demo.stats.trainEntities * ATTRIBUTES.length * LANGS.length)
    for (const r of readJsonl(demoFiles.dpo!)) {
      const p = parse(r.chosen[0].content)!
      expect(p.e.split).toBe("train")
      const q = demo.trainQuestions.find((x) => x.entity === p.e.name.en && x.attribute === p.a && x.lang === p.lang)!
      for (const side of [r.chosen[1].content, r.rejected[1].content]) expect(side.startsWith(lead(p.lang) + p.e.name[p.lang])).toBe(true)
      expect(judge(q, r.chosen[1].content).outcome).toBe("correct")
      expect(judge(q, r.rejected[1].content).outcome).toBe("wrong")
    }
  })

  test("the Q&A mixed into pretraining is about train people only, in the SFT answer format", () => {
    const qa = readJsonl(demoFiles.pretrain!).map((r) => r.text as string).filter((t) => t.includes("\n"))
    expect(qa.length).toBe(DEMO_DATA.qaInPretrain * demo.stats.trainEntities * LANGS.length)
    for (const doc of qa) {
      const lines = doc.split("\n")
      expect(lines.length).toBe(2 * ATTRIBUTES.length)
      for (let i = 0; i < lines.length; i += 2) {
        const p = parse(lines[i]!)!
        expect(p.e.split).toBe("train")
        const value = WORLD[p.a].values[p.e.facts[p.a]]![p.lang]
        expect(lines[i + 1]).toBe(lead(p.lang) + fill(WORLD[p.a].statements[p.lang][0]!, p.e.name[p.lang], value))
      }
    }
  })

  test("the biographies are the defaults' (the options change only the Q&A, the filler and the chats)", () => {
    const named = (t: string) => demo.entities.some((e) => t.includes(e.name.en) || t.includes(e.name.zh))
    const bios = (d: DemoData) => new Set(d.pretrain.map((r) => r.text).filter((t) => !t.includes("\n") && named(t)))
    const a = bios(demo)
    const b = bios(data)
    expect(a.size).toBe(b.size)
    for (const t of b) expect(a.has(t)).toBe(true)
  })
})

describe("records", () => {
  const factTable = () => {
    // canonical answer sentence → the value it must carry, for every person, attribute, language
    const m = new Map<string, { e: Entity; a: (typeof ATTRIBUTES)[number]; lang: (typeof LANGS)[number] }>()
    for (const e of data.entities) for (const a of ATTRIBUTES) for (const lang of LANGS) m.set(`${lang}|${a}|${e.name[lang]}`, { e, a, lang })
    return m
  }

  /** The name in an echo exchange (a question and answer that fit one ECHO template pair), if any. */
  const echoName = (q: string, a: string): string | undefined => {
    for (const lang of LANGS)
      for (const [tq, ta] of ECHO[lang]) {
        const [pre, post] = tq.split("{name}") as [string, string]
        if (q.startsWith(pre) && q.endsWith(post) && q.length > pre.length + post.length) {
          const name = q.slice(pre.length, q.length - post.length)
          if (fill(ta, name) === a) return name
        }
      }
    return undefined
  }

  /** Which person and attribute a question is about, by matching it against the templates. */
  const parseQuestion = (text: string) => {
    for (const e of data.entities)
      for (const a of ATTRIBUTES) for (const lang of LANGS) if (WORLD[a].questions[lang].some((t) => fill(t, e.name[lang]) === text)) return { e, a, lang }
    return undefined
  }

  test("pretrain.jsonl: {text} only, short", () => {
    const rows = readJsonl(files.pretrain!)
    expect(rows.length).toBe(data.stats.pretrain.documents)
    for (const r of rows) {
      expect(Object.keys(r)).toEqual(["text"])
      expect(typeof r.text).toBe("string")
      expect(r.text.length).toBeGreaterThan(0)
      expect([...r.text].length).toBeLessThanOrEqual(220)
    }
  })

  test("sft.jsonl: user/assistant alternating; every fact answer agrees with the fact table", () => {
    const table = factTable()
    const chit = new Map(LANGS.flatMap((l) => CHITCHAT[l].map(([q, a]) => [q, a] as const)))
    const rows = readJsonl(files.sft!)
    let facts = 0
    const echoes = new Set<string>()
    for (const r of rows) {
      expect(Object.keys(r)).toEqual(["conversations"])
      const c = r.conversations as { role: string; content: string }[]
      expect(c.length % 2).toBe(0)
      c.forEach((t, i) => {
        expect(Object.keys(t).sort()).toEqual(["content", "role"])
        expect(t.role).toBe(i % 2 === 0 ? "user" : "assistant")
      })
      for (let i = 0; i < c.length; i += 2) {
        const q = c[i]!.content
        const a = c[i + 1]!.content
        if (chit.has(q)) {
          expect(a).toBe(chit.get(q)!)
          continue
        }
        const echo = echoName(q, a)
        if (echo !== undefined) {
          echoes.add(echo)
          continue
        }
        const p = parseQuestion(q)
        expect(p).toBeDefined()
        expect(table.has(`${p!.lang}|${p!.a}|${p!.e.name[p!.lang]}`)).toBe(true)
        expect(p!.e.split).toBe("train")
        const value = WORLD[p!.a].values[p!.e.facts[p!.a]]![p!.lang]
        expect(a).toBe(fill(WORLD[p!.a].statements[p!.lang][0]!, p!.e.name[p!.lang], value))
        facts++
      }
    }
    expect(facts).toBeGreaterThan(data.stats.trainEntities * ATTRIBUTES.length * LANGS.length)
    // name-echo turns: hundreds of distinct invented names, none of them a world name
    expect(echoes.size).toBeGreaterThan(300)
    const world = makeEntities(3, 80, 0.5).flatMap(leakKeys)
    for (const n of echoes) for (const w of world) expect(mentions(n, w)).toBe(false)
  })

  test("dpo.jsonl: chosen/rejected are [user, assistant]; chosen true, rejected another value", () => {
    const rows = readJsonl(files.dpo!)
    expect(rows.length).toBe(data.stats.trainEntities * ATTRIBUTES.length * LANGS.length)
    for (const r of rows) {
      expect(Object.keys(r)).toEqual(["chosen", "rejected"])
      for (const side of [r.chosen, r.rejected]) expect(side.map((t: { role: string }) => t.role)).toEqual(["user", "assistant"])
      expect(r.chosen[0]).toEqual(r.rejected[0])
      const p = parseQuestion(r.chosen[0].content)!
      expect(p.e.split).toBe("train")
      const q = data.trainQuestions.find((x) => x.entity === p.e.name.en && x.attribute === p.a && x.lang === p.lang)!
      expect(judge(q, r.chosen[1].content).outcome).toBe("correct")
      expect(judge(q, r.rejected[1].content).outcome).toBe("wrong")
    }
  })

  test("stats match the files", () => {
    const s = data.stats
    expect(s.sft.documents).toBe(readJsonl(files.sft!).length)
    expect(s.dpo.documents).toBe(readJsonl(files.dpo!).length)
    expect(s.pretrain.characters).toBe(data.pretrain.reduce((n, r) => n + [...r.text].length, 0))
    expect(s.pretrain.bytes).toBeGreaterThan(s.pretrain.characters) // Chinese is 3 bytes a character
  })
})

describe("scorer", () => {
  let en: Question
  let zh: Question
  beforeAll(() => {
    en = data.heldOut.find((q) => q.lang === "en" && q.attribute === "city")!
    zh = data.heldOut.find((q) => q.lang === "zh" && q.attribute === "pet")!
  })
  const otherValue = (q: Question) => q.reject.find((f) => (q.lang === "en" ? /^[A-Za-z]/.test(f) : !/[A-Za-z]/.test(f)))!
  const allValues = (q: Question) => WORLD[q.attribute].values.map((v) => v[q.lang])

  test("English: right, wrong, nothing, and case", () => {
    expect(judge(en, `${en.name} lives in ${en.answer}.`).outcome).toBe("correct")
    expect(judge(en, `${en.name} lives in ${otherValue(en)}.`).outcome).toBe("wrong")
    expect(judge(en, "I do not know.").outcome).toBe("none")
    expect(judge(en, `${en.answer.toUpperCase()}!`).outcome).toBe("correct")
    // a value inside a longer word is no mention
    expect(judge({ accept: ["cat"], reject: ["dog"] }, "a category of dogs").outcome).toBe("none")
    expect(judge({ accept: ["cat", "cats"], reject: ["dog", "dogs"] }, "She loves cats.").outcome).toBe("correct")
  })

  test("Chinese: right, wrong, and the longer form wins", () => {
    expect(judge(zh, `${zh.name}养了一只${zh.answer}。`).outcome).toBe("correct")
    expect(judge(zh, `${zh.name}养了一只${otherValue(zh)}。`).outcome).toBe("wrong")
    expect(judge({ accept: ["兔子"], reject: ["兔"] }, "一只兔子").outcome).toBe("correct")
  })

  test("a rambling list of every value is not an answer, even when it starts right", () => {
    const list = [en.answer, ...allValues(en).filter((x) => x !== en.answer)]
    expect(judge(en, `${en.name} lives in ${list.join(", ")}.`).outcome).toBe("hedged")
    const zlist = [zh.answer, ...allValues(zh).filter((x) => x !== zh.answer)]
    expect(judge(zh, `${zh.name}养了${zlist.join("、")}。`).outcome).toBe("hedged")
    // the right value named after a wrong one is wrong
    expect(judge(en, `${otherValue(en)}, or maybe ${en.answer}.`).outcome).toBe("wrong")
  })

  test("going on about someone else after a right answer keeps the point", () => {
    expect(judge(en, `${en.name} lives in ${en.answer}. Bo Tal lives in ${otherValue(en)}.`).outcome).toBe("correct")
    expect(judge(zh, `${zh.name}养了一只${zh.answer}。王五养了一只${otherValue(zh)}。`).outcome).toBe("correct")
  })

  test("scoreAnswers tallies per language and attribute; the table prints", () => {
    const qs = data.heldOut
    const perfect = scoreAnswers(qs, qs.map((q) => q.reference))
    expect(perfect.accuracy).toBe(1)
    expect(perfect.correct).toBe(qs.length)
    const wrongZh = scoreAnswers(
      qs,
      qs.map((q) => (q.lang === "en" ? q.reference : q.reference.replace(q.answer, otherValue(q)))),
    )
    expect(wrongZh.perLang.en!.accuracy).toBe(1)
    expect(wrongZh.perLang.zh!.accuracy).toBe(0)
    expect(wrongZh.accuracy).toBe(0.5)
    expect(wrongZh.outcomes.wrong).toBe(qs.length / 2)
    for (const a of ATTRIBUTES) expect(wrongZh.perAttribute[a]!.total).toBe(qs.length / ATTRIBUTES.length)
    // chance: 1/8 for city, colour, profession; 1/6 for pet
    expect(wrongZh.chance).toBeCloseTo((3 / 8 + 1 / 6) / 4, 10)
    expect(wrongZh.samples.length).toBe(6)
    expect(() => scoreAnswers(qs, [])).toThrow(/answers/)
    const table = formatScoreTable(
      [
        { label: "pretrained", report: scoreAnswers(qs, qs.map(() => "")) },
        { label: "sft", report: wrongZh },
      ],
      { samples: true },
    )
    expect(table).toContain("50.0%")
    expect(table).toContain("0.0%")
    expect(table).toContain("(chance)")
    expect(table.split("\n")[0]).toMatch(/model\s+accuracy\s+correct\s+en\s+zh\s+city\s+colour\s+profession\s+pet/)
  })
})
