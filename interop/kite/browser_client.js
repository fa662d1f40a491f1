// Drives headless Chromium (Debian's /usr/bin/chromium through playwright-core): a page
// that loads kite.js's browser bundle calls a Rust `math` kite over SockJS WebSocket, SockJS
// XHR polling and raw WebSocket.
//
//   node browser_client.js <page_url> <kite_base_url>
//
// <page_url> is an HTML page that loads kite.js's dist/bundle.js (defines window.Kite);
// <kite_base_url> the kite's SockJS base (http://127.0.0.1:PORT/kite), same origin.
// Prints ONE JSON line: {"ok":bool,"results":[{"transport","square","countdown","ticks",
// "ping","error"}...],"error":null|string}; exits 0 when the browser could be driven.
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')
const { chromium } = require(path.join(__dirname, '..', 'node_modules', 'playwright-core'))

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const [pageUrl, base] = process.argv.slice(2)

function finish(out, code) {
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code))
}

const watchdog = setTimeout(() => finish({ ok: false, results: [], error: 'overall timeout (90 s)' }, 1), 90000)

// Runs inside the page.
async function callMath({ base, transport }) {
  const out = { transport, error: null }
  const opts = { autoReconnect: false, logLevel: 0 }
  if (transport === 'raw-websocket') {
    opts.url = base.replace(/^http/, 'ws') + '/websocket'
  } else {
    opts.url = base
    opts.transportClass = Kite.transport.SockJS
    opts.transportOptions = { transports: [transport] }
  }
  const kite = new Kite(opts)
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('timeout after 20 s')), 20000))
  try {
    await Promise.race([timeout, (async () => {
      out.square = await kite.tell('square', [4])
      const ticks = []
      out.countdown = await kite.tell('countdown', [{ from: 3, onTick: (n) => ticks.push(n) }])
      out.ticks = ticks
      out.ping = await kite.tell('kite.ping')
    })()])
  } catch (e) {
    out.error = String(e && (e.message || e))
  }
  kite.disconnect()
  return out
}

;(async () => {
  if (!pageUrl || !base) return finish({ ok: false, results: [], error: 'usage: browser_client.js <page_url> <kite_base_url>' }, 1)
  if (!fs.existsSync(CHROMIUM)) return finish({ ok: false, results: [], error: 'chromium not found at ' + CHROMIUM }, 1)
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kite-browser-client-'))
  let context
  const results = []
  const consoleLines = []
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    })
    const page = context.pages()[0] || (await context.newPage())
    page.on('console', (m) => consoleLines.push(m.type() + ': ' + m.text()))
    page.on('pageerror', (e) => consoleLines.push('pageerror: ' + e.message))
    const response = await page.goto(pageUrl, { timeout: 20000 })
    if (!response || !response.ok()) throw new Error('loading ' + pageUrl + ' answered ' + (response ? response.status() : 'nothing'))
    await page.waitForFunction(() => typeof window.Kite === 'function', null, { timeout: 10000 })
    for (const transport of ['websocket', 'xhr-polling', 'raw-websocket']) {
      results.push(await page.evaluate(callMath, { base, transport }))
    }
    clearTimeout(watchdog)
    await context.close()
    fs.rmSync(userDataDir, { recursive: true, force: true })
    finish({ ok: results.every((r) => !r.error), results, console: consoleLines.slice(-20), error: null }, 0)
  } catch (e) {
    clearTimeout(watchdog)
    if (context) await context.close().catch(() => {})
    fs.rmSync(userDataDir, { recursive: true, force: true })
    finish({ ok: false, results, console: consoleLines.slice(-20), error: String((e && e.stack) || e) }, 1)
  }
})()
