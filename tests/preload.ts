import { setDefaultTimeout } from "bun:test"

// Native builds and reference runs can take a while on a 2-core machine.
setDefaultTimeout(120_000)
