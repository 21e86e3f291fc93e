/**
 * Chat templates against Hugging Face transformers: tests/fixtures/chat/cases.json holds what
 * `apply_chat_template(..., tokenize=False)` renders with MiniMind's published template
 * (regenerate with `python3 scripts/gen_chat_fixtures.py`).
 */
import { describe, expect, test } from "bun:test"
import { existsSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  applyChatTemplate,
  ChatTemplateError,
  type ChatMessage,
  loadTokenizerConfig,
  type RenderOptions,
  renderChatTemplate
} from "../src/tokenizer/chat-template.ts"
import {
  MINIMIND_CHAT_TEMPLATE,
  MINIMIND_SPECIAL_TOKENS,
  tokenizerConfigFor,
  V1_CHAT_TEMPLATE,
  V1_SPECIAL_TOKENS
} from "../src/tokenizer/templates.ts"

interface Case {
  readonly name: string
  readonly messages: ChatMessage[]
  readonly tools: unknown[] | null
  readonly add_generation_prompt: boolean
  readonly kwargs: Record<string, unknown>
  readonly expected: string
}
interface EngineCase {
  readonly name: string
  readonly template: string
  readonly messages: ChatMessage[]
  readonly add_generation_prompt: boolean
  readonly expected: string
}
interface Fixture {
  readonly template: string
  readonly template_sha256: string
  readonly special_tokens_map: Record<string, string>
  readonly cases: Case[]
  readonly engine_cases: EngineCase[]
}

const fixture: Fixture = await Bun.file(join(import.meta.dir, "fixtures/chat/cases.json")).json()
const parity: { added_tokens: Array<{ id: number; content: string; special: boolean }> } = await Bun.file(
  join(import.meta.dir, "fixtures/tokenizer/minimind_parity.json")
).json()
const MINIMIND_DIR = process.env.BUNMIND_MINIMIND_DIR ?? "/work/shared/data/minimind"
const hasMinimindDir = existsSync(join(MINIMIND_DIR, "tokenizer_config.json"))

/** The fixture's Python kwargs as renderer options: MiniMind's `open_thinking` is our `enableThinking`. */
function optionsFor(c: Case): RenderOptions {
  const { open_thinking, ...extra } = c.kwargs
  return {
    addGenerationPrompt: c.add_generation_prompt,
    tools: c.tools ?? undefined,
    ...(open_thinking === undefined ? {} : { enableThinking: open_thinking as boolean }),
    extra
  }
}

function withTempDir<T>(f: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "bunmind-chat-"))
  try {
    return f(dir)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

function thrown(f: () => unknown): ChatTemplateError {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(ChatTemplateError)
    return e as ChatTemplateError
  }
  throw new Error("expected a ChatTemplateError, nothing was thrown")
}

test("fixture covers the conversation shapes MiniMind's template supports", () => {
  expect(fixture.cases.length).toBeGreaterThanOrEqual(20)
  const all = fixture.cases.map((c) => c.expected).join("")
  for (const piece of ["# Tools", "<tools>", "<tool_call>\n", "<tool_response>", "<|im_start|>system", "<think>\n\n</think>\n\n"]) {
    expect(all).toContain(piece)
  }
  expect(fixture.cases.some((c) => c.kwargs.open_thinking === true && c.add_generation_prompt)).toBe(true)
  expect(fixture.cases.some((c) => c.messages.some((m) => typeof m.reasoning_content === "string"))).toBe(true)
})

describe("Jinja semantics match transformers' environment", () => {
  test.each(fixture.engine_cases.map((c) => [c.name, c] as const))("%s", (_name, c) => {
    const { bos_token, eos_token, unk_token, pad_token, ...extra } = fixture.special_tokens_map
    const opts = { addGenerationPrompt: c.add_generation_prompt, bosToken: bos_token, eosToken: eos_token, unkToken: unk_token, padToken: pad_token, extra }
    expect(renderChatTemplate(c.template, c.messages, opts)).toBe(c.expected)
  })
})

describe("MiniMind's published template through our renderer equals transformers", () => {
  test.each(fixture.cases.map((c) => [c.name, c] as const))("%s", (_name, c) => {
    expect(renderChatTemplate(fixture.template, c.messages, optionsFor(c))).toBe(c.expected)
  })
})

describe("MINIMIND_CHAT_TEMPLATE renders exactly what MiniMind's template renders", () => {
  test("it is our own text, not a copy", () => {
    expect(MINIMIND_CHAT_TEMPLATE).not.toBe(fixture.template)
  })
  test.each(fixture.cases.map((c) => [c.name, c] as const))("%s", (_name, c) => {
    expect(renderChatTemplate(MINIMIND_CHAT_TEMPLATE, c.messages, optionsFor(c))).toBe(c.expected)
  })
})

