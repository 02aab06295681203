/**
 * Page client: one shared socket per browser, however many tabs.
 *
 *   import { connect } from "/static/js/rrr.js";   // bundled: from "rrr-client" (package.json)
 *   const rt = connect({ getToken });   // getToken only for private-… and presence-… rooms
 *   const room = rt.room("lobby", { onCount, onMessage, onState, onError, onPresence, onReset });
 *   room.publish({ hi: 1 });
 *   for await (const page of room.members()) …;   // presence rooms: every member, a page at a time
 *   room.leave();
 *   rt.retryNow();   // while reconnecting or offline: try now instead of waiting
 *   rt.close();   // leave every room; release the connection, locks, timers
 *
 * The page never has to know how it is connected; `rt.sharing`, `rt.transport` and the
 * state passed to onState say it. How the browser shares one connection, best first:
 *   1. "sharedworker": a SharedWorker owns it for the whole profile;
 *   2. "leader": tabs elect a leader with Web Locks and relay over a BroadcastChannel;
 *   3. "direct": this tab owns a connection of its own.
 * In every case a SocketOwner holds the connection, and this tab talks to it over a
 * Link with the same tab-link messages (see protocol.js). The owner picks the wire
 * (`rt.transport`): "websocket", else "sse", else "poll" (see ladder.js), among those
 * `connect({transports})` allows.
 */
import { leaderLink } from "./leader.js";
import {
  HEARTBEAT_MS,
  OWNER_SILENCE_MS,
  OWNER_START_TIMEOUT_MS,
  PROBE_TIMEOUT_MS,
  SLUG_RE,
  TRANSPORTS,
  advance,
  applyPresenceDiffToView,
  attachMsg,
  defaultSocketUrl,
  detachMsg,
  errorHandles,
  heartbeatMsg,
  lastUser,
  membersFrame,
  networkMsg,
  presencePage,
  presenceView,
  probeMsg,
  publishFrame,
  whisperFrame,
  randomId,
  retryMsg,
  sinceOf,
  subscribeFrame,
  subscribedPosition,
  tabLockName,
  tokenReplyMsg,
  transportList,
  unsubscribeFrame,
  withTotal,
  workerName,
  workerScriptUrl,
} from "./protocol.js";
import { SocketOwner } from "./socket-owner.js";

/**
 * What a sharing mode needs from the tab.
 * @typedef {object} TabSide
 * @property {string} url socket URL
 * @property {string[]} transports the wires the owner may use, best first
 * @property {string} tabId
 * @property {(msg: object) => void} deliver hand a message from the owner to this tab
 * @property {() => void} reannounce attach again with every subscription (new owner)
 * @property {() => void} relink this link is gone (e.g. a leader lost its lock): make a new one of the same kind
 * @property {() => void} fail this sharing mode cannot work: try the next one
 *
 * A sharing mode, as the tab sees it.
 * @typedef {object} Link
 * @property {string} sharing
 * @property {() => boolean} isLocal whether the owner lives in this very page
 * @property {(envelope: {tab: string, msg: object}) => void} send
 * @property {() => void} close release everything the link holds (port, channel, lock, socket)
 *
 * @typedef {object} RoomHandlers
 * @property {(count: {connections: number, tabs: number, updated: number|null, users?: number}) => void} [onCount]
 *   `users` (distinct members) in presence rooms
 * @property {(data: unknown, meta: {offset: number|null, epoch: string|null, event?: string}) => void} [onMessage]
 *   each message once, in order, also across reconnects (missed ones are replayed from the
 *   room's history); `offset`/`epoch` say where it is (null for a raw backend PUBLISH); `event`
 *   the name its publisher gave it (a Pusher event's name), when it has one
 * @property {(event: string, data: unknown, user: string|null) => void} [onWhisper] another
 *   subscriber's whisper (or a Pusher client's `client-*` event): `user` is who sent it (null:
 *   anonymous)
 * @property {(position: {offset: number, epoch: string|null}) => void} [onReset] messages were
 *   missed and could not be recovered (the room's history was lost, or trimmed past this
 *   subscription's last one): reload the page's state; messages continue from `position`
 * @property {{offset: number, epoch: string}} [since] start after this message (e.g. the
 *   offset the page was rendered at): what came later is replayed
 * @property {(state: import("./protocol.js").LinkState) => void} [onState]
 * @property {(error: {code: string, reason: string}) => void} [onError] errors about this
 *   subscription, and errors about the whole socket
 * @property {(presence: PresencePage, diff: {joins: object, leaves: object}|null) => void} [onPresence]
 *   presence rooms: the first page of members (ascending user ids, at most the server's
 *   --presence-list-max), kept current by each `diff` (null for a first page): members up to
 *   that page's last one come and go in it; `total` is the room's users, `more` whether some
 *   are not in `members` (`room.members()` pages through them all)
 *
 * @typedef {{members: Record<string, {info?: unknown}>, total: number, more: boolean}} PresencePage
 *
 * What `room.members()` returns: an async iterator of pages (each one `members` frame to the
 * server, asked for when the page is wanted), and `all()`, every member in one object.
 * @typedef {AsyncIterableIterator<PresencePage> & {all: () => Promise<Record<string, {info?: unknown}>>}} MemberPages
 */

