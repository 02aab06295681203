/**
 * Message shapes shared by the page, the SharedWorker and the leader tab.
 *
 * Two wires meet here:
 *  - the server wire (`/ws/`): JSON text frames, mirrored from `rrr/protocol.py`; the same
 *    frames travel over the fallback transports (`/sse/` events and `/poll/` batches down,
 *    one frame per POST up), whose few extra shapes are here too;
 *  - the tab link (page ⇄ socket owner): plain objects posted over a MessagePort,
 *    a BroadcastChannel or a direct call. Tabs forward server-shaped frames
 *    (subscribe, unsubscribe, publish) unchanged, wrapped in `{tab, msg}` so
 *    the owner knows whose subscription it is.
 *
 * Keeping both in one module means the worker and the page can never disagree
 * on a field name.
 */

/**
 * Bumped when the tab link changes, so an old SharedWorker or leader never
 * serves a new page: it is part of the worker URL (and so the worker's
 * identity) and of the leader's lock and channel names.
 */
export const LINK_VERSION = 6;

export const SLUG_RE = /^[A-Za-z0-9_\-=@,.;]{1,164}$/;

/**
 * A room name the server takes (`is_valid_slug` in rrr/protocol.py). A string first: the
 * RegExp alone would take `null`, `12` or `["lobby"]` as the text they turn into.
 */
export const isSlug = (value) => typeof value === "string" && SLUG_RE.test(value);

/** The client pings this often; the server answers with a pong. */
export const PING_INTERVAL_MS = 15_000;
/** A socket still handshaking after this long is given up (a blackholed or frozen server). */
export const CONNECT_TIMEOUT_MS = 10_000;
/** Tabs watched by heartbeat tell their socket owner they are alive this often… */
export const HEARTBEAT_MS = 2_000;
/**
 * …and a tab without a Web Lock is dropped after this much silence. A live tab
 * dropped this way (its timers throttled in the background) is told to attach
 * again on its next heartbeat.
 */
export const TAB_TIMEOUT_MS = 8_000;
/**
 * The owner says "alive" to its tabs every HEARTBEAT_MS. A tab that heard
 * nothing from it for OWNER_SILENCE_MS probes it (the owner answers a probe at
 * once, even where its timers are throttled); no answer within PROBE_TIMEOUT_MS
 * and the owner is taken for dead.
 */
export const OWNER_SILENCE_MS = 5_000;
export const PROBE_TIMEOUT_MS = 3_000;
/**
 * A new link whose owner has not said a word after this long (a worker that
 * hangs on start, a leader lock held by a hung tab, a worker script that failed
 * to load where Chromium did not fire `error` at this tab) is given up for the
 * next transport. Longer than the silence budget: a worker script may load slowly.
 */
export const OWNER_START_TIMEOUT_MS = 8_000;

/** A tab asked for a token that has not answered after this long is passed over for the next. */
export const TOKEN_TIMEOUT_MS = 10_000;
/** A token is refreshed once this share of its life (from the `authenticated` reply's exp) has passed. */
export const REFRESH_AT = 0.8;

/**
 * An SSE stream that has not delivered one event (not even its session event) this long after
 * it was started is behind a proxy that buffers it: the owner moves on to long-polling.
 */
export const SSE_SILENCE_MS = 5_000;

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30_000;

// ---- names --------------------------------------------------------------------
// Everything two tabs must agree on to share a connection carries the link version,
// the socket URL and the transports allowed: two deploys, two endpoints, or two
// pages that allow different transports on one origin never mix.

/** The wire transports, best first: `connect({transports})` picks and orders a subset. */
export const TRANSPORTS = Object.freeze(["websocket", "sse", "poll"]);

/**
 * A `transports` option made safe: a non-empty array of distinct known names, in the
 * page's order (undefined: all of them). Anything else is the page's mistake: TypeError.
 * @param {unknown} [value]
 * @returns {string[]}
 */
export function transportList(value = TRANSPORTS) {
  if (!Array.isArray(value) || value.length === 0) {
    throw new TypeError(`rrr: transports must be a non-empty array of ${TRANSPORTS.join(", ")}`);
  }
  for (const name of value) {
    if (!TRANSPORTS.includes(name)) throw new TypeError(`rrr: unknown transport: ${String(name)}`);
  }
  if (new Set(value).size !== value.length) throw new TypeError("rrr: a transport is named twice");
  return [...value];
}

