/**
 * Page client: one shared socket per browser, however many tabs.
 *
 *   import { connect } from "/static/js/rrr.js";
 *   const rt = connect();
 *   const room = rt.room("lobby", { onCount, onMessage, onState, onError });
 *   room.publish({ hi: 1 });
 *   room.leave();
 *
 * The page never learns which transport it got; `rt.transport` and the state
 * passed to onState say it. Transports, best first:
 *   1. "sharedworker": a SharedWorker owns the socket for the whole profile;
 *   2. "leader": tabs elect a leader with Web Locks and relay over a BroadcastChannel;
 *   3. "direct": this tab owns a socket of its own.
 * In every case a SocketOwner holds the socket, and this tab talks to it over a
 * Link with the same tab-link messages (see protocol.js).
 */
import { leaderLink } from "./leader.js";
import {
  HEARTBEAT_MS,
  SLUG_RE,
  attachMsg,
  defaultSocketUrl,
  detachMsg,
  heartbeatMsg,
  networkMsg,
  publishFrame,
  randomId,
  subscribeFrame,
  tabLockName,
  unsubscribeFrame,
  workerName,
} from "./protocol.js";
import { SocketOwner } from "./socket-owner.js";

/**
 * What a transport needs from the tab.
 * @typedef {object} TabSide
 * @property {string} url socket URL
 * @property {string} tabId
 * @property {(msg: object) => void} deliver hand a message from the owner to this tab
 * @property {() => void} reannounce attach again with every subscription (new owner)
 * @property {() => void} fail this transport cannot work: try the next one
 *
 * A transport, as the tab sees it.
 * @typedef {object} Link
 * @property {string} transport
 * @property {() => boolean} isLocal whether the owner lives in this very page
 * @property {(envelope: {tab: string, msg: object}) => void} send
 *
 * @typedef {object} RoomHandlers
 * @property {(count: {connections: number, tabs: number, updated: number|null}) => void} [onCount]
 * @property {(data: unknown) => void} [onMessage]
 * @property {(state: import("./protocol.js").LinkState) => void} [onState]
 * @property {(error: {code: string, reason: string}) => void} [onError]
 */

/** @param {TabSide} tab @returns {Link} */
function sharedWorkerLink(tab) {
  const worker = new SharedWorker(new URL("./worker.js", import.meta.url), {
    type: "module",
    name: workerName(tab.url),
  });
  // Fired when the script cannot load or parse (e.g. no module workers): fall back.
  worker.onerror = () => tab.fail();
  worker.port.onmessage = ({ data }) => tab.deliver(data);
  return {
    transport: "sharedworker",
    isLocal: () => false,
    send: (envelope) => worker.port.postMessage(envelope),
  };
}

/** @param {TabSide} tab @returns {Link} */
function directLink(tab) {
  const owner = new SocketOwner({ url: tab.url, transport: "direct" });
  // Deliver asynchronously, as postMessage would, so the owner never re-enters the page mid-call.
  const self = { send: (msg) => queueMicrotask(() => tab.deliver(msg)) };
  return {
    transport: "direct",
    isLocal: () => true,
    send: (envelope) => owner.receive(envelope.tab, envelope.msg, self),
  };
}

/** The ladder, best first; `usable` is checked before a rung is tried. */
const TRANSPORTS = [
  { usable: () => typeof SharedWorker === "function", make: sharedWorkerLink },
  {
    usable: () => typeof BroadcastChannel === "function" && Boolean(globalThis.navigator?.locks),
    make: leaderLink,
  },
  { usable: () => true, make: directLink },
];

/**
 * Hold this tab's lock until the page dies, so its socket owner can wait on it.
 * Resolves to how the owner should watch this tab once the lock is actually
 * held: reporting earlier would let the owner take the lock first and drop a
 * live tab.
 * @returns {Promise<"lock"|"heartbeat">}
 */
function holdTabLock(tabId) {
  const locks = globalThis.navigator?.locks;
  if (!locks) return Promise.resolve("heartbeat");
  return new Promise((resolve) => {
    locks
      .request(tabLockName(tabId), () => {
        resolve("lock");
        return new Promise(() => {});
      })
      .catch(() => resolve("heartbeat"));
  });
}

class Runtime {
  /** @type {Map<string, {room: string, handlers: RoomHandlers}>} sub id → handle */
  #handles = new Map();
  #rung = -1;
  /** @type {Link|null} */
  #link = null;
  /** Whether the current link has our attach; until then only announce() talks to it. */
  #attached = false;
  #subCounter = 0;
  /** How the owner should watch this tab; settles once our tab lock is held. */
  #watch;
  /** @type {import("./protocol.js").LinkState} */
  #state;

