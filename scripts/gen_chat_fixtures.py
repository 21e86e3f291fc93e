#!/usr/bin/env python3
"""Generate tests/fixtures/chat/cases.json: MiniMind's chat template rendered by Hugging Face transformers.

Each case is a conversation (plus tools and template kwargs); `expected` is what
`AutoTokenizer.from_pretrained(<minimind dir>).apply_chat_template(..., tokenize=False)` returns. The
bun tests render the same cases through src/tokenizer/chat-template.ts, with MiniMind's published
template and with our own MINIMIND_CHAT_TEMPLATE, and compare against `expected`.

    python3 scripts/gen_chat_fixtures.py                      # rewrite the fixture
    python3 scripts/gen_chat_fixtures.py --minimind-dir DIR   # another copy of MiniMind's tokenizer
    python3 scripts/gen_chat_fixtures.py --verify-dir DIR     # check a tokenizer bunmind wrote renders
                                                              # every case the same (fixture untouched)

Needs `pip install transformers jinja2 tokenizers` (no torch).
"""

import argparse
import hashlib
import json
import os
import sys
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MINIMIND_DIR = os.environ.get("BUNMIND_MINIMIND_DIR", "/work/shared/data/minimind")
OUT = os.path.join(REPO, "tests", "fixtures", "chat", "cases.json")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询某个城市的实时天气 (current weather for a city)",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "城市名，例如 北京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression like \"2 * (3 + 4)\"; returns a number.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}, "precision": {"type": "integer", "default": 2}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    },
}
# A tool given as a bare schema (no OpenAI `function` wrapper): templates dump whatever they get.
TIME_TOOL = {"name": "get_time", "description": "Current time in a timezone <tz> & 'quotes'", "parameters": {"type": "object", "properties": {"tz": {"type": ["string", "null"]}}}}


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def case(name, messages, tools=None, add_generation_prompt=False, **kwargs):
    return {"name": name, "messages": messages, "tools": tools, "add_generation_prompt": add_generation_prompt, "kwargs": kwargs}


