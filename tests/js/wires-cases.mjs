// The cases of wires.test.mjs (imported by it once EventSource and WebSocket exist in this Node).
import assert from "node:assert/strict";
import { test } from "node:test";

import { SSE_SILENCE_MS, attachMsg, subscribeFrame, transportUrls } from "../../static/js/protocol.js";
import { SocketOwner } from "../../static/js/socket-owner.js";
import { PollWire, SseWire } from "../../static/js/wires.js";
import { startContractServer } from "./contract-server.mjs";

/** Wait for a condition (generous: the machine is shared), polling. */
async function until(what, done, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A wire on `server` whose events are recorded. */
function wire(Kind, server) {
  const seen = { opened: 0, frames: [], closes: [] };
  const w = new Kind(transportUrls(server.wsUrl), {
    onOpen: () => seen.opened++,
    onFrame: (data) => seen.frames.push(typeof data === "string" ? JSON.parse(data) : data),
    onClose: (end) => seen.closes.push(end),
  });
  return { w, seen, types: () => seen.frames.map((f) => f.type) };
}

async function serverFor(t, options) {
  const server = await startContractServer(options);
  t.after(() => server.close());
  return server;
}

for (const Kind of [SseWire, PollWire]) {
  const name = Kind === SseWire ? "SSE" : "long-polling";

  test(`${name}: a session opens; each frame is one POST of application/json, in order; replies come down`, async (t) => {
    const server = await serverFor(t);
    const { w, seen, types } = wire(Kind, server);
    t.after(() => w.close());
    w.open();
    await until("the session", () => seen.opened === 1);
    assert.match(w.session, /^[A-Za-z0-9_-]{22,}$/);
    assert.equal(w.send(subscribeFrame("lobby", "A-1")), true);
    for (let i = 1; i <= 20; i++) w.send({ type: "publish", room: "lobby", data: i });
    await until("20 messages", () => seen.frames.filter((f) => f.type === "message").length === 20);
    assert.deepEqual(seen.frames.filter((f) => f.type === "message").map((f) => f.data), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.deepEqual(types().slice(0, 2), ["subscribed", "connection_message"]);
    assert.ok(server.log.posts.every((p) => p.contentType === "application/json" && p.url === `/${Kind === SseWire ? "sse" : "poll"}/${w.session}/`));
    assert.deepEqual(JSON.parse(server.log.posts[0].body), { type: "subscribe", room: "lobby", sub: "A-1" }, "exactly one frame per body");
    assert.deepEqual(seen.closes, []);
  });

  test(`${name}: the server ending the session sends a close frame last, then the wire ends`, async (t) => {
    const server = await serverFor(t);
    const { w, seen } = wire(Kind, server);
    t.after(() => w.close());
    w.open();
    await until("the session", () => seen.opened === 1);
    server.sessions.get(w.session).end(4001, "signed out");
    await until("the close frame", () => seen.frames.some((f) => f.type === "close"));
    assert.deepEqual(seen.frames.at(-1), { type: "close", code: 4001, reason: "signed out" });
  });

  test(`${name}: a POST to a session the server no longer knows ends the wire (reconnect with a new one)`, async (t) => {
    const server = await serverFor(t);
    const { w, seen } = wire(Kind, server);
    t.after(() => w.close());
    w.open();
    await until("the session", () => seen.opened === 1);
    server.sessions.delete(w.session); // e.g. the SSE stream went to a process that restarted
    w.send({ type: "ping" });
    await until("the end", () => seen.closes.length === 1);
    assert.deepEqual(seen.closes[0], { code: 1006, reason: "the session is gone", opened: true, heard: true });
  });

  test(`${name}: a refused frame (400) is reported for that frame alone; the next still goes`, async (t) => {
    const server = await serverFor(t);
    const { w, seen } = wire(Kind, server);
    t.after(() => w.close());
    w.open();
    await until("the session", () => seen.opened === 1);
    const refused = [];
    server.misbehave.postStatus = 400;
    w.send({ type: "publish", room: "lobby", data: "refused" }, (reason) => refused.push(reason));
    w.send({ type: "ping" });
    await until("the pong", () => seen.frames.some((f) => f.type === "pong"));
    assert.deepEqual(refused, ["the server refused this publish frame (HTTP 400: told to)"]);
    assert.deepEqual(seen.closes, []);
  });
}

test("SSE: closing the wire closes the stream, which ends the session on the server; no reconnect of its own", async (t) => {
  const server = await serverFor(t);
  const { w, seen } = wire(SseWire, server);
  w.open();
  await until("the session", () => seen.opened === 1);
  w.close();
  await until("the stream closed on the server", () => server.log.sseClosed === 1);
  await new Promise((resolve) => setTimeout(resolve, 3_500)); // an EventSource would reconnect after 3 s
  assert.equal(server.log.sseOpened, 1);
  assert.deepEqual(seen.closes, [], "close() is ours: no event");
});

test("SSE: a stream whose headers come but no event within 5 s ends as silent (a buffering proxy)", async (t) => {
  const server = await serverFor(t, { sse: "silent" });
  const { w, seen } = wire(SseWire, server);
  t.after(() => w.close());
  const started = Date.now();
  w.open();
  await until("the end", () => seen.closes.length === 1, SSE_SILENCE_MS + 10_000);
  assert.ok(Date.now() - started >= SSE_SILENCE_MS - 50, "not before 5 s");
  assert.equal(seen.closes[0].silent, true);
  assert.equal(seen.closes[0].heard, false);
  assert.equal(seen.opened, 0);
});

test("SSE: a stream that drops (a server restart, no close frame) ends the wire with 1006", async (t) => {
  const server = await serverFor(t);
  const { w, seen } = wire(SseWire, server);
  t.after(() => w.close());
  w.open();
  await until("the session", () => seen.opened === 1);
  server.sessions.get(w.session).stream.destroy();
  await until("the end", () => seen.closes.length === 1);
  assert.deepEqual(seen.closes[0], { code: 1006, reason: "the event stream closed", opened: true, heard: true });
});

test("long-polling: a lost answer loses nothing and repeats nothing; the poll acknowledges by seq", async (t) => {
  const server = await serverFor(t);
  const { w, seen } = wire(PollWire, server);
  t.after(() => w.close());
  w.open();
  await until("the session", () => seen.opened === 1);
  w.send(subscribeFrame("lobby", "A-1"));
  await until("subscribed", () => seen.frames.some((f) => f.type === "connection_message"));
  server.misbehave.losePoll = true;
  server.publish("lobby", "one");
  await until("one", () => seen.frames.some((f) => f.data === "one"));
  server.publish("lobby", "two");
  await until("two", () => seen.frames.some((f) => f.data === "two"));
  assert.deepEqual(seen.frames.filter((f) => f.type === "message").map((f) => f.data), ["one", "two"]);
  const polls = server.log.polls;
  assert.ok(polls.filter((n) => n === 2).length >= 2, `the lost answer's frames were asked for again with the same seq: ${polls}`);
  assert.equal(w.seq, 4);
});

test("long-polling: with nothing to send the server waits; a frame that comes meanwhile is answered at once", async (t) => {
  const server = await serverFor(t, { pollTimeoutMs: 300 });
  const { w, seen } = wire(PollWire, server);
  t.after(() => w.close());
  w.open();
  await until("the session", () => seen.opened === 1);
  await until("a few empty answers", () => server.log.polls.length >= 4);
  assert.ok(server.log.polls.every((n) => n === 0), "nothing came: the seq stays");
  const quiet = new PollWire(transportUrls(server.wsUrl), { onOpen() {}, onFrame() {}, onClose() {} });
  quiet.close(); // closed before it opened: never polls
  w.send({ type: "ping" });
  await until("the pong", () => seen.frames.some((f) => f.type === "pong"), 2_000);
  assert.deepEqual(seen.closes, []);
});

// ---- the owner, end to end over the contract ------------------------------------------------------

function tabLink() {
  const got = [];
  return { got, send: (msg) => got.push(msg), of: (type) => got.filter((m) => m.type === type), state: () => got.filter((m) => m.type === "state").at(-1)?.state };
}

test("with the WebSocket refused at the handshake, the owner's counts arrive over SSE well within 15 s", async (t) => {
  const server = await serverFor(t);
  const started = Date.now();
  const owner = new SocketOwner({ url: server.wsUrl, sharing: "sharedworker", memory: null });
  t.after(() => owner.close());
  const tab = tabLink();
  owner.receive("A", attachMsg("none"), tab);
  owner.receive("A", subscribeFrame("lobby", "A-1"), tab);
  await until("a count", () => tab.of("connection_message").length > 0, 15_000);
  assert.ok(Date.now() - started < 15_000);
  assert.equal(server.log.upgrades, 2, "the WebSocket was tried twice");
  assert.deepEqual(tab.state(), { sharing: "sharedworker", transport: "sse", status: "open", retryAt: null });
  assert.deepEqual(tab.of("connection_message")[0], { type: "connection_message", room: "lobby", connections: 1, tabs: 1, updated: 1 });
  const session = [...server.sessions.values()][0];
  assert.deepEqual(session.received.slice(0, 2), [{ type: "hello", transport: "sharedworker" }, { type: "subscribe", room: "lobby", sub: "A-1" }]);
});

test("behind a proxy that buffers SSE, the owner's counts arrive over long-polling", async (t) => {
  const server = await serverFor(t, { sse: "silent" });
  const owner = new SocketOwner({ url: server.wsUrl, sharing: "leader", transports: ["sse", "poll"], memory: null });
  t.after(() => owner.close());
  const tab = tabLink();
  owner.receive("A", attachMsg("none"), tab);
  owner.receive("A", subscribeFrame("lobby", "A-1"), tab);
  await until("a count", () => tab.of("connection_message").length > 0, SSE_SILENCE_MS + 10_000);
  assert.equal(tab.state().transport, "poll");
  server.publish("lobby", "hello");
  await until("the message", () => tab.of("message").length === 1);
  assert.equal(tab.of("message")[0].data, "hello");
});

test("a session the server ends with 4001 signs the tabs out, and a new session resubscribes with since", async (t) => {
  const server = await serverFor(t);
  const owner = new SocketOwner({ url: server.wsUrl, sharing: "direct", transports: ["sse"], memory: null });
  t.after(() => owner.close());
  const tab = tabLink();
  owner.receive("A", attachMsg("none"), tab);
  owner.receive("A", subscribeFrame("lobby", "A-1"), tab);
  await until("subscribed", () => tab.of("subscribed").length === 1);
  server.publish("lobby", "one");
  await until("one", () => tab.of("message").length === 1);
  const first = [...server.sessions.values()][0];
  first.end(4001, "signed out");
  await until("signed out", () => tab.of("error").some((e) => e.code === "signed_out"));
  server.publish("lobby", "two"); // while nobody listens
  await until("a new session", () => [...server.sessions.values()].some((s) => s !== first && s.received.some((f) => f.type === "subscribe")), 10_000);
  await until("two, recovered", () => tab.of("message").length === 2);
  const second = [...server.sessions.values()].find((s) => s !== first);
  assert.deepEqual(second.received.find((f) => f.type === "subscribe").since, { offset: 1, epoch: "e1" });
  assert.deepEqual(tab.of("message").map((m) => m.data), ["one", "two"]);
});