/** A page refused for one of these is asked for again after PAGE_RETRY_MS, at most PAGE_RETRIES times. */
const PAGE_RETRY_CODES = new Set(["rate_limited", "not_connected"]);
const PAGE_RETRY_MS = 1_000;
const PAGE_RETRIES = 30;

/**
 * `worker.js` next to this module, for a page that loads the library as files (served by rrr).
 * import.meta.resolve applies the page's import map, so a page that maps worker.js to its `?v=`
 * URL gets a worker of the same deploy; `link=` is added either way (protocol.js). The fallback
 * keeps `import.meta.url` out of the literal `new URL("…", import.meta.url)` form, which bundlers
 * would copy worker.js for as a raw asset.
 */
function workerUrl() {
  try {
    return workerScriptUrl(import.meta.resolve("./worker.js"));
  } catch {
    const here = import.meta.url;
    return workerScriptUrl(new URL("./worker.js", here));
  }
}

/**
 * Whether this code runs as the library's own file (served by rrr, or as the package's files by a
 * dev server), not inlined into a bundle: then the module's URL names rrr.js and worker.js lies
 * beside it. In a bundle the module's URL is the chunk's, and worker.js exists only as the
 * bundler's build of it.
 */
function servedAsFiles() {
  return new URL(import.meta.url).pathname.endsWith("/rrr.js");
}

/**
 * The SharedWorker. Served as files: worker.js beside this module (workerUrl). Bundled: the
 * literal `new SharedWorker(new URL("./worker.js", import.meta.url), {type: "module", ...})`,
 * the one form bundlers recognise (Vite, webpack, Parcel: they build worker.js and its imports
 * as a worker and rewrite the URL to it; with esbuild, which rewrites nothing, the app builds the
 * package's `./worker` export as `worker.js` beside its bundle). A bundler's URL carries no
 * `link=`: the worker checks the link version its name carries instead (worker.js).
 */
function startSharedWorker(name) {
  if (servedAsFiles()) return new SharedWorker(workerUrl(), { type: "module", name });
  return new SharedWorker(new URL("./worker.js", import.meta.url), { type: "module", name });
}

/** @param {TabSide} tab @returns {Link} */
function sharedWorkerLink(tab) {
  const worker = startSharedWorker(workerName(tab.url, tab.transports));
  // Fired when the script cannot load or parse (e.g. no module workers): fall back.
  worker.onerror = () => tab.fail();
  // A worker whose protocol.js is of another link version refuses to serve.
  worker.port.onmessage = ({ data }) => (data?.type === "unsupported" ? tab.fail() : tab.deliver(data));
  return {
    sharing: "sharedworker",
    isLocal: () => false,
    send: (envelope) => worker.port.postMessage(envelope),
    close() {
      worker.onerror = worker.port.onmessage = null;
      worker.port.close();
    },
  };
}

