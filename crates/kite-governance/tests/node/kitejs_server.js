// A kite.js 1.0.13 KiteServer (SockJS transport) in Node, for interop tests.
//
//   node kitejs_server.js <path to kite.js>
//
// Serves `square` and `echo` without authentication on 127.0.0.1 at a free port, prefix
// /kite, and prints "ready <port>" once listening. Exits when stdin closes.
'use strict'
const net = require('net')
const { KiteServer } = require(process.argv[2])

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

async function main() {
  const server = new KiteServer({
    name: 'jsmath',
    auth: false,
    logLevel: 0,
    serverClass: KiteServer.transport.SockJS,
    api: {
      square: (x, callback) => callback(null, x * x),
      echo: (x, callback) => callback(null, x),
    },
  })
  const port = await freePort()
  // What KiteServer.listen does, bound to the loopback address only.
  const Server = server.getServerClass()
  server.port = port
  server.server = new Server({ port, prefix: '/kite', name: 'jsmath', logLevel: 0, hostname: '127.0.0.1' })
  server.server.on('connection', server.bound('onConnection'))
  server.server.server.on('listening', () => console.log('ready ' + port))
  process.stdin.on('end', () => process.exit(0))
  process.stdin.resume()
}

main().catch((e) => {
  console.error('failed:', e && (e.stack || e.message || e))
  process.exit(1)
})
