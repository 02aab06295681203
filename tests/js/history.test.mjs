// The pure history rules the socket owner and the page share (static/js/protocol.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { advance, parseServerFrame, sinceOf, subscribeFrame, subscribedPosition } from "../../static/js/protocol.js";

const live = (offset, epoch = "e1") => ({ offset, epoch, live: true });

test("the next offset goes, a duplicate or an older one does not", () => {
  assert.deepEqual(advance(live(4), { offset: 5, epoch: "e1" }), { deliver: true, position: live(5) });
  assert.deepEqual(advance(live(5), { offset: 5, epoch: "e1" }), { deliver: false, position: live(5) });
  assert.deepEqual(advance(live(5), { offset: 3, epoch: "e1" }), { deliver: false, position: live(5) });
});

test("nothing with an offset goes before the server said subscribed", () => {
  assert.equal(advance(null, { offset: 1, epoch: "e1" }).deliver, false);
  assert.equal(advance({ offset: 4, epoch: "e1", live: false }, { offset: 5, epoch: "e1" }).deliver, false);
});

test("a raw message (no offset) always goes and moves nothing", () => {
  assert.deepEqual(advance(live(5), { data: 1 }), { deliver: true, position: live(5) });
  assert.deepEqual(advance(null, { data: 1 }), { deliver: true, position: null });
});

test("another epoch starts the position again", () => {
  assert.deepEqual(advance(live(9), { offset: 1, epoch: "e2" }), { deliver: true, position: live(1, "e2") });
});

test("subscribed: recovered keeps the position for the replay; not recovered says reset only if there was one", () => {
  const had = { offset: 5, epoch: "e1", live: false };
  assert.deepEqual(subscribedPosition(had, { offset: 25, epoch: "e1", recovered: true }),
    { position: live(5), reset: false });
  assert.deepEqual(subscribedPosition(had, { offset: 25, epoch: "e2", recovered: false }),
    { position: live(25, "e2"), reset: true });
  assert.deepEqual(subscribedPosition(null, { offset: 25, epoch: "e1", recovered: false }),
    { position: live(25), reset: false });
  // History off on the server: no offsets, nothing to keep, never a reset.
  assert.deepEqual(subscribedPosition(had, { recovered: false }),
    { position: { offset: 0, epoch: null, live: true }, reset: false });
});

test("subscribe carries since only for a position worth recovering from", () => {
  assert.deepEqual(subscribeFrame("r", "s", live(3)), { type: "subscribe", room: "r", sub: "s", since: { offset: 3, epoch: "e1" } });
  assert.deepEqual(subscribeFrame("r", "s", null), { type: "subscribe", room: "r", sub: "s" });
  assert.deepEqual(subscribeFrame("r", "s", { offset: 0, epoch: null, live: true }), { type: "subscribe", room: "r", sub: "s" });
  assert.equal(sinceOf({ offset: -1, epoch: "e" }), null);
  assert.equal(sinceOf({ offset: 1.5, epoch: "e" }), null);
  assert.equal(sinceOf({ offset: 1, epoch: "has space" }), null);
});

test("subscribed and offset-carrying messages are parsed, malformed ones dropped", () => {
  const ok = { type: "subscribed", room: "r", sub: "s", offset: 3, epoch: "e1", recovered: true };
  assert.deepEqual(parseServerFrame(JSON.stringify(ok)), ok);
  assert.equal(parseServerFrame(JSON.stringify({ ...ok, sub: 4 })), null);
  assert.equal(parseServerFrame(JSON.stringify({ ...ok, recovered: "yes" })), null);
  assert.equal(parseServerFrame(JSON.stringify({ type: "message", room: "r", offset: "3", epoch: "e", data: 1 })), null);
  assert.equal(parseServerFrame(JSON.stringify({ type: "message", room: "r", offset: 3, data: 1 })), null);
  assert.ok(parseServerFrame(JSON.stringify({ type: "message", room: "r", offset: 3, epoch: "e", data: 1 })));
  assert.ok(parseServerFrame(JSON.stringify({ type: "message", room: "r", data: 1 })));
});
