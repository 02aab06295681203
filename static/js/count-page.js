/**
 * The count page (`/count/<slug>/`): live browsers and tabs in one room, the
 * connection's state (how it is shared, which transport carries it), extra subscriptions to watch the numbers move, and the
 * room's messages; in a presence room (`presence-…`) who is here. Everything from
 * the network is rendered with textContent.
 */
import { applyPresenceDiff, memberName, needsToken } from "./protocol.js";
import { connect } from "./rrr.js";

const MAX_MESSAGES = 50;
const MAX_EXTRAS = 20;

const $ = (id) => document.getElementById(id);
const main = document.querySelector("main.room");
const slug = main.dataset.slug;

const SHARING_NAMES = {
  sharedworker: "a SharedWorker",
  leader: "a leader tab",
  direct: "this tab's own socket",
};
const TRANSPORT_NAMES = { websocket: "WebSocket", sse: "SSE", poll: "long-polling" };

/** "just now", "12 s ago", "3 min ago"… for a unix time in seconds. */
function ago(unixSeconds, now = Date.now()) {
  // Clamp: the server's clock may run slightly ahead of ours.
  const s = Math.max(0, Math.round(now / 1000 - unixSeconds));
  if (s < 2) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(unixSeconds * 1000).toLocaleString();
}

/**
 * Human text for the socket state. It goes into a live region (role=status), so it depends on the
 * state only: the seconds until the next try are in retryText, outside the live region.
 */
function stateText(state) {
  switch (state.status) {
    case "open":
      // "Connected via a SharedWorker over SSE": how this browser shares it, then the wire.
      return `Connected via ${SHARING_NAMES[state.sharing] ?? state.sharing} over ${TRANSPORT_NAMES[state.transport] ?? state.transport}`;
    case "reconnecting":
      return "Connection lost, reconnecting…";
    case "offline":
      return "Offline: waiting for the network";
    default:
      return "Connecting…";
  }
}

/** The countdown to the next try, refreshed every second (not announced). */
function retryText(state, now = Date.now()) {
  if (state?.status !== "reconnecting" || typeof state.retryAt !== "number") return "";
  const s = Math.max(0, Math.ceil((state.retryAt - now) / 1000));
  return s > 0 ? `(next try in ${s} s)` : "";
}

/** Write text only when it differs: every write to a live region may be read out again. */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

let lastUpdated = null;
let linkState = null;
/** The last text this page sent, until it comes back or the socket owner says it did not go (`not_connected`). */
let unsent = null;

function renderClock() {
  const updated = $("updated");
  if (lastUpdated === null) {
    updated.textContent = "not yet";
  } else {
    updated.textContent = ago(lastUpdated);
    const when = new Date(lastUpdated * 1000);
    updated.dateTime = when.toISOString();
    updated.title = when.toLocaleString();
  }
  if (linkState) {
    setText($("state"), stateText(linkState));
    setText($("retry-in"), retryText(linkState));
  }
}

/**
 * Take a control away (disable or hide it). If it had the focus, hand the focus to `next`
 * instead of letting it drop to <body>, where a keyboard or screen-reader user would be lost.
 */
function withdraw(control, next, hide = null) {
  const had = document.activeElement === control;
  if (hide) hide.hidden = true;
  else control.disabled = true;
  if (had) next.focus();
}

/** "1 browser", "2 browsers": the noun for n (English: singular for exactly 1). */
const plural = (n, one, many) => (n === 1 ? one : many);

function showCount({ connections, tabs, updated }) {
  $("count").textContent = String(connections);
  $("tabs").textContent = String(tabs);
  $("count").classList.remove("pending");
  $("tabs").classList.remove("pending");
  $("count-label").textContent = plural(connections, "browser connected", "browsers connected");
  $("tabs-label").textContent = plural(tabs, "tab open", "tabs open");
  document.title = `${connections} · ${slug} · Reduce, Reuse, Recycle`;
  lastUpdated = typeof updated === "number" ? updated : null;
  renderClock();
}