/** What a shared name says about the endpoint: the socket URL, then the transports allowed. */
const endpointOf = (socketUrl, transports) => `${socketUrl} ${transportList(transports).join(",")}`;

/** Web Lock held by the tab that owns the connection in leader mode. */
export function leaderLockName(socketUrl, transports = TRANSPORTS) {
  return `rrr-leader/v${LINK_VERSION} ${endpointOf(socketUrl, transports)}`;
}

/** BroadcastChannel the leader and its followers talk on. */
export function channelName(socketUrl, transports = TRANSPORTS) {
  return `rrr/v${LINK_VERSION} ${endpointOf(socketUrl, transports)}`;
}

/**
 * The SharedWorker's script URL: the resolved `worker.js` (which keeps a `?v=`
 * the page's import map gave it) plus `link=<LINK_VERSION>`, so a page never
 * attaches to a worker started from another version's script.
 * @param {string|URL} scriptUrl
 */
export function workerScriptUrl(scriptUrl) {
  const url = new URL(scriptUrl);
  url.searchParams.set("link", String(LINK_VERSION));
  return url.href;
}

/** The link version a worker's own URL asks for (null when absent). */
export function linkVersionOfWorkerUrl(scriptUrl) {
  const value = new URL(scriptUrl).searchParams.get("link");
  return value === null ? null : Number(value);
}

/**
 * The link version a worker's name asks for (workerName; null for a name we did not write): a
 * bundled worker's URL is the bundler's and carries no `link=`, but its name always does.
 */
export function linkVersionOfWorkerName(name) {
  const match = /^rrr\/(\d+) /.exec(typeof name === "string" ? name : "");
  return match ? Number(match[1]) : null;
}

/**
 * SharedWorkers are matched by script URL and name. Putting the link version, the
 * socket URL and the transports in the name means tabs that differ in any of them
 * never share a worker, and the worker learns its endpoint without a handshake.
 */
export function workerName(socketUrl, transports = TRANSPORTS) {
  return `rrr/${LINK_VERSION} ${endpointOf(socketUrl, transports)}`;
}

/**
 * Inverse of workerName(): the socket URL and transports; a foreign name gives the
 * default URL and every transport.
 * @returns {{url: string, transports: string[]}}
 */
export function endpointFromWorkerName(name, loc = globalThis.location) {
  const prefix = `rrr/${LINK_VERSION} `;
  if (name.startsWith(prefix)) {
    const rest = name.slice(prefix.length);
    const at = rest.lastIndexOf(" ");
    try {
      if (at > 0) return { url: rest.slice(0, at), transports: transportList(rest.slice(at + 1).split(",")) };
    } catch {
      // a name of our prefix that we did not write: as foreign
    }
  }
  return { url: defaultSocketUrl(loc), transports: [...TRANSPORTS] };
}

/** The socket URL a worker's name carries (see endpointFromWorkerName). */
export function socketUrlFromWorkerName(name, loc = globalThis.location) {
  return endpointFromWorkerName(name, loc).url;
}

/** Each tab holds this lock while it is shown; its owner waits on it to learn when the tab is gone. */
export function tabLockName(tabId) {
  return `rrr-tab-${tabId}`;
}

