/**
 * `bunmind chat` driven through a pipe, as a script would: streamed answers on stdout, one status
 * line per answer on stderr, slash commands, history turns. Expected answers and prompt sizes come
 * from a native session and the chat template run here, independently of the chat loop.
 */
import { afterAll, beforeAll, expect, test } from "bun:test"
import { openSessionSync } from "../src/model/generate.ts"
import { openModelSync, type Model } from "../src/model/model.ts"
import { applyChatTemplate, loadTokenizerConfig, type ChatMessage, type TokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync, type Tokenizer } from "../src/tokenizer/tokenizer.ts"
import { cli } from "./helpers/cli.ts"
import { makeTinyModel } from "./serve-fixture.ts"

let dir: string
let model: Model
let tok: Tokenizer
let cfg: TokenizerConfig

beforeAll(() => {
  dir = makeTinyModel()
  model = openModelSync(dir)
  tok = openTokenizerSync(dir)
  cfg = loadTokenizerConfig(dir)
}, 60_000)

afterAll(() => {
  model?.free()
  tok?.free()
}, 60_000)

const promptLen = (messages: ChatMessage[], thinking = false) => tok.encode(applyChatTemplate(cfg, messages, { addGenerationPrompt: true, enableThinking: thinking })).length

function generate(messages: ChatMessage[], seed: number, n: number) {
  const s = openSessionSync(model, tok.encode(applyChatTemplate(cfg, messages, { addGenerationPrompt: true, enableThinking: false })), {
    temperature: 1,
    topK: 0,
    topP: 1,
    seed,
    maxNewTokens: n,
    stopTokenIds: [2],
  })
  const ids: number[] = []
  for (let t = s.next(); t !== undefined; t = s.finished ? undefined : s.next()) ids.push(t)
  const info = s.info()
  s.free()
  return { text: tok.decode(ids, true), generated: ids.length, finish: info.finish_reason === "stop" ? "stop" : "length" }
}

/** The `[prompt N tokens, M generated, reason, ...]` lines of stderr. */
const statusLines = (stderr: string) =>
  [...stderr.matchAll(/\[prompt (\d+) tokens, (\d+) generated, (\w+),/g)].map((m) => ({ prompt: Number(m[1]), generated: Number(m[2]), finish: m[3] }))

const SAMPLING = ["--temperature", "1", "--top-k", "0", "--top-p", "1", "--seed", "5", "--max-new-tokens", "12"]

test("streams answers from piped lines; history turns grow the prompt; /clear resets it", () => {
  const r = cli(["chat", "--model", dir, "--history", "2", ...SAMPLING], "hello\nand then?\n/clear\nhello\n")
  expect(r.code).toBe(0)
  const status = statusLines(r.stderr)
  expect(status).toHaveLength(3)
  // First answer: seed 5; the chat samples answer n with seed + n.
  const first = generate([{ role: "user", content: "hello" }], 5, 12)
  expect(first.text.length).toBeGreaterThan(0)
  expect(r.stdout.startsWith(`${first.text}\n`)).toBe(true)
  expect(status[0]).toEqual({ prompt: promptLen([{ role: "user", content: "hello" }]), generated: first.generated, finish: first.finish })
  // Second message carries the first turn.
  expect(status[1]!.prompt).toBe(promptLen([{ role: "user", content: "hello" }, { role: "assistant", content: first.text }, { role: "user", content: "and then?" }]))
  expect(r.stderr).toContain("(conversation cleared)")
  // After /clear the prompt is the lone message again.
  expect(status[2]!.prompt).toBe(status[0]!.prompt)
  for (const s of status) expect(s.generated).toBeLessThanOrEqual(12)
})

test("--history 0 sends each message alone", () => {
  const r = cli(["chat", "--model", dir, "--history", "0", ...SAMPLING], "one\ntwo\n")
  expect(r.code).toBe(0)
  expect(statusLines(r.stderr).map((s) => s.prompt)).toEqual([promptLen([{ role: "user", content: "one" }]), promptLen([{ role: "user", content: "two" }])])
})

test("/think, /temp, /max change the next answer; /exit stops reading; bad commands say why", () => {
  const r = cli(["chat", "--model", dir, "--history", "0", ...SAMPLING], "/think on\nwhy?\n/think off\n/temp 0\n/max 3\nhi\n/temp 9\n/bogus\n/exit\nnever answered\n")
  expect(r.code).toBe(0)
  const status = statusLines(r.stderr)
  expect(status).toHaveLength(2)
  expect(status[0]!.prompt).toBe(promptLen([{ role: "user", content: "why?" }], true))
  // The thinking is printed apart from the answer.
  expect(r.stdout.startsWith("<think>\n")).toBe(true)
  expect(r.stdout).toContain("\n</think>")
  // /max 3 + /temp 0: exactly 3 greedy tokens (the tiny model never ends a turn that soon).
  expect(status[1]).toEqual({ prompt: promptLen([{ role: "user", content: "hi" }]), generated: 3, finish: "length" })
  expect(r.stderr).toContain("(thinking on)")
  expect(r.stderr).toContain("(temperature 0)")
  expect(r.stderr).toContain("/temp 9: expected a number in [0, 2]")
  expect(r.stderr).toContain("unknown command /bogus")
})

test("bad flags are usage errors", () => {
  const r = cli(["chat", "--model", dir, "--top-p", "0"], "")
  expect(r.code).toBe(1)
  expect(r.stderr).toContain("--top-p 0: expected a number in (0, 1]")
  const m = cli(["chat", "--model", `${dir}/missing`], "")
  expect(m.code).toBe(1)
  expect(m.stderr).toContain(`${dir}/missing`)
})
