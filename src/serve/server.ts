/**
 * `bunmind serve`: an OpenAI-compatible HTTP server (effect/http router behind Bun.serve).
 *
 *   GET  /health               liveness + load: {"status","model","inflight","live_handles"}
 *   GET  /v1/models            the one model served, as OpenAI lists models
 *   GET  /v1/models/{id}
 *   POST /v1/chat/completions  non-streaming (with usage) or SSE (`data: {...}` chunks, `data: [DONE]`)
 *   GET  /                     the web chat (src/serve/web)
 *
 * Sampling maps onto the native session: temperature (0 = greedy), top_p, top_k (extension; 0 or -1 =
 * off), seed (absent: a random one), max_tokens (or max_completion_tokens; absent: `--max-tokens`,
 * capped by the context left), stop (strings; the output is cut before the first one, which is never
 * sent). Absent sampling fields take MiniMind's defaults (temperature 0.85, top_p 0.85, top_k 50),
 * not OpenAI's (1, 1, none): small models need them. `ignore_eos` (extension) keeps generating past
 * the end-of-turn token (benchmarks).
 * `repetition_penalty` (extension) is MiniMind's CTRL penalty; without it, OpenAI's
 * frequency/presence penalty p in [-2, 2] (the larger of the two in magnitude) becomes a CTRL
 * penalty of 1 + p/2 for p >= 0 and 1 / (1 - p/2) below 0 (so 2 → 2.0, -2 → 0.5): CTRL penalises
 * every token already seen once, which is a presence penalty more than a frequency one.
 * `enable_thinking` (or `chat_template_kwargs.enable_thinking`) opens a `<think>` block; the block's
 * text comes back as `reasoning_content`. With `tools`, the tools go to the chat template and
 * `<tool_call>` blocks in the output come back as `tool_calls` (finish reason `tool_calls`).
 *
 * Generation runs on an `Engine` (a Worker by default, see engine.ts); a client that disconnects
 * cancels its request and frees the native session.
 */
import { basename, join, resolve } from "node:path"
import { Data, Effect } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { DEFAULT_GENERATION, type GenerationOptions } from "../model/generate.ts"
import type { Device } from "../native/library.ts"
import { loadNativeSync } from "../native/library.ts"
import { ChatTemplateError, loadTokenizerConfig, type ChatMessage, type TokenizerConfig } from "../tokenizer/chat-template.ts"
import { openTokenizerSync, type Tokenizer } from "../tokenizer/tokenizer.ts"
import { renderPrompt, runCompletion, type CompletionSpec } from "./completion.ts"
import { InlineEngine, WorkerEngine, type Engine } from "./engine.ts"
import type { Delta } from "./output.ts"
import { apiError, decodeChatRequest, errorBody, type ChatCompletionRequest, type OpenAIError } from "./schema.ts"

export const WEB_DIR = resolve(import.meta.dir, "web")

export interface ServeContext {
  readonly engine: Engine
  readonly tokenizer: Tokenizer
  readonly tokenizerConfig: TokenizerConfig
  readonly modelName: string
  readonly apiKey?: string
  /** Default for `max_tokens` when a request gives none (capped by the context left). */
  readonly defaultMaxTokens?: number
}

export class ApiError extends Data.TaggedError("ApiError")<{ readonly error: OpenAIError }> {}

const fail = (status: number, message: string, param: string | null = null, code: string | null = null, type?: string) =>
  Effect.fail(new ApiError({ error: apiError(status, message, param, code, type) }))

const errorResponse = (e: OpenAIError) => HttpServerResponse.jsonUnsafe(errorBody(e), { status: e.status })

const created = () => Math.floor(Date.now() / 1000)

// ---------------------------------------------------------------------------------------------------------------
// Requests → completion specs

const textOf = (content: ChatCompletionRequest["messages"][number]["content"]): string | null | undefined =>
  Array.isArray(content) ? content.map((p) => p.text).join("") : (content as string | null | undefined)

