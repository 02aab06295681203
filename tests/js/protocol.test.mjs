// Unit tests for the pure parts of static/js/protocol.js: `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LINK_VERSION,
  backoffDelay,
  channelName,
  defaultSocketUrl,
  errorHandles,
  errorTabs,
  leaderLockName,
  linkVersionOfWorkerUrl,
  parseServerFrame,
  randomId,
  socketUrlFromWorkerName,
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

test("worker name carries version and endpoint, and round-trips", () => {
  const loc = { protocol: "http:", host: "h" };
  assert.equal(workerName("ws://x/ws/"), `rrr/${LINK_VERSION} ws://x/ws/`);
  assert.equal(socketUrlFromWorkerName(workerName("wss://y:1/ws/"), loc), "wss://y:1/ws/");
  assert.equal(socketUrlFromWorkerName("rrr/0 ws://old/ws/", loc), "ws://h/ws/");
  assert.equal(socketUrlFromWorkerName("someone else's", loc), "ws://h/ws/");
});

test("leader lock and channel names differ per endpoint and carry the link version", () => {
  for (const name of [leaderLockName, channelName]) {
    const a = name("ws://h/ws/");
    assert.notEqual(a, name("ws://h/other/"));
    assert.notEqual(a, name("wss://h/ws/"));
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