/** `wss:` under https, `ws:` otherwise, always the page's own host. */
export function defaultSocketUrl(loc = globalThis.location) {
  const proto = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${loc.host}/ws/`;
}

/**
 * Where each transport of a `/ws/` endpoint lives: `/sse/` and `/poll/` beside it, over
 * http(s) on the same host (`wss://h/rt/ws/` → `https://h/rt/sse/`, `https://h/rt/poll/`).
 * @param {string} socketUrl
 * @returns {{websocket: string, sse: string, poll: string}}
 */
export function transportUrls(socketUrl) {
  const ws = new URL(socketUrl);
  const http = new URL(`${ws.protocol === "wss:" ? "https:" : "http:"}//${ws.host}${ws.pathname}`);
  return { websocket: ws.href, sse: new URL("../sse/", http).href, poll: new URL("../poll/", http).href };
}

/**
 * Where the library asks, after a wire failed to open, whether the server takes this page's Origin
 * (`GET /ws/origin`, beside the socket). A cross-origin fetch carries the Origin itself; a
 * same-origin GET carries none, so the page's origin also goes as `?origin=`.
 * @param {string} socketUrl
 * @param {string|undefined|null} pageOrigin
 */
export function originCheckUrl(socketUrl, pageOrigin) {
  const ws = new URL(socketUrl);
  const url = new URL(`${ws.protocol === "wss:" ? "https:" : "http:"}//${ws.host}${ws.pathname}`);
  const check = new URL("origin", url);
  if (typeof pageOrigin === "string" && pageOrigin && pageOrigin !== "null") check.searchParams.set("origin", pageOrigin);
  return check.href;
}

/**
 * The error to show a page whose Origin the server refuses, from the answer of `originCheckUrl`
 * (`{origin, allowed, option}`), or null when the Origin is allowed or the answer is not one.
 * @param {unknown} answer
 * @param {string} socketUrl
 * @returns {{type: "error", code: "origin_refused", reason: string}|null}
 */
export function originRefusal(answer, socketUrl) {
  if (!answer || typeof answer !== "object" || answer.allowed !== false) return null;
  const origin = typeof answer.origin === "string" ? answer.origin.slice(0, 300) : "this page's Origin";
  const option = typeof answer.option === "string" && /^--[a-z-]{1,40}$/.test(answer.option) ? answer.option : "--allowed-origins";
  const server = transportMemoryKey(socketUrl);
  return {
    type: "error",
    code: "origin_refused",
    reason:
      `rrr at ${server} refuses pages of ${origin}: start it with ${option} ${origin} ` +
      `(or behind a proxy, pass the Host through or use --xheaders)`,
  };
}

/** The key the transport that worked is remembered under: the service's origin. */
export function transportMemoryKey(socketUrl) {
  const { websocket } = transportUrls(socketUrl);
  const url = new URL(websocket);
  return `${url.protocol}//${url.host}`;
}

/**
 * A random id for tabs and subscriptions. Uses getRandomValues rather than
 * crypto.randomUUID because the latter is missing outside secure contexts,
 * which is exactly where the heartbeat fallback has to work.
 */
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Full-jitter exponential backoff: a uniform delay in [0, min(cap, base·2^attempt)].
 * Jitter spreads a whole audience reconnecting after a server restart.
 *
 * @param {number} attempt 0 for the first retry
 * @param {() => number} [random] injectable for tests
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

// ---- client → server frames -------------------------------------------------

/**
 * @param {string} room
 * @param {string} sub
 * @param {Position|null} [since] where this subscription's copy of the room ends: the server
 *   replays what came after it (see `since` below)
 */
export const subscribeFrame = (room, sub, since = null) => {
  const at = sinceOf(since);
  return at ? { type: "subscribe", room, sub, since: at } : { type: "subscribe", room, sub };
};
export const unsubscribeFrame = (room, sub) => ({ type: "unsubscribe", room, sub });
/**
 * @param {string} room
 * @param {unknown} data
 * @param {string|null} [event] the name Pusher clients hear it as (default `message`), also on
 *   every subscriber's `message` frame
 */
export const publishFrame = (room, data, event = null) =>
  typeof event === "string" ? { type: "publish", room, event, data } : { type: "publish", room, data };
/**
 * An event for the room's other subscribers now (typing indicators, cursors): never stored, never
 * back to this socket; private and presence rooms only, at most 10 a second.
 * @param {string} room
 * @param {string} event
 * @param {unknown} data
 */
export const whisperFrame = (room, event, data) => ({ type: "whisper", room, event, data });
export const pingFrame = () => ({ type: "ping" });
/**
 * The `transport` field says how the browser shares its connection (the server counts
 * connections by it, `rrr_sockets_by_transport`), not which wire carries it.
 * @param {"sharedworker"|"leader"|"direct"} sharing
 */
export const helloFrame = (sharing) => ({ type: "hello", transport: sharing });
export const authFrame = (token) => ({ type: "auth", token });
/** A presence subscription asks for the members after `after` ("" from the start); the answer is `presence` with its `sub`. */
export const membersFrame = (room, sub, after = "") => ({ type: "members", room, sub, after });

/** Rooms the server refuses without a granting token (`rrr/auth.py` needs_grant). */
export function needsToken(room) {
  return typeof room === "string" && (room.startsWith("private-") || room.startsWith("presence-"));
}

/** Presence rooms: the server sends member lists and diffs for them. */
export function isPresenceRoom(room) {
  return typeof room === "string" && room.startsWith("presence-");
}

/**
 * How long to wait before refreshing a token the server accepted until `exp`
 * (unix seconds), heard at `now` (ms): REFRESH_AT of the life left, never negative.
 * @param {number} exp
 * @param {number} now
 */
export function refreshDelay(exp, now) {
  return Math.max(0, Math.floor((exp * 1000 - now) * REFRESH_AT));
}

/**
 * A member map after one `presence_diff`: leaves first, then joins (a user who left
 * and came back within one coalescing interval is in both and stays). Pure: returns
 * a new object.
 * @param {Record<string, {info?: object}>} members
 * @param {{joins?: Record<string, {info?: object}>, leaves?: Record<string, unknown>}} diff
 */
export function applyPresenceDiff(members, diff) {
  const next = { ...members };
  for (const user of Object.keys(diff?.leaves ?? {})) delete next[user];
  for (const [user, entry] of Object.entries(diff?.joins ?? {})) next[user] = entry;
  return next;
}

// ---- presence rooms: pages of members --------------------------------------------
// The server sends a subscription the first page of a room's members (at most its
// --presence-list-max, in ascending user id order) with `total` and `more`, then diffs of
// everyone who comes and goes; `members` frames ask for the pages after it.

/**
 * Ascending user id order, as the server cuts pages: by Unicode code point (Python's string
 * order, and the UTF-8 bytes'). JavaScript's `<` compares UTF-16 units, which puts an astral
 * character (a surrogate pair) before U+E000…U+FFFF; here it goes after, as on the server.
 * @param {string} a
 * @param {string} b
 * @returns {number} negative, 0 or positive
 */
export function compareUsers(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1; // a surrogate is part of a character above U+FFFF
    return x - y;
  }
  return a.length - b.length;
}