/** @param {TabSide} tab @returns {Link} */
function directLink(tab) {
  const owner = new SocketOwner({ url: tab.url, sharing: "direct", transports: tab.transports });
  // Deliver asynchronously, as postMessage would, so the owner never re-enters the page mid-call.
  const self = { send: (msg) => queueMicrotask(() => tab.deliver(msg)) };
  return {
    sharing: "direct",
    isLocal: () => true,
    send: (envelope) => owner.receive(envelope.tab, envelope.msg, self),
    close: () => owner.close(),
  };
}

/** The sharing modes, best first; `usable` is checked before one is tried. */
const SHARING = [
  { usable: () => typeof SharedWorker === "function", make: sharedWorkerLink },
  {
    usable: () => typeof BroadcastChannel === "function" && Boolean(globalThis.navigator?.locks),
    make: leaderLink,
  },
  { usable: () => true, make: directLink },
];

/**
 * Hold this tab's lock until released, so its socket owner can wait on it.
 * `watch` resolves to how the owner should watch this tab once the lock is
 * actually held: reporting earlier would let the owner take the lock first and
 * drop a live tab.
 * @returns {{watch: Promise<"lock"|"heartbeat">, release: () => void}}
 */
function holdTabLock(tabId) {
  const locks = globalThis.navigator?.locks;
  if (!locks) return { watch: Promise.resolve("heartbeat"), release: () => {} };
  const abort = new AbortController();
  let release = () => abort.abort();
  const watch = new Promise((resolve) => {
    locks
      .request(tabLockName(tabId), { signal: abort.signal }, () => {
        resolve("lock");
        return new Promise((done) => (release = done));
      })
      .catch(() => resolve("heartbeat"));
  });
  return { watch, release: () => release() };
}

class Runtime {
  /**
   * sub id → handle: `view` is what onPresence shows (null before a first page), `pages` the
   * `members` frames sent and not yet answered, in order.
   * @type {Map<string, {room: string, handlers: RoomHandlers, view: import("./protocol.js").PresenceView|null,
   *   pages: {after: string, resolve: (page: PresencePage) => void, reject: (error: Error) => void}[]}>}
   */
  #handles = new Map();
  /** The wires the owner may use, best first (connect's `transports`). */
  #transports;
  /** Errors already written to the console (each once per page). */
  #consoleSaid = new Set();
  /** The page's getToken, or null. */
  #getToken;
  /** @type {((identity: {user: string, exp: number}) => void)|null} */
  #onAuth;
  /** @type {{user: string, exp: number}|null} */
  #identity = null;
  #rung = -1;
  /** @type {Link|null} */
  #link = null;
  /** The TabSide given to the current link; calls from older ones are ignored. */
  #side = null;
  /** Whether the current link has our attach; until then only announce() talks to it. */
  #attached = false;
  #subCounter = 0;
  /** This tab's lock, taken again each time the page is shown from the back/forward cache. */
  #tabLock;
  /** How the owner watches us, once known; heartbeats are only sent for "heartbeat". */
  #watch = null;
  /** When the current link was made, when its owner last said anything, whether it ever did, an unanswered probe. */
  #linkAt = 0;
  #lastHeard = 0;
  #heard = false;
  #probeAt = 0;
  /** False between pagehide and a pageshow from the back/forward cache. */
  #shown = true;
  #closed = false;
  #timers = [];
  #listening = new AbortController();
  /** @type {import("./protocol.js").LinkState} */
  #state = { sharing: "none", transport: "none", status: "connecting", retryAt: null };

