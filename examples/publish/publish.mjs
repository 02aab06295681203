// Publish a message to an rrr room from Node (18 or later: fetch is built in), through rrr's HTTP
// API with the server key (rrr's --api-token). Nothing to install.
//
//   RRR_URL=http://127.0.0.1:8888 RRR_API_TOKEN=dev node publish.mjs hello '{"text": "hi"}' [event]
const [room, json, event] = process.argv.slice(2);
const base = process.env.RRR_URL ?? "http://127.0.0.1:8888";
if (!process.env.RRR_API_TOKEN) {
  // Else the header would say "Bearer undefined" and rrr would answer "wrong API token".
  console.error("set RRR_API_TOKEN to rrr's --api-token (the server key)");
  process.exit(1);
}
const query = event ? `?event=${encodeURIComponent(event)}` : "";
const response = await fetch(`${base}/api/rooms/${encodeURIComponent(room)}/messages${query}`, {
  method: "POST",
  headers: { Authorization: `Bearer ${process.env.RRR_API_TOKEN}`, "Content-Type": "application/json" },
  body: json,
});
const answer = await response.json().catch(() => ({}));
if (response.status === 202) {
  // Stored in the room's history (a page that was reconnecting recovers it) and sent to every socket.
  console.log(`published to ${answer.room}: offset ${answer.offset}, epoch ${answer.epoch}`);
} else if (response.status === 504) {
  // Redis took the call but no answer came (a timeout, a broken connection): it may have been delivered; do not retry blindly.
  console.error("outcome unknown:", answer.error);
  process.exitCode = 2;
} else {
  // 401/403: the server key; 400: not JSON; 413: over --max-message-size; 503: not delivered, retry.
  console.error(`refused with ${response.status}:`, answer.error);
  process.exitCode = 1;
}
