// Presence rooms of any size, the page's side: the first page and the view diffs keep of it
// (static/js/protocol.js), and `members` frames through the socket owner (static/js/socket-owner.js,
// against a fake WebSocket): `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  applyPresenceDiffToView,
  attachMsg,
  compareUsers,
  lastUser,
  membersFrame,
  parseServerFrame,
  presencePage,
  presenceView,
  subscribeFrame,
  withTotal,
} from "../../static/js/protocol.js";

const m = (...users) => Object.fromEntries(users.map((u) => [u, { info: { name: u.toUpperCase() } }]));

test("the last user of a page is the greatest id in code point order, whatever order the object keeps", () => {
  // JavaScript puts integer-like keys first, in numeric order: "9" before "10" before "a".
  const page = JSON.parse('{"members":{"10":{},"9":{},"a":{}}}').members;
  assert.deepEqual(Object.keys(page), ["9", "10", "a"]);
  assert.equal(lastUser(page), "a");
  assert.equal(lastUser(JSON.parse('{"10":{},"9":{}}')), "9");
  assert.equal(lastUser({}), null);
  assert.ok(compareUsers("\u{1F600}", "\uFFFF") > 0, "an astral character sorts after U+FFFF, as on the server");
  assert.ok("\u{1F600}" < "\uFFFF", "(JavaScript's own < says the opposite)");
  assert.ok(compareUsers("ab", "abc") < 0 && compareUsers("b", "abc") > 0);
});

test("a first page with more: the view holds the members up to its last one, and diffs keep that range", () => {
  const view = presenceView({ type: "presence", room: "presence-x", members: m("ada", "bob"), total: 5, more: true });
  assert.deepEqual(view, { members: m("ada", "bob"), total: 5, more: true, until: "bob" });
  // A join after "bob" belongs to a later page; one before it to this one; leaves go anywhere.
  const next = applyPresenceDiffToView(view, { joins: m("zed", "amy"), leaves: m("bob") });
  assert.deepEqual(Object.keys(next.members).sort(), ["ada", "amy"]);
  assert.equal(next.until, "bob");
  assert.equal(next.total, 5, "the total of a partial view comes from the room's count");
  assert.deepEqual(withTotal(next, 6), { ...next, total: 6, more: true });
  assert.deepEqual(withTotal(next, 2), { ...next, total: 2, more: false });
  assert.deepEqual(Object.keys(view.members), ["ada", "bob"], "the input is not touched");
});

test("a first page holding everyone: every join comes in, and the total is what it holds", () => {
  const view = presenceView({ type: "presence", room: "presence-x", members: m("bob"), total: 1, more: false });
  assert.equal(view.until, null);
  const next = applyPresenceDiffToView(view, { joins: m("zed", "amy"), leaves: {} });
  assert.deepEqual(Object.keys(next.members).sort(), ["amy", "bob", "zed"]);
  assert.deepEqual([next.total, next.more], [3, false]);
  // A count ahead of its diff says more are coming.
  assert.equal(withTotal(next, 4).more, true);
});

test("a page from an older server (no total, no more) is the whole list", () => {
  assert.deepEqual(presencePage({ type: "presence", room: "presence-x", members: m("a", "b") }),
    { members: m("a", "b"), total: 2, more: false });
});

test("pages are parsed with their total and more; a malformed one is dropped", () => {
  const p = (o) => parseServerFrame(JSON.stringify(o));
  const page = { type: "presence", room: "presence-x", sub: "t-1", members: m("a"), total: 9, more: true };
  assert.deepEqual(p(page), page);
  assert.equal(p({ ...page, total: 1.5 }), null);
  assert.equal(p({ ...page, more: "yes" }), null);
  assert.equal(p({ ...page, sub: null }), null);
});

// ---- through the socket owner ---------------------------------------------------------------

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
    this.sent.push(JSON.parse(text));
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

function tabLink() {
  const got = [];
  return { got, send: (msg) => got.push(msg), of: (type) => got.filter((x) => x.type === type) };
}

test("a page asked for goes to the server and its answer to that tab alone; the first page to every tab in the room", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const owner = new SocketOwner({ url: "ws://x/ws/", sharing: "sharedworker", transports: ["websocket"], memory: null });
  const [a, b] = [tabLink(), tabLink()];
  owner.receive("A", attachMsg("heartbeat"), a);
  owner.receive("B", attachMsg("heartbeat"), b);
  owner.receive("A", subscribeFrame("lobby", "A-1", null), a);
  owner.receive("B", subscribeFrame("lobby", "B-1", null), b);
  const ws = FakeSocket.last;
  ws.open();
  const first = { type: "presence", room: "lobby", members: m("ada"), total: 3, more: true };
  ws.frame(first);
  assert.deepEqual([a.of("presence"), b.of("presence")], [[first], [first]]);

  owner.receive("A", membersFrame("lobby", "A-1", "ada"), a);
  assert.deepEqual(ws.sent.at(-1), { type: "members", room: "lobby", sub: "A-1", after: "ada" });
  const next = { type: "presence", room: "lobby", sub: "A-1", members: m("bob", "cy"), total: 3, more: false };
  ws.frame(next);
  assert.deepEqual(a.of("presence").at(-1), next);
  assert.equal(b.of("presence").length, 1, "tab B did not ask");
  owner.close();
});

test("a page that cannot go is refused to its tab with the after it asked for", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const owner = new SocketOwner({ url: "ws://x/ws/", sharing: "sharedworker", transports: ["websocket"], memory: null });
  const a = tabLink();
  owner.receive("A", attachMsg("heartbeat"), a);
  owner.receive("A", subscribeFrame("lobby", "A-1", null), a);
  owner.receive("A", membersFrame("lobby", "A-1", "x"), a); // the socket is not open yet
  owner.receive("A", membersFrame("lobby", "B-9", "y"), a); // not this tab's subscription
  owner.receive("A", membersFrame("presence-x", "A-1", "z"), a); // not the room of that subscription
  assert.deepEqual(a.of("error").map(({ code, sub, after }) => [code, sub, after]),
    [["not_connected", "A-1", "x"], ["not_subscribed", "B-9", "y"], ["not_subscribed", "A-1", "z"]]);
  const ws = FakeSocket.last;
  ws.open();
  assert.equal(ws.sent.filter((f) => f.type === "members").length, 0);
  owner.close();
});
