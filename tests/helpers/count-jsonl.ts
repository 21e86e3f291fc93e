/**
 * Child process for tests/data-memory.test.ts: streams a JSONL through the reader and validator
 * and prints {count, baseline, peak, samples} (RSS in bytes). A fresh process, so what other tests
 * left in the test runner's heap doesn't blur the measurement.
 */
import { Effect, Stream } from "effect"
import { BadRecordLog } from "../../src/data/bad-records.ts"
import { readRecords } from "../../src/data/read.ts"
import { validateRecords } from "../../src/data/records.ts"

const path = process.argv[2]!
Bun.gc(true)
const baseline = process.memoryUsage().rss
let peak = baseline
let count = 0
const samples: number[] = []
const bad = new BadRecordLog({ mode: "fail" })
await Effect.runPromise(
  readRecords(path, { bad }).pipe(
    validateRecords("sft", bad),
    Stream.runForEachArray((chunk) =>
      Effect.sync(() => {
        count += chunk.length
        if (count % 50_000 < chunk.length) {
          const rss = process.memoryUsage().rss
          samples.push(rss)
          peak = Math.max(peak, rss)
        }
      }),
    ),
  ),
)
peak = Math.max(peak, process.memoryUsage().rss)
console.log(JSON.stringify({ count, baseline, peak, samples }))
