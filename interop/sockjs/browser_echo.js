// Drives headless Chromium (Debian's /usr/bin/chromium, through playwright-core) against a
// SockJS echo service, once per forced sockjs-client transport.
//
// Usage: node browser_echo.js <page_url> <sockjs_url> [transport ...]
//   page_url    an HTML page that loads sockjs-client (it defines window.SockJS)
//   sockjs_url  the SockJS base URL of an echo service, same origin as the page
//   transport   sockjs-client transport names; default: websocket xhr-streaming xhr-polling
//
// Prints ONE JSON line on stdout:
//   {"ok":true|false,"results":[{"transport":"websocket","ok":true,"used":"websocket",
//     "sent":[...],"received":[...],"closeCode":1000,"error":null}, ...],"error":null}
// and exits 0 when the browser could be driven (whatever the results), 1 otherwise.
// Each transport has a 20 s limit; the whole run 90 s.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const [pageUrl, sockjsUrl, ...wanted] = process.argv.slice(2);
const transports = wanted.length ? wanted : ['websocket', 'xhr-streaming', 'xhr-polling'];

function finish(out, code) {
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
}

if (!pageUrl || !sockjsUrl) {
  finish({ ok: false, results: [], error: 'usage: browser_echo.js <page_url> <sockjs_url> [transport ...]' }, 1);
  return;
}

const watchdog = setTimeout(() => {
  finish({ ok: false, results: [], error: 'browser_echo.js: overall timeout (90 s)' }, 1);
}, 90000);

// Runs inside the page: one SockJS session over one forced transport.
async function echoOverTransport({ url, transport }) {
  const samples = [
    'hello',
    'line\u2028separator\u2029paragraph',
    'astral \ud83d\ude00 \ud834\udd1e',
    'quotes " and \\ and <script>&amp;</script>',
    'controls \u0000\u0001\t\r\n end',
    JSON.stringify({ method: 'echo', arguments: ['a"b'], callbacks: {} }),
    'x'.repeat(100000),
  ];
  for (let i = 0; i < 50; i++) samples.push('batch ' + i);
  const result = { transport, ok: false, used: null, sent: samples.length, received: [], closeCode: null, error: null };
  return await new Promise((resolve) => {
    const timer = setTimeout(() => {
      result.error = 'timeout after 20 s (received ' + result.received.length + ' of ' + samples.length + ')';
      try { sock.close(); } catch (e) { /* ignore */ }
      resolve(result);
    }, 20000);
    let sock;
    try {
      sock = new SockJS(url, null, { transports: [transport] });
    } catch (e) {
      clearTimeout(timer);
      result.error = 'new SockJS failed: ' + e;
      resolve(result);
      return;
    }
    sock.onopen = () => {
      result.used = sock.transport;
      // All at once: sockjs-client batches what is queued into one send.
      for (const s of samples) sock.send(s);
    };
    sock.onmessage = (e) => {
      result.received.push(e.data);
      if (result.received.length === samples.length) {
        const mismatch = samples.findIndex((s, i) => s !== result.received[i]);
        if (mismatch >= 0) {
          result.error = 'message ' + mismatch + ' differs: sent ' + JSON.stringify(samples[mismatch]).slice(0, 200) +
            ', got ' + JSON.stringify(result.received[mismatch]).slice(0, 200);
        }
        sock.close();
      }
    };
    sock.onclose = (e) => {
      clearTimeout(timer);
      result.closeCode = e.code;
      if (!result.error && result.received.length !== samples.length) {
        result.error = 'closed (' + e.code + ' ' + e.reason + ') after ' + result.received.length + ' of ' + samples.length + ' messages';
      }
      result.ok = !result.error && result.used === transport;
      if (!result.error && result.used !== transport) {
        result.error = 'expected transport ' + transport + ', sockjs-client used ' + result.used;
      }
      // Keep the output small: only the short messages are reported back verbatim.
      result.received = result.received.map((m) => (m.length > 200 ? '<' + m.length + ' chars>' : m));
      resolve(result);
    };
  });
}

(async () => {
  if (!fs.existsSync(CHROMIUM)) {
    finish({ ok: false, results: [], error: 'chromium not found at ' + CHROMIUM }, 1);
    return;
  }
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kite-browser-echo-'));
  let context;
  const results = [];
  const consoleLines = [];
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30000,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => consoleLines.push(m.type() + ': ' + m.text()));
    page.on('pageerror', (e) => consoleLines.push('pageerror: ' + e.message));
    const response = await page.goto(pageUrl, { timeout: 20000 });
    if (!response || !response.ok()) {
      throw new Error('loading ' + pageUrl + ' answered ' + (response ? response.status() : 'nothing'));
    }
    await page.waitForFunction(() => typeof window.SockJS === 'function', null, { timeout: 10000 });
    for (const transport of transports) {
      results.push(await page.evaluate(echoOverTransport, { url: sockjsUrl, transport }));
    }
    clearTimeout(watchdog);
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
    finish({ ok: results.every((r) => r.ok), results, console: consoleLines.slice(-20), error: null }, 0);
  } catch (e) {
    clearTimeout(watchdog);
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
    finish({ ok: false, results, console: consoleLines.slice(-20), error: String(e && e.stack || e) }, 1);
  }
})();
