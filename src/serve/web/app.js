// bunmind web chat: plain browser JavaScript, no build step. Talks to the same server's
// OpenAI-compatible API (POST /v1/chat/completions with stream: true) and renders the SSE stream.

const $ = (id) => document.getElementById(id)
const els = {
  messages: $("messages"),
  empty: $("empty"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  clear: $("clear"),
  form: $("settings-form"),
  composer: $("composer"),
  modelName: $("model-name"),
}

const SETTINGS_KEY = "bunmind.chat.settings"
const fields = {
  history: { el: $("history"), out: $("history-out"), parse: Number },
  maxTokens: { el: $("max-tokens"), out: $("max-tokens-out"), parse: Number },
  temperature: { el: $("temperature"), out: $("temperature-out"), parse: Number },
  topP: { el: $("top-p"), out: $("top-p-out"), parse: Number },
  topK: { el: $("top-k"), out: $("top-k-out"), parse: Number },
  thinking: { el: $("thinking"), parse: (_v, el) => el.checked },
  system: { el: $("system"), parse: String },
  apiKey: { el: $("api-key"), parse: String },
}

function settings() {
  const s = {}
  for (const [k, f] of Object.entries(fields)) s[k] = f.parse(f.el.value, f.el)
  return s
}

function showSettings() {
  for (const f of Object.values(fields)) if (f.out) f.out.textContent = f.el.value
}

function loadSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}")
    for (const [k, v] of Object.entries(saved)) {
      const f = fields[k]
      if (!f) continue
      if (f.el.type === "checkbox") f.el.checked = Boolean(v)
      else f.el.value = String(v)
    }
  } catch {
    // A broken saved state is ignored.
  }
  showSettings()
}

els.form.addEventListener("input", () => {
  showSettings()
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings()))
})

// ---------------------------------------------------------------------------------------------------
// Conversation state: completed turns only; the answer being written is added when it ends.

/** @type {{role: "user" | "assistant", content: string}[]} */
let history = []
let model = null
let current = null // { abort: AbortController }

function authHeaders() {
  const key = settings().apiKey
  return key ? { authorization: `Bearer ${key}` } : {}
}

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: authHeaders() })
    const body = await res.json()
    if (!res.ok) throw new Error(body?.error?.message ?? res.statusText)
    model = body.data[0].id
    els.modelName.textContent = model
  } catch (e) {
    els.modelName.textContent = `unavailable (${e.message})`
  }
}

function bubble(role) {
  els.empty.hidden = true
  const div = document.createElement("div")
  div.className = `msg ${role}`
  const label = document.createElement("div")
  label.className = "role"
  label.textContent = role === "user" ? "you" : model ?? "assistant"
  div.append(label)
  els.messages.append(div)
  return div
}

function scrollDown() {
  els.messages.scrollTop = els.messages.scrollHeight
}

function addUser(text) {
  const div = bubble("user")
  const c = document.createElement("div")
  c.className = "content"
  c.textContent = text
  div.append(c)
}

/** An assistant bubble: a collapsible think block (created on the first reasoning), the answer, stats. */
function addAssistant() {
  const div = bubble("assistant")
  div.classList.add("streaming")
  const content = document.createElement("div")
  content.className = "content"
  div.append(content)
  let think = null
  let thinkText = null
  return {
    div,
    reasoning(text) {
      if (!think) {
        think = document.createElement("details")
        think.className = "think"
        think.open = true
        const summary = document.createElement("summary")
        summary.textContent = "Thinking…"
        thinkText = document.createElement("div")
        thinkText.className = "think-text"
        think.append(summary, thinkText)
        div.insertBefore(think, content)
      }
      thinkText.textContent += text
    },
    content(text) {
      if (think && think.open && content.textContent === "") {
        // The answer starts: fold the reasoning away, as MiniMind's demo does.
        think.open = false
        think.querySelector("summary").textContent = "Thought process"
      }
      content.textContent += text
    },
    done(stats) {
      div.classList.remove("streaming")
      if (think) think.querySelector("summary").textContent = "Thought process"
      if (stats) {
        const s = document.createElement("div")
        s.className = "stats"
        s.textContent = stats
        div.append(s)
      }
      return content.textContent
    },
    fail(message) {
      div.classList.remove("streaming")
      div.classList.add("error")
      const e = document.createElement("div")
      e.className = "error-text"
      e.textContent = message
      div.append(e)
    },
  }
}

/** Yields the JSON payload of each `data:` event of an SSE body, until `[DONE]`. */
async function* sseEvents(body) {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buf = ""
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    buf += decoder.decode(value, { stream: true })
    let k
    while ((k = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, k)
      buf = buf.slice(k).replace(/^\r?\n\r?\n/, "")
      const data = block
        .split(/\r?\n/)
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n")
      if (data === "") continue
      if (data === "[DONE]") return
      yield JSON.parse(data)
    }
  }
}

function setBusy(busy) {
  els.send.disabled = busy
  els.stop.hidden = !busy
}

async function send(text) {
  const s = settings()
  const turns = s.history > 0 ? history.slice(-2 * s.history) : []
  const messages = [...(s.system.trim() ? [{ role: "system", content: s.system.trim() }] : []), ...turns, { role: "user", content: text }]
  addUser(text)
  const view = addAssistant()
  scrollDown()
  const abort = new AbortController()
  current = { abort }
  setBusy(true)
  const t0 = performance.now()
  let usage = null
  let finish = null
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify({
        model: model ?? "",
        messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: s.maxTokens,
        temperature: s.temperature,
        top_p: s.topP,
        top_k: s.topK,
        enable_thinking: s.thinking,
      }),
      signal: abort.signal,
    })
    if (!res.ok) {
      const body = await res.json().catch(() => null)
      throw new Error(body?.error?.message ?? `${res.status} ${res.statusText}`)
    }
    for await (const ev of sseEvents(res.body)) {
      if (ev.error) throw new Error(ev.error.message)
      if (ev.usage) usage = ev.usage
      const choice = ev.choices?.[0]
      if (!choice) continue
      const d = choice.delta ?? {}
      if (d.reasoning_content) view.reasoning(d.reasoning_content)
      if (d.content) view.content(d.content)
      if (d.tool_calls) for (const c of d.tool_calls) view.content(`\n[tool call] ${c.function.name}(${c.function.arguments})`)
      if (choice.finish_reason) finish = choice.finish_reason
      scrollDown()
    }
    const secs = (performance.now() - t0) / 1000
    const stats = usage
      ? `${usage.completion_tokens} tokens · ${(usage.completion_tokens / secs).toFixed(1)} tokens/s · ${finish ?? "?"}`
      : finish ?? ""
    const answer = view.done(stats)
    history.push({ role: "user", content: text }, { role: "assistant", content: answer })
  } catch (e) {
    if (e.name === "AbortError") view.done("stopped")
    else view.fail(e.message)
  } finally {
    if (current?.abort === abort) current = null
    setBusy(false)
    scrollDown()
  }
}

els.composer.addEventListener("submit", (ev) => {
  ev.preventDefault()
  const text = els.input.value.trim()
  if (text === "" || current) return
  els.input.value = ""
  void send(text)
})

els.input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault()
    els.composer.requestSubmit()
  }
})

els.stop.addEventListener("click", () => current?.abort.abort())

els.clear.addEventListener("click", () => {
  current?.abort.abort()
  history = []
  for (const m of [...els.messages.querySelectorAll(".msg")]) m.remove()
  els.empty.hidden = false
  els.input.focus()
})

$("api-key").addEventListener("change", loadModel)

loadSettings()
void loadModel()