test("a template saved with CRLF line endings renders as Jinja2 renders it (newlines normalised)", () => {
  const crlf = `${MINIMIND_CHAT_TEMPLATE.replace(/\n/g, "\r\n")}\r\n`
  for (const c of fixture.cases) expect(renderChatTemplate(crlf, c.messages, optionsFor(c))).toBe(c.expected)
})

describe("tokenizer_config.json", () => {
  test("tokenizerConfigFor('minimind') round-trips through loadTokenizerConfig and renders every case", () => {
    withTempDir((dir) => {
      writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(tokenizerConfigFor("minimind"), null, 2))
      const cfg = loadTokenizerConfig(dir)
      expect(cfg.file).toBe(join(dir, "tokenizer_config.json"))
      expect(cfg.chatTemplate).toBe(MINIMIND_CHAT_TEMPLATE)
      for (const c of fixture.cases) expect(applyChatTemplate(cfg, c.messages, optionsFor(c))).toBe(c.expected)
    })
  })

  test("minimind special tokens match the published tokenizer's added tokens", () => {
    expect(MINIMIND_SPECIAL_TOKENS.map(({ id, content, special }) => ({ id, content, special }))).toEqual(parity.added_tokens)
  })

  test("minimind named tokens match what transformers reports for the published tokenizer", () => {
    const cfg = tokenizerConfigFor("minimind")
    for (const [key, value] of Object.entries(fixture.special_tokens_map)) expect(cfg[key]).toBe(value)
  })

  test.skipIf(!hasMinimindDir)("tokenizerConfigFor('minimind') has every field of the published file, equal but the template", async () => {
    const published = await Bun.file(join(MINIMIND_DIR, "tokenizer_config.json")).json()
    const ours = tokenizerConfigFor("minimind")
    expect(Object.keys(ours)).toEqual(Object.keys(published))
    expect({ ...ours, chat_template: null }).toEqual({ ...published, chat_template: null })
  })

  test.skipIf(!hasMinimindDir)("loadTokenizerConfig reads MiniMind's published file", () => {
    const cfg = loadTokenizerConfig(MINIMIND_DIR)
    expect(cfg.chatTemplate).toBe(fixture.template)
    expect([cfg.bosToken, cfg.eosToken, cfg.padToken, cfg.unkToken]).toEqual(
      ["bos_token", "eos_token", "pad_token", "unk_token"].map((k) => fixture.special_tokens_map[k])
    )
    const c = fixture.cases.find((x) => x.tools !== null && x.add_generation_prompt)!
    expect(applyChatTemplate(cfg, c.messages, optionsFor(c))).toBe(c.expected)
  })

  test("v1 config names <s>, </s>, <unk> with ids 0-2 and carries the v1 template", () => {
    const cfg = tokenizerConfigFor("v1") as Record<string, any>
    expect(V1_SPECIAL_TOKENS.map((t) => t.content)).toEqual(["<unk>", "<s>", "</s>"])
    expect(Object.fromEntries(Object.entries(cfg.added_tokens_decoder).map(([id, t]: [string, any]) => [id, t.content]))).toEqual({
      "0": "<unk>",
      "1": "<s>",
      "2": "</s>"
    })
    expect([cfg.bos_token, cfg.eos_token, cfg.unk_token, cfg.pad_token]).toEqual(["<s>", "</s>", "<unk>", "<unk>"])
    expect(cfg.chat_template).toBe(V1_CHAT_TEMPLATE)
    expect(cfg.tokenizer_class).toBe("PreTrainedTokenizerFast")
  })

  test("a list of named templates picks 'default', and 'tool_use' when tools are given", () => {
    withTempDir((dir) => {
      const chat_template = [
        { name: "default", template: "{{ messages[0].content }}" },
        { name: "tool_use", template: "{{ tools | length }} tools: {{ messages[0].content }}" }
      ]
      writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ chat_template }))
      const cfg = loadTokenizerConfig(join(dir, "tokenizer_config.json"))
      const messages: ChatMessage[] = [{ role: "user", content: "hi" }]
      expect(applyChatTemplate(cfg, messages)).toBe("hi")
      expect(applyChatTemplate(cfg, messages, { tools: [{ name: "a" }, { name: "b" }] })).toBe("2 tools: hi")
    })
  })

  test("chat_template.jinja beside the config wins over the JSON field, as in transformers", () => {
    withTempDir((dir) => {
      writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ chat_template: "json", bos_token: { content: "<s>" } }))
      writeFileSync(join(dir, "chat_template.jinja"), "jinja {{ bos_token }}\n")
      const cfg = loadTokenizerConfig(dir)
      expect(cfg.chatTemplateSource).toBe(join(dir, "chat_template.jinja"))
      expect(applyChatTemplate(cfg, [{ role: "user", content: "x" }])).toBe("jinja <s>")
    })
  })
})

