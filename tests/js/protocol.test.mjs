// Unit tests for the pure parts of static/js/protocol.js: `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LINK_VERSION,
  backoffDelay,
  channelName,
  checkServerFrame,
  defaultSocketUrl,
  endpointFromWorkerName,
  errorHandles,
  errorTabs,
  leaderLockName,
  linkVersionOfWorkerName,
  linkVersionOfWorkerUrl,
  originCheckUrl,
  originRefusal,
  parseServerFrame,
  pollBatch,
  pollOpening,
  randomId,
  sessionOf,
  socketUrlFromWorkerName,
  transportList,
  transportMemoryKey,
  transportUrls,
  workerName,
  workerScriptUrl,
} from "../../static/js/protocol.js";

test("backoff doubles from 0.5 s with full jitter, capped at 30 s", () => {
  const top = (n) => backoffDelay(n, () => 0.999999);
  assert.deepEqual([0, 1, 2, 6, 20, 1000].map(top), [499, 999, 1999, 29999, 29999, 29999]);
  assert.equal(backoffDelay(5, () => 0), 0);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(3);
    assert.ok(d >= 0 && d < 4000 && Number.isInteger(d));
  }
});

test("default socket URL follows the page's scheme and host", () => {
  assert.equal(defaultSocketUrl({ protocol: "https:", host: "example.org:8443" }), "wss://example.org:8443/ws/");
  assert.equal(defaultSocketUrl({ protocol: "http:", host: "h" }), "ws://h/ws/");
});

test("server frames: only known types, rooms checked", () => {
  assert.deepEqual(parseServerFrame('{"type":"pong"}'), { type: "pong" });
  assert.equal(parseServerFrame("nope"), null);
  assert.equal(parseServerFrame("null"), null);
  assert.equal(parseServerFrame('{"type":"message","room":"../x","data":1}'), null);
  assert.equal(parseServerFrame('{"type":"surprise"}'), null);
  assert.deepEqual(parseServerFrame('{"type":"message","room":"ok","data":1}'), { type: "message", room: "ok", data: 1 });
});

test("random ids are unique hex", () => {
  const ids = new Set(Array.from({ length: 1000 }, randomId));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.match(id, /^[0-9a-f]{24}$/);
});

// ---- names: link version and endpoint in every shared name ----------------------------

test("worker name carries version, endpoint and transports, and round-trips", () => {
  const loc = { protocol: "http:", host: "h" };
  assert.equal(workerName("ws://x/ws/"), `rrr/${LINK_VERSION} ws://x/ws/ websocket,sse,poll`);
  assert.equal(socketUrlFromWorkerName(workerName("wss://y:1/ws/"), loc), "wss://y:1/ws/");
  assert.deepEqual(endpointFromWorkerName(workerName("wss://y:1/ws/", ["poll", "sse"]), loc), {
    url: "wss://y:1/ws/", transports: ["poll", "sse"],
  });
  assert.notEqual(workerName("ws://x/ws/", ["sse"]), workerName("ws://x/ws/"), "other transports, another worker");
  const foreign = { url: "ws://h/ws/", transports: ["websocket", "sse", "poll"] };
  for (const name of ["rrr/0 ws://old/ws/", "someone else's", `rrr/${LINK_VERSION} ws://x/ws/`,
    `rrr/${LINK_VERSION} ws://x/ws/ carrier-pigeon`, `rrr/${LINK_VERSION} ws://x/ws/ sse,sse`]) {
    assert.deepEqual(endpointFromWorkerName(name, loc), foreign, name);
  }
});

test("the transports option: a non-empty list of distinct known names, in the page's order", () => {
  assert.deepEqual(transportList(), ["websocket", "sse", "poll"]);
  assert.deepEqual(transportList(["poll", "websocket"]), ["poll", "websocket"]);
  for (const bad of [[], "sse", ["sse", "sse"], ["SSE"], ["websocket", null], { 0: "sse", length: 1 }, null]) {
    assert.throws(() => transportList(bad), TypeError, JSON.stringify(bad));
  }
});

test("/sse/ and /poll/ live beside /ws/, over http(s) on the same host; memory is per origin", () => {
  assert.deepEqual(transportUrls("wss://h:8443/ws/"), {
    websocket: "wss://h:8443/ws/", sse: "https://h:8443/sse/", poll: "https://h:8443/poll/",
  });
  assert.deepEqual(transportUrls("ws://h/rt/ws/?x=1"), {
    websocket: "ws://h/rt/ws/?x=1", sse: "http://h/rt/sse/", poll: "http://h/rt/poll/",
  });
  assert.equal(transportMemoryKey("wss://H:8443/rt/ws/"), "wss://h:8443");
  assert.equal(transportMemoryKey("ws://h/ws/"), transportMemoryKey("ws://h/other/ws/"));
  assert.notEqual(transportMemoryKey("ws://h/ws/"), transportMemoryKey("wss://h/ws/"));
});

