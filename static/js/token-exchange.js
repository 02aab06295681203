/**
 * The socket's identity: getting a token from a tab, sending it, and keeping it fresh.
 *
 * Only a page can call the application, so the socket owner (the SharedWorker, the leader tab or
 * the page itself) asks one tab whose page has a getToken, sends what it answers as `auth`, and
 * sends the private and presence subscriptions once the server says `authenticated`. The owner
 * keeps the socket and the subscriptions; it tells this module what happens to them, and this
 * module asks the owner (its host) for the rest. Kept apart so the rules of the exchange (which
 * tab is asked, what a late answer may do, who hears `no_token`) are read and tested on their own.
 *
 * Per socket the identity is "none" (never asked, or the server forgot it: `token_expired`),
 * "pending" (a token is being fetched, or its `auth` awaits the reply), "ok" (the server said
 * `authenticated`) or "failed" (no token; each private and presence subscription was told
 * `no_token`). Private and presence subscriptions go to the server only while "ok", or when the
 * socket opened with no tab that has a getToken: then the server judges them itself (its connect
 * proxy asked the application who the handshake's cookie is, and says `authenticated` unasked;
 * its subscribe proxy may let a room in), and nobody is told `no_token`.
 */
import {
  TOKEN_TIMEOUT_MS,
  authFrame,
  needsToken,
  noTokenError,
  randomId,
  refreshDelay,
  tokenRequestMsg,
  tokenTab,
} from "./protocol.js";

/**
 * @typedef {{type: "authenticated", user: string, exp: number}} Identity
 *
 * @typedef {object} ExchangeHost What the exchange needs from the socket owner.
 * @property {{entries(): Iterable<[string, {link: {send: (msg: object) => void}, subs: Map<string, string>,
 *   tokens: boolean}]>, get(tabId: string): {link: {send: (msg: object) => void}}|undefined}} tabs
 *   the owner's tab registry, read only: which tabs can give a token, whose subscriptions need one
 * @property {() => boolean} isOpen whether the socket is open now
 * @property {(frame: object) => boolean} send a frame on the socket (false when it did not go)
 * @property {(identity: Identity, first: boolean) => void} onIdentity the server accepted a token:
 *   on the first acceptance of a socket the owner sends the private and presence subscriptions;
 *   each time it tells every tab who the socket is
 */

export class TokenExchange {
  /** @type {ExchangeHost} */
  #host;
  /** @type {"none"|"pending"|"ok"|"failed"} */
  #state = "none";
  /** The last `authenticated` frame (user, exp), told to tabs that attach later. @type {Identity|null} */
  #identity = null;
  #refreshTimer = 0;
  /** Subscriptions already told no_token on this socket: a later failure tells only the new ones. */
  #toldNoToken = new Set();
  /** Token requests in flight: id → {asked: tab ids, tabId: the one asked now, timer, resolve, reject}. */
  #asks = new Map();
  /** Which socket this is: a token fetched for one socket is never sent on a later one. */
  #socket = 0;
  /** No tab could give a token when this socket opened: private and presence subscriptions go as they come. */
  #direct = false;

  /** @param {ExchangeHost} host */
  constructor(host) {
    this.#host = host;
  }

  /** "none", "pending", "ok" or "failed" (see above). */
  get state() {
    return this.#state;
  }

  /** Whether the private and presence subscriptions go to the server now. */
  get ok() {
    return this.#state === "ok" || this.#direct;
  }

  /** Who this socket is, for a tab that attaches now; null until the server said so. */
  get identity() {
    return this.#state === "ok" ? this.#identity : null;
  }

