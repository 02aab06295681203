/**
 * The one place that owns a `/ws/` socket on behalf of many tabs.
 *
 * Used by the SharedWorker (tabs on MessagePorts), by the leader tab (tabs on a
 * BroadcastChannel, itself included) and by the direct path (a single tab in
 * the same page). It only ever sees tabs through a `TabLink`, so the three
 * transports share every rule: one subscription per room handle, resubscribe
 * all of them after a reconnect, fan each server frame out to the tabs in its
 * room, and forget tabs that are gone so the server's count stays honest.
 */
import {
  CONNECT_TIMEOUT_MS,
  HEARTBEAT_MS,
  PING_INTERVAL_MS,
  SLUG_RE,
  TAB_TIMEOUT_MS,
  backoffDelay,
  helloFrame,
  parseServerFrame,
  pingFrame,
  publishFrame,
  reattachMsg,
  stateMsg,
  subscribeFrame,
  tabLockName,
  unsubscribeFrame,
} from "./protocol.js";

/**
 * @typedef {object} TabLink How the owner reaches one tab.
 * @property {(msg: object) => void} send
 *
 * @typedef {object} Tab
 * @property {TabLink} link
 * @property {"lock"|"heartbeat"|"none"} watch
 * @property {number} lastSeen Date.now() of the tab's last message
 * @property {Map<string, string>} subs subscription id → room
 */

export class SocketOwner {
  /** @type {Map<string, Tab>} */
  #tabs = new Map();
  /** Tab ids whose Web Lock we already wait on (a restored tab must not queue a second waiter). */
  #watching = new Set();
  /** @type {WebSocket|null} */
  #ws = null;
  #attempt = 0;
  #retryTimer = 0;
  #connectTimer = 0;
  #pingTimer = 0;
  #sweepTimer = 0;
  #lastFrameAt = 0;
  #lastPingAt = 0;
  /** What the last online/offline event said, from our own scope or from a tab. */
  #online = globalThis.navigator?.onLine !== false;
  /** @type {import("./protocol.js").LinkState} */
  #state;

  /**
   * @param {{url: string, transport: "sharedworker"|"leader"|"direct"}} options
   */
  constructor({ url, transport }) {
    this.url = url;
    this.transport = transport;
    this.#state = { transport, status: "connecting", retryAt: null };
    // Workers and windows both fire these on their global scope; tabs forward theirs
    // too, as a worker may not hear about a network change (or its emulation).
    globalThis.addEventListener("online", () => this.#onOnline());
    globalThis.addEventListener("offline", () => this.#onOffline());
  }

  /**
   * Handle one message from a tab.
   * @param {string} tabId
   * @param {{type: string} & Record<string, any>} msg
   * @param {TabLink} link used to answer a tab we do not know yet
   */
  receive(tabId, msg, link) {
    if (typeof tabId !== "string" || !msg || typeof msg.type !== "string") return;
    if (msg.type === "attach") {
      this.#attach(tabId, msg.watch, link);
      return;
    }
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
        if (SLUG_RE.test(msg.room) && typeof msg.sub === "string" && !tab.subs.has(msg.sub)) {
          tab.subs.set(msg.sub, msg.room);
          this.#send(subscribeFrame(msg.room, msg.sub));
        }
        break;
      case "unsubscribe":
        if (tab.subs.has(msg.sub)) {
          this.#send(unsubscribeFrame(tab.subs.get(msg.sub), msg.sub));
          tab.subs.delete(msg.sub);
        }
        break;
      case "publish":
        if (!this.#send(publishFrame(msg.room, msg.data))) {
          tab.link.send({ type: "error", code: "not_connected", reason: "not connected; message not sent" });
        }
        break;
      case "network":
        if (msg.online) this.#onOnline();
        else this.#onOffline();
        break;
      // "heartbeat" only refreshes lastSeen.
    }
  }

  #attach(tabId, watch, link) {
    const known = this.#tabs.get(tabId);
    if (known) {
      known.link = link;
      known.watch = watch;
      known.lastSeen = Date.now();
    } else {
      this.#tabs.set(tabId, { link, watch, lastSeen: Date.now(), subs: new Map() });
    }
    if (watch === "lock") this.#watchLock(tabId);
    link.send(stateMsg(this.#state));
    if (this.#tabs.size === 1 && !known) this.#start();
  }

  /** Wait on the tab's own lock: the browser grants it to us once the tab has closed or crashed. */
  #watchLock(tabId) {
    if (this.#watching.has(tabId) || !globalThis.navigator?.locks) return;
    this.#watching.add(tabId);
    navigator.locks
      .request(tabLockName(tabId), () => {
        this.#watching.delete(tabId);
        this.#drop(tabId);
      })
      .catch(() => this.#watching.delete(tabId));
  }

  /** Forget a tab and its subscriptions; the socket goes once no tab is left. */
  #drop(tabId) {
    const tab = this.#tabs.get(tabId);
    if (!tab) return;
    this.#tabs.delete(tabId);
    for (const [sub, room] of tab.subs) this.#send(unsubscribeFrame(room, sub));
    if (this.#tabs.size === 0) this.#stop();
  }

  #sweep() {
    const cutoff = Date.now() - TAB_TIMEOUT_MS;
    for (const [tabId, tab] of this.#tabs) {
      if (tab.watch === "heartbeat" && tab.lastSeen < cutoff) this.#drop(tabId);
    }
  }

  // ---- socket lifecycle -------------------------------------------------------

  #start() {
    this.#sweepTimer = setInterval(() => this.#sweep(), HEARTBEAT_MS);
    this.#attempt = 0;
    this.#connect();
  }

  #stop() {
    clearInterval(this.#sweepTimer);
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
    ws.onclose = () => this.#recycle();
    this.#connectTimer = setTimeout(() => this.#recycle(), CONNECT_TIMEOUT_MS);
  }

  #onOpen() {
    clearTimeout(this.#connectTimer);
    this.#lastFrameAt = this.#lastPingAt = Date.now();
    this.#send(helloFrame(this.transport));
    for (const tab of this.#tabs.values()) {
      for (const [sub, room] of tab.subs) this.#send(subscribeFrame(room, sub));
    }
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
    if (frame.type === "connection_message" || frame.type === "message") {
      for (const tab of this.#tabs.values()) {
        if (hasRoom(tab, frame.room)) tab.link.send(frame);
      }
    } else if (frame.type === "error") {
      for (const tab of this.#tabs.values()) tab.link.send(frame);
    }
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
    clearInterval(this.#pingTimer);
    const ws = this.#ws;
    if (!ws) return;
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.close();
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
    for (const tab of this.#tabs.values()) tab.link.send(stateMsg(this.#state));
  }
}

function hasRoom(tab, room) {
  for (const r of tab.subs.values()) if (r === room) return true;
  return false;
}
