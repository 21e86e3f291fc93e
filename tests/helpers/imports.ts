/** The static import graph of a source tree (for tests/import-graph.test.ts). */
import { readdirSync, readFileSync, statSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"

const files = (dir: string): string[] =>
  readdirSync(dir).flatMap((e) => {
    const p = join(dir, e)
    return statSync(p).isDirectory() ? files(p) : /\.tsx?$/.test(e) ? [p] : []
  })

/** Each file's imports of other files in src/ (relative specifiers; type-only ones included). */
export function importGraph(root: string): Map<string, string[]> {
  const graph = new Map<string, string[]>()
  const spec = /(?:^|\n)\s*(?:import|export)\b[^'"]*?\bfrom\s*["'](\.[^"']+)["']|(?:^|\n)\s*import\s*["'](\.[^"']+)["']/g
  for (const f of files(root)) {
    const text = readFileSync(f, "utf8")
    const deps = new Set<string>()
    for (const m of text.matchAll(spec)) {
      const target = resolve(dirname(f), m[1] ?? m[2]!)
      if (target.startsWith(root)) deps.add(relative(root, target))
    }
    graph.set(relative(root, f), [...deps])
  }
  return graph
}

/** The cycles of a graph (each as a path that returns to its start), by depth-first search. */
export function cycles(graph: Map<string, string[]>): string[][] {
  const found: string[][] = []
  const state = new Map<string, "open" | "done">()
  const path: string[] = []
  const visit = (n: string) => {
    state.set(n, "open")
    path.push(n)
    for (const d of graph.get(n) ?? []) {
      if (state.get(d) === "open") found.push([...path.slice(path.indexOf(d)), d])
      else if (!state.has(d)) visit(d)
    }
    path.pop()
    state.set(n, "done")
  }
  for (const n of graph.keys()) if (!state.has(n)) visit(n)
  return found
}
