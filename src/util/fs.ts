/** File helpers shared across the TypeScript side. */
import { renameSync, writeFileSync } from "node:fs"

/** Writes `text` to `file` through a sibling temp file and a rename: readers never see half a file. */
export function writeFileAtomic(file: string, text: string | Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`
  writeFileSync(tmp, text)
  renameSync(tmp, file)
}

/** `value` as pretty JSON (with a final newline), written atomically. */
export const writeJsonAtomic = (file: string, value: unknown): void => writeFileAtomic(file, JSON.stringify(value, null, 2) + "\n")
