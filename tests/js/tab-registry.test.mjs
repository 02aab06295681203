// Unit tests for the socket owner's book of tabs and its fan-out (static/js/socket-owner.js): `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import { TabRegistry, sendToTabs } from "../../static/js/socket-owner.js";

const link = (name) => ({ name, send() {} });

test("attach adds a tab once; attaching again keeps its subscriptions and takes the new link", () => {
  const reg = new TabRegistry();
  assert.equal(reg.attach("A", "lock", link("port1"), 100), true);
  assert.equal(reg.subscribe("A", "A-1", "lobby"), true);
  assert.equal(reg.attach("A", "heartbeat", link("port2"), 200), false);
  const tab = reg.get("A");
  assert.equal(tab.link.name, "port2");
  assert.equal(tab.watch, "heartbeat");
  assert.equal(tab.lastSeen, 200);
  assert.deepEqual([...tab.subs], [["A-1", "lobby"]]);
  assert.equal(reg.size, 1);
});

test("subscribe: once per sub id, valid rooms only, known tabs only", () => {
  const reg = new TabRegistry();
  reg.attach("A", "lock", link(), 0);
  assert.equal(reg.subscribe("A", "A-1", "lobby"), true);
  assert.equal(reg.subscribe("A", "A-1", "lobby"), false);
  assert.equal(reg.subscribe("A", "A-2", "../etc"), false);
  assert.equal(reg.subscribe("A", 7, "lobby"), false);
  assert.equal(reg.subscribe("nobody", "n-1", "lobby"), false);
  assert.deepEqual([...reg.subscriptions()], [["A-1", "lobby"]]);
});

test("unsubscribe returns the room, and only for the tab's own subscription", () => {
  const reg = new TabRegistry();
  reg.attach("A", "lock", link(), 0);
  reg.attach("B", "lock", link(), 0);
  reg.subscribe("A", "A-1", "lobby");
  assert.equal(reg.unsubscribe("B", "A-1"), null);
  assert.equal(reg.unsubscribe("A", "A-1"), "lobby");
  assert.equal(reg.unsubscribe("A", "A-1"), null);
});

test("inRoom lists each tab once, whatever its number of handles there", () => {
  const reg = new TabRegistry();
  for (const id of ["A", "B", "C"]) reg.attach(id, "lock", link(), 0);
  reg.subscribe("A", "A-1", "lobby");
  reg.subscribe("A", "A-2", "lobby");
  reg.subscribe("B", "B-1", "other");
  reg.subscribe("C", "C-1", "lobby");
  assert.deepEqual(reg.inRoom("lobby"), ["A", "C"]);
  assert.deepEqual(reg.inRoom("other"), ["B"]);
  assert.deepEqual(reg.inRoom("empty"), []);
});

test("stale: only heartbeat-watched tabs silent for longer than the timeout", () => {
  const reg = new TabRegistry();
  reg.attach("lock", "lock", link(), 0);
  reg.attach("none", "none", link(), 0);
  reg.attach("old", "heartbeat", link(), 1000);
  reg.attach("fresh", "heartbeat", link(), 9000);
  assert.deepEqual(reg.stale(10_000, 8000), ["old"]);
  assert.deepEqual(reg.stale(10_000, 9500), []);
});

test("drop returns the tab with the subscriptions to undo, once", () => {
  const reg = new TabRegistry();
  reg.attach("A", "lock", link(), 0);
  reg.subscribe("A", "A-1", "lobby");
  assert.deepEqual([...reg.drop("A").subs], [["A-1", "lobby"]]);
  assert.equal(reg.drop("A"), undefined);
  assert.equal(reg.size, 0);
  assert.deepEqual(reg.ids(), []);
});

test("sendToTabs: one post per group naming its tabs, one send per ungrouped tab, unknown tabs skipped", () => {
  const posts = [];
  const channel = { sendMany: (ids, msg) => posts.push({ to: ids, msg }) };
  const direct = [];
  const reg = new TabRegistry();
  for (const id of ["F1", "F2", "F3"]) {
    reg.attach(id, "lock", { send: () => assert.fail("grouped tabs are not sent to one by one"), group: channel }, 0);
  }
  reg.attach("self", "none", { send: (msg) => direct.push(msg) }, 0);
  const frame = { type: "message", room: "lobby", data: 1 };
  sendToTabs(reg, ["F1", "self", "F3", "gone"], frame);
  assert.deepEqual(posts, [{ to: ["F1", "F3"], msg: frame }]);
  assert.deepEqual(direct, [frame]);
});