  constructor(url) {
    this.url = url;
    this.tabId = randomId();
    this.#watch = holdTabLock(this.tabId);
    this.#nextTransport();
    setInterval(() => this.#sendRemote(heartbeatMsg()), HEARTBEAT_MS);
    addEventListener("online", () => this.#sendRemote(networkMsg(true)));
    addEventListener("offline", () => this.#sendRemote(networkMsg(false)));
    addEventListener("pagehide", () => this.#send(detachMsg()));
    // Back from the back/forward cache: the owner forgot us on pagehide.
    addEventListener("pageshow", (event) => event.persisted && this.#announce());
  }

  /** "sharedworker" | "leader" | "direct" */
  get transport() {
    return this.#state.transport;
  }

  /** @returns {import("./protocol.js").LinkState} */
  get state() {
    return this.#state;
  }

  /**
   * Join a room. Each handle counts as one tab on the server, so a page may hold
   * several (the count page's "+ Add").
   * @param {string} slug
   * @param {RoomHandlers} [handlers]
   */
  room(slug, handlers = {}) {
    if (!SLUG_RE.test(slug)) throw new TypeError(`invalid room slug: ${slug}`);
    const sub = `${this.tabId}-${++this.#subCounter}`;
    this.#handles.set(sub, { room: slug, handlers });
    this.#send(subscribeFrame(slug, sub));
    queueMicrotask(() => call(handlers.onState, this.#state));
    return {
      room: slug,
      publish: (data) => this.#send(publishFrame(slug, data)),
      leave: () => {
        if (this.#handles.delete(sub)) this.#send(unsubscribeFrame(slug, sub));
      },
    };
  }

  /** Take the next usable transport down the ladder; called at start and when one fails. */
  #nextTransport() {
    while (++this.#rung < TRANSPORTS.length) {
      const { usable, make } = TRANSPORTS[this.#rung];
      if (!usable()) continue;
      const rung = this.#rung;
      /** @type {TabSide} */
      const side = {
        url: this.url,
        tabId: this.tabId,
        // A transport we left behind may still talk; ignore it.
        deliver: (msg) => rung === this.#rung && this.#deliver(msg),
        reannounce: () => rung === this.#rung && this.#announce(),
        fail: () => rung === this.#rung && this.#nextTransport(),
      };
      try {
        this.#link = make(side);
      } catch {
        continue; // e.g. SharedWorker blocked by the browser's settings
      }
      this.#state = { transport: this.#link.transport, status: "connecting", retryAt: null };
      this.#announce();
      return;
    }
  }

  /** Attach to the link's owner (once our tab lock is held) and replay every subscription. */
  async #announce() {
    const link = this.#link;
    // Until the attach goes out, the owner would not know whose message it got.
    this.#attached = false;
    const watch = link.isLocal() ? "none" : await this.#watch;
    if (link !== this.#link) return;
    link.send({ tab: this.tabId, msg: attachMsg(watch) });
    for (const [sub, { room }] of this.#handles) {
      link.send({ tab: this.tabId, msg: subscribeFrame(room, sub) });
    }
    this.#attached = true;
  }

  #send(msg) {
    if (this.#attached) this.#link.send({ tab: this.tabId, msg });
  }

  /** Send what an owner in another context needs to hear; one in this page hears it itself. */
  #sendRemote(msg) {
    if (!this.#link.isLocal()) this.#send(msg);
  }

  #deliver(msg) {
    switch (msg?.type) {
      case "state":
        this.#state = msg.state;
        for (const { handlers } of this.#handles.values()) call(handlers.onState, msg.state);
        break;
      case "reattach":
        this.#announce();
        break;
      case "connection_message":
        this.#each(msg.room, "onCount", {
          connections: msg.connections,
          tabs: msg.tabs,
          updated: msg.updated,
        });
        break;
      case "message":
        this.#each(msg.room, "onMessage", msg.data);
        break;
      case "error":
        this.#each(msg.room, "onError", { code: msg.code, reason: msg.reason });
        break;
    }
  }

  /** Call `name` on every handle in `room`, or on every handle when room is absent. */
  #each(room, name, value) {
    for (const handle of this.#handles.values()) {
      if (room === undefined || handle.room === room) call(handle.handlers[name], value);
    }
  }
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

/**
 * @param {{url?: string}} [options] url defaults to `/ws/` on this page's host
 * @returns {Runtime}
 */
export function connect({ url } = {}) {
  return new Runtime(url ?? defaultSocketUrl());
}