  constructor(url, getToken = null, onAuth = null, transports = TRANSPORTS) {
    this.url = url;
    this.#transports = transports;
    this.#getToken = typeof getToken === "function" ? getToken : null;
    this.#onAuth = typeof onAuth === "function" ? onAuth : null;
    this.tabId = randomId();
    this.#tabLock = holdTabLock(this.tabId);
    this.#nextTransport();
    this.#timers.push(
      setInterval(() => this.#watch === "heartbeat" && this.#sendRemote(heartbeatMsg()), HEARTBEAT_MS),
      setInterval(() => this.#checkOwner(), 1_000),
    );
    const opts = { signal: this.#listening.signal };
    addEventListener("online", () => this.#sendRemote(networkMsg(true)), opts);
    addEventListener("offline", () => this.#sendRemote(networkMsg(false)), opts);
    addEventListener("pagehide", () => this.#hide(), opts);
    addEventListener("pageshow", (event) => event.persisted && this.#show(), opts);
  }

  /** The wire in use (or being tried): "websocket" | "sse" | "poll"; "none" until the owner says. */
  get transport() {
    return this.#state.transport;
  }

  /** How this browser shares its one connection: "sharedworker" | "leader" | "direct" ("none" before a link). */
  get sharing() {
    return this.#state.sharing;
  }

  /** @returns {import("./protocol.js").LinkState} */
  get state() {
    return this.#state;
  }

  /** Who the shared socket is authenticated as, from the server's last `authenticated` reply (null before). */
  get identity() {
    return this.#identity;
  }

  /**
   * Join a room. Each handle counts as one tab on the server, so a page may hold
   * several (the count page's "+ Add").
   * @param {string} slug
   * @param {RoomHandlers} [handlers]
   */
  room(slug, handlers = {}) {
    if (this.#closed) throw new Error("rrr: connection closed");
    if (!SLUG_RE.test(slug)) throw new TypeError(`invalid room slug: ${slug}`);
    const sub = `${this.tabId}-${++this.#subCounter}`;
    const since = sinceOf(handlers.since);
    const handle = { room: slug, handlers, view: null, pages: [], position: since ? { ...since, live: false } : null };
    this.#handles.set(sub, handle);
    this.#send(subscribeFrame(slug, sub, handle.position));
    queueMicrotask(() => call(handlers.onState, this.#state));
    return {
      room: slug,
      /** `event`: the name Pusher clients hear it as (default `message`), also on every `onMessage`'s meta. */
      publish: (data, { event = null } = {}) => this.#send(publishFrame(slug, data, event)),
      /**
       * An event for the room's other subscribers now (`onWhisper` there; Pusher clients hear it as
       * `event`): private and presence rooms only, never stored, at most 10 a second.
       */
      whisper: (event, data) => this.#send(whisperFrame(slug, event, data)),
      /** The last message handed to the page: resubscribing later from here misses nothing. */
      position: () => sinceOf(handle.position),
      /**
       * Presence rooms: the members, a page at a time (ascending user ids), each page asked of the
       * server when the iterator is advanced; `after` starts after that user id. A page the server
       * refuses for its rate (--presence-list-rate) or while disconnected is asked again a second
       * later; other refusals reject with an Error whose `code` is the server's.
       * @param {{after?: string}} [options]
       * @returns {MemberPages}
       */
      members: ({ after = "" } = {}) => this.#memberPages(sub, handle, typeof after === "string" ? after : ""),
      leave: () => {
        if (this.#handles.delete(sub)) {
          this.#send(unsubscribeFrame(slug, sub));
          for (const page of handle.pages.splice(0)) page.reject(pageError("not_subscribed", "left the room"));
        }
      },
    };
  }

  /** @returns {MemberPages} */
  #memberPages(sub, handle, after) {
    let next = after;
    let done = false;
    const iterator = {
      next: async () => {
        if (done) return { done: true, value: undefined };
        const page = await this.#askPage(sub, handle, next);
        const last = lastUser(page.members);
        if (last === null || !page.more) done = true;
        else next = last;
        return { done: false, value: page };
      },
      return: async () => {
        done = true;
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]: () => iterator,
      all: async () => {
        const everyone = {};
        for await (const page of iterator) Object.assign(everyone, page.members);
        return everyone;
      },
    };
    return iterator;
  }

  /** One page: a `members` frame through the owner, answered by a `presence` with this sub (or an error naming `after`). */
  async #askPage(sub, handle, after) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await new Promise((resolve, reject) => {
          if (this.#closed || this.#handles.get(sub) !== handle) {
            reject(pageError("not_subscribed", "this subscription has left the room"));
          } else if (!this.#attached || this.#state.status !== "open") {
            reject(pageError("not_connected", "not connected"));
          } else {
            handle.pages.push({ after, resolve, reject });
            this.#send(membersFrame(handle.room, sub, after));
          }
        });
      } catch (err) {
        if (!PAGE_RETRY_CODES.has(err?.code) || attempt >= PAGE_RETRIES) throw err;
        await new Promise((wake) => setTimeout(wake, PAGE_RETRY_MS));
      }
    }
  }

  /** Pages asked for on a wire that is gone will not be answered: each is asked again (not_connected). */
  #dropPages() {
    for (const handle of this.#handles.values()) {
      for (const page of handle.pages.splice(0)) page.reject(pageError("not_connected", "the connection was lost"));
    }
  }

  /**
   * Reconnect at once: while the socket is down (state "reconnecting" or "offline") the owner
   * skips the rest of its backoff wait and tries now. Does nothing while it is open or
   * connecting; a failed try goes back to the backoff. For a "retry now" button.
   */
  retryNow() {
    if (!this.#closed) this.#send(retryMsg());
  }

  /**
   * Stop: leave every room and release the timers, listeners, this tab's lock
   * and the link (port, channel, leader lock; the socket if this tab owns it;
   * a SharedWorker closes its socket once no tab uses it). Idempotent.
   */
  close() {
    if (this.#closed) return;
    this.#send(detachMsg());
    this.#closed = true;
    this.#dropLink();
    this.#tabLock.release();
    this.#timers.forEach(clearInterval);
    this.#listening.abort();
    this.#handles.clear();
  }

  /** Take the next usable sharing mode; called at start and when one fails. */
  #nextTransport() {
    this.#dropLink();
    while (++this.#rung < SHARING.length) {
      if (this.#makeLink()) return;
    }
  }

  /** Make a link of the current rung; false when it is not usable here. */
  #makeLink() {
    const { usable, make } = SHARING[this.#rung];
    if (!usable()) return false;
    /** @type {TabSide} */
    const side = {
      url: this.url,
      transports: this.#transports,
      tabId: this.tabId,
      // A link we left behind may still talk; ignore it.
      deliver: (msg) => side === this.#side && this.#deliver(msg),
      reannounce: () => side === this.#side && this.#announce(),
      relink: () => side === this.#side && this.#relink(),
      fail: () => side === this.#side && this.#nextTransport(),
    };
    this.#side = side;
    try {
      this.#link = make(side);
    } catch {
      this.#side = null;
      return false; // e.g. SharedWorker blocked by the browser's settings
    }
    this.#linkAt = this.#lastHeard = Date.now();
    this.#heard = false;
    this.#probeAt = 0;
    this.#setState({ sharing: this.#link.sharing, transport: "none", status: "connecting", retryAt: null });
    this.#announce();
    return true;
  }

  /** Drop the current link and make a new one of the same kind. */
  #relink() {
    this.#dropLink();
    if (!this.#makeLink()) this.#nextTransport();
  }

  /** Close the current link, if any; nothing it says is heard any more. */
  #dropLink() {
    const link = this.#link;
    this.#link = this.#side = null;
    this.#attached = false;
    link?.close();
  }

  /**
   * The owner went quiet, was probed and did not answer: it is dead (a
   * terminated worker, a hung leader), and a new link of the same kind is made
   * (a new worker, a new election). A link that never answered at all within
   * OWNER_START_TIMEOUT_MS is given up for the next sharing mode (a worker that
   * hangs whenever it is started, a leader lock nobody lets go of).
   */
  #checkOwner() {
    const link = this.#link;
    if (!link || link.isLocal()) return;
    const now = Date.now();
    if (!this.#heard) {
      if (now - this.#linkAt > OWNER_START_TIMEOUT_MS) this.#nextTransport();
    } else if (this.#probeAt && this.#lastHeard < this.#probeAt) {
      if (now - this.#probeAt > PROBE_TIMEOUT_MS) this.#relink();
    } else if (now - this.#lastHeard > OWNER_SILENCE_MS) {
      this.#probeAt = now;
      link.send({ tab: this.tabId, msg: probeMsg() });
    }
  }

  /** pagehide: leave the owner, close the link, let go of our lock (WebKit drops it anyway). */
  #hide() {
    if (this.#closed || !this.#shown) return;
    this.#shown = false;
    this.#send(detachMsg());
    this.#dropLink();
    this.#tabLock.release();
  }

  /** pageshow from the back/forward cache: take our lock again, then a link of the same kind. */
  #show() {
    if (this.#closed || this.#shown) return;
    this.#shown = true;
    this.#tabLock = holdTabLock(this.tabId);
    this.#watch = null;
    if (!this.#makeLink()) this.#nextTransport();
  }

  /** Attach to the link's owner (once our tab lock is held) and replay every subscription. */
  async #announce() {
    const link = this.#link;
    const lock = this.#tabLock;
    // Until the attach goes out, the owner would not know whose message it got.
    this.#attached = false;
    this.#dropPages(); // a new owner never heard them
    const watch = link.isLocal() ? "none" : await lock.watch;
    if (link !== this.#link || lock !== this.#tabLock) return;
    if (watch !== "none") this.#watch = watch;
    link.send({ tab: this.tabId, msg: attachMsg(watch, this.#getToken !== null) });
    for (const [sub, handle] of this.#handles) {
      // A new owner learns where each subscription stands, so it replays only what we lack.
      if (handle.position) handle.position.live = false;
      link.send({ tab: this.tabId, msg: subscribeFrame(handle.room, sub, handle.position) });
    }
    this.#attached = true;
  }

  #send(msg) {
    if (this.#attached) this.#link.send({ tab: this.tabId, msg });
  }

  /** Send what an owner in another context needs to hear; one in this page hears it itself. */
  #sendRemote(msg) {
    if (this.#link && !this.#link.isLocal()) this.#send(msg);
  }

  #setState(state) {
    this.#state = state;
    if (state.status !== "open") this.#dropPages();
    for (const { handlers } of this.#handles.values()) call(handlers.onState, state);
  }

  #deliver(msg) {
    this.#lastHeard = Date.now();
    this.#heard = true;
    switch (msg?.type) {
      case "state":
        this.#setState(msg.state);
        break;
      case "reattach":
        this.#announce();
        break;
      case "connection_message":
        if (typeof msg.users === "number") {
          for (const handle of this.#handles.values()) {
            if (handle.room === msg.room && handle.view) handle.view = withTotal(handle.view, msg.users);
          }
        }
        this.#each(msg.room, "onCount", {
          connections: msg.connections,
          tabs: msg.tabs,
          updated: msg.updated,
          ...(typeof msg.users === "number" ? { users: msg.users } : {}),
        });
        break;
      case "message":
        this.#onMessage(msg);
        break;
      case "whisper":
        for (const handle of this.#handles.values()) {
          if (handle.room === msg.room) call3(handle.handlers.onWhisper, msg.event, msg.data, msg.user);
        }
        break;
      case "subscribed": {
        const handle = this.#handles.get(msg.sub);
        if (!handle) break;
        const { position, reset } = subscribedPosition(handle.position, msg);
        handle.position = position;
        if (reset || msg.reset === true) call(handle.handlers.onReset, { offset: position.offset, epoch: position.epoch });
        break;
      }
      case "error":
        // A refused Origin is a setup mistake, not a subscription's: the developer looks in the console.
        if (msg.code === "origin_refused" && typeof msg.reason === "string" && !this.#consoleSaid.has(msg.reason)) {
          this.#consoleSaid.add(msg.reason);
          console.error(`rrr: ${msg.reason}`);
        }
        if (typeof msg.sub === "string" && typeof msg.after === "string") {
          // A page refused (it names the `after` asked for); the subscription itself stands.
          const pages = this.#handles.get(msg.sub)?.pages ?? [];
          const i = pages.findIndex((page) => page.after === msg.after);
          if (i >= 0) pages.splice(i, 1)[0].reject(pageError(msg.code, msg.reason));
          break;
        }
        for (const sub of errorHandles(msg, this.#handles)) {
          const handle = this.#handles.get(sub);
          // A subscription the server dropped (or never took) has no member list any more.
          if (typeof msg.sub === "string") handle.view = null;
          call(handle.handlers.onError, { code: msg.code, reason: msg.reason });
        }
        break;
      case "presence": {
        // With a sub: the page that subscription asked for (its oldest unanswered one). Without:
        // a first page, for every handle in the room (its socket was sent no diff this round).
        if (typeof msg.sub === "string") {
          const asked = this.#handles.get(msg.sub);
          if (asked?.room === msg.room && asked.pages.length) asked.pages.shift().resolve(presencePage(msg));
          break;
        }
        for (const handle of this.#handles.values()) {
          if (handle.room !== msg.room) continue;
          handle.view = presenceView(msg);
          call2(handle.handlers.onPresence, shown(handle.view), null);
        }
        break;
      }
      case "presence_diff":
        for (const handle of this.#handles.values()) {
          // Before its first page a handle has nothing to apply the diff to; that page will include it.
          if (handle.room !== msg.room || handle.view === null) continue;
          handle.view = applyPresenceDiffToView(handle.view, msg);
          call2(handle.handlers.onPresence, shown(handle.view), { joins: msg.joins, leaves: msg.leaves });
        }
        break;
      case "authenticated":
        this.#identity = { user: msg.user, exp: msg.exp };
        call(this.#onAuth, this.#identity);
        break;
      case "token_request":
        this.#answerToken(msg.id);
        break;
      // "alive" only tells us the owner is there.
    }
  }

  /** The owner needs a token: only a page can call the application. */
  async #answerToken(id) {
    let reply;
    try {
      if (!this.#getToken) throw new Error("this page has no getToken");
      reply = tokenReplyMsg(id, await this.#getToken());
    } catch (err) {
      reply = tokenReplyMsg(id, null, err instanceof Error ? err.message : err);
    }
    this.#send(reply);
  }

  /** A message once to each handle it is next for (a replay: to its own subscription only). */
  #onMessage(msg) {
    const meta = typeof msg.offset === "number" ? { offset: msg.offset, epoch: msg.epoch } : { offset: null, epoch: null };
    if (typeof msg.event === "string") meta.event = msg.event;
    for (const [sub, handle] of this.#handles) {
      if (handle.room !== msg.room || (typeof msg.sub === "string" && sub !== msg.sub)) continue;
      const { deliver, position } = advance(handle.position, msg);
      handle.position = position;
      if (deliver) call2(handle.handlers.onMessage, msg.data, meta);
    }
  }

  /** Call `name` on every handle in `room`. */
  #each(room, name, value) {
    for (const handle of this.#handles.values()) {
      if (handle.room === room) call(handle.handlers[name], value);
    }
  }
}

/** What onPresence is given of a view. @returns {PresencePage} */
function shown({ members, total, more }) {
  return { members, total, more };
}

/** A page's refusal: an Error with the server's (or the owner's) code. */
function pageError(code, reason) {
  return Object.assign(new Error(`${reason} (${code})`), { code, reason });
}

/** Run a page callback; one that throws is reported but does not starve the others. */
function call(fn, value) {
  if (typeof fn !== "function") return;
  try {
    fn(value);
  } catch (err) {
    reportError(err);
  }
}

function call3(fn, a, b, c) {
  if (typeof fn !== "function") return;
  try {
    fn(a, b, c);
  } catch (err) {
    reportError(err);
  }
}

function call2(fn, a, b) {
  if (typeof fn !== "function") return;
  try {
    fn(a, b);
  } catch (err) {
    reportError(err);
  }
}

/**
 * @param {{url?: string, getToken?: () => Promise<string>,
 *          onAuth?: (identity: {user: string, exp: number}) => void,
 *          transports?: ("websocket"|"sse"|"poll")[]}} [options]
 *   url defaults to `/ws/` on this page's host (`/sse/` and `/poll/` are beside it).
 *   getToken returns a JWT from the application; the owner asks a page for one on
 *   every (re)connect before it subscribes private and presence rooms, and again at
 *   80 % of each token's life. onAuth hears each `authenticated` reply (the user and
 *   the token's exp). transports: which wires may be used, best first (default all
 *   three); anything but a non-empty list of distinct names of them throws TypeError.
 * @returns {Runtime}
 */
export function connect({ url, getToken, onAuth, transports } = {}) {
  return new Runtime(url ?? defaultSocketUrl(), getToken ?? null, onAuth ?? null, transportList(transports));
}
