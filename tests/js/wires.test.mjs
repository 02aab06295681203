// The SSE and long-polling wires (static/js/wires.js), and the socket owner over them, against a
// real HTTP server speaking the contract over loopback (contract-server.mjs), with Node's own
// fetch and EventSource: `node --test tests/js/`. Node 20 has EventSource and WebSocket only
// behind flags, so this file runs itself again with them when they are missing.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const flags = [
  ...(typeof EventSource === "undefined" ? ["--experimental-eventsource"] : []),
  ...(typeof WebSocket === "undefined" ? ["--experimental-websocket"] : []),
];

if (flags.length > 0) {
  test(`the wire tests, run again with ${flags.join(" ")}`, (t) => {
    // Without the runner's NODE_TEST_CONTEXT, the child reports in TAP on its stdout.
    const { NODE_TEST_CONTEXT, ...env } = process.env;
    const run = spawnSync(process.execPath, [...flags, "--test", "--test-reporter=tap", fileURLToPath(import.meta.url)], {
      encoding: "utf8", timeout: 120_000, env,
    });
    const summary = run.stdout.split("\n").filter((line) => /^(not ok|# (pass|fail))/.test(line));
    assert.equal(run.status, 0, `${summary.join("\n")}\n${run.stdout.slice(-4000)}\n${run.stderr.slice(-2000)}`);
    assert.ok(summary.includes("# fail 0") && summary.some((line) => /^# pass [1-9]/.test(line)), summary.join("\n"));
    t.diagnostic(summary.join(", "));
  });
} else {
  await import("./wires-cases.mjs");
}