/** CTRL repetition penalty for a request (see the module comment). */
export function repetitionPenalty(r: Pick<ChatCompletionRequest, "repetition_penalty" | "frequency_penalty" | "presence_penalty">): number {
  if (r.repetition_penalty != null) return r.repetition_penalty
  const f = r.frequency_penalty ?? 0
  const p = r.presence_penalty ?? 0
  const x = Math.abs(f) >= Math.abs(p) ? f : p
  return x >= 0 ? 1 + x / 2 : 1 / (1 - x / 2)
}

const randomSeed = () => Math.floor(Math.random() * 2 ** 32)
/** The native seed is unsigned: negative seeds wrap (exactly; 2^53 + x would round). */
const unsignedSeed = (seed: number) => {
  const s = seed % 2 ** 53
  return s < 0 ? s + 2 ** 53 : s
}

export function prepare(ctx: ServeContext, r: ChatCompletionRequest): Effect.Effect<CompletionSpec, ApiError> {
  return Effect.gen(function* () {
    if (r.model !== ctx.modelName) {
      return yield* fail(404, `The model \`${r.model}\` does not exist; this server serves \`${ctx.modelName}\` (GET /v1/models).`, "model", "model_not_found")
    }
    const messages: ChatMessage[] = r.messages.map((m) => ({ ...m, content: textOf(m.content) }))
    const toolsOn = r.tools != null && r.tools.length > 0 && r.tool_choice !== "none"
    const thinking = r.enable_thinking ?? r.chat_template_kwargs?.enable_thinking ?? r.chat_template_kwargs?.open_thinking ?? false
    const prompt = yield* Effect.try({
      try: () => renderPrompt(ctx.tokenizerConfig, ctx.tokenizer, messages, { tools: toolsOn ? r.tools! : undefined, enableThinking: thinking }),
      catch: (e) => new ApiError({ error: apiError(400, `could not render the conversation with the chat template: ${(e as Error).message}`, "messages", "invalid_value") }),
    })
    const ctxLen = ctx.engine.config.max_position_embeddings
    const n = prompt.ids.length
    if (n >= ctxLen) {
      return yield* fail(400, `This model's maximum context length is ${ctxLen} tokens, but the messages came to ${n} tokens. Shorten the conversation.`, "messages", "context_length_exceeded")
    }
    const left = ctxLen - n
    const asked = r.max_completion_tokens ?? r.max_tokens
    const param = r.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens"
    if (asked != null && asked > left) {
      return yield* fail(400, `${param} is ${asked}, but the prompt takes ${n} of the model's ${ctxLen} context tokens: at most ${left} can be generated.`, param, "context_length_exceeded")
    }
    const options: GenerationOptions = {
      temperature: r.temperature ?? DEFAULT_GENERATION.temperature,
      topP: r.top_p ?? DEFAULT_GENERATION.topP,
      topK: r.top_k == null ? DEFAULT_GENERATION.topK : r.top_k < 0 ? 0 : r.top_k,
      repetitionPenalty: repetitionPenalty(r),
      maxNewTokens: asked ?? Math.min(left, ctx.defaultMaxTokens ?? left),
      seed: r.seed == null ? randomSeed() : unsignedSeed(r.seed),
      stopTokenIds: r.ignore_eos ? [] : [...ctx.engine.stopTokenIds],
    }
    const stop = r.stop == null ? [] : typeof r.stop === "string" ? [r.stop] : [...r.stop]
    return { prompt, options, stop, parseTools: toolsOn }
  })
}

// ---------------------------------------------------------------------------------------------------------------
// Responses

const messageOf = (content: string, reasoning: string, toolCalls: ReadonlyArray<unknown>) => ({
  role: "assistant" as const,
  content: toolCalls.length > 0 && content === "" ? null : content,
  ...(reasoning !== "" ? { reasoning_content: reasoning } : {}),
  ...(toolCalls.length > 0 ? { tool_calls: toolCalls } : {}),
})

