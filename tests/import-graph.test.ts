/**
 * The import graph of src/: no cycle, and the training core (src/train) depends on nothing in
 * the CLI (src/cli). Static `import … from "./x.ts"` / `export … from` edges between files of src/.
 */
import { describe, expect, test } from "bun:test"
import { resolve } from "node:path"
import { cycles, importGraph } from "./helpers/imports.ts"

const src = resolve(import.meta.dir, "..", "src")

describe("src/ import graph", () => {
  const graph = importGraph(src)

  test("the checker finds a cycle when there is one", () => {
    const g = new Map([["a.ts", ["b.ts"]], ["b.ts", ["c.ts"]], ["c.ts", ["a.ts"]], ["d.ts", ["a.ts"]]])
    expect(cycles(g)).toEqual([["a.ts", "b.ts", "c.ts", "a.ts"]])
    expect(graph.size).toBeGreaterThan(50)
    expect(graph.get("cli.ts")!.length).toBeGreaterThan(3)
  })

  test("no import cycle", () => {
    expect(cycles(graph)).toEqual([])
  })

  test("src/train imports nothing from src/cli", () => {
    const bad = [...graph].flatMap(([f, deps]) => (f.startsWith("train/") ? deps.filter((d) => d.startsWith("cli/")).map((d) => `${f} → ${d}`) : []))
    expect(bad).toEqual([])
  })
})