test("an SSE stream's first event names the session; nothing else does", () => {
  const id = "A".repeat(21) + "_-9";
  assert.equal(sessionOf(JSON.stringify({ type: "session", session: id })), id);
  for (const data of [
    JSON.stringify({ type: "session", session: "short" }),
    JSON.stringify({ type: "session", session: `${id}!` }),
    JSON.stringify({ type: "session", session: "x".repeat(257) }),
    JSON.stringify({ type: "session" }),
    JSON.stringify({ type: "pong" }),
    JSON.stringify([id]),
    "null",
    "not json",
  ]) {
    assert.equal(sessionOf(data), null, data);
  }
});

test("a long-poll answer: only frames after the last one taken, in order, and the seq to acknowledge", () => {
  const f = (n) => ({ type: "message", room: "r", data: n });
  assert.deepEqual(pollBatch({ seq: 3, frames: [f(1), f(2), f(3)] }, 0), { seq: 3, frames: [f(1), f(2), f(3)] });
  // Sent again (our acknowledgement was lost on the way), with one new: only the new one is taken.
  assert.deepEqual(pollBatch({ seq: 4, frames: [f(2), f(3), f(4)] }, 3), { seq: 4, frames: [f(4)] });
  // The wait ran out with nothing new.
  assert.deepEqual(pollBatch({ seq: 4, frames: [] }, 4), { seq: 4, frames: [] });
  // An answer behind what we took never moves us back.
  assert.deepEqual(pollBatch({ seq: 2, frames: [f(2)] }, 4), { seq: 4, frames: [] });
  for (const bad of [null, [], { seq: "1", frames: [] }, { seq: 1.5, frames: [] }, { seq: -1, frames: [] },
    { seq: 1 }, { seq: 1, frames: {} }, { seq: 1, frames: [f(0), f(1)] }]) {
    assert.equal(pollBatch(bad, 0), null, JSON.stringify(bad));
  }
  const id = "s".repeat(22);
  assert.deepEqual(pollOpening({ session: id, seq: 0, frames: [] }), { session: id, seq: 0, frames: [] });
  assert.equal(pollOpening({ session: "short", seq: 0, frames: [] }), null);
  assert.equal(pollOpening({ seq: 0, frames: [] }), null);
});

test("a close frame ends a session with a WebSocket close code; a malformed one is dropped", () => {
  for (const frame of [{ type: "close", code: 4001, reason: "signed out" }, { type: "close", code: 1001, reason: "" },
    { type: "close", code: 1008 }]) {
    assert.deepEqual(parseServerFrame(JSON.stringify(frame)), frame);
    assert.deepEqual(checkServerFrame(frame), frame, "already parsed (long-polling)");
  }
  for (const frame of [{ type: "close" }, { type: "close", code: "4001" }, { type: "close", code: 999 },
    { type: "close", code: 5000 }, { type: "close", code: 4001.5 }, { type: "close", code: 1001, reason: 7 }]) {
    assert.equal(parseServerFrame(JSON.stringify(frame)), null, JSON.stringify(frame));
  }
});

test("leader lock and channel names differ per endpoint and transports, and carry the link version", () => {
  for (const name of [leaderLockName, channelName]) {
    const a = name("ws://h/ws/");
    assert.notEqual(a, name("ws://h/other/"));
    assert.notEqual(a, name("wss://h/ws/"));
    assert.notEqual(a, name("ws://h/ws/", ["sse", "poll"]));
    assert.equal(a, name("ws://h/ws/", ["websocket", "sse", "poll"]));
    assert.equal(a, name("ws://h/ws/"));
    assert.ok(a.includes(`v${LINK_VERSION}`), a);
    assert.ok(a.includes("ws://h/ws/"), a);
  }
  assert.notEqual(leaderLockName("ws://h/ws/"), channelName("ws://h/ws/"));
});

test("worker script URL keeps the deploy's ?v= and adds the link version", () => {
  const url = workerScriptUrl("http://h/static/js/worker.js?v=abc123");
  assert.equal(url, `http://h/static/js/worker.js?v=abc123&link=${LINK_VERSION}`);
  assert.equal(linkVersionOfWorkerUrl(url), LINK_VERSION);
  assert.equal(workerScriptUrl(new URL("http://h/static/js/worker.js")), `http://h/static/js/worker.js?link=${LINK_VERSION}`);
  // Idempotent: never two link= parameters.
  assert.equal(workerScriptUrl(url), url);
  assert.equal(linkVersionOfWorkerUrl("http://h/static/js/worker.js"), null);
  assert.equal(linkVersionOfWorkerUrl("http://h/static/js/worker.js?link=1"), 1);
});