/** The last user id of a page in the server's order (JavaScript orders integer-like keys first), or null. */
export function lastUser(members) {
  let last = null;
  for (const user of Object.keys(members ?? {})) {
    if (last === null || compareUsers(user, last) > 0) last = user;
  }
  return last;
}

/**
 * What a subscription shows of a presence room: the first page, kept current.
 * `until` is the last user id of that page when more members followed it: the view then holds
 * exactly the members up to it (joins after it are left to the pages); null: it holds everyone.
 * `more`: the room has members the view does not hold (`total` is larger).
 * @typedef {{members: Record<string, {info?: unknown}>, total: number, more: boolean, until: string|null}} PresenceView
 */

/** @returns {{members: Record<string, {info?: unknown}>, total: number, more: boolean}} a `presence` frame's page */
export function presencePage(frame) {
  const members = { ...frame.members };
  const total = Number.isSafeInteger(frame.total) ? frame.total : Object.keys(members).length;
  return { members, total, more: frame.more === true };
}

/** @returns {PresenceView} the view a first page starts */
export function presenceView(frame) {
  const page = presencePage(frame);
  return { ...page, until: page.more ? lastUser(page.members) : null };
}

/**
 * The view after one `presence_diff`: leaves go, joins up to `until` come (all of them when the
 * view holds everyone, whose number is then the total). Pure.
 * @param {PresenceView} view
 * @param {{joins?: Record<string, {info?: object}>, leaves?: Record<string, unknown>}} diff
 * @returns {PresenceView}
 */
export function applyPresenceDiffToView(view, diff) {
  const members = { ...view.members };
  for (const user of Object.keys(diff?.leaves ?? {})) delete members[user];
  for (const [user, entry] of Object.entries(diff?.joins ?? {})) {
    if (view.until === null || compareUsers(user, view.until) <= 0) members[user] = entry;
  }
  const total = view.until === null ? Object.keys(members).length : view.total;
  return withTotal({ ...view, members }, total);
}

/**
 * The view once the room's count says how many users it has (`users` of a count frame). Pure.
 * @param {PresenceView} view
 * @param {number} total
 * @returns {PresenceView}
 */
export function withTotal(view, total) {
  return { ...view, total, more: total > Object.keys(view.members).length };
}

/** The name to show for a member: its token's `info.name` when it is a non-empty string, else the user id. */
export function memberName(user, entry) {
  const name = entry?.info?.name;
  return typeof name === "string" && name.trim() ? name : user;
}

