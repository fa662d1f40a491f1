// Drives Kontrol's web page in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) on behalf of a Rust test, one command at a time.
//
//   node web_page.js
//
// Reads JSON commands from stdin, one per line, and answers each with ONE JSON line on
// stdout: {"cmd": <name>, "ok": true, ...} or {"cmd": <name>, "ok": false, "error": "..."}.
//
//   {"cmd":"open","url":"http://127.0.0.1:PORT/"}     load the page, wait until it is live
//   {"cmd":"state"}                                     what the page shows (see pageState)
//   {"cmd":"waitRow","id":"<kite id>","present":bool}   wait until the kite's row (dis)appears
//   {"cmd":"waitStatus","state":"live","not":bool}      wait for #status[data-state] (or not)
//   {"cmd":"waitAgeChange","id":"<kite id>"}            wait until the row's age text changes
//   {"cmd":"filter","text":"..."}                       type into the filter box
//   {"cmd":"screenshot","path":"/tmp/x.png"}            full-page PNG
//   {"cmd":"close"}                                     answers {"pageErrors": [...]} and exits
//
// Waits time out after 30 s (the answer then has ok=false). The browser starts with a fresh
// user-data directory, removed at the end. Exits 1 if it cannot be driven at all.
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')
const readline = require('readline')
const { chromium } = require(path.join(__dirname, '..', 'node_modules', 'playwright-core'))

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const WAIT_MS = 30000

let context = null
let page = null
let userDataDir = null
const pageErrors = []
const consoleLines = []

function say (obj) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + '\n', resolve))
}

async function cleanup () {
  if (context) await context.close().catch(() => {})
  context = null
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true })
  userDataDir = null
}

async function launch () {
  if (!fs.existsSync(CHROMIUM)) throw new Error('chromium not found at ' + CHROMIUM)
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kontrol-web-page-'))
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    viewport: { width: 1100, height: 700 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
  page = context.pages()[0] || (await context.newPage())
  page.on('pageerror', (e) => pageErrors.push(String(e && e.message)))
  page.on('console', (m) => consoleLines.push(m.type() + ': ' + m.text()))
}

// Runs in the page: everything the test checks, read from the DOM as text.
function pageState () {
  const list = document.getElementById('kites')
  const status = document.getElementById('status')
  const rows = [...list.querySelectorAll('tbody tr')].map((tr) => {
    const cells = {}
    for (const td of tr.children) cells[td.className] = td.textContent
    const groups = []
    for (let d = tr.closest('details'); d; d = d.parentElement.closest('details')) {
      groups.unshift(d.querySelector(':scope > summary > .value').textContent)
    }
    return { id: tr.dataset.id, cells, groups }
  })
  const counts = {}
  for (const d of list.querySelectorAll('details')) {
    counts[d.dataset.group] = d.querySelector(':scope > summary > .count').textContent
  }
  return {
    status: { state: status.dataset.state, text: status.textContent },
    title: document.title,
    rows,
    counts,
    listText: list.textContent,
    // Markup in kite fields must stay text: no element other than the page's own.
    elementsInList: [...new Set([...list.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()))].sort(),
    scripts: document.scripts.length,
    pwned: typeof window.pwned,
  }
}

async function handle (cmd) {
  switch (cmd.cmd) {
    case 'open': {
      if (!context) await launch()
      const response = await page.goto(cmd.url, { timeout: WAIT_MS })
      if (!response || !response.ok()) throw new Error('loading ' + cmd.url + ' answered ' + (response ? response.status() : 'nothing'))
      await page.waitForSelector('#status[data-state="live"]', { timeout: WAIT_MS })
      return { state: await page.evaluate(pageState) }
    }
    case 'state':
      return { state: await page.evaluate(pageState) }
    case 'waitRow':
      await page.waitForFunction(({ id, present }) => {
        const found = [...document.querySelectorAll('#kites tbody tr')].some((tr) => tr.dataset.id === id)
        return found === present
      }, { id: cmd.id, present: cmd.present }, { timeout: WAIT_MS })
      return { state: await page.evaluate(pageState) }
    case 'waitStatus':
      await page.waitForFunction(({ state, not }) => {
        return (document.getElementById('status').dataset.state === state) !== not
      }, { state: cmd.state, not: !!cmd.not }, { timeout: WAIT_MS })
      return { state: await page.evaluate(pageState) }
    case 'waitAgeChange': {
      const ageOf = (id) => {
        const tr = [...document.querySelectorAll('#kites tbody tr')].find((r) => r.dataset.id === id)
        return tr ? tr.querySelector('td.age').textContent : null
      }
      const before = await page.evaluate(ageOf, cmd.id)
      if (before === null) throw new Error('no row for ' + cmd.id)
      await page.waitForFunction(({ id, before }) => {
        const tr = [...document.querySelectorAll('#kites tbody tr')].find((r) => r.dataset.id === id)
        return tr && tr.querySelector('td.age').textContent !== before
      }, { id: cmd.id, before }, { timeout: WAIT_MS })
      return { before, after: await page.evaluate(ageOf, cmd.id) }
    }
    case 'filter':
      await page.fill('#filter', cmd.text)
      // Rendering is debounced; the list records the filter it was rendered with.
      await page.waitForFunction((q) => document.getElementById('kites').dataset.filter === q,
        cmd.text.trim().toLowerCase(), { timeout: WAIT_MS })
      return { state: await page.evaluate(pageState) }
    case 'screenshot':
      await page.screenshot({ path: cmd.path, fullPage: true })
      return { path: cmd.path }
    case 'close':
      await cleanup()
      return { pageErrors, console: consoleLines }
    default:
      throw new Error('unknown command ' + JSON.stringify(cmd.cmd))
  }
}

;(async () => {
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (e) {
      await say({ cmd: null, ok: false, error: 'bad command: ' + e.message })
      continue
    }
    try {
      const out = await handle(cmd)
      await say({ cmd: cmd.cmd, ok: true, ...out })
    } catch (e) {
      await say({ cmd: cmd.cmd, ok: false, error: String(e && (e.message || e)), console: consoleLines.slice(-20) })
    }
    if (cmd.cmd === 'close') process.exit(0)
  }
  await cleanup()
  process.exit(0)
})().catch(async (e) => {
  await say({ cmd: null, ok: false, error: 'driver failed: ' + String(e && (e.stack || e)) })
  await cleanup()
  process.exit(1)
})
