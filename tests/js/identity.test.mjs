// Unit tests for tokens and presence on the tab link (static/js/protocol.js) and in the
// socket owner (static/js/socket-owner.js, against a fake WebSocket): `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  REFRESH_AT,
  applyPresenceDiff,
  attachMsg,
  authFrame,
  isPresenceRoom,
  memberName,
  needsToken,
  noTokenError,
  parseServerFrame,
  refreshDelay,
  tokenReplyMsg,
  tokenRequestMsg,
  tokenTab,
} from "../../static/js/protocol.js";

test("private and presence rooms need a token; only presence rooms have members", () => {
  assert.deepEqual(["private-a", "presence-b", "lobby", "privatex", "", undefined].map(needsToken),
    [true, true, false, false, false, false]);
  assert.deepEqual(["presence-b", "private-a", "lobby"].map(isPresenceRoom), [true, false, false]);
});

test("a token is refreshed at 80 % of the life left when the server accepted it", () => {
  assert.equal(REFRESH_AT, 0.8);
  assert.equal(refreshDelay(1_000 + 10, 1_000_000), 8_000);
  assert.equal(refreshDelay(1_000 + 6, 1_000_000), 4_800);
  assert.equal(refreshDelay(999, 1_000_000), 0, "already expired: at once, never negative");
});

test("a presence diff removes leaves, then adds joins, and never touches its input", () => {
  const before = { ada: { info: { name: "Ada" } }, bob: { info: {} } };
  const after = applyPresenceDiff(before, { joins: { cy: { info: { name: "Cy" } } }, leaves: { bob: {} } });
  assert.deepEqual(after, { ada: { info: { name: "Ada" } }, cy: { info: { name: "Cy" } } });
  assert.deepEqual(Object.keys(before), ["ada", "bob"]);
  // Left and came back within one coalescing interval: still here.
  assert.deepEqual(applyPresenceDiff(before, { joins: { bob: { info: { name: "B" } } }, leaves: { bob: {} } }).bob,
    { info: { name: "B" } });
  assert.deepEqual(applyPresenceDiff(before, {}), before);
});

test("a member is shown by info.name, else by user id", () => {
  assert.equal(memberName("42", { info: { name: "Ada" } }), "Ada");
  assert.equal(memberName("42", { info: { name: "  " } }), "42");
  assert.equal(memberName("42", { info: { name: 7 } }), "42");
  assert.equal(memberName("42", {}), "42");
  assert.equal(memberName("42", null), "42");
});

test("server frames for identity and presence are parsed; malformed ones are dropped", () => {
  const p = (o) => parseServerFrame(JSON.stringify(o));
  assert.deepEqual(p({ type: "authenticated", user: "ada", exp: 5 }), { type: "authenticated", user: "ada", exp: 5 });
  assert.equal(p({ type: "authenticated", user: 1, exp: 5 }), null);
  assert.equal(p({ type: "authenticated", user: "ada" }), null);
  const presence = { type: "presence", room: "presence-x", sub: "t-1", members: { ada: { info: {} } } };
  assert.deepEqual(p(presence), presence);
  assert.equal(p({ ...presence, members: [] }), null);
  assert.equal(p({ ...presence, room: "../x" }), null);
  const diff = { type: "presence_diff", room: "presence-x", joins: {}, leaves: { ada: {} } };
  assert.deepEqual(p(diff), diff);
  assert.equal(p({ ...diff, joins: null }), null);
});

test("token messages on the tab link", () => {
  assert.deepEqual(authFrame("j.w.t"), { type: "auth", token: "j.w.t" });
  assert.deepEqual(attachMsg("lock"), { type: "attach", watch: "lock", tokens: false });
  assert.deepEqual(attachMsg("none", true), { type: "attach", watch: "none", tokens: true });
  assert.deepEqual(tokenRequestMsg("r1"), { type: "token_request", id: "r1" });
  assert.deepEqual(tokenReplyMsg("r1", "j.w.t"), { type: "token", id: "r1", token: "j.w.t" });
  assert.deepEqual(tokenReplyMsg("r1", null, "signed out"), { type: "token", id: "r1", error: "signed out" });
  assert.deepEqual(tokenReplyMsg("r1", ""), { type: "token", id: "r1", error: "getToken gave no token" });
  assert.deepEqual(tokenReplyMsg("r1", { not: "a string" }), { type: "token", id: "r1", error: "getToken gave no token" });
  assert.deepEqual(noTokenError("private-a", "t-1", "x"),
    { type: "error", code: "no_token", reason: "no token: x", room: "private-a", sub: "t-1" });
});