// ---- history: offsets and epochs ----------------------------------------------
// A message stored in the room's history carries `offset` (1, 2, 3… per room) and
// `epoch` (which run of offsets; it changes only when the room's history was lost).
// Each subscription remembers where it stands; after any reconnect it subscribes
// again with `since`, the server answers `subscribed` (recovered or not) and replays
// what was missed, and a message is handed on only if it is the subscription's next.

/**
 * Where one subscription stands.
 * @typedef {{offset: number, epoch: string|null, live: boolean}} Position
 * `live`: the server said `subscribed` on the current socket (before that, live
 * messages are not yet this subscription's: its replay is still to come).
 */

const EPOCH_RE = /^[A-Za-z0-9_-]{1,32}$/;

/** The `since` to subscribe with, or null when there is nothing to recover from. */
export function sinceOf(position) {
  if (!position || typeof position.epoch !== "string" || !EPOCH_RE.test(position.epoch)) return null;
  if (!Number.isSafeInteger(position.offset) || position.offset < 0) return null;
  return { offset: position.offset, epoch: position.epoch };
}

/**
 * Whether a `message` frame is the next one for a subscription at `position`, and
 * where it stands then. Pure. A message without an offset (a raw backend publish)
 * always goes; one that is not past the position (a duplicate) never does; one of
 * another epoch starts the position again (the server says `subscribed` first).
 * @param {Position|undefined|null} position
 * @param {{offset?: unknown, epoch?: unknown}} frame
 * @returns {{deliver: boolean, position: Position|undefined|null}}
 */
export function advance(position, frame) {
  if (typeof frame.offset !== "number") return { deliver: true, position };
  if (!position?.live) return { deliver: false, position };
  if (frame.epoch !== position.epoch) {
    return { deliver: true, position: { offset: frame.offset, epoch: String(frame.epoch), live: true } };
  }
  if (frame.offset <= position.offset) return { deliver: false, position };
  return { deliver: true, position: { ...position, offset: frame.offset } };
}

/**
 * A subscription's position after the server's `subscribed`, and whether the page
 * must be told it lost messages (`reset`): it had a position, and the server could
 * not recover from it. Recovered: the position stays, as the replay follows.
 * @param {Position|undefined|null} position
 * @param {{offset?: unknown, epoch?: unknown, recovered?: unknown}} frame
 * @returns {{position: Position, reset: boolean}}
 */
export function subscribedPosition(position, frame) {
  const hadOne = sinceOf(position) !== null;
  if (typeof frame.offset !== "number" || typeof frame.epoch !== "string") {
    return { position: { offset: 0, epoch: null, live: true }, reset: false }; // history off on the server
  }
  if (frame.recovered === true && hadOne && position.epoch === frame.epoch) {
    return { position: { ...position, live: true }, reset: false };
  }
  return { position: { offset: frame.offset, epoch: frame.epoch, live: true }, reset: hadOne };
}

// ---- server → client frames -------------------------------------------------

const SERVER_TYPES = new Set([
  "connection_message", "message", "pong", "error", "authenticated", "presence", "presence_diff", "subscribed", "close",
  "whisper",
]);
const ROOM_TYPES = new Set(["connection_message", "message", "presence", "presence_diff", "subscribed", "whisper"]);

/**
 * Parse one text frame from the server. Returns null for anything that is not
 * a frame we understand, so a newer server can add types without breaking us.
 *
 * @param {string} text
 * @returns {{type: string, room?: string} & Record<string, unknown> | null}
 */
export function parseServerFrame(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return null;
  }
  return checkServerFrame(frame);
}

/**
 * parseServerFrame() for a frame already parsed (long-polling answers carry frames as JSON values).
 * @param {unknown} frame
 */
