/**
 * Reading a file piece by piece, so memory stays flat on multi-GB inputs: a file handle owned by
 * the stream's scope (closed on end, failure or interruption) and fixed-size reads.
 * `readLines` splits on "\n" bytes (safe in UTF-8), strips a trailing "\r" and a leading BOM, and
 * numbers lines from 1; `readTextChunks` hands out decoded text for parsers that track their own
 * state across chunk boundaries (CSV).
 */
import { open, type FileHandle } from "node:fs/promises"
import { Effect, Option, Stream } from "effect"
import { DataReadError } from "./errors.ts"

export const DEFAULT_CHUNK_BYTES = 1 << 20

export interface Line {
  /** 1-based line number. */
  readonly line: number
  readonly text: string
}

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/** Opens `path` for reading; the handle lives as long as the enclosing scope. */
export const openFile = (path: string) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => open(path, "r"),
      catch: (e) =>
        new DataReadError({ file: path, reason: `cannot open: ${describe(e)}`, hint: "check the path" }),
    }),
    (fh) => Effect.promise(() => fh.close().catch(() => undefined)),
  )

const readAt = (path: string, fh: FileHandle, buf: Uint8Array, position: number) =>
  Effect.tryPromise({
    try: () => fh.read(buf, 0, buf.length, position).then((r) => r.bytesRead),
    catch: (e) => new DataReadError({ file: path, reason: `read failed: ${describe(e)}` }),
  })

/** Raw byte chunks of at most `chunkBytes`; each emitted array is a fresh copy. */
export const readByteChunks = (path: string, chunkBytes = DEFAULT_CHUNK_BYTES): Stream.Stream<Uint8Array, DataReadError> =>
  Stream.unwrap(
    Effect.map(openFile(path), (fh) => {
      const buf = new Uint8Array(chunkBytes)
      return Stream.paginate(0, (position: number) =>
        Effect.map(readAt(path, fh, buf, position), (n) =>
          n === 0
            ? ([[], Option.none<number>()] as const)
            : ([[buf.slice(0, n)], Option.some(position + n)] as const),
        ),
      )
    }),
  )

/** Decoded text chunks (a multi-byte character split by a read is carried to the next chunk). */
export const readTextChunks = (path: string, chunkBytes = DEFAULT_CHUNK_BYTES): Stream.Stream<string, DataReadError> =>
  Stream.suspend(() => {
    const decoder = new TextDecoder("utf-8", { ignoreBOM: false })
    return readByteChunks(path, chunkBytes).pipe(
      Stream.map((bytes) => decoder.decode(bytes, { stream: true })),
      Stream.concat(Stream.suspend(() => Stream.make(decoder.decode()))),
      Stream.filter((s) => s.length > 0),
    )
  })

/** Lines of a UTF-8 text file, in pages of one read each. Blank lines are emitted too. */
export const readLines = (path: string, chunkBytes = DEFAULT_CHUNK_BYTES): Stream.Stream<Line, DataReadError> =>
  Stream.unwrap(
    Effect.map(openFile(path), (fh) => {
      const buf = new Uint8Array(chunkBytes)
      const decoder = new TextDecoder("utf-8", { ignoreBOM: false })
      let carry: Uint8Array[] = []
      let lineNo = 0
      const emit = (bytes: Uint8Array, out: Line[]) => {
        for (const raw of decoder.decode(bytes).split("\n")) {
          const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw
          out.push({ line: ++lineNo, text })
        }
      }
      const withCarry = (tail: Uint8Array): Uint8Array => {
        if (carry.length === 0) return tail
        const total = carry.reduce((n, c) => n + c.length, tail.length)
        const joined = new Uint8Array(total)
        let at = 0
        for (const c of carry) (joined.set(c, at), (at += c.length))
        joined.set(tail, at)
        carry = []
        return joined
      }
      return Stream.paginate(0, (position: number) =>
        Effect.map(readAt(path, fh, buf, position), (n) => {
          const out: Line[] = []
          if (n === 0) {
            const rest = withCarry(new Uint8Array(0))
            if (rest.length > 0) emit(rest, out)
            return [out, Option.none<number>()] as const
          }
          const chunk = buf.subarray(0, n)
          const lastNewline = chunk.lastIndexOf(10)
          if (lastNewline < 0) {
            carry.push(chunk.slice())
          } else {
            emit(withCarry(chunk.subarray(0, lastNewline)), out)
            if (lastNewline + 1 < n) carry.push(chunk.slice(lastNewline + 1))
          }
          return [out, Option.some(position + n)] as const
        }),
      )
    }),
  )
