// A small real HTTP server speaking the fallback transports' contract (issue #22) over loopback,
// for the browser library's tests in Node: `GET /sse/` (a session event, then each frame as
// `data: <json>`), `GET /poll/` and `GET /poll/<session>/?seq=<n>` (frames numbered from 1, sent
// again until acknowledged, a long wait answered at once when a frame comes), `POST
// /sse|poll/<session>/` (202, 404 unknown session, 400 not one JSON frame, 415 another
// Content-Type), and a `close` frame last when the server ends a session. Behind it, a toy
// of `/ws/`'s protocol: subscribe (with since), unsubscribe, publish, ping, hello.
// A WebSocket upgrade is refused (403), as by a proxy that blocks WebSockets.
// Not a test file itself (node --test runs *.test.mjs).
import { randomBytes } from "node:crypto";
import http from "node:http";

const EPOCH = "e1";
/** On every answer under /sse/ and /poll/, as the real server (handlers/transports.py) sends them. */
const NO_STORE = { "Cache-Control": "no-store", "X-Accel-Buffering": "no" };

/**
 * @param {{pollTimeoutMs?: number, sse?: "normal"|"silent"}} [options]
 *   sse "silent": the stream's headers go out, then nothing (a proxy buffering it)
 */
export async function startContractServer({ pollTimeoutMs = 25_000, sse = "normal" } = {}) {
  /** @type {Map<string, Session>} */
  const sessions = new Map();
  /** room → messages [{offset, data}] */
  const history = new Map();
  const log = { upgrades: 0, sseOpened: 0, sseClosed: 0, polls: [], posts: [] };
  /** Hooks a test sets: answer the next POST with this status instead; drop the next poll answer. */
  const misbehave = { postStatus: null, losePoll: false };

  class Session {
    id = randomBytes(16).toString("base64url");
    /** frames, numbered from 1 (long-polling keeps those not acknowledged yet) */
    frames = [];
    seq = 0;
    /** @type {http.ServerResponse|null} */
    stream = null;
    /** @type {((batch: object) => void)|null} a long poll waiting */
    waiting = null;
    subs = new Map(); // sub → room
    received = [];
    ended = false;
    constructor(kind) {
      this.kind = kind;
      sessions.set(this.id, this);
    }
    send(frame) {
      if (this.ended) return;
      if (this.kind === "sse") {
        this.stream?.write(`data: ${JSON.stringify(frame)}\n\n`);
        return;
      }
      this.frames.push({ n: ++this.seq, frame });
      this.flush();
    }
    flush() {
      if (!this.waiting || this.frames.length === 0) return;
      const answer = this.waiting;
      this.waiting = null;
      answer({ seq: this.frames.at(-1).n, frames: this.frames.map((f) => f.frame) });
    }
    /** The server ends the session: its last frame says why, as a WebSocket close code. */
    end(code, reason) {
      this.send({ type: "close", code, reason });
      this.ended = true;
      sessions.delete(this.id);
      this.stream?.end();
    }
  }

  function handle(session, frame) {
    session.received.push(frame);
    if (frame.type === "ping") {
      session.send({ type: "pong" });
    } else if (frame.type === "subscribe") {
      session.subs.set(frame.sub, frame.room);
      const messages = history.get(frame.room) ?? [];
      const last = messages.at(-1)?.offset ?? 0;
      const since = frame.since;
      const recovered = Boolean(since && since.epoch === EPOCH && since.offset <= last);
      session.send({ type: "subscribed", room: frame.room, sub: frame.sub, offset: last, epoch: EPOCH, recovered });
      if (recovered) {
        for (const m of messages) {
          if (m.offset > since.offset) session.send({ type: "message", room: frame.room, sub: frame.sub, offset: m.offset, epoch: EPOCH, data: m.data });
        }
      }
      countRoom(frame.room);
    } else if (frame.type === "unsubscribe") {
      session.subs.delete(frame.sub);
      countRoom(frame.room);
    } else if (frame.type === "publish") {
      publish(frame.room, frame.data);
    }
  }

  function publish(room, data) {
    const messages = history.get(room) ?? [];
    history.set(room, messages);
    const offset = messages.length + 1;
    messages.push({ offset, data });
    for (const s of sessions.values()) {
      if ([...s.subs.values()].includes(room)) s.send({ type: "message", room, offset, epoch: EPOCH, data });
    }
  }

  function countRoom(room) {
    const inRoom = [...sessions.values()].filter((s) => [...s.subs.values()].includes(room));
    const tabs = inRoom.reduce((n, s) => n + [...s.subs.values()].filter((r) => r === room).length, 0);
    for (const s of inRoom) s.send({ type: "connection_message", room, connections: inRoom.length, tabs, updated: 1 });
  }

  const json = (res, status, body) => {
    res.writeHead(status, { "Content-Type": "application/json", ...NO_STORE });
    res.end(JSON.stringify(body));
  };

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    const [, kind, id] = url.pathname.split("/"); // "", "sse"|"poll", session
    if (req.method === "POST" && (kind === "sse" || kind === "poll") && id) {
      let body = "";
      for await (const chunk of req) body += chunk;
      log.posts.push({ url: url.pathname, contentType: req.headers["content-type"], body });
      if (misbehave.postStatus) {
        const status = misbehave.postStatus;
        misbehave.postStatus = null;
        json(res, status, { error: "told to" });
        return;
      }
      if (req.headers["content-type"] !== "application/json") return json(res, 415, { error: "Content-Type must be application/json" });
      let frame;
      try {
        frame = JSON.parse(body);
      } catch {
        return json(res, 400, { error: "not JSON" });
      }
      if (frame === null || typeof frame !== "object" || Array.isArray(frame) || typeof frame.type !== "string") {
        return json(res, 400, { error: "not one frame" });
      }
      const session = sessions.get(id);
      if (!session || session.kind !== kind) return json(res, 404, { error: "unknown session" });
      res.writeHead(202, NO_STORE).end();
      handle(session, frame);
      return;
    }
    if (req.method === "GET" && kind === "sse" && !id) {
      const session = new Session("sse");
      session.stream = res;
      log.sseOpened++;
      res.writeHead(200, { "Content-Type": "text/event-stream", ...NO_STORE });
      res.flushHeaders();
      if (sse === "normal") res.write(`data: ${JSON.stringify({ type: "session", session: session.id })}\n\n`);
      // An SSE session ends when its stream closes.
      res.on("close", () => {
        log.sseClosed++;
        session.ended = true;
        sessions.delete(session.id);
        for (const room of new Set(session.subs.values())) countRoom(room);
      });
      return;
    }
    if (req.method === "GET" && kind === "poll" && !id) {
      const session = new Session("poll");
      return json(res, 200, { session: session.id, seq: 0, frames: [] });
    }
    if (req.method === "GET" && kind === "poll" && id) {
      const session = sessions.get(id);
      const seq = Number(url.searchParams.get("seq"));
      log.polls.push(seq);
      if (!session || session.kind !== "poll") return json(res, 404, { error: "unknown session" });
      session.frames = session.frames.filter((f) => f.n > seq); // acknowledged
      const answer = (batch) => {
        if (misbehave.losePoll) {
          misbehave.losePoll = false;
          res.destroy(); // the answer is lost on the way
          return;
        }
        json(res, 200, batch);
      };
      const timer = setTimeout(() => {
        if (session.waiting === waiting) session.waiting = null;
        answer({ seq, frames: [] });
      }, pollTimeoutMs);
      const waiting = (batch) => {
        clearTimeout(timer);
        answer(batch);
      };
      waiting.seq = seq;
      // A newer poll answers the older one at once, empty, and takes its place (as the real server does).
      const older = session.waiting;
      older?.({ seq: older.seq, frames: [] });
      session.waiting = waiting;
      req.on("close", () => {
        clearTimeout(timer);
        if (session.waiting === waiting) session.waiting = null;
      });
      session.flush();
      return;
    }
    json(res, 404, { error: "not found" });
  });
  // A proxy that blocks WebSockets: the upgrade is refused.
  server.on("upgrade", (req, socket) => {
    log.upgrades++;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    base: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws/`,
    sessions,
    log,
    misbehave,
    publish,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
