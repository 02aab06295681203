/**
 * Message shapes shared by the page, the SharedWorker and the leader tab.
 *
 * Two wires meet here:
 *  - the server wire (`/ws/`): JSON text frames, mirrored from `rrr/protocol.py`;
 *  - the tab link (page ⇄ socket owner): plain objects posted over a MessagePort,
 *    a BroadcastChannel or a direct call. Tabs forward server-shaped frames
 *    (subscribe, unsubscribe, publish) unchanged, wrapped in `{tab, msg}` so
 *    the owner knows whose subscription it is.
 *
 * Keeping both in one module means the worker and the page can never disagree
 * on a field name.
 */

/** Bumped when the tab link changes, so an old SharedWorker never serves a new page. */
export const LINK_VERSION = 1;

export const SLUG_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** The client pings this often; the server answers with a pong. */
export const PING_INTERVAL_MS = 15_000;
/** A socket still handshaking after this long is given up (a blackholed or frozen server). */
export const CONNECT_TIMEOUT_MS = 10_000;
/** Tabs tell their socket owner they are alive this often… */
export const HEARTBEAT_MS = 2_000;
/**
 * …and a tab without a Web Lock is dropped after this much silence. A live tab
 * dropped this way (its timers throttled in the background) is told to attach
 * again on its next heartbeat.
 */
export const TAB_TIMEOUT_MS = 8_000;

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30_000;

/** Web Lock held forever by the tab that owns the socket in leader mode. */
export const LEADER_LOCK = "rrr-leader";
/** BroadcastChannel the leader and its followers talk on. */
export const CHANNEL_NAME = `rrr-v${LINK_VERSION}`;

/**
 * SharedWorkers are matched by script URL and name. Putting the link version and
 * the socket URL in the name means tabs of different link versions or endpoints
 * never share a worker, and the worker learns its endpoint without a handshake.
 */
export function workerName(socketUrl) {
  return `rrr/${LINK_VERSION} ${socketUrl}`;
}

/** Inverse of workerName(); falls back to the default URL for a foreign name. */
export function socketUrlFromWorkerName(name, loc = globalThis.location) {
  const prefix = `rrr/${LINK_VERSION} `;
  return name.startsWith(prefix) ? name.slice(prefix.length) : defaultSocketUrl(loc);
}

/** Each tab holds this lock for its whole life; its owner waits on it to learn when the tab is gone. */
export function tabLockName(tabId) {
  return `rrr-tab-${tabId}`;
}

/** `wss:` under https, `ws:` otherwise, always the page's own host. */
export function defaultSocketUrl(loc = globalThis.location) {
  const proto = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${loc.host}/ws/`;
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

export const subscribeFrame = (room, sub) => ({ type: "subscribe", room, sub });
export const unsubscribeFrame = (room, sub) => ({ type: "unsubscribe", room, sub });
export const publishFrame = (room, data) => ({ type: "publish", room, data });
export const pingFrame = () => ({ type: "ping" });
/** @param {"sharedworker"|"leader"|"direct"} transport */
export const helloFrame = (transport) => ({ type: "hello", transport });

// ---- server → client frames -------------------------------------------------

const SERVER_TYPES = new Set(["connection_message", "message", "pong", "error"]);

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
  if (frame === null || typeof frame !== "object" || !SERVER_TYPES.has(frame.type)) return null;
  if ((frame.type === "connection_message" || frame.type === "message") && !SLUG_RE.test(frame.room)) {
    return null;
  }
  return frame;
}

// ---- tab link (tab → owner) ---------------------------------------------------
// A tab attaches once per owner, saying how the owner can tell when it is gone:
//   "lock":      the tab holds tabLockName(id); the owner waits on that lock;
//   "heartbeat": no Web Locks here, so silence for TAB_TIMEOUT_MS means gone;
//   "none":      the tab lives in the owner's own page and dies with it.

/** @param {"lock"|"heartbeat"|"none"} watch */
export const attachMsg = (watch) => ({ type: "attach", watch });
export const detachMsg = () => ({ type: "detach" });
export const heartbeatMsg = () => ({ type: "heartbeat" });
/** The tab saw an online/offline event. */
export const networkMsg = (online) => ({ type: "network", online });

// ---- tab link (owner → tab) ---------------------------------------------------

/** The owner lost track of this tab (it was dropped as silent); it should attach again. */
export const reattachMsg = () => ({ type: "reattach" });

/**
 * Where the shared socket stands.
 * @typedef {{transport: string, status: "connecting"|"open"|"reconnecting"|"offline",
 *            retryAt: number|null}} LinkState
 * @param {LinkState} state
 */
export const stateMsg = (state) => ({ type: "state", state });