describe("V1_CHAT_TEMPLATE", () => {
  const render = (messages: ChatMessage[], opts: RenderOptions = {}) => renderChatTemplate(V1_CHAT_TEMPLATE, messages, opts)

  test("renders <s>role\\n...</s>\\n turns", () => {
    expect(render([{ role: "user", content: "你好" }, { role: "assistant", content: "我来自地球" }])).toBe(
      "<s>user\n你好</s>\n<s>assistant\n我来自地球</s>\n"
    )
  })
  test("system turn and generation prompt", () => {
    const out = render([{ role: "system", content: "S" }, { role: "user", content: "Q" }], { addGenerationPrompt: true })
    expect(out).toBe("<s>system\nS</s>\n<s>user\nQ</s>\n<s>assistant\n")
  })
  test("multi-turn without generation prompt ends after the last turn", () => {
    const out = render([
      { role: "user", content: "q1" },
      { role: "assistant", content: "a1" },
      { role: "user", content: "q2" }
    ])
    expect(out).toBe("<s>user\nq1</s>\n<s>assistant\na1</s>\n<s>user\nq2</s>\n")
  })
  test("refuses tool turns and tools, which v1 has no tokens for", () => {
    expect(thrown(() => render([{ role: "tool", content: "r" }], { source: "v1.jinja" })).message).toContain("not tool")
    expect(thrown(() => render([{ role: "user", content: "q" }], { tools: [{ name: "f" }] })).reason).toBe("render")
  })
})

describe("errors", () => {
  test("a malformed template in tokenizer_config.json names the file", () => {
    withTempDir((dir) => {
      const file = join(dir, "tokenizer_config.json")
      writeFileSync(file, JSON.stringify({ chat_template: "{% for m in messages %}{{ m.content }}{% endif %}" }))
      const e = thrown(() => loadTokenizerConfig(dir))
      expect(e._tag).toBe("ChatTemplateError")
      expect(e.reason).toBe("syntax")
      expect(e.file).toBe(file)
      expect(e.message).toContain(file)
      expect(e.message).toContain("endif")
    })
  })

  test("an unclosed block names the file it came from", () => {
    const e = thrown(() => renderChatTemplate("{% if messages %}open", [{ role: "user", content: "x" }], { source: "my.jinja" }))
    expect([e.file, e.reason]).toEqual(["my.jinja", "syntax"])
    expect(e.message).toStartWith("my.jinja: ")
  })

  test("a missing tokenizer_config.json names the path it looked for", () => {
    withTempDir((dir) => {
      const e = thrown(() => loadTokenizerConfig(dir))
      expect(e.file).toBe(join(dir, "tokenizer_config.json"))
      expect(e.reason).toBe("config")
      expect(e.message).toContain("not found")
      const missingDir = join(dir, "nope")
      expect(thrown(() => loadTokenizerConfig(missingDir)).file).toBe(join(missingDir, "tokenizer_config.json"))
    })
  })

  test("invalid JSON and a config without a template say so", () => {
    withTempDir((dir) => {
      const file = join(dir, "tokenizer_config.json")
      writeFileSync(file, "{ not json")
      expect(thrown(() => loadTokenizerConfig(file)).message).toContain("not valid JSON")
      writeFileSync(file, JSON.stringify({ bos_token: "<s>" }))
      expect(thrown(() => loadTokenizerConfig(file)).message).toContain("chat_template")
      mkdirSync(join(dir, "sub"))
      writeFileSync(join(dir, "sub", "tokenizer_config.json"), JSON.stringify({ chat_template: [{ name: 1 }] }))
      expect(thrown(() => loadTokenizerConfig(join(dir, "sub"))).message).toContain("chat_template[0]")
    })
  })

  test("render errors (raise_exception, bad calls) name the source", () => {
    const e = thrown(() => renderChatTemplate("{{ raise_exception('no system role') }}", [{ role: "user", content: "x" }], { source: "t.jinja" }))
    expect([e.file, e.reason]).toEqual(["t.jinja", "render"])
    expect(e.message).toContain("no system role")
    expect(thrown(() => renderChatTemplate("{{ messages[0].content.nope() }}", [{ role: "user", content: "x" }])).reason).toBe("render")
  })

  test("an empty conversation is refused, as transformers refuses it", () => {
    expect(thrown(() => renderChatTemplate(MINIMIND_CHAT_TEMPLATE, [])).reason).toBe("input")
  })
})
