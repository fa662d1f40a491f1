// A sockjs-node (0.3.x) server for the Rust SockJS client tests.
//
// Listens on 127.0.0.1, port 0 (HTTPS with `--tls <cert.pem> <key.pem>`), and prints one
// JSON line {"port": N} once it accepts connections: the readiness signal. After that
// it prints one JSON line per event the tests may wait for:
//   {"event":"open","prefix":"/echo","protocol":"websocket"}
//   {"event":"close","prefix":"/echo","protocol":"xhr-polling"}
//   {"event":"cookie","url":"/sticky/...","cookie":"sticky=..."|null}
// It exits when its standard input closes, so a dying test never leaves it behind.
//
// Services (each a SockJS prefix):
//   /echo    echoes every message
//   /nows    echoes, WebSocket disabled (for transport fallback tests)
//   /close   writes "bye", then closes the session with 3000 "Go away!"
//   /sticky  echoes; sets a cookie on the first request and reports the Cookie header
//            of every request (for cookie jar tests)
'use strict';

const fs = require('fs');
const http = require('http');
const https = require('https');
const sockjs = require('sockjs');

const heartbeat = Number(process.env.SOCKJS_HEARTBEAT_MS || 25000);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function service(prefix, options, onConnection) {
  const server = sockjs.createServer(Object.assign({
    heartbeat_delay: heartbeat,
    disconnect_delay: 1000,
    log: () => {},
  }, options));
  server.on('connection', (conn) => {
    emit({ event: 'open', prefix, protocol: conn.protocol });
    conn.on('close', () => emit({ event: 'close', prefix, protocol: conn.protocol }));
    onConnection(conn);
  });
  return { server, prefix };
}

function echo(conn) {
  conn.on('data', (message) => conn.write(message));
}

let cookieCounter = 0;
const services = [
  service('/echo', {}, echo),
  service('/nows', { websocket: false }, echo),
  service('/close', {}, (conn) => {
    conn.write('bye');
    conn.close(3000, 'Go away!');
  }),
  service('/sticky', {
    jsessionid: (req, res) => {
      const cookie = req.headers.cookie || null;
      emit({ event: 'cookie', url: req.url, cookie });
      if (!cookie && res.setHeader) {
        cookieCounter += 1;
        res.setHeader('Set-Cookie', 'sticky=backend' + cookieCounter + '; Path=/');
      }
    },
  }, echo),
];

// Besides SockJS: a test page and the sockjs-client bundle, to check the browser driver.
const PAGE = '<!doctype html><meta charset="utf-8"><title>sockjs echo</title>' +
  '<script src="/sockjs.min.js"></script>';
function handler(req, res) {
  if (req.method === 'GET' && req.url === '/browser.html') {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  } else if (req.method === 'GET' && req.url === '/sockjs.min.js') {
    res.writeHead(200, { 'Content-Type': 'application/javascript; charset=utf-8' });
    res.end(fs.readFileSync(require.resolve('sockjs-client/dist/sockjs.min.js')));
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
  }
}

// `--tls <cert.pem> <key.pem>`: serve HTTPS instead of HTTP.
const tlsAt = process.argv.indexOf('--tls');
const httpServer = tlsAt >= 0
  ? https.createServer({
    cert: fs.readFileSync(process.argv[tlsAt + 1]),
    key: fs.readFileSync(process.argv[tlsAt + 2]),
  }, handler)
  : http.createServer(handler);
// A client that drops a refused WebSocket handshake before reading the whole answer resets
// the connection; Node emits that as an 'error' on the socket, which would kill this
// process if nobody listened. Such resets are the peer's business, not a server failure.
httpServer.on('connection', (socket) => socket.on('error', () => {}));
httpServer.on('secureConnection', (socket) => socket.on('error', () => {}));
httpServer.on('tlsClientError', () => {});
for (const s of services) {
  s.server.installHandlers(httpServer, { prefix: s.prefix });
}

httpServer.listen(0, '127.0.0.1', () => {
  emit({ port: httpServer.address().port });
});

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
