import { Data } from "effect"

/** A native call returned a non-OK status; `message` is the library's own explanation. */
export class NativeError extends Data.TaggedError("NativeError")<{
  readonly fn: string
  readonly code: number
  readonly status: string
  readonly message: string
}> {}

/** The native library file is missing, unloadable, or of another ABI version. */
export class NativeLoadError extends Data.TaggedError("NativeLoadError")<{
  readonly device: string
  readonly path: string
  readonly message: string
}> {}
