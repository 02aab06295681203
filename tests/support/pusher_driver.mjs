// Real Pusher SDKs driven by a test: pusher-js 8 clients (Node) and the `pusher` Node server SDK,
// unchanged from the registry. Commands arrive as JSON lines on stdin; everything the clients see
// goes out as JSON lines on stdout (tests/support/pusher_js.py reads them).
//
//   {"op": "connect", "id": "a", "key": ..., "port": ..., "user": {"user_id": ..., "user_info": ...}?,
//    "authSecret": <sign with this secret instead>?, "presenceFromSignin": <no channel_data>?}
//   {"op": "subscribe" | "unsubscribe", "id": "a", "channel": "..."}
//   {"op": "trigger", "id": "a", "channel": "...", "event": "client-...", "data": ...}
//   {"op": "signin", "id": "a"}   {"op": "disconnect", "id": "a"}
//   {"op": "server", "call": "trigger" | "get", "args": [...], "tag": "..."}   (the Node server SDK)
//
// Channel authorization and user authentication are made by the Node server SDK itself
// (authorizeChannel, authenticateUser) in pusher-js's customHandler, with the app's secret.
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const PusherJS = require("pusher-js");
const PusherServer = require("pusher");

const [appId, key, secret, port] = process.argv.slice(2);
// The encryption master key lets the SDK authorize private-encrypted- channels and encrypt what it
// triggers there; rrr only ever relays the ciphertext.
const encryptionMasterKeyBase64 = Buffer.alloc(32, "k").toString("base64");
const server = new PusherServer({
  appId, key, secret, host: "127.0.0.1", port: Number(port), useTLS: false, encryptionMasterKeyBase64,
});
const clients = new Map();

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function connect({ id, key: clientKey, port: wsPort, user, authSecret, presenceFromSignin }) {
  // A wrong secret signs what a forger would: the server must refuse it.
  const signer = authSecret
    ? new PusherServer({
      appId, key, secret: authSecret, host: "127.0.0.1", port: Number(port), useTLS: false, encryptionMasterKeyBase64,
    })
    : server;
  const pusher = new PusherJS(clientKey ?? key, {
    wsHost: "127.0.0.1",
    wsPort: Number(wsPort ?? port),
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "x",
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          // presenceFromSignin: no channel_data, so the server takes the signed-in user.
          const data = channelName.startsWith("presence-") && !presenceFromSignin ? user : undefined;
          callback(null, signer.authorizeChannel(socketId, channelName, data));
        } catch (e) {
          callback(e, null);
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        try {
          callback(null, signer.authenticateUser(socketId, { id: String(user.user_id), user_info: user.user_info }));
        } catch (e) {
          callback(e, null);
        }
      },
    },
  });
  pusher.connection.bind("state_change", ({ previous, current }) =>
    out({ id, kind: "state", previous, current, socket_id: pusher.connection.socket_id ?? null }));
  pusher.connection.bind("error", (err) => out({ id, kind: "error", error: err?.data ?? err?.error?.data ?? String(err?.type) }));
  // Every frame as pusher-js decoded it (a client event's `user_id` shows here: bind_global drops it).
  pusher.connection.bind("message", (msg) =>
    out({ id, kind: "frame", event: msg.event, channel: msg.channel ?? null, user_id: msg.user_id ?? null }));
  pusher.user.bind_global((event, data) => out({ id, kind: "user_event", event, data }));
  clients.set(id, pusher);
  // The close code the server sent, as pusher-js got it.
  const sock = () => pusher.connection.connection?.transport?.socket;
  pusher.connection.bind("connected", () => {
    const ws = sock();
    if (ws && !ws.__watched) {
      ws.__watched = true;
      ws.addEventListener("close", (ev) => out({ id, kind: "closed", code: ev.code, reason: ev.reason }));
    }
  });
}

function subscribe({ id, channel }) {
  const ch = clients.get(id).subscribe(channel);
  ch.bind_global((event, data) => {
    let members;
    if (event === "pusher:subscription_succeeded" && channel.startsWith("presence-")) {
      members = [];
      ch.members.each((m) => members.push({ id: m.id, info: m.info }));
      members.sort((a, b) => String(a.id).localeCompare(String(b.id)));
      data = { me: ch.members.me, count: ch.members.count };
    }
    out({ id, kind: "event", channel, event, data, members });
  });
}

async function serverCall({ call, args, tag }) {
  try {
    const res = await server[call](...args);
    const body = await res.text();
    out({ kind: "server", tag, status: res.status, body });
  } catch (e) {
    out({ kind: "server", tag, status: e.status ?? null, body: e.body ?? String(e) });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  try {
    switch (cmd.op) {
      case "connect": connect(cmd); break;
      case "subscribe": subscribe(cmd); break;
      case "unsubscribe": clients.get(cmd.id).unsubscribe(cmd.channel); break;
      case "trigger": out({ id: cmd.id, kind: "triggered", ok: clients.get(cmd.id).channel(cmd.channel).trigger(cmd.event, cmd.data) }); break;
      case "signin": clients.get(cmd.id).signin(); break;
      case "disconnect": clients.get(cmd.id).disconnect(); break;
      case "server": serverCall(cmd); break;
      default: out({ kind: "bad_command", cmd });
    }
  } catch (e) {
    out({ kind: "driver_error", cmd, error: String(e) });
  }
});
rl.on("close", () => process.exit(0));
out({ kind: "ready" });