const encoder = new TextEncoder()
const sse = (data: unknown) => encoder.encode(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`)

/** The SSE body: role chunk, deltas, tool calls, finish chunk, optional usage chunk, `[DONE]`. */
function streamBody(ctx: ServeContext, spec: CompletionSpec, includeUsage: boolean, clientSignal: AbortSignal): ReadableStream<Uint8Array> {
  const id = `chatcmpl-${crypto.randomUUID()}`
  const ts = created()
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) => ({
    id,
    object: "chat.completion.chunk",
    created: ts,
    model: ctx.modelName,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  })
  const abort = new AbortController()
  const onClientGone = () => abort.abort()
  let keepalive: ReturnType<typeof setInterval> | undefined
  return new ReadableStream<Uint8Array>({
    start(controller) {
      clientSignal.addEventListener("abort", onClientGone, { once: true })
      let open = true
      const send = (bytes: Uint8Array) => {
        if (!open) return
        try {
          controller.enqueue(bytes)
        } catch {
          open = false
          abort.abort()
        }
      }
      send(sse(chunk({ role: "assistant", content: "" })))
      // Comments keep proxies and idle timers from closing a stream that waits in the queue.
      keepalive = setInterval(() => send(encoder.encode(": keepalive\n\n")), 10_000)
      const onDelta = (d: Delta) =>
        send(sse(chunk(d.reasoning !== undefined ? { reasoning_content: d.reasoning } : { content: d.content })))
      runCompletion(ctx.engine, ctx.tokenizer, spec, onDelta, abort.signal)
        .then((r) => {
          if (r.finishReason === "cancelled") return
          if (r.toolCalls.length > 0) {
            send(sse(chunk({ tool_calls: r.toolCalls.map((c, index) => ({ index, ...c })) })))
          }
          send(sse(chunk({}, r.finishReason)))
          if (includeUsage) send(sse({ id, object: "chat.completion.chunk", created: ts, model: ctx.modelName, choices: [], usage: r.usage }))
          send(sse("[DONE]"))
        })
        .catch((e: Error) => send(sse({ error: { message: `generation failed: ${e.message}`, type: "server_error", param: null, code: null } })))
        .finally(() => {
          clearInterval(keepalive)
          clientSignal.removeEventListener("abort", onClientGone)
          if (open) {
            open = false
            try {
              controller.close()
            } catch {
              // already closed by the client
            }
          }
        })
    },
    cancel() {
      clearInterval(keepalive)
      abort.abort()
    },
  })
}

const authorize = (ctx: ServeContext, req: HttpServerRequest.HttpServerRequest): Effect.Effect<void, ApiError> => {
  if (ctx.apiKey === undefined) return Effect.void
  const h = req.headers["authorization"] ?? ""
  const m = /^Bearer\s+(.+)$/i.exec(h.trim())
  return m && m[1] === ctx.apiKey
    ? Effect.void
    : fail(401, h === "" ? "Missing API key: send `Authorization: Bearer <key>`." : "Incorrect API key provided.", null, "invalid_api_key")
}

const webRequest = (req: HttpServerRequest.HttpServerRequest) => req.source as Request

function chatCompletions(ctx: ServeContext) {
  return (req: HttpServerRequest.HttpServerRequest) =>
    Effect.gen(function* () {
      yield* authorize(ctx, req)
      const text = yield* req.text.pipe(Effect.mapError(() => new ApiError({ error: apiError(400, "could not read the request body") })))
      const body = yield* Effect.try({
        try: () => JSON.parse(text) as unknown,
        catch: (e) => new ApiError({ error: apiError(400, `We could not parse the JSON body of your request: ${(e as Error).message}`, null, "invalid_json") }),
      })
      const decoded = decodeChatRequest(body)
      if (!decoded.ok) return yield* Effect.fail(new ApiError({ error: decoded.error }))
      const r = decoded.value
      const spec = yield* prepare(ctx, r)
      if (ctx.engine.broken) return yield* fail(503, `the model cannot generate: ${ctx.engine.broken}`, null, null, "server_error")
      const signal = webRequest(req).signal
      if (r.stream) {
        const body = streamBody(ctx, spec, r.stream_options?.include_usage === true, signal)
        return HttpServerResponse.raw(body, {
          headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" },
        })
      }
      const result = yield* Effect.tryPromise({
        try: () => runCompletion(ctx.engine, ctx.tokenizer, spec, undefined, signal),
        catch: (e) => new ApiError({ error: apiError(500, `generation failed: ${(e as Error).message}`, null, null, "server_error") }),
      })
      return HttpServerResponse.jsonUnsafe({
        id: `chatcmpl-${crypto.randomUUID()}`,
        object: "chat.completion",
        created: created(),
        model: ctx.modelName,
        choices: [{ index: 0, message: messageOf(result.content, result.reasoning, result.toolCalls), logprobs: null, finish_reason: result.finishReason === "cancelled" ? "stop" : result.finishReason }],
        usage: result.usage,
      })
    }).pipe(Effect.catchTag("ApiError", (e) => Effect.succeed(errorResponse(e.error))))
}

const modelObject = (ctx: ServeContext) => ({ id: ctx.modelName, object: "model", created: 0, owned_by: "bunmind" })

const withAuth = (ctx: ServeContext, f: (req: HttpServerRequest.HttpServerRequest) => HttpServerResponse.HttpServerResponse) => (req: HttpServerRequest.HttpServerRequest) =>
  authorize(ctx, req).pipe(
    Effect.map(() => f(req)),
    Effect.catchTag("ApiError", (e) => Effect.succeed(errorResponse(e.error))),
  )

const WEB_FILES: Record<string, string> = { "/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css" }
const MIME: Record<string, string> = { html: "text/html; charset=utf-8", js: "text/javascript; charset=utf-8", css: "text/css; charset=utf-8" }

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"] as const

/** The router of the whole API as an effect/http layer. */
export function routes(ctx: ServeContext) {
  const methodNotAllowed = (allow: string) =>
    HttpServerResponse.jsonUnsafe(errorBody(apiError(405, `Method not allowed here; use ${allow}.`, null, "method_not_allowed")), { status: 405, headers: { allow } })
  const web = Object.entries(WEB_FILES).map(([path, file]) =>
    HttpRouter.route("GET", path as HttpRouter.PathInput, Effect.promise(async () => HttpServerResponse.raw(await Bun.file(join(WEB_DIR, file)).bytes(), { contentType: MIME[file.split(".").pop()!] }))),
  )
  const all: ReadonlyArray<HttpRouter.Route<never, never>> = [
    HttpRouter.route("GET", "/health", (_req) =>
      Effect.sync(() =>
        HttpServerResponse.jsonUnsafe(
          { status: ctx.engine.broken ? "error" : "ok", model: ctx.modelName, engine: ctx.engine.kind, inflight: ctx.engine.inflight, live_handles: ctx.tokenizer.native.liveHandles(), ...(ctx.engine.broken ? { error: ctx.engine.broken } : {}) },
          { status: ctx.engine.broken ? 503 : 200 },
        ),
      ),
    ),
    HttpRouter.route("GET", "/v1/models", withAuth(ctx, () => HttpServerResponse.jsonUnsafe({ object: "list", data: [modelObject(ctx)] }))),
    HttpRouter.route(
      "GET",
      "/v1/models/:id",
      withAuth(ctx, (req) => {
        const id = decodeURIComponent(new URL(req.url, "http://x").pathname.slice("/v1/models/".length))
        return id === ctx.modelName
          ? HttpServerResponse.jsonUnsafe(modelObject(ctx))
          : errorResponse(apiError(404, `The model \`${id}\` does not exist`, "model", "model_not_found"))
      }),
    ),
    HttpRouter.route("POST", "/v1/chat/completions", chatCompletions(ctx)),
    ...web,
    ...(
      [
        ["/v1/chat/completions", "POST"],
        ["/v1/models", "GET"],
        ["/health", "GET"],
      ] as const
    ).flatMap(([path, allow]) =>
      METHODS.filter((m) => m !== allow && !(allow === "GET" && m === "HEAD")).map((m) => HttpRouter.route(m, path, methodNotAllowed(allow))),
    ),
  ]
  return HttpRouter.addAll(all)
}

