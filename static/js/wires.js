/**
 * The wires a socket owner can hold: a WebSocket on `/ws/`, an SSE stream on `/sse/`, or
 * long-polling on `/poll/`. Each carries the same frames (protocol.js) and shows the owner
 * the same face, so its reconnects, resubscribes with `since`, tokens and offline handling
 * work unchanged over any of them:
 *
 *   const wire = makeWire(kind, transportUrls(url), {onOpen, onFrame, onClose});
 *   wire.open();            // once
 *   wire.send(frame)        // true when it was taken (false: not open, or too much queued)
 *   wire.close()            // no event after this
 *   wire.isOpen, wire.opened, wire.heard, wire.kind
 *
 * Events, each from the wire's own callbacks (never from within open() or send()):
 *   onOpen()        frames may be sent (WebSocket: handshake done; SSE: the session event came;
 *                   poll: the session was opened)
 *   onFrame(data)   one server frame: JSON text, or (long-polling) the JSON value itself
 *   onClose(end)    the wire is gone: {code, reason, opened, heard, silent?}, with the code a
 *                   WebSocket would have (1006 for a network failure); once, never after close()
 *
 * Upstream, SSE and long-polling POST one frame per request, one request at a time: the
 * POSTs may reach any server process, so only waiting for each answer keeps them in order.
 * A POST answered 404 means the session is gone (onClose); 429 is sent again after
 * Retry-After; any other 4xx refuses that frame alone (the frame's `onRefused`); a 5xx or a
 * network failure leaves it unknown whether the frame was taken, as with a dying socket, so
 * the wire is given up (onClose 1006) and the owner reconnects and resubscribes.
 */
import { SSE_SILENCE_MS, pollBatch, pollOpening, sessionOf } from "./protocol.js";

/** A long poll still unanswered after this long is abandoned and asked again (the server answers within 25 s). */
export const POLL_REQUEST_TIMEOUT_MS = 60_000;
/** A long poll that failed (network, 5xx) is asked again after this, at most POLL_RETRIES times in a row. */
export const POLL_RETRY_MS = 1_000;
export const POLL_RETRIES = 2;
/** Frames waiting for their POST; past this, send() refuses (the owner tells the tab `not_connected`). */
export const MAX_QUEUED_FRAMES = 1_000;
/** A 429's Retry-After is honoured up to this. */
const MAX_RETRY_AFTER_MS = 30_000;

/**
 * @typedef {{code: number, reason: string, opened: boolean, heard: boolean, silent?: boolean}} WireEnd
 * @typedef {{onOpen: () => void, onFrame: (data: unknown) => void, onClose: (end: WireEnd) => void}} WireEvents
 * @typedef {(reason: string) => void} OnRefused the server refused this one frame (a 4xx other than 404 and 429)
 */

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A short reason from an error answer: its JSON `error`, else the status. */
async function reasonOf(response) {
  let error = null;
  try {
    error = JSON.parse(await response.text())?.error;
  } catch {
    // not JSON
  }
  return `HTTP ${response.status}${typeof error === "string" && error ? `: ${error.slice(0, 200)}` : ""}`;
}

class Wire {
  opened = false;
  heard = false;
  /** @type {WireEvents} */
  #events;
  #done = false;

  /** @param {WireEvents} events */
  constructor(events) {
    this.#events = events;
  }

  get done() {
    return this.#done;
  }

