// "Retry now": a tab's retry message makes the socket owner (static/js/socket-owner.js) skip its
// backoff wait, or its wait for an `online` event, and connect at once: `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import { attachMsg, retryMsg, subscribeFrame } from "../../static/js/protocol.js";

class FakeSocket {
  static OPEN = 1;
  static made = [];
  readyState = 0;
  sent = [];
  constructor(url) {
    this.url = url;
    FakeSocket.made.push(this);
  }
  send(text) {
    const frame = JSON.parse(text);
    this.sent.push(frame);
    // A live server answers pings: a long tick must not recycle the socket for silence.
    if (frame.type === "ping" && this.readyState === 1) this.onmessage?.({ data: '{"type":"pong"}' });
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  /** The server went away: a failed connect, or a drop. */
  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006 });
  }
}
globalThis.WebSocket = FakeSocket;
const { SocketOwner } = await import("../../static/js/socket-owner.js");

function tabLink() {
  const got = [];
  return { got, send: (msg) => got.push(msg), states: () => got.filter((m) => m.type === "state").map((m) => m.state) };
}

/** WebSocket only: these are the owner's retry rules, not the transport ladder's (tests/js/ladder.test.mjs). */
function attached() {
  FakeSocket.made.length = 0;
  const owner = new SocketOwner({ url: "ws://x/ws/", sharing: "sharedworker", transports: ["websocket"] });
  const tab = tabLink();
  owner.receive("A", attachMsg("lock"), tab);
  owner.receive("A", subscribeFrame("lobby", "A-1"), tab);
  return { owner, tab };
}

test("retry while reconnecting connects at once instead of at the end of the backoff", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { owner, tab } = attached();
  assert.equal(FakeSocket.made.length, 1);
  // Refused a few times: the backoff wait grows (full jitter, so Math.random is pinned to its top).
  t.mock.method(Math, "random", () => 0.999);
  for (let n = 0; n < 4; n++) {
    FakeSocket.made.at(-1).drop();
    const wait = tab.states().at(-1).retryAt - Date.now();
    t.mock.timers.tick(wait + 5); // Date.now() is the real clock: a tick of exactly `wait` can fall 1 ms short
  }
  FakeSocket.made.at(-1).drop();
  const state = tab.states().at(-1);
  assert.equal(state.status, "reconnecting");
  assert.ok(state.retryAt - Date.now() >= 7_000, `a long wait ahead: ${state.retryAt - Date.now()} ms`);
  const before = FakeSocket.made.length;

  owner.receive("A", retryMsg(), tab); // no time passes
  assert.equal(FakeSocket.made.length, before + 1, "a new socket at once");
  assert.equal(tab.states().at(-1).status, "connecting");
  FakeSocket.made.at(-1).open();
  assert.equal(tab.states().at(-1).status, "open");
  assert.deepEqual(FakeSocket.made.at(-1).sent.map((f) => f.type), ["hello", "subscribe"]);

  // The old backoff timer is gone: nothing else connects when it would have fired.
  t.mock.timers.tick(60_000);
  assert.equal(FakeSocket.made.length, before + 1);
  owner.close();
});

test("retry while offline connects without waiting for an online event", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { owner, tab } = attached();
  FakeSocket.made[0].open();
  owner.receive("A", { type: "network", online: false }, tab);
  assert.equal(tab.states().at(-1).status, "offline");
  t.mock.timers.tick(120_000);
  assert.equal(FakeSocket.made.length, 1, "offline: no tries of its own");

  owner.receive("A", retryMsg(), tab);
  assert.equal(FakeSocket.made.length, 2);
  // Still no network after all: back to the backoff (reconnecting), not stuck.
  FakeSocket.made[1].drop();
  assert.equal(tab.states().at(-1).status, "reconnecting");
  owner.close();
});

test("retry while open or opening does nothing; nor from a tab the owner does not know", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { owner, tab } = attached();
  owner.receive("A", retryMsg(), tab); // still opening
  assert.equal(FakeSocket.made.length, 1);
  FakeSocket.made[0].open();
  owner.receive("A", retryMsg(), tab);
  assert.equal(FakeSocket.made.length, 1);
  assert.equal(FakeSocket.made[0].readyState, 1, "the open socket is kept");

  FakeSocket.made[0].drop();
  const stranger = tabLink();
  owner.receive("Z", retryMsg(), stranger);
  assert.equal(FakeSocket.made.length, 1, "an unknown tab is told to attach, nothing else");
  assert.deepEqual(stranger.got.map((m) => m.type), ["reattach"]);
  owner.close();
});
