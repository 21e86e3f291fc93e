// The chat's Web Worker: loads the wasm engine and the model, and generates, so the page never blocks.
// Messages in:  {type:"load", simd?} {type:"chat", messages, options} {type:"stop"} {type:"reset"}
//               {type:"bench", text, tokens, reps}
// Messages out: {type:"progress", file, loaded, total, source} {type:"ready", info, simd, loadMs, sources}
//               {type:"token", id, text} {type:"done", ...TurnResult, tokS} {type:"bench", ...}
//               {type:"error", message, during}
import { EdgeChat, simdSupported } from "./bunmind-chat.js"

let chat = null
let stopRequested = false
const post = (m) => self.postMessage(m)

// Yields to the worker's event loop (so a "stop" message gets through) without setTimeout's 4 ms clamp.
const yieldNow = () =>
  new Promise((resolve) => {
    const ch = new MessageChannel()
    ch.port1.onmessage = () => resolve()
    ch.port2.postMessage(0)
  })

async function load(m) {
  const t0 = performance.now()
  const simd = m.simd ?? simdSupported()
  let last = 0
  chat = await EdgeChat.fromSite(new URL("./", self.location.href), {
    simd,
    cache: m.cache ?? true,
    onProgress: (p) => {
      const now = performance.now()
      if (now - last > 50 || p.loaded === p.total) {
        last = now
        post({ type: "progress", ...p })
      }
    },
  })
  post({ type: "ready", info: chat.info, simd: chat.simd, loadMs: performance.now() - t0, sources: chat.sources })
}

async function generate(m) {
  if (!chat) throw new Error("the model is not loaded yet")
  stopRequested = false
  const it = chat.streamSync(m.messages, m.options ?? {})
  const t0 = performance.now()
  let n = 0
  for (;;) {
    const r = it.next()
    if (r.done) {
      const s = (performance.now() - t0) / 1000
      post({ type: "done", ...r.value, tokens: r.value.ids.length, tokS: r.value.ids.length > 1 ? (r.value.ids.length - 1) / (r.value.decodeMs / 1000) : 0, seconds: s })
      return
    }
    n++
    post({ type: "token", id: r.value.id, text: r.value.text, n })
    await yieldNow()
    if (stopRequested) {
      const ids = [...chat.model.generated()]
      post({ type: "done", ids, text: null, finishReason: "stopped", tokens: ids.length, reused: 0, tokS: 0 })
      return
    }
  }
}

// Greedy decode timing for bench/edge.ts: no yielding, no stop tokens.
function bench(m) {
  if (!chat) throw new Error("the model is not loaded yet")
  const ids = chat.encode(m.text)
  const prefillMs = []
  const tokS = []
  for (let r = 0; r < (m.reps ?? 3); r++) {
    chat.reset()
    chat.model.begin(ids, JSON.stringify({ temperature: 0, max_new_tokens: m.tokens + 1, stop_token_ids: [] }))
    let t = performance.now()
    chat.model.step()
    prefillMs.push(performance.now() - t)
    t = performance.now()
    let n = 0
    while (chat.model.step()) n++
    tokS.push(n / ((performance.now() - t) / 1000))
  }
  chat.reset()
  post({ type: "bench", promptTokens: ids.length, tokens: m.tokens, prefillMs, tokS, simd: chat.simd })
}

self.onmessage = async (ev) => {
  const m = ev.data
  try {
    if (m.type === "load") await load(m)
    else if (m.type === "chat") await generate(m)
    else if (m.type === "stop") stopRequested = true
    else if (m.type === "reset") chat?.reset()
    else if (m.type === "bench") bench(m)
    else throw new Error(`unknown message type ${m.type}`)
  } catch (e) {
    post({ type: "error", during: m.type, message: e instanceof Error ? e.message : String(e) })
  }
}
self.onunhandledrejection = (ev) => post({ type: "error", during: "worker", message: String(ev.reason?.message ?? ev.reason) })
