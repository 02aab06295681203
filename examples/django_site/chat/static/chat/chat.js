// The chat page (docs/guides/chat.md), built only on rrr's public pieces:
// - the open room is a presence room: who is here (onPresence), typing (whisper / onWhisper), and its
//   messages (onMessage), which Django publishes with publish_on_commit after saving them;
// - presence-site: who is online on the site at all (the dots in "People");
// - private-user-<pk>: this user's unread counts, which Django keeps from rrr's webhooks.
// A reload renders the room from Django's database; a dropped connection is bridged by rrr's history
// (the library resubscribes with `since` and hands each missed message over once, in order).
import { connect } from "rrr/django";

const $ = (id) => document.getElementById(id);
const config = JSON.parse($("chat-config").textContent);
const csrf = document.querySelector("#send [name=csrfmiddlewaretoken]").value;
const rt = connect();

// -- messages -------------------------------------------------------------------------------------

let lastId = config.lastId;
const shown = new Set([...document.querySelectorAll("#messages li")].map((li) => Number(li.dataset.id)));

function show(message) {
  if (message?.type !== "chat" || message.room !== config.room || shown.has(message.id)) return;
  shown.add(message.id);
  lastId = Math.max(lastId, message.id);
  const li = document.createElement("li");
  li.dataset.id = String(message.id);
  if (message.author === config.me) li.className = "mine";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.name;
  const time = document.createElement("time");
  time.dateTime = message.at;
  time.textContent = message.at.slice(11, 16); // UTC, as the server renders it
  const text = document.createElement("p");
  text.textContent = message.text;
  li.append(who, " ", time, text);
  // In id order, whichever way it came (live, or caught up from Django).
  const list = $("messages");
  const after = [...list.children].find((other) => Number(other.dataset.id) > message.id);
  list.insertBefore(li, after ?? null);
  if (!after) list.scrollTop = list.scrollHeight;
  typingStopped(message.author);
}

// What Django saved after the page was rendered but before the subscription was live (or what rrr
// could not recover after a long drop): asked of the messages view, and shown once by id.
async function catchUp() {
  for (;;) {
    const response = await fetch(`${config.messagesUrl}?after=${lastId}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const { messages, more } = await response.json();
    messages.forEach(show);
    if (!more) return;
  }
}

// -- the room: presence, typing, messages ---------------------------------------------------------

const typists = new Map(); // user id → [name, timer]

function renderTyping() {
  const names = [...typists.values()].map(([name]) => name);
  $("typing").textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.join(" and ")} are typing…`;
  $("typing").dataset.users = [...typists.keys()].join(",");
}

function typingStopped(user) {
  const entry = typists.get(user);
  if (!entry) return;
  clearTimeout(entry[1]);
  typists.delete(user);
  renderTyping();
}

function onWhisper(event, data, user) {
  if (event !== "client-typing" || !user || user === config.me) return; // my own other tabs: not news
  const entry = typists.get(user);
  if (entry) clearTimeout(entry[1]);
  if (data?.on !== true) return typingStopped(user);
  // The name rrr's member list gives that user id (from its token's info), not one the whisper claims.
  const name = roomMembers[user]?.info?.name ?? user;
  // A typist who went quiet (or whose tab closed) stops showing after 4 s without a word.
  typists.set(user, [name, setTimeout(() => typingStopped(user), 4000)]);
  renderTyping();
}

function onError({ code, reason }) {
  if (code === "signed_out" || code === "no_token") $("signed-out").hidden = false;
  console.warn(`rrr: ${code}: ${reason}`);
}

function onState({ status, sharing, transport }) {
  const el = $("live-status");
  el.dataset.status = status;
  el.textContent = status === "open" ? `live (${sharing} over ${transport})` : status;
  $("retry-now").hidden = status !== "reconnecting" && status !== "offline";
}
$("retry-now").addEventListener("click", () => rt.retryNow());

let roomMembers = {};

function renderMembers(members) {
  roomMembers = members;
  const entries = Object.entries(members).map(([id, m]) => [id, m?.info?.name ?? id]);
  entries.sort((a, b) => a[1].localeCompare(b[1]));
  const el = $("members");
  el.replaceChildren();
  entries.forEach(([id, name], i) => {
    const span = document.createElement("span");
    span.className = "member";
    span.dataset.user = name;
    span.textContent = id === config.me ? `${name} (you)` : name;
    el.append(...(i ? [", ", span] : [span]));
  });
  if (!entries.length) el.textContent = "nobody";
}

const room = rt.room(config.room, {
  onMessage: (data) => show(data),
  onReset: () => {
    $("history-reset").hidden = false;
    catchUp();
  },
  onPresence: ({ members }) => renderMembers(members),
  onWhisper,
  onState,
  onError,
});

// Once rrr has said `subscribed` (room.position() knows where the room stands), every later message
// reaches this page live: ask Django for what came between the render and then. (A server with
// history off never gives a position: then the page asks after 30 s all the same.)
(function caughtUpOnceLive(tries = 0) {
  if (room.position() || tries >= 300) catchUp();
  else setTimeout(() => caughtUpOnceLive(tries + 1), 100);
})();

// -- who is online on the site, and unread counts -------------------------------------------------

rt.room("presence-site", {
  onPresence: ({ members }) => {
    for (const li of document.querySelectorAll("#people li")) {
      const online = Object.hasOwn(members, li.dataset.userId);
      li.querySelector(".dot").classList.toggle("online", online);
      li.querySelector(".dot").title = online ? "online" : "offline";
      li.dataset.online = String(online);
    }
  },
  onError,
});

rt.room(`private-user-${config.me}`, {
  onMessage: (data) => {
    if (data?.type !== "unread" || typeof data.count !== "number") return;
    const badge = document.querySelector(`.unread[data-room="${CSS.escape(String(data.room))}"]`);
    if (!badge) return;
    const count = data.room === config.room ? 0 : data.count; // the open room is being read
    badge.textContent = String(count);
    badge.hidden = count === 0;
  },
  onError,
});

// -- sending and typing ---------------------------------------------------------------------------

let typingSaid = 0;
$("text").addEventListener("input", () => {
  // At most one whisper per 1.5 s while typing (rrr allows 10 a second per socket), and one when cleared.
  const typing = $("text").value.trim() !== "";
  const now = Date.now();
  if (typing && now - typingSaid < 1500) return;
  typingSaid = typing ? now : 0;
  room.whisper("client-typing", { on: typing });
});

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text) return;
  const error = $("send-error");
  try {
    const response = await fetch(config.sendUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      body: new URLSearchParams({ text }),
    });
    if (!response.ok) throw new Error(`the site answered ${response.status}`);
    error.hidden = true;
    if (input.value.trim() === text) input.value = "";
    typingSaid = 0;
    room.whisper("client-typing", { on: false });
  } catch (e) {
    // Kept in the box, to send again.
    error.textContent = `Not sent (${e.message}); try again.`;
    error.hidden = false;
  }
});
