/**
 * The one place that owns the connection to the server on behalf of many tabs.
 *
 * Used by the SharedWorker (tabs on MessagePorts), by the leader tab (tabs on a
 * BroadcastChannel, itself included) and by the direct path (a single tab in
 * the same page). It only ever sees tabs through a `TabLink`, so the three
 * sharing modes share every rule: one subscription per room handle, resubscribe
 * all of them after a reconnect, fan each server frame out to the tabs in its
 * room, and forget tabs that are gone so the server's count stays honest.
 *
 * The connection is a wire (wires.js): a WebSocket, an SSE stream or long-polling, each
 * carrying the frames of `/ws/`. Which one is the Ladder's choice (ladder.js); the owner
 * tells it how each wire ended, remembers what worked per origin (transport-memory.js),
 * and below the best transport tries that one in the background every few minutes,
 * moving up once it delivers a frame. Moving to another wire is a reconnect like any
 * other: every subscription goes again with `since`, so nothing is lost or repeated.
 * The connection's identity (tokens from tabs, `auth`, refresh) is the TokenExchange's
 * (token-exchange.js); the owner tells it what happens to the wire and the tabs.
 */
import { Ladder, upgradeDelay } from "./ladder.js";
import {
  CONNECT_TIMEOUT_MS,
  HEARTBEAT_MS,
  PING_INTERVAL_MS,
  SLUG_RE,
  TAB_TIMEOUT_MS,
  TRANSPORTS,
  advance,
  aliveMsg,
  backoffDelay,
  checkServerFrame,
  errorTabs,
  helloFrame,
  membersFrame,
  needsToken,
  originCheckUrl,
  originRefusal,
  parseServerFrame,
  pingFrame,
  publishFrame,
  whisperFrame,
  reattachMsg,
  sinceOf,
  stateMsg,
  subscribeFrame,
  subscribedPosition,
  tabLockName,
  transportList,
  transportMemoryKey,
  transportUrls,
  unsubscribeFrame,
} from "./protocol.js";
import { TokenExchange } from "./token-exchange.js";
import { openTransportMemory, recall } from "./transport-memory.js";
import { makeWire } from "./wires.js";