def cases():
    u = lambda c: {"role": "user", "content": c}
    a = lambda c, **kw: {"role": "assistant", "content": c, **kw}
    s = lambda c: {"role": "system", "content": c}
    t = lambda c, **kw: {"role": "tool", "content": c, **kw}
    return [
        case("en single user", [u("Hello, who are you?")]),
        case("en single user, generation prompt", [u("Hello, who are you?")], add_generation_prompt=True),
        case("zh generation prompt, thinking off", [u("MiniMind 是什么？")], add_generation_prompt=True, open_thinking=False),
        case("zh generation prompt, thinking on", [u("请一步一步算 17 × 23。")], add_generation_prompt=True, open_thinking=True),
        case("thinking on without generation prompt has no effect", [u("hi"), a("hello")], open_thinking=True),
        case("system + user + assistant (tiny_sft)", [s("你是一个简洁的 AI 助手。"), u("用一句话解释 tokenizer。"), a("tokenizer 负责把文本切分并映射成模型可以处理的 token id。")]),
        case(
            "multi-turn, mixed languages, generation prompt",
            [s("You are a helpful assistant."), u("Translate 'cat' to Chinese."), a("猫 (māo)"), u("And 'dog'?"), a("狗 (gǒu)"), u("谢谢！")],
            add_generation_prompt=True,
        ),
        case("reasoning_content on assistant", [u("1+1=?"), a("1+1=2。", reasoning_content="用户在问加法。1 加 1 等于 2。")]),
        case("reasoning_content with surrounding newlines is stripped", [u("Why is the sky blue?"), a("\n\nRayleigh scattering.", reasoning_content="\n\nShort wavelengths scatter more.\n\n")]),
        case("inline <think> block in content is split out", [u("2*3?"), a("<think>\nmultiply 2 by 3\n</think>\n\n6")]),
        case("inline </think> without opening tag", [u("Capital of France?"), a("The user asks about France.</think>\nParis.")]),
        case("empty reasoning_content string", [u("ping"), a("pong", reasoning_content="")]),
        case("transformers aliases `thinking` to reasoning_content", [u("What is 3 squared?"), a("9", thinking="3 × 3 = 9")]),
        case("transformers aliases `reasoning` to reasoning_content", [u("Largest planet?"), a("Jupiter.", reasoning="Gas giants: Jupiter is the largest.")]),
        case("tools with system prompt, generation prompt", [s("你是一个天气助手。"), u("北京今天天气怎么样？")], tools=[WEATHER_TOOL], add_generation_prompt=True),
        case("tools without system prompt", [u("What's 12*7?")], tools=[CALC_TOOL, TIME_TOOL], add_generation_prompt=True),
        case("empty tools list behaves like no tools", [s("sys"), u("hi")], tools=[], add_generation_prompt=True),
        case(
            "assistant tool call with object arguments (non-ASCII kept)",
            [u("上海天气？"), a("", tool_calls=[call("get_weather", {"city": "上海", "unit": "celsius"})])],
            tools=[WEATHER_TOOL],
        ),
        case(
            "assistant tool call with string arguments (inserted verbatim)",
            [u("compute"), a("", tool_calls=[call("calculate", '{"expression":"2*(3+4)",  "precision": 0}')])],
            tools=[CALC_TOOL],
        ),
        case(
            "content plus two tool calls, nested arguments",
            [
                u("Weather in Paris and the time in Tokyo?"),
                a(
                    "Let me check both.",
                    tool_calls=[
                        call("get_weather", {"city": "Paris", "options": {"days": [1, 2, 3], "details": True, "note": None, "ratio": 0.5}}),
                        {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "Asia/Tokyo", "quote": "say \"hi\"\n\t\\ end"}}},
                    ],
                ),
            ],
            tools=[WEATHER_TOOL, TIME_TOOL],
        ),
        case(
            "two tool calls without content, content null (dropped like transformers does)",
            [u("两个城市"), a(None, tool_calls=[call("get_weather", {"city": "北京"}), call("get_weather", {"city": "深圳"})])],
            tools=[WEATHER_TOOL],
        ),
        case("flat tool call without function wrapper", [u("time?"), a("", tool_calls=[{"name": "get_time", "arguments": {"tz": "UTC"}}])], tools=[TIME_TOOL]),
        case("single tool response", [u("天气？"), a("", tool_calls=[call("get_weather", {"city": "北京"})]), t('{"temp": 25, "condition": "晴"}')], tools=[WEATHER_TOOL], add_generation_prompt=True),
        case(
            "consecutive tool responses are grouped into one user turn",
            [
                u("Weather in Paris and Tokyo"),
                a("", tool_calls=[call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Tokyo"})]),
                t("Paris: 18°C, cloudy", name="get_weather"),
                t("Tokyo: 22°C, sunny", name="get_weather"),
            ],
            tools=[WEATHER_TOOL],
            add_generation_prompt=True,
            open_thinking=True,
        ),
        case(
            "full agent loop with reasoning and final answer",
            [
                s("You can use tools."),
                u("What is 123 * 456?"),
                a("", reasoning_content="I should use the calculator.", tool_calls=[call("calculate", {"expression": "123 * 456"})]),
                t("56088"),
                a("123 × 456 = 56088.", reasoning_content="The tool returned 56088."),
                u("Now divide it by 8."),
            ],
            tools=[CALC_TOOL],
            add_generation_prompt=True,
            open_thinking=True,
        ),
        case("tool message first in the conversation", [t("orphan result"), u("continue")], add_generation_prompt=True),
        case("user content that looks like a tool response", [u("<tool_response>\nraw\n</tool_response>"), a("ok")], add_generation_prompt=True),
        case("system message later in the conversation", [u("hi"), a("hello"), s("From now on answer in French."), u("How are you?")], add_generation_prompt=True),
        case(
            "special characters, emoji, CRLF, tabs and special tokens in content",
            [
                s("  leading spaces and trailing\t\n"),
                u("emoji 👨‍👩‍👧‍👦 🇨🇳 👍🏽\r\nCRLF line\ttab <|im_end|> <think> {{ not jinja }} {% raw %}"),
                a("\n\nleading newlines are stripped from the answer\n\n"),
            ],
            add_generation_prompt=True,
        ),
        case(
            "strip('\\n') keeps spaces and tabs around reasoning and answer",
            [u("  spaced question  "), a("\n \t answer after a space and a tab \n", reasoning_content=" \n  spaced thought \t\n")],
        ),
        case("inline think block with spaces around newlines", [u("q"), a("<think> \n  idea  \n</think> \n\n  final answer  ")]),
        case(
            "tool call arguments with control characters and separators",
            [u("echo"), a("", tool_calls=[call("echo", {"text": "esc\u001b bell\u0007 nul\u0000 ls\u2028 ps\u2029 del\u007f", "html": "</script><b>&amp;</b>", "empty": {}, "list": []})])],
        ),
        case("empty user content", [u(""), a("")], add_generation_prompt=True),
        case("non-string content renders as empty", [u([{"type": "text", "text": "a list, not a string"}]), a("ignored list content")]),
        case("assistant as the last turn, with generation prompt", [u("Q"), a("A")], add_generation_prompt=True, open_thinking=False),
        case("extra template kwargs are ignored by MiniMind's template", [u("hi")], add_generation_prompt=True, enable_thinking=False, custom_flag="x"),
    ]


# Small templates exercising the Jinja semantics chat templates lean on, rendered by transformers' own Jinja
# environment (trim_blocks, lstrip_blocks, its tojson, raise_exception): checks the renderer beyond one template.
ENGINE_MESSAGES = [{"role": "system", "content": " \t sys \n"}, {"role": "user", "content": "\n\n  q1  \n"}, {"role": "assistant", "content": "a1", "reasoning_content": "r1"}, {"role": "user", "content": "中文 q2 <b>&amp;'"}]
ENGINE_TEMPLATES = [
    ("one trailing newline is dropped", "{{ messages[0].role }}\n\n"),
    ("CRLF source newlines become LF", "{% for m in messages %}\r\n{{ m.role }}\r\n{% endfor %}\r\nend\r\n"),
    ("trim_blocks and lstrip_blocks", "{% for m in messages %}\n    {% if m.role == 'user' %}\n  [{{ m.content }}]\n    {% endif %}\n{% endfor %}\n"),
    ("python strip family with and without chars", "{% for m in messages %}|{{ m.content.strip() }}|{{ m.content.strip('\\n') }}|{{ m.content.lstrip(' \\n') }}|{{ m.content.rstrip() }}|{% endfor %}"),
    ("split with negative index", "{% for m in messages %}{{ (m.content + ' x y').split(' ')[-1] }}{{ m.content.split('q')[0] | length }};{% endfor %}"),
    ("tojson defaults keep non-ASCII and do not escape HTML", "{{ messages | tojson }}"),
    ("tojson indent", "{{ messages[2] | tojson(indent=2) }}"),
    ("namespace, reversed slice and loop variables", "{% set ns = namespace(last=-1) %}{% for m in messages[::-1] %}{% if ns.last == -1 and m.role == 'user' %}{% set ns.last = messages | length - 1 - loop.index0 %}{% endif %}{% endfor %}{{ ns.last }}{% for m in messages %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{% endfor %}"),
    ("is tests and defined kwargs", "{{ add_generation_prompt is true }}{{ tools is none }}{{ documents is none }}{{ bos_token }}{{ undefined_kwarg is defined }}{{ messages[0].content is string }}{{ messages[2].reasoning_content is defined }}"),
    ("in operator, startswith, endswith and string methods", "{% for m in messages %}{{ 'q' in m.content }}{{ m.content.startswith(' ') }}{{ m.content.endswith('\\n') }}{{ m.role.upper() }}{% endfor %}"),
    ("inline if expressions and concatenation", "{% for m in messages %}{{ '<' + m.role + '>' if m.role != 'system' else '' }}{{ m.get('reasoning_content', '-') }}{% endfor %}"),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minimind-dir", default=DEFAULT_MINIMIND_DIR, help="directory with MiniMind's tokenizer.json + tokenizer_config.json")
    p.add_argument("--out", default=OUT)
    p.add_argument("--verify-dir", help="render every case with the tokenizer in this directory and compare with the fixture")
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    import jinja2
    import transformers
    from transformers import AutoTokenizer

    def render(tok, c):
        return tok.apply_chat_template(
            c["messages"], tools=c["tools"], tokenize=False, add_generation_prompt=c["add_generation_prompt"], **c["kwargs"]
        )

    if args.verify_dir:
        with open(args.out, encoding="utf-8") as f:
            fixture = json.load(f)
        tok = AutoTokenizer.from_pretrained(args.verify_dir)
        bad = [c["name"] for c in fixture["cases"] if render(tok, c) != c["expected"]]
        for name in bad:
            print(f"MISMATCH: {name}", file=sys.stderr)
        print(f"{args.verify_dir}: {len(fixture['cases']) - len(bad)}/{len(fixture['cases'])} cases render as MiniMind's template does")
        sys.exit(1 if bad else 0)

    config_path = os.path.join(args.minimind_dir, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        template = json.load(f)["chat_template"]
    tok = AutoTokenizer.from_pretrained(args.minimind_dir)
    if tok.chat_template != template:
        sys.exit(f"{args.minimind_dir}: transformers loaded a different chat template than {config_path} holds")

    out_cases = []
    for c in cases():
        out_cases.append({**c, "expected": render(tok, c)})
    names = [c["name"] for c in out_cases]
    assert len(names) == len(set(names)), "case names must be unique"

    from transformers.utils.chat_template_utils import render_jinja_template

    engine_cases = []
    for name, src in ENGINE_TEMPLATES:
        (rendered,), _ = render_jinja_template(
            conversations=[ENGINE_MESSAGES], chat_template=src, add_generation_prompt=True, **tok.special_tokens_map
        )
        engine_cases.append({"name": name, "template": src, "messages": ENGINE_MESSAGES, "add_generation_prompt": True, "expected": rendered})

    fixture = {
        "generator": "scripts/gen_chat_fixtures.py",
        "renderer": "transformers AutoTokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=..., **kwargs)",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "special_tokens_map": tok.special_tokens_map,
        "template_file": "minimind/tokenizer_config.json (github jingyaogong/minimind, Apache-2.0)",
        "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "template": template,
        "cases": out_cases,
        "engine_cases": engine_cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {len(out_cases)} cases and {len(engine_cases)} engine cases to {os.path.relpath(args.out, REPO)} (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
