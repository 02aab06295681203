// The socket owner over every wire (static/js/socket-owner.js with wires.js and ladder.js): it
// moves down from a refused WebSocket to SSE and from a buffered stream to long-polling,
// resubscribes with `since` on every new session, treats a server's `close` frame as the
// WebSocket close code it carries, remembers what worked, and moves back up to a WebSocket
// without losing or repeating a message. The browser's WebSocket, EventSource and fetch are
// stand-ins driven by the test (like the other owner tests); the contract's HTTP side is
// exercised for real in wires.test.mjs. `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import { UPGRADE_EVERY_MS } from "../../static/js/ladder.js";
import { CONNECT_TIMEOUT_MS, SSE_SILENCE_MS, attachMsg, subscribeFrame } from "../../static/js/protocol.js";

class FakeSocket {
  static OPEN = 1;
  static made = [];
  readyState = 0;
  sent = [];
  closed = false;
  constructor(url) {
    this.url = url;
    FakeSocket.made.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.closed = true;
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  /** Refused at the handshake (a proxy answering the upgrade with 403): close without open. */
  refuse() {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
}

class FakeEventSource {
  static made = [];
  closed = false;
  constructor(url) {
    this.url = url;
    FakeEventSource.made.push(this);
  }
  close() {
    this.closed = true;
  }
  event(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  session(id = SESSION) {
    this.onopen?.();
    this.event({ type: "session", session: id });
  }
}

/** fetch: each request waits for the test to answer it, unless POSTs are answered 202 at once. */
const requests = [];
let autoPost = true;
globalThis.fetch = (url, init = {}) =>
  new Promise((resolve, reject) => {
    const req = { url: String(url), method: init.method ?? "GET", headers: init.headers ?? {}, body: init.body, resolve, reject };
    req.frame = init.body === undefined ? undefined : JSON.parse(init.body);
    requests.push(req);
    init.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
    if (req.method === "POST" && autoPost) {
      answer(req, 202);
      // A live server answers a ping on the stream, or on the long poll waiting.
      if (req.frame.type === "ping") {
        const poll = requests.findLast((r) => r.method === "GET" && !r.answered && r.url.startsWith(`${req.url}?seq=`));
        if (poll) answer(poll, 200, { seq: Number(new URL(poll.url).searchParams.get("seq")) + 1, frames: [{ type: "pong" }] });
        else FakeEventSource.made.findLast((es) => !es.closed)?.event({ type: "pong" });
      }
    }
  });
function answer(req, status, body = undefined, headers = {}) {
  req.answered = true;
  req.resolve(new Response(body === undefined ? null : JSON.stringify(body), { status, headers }));
}

globalThis.WebSocket = FakeSocket;
globalThis.EventSource = FakeEventSource;
const { SocketOwner } = await import("../../static/js/socket-owner.js");

const SESSION = "S".repeat(22);
const OTHER_SESSION = "T".repeat(22);
/** Let promise chains (fetch answers, the memory) run; the timers are the test's. */
const settle = async () => {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
};

/** Let `ms` pass in steps, the promise chains running between them as they would in a browser. */
async function pass(t, ms, step = 1_000) {
  for (let left = ms; left > 0; left -= step) {
    t.mock.timers.tick(Math.min(step, left));
    await settle();
  }
}

/** Let time pass (in 1 s steps) until `done()`, at most `max` ms; returns how long it took. */
async function passUntil(t, done, max) {
  let waited = 0;
  while (!done() && waited < max) {
    t.mock.timers.tick(1_000);
    waited += 1_000;
    await settle();
  }
  assert.ok(done(), `not within ${max} ms`);
  return waited;
}

/** The in-memory stand-in for the IndexedDB adapter (transport-memory.js). */
function memory(initial = {}) {
  const store = new Map(Object.entries(initial));
  return { store, get: async (key) => store.get(key) ?? null, set: async (key, value) => void store.set(key, value) };
}

function tabLink() {
  const got = [];
  return {
    got,
    send: (msg) => got.push(msg),
    of: (type) => got.filter((m) => m.type === type),
    state: () => got.filter((m) => m.type === "state").at(-1)?.state,
  };
}

function reset() {
  FakeSocket.made.length = 0;
  FakeEventSource.made.length = 0;
  requests.length = 0;
  autoPost = true;
}

const posted = (url) => requests.filter((r) => r.method === "POST" && (!url || r.url === url)).map((r) => r.frame);
const gets = () => requests.filter((r) => r.method === "GET");

/** An owner with one tab subscribed to `lobby`, its memory answered; nothing opened yet. */
async function owner(t, { transports, remembered = null, since = null } = {}) {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  reset();
  const mem = memory(remembered ? { "ws://x": remembered } : {});
  const o = new SocketOwner({ url: "ws://x/ws/", sharing: "sharedworker", transports, memory: mem });
  const tab = tabLink();
  o.receive("A", attachMsg("lock"), tab);
  o.receive("A", subscribeFrame("lobby", "A-1", since), tab);
  await settle();
  t.after(() => o.close());
  return { o, tab, mem };
}

/** Wait out a backoff: the owner says when its next try is. */
function waitForRetry(t, tab) {
  const { retryAt } = tab.state();
  t.mock.timers.tick(Math.max(0, retryAt - Date.now()) + 5);
}

test("a WebSocket refused at the handshake twice moves to SSE, where the subscriptions go up as POSTs", async (t) => {
  const { tab, mem } = await owner(t);
  assert.equal(FakeSocket.made.length, 1);
  assert.equal(tab.state().transport, "websocket");
  FakeSocket.made[0].refuse();
  waitForRetry(t, tab);
  assert.equal(FakeSocket.made.length, 2, "once is not enough");
  FakeSocket.made[1].refuse();
  assert.equal(tab.state().transport, "sse", "the next try is SSE");
  waitForRetry(t, tab);
  assert.equal(FakeSocket.made.length, 2);
  assert.equal(FakeEventSource.made.length, 1);
  const es = FakeEventSource.made[0];
  assert.equal(es.url, "http://x/sse/");

  es.session();
  await settle();
  const url = `http://x/sse/${SESSION}/`;
  assert.deepEqual(posted(url), [{ type: "hello", transport: "sharedworker" }, { type: "subscribe", room: "lobby", sub: "A-1" }]);
  for (const req of requests.filter((r) => r.method === "POST")) {
    assert.deepEqual(req.headers, { "Content-Type": "application/json" });
  }
  assert.deepEqual(tab.state(), { sharing: "sharedworker", transport: "sse", status: "open", retryAt: null });
  assert.deepEqual(mem.store.get("ws://x")?.transport, "sse", "remembered for the origin");

  es.event({ type: "subscribed", room: "lobby", sub: "A-1", offset: 0, epoch: "e1", recovered: false });
  es.event({ type: "connection_message", room: "lobby", connections: 1, tabs: 1, updated: 1 });
  es.event({ type: "message", room: "lobby", offset: 1, epoch: "e1", data: "hi" });
  assert.deepEqual(tab.of("connection_message").map((m) => m.connections), [1]);
  assert.deepEqual(tab.of("message").map((m) => m.data), ["hi"]);
});

test("POSTs go one at a time, in order: the next only once the previous was answered", async (t) => {
  const { o, tab } = await owner(t, { remembered: { transport: "sse", at: Date.now() } });
  autoPost = false;
  FakeEventSource.made[0].session();
  o.receive("A", { type: "publish", room: "lobby", data: 1 }, tab);
  o.receive("A", { type: "publish", room: "lobby", data: 2 }, tab);
  await settle();
  assert.deepEqual(posted().map((f) => f.type), ["hello"], "one in flight");
  for (let i = 0; i < 3; i++) {
    answer(requests.filter((r) => r.method === "POST").at(-1), 202);
    await settle();
  }
  assert.deepEqual(posted().map((f) => f.data ?? f.type), ["hello", "subscribe", 1, 2]);
});

test("a frame the server refuses alone (a 4xx) tells its tab, and the frames after it still go; 429 is sent again", async (t) => {
  const { o, tab } = await owner(t, { remembered: { transport: "sse", at: Date.now() } });
  FakeEventSource.made[0].session();
  await settle();
  autoPost = false;
  o.receive("A", { type: "publish", room: "lobby", data: "too big" }, tab);
  o.receive("A", { type: "publish", room: "lobby", data: "next" }, tab);
  await settle();
  answer(requests.at(-1), 400, { error: "message too large" });
  await settle();
  assert.deepEqual(tab.of("error").map((e) => [e.code, e.room]), [["refused", "lobby"]]);
  assert.match(tab.of("error")[0].reason, /HTTP 400: message too large/);
  assert.equal(requests.at(-1).frame.data, "next");
  answer(requests.at(-1), 429, { error: "slow down" }, { "Retry-After": "2" });
  await settle();
  assert.equal(requests.filter((r) => r.frame?.data === "next").length, 1, "not before Retry-After");
  t.mock.timers.tick(2_000);
  await settle();
  assert.equal(requests.filter((r) => r.frame?.data === "next").length, 2, "the same frame again");
  assert.equal(tab.of("error").length, 1);
});

test("an SSE stream without a single event within 5 s (a buffering proxy) moves to long-polling", async (t) => {
  const { tab, mem } = await owner(t, { remembered: { transport: "sse", at: Date.now() } });
  const es = FakeEventSource.made[0];
  es.onopen?.(); // headers came, then nothing
  t.mock.timers.tick(SSE_SILENCE_MS - 1);
  assert.equal(es.closed, false);
  t.mock.timers.tick(1);
  assert.equal(es.closed, true);
  assert.equal(tab.state().transport, "poll");
  waitForRetry(t, tab);
  await settle();
  assert.deepEqual(gets().map((r) => r.url), ["http://x/poll/"]);
  answer(gets()[0], 200, { session: SESSION, seq: 0, frames: [] });
  await settle();
  assert.equal(tab.state().status, "open");
  assert.equal(mem.store.get("ws://x").transport, "poll");
  assert.deepEqual(posted(`http://x/poll/${SESSION}/`).map((f) => f.type), ["hello", "subscribe"]);
  assert.equal(gets()[1].url, `http://x/poll/${SESSION}/?seq=0`);

  // A backend's raw PUBLISH has no offset: only the poll's numbering keeps it from coming twice.
  const raw = { type: "message", room: "lobby", data: "raw" };
  answer(gets()[1], 200, {
    seq: 2,
    frames: [{ type: "subscribed", room: "lobby", sub: "A-1", offset: 4, epoch: "e1", recovered: false }, raw],
  });
  await settle();
  assert.equal(gets()[2].url, `http://x/poll/${SESSION}/?seq=2`, "the next poll acknowledges both");
  // That answer lost on its way (we pretend): the server sends frame 2 again, with a new one.
  answer(gets()[2], 200, { seq: 3, frames: [raw, { type: "message", room: "lobby", offset: 5, epoch: "e1", data: "five" }] });
  await settle();
  assert.deepEqual(tab.of("message").map((m) => m.data), ["raw", "five"]);
  assert.equal(gets()[3].url, `http://x/poll/${SESSION}/?seq=3`);
});

test("a close frame is the WebSocket close code: 4001 signs out, and the new session resubscribes with since", async (t) => {
  const { tab } = await owner(t, { remembered: { transport: "sse", at: Date.now() } });
  const es = FakeEventSource.made[0];
  es.session();
  await settle();
  es.event({ type: "subscribed", room: "lobby", sub: "A-1", offset: 7, epoch: "e1", recovered: false });
  es.event({ type: "message", room: "lobby", offset: 8, epoch: "e1", data: "eight" });
  es.event({ type: "close", code: 4001, reason: "signed out" });
  assert.deepEqual(tab.of("error").map((e) => e.code), ["signed_out"]);
  assert.equal(es.closed, true, "our own session protocol: the EventSource does not reconnect by itself");
  assert.equal(tab.state().status, "reconnecting");
  waitForRetry(t, tab);
  const next = FakeEventSource.made[1];
  assert.ok(next, "a new stream");
  next.session(OTHER_SESSION);
  await settle();
  assert.deepEqual(posted(`http://x/sse/${OTHER_SESSION}/`)[1], {
    type: "subscribe", room: "lobby", sub: "A-1", since: { offset: 8, epoch: "e1" },
  });
});

test("a server draining (1001) is left at once, not after the backoff: another server takes us", async (t) => {
  const { tab } = await owner(t, { transports: ["websocket"] });
  t.mock.method(Math, "random", () => 0.999); // full jitter at its top: each wait as long as it may be
  // A few failed tries first: the backoff has grown.
  for (let i = 0; i < 5; i++) {
    FakeSocket.made.at(-1).refuse();
    waitForRetry(t, tab);
  }
  assert.equal(FakeSocket.made.length, 6);
  // Accepted by a process that is shutting down: closed with 1001 before a single frame.
  FakeSocket.made.at(-1).open();
  FakeSocket.made.at(-1).onclose({ code: 1001, reason: "server shutting down" });
  const { retryAt } = tab.state();
  assert.ok(retryAt - Date.now() <= 500, `next try in ${retryAt - Date.now()} ms`);
  assert.equal(tab.of("error").length, 0);
});

test("over SSE a draining server's 1001 comes as the session's last frame: the same at once", async (t) => {
  const sse = await owner(t, { transports: ["sse"] });
  FakeEventSource.made[0].session();
  await settle();
  FakeEventSource.made[0].event({ type: "close", code: 1001, reason: "server shutting down" });
  assert.equal(FakeEventSource.made[0].closed, true);
  assert.ok(sse.tab.state().retryAt - Date.now() <= 500);
});

test("a POST answered 404 means the session is gone: a new one, with since", async (t) => {
  const { o, tab } = await owner(t, { remembered: { transport: "sse", at: Date.now() } });
  const es = FakeEventSource.made[0];
  es.session();
  await settle();
  es.event({ type: "subscribed", room: "lobby", sub: "A-1", offset: 3, epoch: "e1", recovered: false });
  autoPost = false;
  o.receive("A", { type: "publish", room: "lobby", data: "x" }, tab);
  await settle();
  answer(requests.at(-1), 404, { error: "unknown session" });
  await settle();
  assert.equal(es.closed, true);
  assert.equal(tab.state().status, "reconnecting");
  autoPost = true;
  waitForRetry(t, tab);
  FakeEventSource.made[1].session(OTHER_SESSION);
  await settle();
  assert.deepEqual(posted(`http://x/sse/${OTHER_SESSION}/`)[1].since, { offset: 3, epoch: "e1" });
});

test("below WebSocket, a background WebSocket moves the owner up without losing or repeating a message", async (t) => {
  const { tab, mem } = await owner(t, { remembered: { transport: "sse", at: Date.now() } });
  const es = FakeEventSource.made[0];
  assert.equal(FakeSocket.made.length, 0, "the remembered transport first");
  es.session();
  await settle();
  es.event({ type: "subscribed", room: "lobby", sub: "A-1", offset: 0, epoch: "e1", recovered: false });
  es.event({ type: "message", room: "lobby", offset: 1, epoch: "e1", data: 1 });
  es.event({ type: "message", room: "lobby", offset: 2, epoch: "e1", data: 2 });

  const waited = await passUntil(t, () => FakeSocket.made.length === 1, UPGRADE_EVERY_MS * 1.25);
  assert.ok(waited >= UPGRADE_EVERY_MS * 0.75, `a WebSocket is tried in the background after a few minutes, not ${waited} ms`);
  const ws = FakeSocket.made[0];
  ws.open();
  assert.deepEqual(ws.sent, [{ type: "ping" }], "asked for a frame; nothing else until it proves itself");
  assert.equal(es.closed, false);
  es.event({ type: "message", room: "lobby", offset: 3, epoch: "e1", data: 3 }); // still live on SSE meanwhile
  ws.frame({ type: "pong" });

  assert.equal(es.closed, true, "the SSE stream is let go");
  assert.deepEqual(ws.sent.slice(1), [
    { type: "hello", transport: "sharedworker" },
    { type: "subscribe", room: "lobby", sub: "A-1", since: { offset: 3, epoch: "e1" } },
  ]);
  assert.deepEqual(tab.state(), { sharing: "sharedworker", transport: "websocket", status: "open", retryAt: null });
  assert.equal(mem.store.get("ws://x").transport, "websocket");
  // Published during the move: 4 while neither wire had the room, 5 live on the new one before its
  // `subscribed`. The server recovers from `since`; each comes once, in order, live or replayed.
  ws.frame({ type: "message", room: "lobby", offset: 5, epoch: "e1", data: 5 });
  ws.frame({ type: "subscribed", room: "lobby", sub: "A-1", offset: 5, epoch: "e1", recovered: true });
  ws.frame({ type: "message", room: "lobby", sub: "A-1", offset: 4, epoch: "e1", data: 4 });
  ws.frame({ type: "message", room: "lobby", sub: "A-1", offset: 5, epoch: "e1", data: 5 });
  ws.frame({ type: "message", room: "lobby", offset: 5, epoch: "e1", data: 5 });
  ws.frame({ type: "message", room: "lobby", offset: 6, epoch: "e1", data: 6 });
  assert.deepEqual(tab.of("message").map((m) => m.data), [1, 2, 3, 4, 5, 6]);
});

test("moving up from long-polling leaves the polling session's rooms first (it would count us until it timed out)", async (t) => {
  const { tab } = await owner(t, { remembered: { transport: "poll", at: Date.now() } });
  answer(gets()[0], 200, { session: SESSION, seq: 0, frames: [] });
  await settle();
  await passUntil(t, () => FakeSocket.made.length === 1, UPGRADE_EVERY_MS * 1.25);
  assert.equal(tab.state().transport, "poll", "polled all along");
  const ws = FakeSocket.made[0];
  ws.open();
  ws.frame({ type: "pong" });
  await settle();
  assert.deepEqual(posted(`http://x/poll/${SESSION}/`).at(-1), { type: "unsubscribe", room: "lobby", sub: "A-1" });
  assert.equal(tab.state().transport, "websocket");
  const polls = gets().length;
  await pass(t, 5_000);
  assert.equal(gets().length, polls, "no more polls");
});

test("a background WebSocket that fails leaves the stream alone and is tried again later", async (t) => {
  const { tab } = await owner(t, { remembered: { transport: "sse", at: Date.now() } });
  FakeEventSource.made[0].session();
  await settle();
  await passUntil(t, () => FakeSocket.made.length === 1, UPGRADE_EVERY_MS * 1.25);
  FakeSocket.made[0].refuse();
  assert.equal(FakeEventSource.made[0].closed, false);
  assert.equal(tab.state().transport, "sse");
  // One that opens but never answers is given up too.
  await passUntil(t, () => FakeSocket.made.length === 2, UPGRADE_EVERY_MS * 1.25);
  FakeSocket.made[1].open();
  await pass(t, CONNECT_TIMEOUT_MS);
  assert.equal(FakeSocket.made[1].closed, true);
  assert.deepEqual(tab.state(), { sharing: "sharedworker", transport: "sse", status: "open", retryAt: null });
  assert.equal(FakeEventSource.made.length, 1, "the same stream all along");
  await passUntil(t, () => FakeSocket.made.length === 3, UPGRADE_EVERY_MS * 1.25);
});

test("the page's transports restrict the owner: without websocket none is ever made", async (t) => {
  const { tab } = await owner(t, { transports: ["sse", "poll"], remembered: { transport: "websocket", at: Date.now() } });
  assert.equal(FakeEventSource.made.length, 1);
  FakeEventSource.made[0].session();
  await settle();
  await pass(t, UPGRADE_EVERY_MS * 3);
  assert.equal(FakeSocket.made.length, 0);
  assert.equal(tab.state().transport, "sse");
});

test("what worked is forgotten after 24 hours: the owner starts with a WebSocket again", async (t) => {
  await owner(t, { remembered: { transport: "poll", at: Date.now() - 24 * 3600 * 1000 - 1 } });
  assert.equal(FakeSocket.made.length, 1);
  assert.equal(gets().length, 0);
});

test("a WebSocket that worked is kept through a server outage, not given up for SSE", async (t) => {
  const { tab } = await owner(t);
  FakeSocket.made[0].open();
  FakeSocket.made[0].frame({ type: "pong" });
  FakeSocket.made[0].onclose({ code: 1006, reason: "" });
  for (let i = 0; i < 6; i++) {
    waitForRetry(t, tab);
    FakeSocket.made.at(-1).refuse();
  }
  assert.equal(FakeEventSource.made.length, 0);
  assert.equal(FakeSocket.made.length, 7);
  assert.equal(tab.state().transport, "websocket");
});

test("a handshake refused for its Origin: the owner asks the server once and tells every tab, new ones too", async (t) => {
  const { o, tab } = await owner(t);
  FakeSocket.made[0].refuse();
  await settle();
  const asked = requests.filter((r) => r.url.startsWith("http://x/ws/origin"));
  assert.equal(asked.length, 1, "asked after the failed handshake");
  assert.equal(asked[0].method, "GET");
  answer(asked[0], 200, { origin: "https://site.example", allowed: false, option: "--allowed-origins" });
  await settle();
  const [error] = tab.of("error");
  assert.equal(error.code, "origin_refused");
  assert.match(error.reason, /--allowed-origins https:\/\/site\.example/);
  assert.equal(error.room, undefined, "about the whole socket, not a room");

  const late = tabLink();
  o.receive("B", attachMsg("lock"), late);
  assert.deepEqual(late.of("error"), [error], "a tab that comes later is told too");

  waitForRetry(t, tab);
  FakeSocket.made[1].refuse();
  await settle();
  assert.equal(requests.filter((r) => r.url.startsWith("http://x/ws/origin")).length, 1, "not asked at every retry");
  assert.equal(tab.of("error").length, 1);
});

test("a handshake that failed for another reason says nothing; an open wire clears the refusal", async (t) => {
  const { tab } = await owner(t);
  FakeSocket.made[0].refuse();
  await settle();
  const [first] = requests.filter((r) => r.url.startsWith("http://x/ws/origin"));
  answer(first, 200, { origin: "http://x", allowed: true, option: "--allowed-origins" });
  await settle();
  assert.deepEqual(tab.of("error"), [], "an allowed Origin: nothing to say");
  waitForRetry(t, tab);
  FakeSocket.made[1].open();
  FakeSocket.made[1].frame({ type: "pong" });
  FakeSocket.made[1].onclose?.({ code: 1006, reason: "" });
  await settle();
  assert.equal(requests.filter((r) => r.url.startsWith("http://x/ws/origin")).length, 1, "an opened wire is no refusal");
});
