// static/js/protocol.js against the wire protocol's shared vectors (tests/vectors/protocol.json),
// which tests/test_protocol.py checks rrr/protocol.py against: `node --test tests/js/`
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as protocol from "../../static/js/protocol.js";

const vectors = JSON.parse(readFileSync(new URL("../vectors/protocol.json", import.meta.url), "utf8"));
const { isSlug, parseServerFrame, pollBatch, pollOpening, sessionOf, sinceOf } = protocol;

/** The client frames the page sends, by the builders that make them. */
const CLIENT_BUILDERS = [
  "subscribeFrame", "unsubscribeFrame", "publishFrame", "pingFrame", "helloFrame", "authFrame", "membersFrame",
  "whisperFrame",
];

test("each client frame the page builds is byte for byte the frame the server parses as the vector says", () => {
  for (const vector of vectors.client.valid) {
    for (const [name, args] of vector.js ?? []) {
      assert.ok(CLIENT_BUILDERS.includes(name), `${vector.name}: ${name} is not a client frame builder`);
      assert.equal(JSON.stringify(protocol[name](...args)), vector.text, `${vector.name}: ${name}(${JSON.stringify(args)})`);
    }
  }
});

test("every client frame builder is checked by a vector, and every kind of hello the page sends", () => {
  const used = new Set(vectors.client.valid.flatMap((v) => (v.js ?? []).map(([name]) => name)));
  assert.deepEqual([...used].sort(), [...CLIENT_BUILDERS].sort());
  const hellos = vectors.client.valid.flatMap((v) => (v.js ?? []).filter(([name]) => name === "helloFrame"));
  assert.deepEqual(hellos.map(([, [transport]]) => transport).sort(), ["direct", "leader", "sharedworker"]);
});

test("the page subscribes with exactly the `since` values the server accepts", () => {
  for (const { since, parsed } of vectors.since.valid) {
    assert.deepEqual(sinceOf(since), parsed, JSON.stringify(since));
    const frame = JSON.parse(JSON.stringify(protocol.subscribeFrame("lobby", "s", since)));
    assert.deepEqual(frame.since, parsed);
  }
  for (const since of vectors.since.invalid) {
    assert.equal(sinceOf(since), null, `the server answers bad_since to ${JSON.stringify(since)}`);
    assert.equal("since" in protocol.subscribeFrame("lobby", "s", since), false);
  }
});

test("the page takes the rooms the server takes, in every server frame that names one", () => {
  for (const room of vectors.rooms.valid) {
    assert.equal(isSlug(room), true, JSON.stringify(room));
    assert.notEqual(parseServerFrame(JSON.stringify({ type: "message", room, data: 1 })), null, JSON.stringify(room));
  }
  for (const room of vectors.rooms.invalid) {
    assert.equal(isSlug(room), false, JSON.stringify(room));
    for (const type of ["message", "connection_message"]) {
      assert.equal(parseServerFrame(JSON.stringify({ type, room, data: 1 })), null, `${type} to ${JSON.stringify(room)}`);
    }
  }
});

test("the page asks a token for the rooms the server grants by token, and lists members where it sends them", () => {
  for (const kind of vectors.room_kinds) {
    assert.deepEqual([protocol.needsToken(kind.room), protocol.isPresenceRoom(kind.room)], [kind.token, kind.presence], kind.room);
  }
});

test("every server frame rrr/protocol.py builds is parsed unchanged", () => {
  for (const vector of vectors.server.valid) {
    assert.deepEqual(parseServerFrame(vector.text), JSON.parse(vector.text), vector.name);
  }
});

test("server frames the server never sends are dropped", () => {
  for (const vector of vectors.server.invalid) {
    assert.equal(parseServerFrame(vector.text), null, vector.name);
  }
});

test("every error code the server answers a client frame with reaches the page as an error frame", () => {
  for (const vector of vectors.client.invalid) {
    const { code, ...where } = vector.error;
    const frame = { type: "error", code, reason: vector.name, ...where };
    assert.deepEqual(parseServerFrame(JSON.stringify(frame)), frame, vector.name);
  }
});

test("an SSE stream's session event is read as the server builds it, and a bad one refused", () => {
  for (const vector of vectors.sessions.events) {
    assert.equal(sessionOf(vector.text), vector.session, vector.name);
  }
});

test("long-polling answers are taken as the server numbers them: each frame once, none below 1", () => {
  for (const vector of vectors.sessions.polls) {
    const body = JSON.parse(vector.text);
    const taken = vector.taken && "session" in vector.taken ? pollOpening(body) : pollBatch(body, vector.after);
    assert.deepEqual(taken, vector.taken, vector.name);
  }
});

test("the page orders user ids as the server cuts member pages (code points, not UTF-16 units)", () => {
  const order = vectors.member_order;
  assert.deepEqual([...order].reverse().sort(protocol.compareUsers), order);
  for (let i = 1; i < order.length; i++) {
    assert.ok(protocol.compareUsers(order[i - 1], order[i]) < 0, `${JSON.stringify(order[i - 1])} < ${JSON.stringify(order[i])}`);
    assert.equal(protocol.compareUsers(order[i], order[i]), 0);
  }
  const members = Object.fromEntries(order.slice(1).map((user) => [user, { info: null }]));
  assert.equal(protocol.lastUser(members), order.at(-1));
});
