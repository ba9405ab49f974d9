'use strict';
// An independent yamux peer for the ws_stream.mux interop tests: yamux-js
// (a port of hashicorp/yamux) over a WebSocket from the `ws` package.
//
//   node peer.js server PORT_FILE [MODE ARGS...]   listen on 127.0.0.1:0
//   node peer.js client URL [MODE ARGS...]         connect, be the yamux client
//
// Modes (default `echo`): echo | open N SIZE_MAX SEED | reset [NBYTES] | stall
// Results and events: one JSON object a line on stdout; logs on stderr.
// Control: lines on stdin (resume, ping, goaway, close, quit). See README.md.

const crypto = require('crypto');
const fs = require('fs');
const readline = require('readline');
const { Transform } = require('stream');
const { WebSocket, WebSocketServer, createWebSocketStream } = require('ws');
const { Client, Server } = require('yamux-js');
const { Header } = require('yamux-js/lib/header');
const { VERSION, TYPES, FLAGS, STREAM_STATES, initialStreamWindow } = require('yamux-js/lib/constants');

const HEADER = 12;
const CONFIG = {
  enableKeepAlive: false, // its keepalive pings every 30 s and keeps the event loop alive
  acceptBacklog: 1 << 20, // yamux-js counts every stream it still holds, not streams awaiting accept
  maxStreamWindowSize: initialStreamWindow, // 256 KiB, the spec's initial window: no window growth
  logger: (...args) => console.error(...args), // its default logs to stdout
};

// PEER_TRACE=1: every frame's header, in (<) and out (>), on stderr.
const TRACE = !!process.env.PEER_TRACE;
const NAMES = ['Data', 'WindowUpdate', 'Ping', 'GoAway'];
function trace(dir, label, frame) {
  if (!TRACE) return;
  const flags = ['SYN', 'ACK', 'FIN', 'RST'].filter((_, i) => frame.readUInt16BE(2) & (1 << i)).join('|');
  const type = NAMES[frame[1]] || `type${frame[1]}`;
  console.error(`[trace] ${label} ${dir} v${frame[0]} ${type} ${flags || '-'} id=${frame.readUInt32BE(4)} len=${frame.readUInt32BE(8)}`);
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// yamux-js parses its input assuming every chunk holds whole frames: a header
// split across chunks, or a Data body split across chunks, is silently lost
// (Session._transform drops the partial bytes). The bytes arrive as WebSocket
// binary messages whose boundaries mean nothing, so this regroups them into
// one chunk per frame (header + body for Data, header alone for the other
// types) before yamux-js sees them. A header with a version other than 0 is
// passed on at once with whatever follows, for yamux-js to reject.
class Deframer extends Transform {
  constructor() {
    super();
    this.chunks = [];
    this.size = 0;
  }

  _transform(chunk, _encoding, cb) {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size >= HEADER) {
      let buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.size);
      this.chunks = [buf];
      if (buf[0] !== VERSION) {
        this.push(buf);
        this.chunks = [];
        this.size = 0;
        break;
      }
      const total = HEADER + (buf[1] === TYPES.Data ? buf.readUInt32BE(8) : 0);
      if (this.size < total) break;
      trace('<', this.label, buf);
      this.push(buf.subarray(0, total));
      buf = buf.subarray(total);
      this.chunks = buf.length ? [buf] : [];
      this.size = buf.length;
    }
    cb();
  }
}

// yamux-js 0.2.0 drops or ignores some flags (see README.md). This wraps one
// session's frame dispatch so that:
// - SYN combined with other flags still opens the stream, and a Data+SYN
//   frame's payload is delivered (yamux-js drops it);
// - FIN (on Data or WindowUpdate) ends the stream's readable side (yamux-js
//   ignores every FIN: it tests SYN where it means FIN);
// - RST (on Data or WindowUpdate) destroys the stream with ECONNRESET
//   (yamux-js only marks it, and only on WindowUpdate).
// Window accounting, ACKs, the send window and everything sent stay yamux-js's.
function patchSession(session, label) {
  const dispatch = session.handleStreamMessage.bind(session);
  session.handleStreamMessage = (hdr, packet, encoding) => {
    const id = hdr.streamID;
    const flags = hdr.flags;
    let stream;
    if (flags & FLAGS.SYN) {
      dispatch(new Header(hdr.version, hdr.type, FLAGS.SYN, id, hdr.length), packet, encoding);
      stream = session.streams.get(id);
      if (stream && hdr.type === TYPES.Data && packet.length > 0) {
        stream.push(packet);
        stream.updateRecvWindow(packet.length);
      }
    } else {
      stream = session.streams.get(id);
      dispatch(new Header(hdr.version, hdr.type, flags & FLAGS.ACK, id, hdr.length), packet, encoding);
    }
    if (flags & FLAGS.FIN) {
      if (!stream) {
        console.error(`[peer] ${label}: FIN for unknown stream ${id}`);
      } else if (!stream.gotFin) {
        stream.gotFin = true;
        stream.push(null);
        if (stream.state === STREAM_STATES.LocalClose) {
          stream.state = STREAM_STATES.Closed;
          session.closeStream(id);
        }
      }
    }
    if (flags & FLAGS.RST) {
      out({ event: 'rst', session: label, stream: id });
      if (stream) {
        stream.state = STREAM_STATES.Reset;
        session.closeStream(id);
        const err = new Error(`stream ${id} reset by peer`);
        err.code = 'ECONNRESET';
        stream.destroy(err);
      }
    }
  };
  const onGoAway = session.handleGoAway.bind(session);
  session.handleGoAway = (hdr) => {
    out({ event: 'goaway', session: label, code: hdr.length });
    onGoAway(hdr);
  };
  const onPing = session.handlePing.bind(session);
  session.handlePing = (hdr) => {
    if (!(hdr.flags & FLAGS.SYN)) {
      const sent = session.pingSent && session.pingSent.get(hdr.length);
      if (sent !== undefined) {
        session.pingSent.delete(hdr.length);
        out({ event: 'pong', session: label, id: hdr.length, ms: Number(process.hrtime.bigint() - sent) / 1e6 });
      }
    }
    onPing(hdr);
  };
}

