/**
 * The web chat at `/`, driven in a real browser (Debian's chromium through playwright-core): type a
 * message and watch the answer render in pieces as tokens stream; thinking mode shows a collapsible
 * think block; history turns decide what is sent; clear empties the page and the history.
 * Saves a screenshot to tests/.out/web-chat.png.
 */
import { afterAll, beforeAll, expect, test } from "bun:test"
import { existsSync, mkdirSync, statSync } from "node:fs"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { chromium, type Browser, type Page } from "playwright-core"
import { repo } from "./helpers/cli.ts"
import { makeTinyModel, spawnServer, type ServerProcess } from "./serve-fixture.ts"

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"
const SHOT = join(repo, "tests", ".out", "web-chat.png")

let server: ServerProcess
let browser: Browser
let page: Page
/** Bodies the page POSTed to /v1/chat/completions. */
const sent: any[] = []

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`)
  server = await spawnServer(["--model", makeTinyModel(), "--model-name", "tiny"])
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", `--disk-cache-dir=${mkdtempSync(join(tmpdir(), "bunmind-chromium-"))}`],
  })
  page = await browser.newPage({ viewport: { width: 1200, height: 800 } })
  page.on("request", (r) => {
    if (r.url().endsWith("/v1/chat/completions") && r.method() === "POST") sent.push(JSON.parse(r.postData() ?? "null"))
  })
  await page.goto(server.url)
  await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "tiny")
}, 60_000)

afterAll(async () => {
  await browser?.close()
  await server?.stop()
}, 60_000)

/** Sets a settings control as a user would (input event), e.g. a range slider. */
const setControl = (id: string, value: string | boolean) =>
  page.evaluate(
    ([id, value]) => {
      const el = document.getElementById(id as string) as HTMLInputElement
      if (typeof value === "boolean") el.checked = value
      else el.value = value
      el.dispatchEvent(new Event("input", { bubbles: true }))
    },
    [id, value] as const,
  )

/** Records every change of the last assistant answer's text while it streams. */
const watchLastAnswer = () =>
  page.evaluate(() => {
    const w = window as any
    w.__lengths = []
    const obs = new MutationObserver(() => {
      const msgs = document.querySelectorAll(".msg.assistant")
      const last = msgs[msgs.length - 1]
      if (!last) return
      const text = (last.querySelector(".content")?.textContent ?? "") + (last.querySelector(".think-text")?.textContent ?? "")
      if (w.__lengths.at(-1) !== text.length) w.__lengths.push(text.length)
    })
    obs.observe(document.getElementById("messages")!, { subtree: true, childList: true, characterData: true })
  })

const waitIdle = () => page.waitForFunction(() => !document.querySelector(".msg.streaming") && !(document.getElementById("send") as HTMLButtonElement).disabled, null, { timeout: 30_000 })

test("typing a message streams the answer in, token by token", async () => {
  await setControl("max-tokens", "256")
  await setControl("temperature", "1")
  await watchLastAnswer()
  await page.fill("#input", "Hello, who are you?")
  await page.press("#input", "Enter")
  await page.waitForSelector(".msg.assistant.streaming")
  await waitIdle()
  const lengths: number[] = await page.evaluate(() => (window as any).__lengths)
  // Rendered in many steps, each adding text: that is streaming, not one final paint.
  expect(lengths.length).toBeGreaterThan(5)
  for (let i = 1; i < lengths.length; i++) expect(lengths[i]!).toBeGreaterThan(lengths[i - 1]!)
  expect(await page.textContent(".msg.user .content")).toBe("Hello, who are you?")
  const answer = (await page.textContent(".msg.assistant .content"))!
  expect(answer.length).toBe(lengths.at(-1)!)
  expect(await page.textContent(".msg.assistant .stats")).toMatch(/^\d+ tokens · [\d.]+ tokens\/s · (stop|length)$/)
  const body = sent.at(-1)
  expect(body).toMatchObject({ model: "tiny", stream: true, max_tokens: 256, temperature: 1, messages: [{ role: "user", content: "Hello, who are you?" }] })
})

test("thinking mode shows the reasoning in a collapsible think block", async () => {
  await setControl("thinking", true)
  await setControl("max-tokens", "32")
  await page.fill("#input", "Think about it.")
  await page.click("#send")
  await waitIdle()
  expect(sent.at(-1).enable_thinking).toBe(true)
  const think = page.locator(".msg.assistant").last().locator("details.think")
  expect(await think.count()).toBe(1)
  expect((await think.locator(".think-text").textContent())!.length).toBeGreaterThan(0)
  const open = () => think.evaluate((d) => (d as HTMLDetailsElement).open)
  const before = await open()
  await think.locator("summary").click()
  expect(await open()).toBe(!before)
  if (!(await open())) await think.locator("summary").click()
  mkdirSync(join(repo, "tests", ".out"), { recursive: true })
  await page.screenshot({ path: SHOT, fullPage: true })
  expect(statSync(SHOT).size).toBeGreaterThan(10_000)
})

test("history turns decide how much of the conversation is sent", async () => {
  // Two earlier turns are on the page; with history 2 both go out with the new message.
  await setControl("history", "2")
  await setControl("thinking", false)
  await page.fill("#input", "third")
  await page.click("#send")
  await waitIdle()
  expect(sent.at(-1).messages.map((m: any) => m.role)).toEqual(["user", "assistant", "user", "assistant", "user"])
  expect(sent.at(-1).messages[0].content).toBe("Hello, who are you?")
  await setControl("history", "1")
  await page.fill("#input", "fourth")
  await page.click("#send")
  await waitIdle()
  const last = sent.at(-1).messages
  expect(last.map((m: any) => m.role)).toEqual(["user", "assistant", "user"])
  expect([last[0].content, last[2].content]).toEqual(["third", "fourth"])
})

test("clear empties the conversation and its history", async () => {
  expect(await page.locator(".msg").count()).toBe(8)
  await page.click("#clear")
  expect(await page.locator(".msg").count()).toBe(0)
  expect(await page.isVisible("#empty")).toBe(true)
  await page.fill("#input", "fresh start")
  await page.click("#send")
  await waitIdle()
  expect(sent.at(-1).messages).toEqual([{ role: "user", content: "fresh start" }])
  expect(await page.locator(".msg").count()).toBe(2)
})

test("settings survive a reload", async () => {
  await setControl("top-k", "7")
  await page.reload()
  await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "tiny")
  expect(await page.inputValue("#top-k")).toBe("7")
  expect(await page.textContent("#top-k-out")).toBe("7")
})