  emitOpen() {
    if (!this.#done) this.#events.onOpen();
  }

  emitFrame(data) {
    if (!this.#done) this.#events.onFrame(data);
  }

  /** The wire failed or the server ended it: tear down, then tell the owner once. */
  end(code, reason, extra = {}) {
    if (this.#done) return;
    this.#done = true;
    this.teardown();
    this.#events.onClose({ code, reason, opened: this.opened, heard: this.heard, ...extra });
  }

  /** The owner let go: tear down, and say nothing more. */
  close() {
    if (this.#done) return;
    this.#done = true;
    this.teardown();
  }

  teardown() {}
}

export class WebSocketWire extends Wire {
  kind = "websocket";
  /** @type {WebSocket|null} */
  #ws = null;
  #url;

  constructor(urls, events) {
    super(events);
    this.#url = urls.websocket;
  }

  open() {
    const ws = new WebSocket(this.#url);
    this.#ws = ws;
    ws.onopen = () => {
      this.opened = true;
      this.emitOpen();
    };
    ws.onmessage = (event) => {
      this.heard = true;
      this.emitFrame(event.data);
    };
    // Browsers fire error then close; close carries the code. Before the handshake there is
    // no code to wait for, and some runtimes (Node's undici) never fire that close at all.
    ws.onerror = () => this.opened || this.end(1006, "the WebSocket could not open");
    ws.onclose = (event) => this.end(event.code, event.reason ?? "");
  }

  get isOpen() {
    return !this.done && this.#ws?.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  /** Without waiting for the close handshake, which on a dead network can take a minute. */
  teardown() {
    const ws = this.#ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    ws.close();
  }
}

/**
 * Client frames for a session, POSTed one at a time in order (see the module's comment).
 * Once detached (its wire closed) it still sends what it holds, but reports nothing and
 * stops at the first failure: an owner moving to another wire may say goodbye through it.
 */
export class FramePoster {
  #url;
  /** @type {{frame: object, onRefused: OnRefused|null}[]} */
  #queue = [];
  #busy = false;
  #detached = false;
  #onGone;
  #onBroken;

  /**
   * @param {string} url the session's POST URL
   * @param {{gone: (reason: string) => void, broken: (reason: string) => void}} host
   */
  constructor(url, { gone, broken }) {
    this.#url = url;
    this.#onGone = gone;
    this.#onBroken = broken;
  }

  /** @returns {boolean} whether the frame was queued */
  post(frame, onRefused = null) {
    if (this.#detached || this.#queue.length >= MAX_QUEUED_FRAMES) return false;
    this.#queue.push({ frame, onRefused });
    this.#pump();
    return true;
  }

  /** `flush`: still send the frames queued; else drop them. */
  detach(flush = false) {
    this.#detached = true;
    if (!flush) this.#queue.length = 0;
  }

  async #pump() {
    if (this.#busy) return;
    this.#busy = true;
    try {
      while (this.#queue.length > 0) {
        const item = this.#queue[0];
        let response;
        try {
          response = await fetch(this.#url, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify(item.frame),
            cache: "no-store",
          });
        } catch (err) {
          this.#fail(this.#onBroken, `a POST failed: ${err instanceof Error ? err.message : err}`);
          return;
        }
        if (response.ok) {
          await response.arrayBuffer().catch(() => null); // read to the end: the connection is free again
          this.#queue.shift();
        } else if (response.status === 404) {
          this.#fail(this.#onGone, "the session is gone");
          return;
        } else if (response.status === 429 && !this.#detached) {
          // Refused frames change nothing in the session: the same frame again, later.
          const seconds = Number(response.headers.get("Retry-After"));
          await sleep(Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_RETRY_AFTER_MS) : 1_000);
        } else if (response.status >= 500 || this.#detached) {
          this.#fail(this.#onBroken, await reasonOf(response));
          return;
        } else {
          this.#queue.shift();
          const reason = await reasonOf(response);
          if (!this.#detached) item.onRefused?.(`the server refused this ${item.frame.type} frame (${reason})`);
        }
      }
    } finally {
      this.#busy = false;
    }
  }

  #fail(report, reason) {
    this.#queue.length = 0;
    if (!this.#detached) report(reason);
  }
}

export class SseWire extends Wire {
  kind = "sse";
  /** @type {string|null} */
  session = null;
  /** @type {EventSource|null} */
  #source = null;
  /** @type {FramePoster|null} */
  #poster = null;
  #silence = 0;
  #url;

  constructor(urls, events) {
    super(events);
    this.#url = urls.sse;
  }

  open() {
    // An EventSource reconnects by itself, but a new stream is a new session the owner must
    // resubscribe: every error ends this wire, and the owner decides what comes next.
    const source = new EventSource(this.#url);
    this.#source = source;
    this.#silence = setTimeout(
      () => this.end(1006, `no event within ${SSE_SILENCE_MS / 1000} s: a proxy buffers the stream`, { silent: true }),
      SSE_SILENCE_MS,
    );
    source.onopen = () => (this.opened = true);
    source.onmessage = (event) => this.#onEvent(event.data);
    source.onerror = () => this.end(1006, "the event stream closed");
  }

  #onEvent(data) {
    if (this.session !== null) {
      this.emitFrame(data);
      return;
    }
    const session = sessionOf(data);
    if (session === null) {
      this.end(1002, "the event stream did not start with a session event");
      return;
    }
    clearTimeout(this.#silence);
    this.session = session;
    this.heard = true;
    this.#poster = new FramePoster(`${this.#url}${session}/`, {
      gone: (reason) => this.end(1006, reason),
      broken: (reason) => this.end(1006, reason),
    });
    this.emitOpen();
  }

  get isOpen() {
    return !this.done && this.#poster !== null;
  }

  /** @param {object} frame @param {OnRefused|null} [onRefused] */
  send(frame, onRefused = null) {
    return this.isOpen && this.#poster.post(frame, onRefused);
  }

  teardown() {
    clearTimeout(this.#silence);
    this.#poster?.detach();
    const source = this.#source;
    if (!source) return;
    source.onopen = source.onmessage = source.onerror = null;
    source.close();
  }
}

export class PollWire extends Wire {
  kind = "poll";
  /** @type {string|null} */
  session = null;
  /** The number of the last frame taken: acknowledged by the next poll. */
  seq = 0;
  /** @type {FramePoster|null} */
  #poster = null;
  /** @type {AbortController|null} */
  #request = null;
  #url;
  #flush = false;

  constructor(urls, events) {
    super(events);
    this.#url = urls.poll;
  }

  open() {
    this.#run();
  }

  get isOpen() {
    return !this.done && this.#poster !== null;
  }

  /** @param {object} frame @param {OnRefused|null} [onRefused] */
  send(frame, onRefused = null) {
    return this.isOpen && this.#poster.post(frame, onRefused);
  }

  /**
   * Stop polling. With `flush`, frames already sent still go out: a polling session lingers on
   * the server until it times out, so an owner moving to another wire unsubscribes through it.
   */
  close({ flush = false } = {}) {
    this.#flush = flush;
    super.close();
  }

  teardown() {
    this.#request?.abort();
    this.#poster?.detach(this.#flush);
  }

  /** GET as JSON, abandoned after `timeoutMs` or when the wire closes. */
  async #get(url, timeoutMs) {
    const request = new AbortController();
    this.#request = request;
    const timer = setTimeout(() => request.abort(), timeoutMs);
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", signal: request.signal });
      return { status: response.status, body: response.ok ? await response.json() : null };
    } finally {
      clearTimeout(timer);
    }
  }

  async #run() {
    let opening;
    try {
      const { status, body } = await this.#get(this.#url, POLL_REQUEST_TIMEOUT_MS);
      if (this.done) return;
      if (status !== 200) {
        this.end(1006, `GET ${this.#url} answered ${status}`);
        return;
      }
      opening = pollOpening(body);
    } catch (err) {
      this.end(1006, `GET ${this.#url} failed: ${err instanceof Error ? err.message : err}`);
      return;
    }
    if (this.done) return;
    if (!opening) {
      this.end(1002, "the poll session's opening answer is not {session, seq, frames}");
      return;
    }
    this.session = opening.session;
    this.seq = opening.seq;
    this.opened = this.heard = true;
    this.#poster = new FramePoster(`${this.#url}${this.session}/`, {
      gone: (reason) => this.end(1006, reason),
      broken: (reason) => this.end(1006, reason),
    });
    this.emitOpen();
    this.#take(opening.frames);
    let failures = 0;
    while (!this.done) {
      let answer;
      try {
        answer = await this.#get(`${this.#url}${this.session}/?seq=${this.seq}`, POLL_REQUEST_TIMEOUT_MS);
      } catch {
        answer = null; // network failure or our own timeout: asked again with the same seq, nothing is lost
      }
      if (this.done) return;
      if (answer?.status === 404) {
        this.end(1006, "the session is gone");
        return;
      }
      const batch = answer?.status === 200 ? pollBatch(answer.body, this.seq) : null;
      if (!batch) {
        if (++failures > POLL_RETRIES) {
          this.end(1006, answer ? `a poll answered ${answer.status === 200 ? "junk" : answer.status}` : "polls failed");
          return;
        }
        await sleep(POLL_RETRY_MS);
        continue;
      }
      failures = 0;
      this.#take(batch.frames, batch.seq);
    }
  }

  /** Hand on a batch's frames in order; the owner may close the wire (a `close` frame) midway. */
  #take(frames, seq = this.seq) {
    this.seq = seq;
    for (const frame of frames) {
      if (this.done) return;
      this.emitFrame(frame);
    }
  }
}

const WIRES = { websocket: WebSocketWire, sse: SseWire, poll: PollWire };

/**
 * @param {"websocket"|"sse"|"poll"} kind
 * @param {{websocket: string, sse: string, poll: string}} urls from transportUrls()
 * @param {WireEvents} events
 */
export function makeWire(kind, urls, events) {
  return new WIRES[kind](urls, events);
}
