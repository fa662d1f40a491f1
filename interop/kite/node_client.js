// Calls a Rust `math` kite with kite.js 1.0.13 from Node.
//
//   node node_client.js <base-url> <transport>
//
// <base-url> is the kite's SockJS base (http://127.0.0.1:PORT/kite); <transport> is one of
// sockjs-websocket, xhr-polling (kite.js with its SockJS transport class, restricted to that
// SockJS transport) or raw-websocket (kite.js's default transport, dialing
// ws://.../kite/websocket). Prints one JSON line per result and exits 0 on success.
'use strict'
const path = require('path')
const { Kite } = require(path.join(__dirname, '..', 'node_modules', 'kite.js'))

const [base, transport] = process.argv.slice(2)
if (!base || !transport) {
  console.error('usage: node node_client.js <base-url> <transport>')
  process.exit(2)
}

function options() {
  const common = { autoReconnect: false, logLevel: 0, name: 'node-client' }
  switch (transport) {
    case 'raw-websocket':
      return Object.assign(common, { url: base.replace(/^http/, 'ws') + '/websocket' })
    case 'sockjs-websocket':
      return Object.assign(common, {
        url: base,
        transportClass: Kite.transport.SockJS,
        transportOptions: { transports: ['websocket'] },
      })
    case 'xhr-polling':
      return Object.assign(common, {
        url: base,
        transportClass: Kite.transport.SockJS,
        transportOptions: { transports: ['xhr-polling'] },
      })
    default:
      throw new Error('unknown transport ' + transport)
  }
}

async function main() {
  const kite = new Kite(options())
  const timer = setTimeout(() => {
    console.error('timed out')
    process.exit(1)
  }, 20000)
  const square = await kite.tell('square', [4])
  console.log(JSON.stringify({ square }))
  const ticks = []
  const done = await kite.tell('countdown', [
    { from: 3, onTick: (n) => ticks.push(n) },
  ])
  console.log(JSON.stringify({ countdown: done, ticks }))
  const pong = await kite.tell('kite.ping')
  console.log(JSON.stringify({ ping: pong }))
  let error = null
  try {
    await kite.tell('nosuchmethod', [1])
  } catch (e) {
    error = { type: e.type, message: e.message }
  }
  console.log(JSON.stringify({ error }))
  clearTimeout(timer)
  kite.disconnect()
  process.exit(0)
}

main().catch((e) => {
  console.error('failed:', e && (e.stack || e.message || e))
  process.exit(1)
})