// yamux-js streams send no FIN on end() (no _final) and cannot send a RST.
function prepareStream(session, stream, label) {
  stream._final = (cb) => {
    stream.close(); // WindowUpdate+FIN
    if (stream.gotFin) {
      stream.state = STREAM_STATES.Closed;
      session.closeStream(stream.ID());
    }
    cb();
  };
  stream.on('error', (err) => {
    if (err.code !== 'ECONNRESET') out({ event: 'error', session: label, stream: stream.ID(), error: err.message });
  });
  return stream;
}

function resetStream(session, stream) {
  session.send(new Header(VERSION, TYPES.WindowUpdate, FLAGS.RST, stream.ID(), 0));
  stream.state = STREAM_STATES.Reset;
  session.closeStream(stream.ID());
  stream.destroy();
}

function echo(stream) {
  stream.pipe(stream); // half-closes (FIN) once the peer's FIN has been read
}

// A stalled stream is never read and grants no window: yamux-js credits the
// window when bytes arrive, not when they are read, so its window updates
// are turned off for this stream until `resume`.
function stall(state, session, stream, label) {
  const id = stream.ID();
  let received = 0;
  stream.updateRecvWindow = (n) => {
    stream.recvWindow -= n;
    received += n;
    if (received === initialStreamWindow) out({ event: 'stall', session: label, stream: id, received });
    else if (received > initialStreamWindow) out({ event: 'overflow', session: label, stream: id, received });
  };
  state.stalled.push(() => {
    delete stream.updateRecvWindow; // back to Stream.prototype's
    out({ event: 'resumed', session: label, stream: id, received });
    stream.sendWindowUpdate();
    echo(stream);
  });
}

// Stream i of `open N SIZE_MAX SEED`: k = sha256("SEED:i"); its size is
// k[0..4] (big-endian) mod (SIZE_MAX+1); its bytes are AES-128-CTR
// keystream with key k[0..16] and a zero IV.
function payload(seed, i, sizeMax) {
  const k = crypto.createHash('sha256').update(`${seed}:${i}`).digest();
  const size = k.readUInt32BE(0) % (sizeMax + 1);
  const cipher = crypto.createCipheriv('aes-128-ctr', k.subarray(0, 16), Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(size)), cipher.final()]);
}

function roundTrip(session, i, data, label) {
  const start = process.hrtime.bigint();
  const stream = prepareStream(session, session.open(), label);
  const want = crypto.createHash('sha256').update(data).digest('hex');
  return new Promise((resolve) => {
    const hash = crypto.createHash('sha256');
    let received = 0;
    let settled = false;
    const finish = (error) => {
      if (settled) return;
      settled = true;
      const got = hash.digest('hex');
      const ok = !error && received === data.length && got === want;
      const res = { stream: i, id: stream.ID(), sent: data.length, received, ok };
      if (!ok) res.error = error || 'echo differs';
      res.ms = Number(process.hrtime.bigint() - start) / 1e6;
      out(res);
      resolve(ok);
    };
    stream.on('data', (chunk) => {
      received += chunk.length;
      hash.update(chunk);
    });
    stream.on('end', () => finish());
    stream.on('error', (err) => finish(err.message));
    stream.on('close', () => finish('closed before FIN'));
    stream.end(data); // the data, then FIN
  });
}

async function openMode(session, args, label) {
  const [n, sizeMax, seed] = [Number(args[0]), Number(args[1]), args[2]];
  const start = process.hrtime.bigint();
  const results = await Promise.all(
    Array.from({ length: n }, (_, i) => roundTrip(session, i, payload(seed, i, sizeMax), label)),
  );
  const ok = results.filter(Boolean).length;
  out({ done: true, session: label, ok, failed: n - ok, ms: Number(process.hrtime.bigint() - start) / 1e6 });
  return ok === n;
}