export function checkServerFrame(frame) {
  if (frame === null || typeof frame !== "object" || !SERVER_TYPES.has(frame.type)) return null;
  if (ROOM_TYPES.has(frame.type) && !isSlug(frame.room)) return null;
  if (frame.type === "presence" && !isMap(frame.members)) return null;
  if (frame.type === "presence" && "total" in frame && !(Number.isSafeInteger(frame.total) && frame.total >= 0)) return null;
  if (frame.type === "presence" && "more" in frame && typeof frame.more !== "boolean") return null;
  if (frame.type === "presence" && "sub" in frame && typeof frame.sub !== "string") return null;
  if (frame.type === "presence_diff" && !(isMap(frame.joins) && isMap(frame.leaves))) return null;
  if (frame.type === "authenticated" && (typeof frame.user !== "string" || typeof frame.exp !== "number")) return null;
  if (frame.type === "subscribed" && (typeof frame.sub !== "string" || typeof frame.recovered !== "boolean")) return null;
  if (frame.type === "message" && "offset" in frame && !(Number.isSafeInteger(frame.offset) && typeof frame.epoch === "string")) {
    return null;
  }
  if (frame.type === "message" && "event" in frame && typeof frame.event !== "string") return null;
  if (frame.type === "whisper" && (typeof frame.event !== "string" || !(frame.user === null || typeof frame.user === "string"))) {
    return null;
  }
  if (frame.type === "close" && !isCloseCode(frame.code)) return null;
  if (frame.type === "close" && "reason" in frame && typeof frame.reason !== "string") return null;
  return frame;
}

/** A WebSocket close code a server may send (RFC 6455: 1000-1015 in use, 3000-4999 registered or private). */
const isCloseCode = (code) => Number.isInteger(code) && code >= 1000 && code <= 4999;

// ---- fallback transports (SSE and long-polling) -------------------------------------------
// `GET /sse/` streams the frames of `/ws/` as SSE events, after one `{"type": "session",
// "session": <id>}` event; `GET /poll/` opens a session and answers `{session, seq: 0, frames: []}`,
// and `GET /poll/<session>/?seq=<n>` answers the frames after n as `{seq, frames}`. Client frames
// go up one per `POST /sse/<session>/` (or `/poll/<session>/`). A session the server ends sends
// `{"type": "close", code, reason}` last, with the code a WebSocket would have closed with.

/** A session id as the server makes them (at least 128 bits in URL-safe base64); capped. */
export const SESSION_RE = /^[A-Za-z0-9_-]{22,256}$/;

/**
 * The session id an SSE stream's first event names, or null when it is not a session event.
 * @param {string} data the event's data
 */
export function sessionOf(data) {
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return null;
  }
  return isMap(event) && event.type === "session" && typeof event.session === "string" && SESSION_RE.test(event.session)
    ? event.session
    : null;
}

/**
 * A long-poll answer, after frame `after` had been taken: the frames not taken yet, in
 * order, and the new `seq` to acknowledge them with. The server numbers a session's frames
 * from 1 and answers `seq` = the number of the last frame it sends; frames it sends again
 * (an earlier answer was lost) are numbered as before, so none is taken twice. Null for an
 * answer that is not `{seq, frames}` with the frames numbered from 1.
 * @param {unknown} body
 * @param {number} after
 * @returns {{seq: number, frames: unknown[]}|null}
 */
export function pollBatch(body, after) {
  if (!isMap(body) || !Number.isSafeInteger(body.seq) || body.seq < 0 || !Array.isArray(body.frames)) return null;
  const first = body.seq - body.frames.length + 1; // the number of frames[0]
  if (first < 1 && body.frames.length > 0) return null;
  return { seq: Math.max(after, body.seq), frames: body.frames.filter((_, i) => first + i > after) };
}

/**
 * The answer to `GET /poll/`: the new session and its first batch (normally none), or null.
 * @param {unknown} body
 * @returns {{session: string, seq: number, frames: unknown[]}|null}
 */
export function pollOpening(body) {
  const batch = pollBatch(body, 0);
  if (!batch || typeof body.session !== "string" || !SESSION_RE.test(body.session)) return null;
  return { session: body.session, ...batch };
}

const isMap = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// ---- tab link (tab → owner) ---------------------------------------------------
// A tab attaches once per owner, saying how the owner can tell when it is gone:
//   "lock":      the tab holds tabLockName(id); the owner waits on that lock;
//   "heartbeat": no Web Locks here, so silence for TAB_TIMEOUT_MS means gone;
//   "none":      the tab lives in the owner's own page and dies with it.

/**
 * @param {"lock"|"heartbeat"|"none"} watch
 * @param {boolean} [tokens] whether this tab can answer token requests (its page gave connect() a getToken)
 */
