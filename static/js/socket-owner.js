/**
 * The one place that owns a `/ws/` socket on behalf of many tabs.
 *
 * Used by the SharedWorker (tabs on MessagePorts), by the leader tab (tabs on a
 * BroadcastChannel, itself included) and by the direct path (a single tab in
 * the same page). It only ever sees tabs through a `TabLink`, so the three
 * transports share every rule: one subscription per room handle, resubscribe
 * all of them after a reconnect, fan each server frame out to the tabs in its
 * room, and forget tabs that are gone so the server's count stays honest.
 * The socket's identity (tokens from tabs, `auth`, refresh) is the TokenExchange's
 * (token-exchange.js); the owner tells it what happens to the socket and the tabs.
 */
import {
  CONNECT_TIMEOUT_MS,
  HEARTBEAT_MS,
  PING_INTERVAL_MS,
  SLUG_RE,
  TAB_TIMEOUT_MS,
  advance,
  aliveMsg,
  backoffDelay,
  errorTabs,
  helloFrame,
  needsToken,
  parseServerFrame,
  pingFrame,
  publishFrame,
  reattachMsg,
  sinceOf,
  stateMsg,
  subscribeFrame,
  subscribedPosition,
  tabLockName,
  unsubscribeFrame,
} from "./protocol.js";
import { TokenExchange } from "./token-exchange.js";

/**
 * @typedef {object} TabLink How the owner reaches one tab.
 * @property {(msg: object) => void} send
 * @property {{sendMany: (tabIds: string[], msg: object) => void}} [group]
 *   links sharing a group (the leader's BroadcastChannel) take one message for
 *   many tabs in one post instead of one post per tab
 *
 * @typedef {object} Tab
 * @property {TabLink} link
 * @property {"lock"|"heartbeat"|"none"} watch
 * @property {number} lastSeen time of the tab's last message
 * @property {Map<string, string>} subs subscription id → room
 * @property {boolean} tokens whether its page can answer token requests
 */

/**
 * The owner's book of attached tabs and their subscriptions. Pure: no timers,
 * no sockets, no globals, so it is unit-tested on its own.
 */
export class TabRegistry {
  /** @type {Map<string, Tab>} */
  #tabs = new Map();

  get size() {
    return this.#tabs.size;
  }

  /** @returns {Tab|undefined} */
  get(tabId) {
    return this.#tabs.get(tabId);
  }

  /** @returns {IterableIterator<[string, Tab]>} */
  entries() {
    return this.#tabs.entries();
  }