/** The owner waits at most this long for the memory of what worked before its first connection. */
export const MEMORY_WAIT_MS = 500;

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
  /** The wire in use or being opened (wires.js). @type {import("./wires.js").WebSocketWire|import("./wires.js").SseWire|import("./wires.js").PollWire|null} */
  #wire = null;
  /** Whether the current wire has heard the server yet (told to the ladder and the memory once). */
  #wireWorked = false;
  /** A wire of the best transport, tried in the background while a lower one is in use. */
  #probe = null;
  #probeTimer = 0;
  #upgradeTimer = 0;
  #ladder;
  #urls;
  /** @type {import("./transport-memory.js").TransportMemory|null} */
  #memory;
  #memoryKey;
  /** Bumped by each start and stop: a memory answer for an earlier start is ignored. */
  #run = 0;
  #attempt = 0;
  #retryTimer = 0;
  #connectTimer = 0;
  #pingTimer = 0;
  #sweepTimer = 0;
  #aliveTimer = 0;
  #lastFrameAt = 0;
  #lastPingAt = 0;
  #closed = false;
  /** Whether the server was asked about our Origin since a wire last opened (once per failing streak). */
  #originAsked = false;
  /** The `origin_refused` error while the server refuses our Origin: each tab is told, new ones too. */
  #originRefused = null;
  /** Aborted on close(): our online/offline listeners and the tab-lock waits still queued. */
  #listening = new AbortController();
  /** What the last online/offline event said, from our own scope or from a tab. */
  #online = globalThis.navigator?.onLine !== false;
  /** @type {import("./protocol.js").LinkState} */
  #state;
  /** This connection's identity: private and presence subscriptions go to the server only while `ok`. */
  #tokens = new TokenExchange({
    tabs: this.#tabs,
    isOpen: () => this.#wire?.isOpen === true,
    send: (frame) => this.#send(frame),
    onIdentity: (identity, first) => this.#onIdentity(identity, first),
  });

  /**
   * @param {{url: string, sharing: "sharedworker"|"leader"|"direct", transports?: string[],
   *          memory?: import("./transport-memory.js").TransportMemory|null}} options
   *   url: the `/ws/` endpoint (`/sse/` and `/poll/` are found beside it); transports: which
   *   wires to try, best first (default all); memory: where what worked is remembered
   *   (default IndexedDB where there is one; null: nothing is remembered)
   */
  constructor({ url, sharing, transports = TRANSPORTS, memory = openTransportMemory() }) {
    this.url = url;
    this.sharing = sharing;
    this.#urls = transportUrls(url);
    this.#ladder = new Ladder(transportList(transports));
    this.#memory = memory;
    this.#memoryKey = transportMemoryKey(url);
    this.#state = { sharing, transport: this.#ladder.current, status: "connecting", retryAt: null };
    // Workers and windows both fire these on their global scope; tabs forward theirs
    // too, as a worker may not hear about a network change (or its emulation).
    const signal = this.#listening.signal;
    globalThis.addEventListener?.("online", () => this.#onOnline(), { signal });
    globalThis.addEventListener?.("offline", () => this.#onOffline(), { signal });
  }

  /** The wire in use or being tried: "websocket", "sse" or "poll". */
  get transport() {
    return this.#ladder.current;
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
      case "members":
        this.#members(tab, msg);
        break;
      case "publish": {
        // Over SSE and long-polling the server may refuse the frame alone (its POST's 4xx): only its tab hears.
        const refused = (reason) => tab.link.send({ type: "error", code: "refused", reason, room: msg.room });
        if (!this.#send(publishFrame(msg.room, msg.data, msg.event), refused)) {
          tab.link.send({
            type: "error",
            code: "not_connected",
            reason: "not connected; message not sent",
            room: msg.room,
          });
        }
        break;
      }
      case "whisper": {
        // The server never sends a whisper back to the socket it came from: this browser's other
        // tabs in the room hear it from here.
        if (!this.#send(whisperFrame(msg.room, msg.event, msg.data))) break;
        const others = this.#tabs.inRoom(msg.room).filter((id) => id !== tabId);
        const user = this.#tokens.identity?.user ?? null;
        this.#sendTo(others, { type: "whisper", room: msg.room, event: msg.event, data: msg.data, user });
        break;
      }
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
    if (this.#originRefused) link.send(this.#originRefused);
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

  /**
   * A page of a presence room's members for one of the tab's subscriptions: to the server, whose
   * `presence` answer (with that sub) goes to this tab alone. What cannot go is refused here, as
   * the server refuses a page: an error naming the `after` asked for.
   */
  #members(tab, msg) {
    const after = typeof msg.after === "string" ? msg.after : "";
    const refuse = (code, reason) => tab.link.send({ type: "error", code, reason, room: msg.room, sub: msg.sub, after });
    const room = tab.subs.get(msg.sub);
    if (room === undefined || room !== msg.room) {
      refuse("not_subscribed", "ask for members of a room through a subscription to it");
    } else if (needsToken(room) && !this.#tokens.ok) {
      refuse("not_connected", "not authenticated yet");
    } else if (!this.#send(membersFrame(room, msg.sub, after), (reason) => refuse("refused", reason))) {
      refuse("not_connected", "not connected");
    }
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

  // ---- connection lifecycle ---------------------------------------------------

  #start() {
    this.#sweepTimer = setInterval(() => this.#sweep(), HEARTBEAT_MS);
    this.#aliveTimer = setInterval(() => this.#sendTo(this.#tabs.ids(), aliveMsg()), HEARTBEAT_MS);
    this.#attempt = 0;
    const run = ++this.#run;
    if (!this.#memory) {
      this.#connect();
      return;
    }
    // Start on the transport that worked here lately (a network that blocks WebSockets
    // then costs no failed tries); a slow or missing memory starts from the best one.
    recall(this.#memory, this.#memoryKey, MEMORY_WAIT_MS).then((remembered) => {
      if (run !== this.#run || this.#closed || this.#wire) return; // stopped, or "retry now" connected meanwhile
      this.#ladder.begin(remembered, Date.now());
      this.#connect();
    });
  }

  #stop() {
    this.#run++;
    this.#tokens.stop();
    clearInterval(this.#sweepTimer);
    clearInterval(this.#aliveTimer);
    clearTimeout(this.#retryTimer);
    this.#abandonWire();
    this.#setState("connecting");
  }

  #connect() {
    clearTimeout(this.#retryTimer);
    if (!this.#online) {
      this.#setState("offline");
      return;
    }
    const wire = this.#makeWire(this.#ladder.current);
    this.#wire = wire;
    this.#wireWorked = false;
    this.#setState("connecting");
    try {
      wire.open();
    } catch (err) {
      // This scope lacks the API (no EventSource), or refuses the URL: as a failure to open.
      this.#ended(wire, { code: 1006, reason: String(err) });
      return;
    }
    this.#connectTimer = setTimeout(() => this.#ended(wire, { code: 1006, reason: "no handshake in time" }), CONNECT_TIMEOUT_MS);
  }

  /** A wire whose events reach the owner only while it is the current wire or the background try. */
  #makeWire(kind) {
    const wire = makeWire(kind, this.#urls, {
      onOpen: () => {
        if (wire === this.#wire) this.#onOpen();
        else if (wire === this.#probe) this.#onProbeOpen(wire);
      },
      onFrame: (data) => {
        if (wire === this.#wire) this.#onFrame(data);
        else if (wire === this.#probe) this.#adopt(wire, data);
      },
      onClose: (end) => {
        if (wire === this.#wire) this.#ended(wire, end);
        else if (wire === this.#probe) this.#dropProbe(true);
      },
    });
    return wire;
  }

  #onOpen() {
    clearTimeout(this.#connectTimer);
    this.#originAsked = false;
    this.#originRefused = null;
    this.#lastFrameAt = this.#lastPingAt = Date.now();
    // SSE and long-polling open on the server's first word (the session); a WebSocket on its handshake.
    if (this.#wire.heard) this.#worked();
    this.#send(helloFrame(this.sharing));
    // Nothing is live on a new wire until the server says `subscribed` (and replays).
    for (const position of this.#positions.values()) position.live = false;
    for (const [sub, room] of this.#tabs.subscriptions()) {
      if (!needsToken(room)) this.#send(this.#subscribeFrame(room, sub));
    }
    // Authenticate before the private and presence rooms go (they follow the reply); with no
    // getToken in any tab they go now, for the server to judge (its connect proxy knows the cookie).
    this.#tokens.opened();
    if (this.#tokens.ok) {
      for (const [sub, room] of this.#tabs.subscriptions()) {
        if (needsToken(room)) this.#send(this.#subscribeFrame(room, sub));
      }
    }
    this.#pingTimer = setInterval(() => this.#ping(), PING_INTERVAL_MS);
    this.#setState("open");
  }

  /** @param {unknown} data JSON text, or (long-polling) the frame itself */
  #onFrame(data) {
    this.#lastFrameAt = Date.now();
    // The backoff resets on the first frame, not on open: a server that accepts and
    // then drops every socket must not turn into a tight reconnect loop.
    this.#attempt = 0;
    this.#worked();
    const frame = typeof data === "string" ? parseServerFrame(data) : checkServerFrame(data);
    if (!frame) return;
    if (frame.type === "message") {
      this.#onMessage(frame);
    } else if (frame.type === "subscribed") {
      this.#onSubscribed(frame);
    } else if (frame.type === "connection_message" || frame.type === "presence_diff" || frame.type === "whisper") {
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
    } else if (frame.type === "close") {
      // The server ended an SSE or polling session: as a WebSocket closed with that code.
      this.#ended(this.#wire, { code: frame.code, reason: frame.reason ?? "" });
    }
  }

  /** The current wire heard the server: the ladder keeps this rung, the origin remembers it. */
  #worked() {
    if (this.#wireWorked) return;
    this.#wireWorked = true;
    const record = this.#ladder.worked(Date.now());
    this.#memory?.set(this.#memoryKey, record).catch(() => {});
    this.#scheduleUpgrade();
  }

  /**
   * The current wire ended (closed, failed, refused, silent, a `close` frame, or given up by us):
   * the ladder learns how, and the next try follows the backoff (on the rung the ladder says).
   * @param {object} wire
   * @param {{code?: number, reason?: string, silent?: boolean}} end
   */
  #ended(wire, { code = 1006, reason = "", ...rest }) {
    if (!wire || wire !== this.#wire) return;
    // 4001: this user was signed out. We reconnect, and the new connection asks getToken
    // again: a page that has no token any more gets no_token, and nothing loops.
    if (code === 4001) {
      this.#sendTo(this.#tabs.ids(), { type: "error", code: "signed_out", reason: "this user was signed out" });
    }
    this.#ladder.ended({ code, reason, opened: wire.opened, heard: wire.heard, ...rest });
    if (!wire.opened && !this.#originAsked) this.#askOrigin();
    // 1001: this server is draining; another takes us at once (a jittered moment, not the backoff).
    if (code === 1001) this.#attempt = 0;
    this.#abandonWire();
    this.#scheduleReconnect();
  }

  /**
   * A wire failed to open, and a browser tells a script no more than 1006 about a refused
   * handshake: ask the server once whether it takes our Origin, and if not, tell every tab (each
   * shows it in its page's console), naming the option to set. Asked again only after a wire
   * has opened since, so a server down for long is not asked at every retry.
   */
  async #askOrigin() {
    this.#originAsked = true;
    if (typeof fetch !== "function") return;
    let answer = null;
    try {
      const response = await fetch(originCheckUrl(this.url, globalThis.location?.origin), {
        cache: "no-store",
        credentials: "omit",
      });
      if (response.ok) answer = await response.json();
    } catch {
      return; // the server is down or is not rrr: nothing to say about the Origin
    }
    const refusal = originRefusal(answer, this.url);
    if (!refusal || this.#closed || this.#wire?.opened) return;
    this.#originRefused = refusal;
    this.#sendTo(this.#tabs.ids(), refusal);
  }

  // ---- moving up ----------------------------------------------------------------

  /** Below the best transport: try it again in a few minutes. */
  #scheduleUpgrade() {
    clearTimeout(this.#upgradeTimer);
    if (this.#ladder.belowTop) this.#upgradeTimer = setTimeout(() => this.#tryUpgrade(), upgradeDelay());
  }

  /** Open a wire of the best transport beside the one in use; it replaces it once the server answers on it. */
  #tryUpgrade() {
    if (this.#probe || !this.#wire?.isOpen || !this.#ladder.belowTop || !this.#online) {
      this.#scheduleUpgrade();
      return;
    }
    const probe = this.#makeWire(this.#ladder.top);
    this.#probe = probe;
    try {
      probe.open();
    } catch {
      this.#dropProbe(true);
      return;
    }
    this.#probeTimer = setTimeout(() => this.#dropProbe(true), CONNECT_TIMEOUT_MS);
  }

  /** A WebSocket has to be asked something before it proves frames get through; SSE and polling already did. */
  #onProbeOpen(probe) {
    if (probe.heard) this.#adopt(probe, null);
    else probe.send(pingFrame());
  }

  /**
   * The background wire heard the server: it becomes the wire, exactly as after a reconnect
   * (hello, every subscription again with `since`, auth), and the old one goes.
   */
  #adopt(probe, data) {
    clearTimeout(this.#probeTimer);
    this.#probe = null;
    const old = this.#wire;
    if (old?.kind === "poll") {
      // A polling session lingers on the server until it times out: leave its rooms now.
      for (const [sub, room] of this.#tabs.subscriptions()) {
        if (!needsToken(room) || this.#tokens.ok) old.send(unsubscribeFrame(room, sub));
      }
    }
    this.#abandonWire(true);
    this.#ladder.upgraded();
    this.#wire = probe;
    this.#wireWorked = false;
    this.#attempt = 0;
    this.#onOpen();
    if (data !== null) this.#onFrame(data);
  }

  #dropProbe(again) {
    clearTimeout(this.#probeTimer);
    const probe = this.#probe;
    this.#probe = null;
    probe?.close();
    if (again) this.#scheduleUpgrade();
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

  /** Give up on the wire (stuck handshaking, or silent): as if it had closed. */
  #recycle(reason) {
    this.#ended(this.#wire, { code: 1006, reason });
  }

  /**
   * Ping, or recycle the wire if nothing came back since the previous ping.
   * Comparing with the last ping instead of a wall-clock budget keeps a tab whose
   * timers are throttled in the background from killing a healthy connection.
   */
  #ping() {
    if (!this.#wire) return;
    if (this.#lastPingAt > this.#lastFrameAt) {
      this.#recycle("no answer to a ping");
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
   * Drop the wire without waiting for a close handshake, which on a dead network can take a
   * minute; a late event from it must not touch the new one. The background try goes with it.
   * `flush`: frames already sent on it still go out (a polling session saying goodbye).
   */
  #abandonWire(flush = false) {
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#upgradeTimer);
    this.#dropProbe(false);
    this.#tokens.closed();
    clearInterval(this.#pingTimer);
    const wire = this.#wire;
    if (!wire) return;
    this.#wire = null;
    if (flush && wire.kind === "poll") wire.close({ flush: true });
    else wire.close();
  }

  /**
   * Try now instead of at the end of the backoff wait (reconnecting), or instead of waiting for
   * an `online` event that may never come (offline: the browser's idea of the network can be
   * wrong). If the try fails, the backoff goes on from where it was.
   */
  #retryNow() {
    if (this.#wire || this.#tabs.size === 0) return; // a wire is open or opening already
    this.#online = true;
    this.#connect();
  }

  #onOffline() {
    if (!this.#online) return;
    this.#online = false;
    if (this.#tabs.size === 0) return;
    clearTimeout(this.#retryTimer);
    this.#abandonWire();
    this.#setState("offline");
  }

  #onOnline() {
    if (this.#online) return;
    this.#online = true;
    // Perhaps another network: what worked on the last one proves nothing here.
    this.#ladder.networkChanged();
    if (this.#tabs.size === 0 || this.#wire) return;
    this.#attempt = 0;
    this.#connect();
  }

  /**
   * Send a frame if the wire is open; returns whether it went. Over SSE and long-polling the
   * server may refuse one frame (its POST's 4xx); `onRefused` hears why (else the tabs its
   * subscription belongs to).
   * @param {object} frame
   * @param {((reason: string) => void)|null} [onRefused]
   */
  #send(frame, onRefused = null) {
    return this.#wire?.send(frame, onRefused ?? ((reason) => this.#refused(frame, reason))) ?? false;
  }

  /** A frame the server refused alone: `auth` fails like a refused token; a room's frame tells its subscriptions. */
  #refused(frame, reason) {
    if (frame.type === "auth") {
      this.#tokens.error({ code: "bad_token", reason });
    } else if (typeof frame.room === "string") {
      const error = { type: "error", code: "refused", reason, room: frame.room, ...(typeof frame.sub === "string" ? { sub: frame.sub } : {}) };
      this.#sendTo(errorTabs(error, this.#tabs.entries()), error);
    }
  }

  #setState(status, retryAt = null) {
    this.#state = { sharing: this.sharing, transport: this.#ladder.current, status, retryAt };
    this.#sendTo(this.#tabs.ids(), stateMsg(this.#state));
  }
}
