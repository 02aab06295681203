/**
 * Which wire the socket owner uses: WebSocket, else SSE, else long-polling.
 *
 * Pure (no timers, no sockets, no storage): the owner tells it what happened to each
 * wire and asks it which to try next, so its rules are read and tested on their own.
 *
 * The rules, for the transports a page allows, in its order (best first):
 *  - Start with the transport that worked for this origin within the last 24 h (the owner
 *    keeps that in IndexedDB), else the best one.
 *  - Move down one rung when the current wire
 *      - could not open twice in a row (refused, or no handshake within the connect timeout),
 *      - opened and died before its first server frame (a middlebox that kills it), or
 *      - is an SSE stream that delivered no event, not even its session event, within 5 s
 *        (a proxy that buffers it).
 *    A close the server chose (drain 1001, 1008, 1011-1013, 4000-4999) says nothing about
 *    the path, and neither does a drop after the first frame.
 *  - A rung that worked since the network last changed is not left for failures to open: the
 *    server is down or restarting, and what worked minutes ago will work again (without this a
 *    deploy would push every browser down the ladder). A middlebox or a silent stream still moves.
 *  - At the bottom, failures to open go round to the top again: nothing opens at all, so it is an
 *    outage, and the next try should be the best transport.
 *  - Below the top, the owner tries the top rung in the background every few minutes, and moves
 *    up when that wire delivers a server frame.
 */
import { TRANSPORTS } from "./protocol.js";

/** What worked is remembered this long. */
export const MEMORY_TTL_MS = 24 * 60 * 60 * 1000;
/** Failures to open in a row that move the owner down a rung. */
export const OPEN_FAILURES_TO_MOVE = 2;
/** Below the top rung, the top is tried again in the background about this often (±25 %). */
export const UPGRADE_EVERY_MS = 3 * 60 * 1000;

/** Close codes a server chooses (a drain, a policy, an error, a restart, or its own 4xxx). */
const SERVER_CODES = new Set([1001, 1008, 1011, 1012, 1013]);

/**
 * How a wire ended, as far as the ladder cares.
 * @typedef {{code?: number, opened?: boolean, heard?: boolean, silent?: boolean}} WireEnd
 *   opened: the wire's handshake was done (WebSocket open, SSE response headers, a poll session);
 *   heard: it delivered something from the server (a frame; for SSE the session event);
 *   silent: an SSE stream that delivered no event within 5 s
 * @param {WireEnd} end
 * @returns {"drop"|"server"|"silent"|"middlebox"|"open-failed"}
 */
export function endKind({ code = 1006, opened = false, heard = false, silent = false } = {}) {
  if (heard) return "drop";
  if (silent) return "silent";
  if (code >= 4000 || SERVER_CODES.has(code)) return "server";
  return opened ? "middlebox" : "open-failed";
}

/**
 * The rung to start on: the remembered transport if it is allowed and younger than 24 h
 * (one from the future, after a clock change, is not trusted), else the best allowed one.
 * @param {string[]} allowed
 * @param {unknown} remembered what the memory held: {transport, at}
 * @param {number} now
 */
export function rememberedStart(allowed, remembered, now) {
  if (remembered !== null && typeof remembered === "object") {
    const { transport, at } = /** @type {{transport?: unknown, at?: unknown}} */ (remembered);
    if (allowed.includes(/** @type {string} */ (transport)) && Number.isFinite(at) && at <= now && now - at < MEMORY_TTL_MS) {
      return /** @type {string} */ (transport);
    }
  }
  return allowed[0];
}

/** A delay until the next background try of the top rung: "every few minutes", jittered. */
export function upgradeDelay(random = Math.random) {
  return Math.floor(UPGRADE_EVERY_MS * (0.75 + 0.5 * random()));
}

export class Ladder {
  /** @type {string[]} */
  #allowed;
  #index = 0;
  /** Failures to open in a row on the current rung. */
  #failures = 0;
  /** Rungs that worked since the network last changed. */
  #proven = new Set();

  /** @param {string[]} [allowed] the page's transports, best first (already checked: transportList) */
  constructor(allowed = TRANSPORTS) {
    this.#allowed = [...allowed];
  }

  /** The transport to use (or being tried) now. */
  get current() {
    return this.#allowed[this.#index];
  }

  /** The best transport allowed. */
  get top() {
    return this.#allowed[0];
  }

  /** Whether the owner should try the top rung in the background. */
  get belowTop() {
    return this.#index > 0;
  }

  /**
   * Start (again, when the owner starts) from what the memory held.
   * @param {unknown} remembered
   * @param {number} now
   * @returns {string} the transport to try first
   */
  begin(remembered, now) {
    this.#index = this.#allowed.indexOf(rememberedStart(this.#allowed, remembered, now));
    this.#failures = 0;
    return this.current;
  }

  /**
   * The current wire heard the server: this rung works here.
   * @param {number} now
   * @returns {{transport: string, at: number}} what to remember for the origin
   */
  worked(now) {
    this.#failures = 0;
    this.#proven.add(this.current);
    return { transport: this.current, at: now };
  }

  /**
   * The current wire ended.
   * @param {WireEnd} end
   * @returns {{kind: ReturnType<typeof endKind>, moved: boolean}} whether the next try is on another rung
   */
  ended(end) {
    const kind = endKind(end);
    if (kind === "silent" || kind === "middlebox") return { kind, moved: this.#down(false) };
    if (kind !== "open-failed") {
      this.#failures = 0; // it opened: the row of failures is broken
      return { kind, moved: false };
    }
    if (this.#proven.has(this.current) || ++this.#failures < OPEN_FAILURES_TO_MOVE) return { kind, moved: false };
    return { kind, moved: this.#down(true) };
  }

  /** A wire of the top rung, tried in the background, delivered a server frame: it is used from now on. */
  upgraded() {
    this.#index = 0;
    this.#failures = 0;
  }

  /** The network changed (offline, then online): what worked on the old one proves nothing. */
  networkChanged() {
    this.#proven.clear();
    this.#failures = 0;
  }

  /** One rung down; at the bottom, round to the top if `wrap`. Returns whether the rung changed. */
  #down(wrap) {
    this.#failures = 0;
    if (this.#index + 1 < this.#allowed.length) {
      this.#index++;
      return true;
    }
    if (wrap && this.#index > 0) {
      this.#index = 0;
      return true;
    }
    return false;
  }
}