  ids() {
    return [...this.#tabs.keys()];
  }

  /**
   * Attach a tab, or refresh one we know (it keeps its subscriptions).
   * @returns {boolean} whether the tab is new
   */
  attach(tabId, watch, link, now, tokens = false) {
    const known = this.#tabs.get(tabId);
    if (known) {
      known.link = link;
      known.watch = watch;
      known.lastSeen = now;
      known.tokens = tokens;
      return false;
    }
    this.#tabs.set(tabId, { link, watch, lastSeen: now, subs: new Map(), tokens });
    return true;
  }

  /** Forget a tab; returns it (with the subscriptions to undo) if it was known. */
  drop(tabId) {
    const tab = this.#tabs.get(tabId);
    this.#tabs.delete(tabId);
    return tab;
  }

  /** @returns {boolean} whether this is a new subscription (a valid room, an unknown sub) */
  subscribe(tabId, sub, room) {
    const tab = this.#tabs.get(tabId);
    if (!tab || !SLUG_RE.test(room) || typeof sub !== "string" || tab.subs.has(sub)) return false;
    tab.subs.set(sub, room);
    return true;
  }

  /** @returns {string|null} the room the subscription was in, null if it was not the tab's */
  unsubscribe(tabId, sub) {
    const tab = this.#tabs.get(tabId);
    const room = tab?.subs.get(sub);
    if (room === undefined) return null;
    tab.subs.delete(sub);
    return room;
  }

  /** The tab id a subscription belongs to, or null. */
  tabOf(sub) {
    for (const [id, tab] of this.#tabs) if (tab.subs.has(sub)) return id;
    return null;
  }

  /** Tab ids with at least one subscription in `room`. */
  inRoom(room) {
    const ids = [];
    for (const [id, tab] of this.#tabs) {
      for (const r of tab.subs.values()) {
        if (r === room) {
          ids.push(id);
          break;
        }
      }
    }
    return ids;
  }

  /** Heartbeat-watched tabs silent since before now - timeout. */
  stale(now, timeout) {
    const ids = [];
    for (const [id, tab] of this.#tabs) {
      if (tab.watch === "heartbeat" && tab.lastSeen < now - timeout) ids.push(id);
    }
    return ids;
  }

  /** Every subscription of every tab, as [sub, room]. */
  *subscriptions() {
    for (const tab of this.#tabs.values()) yield* tab.subs;
  }
}

/**
 * Send one message to many tabs: one post per group (the leader's
 * BroadcastChannel, naming every recipient), else one per tab.
 * @param {TabRegistry} registry
 * @param {string[]} tabIds
 * @param {object} msg
 */
export function sendToTabs(registry, tabIds, msg) {
  /** @type {Map<object, string[]>} */
  const groups = new Map();
  for (const id of tabIds) {
    const link = registry.get(id)?.link;
    if (!link) continue;
    if (link.group) {
      if (!groups.has(link.group)) groups.set(link.group, []);
      groups.get(link.group).push(id);
    } else {
      link.send(msg);
    }
  }
  for (const [group, ids] of groups) group.sendMany(ids, msg);
}

export class SocketOwner {
  #tabs = new TabRegistry();
  /**
   * Where each subscription stands in its room's history (sub → Position): it subscribes
   * with `since` after any reconnect, and each message reaches its tab once, in order.
   * @type {Map<string, import("./protocol.js").Position>}
   */
  #positions = new Map();
  /** Tab ids whose Web Lock we already wait on (a restored tab must not queue a second waiter). */
  #watching = new Set();
  /** @type {WebSocket|null} */
  #ws = null;
  #attempt = 0;
  #retryTimer = 0;
  #connectTimer = 0;
  #pingTimer = 0;
  #sweepTimer = 0;
  #aliveTimer = 0;
  #lastFrameAt = 0;
  #lastPingAt = 0;
  #closed = false;
  /** Aborted on close(): our online/offline listeners and the tab-lock waits still queued. */
  #listening = new AbortController();
  /** What the last online/offline event said, from our own scope or from a tab. */
  #online = globalThis.navigator?.onLine !== false;
  /** @type {import("./protocol.js").LinkState} */
  #state;
  /** This socket's identity: private and presence subscriptions go to the server only while `ok`. */
  #tokens = new TokenExchange({
    tabs: this.#tabs,
    isOpen: () => this.#ws?.readyState === WebSocket.OPEN,
    send: (frame) => this.#send(frame),
    onIdentity: (identity, first) => this.#onIdentity(identity, first),
  });

  /**
   * @param {{url: string, transport: "sharedworker"|"leader"|"direct"}} options
   */
  constructor({ url, transport }) {
    this.url = url;
    this.transport = transport;
    this.#state = { transport, status: "connecting", retryAt: null };
    // Workers and windows both fire these on their global scope; tabs forward theirs
    // too, as a worker may not hear about a network change (or its emulation).
    const signal = this.#listening.signal;
    globalThis.addEventListener?.("online", () => this.#onOnline(), { signal });
    globalThis.addEventListener?.("offline", () => this.#onOffline(), { signal });
  }

  /**
   * Handle one message from a tab.
   * @param {string} tabId
   * @param {{type: string} & Record<string, any>} msg
   * @param {TabLink} link used to answer a tab we do not know yet
   */
  receive(tabId, msg, link) {
    if (this.#closed || typeof tabId !== "string" || !msg || typeof msg.type !== "string") return;
    if (msg.type === "attach") {
      this.#attach(tabId, msg.watch, link, msg.tokens === true);
      return;
    }
    if (msg.type === "probe") link.send(aliveMsg());
    const tab = this.#tabs.get(tabId);
    if (!tab) {
      // Dropped while it was alive after all (e.g. a throttled heartbeat): ask it to start over.
      if (msg.type !== "detach") link.send(reattachMsg());
      return;
    }
    tab.lastSeen = Date.now();
    switch (msg.type) {
      case "detach":
        this.#drop(tabId);
        break;
      case "subscribe":
        if (this.#tabs.subscribe(tabId, msg.sub, msg.room)) {
          // A tab that moved here from another owner says where it stood.
          const since = sinceOf(msg.since);
          if (since) this.#positions.set(msg.sub, { ...since, live: false });
          this.#subscribe(msg.room, msg.sub);
        }
        break;
      case "unsubscribe": {
        const room = this.#tabs.unsubscribe(tabId, msg.sub);
        this.#positions.delete(msg.sub);
        // A private subscription was only sent while authenticated.
        if (room !== null && (!needsToken(room) || this.#tokens.ok)) this.#send(unsubscribeFrame(room, msg.sub));
        break;
      }
      case "token":
        this.#tokens.token(tabId, msg);
        break;
      case "publish":
        if (!this.#send(publishFrame(msg.room, msg.data))) {
          tab.link.send({
            type: "error",
            code: "not_connected",
            reason: "not connected; message not sent",
            room: msg.room,
          });
        }
        break;
      case "network":
        if (msg.online) this.#onOnline();
        else this.#onOffline();
        break;
      case "retry":
        this.#retryNow();
        break;
      // "heartbeat" and "probe" only refresh lastSeen.
    }
  }

  /**
   * Stop for good: the socket, every timer and listener. Tabs are not told; the
   * leader that calls this has lost its lock, and its followers follow the next one.
   */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#listening.abort();
    for (const tabId of this.#tabs.ids()) this.#tabs.drop(tabId);
    this.#stop();
  }

  #attach(tabId, watch, link, tokens) {
    // A tab we know attaching again (it relinked to us after a slow probe) replays every subscription
    // with where it stands: drop the old ones first, so each comes back with its own `subscribed`.
    const known = this.#tabs.get(tabId);
    if (known) {
      for (const [sub, room] of known.subs) {
        this.#positions.delete(sub);
        if (!needsToken(room) || this.#tokens.ok) this.#send(unsubscribeFrame(room, sub));
      }
      known.subs.clear();
    }
    const isNew = this.#tabs.attach(tabId, watch, link, Date.now(), tokens);
    if (watch === "lock") this.#watchLock(tabId);
    link.send(stateMsg(this.#state));
    const identity = this.#tokens.identity;
    if (identity) link.send(identity);
    if (this.#tabs.size === 1 && isNew) this.#start();
  }

  /** Wait on the tab's own lock: the browser grants it to us once the tab has closed or crashed. */
  #watchLock(tabId) {
    if (this.#watching.has(tabId) || !globalThis.navigator?.locks) return;
    this.#watching.add(tabId);
    // close() withdraws the waits still queued (a leader stepping down).
    navigator.locks
      .request(tabLockName(tabId), { signal: this.#listening.signal }, () => {
        this.#watching.delete(tabId);
        this.#drop(tabId);
      })
      .catch(() => this.#watching.delete(tabId));
  }

  /** Forget a tab and its subscriptions; the socket goes once no tab is left. */
  #drop(tabId) {
    const tab = this.#tabs.drop(tabId);
    if (!tab) return;
    for (const [sub, room] of tab.subs) {
      this.#positions.delete(sub);
      if (!needsToken(room) || this.#tokens.ok) this.#send(unsubscribeFrame(room, sub));
    }
    // A token request waiting on this tab goes to the next one.
    this.#tokens.tabGone(tabId);
    if (this.#tabs.size === 0) this.#stop();
  }

  #sweep() {
    for (const tabId of this.#tabs.stale(Date.now(), TAB_TIMEOUT_MS)) this.#drop(tabId);
  }

  #sendTo(tabIds, msg) {
    sendToTabs(this.#tabs, tabIds, msg);
  }

  // ---- socket lifecycle -------------------------------------------------------

  #start() {
    this.#sweepTimer = setInterval(() => this.#sweep(), HEARTBEAT_MS);
    this.#aliveTimer = setInterval(() => this.#sendTo(this.#tabs.ids(), aliveMsg()), HEARTBEAT_MS);
    this.#attempt = 0;
    this.#connect();
  }

  #stop() {
    this.#tokens.stop();
    clearInterval(this.#sweepTimer);
    clearInterval(this.#aliveTimer);
    clearTimeout(this.#retryTimer);
    this.#abandonSocket();
    this.#setState("connecting");
  }

  #connect() {
    clearTimeout(this.#retryTimer);
    if (!this.#online) {
      this.#setState("offline");
      return;
    }
    const ws = new WebSocket(this.url);
    this.#ws = ws;
    this.#setState("connecting");
    ws.onopen = () => this.#onOpen();
    ws.onmessage = (event) => this.#onFrame(event.data);
    // A failed connect fires error then close; close alone carries the decision.
    ws.onclose = (event) => {
      // 4001: this user was signed out. We reconnect, and the new socket asks getToken
      // again: a page that has no token any more gets no_token, and nothing loops.
      if (event.code === 4001) {
        this.#sendTo(this.#tabs.ids(), { type: "error", code: "signed_out", reason: "this user was signed out" });
      }
      this.#recycle();
    };
    this.#connectTimer = setTimeout(() => this.#recycle(), CONNECT_TIMEOUT_MS);
  }

  #onOpen() {
    clearTimeout(this.#connectTimer);
    this.#lastFrameAt = this.#lastPingAt = Date.now();
    this.#send(helloFrame(this.transport));
    // Nothing is live on a new socket until the server says `subscribed` (and replays).
    for (const position of this.#positions.values()) position.live = false;
    for (const [sub, room] of this.#tabs.subscriptions()) {
      if (!needsToken(room)) this.#send(this.#subscribeFrame(room, sub));
    }
    // Authenticate before the private and presence rooms go (they follow the reply).
    this.#tokens.opened();
    this.#pingTimer = setInterval(() => this.#ping(), PING_INTERVAL_MS);
    this.#setState("open");
  }

  #onFrame(text) {
    this.#lastFrameAt = Date.now();
    // The backoff resets on the first frame, not on open: a server that accepts and
    // then drops every socket must not turn into a tight reconnect loop.
    this.#attempt = 0;
    const frame = parseServerFrame(text);
    if (!frame) return;
    if (frame.type === "message") {
      this.#onMessage(frame);
    } else if (frame.type === "subscribed") {
      this.#onSubscribed(frame);
    } else if (frame.type === "connection_message" || frame.type === "presence_diff") {
      this.#sendTo(this.#tabs.inRoom(frame.room), frame);
    } else if (frame.type === "presence") {
      // The whole list, once per subscription: only to the tab whose subscription it is.
      const tabs = typeof frame.sub === "string" ? errorTabs(frame, this.#tabs.entries()) : this.#tabs.inRoom(frame.room);
      this.#sendTo(tabs, frame);
    } else if (frame.type === "authenticated") {
      this.#tokens.authenticated(frame);
    } else if (frame.type === "error") {
      // Our own auth refused: its subscriptions were told (no_token, with the reason), nobody else is.
      if (!this.#tokens.error(frame)) this.#sendTo(errorTabs(frame, this.#tabs.entries()), frame);
    }
  }

  // ---- history -------------------------------------------------------------

  #subscribeFrame(room, sub) {
    return subscribeFrame(room, sub, this.#positions.get(sub));
  }

  /**
   * A message goes to each tab one of whose subscriptions it is next for: a replay
   * (`sub` set) to that subscription's tab only, a live one to the tabs in its room.
   */
  #onMessage(frame) {
    if (typeof frame.sub === "string") {
      const tabId = this.#tabs.tabOf(frame.sub);
      if (tabId !== null && this.#take(frame.sub, frame)) this.#sendTo([tabId], frame);
      return;
    }
    const tabIds = [];
    for (const tabId of this.#tabs.inRoom(frame.room)) {
      let take = false;
      for (const [sub, room] of this.#tabs.get(tabId).subs) {
        if (room === frame.room && this.#take(sub, frame)) take = true;
      }
      if (take) tabIds.push(tabId);
    }
    this.#sendTo(tabIds, frame);
  }

  /** Whether `frame` is the next message for `sub` (and move its position on). */
  #take(sub, frame) {
    const { deliver, position } = advance(this.#positions.get(sub), frame);
    if (position) this.#positions.set(sub, position);
    return deliver;
  }

  /** The server follows the room for `sub` now; its tab hears whether anything was lost. */
  #onSubscribed(frame) {
    const tabId = this.#tabs.tabOf(frame.sub);
    if (tabId === null) return;
    const { position, reset } = subscribedPosition(this.#positions.get(frame.sub), frame);
    this.#positions.set(frame.sub, position);
    this.#sendTo([tabId], { ...frame, reset });
  }

  // ---- identity ---------------------------------------------------------------

  /** A private or presence subscription goes once the socket is authenticated, and asks for a token if nobody has. */
  #subscribe(room, sub) {
    if (!needsToken(room) || this.#tokens.ok) {
      this.#send(this.#subscribeFrame(room, sub));
    } else {
      this.#tokens.need();
    }
  }

  /** The server accepted a token: its first acceptance on a socket sends the private subscriptions. */
  #onIdentity(identity, first) {
    if (first) {
      for (const [sub, room] of this.#tabs.subscriptions()) {
        if (needsToken(room)) this.#send(this.#subscribeFrame(room, sub));
      }
    }
    this.#sendTo(this.#tabs.ids(), identity);
  }

  /** Drop the socket (closed, stuck handshaking or silent) and reconnect after a backoff. */
  #recycle() {
    this.#abandonSocket();
    this.#scheduleReconnect();
  }

  /**
   * Ping, or recycle the socket if nothing came back since the previous ping.
   * Comparing with the last ping instead of a wall-clock budget keeps a tab whose
   * timers are throttled in the background from killing a healthy socket.
   */
  #ping() {
    if (this.#lastPingAt > this.#lastFrameAt) {
      this.#recycle();
      return;
    }
    this.#lastPingAt = Date.now();
    this.#send(pingFrame());
  }

  #scheduleReconnect() {
    if (this.#tabs.size === 0) return;
    if (!this.#online) {
      this.#setState("offline");
      return;
    }
    const delay = backoffDelay(this.#attempt++);
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
    this.#setState("reconnecting", Date.now() + delay);
  }

  /**
   * Drop the socket without waiting for its close handshake, which on a dead
   * network can take a minute; a late event from it must not touch the new one.
   */
  #abandonSocket() {
    clearTimeout(this.#connectTimer);
    this.#tokens.closed();
    clearInterval(this.#pingTimer);
    const ws = this.#ws;
    if (!ws) return;
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.close();
  }

  /**
   * Try now instead of at the end of the backoff wait (reconnecting), or instead of waiting for
   * an `online` event that may never come (offline: the browser's idea of the network can be
   * wrong). If the try fails, the backoff goes on from where it was.
   */
  #retryNow() {
    if (this.#ws || this.#tabs.size === 0) return; // a socket is open or opening already
    this.#online = true;
    this.#connect();
  }

  #onOffline() {
    if (!this.#online) return;
    this.#online = false;
    if (this.#tabs.size === 0) return;
    clearTimeout(this.#retryTimer);
    this.#abandonSocket();
    this.#setState("offline");
  }

  #onOnline() {
    if (this.#online) return;
    this.#online = true;
    if (this.#tabs.size === 0 || this.#ws) return;
    this.#attempt = 0;
    this.#connect();
  }

  /** Send a frame if the socket is open; returns whether it went. */
  #send(frame) {
    if (this.#ws?.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  #setState(status, retryAt = null) {
    this.#state = { transport: this.transport, status, retryAt };
    this.#sendTo(this.#tabs.ids(), stateMsg(this.#state));
  }
}
