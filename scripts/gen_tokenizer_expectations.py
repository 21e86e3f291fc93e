#!/usr/bin/env python3
"""Generate tests/fixtures/tokenizer/minimind_parity.json: MiniMind's tokenizer run by Hugging Face `tokenizers`.

For a broad, adversarial set of strings it records
    ids     = Tokenizer.from_file(<minimind>/tokenizer.json).encode(text, add_special_tokens=False).ids
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
so the bun tests can check that bunmind's native tokenizer (the Rust `tokenizers` crate over bun:ffi) matches.

    python3 scripts/gen_tokenizer_expectations.py                          # rewrite the fixture
    python3 scripts/gen_tokenizer_expectations.py --tokenizer PATH.json    # another tokenizer.json

Needs `pip install tokenizers`. JSON cannot hold lone surrogates (U+D800..U+DFFF alone) and UTF-8 cannot
encode them, so they are not in the set; every other code point class is.
"""

import argparse
import hashlib
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(os.environ.get("BUNMIND_MINIMIND_DIR", "/work/shared/data/minimind"), "tokenizer.json")
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizer", "minimind_parity.json")

PY_CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b  # tuple swap
    return a


print(f"{fib(10)=}", end="\\n")
'''

JS_CODE = """const sum = (xs) => xs.reduce((a, b) => a + b, 0);
export async function main() {
\tconst res = await fetch(`https://api.example.com/v1?q=${encodeURIComponent("中文")}`);
\treturn res.ok ? sum([1, 2, 3]) : -1; // ternary
}
"""

JSON_TEXT = json.dumps(
    {"name": "小明", "quote": 'He said "hi"\\n', "path": "C:\\Users\\a\\b", "tab": "a\tb", "nl": "x\ny", "u": "\u4e2d\u6587", "nums": [1, -2.5, 3e10, 0.1], "ok": True, "none": None},
    ensure_ascii=True,
)


def cases():
    c = []

    def add(name, text):
        c.append((name, text))

    # Chinese
    add("zh greeting", "你好，世界！")
    add("zh sentence", "MiniMind 是一个小型语言模型教学项目，用来学习从预训练到后训练的完整流程。")
    add("zh question", "用一句话解释 tokenizer。")
    add("zh classical", "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？")
    add("zh traditional", "繁體中文測試：臺灣、香港")
    add("zh punctuation", "「引号」《书名》——省略号……【括号】、顿号；冒号：")
    add("cjk extension B (astral)", "𠀀𠀁𠮷𪚥")
    # English
    add("en hello", "Hello, world!")
    add("en pangram", "The quick brown fox jumps over the lazy dog.")
    add("en contractions", "I'm sure they'll say we can't, won't, shouldn't've, y'all'd've.")
    add("en caps and identifiers", "ALL CAPS TEXT camelCaseIdentifier snake_case_name kebab-case-name")
    add("en single letters", "a b c d e f g")
    # Mixed
    add("mixed zh en", "GPT-4 和 MiniMind2 的区别是什么？Explain in English.")
    add("mixed zh numbers units", "今天是2024年11月28日，气温25.5°C，湿度60%。")
    add("mixed fullwidth ascii", "ＡＢＣ　ｆｕｌｌｗｉｄｔｈ！１２３")
    # Emoji
    add("emoji single", "👍")
    add("emoji zwj family", "👨‍👩‍👧‍👦")
    add("emoji flags", "🇨🇳🇺🇸🇯🇵🇩🇪")
    add("emoji skin tones", "👍🏻👍🏼👍🏽👍🏾👍🏿")
    add("emoji rainbow flag (variation selector + zwj)", "🏳️‍🌈")
    add("emoji heart with VS16", "❤️ vs ❤")
    add("emoji keycap", "1️⃣ #️⃣ *️⃣")
    add("emoji zwj profession", "🧑🏽‍💻 is coding, 👩‍🔬 is testing")
    add("emoji in chinese", "太棒了😀😀！继续加油💪")
    add("emoji tag sequence (England flag)", "🏴󠁧󠁢󠁥󠁮󠁧󠁿")
    # Other scripts
    add("arabic", "مرحبا بالعالم، كيف حالك؟")
    add("hindi", "नमस्ते दुनिया, आप कैसे हैं?")
    add("thai", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง")
    add("korean", "안녕하세요 세계! 한국어 테스트입니다.")
    add("japanese", "こんにちは世界。カタカナとひらがなと漢字。")
    add("cyrillic", "Привет, мир! Съешь же ещё этих мягких французских булок.")
    add("greek", "Γειά σου Κόσμε — αβγδε ΑΒΓΔΕ")
    add("hebrew rtl", "שלום עולם")
    add("bidi mixed rtl ltr numbers", "עברית 123 English مرحبا 456")
    add("vietnamese diacritics", "Tiếng Việt có dấu: Đường phố Hà Nội")
    add("german and french", "Straße ÄÖÜ äöü ß — « Ça va ? » œuvre")
    add("precomposed e acute", "caf\u00e9")
    add("decomposed e acute (NFD)", "cafe\u0301")
    add("zalgo", "Z\u0351\u036b\u0343a\u0310\u0307l\u0346g\u0344o\u0352")
    # Code
    add("python code", PY_CODE)
    add("javascript code", JS_CODE)
    add("json with escapes", JSON_TEXT)
    add("json pretty", json.dumps({"a": [1, {"b": None}], "中": "文"}, ensure_ascii=False, indent=2))
    add("shell", "for f in *.txt; do echo \"$f\" | wc -l; done 2>&1 | tee log.txt")
    add("regex", r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(?:\w+\.)+\w{2,}$")
    add("html", '<div class="a" id=\'b\'>&amp; &lt;tag&gt; <br/></div>')
    add("c with tabs", "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n")
    # Whitespace
    add("single space", " ")
    add("two spaces", "  ")
    add("leading spaces", "   leading")
    add("trailing spaces", "trailing   ")
    add("single tab", "\t")
    add("tabs indent", "\t\t\tindented")
    add("double newline", "a\n\nb")
    add("only newlines", "\n\n\n")
    add("crlf", "line1\r\nline2\r\n")
    add("lone cr", "a\rb\r")
    add("mixed whitespace run", " \t \n \r\n\t ")
    add("space before newline", "word \nword  \n  word")
    add("nbsp", "a\u00a0b\u00a0\u00a0c")
    add("ideographic space", "中\u3000文")
    add("zero width space and joiner", "a\u200bb\u200dc\u200cd")
    add("bom", "\ufeffBOM at start")
    add("other unicode spaces", "em\u2003en\u2002thin\u2009hair\u200a")
    # Control characters
    add("nul alone", "\u0000")
    add("nul inside", "a\u0000b\u0000\u0000c")
    add("low control chars", "\u0001\u0002\u0003\u0007\u0008\u000b\u000c\u001f")
    add("del", "\u007f")
    add("c1 controls", "\u0080\u0085\u009f")
    add("line and paragraph separators", "a\u2028b\u2029c")
    add("ansi escape", "\u001b[31mred\u001b[0m")
    # Lone combining marks
    add("lone combining acute", "\u0301")
    add("lone combining run", "\u0301\u0302\u0303\u0304")
    add("combining after space", " \u0308x")
    # Special tokens inside text
    add("chatml turn", "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    add("think block", "<think>\n推理过程\n</think>\n\n答案")
    add("tool call", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>')
    add("tool response", "<tool_response>\n25°C\n</tool_response>")
    add("endoftext", "<|endoftext|>")
    add("endoftext twice adjacent", "<|endoftext|><|endoftext|>")
    add("special token glued to text", "text<|im_end|>more<think>x</think>")
    add("partial im_start", "<|im_sta")
    add("partial im_start no bar", "<|im_start")
    add("partial im_end", "<|im_end|")
    add("uppercase lookalike", "<|IM_START|>")
    add("spaced lookalike", "< |im_start| >")
    add("nested angle brackets", "<<|im_start|>>")
    add("reserved multimodal tokens", "<|vision_start|><|image_pad|><|vision_end|><tts_pad>")
    add("buffer tokens", "<|buffer1|><|buffer9|><|buffer10|>")
    add("v1 tokens are plain text here", "<s>user\nhi</s>\n<unk>")
    add("special tokens with spaces", " <|im_start|> <think> ")
    # Very long runs
    add("10k repeated ascii", "a" * 10000)
    add("10k repeated cjk", "中" * 10000)
    add("5k spaces", " " * 5000)
    add("2k newlines", "\n" * 2000)
    add("3k repeated pair", "ab" * 3000)
    add("1k repeated emoji", "😀" * 1000)
    add("long mixed paragraph", ("MiniMind 训练流程：pretrain → SFT → DPO. " * 200).strip())
    # Empty
    add("empty", "")
    # Numbers
    add("integer", "1234567890")
    add("pi", "3.14159265358979323846")
    add("signed and exponent", "-0.001 +42 1e-10 6.02e23")
    add("thousands separators", "1,000,000 and 1 000 000 and 1'000'000")
    add("fullwidth digits", "０１２３４５６７８９")
    add("arabic-indic digits", "٠١٢٣٤٥٦٧٨٩")
    add("fractions and superscripts", "½ ⅓ ¼ x² y³ H₂O")
    # URLs
    add("url with chinese fragment", "https://github.com/jingyaogong/minimind?tab=readme-ov-file#-快速开始")
    add("url percent encoded", "https://example.com/search?q=%E4%B8%AD%E6%96%87&page=2")
    add("idn url", "http://例子.测试/路径?q=值&x=1")
    add("email and file url", "mailto:user@example.com file:///tmp/a%20b.txt")
    # Miscellaneous
    add("math", "∑_{i=1}^{n} i² = n(n+1)(2n+1)/6, ∀x∈ℝ: x²≥0")
    add("latex", r"$\frac{a}{b} + \sqrt{x^2 + y^2}$")
    add("box drawing", "┌─┬─┐\n│a│b│\n└─┴─┘")
    add("kaomoji", "¯\\_(ツ)_/¯ (╯°□°)╯︵ ┻━┻")
    add("private use and noncharacters", "\ue000\uf8ff\ufdd0\ufffe\uffff")
    add("max code point", "\U0010ffff\U000e0001")
    add("replacement character", "\ufffd\ufffd")
    return c


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="tokenizer.json to run")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.tokenizer, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    all_cases = cases()
    names = [n for n, _ in all_cases]
    assert len(names) == len(set(names)), "case names must be unique"
    rows = []
    for name, text in all_cases:
        ids = tok.encode(text, add_special_tokens=False).ids
        rows.append({"name": name, "text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})

    header = {
        "generator": "scripts/gen_tokenizer_expectations.py",
        "tokenizers": tokenizers.__version__,
        "tokenizer_file": "minimind/tokenizer.json (github jingyaogong/minimind, Apache-2.0)",
        "tokenizer_sha256": sha,
        "encode": "Tokenizer.from_file(tokenizer_file).encode(text, add_special_tokens=False).ids",
        "decode": "tokenizer.decode(ids, skip_special_tokens=False)",
        "notes": [
            "Lone surrogates (U+D800..U+DFFF) are left out: JSON strings cannot carry them portably and UTF-8 cannot encode them.",
            "`decoded` differs from `text` only where the byte-level tokenizer cannot round-trip (none expected); compare both.",
        ],
        "added_tokens": [
            {"id": i, "content": t.content, "special": t.special} for i, t in sorted(tok.get_added_tokens_decoder().items())
        ],
        "count": len(rows),
    }
    # Arrays of records go one record per line: the file stays diffable while the long id arrays stay compact.
    def dump(value):
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return "[\n" + ",\n".join("    " + json.dumps(v, ensure_ascii=False) for v in value) + "\n  ]"
        return json.dumps(value, ensure_ascii=False, indent=2).replace("\n", "\n  ")

    doc = {**header, "cases": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(f"  {json.dumps(k)}: {dump(v)}" for k, v in doc.items()) + "\n}\n")
    with open(args.out, encoding="utf-8") as f:
        assert json.load(f) == doc, "fixture did not read back identically"
    mismatched = [r["name"] for r in rows if r["decoded"] != r["text"]]
    print(f"wrote {len(rows)} cases to {os.path.relpath(args.out, REPO)} (tokenizers {tokenizers.__version__}); decode != text for: {mismatched or 'none'}")


if __name__ == "__main__":
    main()