function showState(state) {
  linkState = state;
  $("state").dataset.status = state.status;
  main.dataset.status = state.status;
  // Numbers from before a drop are only the last known ones until the link is open again
  // (also while it is connecting between two tries; before the first count there are none).
  const stale = state.status !== "open" && !$("count").classList.contains("pending");
  for (const number of [$("count"), $("tabs")]) {
    number.classList.toggle("stale", stale);
    if (stale) number.title = "Last known number; not live until reconnected";
    else number.removeAttribute("title");
  }
  // "Retry now" while the socket is down and waiting (for its next try, or for the network).
  const waiting = state.status === "reconnecting" || state.status === "offline";
  const retry = $("retry");
  if (waiting) retry.parentElement.hidden = false;
  else withdraw(retry, $("state"), retry.parentElement);
  renderClock();
}

/** Add one entry to the message panel, newest first. */
function addMessage(text, kind = "message") {
  const item = document.createElement("li");
  item.className = kind;
  const time = document.createElement("time");
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString();
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(time, body);
  const list = $("messages");
  list.prepend(item);
  while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
}

// ---- token (private and presence rooms) -----------------------------------------
// For the demo the page takes a token from its URL fragment, `/count/presence-x/#token=<jwt>`:
// a fragment never reaches a server, a log or a Referer (never put a token in the query
// string). It is taken out of the address bar at once (so the share link never carries it) and
// kept in this tab's sessionStorage for reloads. A real application's getToken would fetch one
// from its own backend; a script that defines window.rrrGetToken before this module runs
// (the browser tests do) replaces the fragment.

const TOKEN_KEY = "rrr-token";

function takeFragmentToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    memoryToken = token; // storage disabled
  }
}

let memoryToken = null;
takeFragmentToken();

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? memoryToken;
  } catch {
    return memoryToken;
  }
}

async function getToken() {
  if (typeof window.rrrGetToken === "function") return window.rrrGetToken();
  const token = storedToken();
  if (token) return token;
  throw new Error("this page has no token: open it with #token=<jwt>");
}

function showIdentity({ user, exp }) {
  const identity = $("identity");
  identity.hidden = false;
  identity.dataset.user = user;
  identity.dataset.exp = String(exp);
  identity.textContent = `Signed in as ${user} until ${new Date(exp * 1000).toLocaleTimeString()}`;
}

// ---- members (presence rooms) ---------------------------------------------------------

/** Every member, once "Show everyone" listed them (kept current by the diffs); null: the first page is shown. */
let everyone = null;

/** onPresence: the first page (ascending user ids) and how many there are in all. */
function showPresence({ members, total, more }, diff) {
  if (diff === null) everyone = null; // a new first page (a reconnect): start from it
  else if (everyone !== null) everyone = applyPresenceDiff(everyone, diff);
  const shown = everyone ?? members;
  listMembers(shown);
  $("users").textContent = String(everyone !== null ? Object.keys(everyone).length : total);
  const rest = total - Object.keys(members).length;
  const box = $("more-members");
  if (box) {
    box.hidden = everyone !== null || !more || rest <= 0;
    $("more-count").textContent = `and ${rest} more`;
  }
}

function listMembers(members) {
  const list = $("members");
  if (!list) return;
  const names = Object.entries(members)
    .map(([user, entry]) => ({ user, name: memberName(user, entry) }))
    .sort((a, b) => a.name.localeCompare(b.name) || a.user.localeCompare(b.user));
  list.replaceChildren(
    ...names.map(({ user, name }) => {
      const item = document.createElement("li");
      item.dataset.user = user;
      item.textContent = name;
      return item;
    }),
  );
}

const NOBODY = { members: {}, total: 0, more: false };

