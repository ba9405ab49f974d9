'use strict';
// Node.js `ws` as a server: node ws_server.js <spec JSON>
// Listens on 127.0.0.1 (random port) and prints {"port": N}; plays the case of
// the spec with the first client, then prints one JSON line with what it saw.

const { WebSocketServer } = require('ws');
const { play, report } = require('./ws_cases');

const spec = JSON.parse(process.argv[2]);
const server = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });

server.once('listening', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

report(
  new Promise((resolve, reject) => {
    server.once('error', reject);
    server.once('connection', (ws) => {
      ws.once('error', reject);
      play(ws, spec).then(resolve, reject);
    });
  }),
);
