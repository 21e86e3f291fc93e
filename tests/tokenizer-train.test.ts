/**
 * Training: a 6400-vocab tokenizer on ../shared/data/corpora (~4 MB) through the CLI, with its
 * progress output; the result loads in Python `tokenizers` and `transformers` AutoTokenizer with
 * the same ids, and its chat template renders the same text in Python and in bunmind.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { renderChatTemplate, loadTokenizerConfig, type ChatMessage } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync } from "../src/tokenizer/tokenizer.ts"
import { cli, python, shared } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "tok-train")
const corpora = readdirSync(`${shared}/corpora`).filter((f) => f.endsWith(".txt")).map((f) => `${shared}/corpora/${f}`)

const samples = [
  "Once upon a time, there was a little girl named Lily.",
  "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
  "emoji 👨‍👩‍👧 and code: fn main() { println!(\"hi\"); }\r\n\ttabs",
  "<|im_start|>user\n你好<|im_end|>\n<think>\n</think>",
  "",
]

const conversations: { messages: ChatMessage[]; addGenerationPrompt: boolean; enableThinking?: boolean }[] = [
  { messages: [{ role: "user", content: "你好" }], addGenerationPrompt: true },
  { messages: [{ role: "user", content: "hi" }], addGenerationPrompt: true, enableThinking: true },
  {
    messages: [
      { role: "system", content: "You are helpful." },
      { role: "user", content: "2+2?" },
      { role: "assistant", content: "4", reasoning_content: "add them" },
      { role: "user", content: "and 3+3?" },
    ],
    addGenerationPrompt: true,
  },
]

describe("tokenizer training", () => {
  let trained: ReturnType<typeof cli>
  beforeAll(() => {
    rmSync(out, { recursive: true, force: true })
    mkdirSync(out, { recursive: true })
    trained = cli(["tokenizer", "train", "--data", ...corpora, "--vocab-size", "6400", "--out", join(out, "minimind")])
  })

  test("trains a 6400-vocab tokenizer on the 4 MB corpus and reports progress", () => {
    expect(trained.stderr).toContain("tokenizer: vocab 6400")
    expect(trained.code).toBe(0)
    const tok = openTokenizerSync(join(out, "minimind"))
    expect(tok.vocabSize).toBe(6400)
    // Scheme tokens sit at ids 0..35 in order.
    expect(tok.tokenToId("<|endoftext|>")).toBe(0)
    expect(tok.tokenToId("<|im_start|>")).toBe(1)
    expect(tok.tokenToId("<|im_end|>")).toBe(2)
    expect(tok.tokenToId("<tool_call>")).toBe(21)
    expect(tok.tokenToId("<think>")).toBe(25)
    expect(tok.tokenToId("<|buffer9|>")).toBe(35)
    // It learned merges: English and Chinese compress well below one token per byte.
    const en = tok.encode(samples[0]!)
    expect(en.length).toBeLessThan(samples[0]!.length / 3)
    tok.free()
  })

  test("Python tokenizers and transformers load it and give the same ids", () => {
    const dir = join(out, "minimind")
    const tok = openTokenizerSync(dir)
    const ours = samples.map((s) => Array.from(tok.encode(s)))
    tok.free()
    const input = join(out, "samples.json")
    writeFileSync(input, JSON.stringify(samples))
    const theirs = JSON.parse(
      python(
        `import json, sys
from tokenizers import Tokenizer
from transformers import AutoTokenizer
texts = json.load(open(sys.argv[2]))
t = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
a = AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps({"tokenizers": [t.encode(s, add_special_tokens=False).ids for s in texts],
                  "auto": [a.encode(s, add_special_tokens=False) for s in texts],
                  "len": len(a), "eos": a.eos_token, "pad": a.pad_token}))`,
        [dir, input],
      ),
    )
    expect(theirs.tokenizers).toEqual(ours)
    expect(theirs.auto).toEqual(ours)
    expect(theirs.len).toBe(6400)
    expect(theirs.eos).toBe("<|im_end|>")
  })

  test("its chat template renders the same in Python transformers and bunmind", () => {
    const dir = join(out, "minimind")
    const cfg = loadTokenizerConfig(dir)
    const ours = conversations.map((c) =>
      renderChatTemplate(cfg.chatTemplate, c.messages, { addGenerationPrompt: c.addGenerationPrompt, enableThinking: c.enableThinking }),
    )
    const input = join(out, "conversations.json")
    writeFileSync(input, JSON.stringify(conversations))
    const theirs = JSON.parse(
      python(
        `import json, sys
from transformers import AutoTokenizer
a = AutoTokenizer.from_pretrained(sys.argv[1])
out = []
for c in json.load(open(sys.argv[2])):
    kw = {} if c.get("enableThinking") is None else {"open_thinking": c["enableThinking"]}  # MiniMind's name for it
    out.append(a.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=c["addGenerationPrompt"], **kw))
print(json.dumps(out))`,
        [dir, input],
      ),
    )
    expect(ours).toEqual(theirs)
    expect(ours[0]).toContain("<|im_start|>assistant\n")
  })

  test("the v1 scheme trains with <unk> <s> </s> at 0, 1, 2", () => {
    const r = cli(["tokenizer", "train", "--data", `${shared}/corpora/fortunes_zh_tang300.txt`, "--vocab-size", "600", "--scheme", "v1", "--out", join(out, "v1")])
    expect(r.code).toBe(0)
    const tok = openTokenizerSync(join(out, "v1"))
    expect([tok.tokenToId("<unk>"), tok.tokenToId("<s>"), tok.tokenToId("</s>")]).toEqual([0, 1, 2])
    expect(tok.tokenToId("<|im_start|>")).toBeUndefined()
    tok.free()
    const cfg = loadTokenizerConfig(join(out, "v1"))
    expect(renderChatTemplate(cfg.chatTemplate, [{ role: "user", content: "q" }, { role: "assistant", content: "a" }], {})).toBe(
      "<s>user\nq</s>\n<s>assistant\na</s>\n",
    )
  })

  test("an unknown scheme and missing files are clear errors", () => {
    const r = cli(["tokenizer", "train", "--data", corpora[0]!, "--scheme", "gpt2", "--out", join(out, "x")])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('unknown special-token scheme "gpt2"')
    const m = cli(["tokenizer", "train", "--data", "/no/such/corpus.txt", "--out", join(out, "y")])
    expect(m.code).toBe(1)
    expect(m.stderr).toContain("/no/such/corpus.txt")
  })

  test("a malformed JSONL corpus names file and line", () => {
    const bad = join(out, "bad.jsonl")
    writeFileSync(bad, '{"text": "fine"}\n{"text": "fine too"}\n{"text": broken\n')
    const r = cli(["tokenizer", "train", "--data", bad, "--vocab-size", "300", "--out", join(out, "z")])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("bad.jsonl:3")
  })
})