test("the owner asks the first tab that can give a token and has not been asked yet", () => {
  const tabs = [["A", { tokens: false }], ["B", { tokens: true }], ["C", { tokens: true }]];
  assert.equal(tokenTab(tabs, new Set()), "B");
  assert.equal(tokenTab(tabs, new Set(["B"])), "C");
  assert.equal(tokenTab(tabs, new Set(["B", "C"])), null);
  assert.equal(tokenTab([], new Set()), null);
});

// ---- the socket owner against a fake socket ------------------------------------------

class FakeSocket {
  static OPEN = 1;
  static last = null;
  readyState = 0;
  sent = [];
  constructor(url) {
    this.url = url;
    FakeSocket.last = this;
  }
  send(text) {
    const frame = JSON.parse(text);
    this.sent.push(frame);
    // A live server answers every ping: without it the owner rightly recycles a silent socket
    // (which it checks against the real clock, while these tests move only the timers, all in one
    // synchronous tick: so the pong comes at once, not from a microtask).
    if (frame.type === "ping" && this.readyState === 1) this.frame({ type: "pong" });
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
}
globalThis.WebSocket = FakeSocket;
const { SocketOwner } = await import("../../static/js/socket-owner.js");

const tick = () => new Promise((resolve) => setImmediate(resolve));

function tabLink() {
  const got = [];
  return { got, send: (msg) => got.push(msg), of: (type) => got.filter((m) => m.type === type) };
}

function setup() {
  const owner = new SocketOwner({ url: "ws://x/ws/", sharing: "direct" });
  const a = tabLink();
  const b = tabLink();
  owner.receive("A", attachMsg("none", true), a);
  owner.receive("B", attachMsg("none", false), b);
  owner.receive("A", { type: "subscribe", room: "lobby", sub: "A-1" }, a);
  owner.receive("A", { type: "subscribe", room: "presence-team", sub: "A-2" }, a);
  owner.receive("B", { type: "subscribe", room: "presence-team", sub: "B-1" }, b);
  const ws = FakeSocket.last;
  ws.open();
  return { owner, a, b, ws };
}

test("on open the owner subscribes public rooms, asks a tab for a token, and subscribes the rest once authenticated", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { owner, a, b, ws } = setup();
  const types = () => ws.sent.map((f) => f.type + (f.room ? ` ${f.room}` : ""));
  assert.deepEqual(types(), ["hello", "subscribe lobby"]);
  const [request] = a.of("token_request");
  assert.ok(request, "tab A (it has a getToken) was asked");
  assert.equal(b.of("token_request").length, 0);
  owner.receive("A", tokenReplyMsg(request.id, "jwt-1"), a);
  await tick();
  assert.deepEqual(ws.sent.at(-1), { type: "auth", token: "jwt-1" });
  assert.deepEqual(types(), ["hello", "subscribe lobby", "auth"], "nothing private before the reply");
  ws.frame({ type: "authenticated", user: "ada", exp: Date.now() / 1000 + 100 });
  assert.deepEqual(types().slice(3), ["subscribe presence-team", "subscribe presence-team"]);
  assert.equal(a.of("authenticated").length, 1);
  assert.equal(b.of("authenticated").length, 1);

  // Each subscription's whole list goes to its own tab only; diffs go to every tab in the room.
  ws.frame({ type: "presence", room: "presence-team", sub: "B-1", members: { ada: { info: {} } } });
  assert.equal(a.of("presence").length, 0);
  assert.equal(b.of("presence").length, 1);
  ws.frame({ type: "presence_diff", room: "presence-team", joins: {}, leaves: { ada: {} } });
  assert.equal(a.of("presence_diff").length, 1);
  assert.equal(b.of("presence_diff").length, 1);

  // At 80 % of the token's life the owner asks again and sends the new token.
  t.mock.timers.tick(80_000);
  const refresh = a.of("token_request")[1];
  assert.ok(refresh, "refresh asked for a token");
  owner.receive("A", tokenReplyMsg(refresh.id, "jwt-2"), a);
  await tick();
  assert.deepEqual(ws.sent.at(-1), { type: "auth", token: "jwt-2" });
  ws.frame({ type: "authenticated", user: "ada", exp: Date.now() / 1000 + 100 });
  assert.equal(ws.sent.filter((f) => f.type === "subscribe").length, 3, "a refresh resubscribes nothing");
  owner.close();
});