const hasToken = typeof window.rrrGetToken === "function" || Boolean(storedToken());
const rt = connect(hasToken || needsToken(slug) ? { getToken, onAuth: showIdentity } : {});
const room = rt.room(slug, {
  onCount: showCount,
  onState: showState,
  onMessage: (data) => {
    if (data === unsent) unsent = null;
    addMessage(typeof data === "string" ? data : JSON.stringify(data));
  },
  onError: ({ code, reason }) => {
    // Not sent, or refused by the server on its own (SSE and long-polling): the text goes back in the box.
    if (code === "not_connected" || code === "refused") restoreUnsent();
    if (code === "forbidden" || code === "token_expired" || code === "no_token") showPresence(NOBODY, null);
    addMessage(`${reason} (${code})`, "notice");
  },
  onPresence: showPresence,
  // The room's history could not fill a gap (it was lost, or we were away too long): say so.
  onReset: () => addMessage("Some messages were missed while disconnected and could not be recovered.", "notice"),
});
setInterval(renderClock, 1000);

// A presence room bigger than one page: its other members, a page at a time, on demand.
$("all-members")?.addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  try {
    everyone = await room.members().all();
    showPresence({ members: everyone, total: Object.keys(everyone).length, more: false }, {});
  } catch (err) {
    addMessage(`${err.reason ?? err.message} (${err.code ?? "error"})`, "notice");
  } finally {
    button.disabled = false;
  }
});
$("retry").addEventListener("click", () => rt.retryNow());

// ---- share link ---------------------------------------------------------------

const link = $("link");
link.value = location.href; // the fragment's token was removed above
/** A phone or tablet: no keyboard shortcut to tell people about. */
const touch = () => matchMedia("(pointer: coarse)").matches || navigator.maxTouchPoints > 0;

/** Copy the link: the async clipboard, else the selection and the copy command, else the share sheet. */
async function copyLink() {
  const url = link.value;
  try {
    await navigator.clipboard.writeText(url);
    return "Copied!";
  } catch {
    // No async clipboard (not a secure context, no permission, an older browser): copy the selection,
    // which works in a click on phones too (iOS needs the explicit range).
    link.focus();
    link.setSelectionRange(0, url.length);
    try {
      if (document.execCommand("copy")) return "Copied!";
    } catch {
      // fall through
    }
  }
  if (touch() && typeof navigator.share === "function") {
    try {
      await navigator.share({ title: document.title, url });
      return "Shared";
    } catch {
      // cancelled, or not allowed: the link stays selected
    }
  }
  link.focus();
  link.setSelectionRange(0, url.length);
  return touch() ? "Link selected: copy it" : navigator.platform.startsWith("Mac") ? "Press ⌘C" : "Press Ctrl+C";
}

$("copy").addEventListener("click", async () => {
  const button = $("copy");
  button.textContent = await copyLink();
  setTimeout(() => (button.textContent = "Copy link"), 2000);
});

// ---- extra subscriptions (the talk's iframes) -----------------------------------

const extras = [];
function renderExtras() {
  // A button that disables itself hands the focus to the other one.
  if (extras.length === 0) withdraw($("remove"), $("add"));
  else $("remove").disabled = false;
  if (extras.length >= MAX_EXTRAS) withdraw($("add"), $("remove"));
  else $("add").disabled = false;
  $("extras-note").textContent =
    extras.length === 0
      ? "Each extra counts as one more tab, without opening one."
      : `This page holds ${extras.length + 1} subscriptions (${extras.length} extra).`;
}
$("add").addEventListener("click", () => {
  extras.push(rt.room(slug));
  renderExtras();
});
$("remove").addEventListener("click", () => {
  extras.pop()?.leave();
  renderExtras();
});

// ---- publishing (only when the server allows it) ------------------------------------

$("publish")?.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("publish-text");
  const text = input.value.trim();
  if (!text) return;
  if (linkState?.status !== "open") {
    // Not sent: the text stays in the box, to send once connected.
    addMessage("Not connected: your message was not sent. It is still in the box.", "notice");
    return;
  }
  room.publish(text);
  unsent = text;
  input.value = "";
});

function restoreUnsent() {
  const input = $("publish-text");
  if (input && unsent !== null && !input.value) input.value = unsent;
  unsent = null;
}
