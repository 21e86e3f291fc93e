// The chat page: UI only. The model lives in worker.js, so typing, scrolling and "Stop" stay responsive
// while tokens are generated. URL flags: ?simd=0 forces the no-SIMD build, ?cache=0 skips the Cache API.
const $ = (id) => document.getElementById(id)
const params = new URLSearchParams(location.search)
const flag = (name) => (params.has(name) ? params.get(name) !== "0" : undefined)

const ui = {
  status: $("status"), progress: $("progress"), log: $("log"), prompt: $("prompt"), model: $("model"),
  send: $("send"), stop: $("stop"), reset: $("reset"), title: $("title"),
}
/** State the tests and the bench read (window.bunmind). */
const state = { phase: "loading", info: null, sources: null, loadMs: null, simd: null, error: null, turns: [], updates: 0, bench: null }
const messages = []
let current = null // { el, text, t0, started }
let pendingBench = null

function setStatus(text, error = false) {
  ui.status.textContent = text
  ui.status.classList.toggle("error", error)
}

function setBusy(busy) {
  ui.send.disabled = busy || state.phase !== "ready"
  ui.prompt.disabled = state.phase === "loading" || state.phase === "failed" // typing ahead is fine while it writes
  ui.stop.disabled = !busy
  ui.reset.disabled = busy || state.phase !== "ready"
}

function addMessage(role, text) {
  const el = document.createElement("div")
  el.className = `msg ${role}`
  el.innerHTML = `<span class="who">${role === "user" ? "you" : "model"}</span><span class="text"></span><div class="meta"></div>`
  el.querySelector(".text").textContent = text
  ui.log.append(el)
  ui.log.scrollTop = ui.log.scrollHeight
  return el
}

const num = (id) => Number($(id).value)
const options = () => ({
  temperature: num("temperature"), top_p: num("top_p"), top_k: num("top_k"),
  repetition_penalty: num("repetition_penalty"), max_new_tokens: num("max_new_tokens"),
})

const files = new Map()
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" })

worker.onmessage = ({ data: m }) => {
  switch (m.type) {
    case "progress": {
      files.set(m.file, m)
      let loaded = 0, total = 0
      for (const f of files.values()) { loaded += f.loaded; total += f.total }
      ui.progress.value = total ? loaded / total : 0
      const mb = (n) => (n / 1048576).toFixed(1)
      setStatus(`loading model: ${mb(loaded)} / ${mb(total)} MB${[...files.values()].every((f) => f.source === "cache") ? " (from browser cache)" : ""}`)
      break
    }
    case "ready": {
      Object.assign(state, { phase: "ready", info: m.info, sources: m.sources, loadMs: m.loadMs, simd: m.simd })
      ui.progress.value = 1
      const i = m.info
      const params = i.num_parameters >= 1e6 ? `${(i.num_parameters / 1e6).toFixed(1)}M` : `${(i.num_parameters / 1e3).toFixed(0)}K`
      ui.model.textContent = `${params} params · ${i.num_hidden_layers} layers · weights ${i.weights_encoding} · wasm ${m.simd ? "SIMD128" : "no SIMD"}`
      const cached = Object.values(m.sources).every((s) => s === "cache")
      setStatus(`ready in ${(m.loadMs / 1000).toFixed(2)} s${cached ? " (model from browser cache)" : ""}`)
      setBusy(false)
      ui.prompt.focus()
      break
    }
    case "token": {
      if (!current) break
      current.text += m.text
      current.tokens = m.n
      current.el.querySelector(".text").textContent = current.text
      state.updates++
      ui.log.scrollTop = ui.log.scrollHeight
      break
    }
    case "done": {
      if (!current) break
      const text = m.text ?? current.text
      current.el.querySelector(".text").classList.remove("streaming")
      const meta = `${m.tokens} tokens · ${m.tokS ? `${m.tokS.toFixed(1)} tok/s · ` : ""}${m.finishReason}${m.reused ? ` · ${m.reused} cached positions reused` : ""}`
      current.el.querySelector(".meta").textContent = meta
      messages.push({ role: "assistant", content: text })
      state.turns.push({ tokens: m.tokens, tokS: m.tokS, reused: m.reused, finishReason: m.finishReason, text, streamedUpdates: current.tokens ?? 0 })
      current = null
      state.phase = "ready"
      setStatus(`done: ${meta}`)
      setBusy(false)
      break
    }
    case "bench": {
      state.bench = m
      pendingBench?.resolve(m)
      pendingBench = null
      break
    }
    case "error": {
      state.error = m.message
      if (m.during === "load" || state.phase === "loading") state.phase = "failed"
      else state.phase = "ready"
      if (current) {
        current.el.querySelector(".text").classList.remove("streaming")
        messages.pop() // the user turn that failed
        current = null
      }
      setStatus(`error${m.during === "load" ? " loading the model" : ""}: ${m.message}`, true)
      pendingBench?.reject(new Error(m.message))
      pendingBench = null
      setBusy(false)
      break
    }
  }
}
worker.onerror = (ev) => {
  state.phase = "failed"
  state.error = ev.message || "the worker failed to start"
  setStatus(`error: ${state.error}`, true)
  setBusy(false)
}

function send() {
  const text = ui.prompt.value.trim()
  if (!text || state.phase !== "ready") return
  ui.prompt.value = ""
  messages.push({ role: "user", content: text })
  addMessage("user", text)
  const el = addMessage("assistant", "")
  el.querySelector(".text").classList.add("streaming")
  current = { el, text: "" }
  state.phase = "generating"
  setStatus("generating…")
  setBusy(true)
  worker.postMessage({ type: "chat", messages, options: options() })
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); send() })
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send() }
})
ui.stop.addEventListener("click", () => worker.postMessage({ type: "stop" }))
ui.reset.addEventListener("click", () => {
  messages.length = 0
  ui.log.replaceChildren()
  worker.postMessage({ type: "reset" })
  setStatus("new conversation")
})

fetch("./manifest.json").then((r) => r.json()).then((m) => {
  ui.title.textContent = m.name
  document.title = `${m.name} · bunmind chat`
  for (const [k, v] of Object.entries(m.generation ?? {})) if ($(k) && typeof v === "number") $(k).value = v
}).catch(() => {})

worker.postMessage({ type: "load", simd: flag("simd"), cache: flag("cache") })
setStatus("loading the wasm engine…")

window.bunmind = {
  state,
  send(text) { ui.prompt.value = text; send() },
  bench(opts) {
    return new Promise((resolve, reject) => {
      pendingBench = { resolve, reject }
      worker.postMessage({ type: "bench", ...opts })
    })
  },
}