test("getToken rejecting: each private subscription's own tab gets no_token; public rooms go on", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { owner, a, b, ws } = setup();
  const [request] = a.of("token_request");
  owner.receive("A", tokenReplyMsg(request.id, null, "signed out"), a);
  await tick();
  assert.deepEqual(a.of("error").map((e) => [e.code, e.sub]), [["no_token", "A-2"]]);
  assert.deepEqual(b.of("error").map((e) => [e.code, e.sub]), [["no_token", "B-1"]]);
  assert.match(a.of("error")[0].reason, /signed out/);
  assert.equal(ws.sent.filter((f) => f.type === "auth").length, 0);
  ws.frame({ type: "connection_message", room: "lobby", connections: 1, tabs: 1, updated: 1 });
  assert.equal(a.of("connection_message").length, 1);
  owner.close();
});

test("a tab that never answers is passed over for the next; none left means no_token", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const owner = new SocketOwner({ url: "ws://x/ws/", sharing: "leader" });
  const a = tabLink();
  const c = tabLink();
  owner.receive("A", attachMsg("none", true), a);
  owner.receive("C", attachMsg("none", true), c);
  owner.receive("A", { type: "subscribe", room: "private-a", sub: "A-1" }, a);
  FakeSocket.last.open();
  assert.equal(a.of("token_request").length, 1);
  t.mock.timers.tick(10_000);
  assert.equal(c.of("token_request").length, 1, "the next tab is asked");
  t.mock.timers.tick(10_000);
  await tick();
  assert.deepEqual(a.of("error").map((e) => e.code), ["no_token"]);
  assert.match(a.of("error")[0].reason, /no page answered/);
  owner.close();
});

test("the server refusing our token: no_token to each private subscription's tab, the bad_token itself to nobody", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { owner, a, b, ws } = setup();
  owner.receive("A", tokenReplyMsg(a.of("token_request")[0].id, "revoked"), a);
  await tick();
  ws.frame({ type: "error", code: "bad_token", reason: "revoked" });
  assert.deepEqual(a.of("error").map((e) => [e.code, e.sub]), [["no_token", "A-2"]]);
  assert.deepEqual(b.of("error").map((e) => [e.code, e.sub]), [["no_token", "B-1"]]);
  assert.match(a.of("error")[0].reason, /refused it \(revoked\)/);
  // A later subscription to a private room asks for a token again.
  owner.receive("B", { type: "subscribe", room: "private-b", sub: "B-2" }, b);
  assert.equal(a.of("token_request").length, 2);
  owner.receive("A", tokenReplyMsg(a.of("token_request")[1].id, null, "still signed out"), a);
  await tick();
  // Only the new subscription is told; the others were already.
  assert.deepEqual(b.of("error").map((e) => [e.code, e.sub]), [["no_token", "B-1"], ["no_token", "B-2"]]);
  assert.equal(a.of("error").length, 1);
  owner.close();
});

test("a socket closed with 4001 (signed out) tells every tab, and the next socket asks for a token again", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { owner, a, b, ws } = setup();
  owner.receive("A", tokenReplyMsg(a.of("token_request")[0].id, "jwt-1"), a);
  await tick();
  ws.frame({ type: "authenticated", user: "ada", exp: Date.now() / 1000 + 100 });
  ws.onclose({ code: 4001 });
  assert.deepEqual(a.of("error").map((e) => e.code), ["signed_out"]);
  assert.deepEqual(b.of("error").map((e) => e.code), ["signed_out"]);
  t.mock.timers.tick(1_000); // the reconnect backoff (first attempt: under 0.5 s)
  assert.notEqual(FakeSocket.last, ws);
  FakeSocket.last.open();
  assert.equal(a.of("token_request").length, 2, "getToken is asked again, the old token is not reused");
  assert.deepEqual(FakeSocket.last.sent.map((f) => f.type), ["hello", "subscribe"]);
  owner.close();
});
