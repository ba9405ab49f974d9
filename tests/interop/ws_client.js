'use strict';
// Node.js `ws` as a client: node ws_client.js <ws:// URI> <spec JSON>
// Connects, plays the case of the spec, prints one JSON line with what it saw.

const WebSocket = require('ws');
const { play, report } = require('./ws_cases');

const [uri, specJson] = process.argv.slice(2);
const spec = JSON.parse(specJson);

report(
  new Promise((resolve, reject) => {
    const ws = new WebSocket(uri); // offers permessage-deflate: our side declines it
    ws.once('error', reject);
    ws.once('open', () => play(ws, spec).then(resolve, reject));
  }),
);