// ---- error routing ----------------------------------------------------------------------

const tabs = new Map([
  ["A", { subs: new Map([["A-1", "lobby"], ["A-2", "lobby"]]) }],
  ["B", { subs: new Map([["B-1", "lobby"], ["B-2", "other"]]) }],
  ["C", { subs: new Map() }],
]);

test("owner: an error naming a subscription goes to that tab only", () => {
  assert.deepEqual(errorTabs({ type: "error", code: "x", reason: "r", room: "other", sub: "B-2" }, tabs), ["B"]);
  assert.deepEqual(errorTabs({ type: "error", room: "lobby", sub: "A-2" }, tabs), ["A"]);
  assert.deepEqual(errorTabs({ type: "error", room: "lobby", sub: "gone" }, tabs), []);
});

test("owner: an error naming only a room goes to the tabs in it (older servers)", () => {
  assert.deepEqual(errorTabs({ type: "error", room: "other" }, tabs), ["B"]);
  assert.deepEqual(errorTabs({ type: "error", room: "lobby" }, tabs), ["A", "B"]);
});

test("owner: a socket-wide error goes to every tab", () => {
  assert.deepEqual(errorTabs({ type: "error", code: "rate_limited", reason: "slow down" }, tabs), ["A", "B", "C"]);
});

const handles = new Map([
  ["A-1", { room: "lobby" }],
  ["A-2", { room: "lobby" }],
  ["A-3", { room: "other" }],
]);

test("tab: an error naming a subscription reaches that room handle only", () => {
  assert.deepEqual(errorHandles({ type: "error", room: "lobby", sub: "A-2" }, handles), ["A-2"]);
  assert.deepEqual(errorHandles({ type: "error", room: "lobby", sub: "A-9" }, handles), []);
});

test("tab: room-only errors reach that room's handles, socket-wide errors every handle", () => {
  assert.deepEqual(errorHandles({ type: "error", room: "other" }, handles), ["A-3"]);
  assert.deepEqual(errorHandles({ type: "error", room: "lobby" }, handles), ["A-1", "A-2"]);
  assert.deepEqual(errorHandles({ type: "error", code: "x" }, handles), ["A-1", "A-2", "A-3"]);
});

test("the Origin check is asked beside the socket, with the page's origin for a same-origin GET", () => {
  assert.equal(originCheckUrl("wss://rt.example:8443/ws/", "https://site.example"),
    "https://rt.example:8443/ws/origin?origin=https%3A%2F%2Fsite.example");
  assert.equal(originCheckUrl("ws://h/rt/ws/?x=1", undefined), "http://h/rt/ws/origin");
  assert.equal(originCheckUrl("ws://h/ws/", "null"), "http://h/ws/origin", "an opaque origin is not sent");
});

test("a refused Origin becomes an error naming --allowed-origins and the Origin to add; anything else is nothing", () => {
  const refusal = originRefusal({ origin: "https://site.example", allowed: false, option: "--allowed-origins" },
    "wss://rt.example/ws/");
  assert.equal(refusal.type, "error");
  assert.equal(refusal.code, "origin_refused");
  assert.match(refusal.reason, /^rrr at wss:\/\/rt\.example refuses pages of https:\/\/site\.example: /);
  assert.match(refusal.reason, /start it with --allowed-origins https:\/\/site\.example/);
  assert.equal(originRefusal({ origin: "https://site.example", allowed: true }, "ws://h/ws/"), null);
  for (const junk of [null, "no", 1, [], { allowed: "false" }, {}]) assert.equal(originRefusal(junk, "ws://h/ws/"), null);
  const odd = originRefusal({ allowed: false, origin: 7, option: "; rm -rf /" }, "ws://h/ws/");
  assert.match(odd.reason, /--allowed-origins this page's Origin/);
});

test("a worker's name carries the link version, for a bundled worker whose URL has no link=", () => {
  assert.equal(linkVersionOfWorkerName(workerName("ws://h/ws/")), LINK_VERSION);
  assert.equal(linkVersionOfWorkerName(workerName("ws://h/ws/", ["sse"])), LINK_VERSION);
  assert.equal(linkVersionOfWorkerName("rrr/1 ws://h/ws/ websocket"), 1);
  for (const foreign of ["", "mine", "rrr/ ws://h/ws/", "rrr/x ws://h/ws/", null, undefined, 7]) {
    assert.equal(linkVersionOfWorkerName(foreign), null, String(foreign));
  }
});
