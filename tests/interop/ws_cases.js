'use strict';
// The peer's side of each interop case, for a connected `ws` WebSocket.
// The spec (sizes, payloads, close codes) comes from tests/interop/matrix.py.
// play() resolves with what the peer saw; the Python test checks it.

const crypto = require('crypto');

const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');

function closed(ws) {
  return new Promise((resolve) => {
    ws.once('close', (code, reason) => resolve({ close_code: code, close_reason: reason.toString() }));
  });
}

function firstMessage(ws) {
  return new Promise((resolve) => ws.once('message', (data) => resolve(data)));
}

function sendAsync(ws, data, options) {
  return new Promise((resolve, reject) => ws.send(data, options, (err) => (err ? reject(err) : resolve())));
}

async function play(ws, spec) {
  const end = closed(ws);
  switch (spec.case) {
    case 'bulk': {
      // Send spec.size random bytes while receiving as many; close when both are done.
      const data = crypto.randomBytes(spec.size);
      const received = crypto.createHash('sha256');
      let recvLen = 0;
      const receivedAll = new Promise((resolve, reject) => {
        ws.on('message', (chunk, isBinary) => {
          if (!isBinary) reject(new Error('a text message in the bulk case'));
          received.update(chunk);
          recvLen += chunk.length;
          if (recvLen >= spec.size) resolve();
        });
      });
      const sends = [];
      for (let start = 0; start < spec.size; start += spec.chunk) {
        sends.push(sendAsync(ws, data.subarray(start, start + spec.chunk), { binary: true }));
      }
      await Promise.all([...sends, receivedAll]);
      ws.close(1000);
      const seen = await end;
      return { sent_sha: sha256(data), recv_sha: received.digest('hex'), recv_len: recvLen, ...seen };
    }
    case 'fragmented': {
      // One message as several frames: BINARY (fin=0), CONT..., the last with fin=1.
      const parts = spec.fragments.map((size) => crypto.randomBytes(size));
      for (let i = 0; i < parts.length; i++) {
        await sendAsync(ws, parts[i], { binary: true, fin: i === parts.length - 1 });
      }
      const all = Buffer.concat(parts);
      ws.close(1000);
      const seen = await end;
      return { sent_sha: sha256(all), sent_len: all.length, ...seen };
    }
    case 'ping': {
      await firstMessage(ws); // our side has subscribed to its events
      const payload = Buffer.from(spec.ping, 'hex');
      const pong = new Promise((resolve) => ws.once('pong', (data) => resolve(data)));
      ws.ping(payload);
      const got = await pong;
      ws.close(1000);
      const seen = await end;
      return { pong: got.toString('hex'), ...seen };
    }
    case 'text': {
      await firstMessage(ws);
      ws.send(spec.text); // a string: a text frame
      return await end;
    }
    case 'peer_close': {
      await firstMessage(ws);
      ws.close(spec.peer_close[0], spec.peer_close[1]);
      return await end;
    }
    case 'our_close':
      return await end;
    default:
      throw new Error(`unknown case ${spec.case}`);
  }
}

// Print one JSON line with the result (or the error), then exit.
function report(promise) {
  const timer = setTimeout(() => {
    process.stdout.write(JSON.stringify({ error: 'timed out in the Node.js peer' }) + '\n');
    process.exit(1);
  }, 30000);
  promise.then(
    (result) => {
      clearTimeout(timer);
      process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
    },
    (err) => {
      clearTimeout(timer);
      process.stdout.write(JSON.stringify({ error: String(err && err.stack) }) + '\n', () => process.exit(1));
    },
  );
}

module.exports = { play, report };