export const attachMsg = (watch, tokens = false) => ({ type: "attach", watch, tokens });
export const detachMsg = () => ({ type: "detach" });
export const heartbeatMsg = () => ({ type: "heartbeat" });
/** The tab heard nothing from its owner for a while: the owner answers with aliveMsg() at once. */
export const probeMsg = () => ({ type: "probe" });
/** The tab saw an online/offline event. */
export const networkMsg = (online) => ({ type: "network", online });
/**
 * A person asked to try now: the owner skips the rest of its backoff wait (or its wait
 * for an `online` event) and connects at once. Nothing happens while a socket is open or opening.
 */
export const retryMsg = () => ({ type: "retry" });

/**
 * The tab's answer to tokenRequestMsg(id): a token, or why there is none
 * (getToken rejected, returned something other than a non-empty string, or the page gave none).
 */
export function tokenReplyMsg(id, token, error = null) {
  return typeof token === "string" && token && error === null
    ? { type: "token", id, token }
    : { type: "token", id, error: String(error ?? "getToken gave no token") };
}

// ---- tab link (owner → tab) ---------------------------------------------------

// A SharedWorker that finds its protocol.js of another link version answers every
// tab with {type: "unsupported", link} and nothing else; the tab moves on to a leader.

/** The owner lost track of this tab (it was dropped as silent); it should attach again. */
export const reattachMsg = () => ({ type: "reattach" });

/**
 * Tokens: only a page can call the application, so the socket owner (a SharedWorker,
 * a leader tab, or the page itself) asks one tab whose page has a getToken, waits
 * TOKEN_TIMEOUT_MS for its tokenReplyMsg, and asks the next such tab if none came.
 */
export const tokenRequestMsg = (id) => ({ type: "token_request", id });

/**
 * Which tab to ask for a token next: the first tab that said it can answer and
 * has not been asked yet for this request.
 * @param {Iterable<[string, {tokens?: boolean}]>} tabs
 * @param {Set<string>} asked
 * @returns {string|null}
 */
export function tokenTab(tabs, asked) {
  for (const [id, tab] of tabs) if (tab.tokens && !asked.has(id)) return id;
  return null;
}

/**
 * An error the owner makes up for one subscription that needs a token it cannot get
 * (no tab answered, or getToken failed): shaped like the server's, so it is routed the same way.
 */
export const noTokenError = (room, sub, reason) => ({
  type: "error", code: "no_token", reason: `no token: ${reason}`, room, sub,
});

/** The owner is alive: sent to every tab each HEARTBEAT_MS, and in answer to a probe. */
export const aliveMsg = () => ({ type: "alive" });

/**
 * Where the shared connection stands: how the browser shares it (`sharing`: "sharedworker",
 * "leader" or "direct"), which wire it uses or tries (`transport`: "websocket", "sse" or
 * "poll"), and its status.
 * @typedef {{sharing: string, transport: string, status: "connecting"|"open"|"reconnecting"|"offline",
 *            retryAt: number|null}} LinkState
 * @param {LinkState} state
 */
export const stateMsg = (state) => ({ type: "state", state });

// ---- error routing ----------------------------------------------------------------
// The server names the subscription an error is about (`room` and `sub`); an error
// without them is about the whole socket. Older servers sent only `room`, or nothing.

/**
 * Which tabs an error frame is for, on the owner's side.
 * @param {{room?: unknown, sub?: unknown}} frame
 * @param {Iterable<[string, {subs: Map<string, string>}]>} tabs tab id → its subscriptions (sub → room)
 * @returns {string[]} tab ids
 */
export function errorTabs(frame, tabs) {
  const ids = [];
  for (const [id, { subs }] of tabs) {
    if (typeof frame.sub === "string") {
      if (subs.has(frame.sub)) ids.push(id);
    } else if (typeof frame.room === "string") {
      if ([...subs.values()].includes(frame.room)) ids.push(id);
    } else {
      ids.push(id);
    }
  }
  return ids;
}

/**
 * Which room handles of one tab an error frame is for.
 * @param {{room?: unknown, sub?: unknown}} frame
 * @param {Iterable<[string, {room: string}]>} handles sub id → handle
 * @returns {string[]} sub ids
 */
export function errorHandles(frame, handles) {
  const subs = [];
  for (const [sub, { room }] of handles) {
    if (typeof frame.sub === "string" ? sub === frame.sub : typeof frame.room !== "string" || room === frame.room) {
      subs.push(sub);
    }
  }
  return subs;
}
