// The socket owner and history: a tab that attaches again to an owner that still knows it (a
// SharedWorker or leader that was slow to answer a probe, so the page relinked to the same, live
// owner) marks each handle not live and sends its subscribes with `since` again. The owner must
// ask the server again, so a `subscribed` comes back; without that the page would wait for one
// for ever and drop every message that has an offset (found in review; failed before its fix).
import assert from "node:assert/strict";
import { test } from "node:test";

import { advance, attachMsg, subscribeFrame } from "../../static/js/protocol.js";

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

function tabLink() {
  const got = [];
  return { got, send: (msg) => got.push(msg), of: (type) => got.filter((m) => m.type === type) };
}

test("a tab that attaches again to an owner that still knows it is told subscribed again", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const owner = new SocketOwner({ url: "ws://x/ws/", sharing: "sharedworker" });
  const first = tabLink();
  owner.receive("A", attachMsg("heartbeat"), first);
  owner.receive("A", subscribeFrame("lobby", "A-1", null), first);
  const ws = FakeSocket.last;
  ws.open();
  ws.frame({ type: "subscribed", room: "lobby", sub: "A-1", offset: 0, epoch: "e1", recovered: false });
  ws.frame({ type: "message", room: "lobby", offset: 1, epoch: "e1", data: "one" });
  assert.deepEqual(first.of("message").map((m) => m.offset), [1]);

  // The page's side of it (rrr.js #announce): its position, not live until `subscribed`.
  const page = { offset: 1, epoch: "e1", live: false };
  const again = tabLink();
  const sentBefore = ws.sent.length;
  owner.receive("A", attachMsg("heartbeat"), again);
  owner.receive("A", subscribeFrame("lobby", "A-1", page), again);
  // The owner asks the server again, from where the page stands...
  assert.deepEqual(ws.sent.slice(sentBefore), [
    { type: "unsubscribe", room: "lobby", sub: "A-1" },
    { type: "subscribe", room: "lobby", sub: "A-1", since: { offset: 1, epoch: "e1" } },
  ]);
  // ...and the server answers as it does: subscribed, then the replay for that subscription.
  ws.frame({ type: "subscribed", room: "lobby", sub: "A-1", offset: 2, epoch: "e1", recovered: true });
  ws.frame({ type: "message", room: "lobby", sub: "A-1", offset: 2, epoch: "e1", data: "two" });

  // What the page makes of what it got: only a `subscribed` makes it live again.
  let position = page;
  const delivered = [];
  for (const msg of again.got) {
    if (msg.type === "subscribed") position = { ...position, live: true };
    if (msg.type === "message") {
      const r = advance(position, msg);
      position = r.position;
      if (r.deliver) delivered.push(msg.offset);
    }
  }
  assert.deepEqual(delivered, [2],
    `the page hands nothing to onMessage: owner sent the tab ${JSON.stringify(again.got.map((m) => m.type))}, ` +
    `the server ${JSON.stringify(ws.sent.slice(sentBefore))}`);
});