  /**
   * A socket opened (its public subscriptions sent): authenticate at once if any tab can give a
   * token (a page with a getToken wants to know who it is). If none can, the socket is "direct":
   * the server knows who it is or nobody (its connect proxy), and the owner sends the private and
   * presence subscriptions at once (`ok`).
   */
  opened() {
    this.#state = "none";
    this.#toldNoToken.clear();
    this.#direct = !this.#canAsk();
    if (!this.#direct) this.#authenticate();
  }

  /** The socket went: forget who it was; a token still on its way is not sent on the next one. */
  closed() {
    this.#socket++;
    clearTimeout(this.#refreshTimer);
    this.#state = "none";
    this.#direct = false;
  }

  /** The owner stops (no tab left, or closed for good): every token request ends, unanswered. */
  stop() {
    this.closed();
    for (const ask of [...this.#asks.values()]) this.#endAsk(ask, null, "the socket owner stopped");
  }

  /**
   * A private or presence subscription arrived: ask for a token unless one is on its way (or
   * accepted). On a direct socket, only once a tab that can give one has come.
   */
  need() {
    if (this.#state === "pending" || this.#state === "ok" || !this.#host.isOpen()) return;
    if (this.#direct && !this.#canAsk()) return;
    this.#authenticate();
  }

  /**
   * The server's `authenticated`: the answer to our `auth`, or on a direct socket unasked (the
   * connect proxy's identity, at the handshake and at each refresh). The first answer to our own
   * `auth` sends the private subscriptions (again, on a direct socket: a room refused before may
   * be granted now; the server takes a repeat as a no-op). The token is refreshed before `exp`
   * while a tab can give one; the connect proxy's identity the server refreshes itself.
   */
  authenticated(frame) {
    const first = this.#state !== "ok" && (!this.#direct || this.#state === "pending");
    this.#state = "ok";
    this.#identity = { type: "authenticated", user: frame.user, exp: frame.exp };
    this.#toldNoToken.clear();
    clearTimeout(this.#refreshTimer);
    if (this.#canAsk()) {
      this.#refreshTimer = setTimeout(() => this.#refresh(frame.exp), refreshDelay(frame.exp, Date.now()));
    }
    this.#host.onIdentity(this.#identity, first);
  }

  /**
   * A server `error`. Returns true when it was the answer to our own `auth` (`bad_token` while
   * pending): its subscriptions are told `no_token` with the reason, and the frame goes to nobody.
   */
  error(frame) {
    if (frame.code === "bad_token" && this.#state === "pending") {
      this.#fail(`the server refused it (${frame.reason})`);
      return true;
    }
    if (frame.code === "token_expired") this.#state = "none"; // the next private subscription asks again
    return false;
  }

  /** A tab's answer: a token, or getToken's refusal (no other tab is asked then). */
  token(tabId, msg) {
    const ask = this.#asks.get(msg.id);
    if (!ask || ask.tabId !== tabId) return;
    this.#endAsk(ask, typeof msg.token === "string" && msg.token ? msg.token : null, msg.error ?? "getToken gave no token");
  }

  /** A tab was dropped: a token request waiting on it goes to the next tab. */
  tabGone(tabId) {
    for (const ask of [...this.#asks.values()]) {
      if (ask.tabId === tabId) this.#askNext(ask, "the tab asked for a token has gone");
    }
  }

  /** Ask a tab for a token and send it; the `authenticated` reply sends the private subscriptions. */
  #authenticate() {
    const socket = this.#socket;
    this.#state = "pending";
    this.#fetchToken().then(
      (token) => socket === this.#socket && this.#host.send(authFrame(token)),
      (reason) => {
        if (socket !== this.#socket || this.#state !== "pending") return;
        this.#fail(reason);
      },
    );
  }

  /** No token: on a direct socket its subscriptions went anyway (the server answered them); else each is told `no_token`. */
  #fail(reason) {
    if (this.#direct) {
      this.#state = "none";
      return;
    }
    this.#state = "failed";
    this.#failPrivate(reason);
  }

  /** Whether some tab's page has a getToken. */
  #canAsk() {
    return tokenTab(this.#host.tabs.entries(), new Set()) !== null;
  }

  /** Refresh before exp; if no token comes, try again later while some life is left (else token_expired will say so). */
  #refresh(exp) {
    const socket = this.#socket;
    this.#fetchToken().then(
      (token) => socket === this.#socket && this.#host.send(authFrame(token)),
      () => {
        if (socket !== this.#socket) return;
        const delay = refreshDelay(exp, Date.now());
        if (delay > 1_000) this.#refreshTimer = setTimeout(() => this.#refresh(exp), delay);
      },
    );
  }

  /** No token: tell each private and presence subscription (only its own tab). They stay booked for a later token. */
  #failPrivate(reason) {
    for (const [, tab] of this.#host.tabs.entries()) {
      for (const [sub, room] of tab.subs) {
        if (!needsToken(room) || this.#toldNoToken.has(sub)) continue;
        this.#toldNoToken.add(sub);
        tab.link.send(noTokenError(room, sub, reason));
      }
    }
  }

  /** @returns {Promise<string>} a token from the first tab that can give one */
  #fetchToken() {
    return new Promise((resolve, reject) => {
      const ask = { id: randomId(), asked: new Set(), tabId: null, timer: 0, resolve, reject };
      this.#asks.set(ask.id, ask);
      this.#askNext(ask, "no open page can give a token");
    });
  }

  #askNext(ask, reason) {
    clearTimeout(ask.timer);
    const tabId = tokenTab(this.#host.tabs.entries(), ask.asked);
    if (tabId === null) {
      this.#endAsk(ask, null, reason);
      return;
    }
    ask.asked.add(tabId);
    ask.tabId = tabId;
    ask.timer = setTimeout(() => this.#askNext(ask, "no page answered the token request"), TOKEN_TIMEOUT_MS);
    this.#host.tabs.get(tabId).link.send(tokenRequestMsg(ask.id));
  }

  #endAsk(ask, token, reason) {
    clearTimeout(ask.timer);
    this.#asks.delete(ask.id);
    if (token) ask.resolve(token);
    else ask.reject(String(reason));
  }
}
