/**
 * A small parser for the Python literals found in MiniMind v1 CSVs: the `history` column is
 * `str()` of a list of [question, answer] pairs, e.g. `[['你好', "it's me"], ...]`. Supports lists,
 * tuples, str (single/double/triple quotes, the usual backslash escapes), int, float, None, True,
 * False. It evaluates nothing: anything else is an error with the offset where parsing stopped.
 */

export type PyValue = string | number | boolean | null | PyValue[]

export class PyLiteralError extends Error {}

const ESCAPES: Record<string, string> = {
  "\\": "\\",
  "'": "'",
  '"': '"',
  n: "\n",
  t: "\t",
  r: "\r",
  a: "\x07",
  b: "\b",
  f: "\f",
  v: "\v",
  "0": "\0",
  "\n": "",
}

export const parsePyLiteral = (src: string): PyValue => {
  let i = 0
  const fail = (what: string): never => {
    throw new PyLiteralError(`${what} at offset ${i}`)
  }
  const ws = () => {
    while (i < src.length && /\s/.test(src[i]!)) i++
  }
  const str = (): string => {
    const quote = src[i]!
    const triple = src.startsWith(quote.repeat(3), i)
    const close = triple ? quote.repeat(3) : quote
    i += close.length
    let out = ""
    for (;;) {
      if (i >= src.length) fail("unterminated string")
      if (src.startsWith(close, i)) {
        i += close.length
        return out
      }
      const c = src[i]!
      if (c === "\\") {
        const e = src[i + 1] ?? fail("dangling backslash")
        if (e === "x" || e === "u" || e === "U") {
          const len = e === "x" ? 2 : e === "u" ? 4 : 8
          const hex = src.slice(i + 2, i + 2 + len)
          if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== len) fail(`bad \\${e} escape`)
          out += String.fromCodePoint(parseInt(hex, 16))
          i += 2 + len
        } else if (e in ESCAPES) {
          out += ESCAPES[e]
          i += 2
        } else {
          out += c + e // Python keeps unknown escapes as written
          i += 2
        }
        continue
      }
      if (!triple && c === "\n") fail("newline in a single-quoted string")
      out += c
      i++
    }
  }
  const seq = (close: string): PyValue[] => {
    i++
    const items: PyValue[] = []
    for (;;) {
      ws()
      if (src[i] === close) {
        i++
        return items
      }
      items.push(value())
      ws()
      if (src[i] === ",") i++
      else if (src[i] !== close) fail(`expected "," or "${close}"`)
    }
  }
  const value = (): PyValue => {
    ws()
    const c = src[i]
    if (c === "[") return seq("]")
    if (c === "(") return seq(")")
    if (c === "'" || c === '"') {
      let s = str()
      // adjacent literals concatenate, as in Python
      for (ws(); src[i] === "'" || src[i] === '"'; ws()) s += str()
      return s
    }
    const word = /^(None|True|False|[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))/.exec(src.slice(i, i + 64))
    if (!word) return fail("unexpected character")
    i += word[0].length
    if (word[0] === "None") return null
    if (word[0] === "True") return true
    if (word[0] === "False") return false
    return Number(word[0].replace(/_/g, ""))
  }
  const v = value()
  ws()
  if (i !== src.length) fail("trailing text")
  return v
}