// ---------------------------------------------------------------------------------------------------------------
// Running

export interface Listening {
  readonly url: string
  readonly port: number
  readonly server: ReturnType<typeof Bun.serve>
  /** Stops listening (open streams are cut) and disposes the router. Does not close the engine. */
  close(): Promise<void>
}

const notFound = (req: Request) =>
  Response.json(errorBody(apiError(404, `Unknown path: ${req.method} ${new URL(req.url).pathname}`, null, "not_found")), { status: 404 })

export async function listen(ctx: ServeContext, opts: { host?: string; port?: number } = {}): Promise<Listening> {
  const { handler, dispose } = HttpRouter.toWebHandler(routes(ctx), { disableLogger: true })
  const server = Bun.serve({
    hostname: opts.host ?? "127.0.0.1",
    port: opts.port ?? 0,
    // Seconds; streams send a keepalive comment every 10 s and generation requests opt out below.
    idleTimeout: 60,
    maxRequestBodySize: 16 * 1024 * 1024,
    fetch(req, srv) {
      // A long non-streaming generation sends nothing until it is done.
      if (req.method === "POST") srv.timeout(req, 0)
      return handler(req).then((res) => (res.status === 404 && !res.headers.has("content-type") ? notFound(req) : res))
    },
    error(e) {
      return Response.json(errorBody(apiError(500, `internal error: ${e.message}`, null, null, "server_error")), { status: 500 })
    },
  })
  return {
    url: `http://${server.hostname}:${server.port}`,
    port: server.port!,
    server,
    async close() {
      await server.stop(true)
      await dispose()
    },
  }
}

