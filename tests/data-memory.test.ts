/**
 * Streaming keeps memory flat: count the records of a ~300 MB JSONL through the reader and the
 * validator and check that resident memory grows by far less than the file's size. A memory
 * bound, not a timing assertion.
 */
import { afterAll, expect, test } from "bun:test"
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const dir = mkdtempSync(join(tmpdir(), "bunmind-data-memory-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const TARGET_BYTES = 300 * 1024 * 1024
const MiB = 1024 * 1024

test(
  "counting a 300 MB JSONL keeps RSS growth bounded",
  async () => {
    const path = join(dir, "big.jsonl")
    // one ~1 MiB block of distinct-looking SFT lines, written repeatedly
    const lines: string[] = []
    for (let i = 0, size = 0; size < MiB; i++) {
      const line = JSON.stringify({
        conversations: [
          { role: "user", content: `第 ${i} 个问题：${"为什么天空是蓝色的？".repeat(1 + (i % 5))}` },
          { role: "assistant", content: `回答 ${i}: ${"because of Rayleigh scattering. ".repeat(1 + (i % 7))}` },
        ],
      })
      lines.push(line)
      size += Buffer.byteLength(line) + 1
    }
    const block = Buffer.from(lines.join("\n") + "\n")
    const fd = openSync(path, "w")
    let blocks = 0
    for (; blocks * block.length < TARGET_BYTES; blocks++) writeSync(fd, block)
    closeSync(fd)
    const bytes = statSync(path).size
    expect(bytes).toBeGreaterThanOrEqual(TARGET_BYTES)

    const child = Bun.spawnSync([process.execPath, join(import.meta.dir, "helpers", "count-jsonl.ts"), path], { stderr: "pipe" })
    if (child.exitCode !== 0) throw new Error(child.stderr.toString())
    const { count, baseline, peak, samples } = JSON.parse(child.stdout.toString()) as { count: number; baseline: number; peak: number; samples: number[] }
    expect(count).toBe(blocks * lines.length)
    const growth = (peak - baseline) / MiB
    console.log(`data-memory: ${(bytes / MiB).toFixed(0)} MiB, ${count} records, RSS growth ${growth.toFixed(0)} MiB`)
    // the whole file would be ≥ 300 MiB as bytes and several times that as parsed objects
    expect(growth).toBeLessThan(150)
    // flat, not merely small: the second half of the file adds no more than noise to the first half's peak
    const half = samples.length >> 1
    const early = Math.max(...samples.slice(0, half))
    const late = Math.max(...samples.slice(half))
    expect((late - early) / MiB).toBeLessThan(60)
  },
  60_000,
)
