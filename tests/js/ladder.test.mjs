// The transport ladder's rules (static/js/ladder.js): which wire the socket owner tries, when it
// moves down, where it starts, and when it moves up: `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import { Ladder, MEMORY_TTL_MS, UPGRADE_EVERY_MS, endKind, rememberedStart, upgradeDelay } from "../../static/js/ladder.js";

const NOW = 1_700_000_000_000;
const refused = { code: 1006, opened: false, heard: false };
const middlebox = { code: 1006, opened: true, heard: false };
const silent = { code: 1006, opened: true, heard: false, silent: true };
const dropped = { code: 1006, opened: true, heard: true };

/** A ladder on `rung` (moved there the way the owner would). */
function ladderOn(rung, allowed = ["websocket", "sse", "poll"]) {
  const ladder = new Ladder(allowed);
  ladder.begin({ transport: rung, at: NOW }, NOW);
  assert.equal(ladder.current, rung);
  return ladder;
}

test("a WebSocket that cannot open twice in a row moves to SSE; once is not enough", () => {
  const ladder = new Ladder();
  assert.equal(ladder.begin(null, NOW), "websocket");
  assert.deepEqual(ladder.ended(refused), { kind: "open-failed", moved: false });
  assert.equal(ladder.current, "websocket");
  assert.deepEqual(ladder.ended(refused), { kind: "open-failed", moved: true });
  assert.equal(ladder.current, "sse");
});

test("the failures must be in a row: a wire that opened in between starts the count again", () => {
  for (const between of [dropped, { code: 1001, opened: true, heard: false }]) {
    const ladder = new Ladder();
    ladder.ended(refused);
    ladder.ended(between);
    assert.equal(ladder.ended(refused).moved, false, JSON.stringify(between));
    assert.equal(ladder.current, "websocket");
  }
  const ladder = new Ladder();
  ladder.ended(refused);
  ladder.worked(NOW);
  ladder.networkChanged(); // so that the rung is not "proven" either
  assert.equal(ladder.ended(refused).moved, false);
});

test("a WebSocket that opens and dies before its first frame (a middlebox) moves down at once", () => {
  const ladder = new Ladder();
  assert.deepEqual(ladder.ended(middlebox), { kind: "middlebox", moved: true });
  assert.equal(ladder.current, "sse");
});

test("a close the server chose before the first frame says nothing about the path", () => {
  for (const code of [1001, 1008, 1011, 1012, 1013, 4001, 4999]) {
    const ladder = new Ladder();
    assert.deepEqual(ladder.ended({ code, opened: true, heard: false }), { kind: "server", moved: false }, String(code));
    assert.equal(ladder.current, "websocket");
  }
  for (const code of [1000, 1002, 1006]) assert.equal(endKind({ code, opened: true }), "middlebox", String(code));
});

test("an SSE stream with no event (not even the session event) within 5 s moves to long-polling at once", () => {
  const ladder = ladderOn("sse");
  assert.deepEqual(ladder.ended(silent), { kind: "silent", moved: true });
  assert.equal(ladder.current, "poll");
  // Also when the proxy held back the response headers too (the stream never "opened").
  const held = ladderOn("sse");
  assert.equal(held.ended({ ...silent, opened: false }).moved, true);
});

test("a drop after the first frame never moves: that is a network drop or a server restart", () => {
  const ladder = new Ladder();
  for (let i = 0; i < 5; i++) assert.deepEqual(ladder.ended(dropped), { kind: "drop", moved: false });
  assert.equal(ladder.current, "websocket");
});

test("a rung that worked on this network is not left for failures to open (an outage), until the network changes", () => {
  const ladder = new Ladder();
  ladder.worked(NOW);
  ladder.ended(dropped);
  for (let i = 0; i < 6; i++) assert.equal(ladder.ended(refused).moved, false, `failure ${i + 1}`);
  assert.equal(ladder.current, "websocket");
  // A middlebox still moves it: the path changed, not the server.
  assert.equal(ladder.ended(middlebox).moved, true);

  const moved = new Ladder();
  moved.worked(NOW);
  moved.networkChanged();
  moved.ended(refused);
  assert.equal(moved.ended(refused).moved, true, "on another network it proves nothing");
});

test("at the bottom, failures to open go round to the top (nothing opens: an outage); silence and middleboxes stay", () => {
  const ladder = ladderOn("poll");
  ladder.ended(refused);
  assert.equal(ladder.ended(refused).moved, true);
  assert.equal(ladder.current, "websocket");

  const sseBottom = ladderOn("sse", ["websocket", "sse"]);
  assert.equal(sseBottom.ended(silent).moved, false);
  assert.equal(sseBottom.current, "sse");

  const only = new Ladder(["sse"]);
  only.ended(refused);
  assert.equal(only.ended(refused).moved, false);
  assert.equal(only.current, "sse");
});

test("the page's transports restrict and order the ladder", () => {
  const ladder = new Ladder(["poll", "websocket"]);
  assert.equal(ladder.begin(null, NOW), "poll");
  assert.equal(ladder.top, "poll");
  ladder.ended(refused);
  ladder.ended(refused);
  assert.equal(ladder.current, "websocket");
  assert.equal(new Ladder(["sse", "poll"]).begin({ transport: "websocket", at: NOW }, NOW), "sse", "a remembered transport the page does not allow");
});

test("the transport that worked is where the next start begins, for 24 hours", () => {
  const ladder = new Ladder();
  ladder.ended(refused);
  ladder.ended(refused);
  const record = ladder.worked(NOW);
  assert.deepEqual(record, { transport: "sse", at: NOW });
  assert.equal(new Ladder().begin(record, NOW + MEMORY_TTL_MS - 1), "sse");
  assert.equal(new Ladder().begin(record, NOW + MEMORY_TTL_MS), "websocket", "forgotten after 24 h");
  assert.equal(rememberedStart(["websocket", "sse", "poll"], { transport: "sse", at: NOW + 60_000 }, NOW), "websocket",
    "a record from the future (the clock went back) is not trusted");
  for (const junk of [null, "sse", 7, {}, { transport: "sse" }, { transport: "sse", at: "1" }, { transport: "pigeon", at: NOW }]) {
    assert.equal(rememberedStart(["websocket", "sse", "poll"], junk, NOW), "websocket", JSON.stringify(junk));
  }
});

test("below the top the ladder asks for background tries every few minutes; one that works moves to the top", () => {
  const ladder = new Ladder();
  assert.equal(ladder.belowTop, false);
  ladder.ended(middlebox);
  assert.equal(ladder.belowTop, true);
  ladder.ended(refused); // one failure to open on SSE meanwhile
  ladder.upgraded();
  assert.equal(ladder.current, "websocket");
  assert.equal(ladder.belowTop, false);
  // Its failure count starts again: one refusal after moving up does not send it back down.
  assert.equal(ladder.ended(refused).moved, false);

  const delays = [0, 0.5, 0.999999].map((r) => upgradeDelay(() => r));
  assert.deepEqual(delays, [UPGRADE_EVERY_MS * 0.75, UPGRADE_EVERY_MS, Math.floor(UPGRADE_EVERY_MS * 1.25 - 0.5)]);
  assert.ok(delays[0] >= 60_000 && delays[2] <= 10 * 60_000, "every few minutes");
});
