/**
 * The C ABI's safety promises, exercised through bun:ffi: bad handles, double frees, foreign
 * handles, panics, invalid UTF-8 and bad files give errors (never a crash), and scoped handles are
 * freed when an Effect program is interrupted.
 */
import { describe, expect, test } from "bun:test"
import { ptr } from "bun:ffi"
import { Effect, Fiber } from "effect"
import { loadNativeSync } from "../src/native/library.ts"
import { Status } from "../src/native/symbols.ts"
import { NativeError } from "../src/native/errors.ts"
import { loadTokenizer, openTokenizerSync } from "../src/tokenizer/tokenizer.ts"
import { shared } from "./helpers/cli.ts"

const lib = loadNativeSync("cpu")
const tokPath = `${shared}/minimind/tokenizer.json`

describe("native boundary", () => {
  test("ABI version and build info", () => {
    const info = lib.buildInfo()
    expect(info.abi).toBe(2)
    expect(typeof info.version).toBe("string")
  })

  test("a panic inside the library becomes an error with a message", () => {
    const code = lib.sym.bm_debug_panic()
    expect(code).toBe(Status.PANIC)
    expect(lib.lastError()).toContain("deliberate panic")
    // The library still works afterwards.
    const t = openTokenizerSync(tokPath, lib)
    expect(t.encode("hi").length).toBeGreaterThan(0)
    t.free()
  })

  test("never-issued, freed (double free) and foreign handles are rejected", () => {
    const box = new Uint32Array(1)
    expect(lib.sym.bm_tokenizer_free(0)).toBe(Status.BAD_HANDLE)
    expect(lib.lastError()).toContain("never issued")
    expect(lib.sym.bm_tokenizer_info(123456, ptr(new Uint8Array(8)), 8, ptr(box))).toBe(Status.BAD_HANDLE)

    const t = openTokenizerSync(tokPath, lib)
    const h = t.handle
    // A tokenizer handle used as a training job: wrong kind.
    expect(lib.sym.bm_tokenizer_train_poll(h, ptr(new Uint8Array(64)), 64, ptr(box))).toBe(Status.BAD_HANDLE)
    expect(lib.lastError()).toContain("is a Tokenizer")
    expect(lib.sym.bm_tokenizer_free(h)).toBe(Status.OK)
    // Double free and use after free.
    expect(lib.sym.bm_tokenizer_free(h)).toBe(Status.BAD_HANDLE)
    expect(lib.lastError()).toContain("already freed")
    expect(() => t.encode("x")).toThrow(NativeError)
  })

  test("invalid UTF-8 and bad offsets are argument errors", () => {
    const t = openTokenizerSync(tokPath, lib)
    const bad = new Uint8Array([0x68, 0x69, 0xff, 0xfe])
    const out = new Uint32Array(16)
    const len = new Uint32Array(1)
    expect(lib.sym.bm_tokenizer_encode(t.handle, ptr(bad), 4, 0, ptr(out), 16, ptr(len))).toBe(Status.INVALID_ARGUMENT)
    expect(lib.lastError()).toContain("not valid UTF-8")
    const offsets = new Uint32Array([0, 10])
    expect(lib.sym.bm_tokenizer_encode_batch(t.handle, ptr(bad), 4, ptr(offsets), 1, 0, ptr(out), 16, ptr(new Uint32Array(2)))).toBe(Status.INVALID_ARGUMENT)
    expect(lib.lastError()).toContain("outside the text")
    t.free()
  })

  test("output buffers that are too small are reported, then retried by the wrapper", () => {
    const t = openTokenizerSync(tokPath, lib)
    const text = new TextEncoder().encode("hello world, 你好世界")
    const tiny = new Uint32Array(1)
    const len = new Uint32Array(1)
    expect(lib.sym.bm_tokenizer_encode(t.handle, ptr(text), text.byteLength, 0, ptr(tiny), 1, ptr(len))).toBe(Status.BUFFER_TOO_SMALL)
    expect(len[0]).toBe(t.encode("hello world, 你好世界").length)
    const long = "长".repeat(5000)
    expect(t.decode(t.encode(long))).toBe(long)
    t.free()
  })

  test("missing and malformed tokenizer.json give clear errors", () => {
    expect(() => openTokenizerSync("/definitely/not/here/tokenizer.json", lib)).toThrow(/not found/)
    const dir = `${import.meta.dir}/.out/bad-tok`
    require("node:fs").mkdirSync(dir, { recursive: true })
    Bun.write(`${dir}/tokenizer.json`, '{"version": "1.0", "model": ')
    try {
      openTokenizerSync(dir, lib)
      throw new Error("expected an error")
    } catch (e) {
      expect(e).toBeInstanceOf(NativeError)
      expect((e as Error).message).toContain("tokenizer.json")
      expect((e as Error).message).toContain("not a valid tokenizer.json")
    }
  })

  test("out-of-vocabulary ids in decode name the position", () => {
    const t = openTokenizerSync(tokPath, lib)
    expect(() => t.decode([1, 2, 70000])).toThrow(/70000 at position 2/)
    t.free()
  })

  test("an interrupted Effect program frees its tokenizer handle", async () => {
    const before = lib.liveHandles()
    let seen = -1
    const program = Effect.gen(function* () {
      yield* loadTokenizer(tokPath, lib)
      yield* loadTokenizer(tokPath, lib)
      seen = lib.liveHandles()
      yield* Effect.never
    }).pipe(Effect.scoped)
    const fiber = Effect.runFork(program)
    await Bun.sleep(50)
    await Effect.runPromise(Fiber.interrupt(fiber))
    expect(seen).toBe(before + 2)
    expect(lib.liveHandles()).toBe(before)
  })

  test("a failing Effect program frees its handle too", async () => {
    const before = lib.liveHandles()
    const exit = await Effect.runPromiseExit(
      Effect.gen(function* () {
        const t = yield* loadTokenizer(tokPath, lib)
        t.decode([999999])
      }).pipe(Effect.scoped),
    )
    expect(exit._tag).toBe("Failure")
    expect(lib.liveHandles()).toBe(before)
  })
})
