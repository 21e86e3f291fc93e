/**
 * transformers remote code for MiniMind-format folders (`model_type: "minimind"`: architectures without a native
 * transformers class). `addRemoteCode(dir)` copies `hf/configuration_bunmind_minimind.py` and
 * `hf/modeling_bunmind_minimind.py` next to the weights and adds `auto_map` to config.json, so that
 * `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads the folder and computes what bunmind
 * computes (tests/interop-minimind-remote.test.ts).
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts"

/** The remote-code files, in this directory's `hf/` (copied under the same names). */
export const REMOTE_CODE_FILES = ["configuration_bunmind_minimind.py", "modeling_bunmind_minimind.py"] as const

export const REMOTE_AUTO_MAP = {
  AutoConfig: "configuration_bunmind_minimind.MiniMindConfig",
  AutoModelForCausalLM: "modeling_bunmind_minimind.MiniMindForCausalLM",
} as const

/**
 * Makes a MiniMind-format folder loadable by transformers with `trust_remote_code=True`: writes the two Python
 * files and sets config.json's `auto_map` (each file atomically). Throws if config.json is missing or its
 * model_type is not `minimind`. Returns the names of the files written.
 */
export function addRemoteCode(dir: string): string[] {
  const configPath = join(dir, "config.json")
  const config = JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>
  if (config.model_type !== "minimind") {
    throw new Error(`${configPath}: model_type is ${JSON.stringify(config.model_type)}; remote code is for "minimind" only`)
  }
  for (const f of REMOTE_CODE_FILES) writeFileAtomic(join(dir, f), readFileSync(join(import.meta.dir, "hf", f)))
  writeJsonAtomic(configPath, { ...config, auto_map: REMOTE_AUTO_MAP })
  return [...REMOTE_CODE_FILES, "config.json"]
}