function resetMode(session, args, label) {
  const n = args.length ? Number(args[0]) : 1024;
  const stream = prepareStream(session, session.open(), label);
  stream.write(crypto.randomBytes(n));
  resetStream(session, stream);
  out({ event: 'reset_sent', session: label, stream: stream.ID(), sent: n });
}

// One WebSocket, one yamux session; resolves with the mode's success when the
// WebSocket closes (or, for `open` on the client, once its streams are done).
function runSession(state, ws, isClient, mode, args) {
  const label = ++state.count;
  const duplex = createWebSocketStream(ws);
  let stalledOne = false;
  const onStream = (stream) => {
    prepareStream(session, stream, label);
    if (mode === 'stall' && !stalledOne) {
      stalledOne = true;
      stall(state, session, stream, label);
    } else {
      echo(stream);
    }
  };
  const session = isClient ? new Client(CONFIG) : new Server(onStream, CONFIG);
  if (isClient) session.onStream = onStream; // yamux-js's Client takes no handler
  patchSession(session, label);
  session.on('error', (err) => {
    out({ event: 'session_error', session: label, error: err.message });
    // yamux-js leaves the session half alive after most errors (after a bad
    // version or type it stops reading but never closes): end the WebSocket,
    // as hashicorp/yamux ends the session. Not for its refusal to open a
    // stream after the peer's GoAway.
    if (err.message !== 'remote end is not accepting connections') setImmediate(() => duplex.end());
  });
  duplex.on('error', (err) => console.error(`[peer] session ${label}: ${err.message}`));
  // Frames yamux-js sends go to the WebSocket without back-pressure: piped,
  // yamux-js's Session (one Transform for both directions) stops reading
  // frames while its output waits, and two such peers exchanging bulk data
  // both stop reading and deadlock. Its sends are bounded by the peer's
  // stream windows, so this queue is too.
  const deframer = new Deframer();
  deframer.label = label;
  duplex.pipe(deframer).pipe(session);
  session.on('data', (frame) => {
    trace('>', label, frame);
    duplex.write(frame);
  });
  session.on('end', () => duplex.end());
  state.sessions.add(session);
  out({ event: 'session', session: label });

  const closed = new Promise((resolve) => {
    ws.once('close', (code) => {
      state.sessions.delete(session);
      for (const stream of session.streams.values()) stream.destroy();
      session.streams.clear();
      out({ event: 'closed', session: label, code });
      resolve();
    });
  });
  if (mode === 'open') {
    return openMode(session, args, label).then(async (ok) => {
      if (isClient) {
        session.close(); // GoAway(0), then the WebSocket's close
        await closed;
      }
      return ok;
    });
  }
  if (mode === 'reset') resetMode(session, args, label);
  return closed.then(() => true);
}

function control(state) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const cmd = line.trim();
    if (cmd === 'resume') {
      for (const resume of state.stalled.splice(0)) resume();
    } else if (cmd === 'ping') {
      for (const s of state.sessions) {
        s.pingSent = s.pingSent || new Map();
        s.pingSent.set(s.pingID, process.hrtime.bigint());
        s.ping();
      }
    } else if (cmd === 'goaway') {
      for (const s of state.sessions) {
        s.localGoaway = true; // yamux-js never sets it itself: new streams are now refused (RST)
        s.goAway(0);
      }
    } else if (cmd === 'close') {
      for (const s of state.sessions) s.close();
    } else if (cmd === 'quit') {
      process.exit(0);
    } else if (cmd) {
      console.error(`[peer] unknown command: ${cmd}`);
      return;
    }
    out({ event: 'ack', command: cmd });
  });
  return rl;
}

function main() {
  const [role, where, mode = 'echo', ...args] = process.argv.slice(2);
  const modes = { echo: 0, open: 3, reset: 0, stall: 0 };
  if (!['server', 'client'].includes(role) || !where || !(mode in modes) || args.length < modes[mode]) {
    console.error('usage: node peer.js server PORT_FILE|client URL [echo|open N SIZE_MAX SEED|reset [NBYTES]|stall]');
    process.exit(2);
  }
  const state = { count: 0, sessions: new Set(), stalled: [] };
  const rl = control(state);

  if (role === 'server') {
    rl.on('close', () => process.exit(0)); // the test went away
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    wss.on('listening', () => {
      fs.writeFileSync(where + '.tmp', String(wss.address().port));
      fs.renameSync(where + '.tmp', where);
    });
    wss.on('connection', (ws) => runSession(state, ws, false, mode, args));
    return;
  }
  const ws = new WebSocket(where, { perMessageDeflate: false });
  ws.on('error', (err) => {
    out({ event: 'ws_error', error: err.message });
    process.exit(1);
  });
  ws.on('open', () =>
    runSession(state, ws, true, mode, args).then((ok) => {
      rl.close();
      process.exit(ok ? 0 : 1);
    }),
  );
}

main();