export interface ServeOptions {
  readonly modelDir: string
  /** tokenizer.json or its directory (with tokenizer_config.json for the chat template). */
  readonly tokenizer: string
  readonly modelName?: string
  readonly apiKey?: string
  readonly host?: string
  readonly port?: number
  readonly device?: Device
  readonly engine?: "worker" | "inline"
  readonly maxActive?: number
  readonly defaultMaxTokens?: number
}

export interface RunningServer extends Listening {
  readonly ctx: ServeContext
  /** Stops listening, frees every session, the model and the tokenizer. */
  shutdown(): Promise<void>
}

/** Loads model + tokenizer, starts the engine and listens. */
export async function startServer(o: ServeOptions): Promise<RunningServer> {
  const device = o.device ?? "cpu"
  const tokDir = o.tokenizer.endsWith(".json") ? resolve(o.tokenizer, "..") : o.tokenizer
  let tokenizerConfig: TokenizerConfig
  try {
    tokenizerConfig = loadTokenizerConfig(tokDir)
  } catch (e) {
    throw e instanceof ChatTemplateError ? new Error(`${e.message} (the server needs the chat template)`) : e
  }
  const tokenizer = openTokenizerSync(o.tokenizer, loadNativeSync(device))
  const init = { modelDir: o.modelDir, device, maxActive: o.maxActive ?? 32 }
  let engine: Engine
  try {
    engine = o.engine === "inline" ? InlineEngine.open(init) : await WorkerEngine.start(init)
  } catch (e) {
    tokenizer.free()
    throw e
  }
  const ctx: ServeContext = {
    engine,
    tokenizer,
    tokenizerConfig,
    modelName: o.modelName ?? basename(resolve(o.modelDir)),
    apiKey: o.apiKey,
    defaultMaxTokens: o.defaultMaxTokens,
  }
  const l = await listen(ctx, { host: o.host, port: o.port })
  return {
    ...l,
    ctx,
    async shutdown() {
      await l.close()
      await engine.close()
      tokenizer.free()
    },
  }
}
