// Hand-written declarations for rrr.js, the browser library's public API (README, "The browser
// library"; docs/guides/bundlers.md). tests/test_npm_package.py checks them with `tsc --noEmit`
// against tests/npm/consumer.ts, which calls every part of it.

/** A wire the socket owner may use, best first. */
export type Transport = "websocket" | "sse" | "poll";

/** How this browser shares its one connection ("none" before a link is made). */
export type Sharing = "sharedworker" | "leader" | "direct" | "none";

/** The connection's state, as `onState` and `rt.state` give it. */
export interface LinkState {
  sharing: Sharing;
  /** The wire in use or being tried; "none" until the owner says. */
  transport: Transport | "none";
  status: "connecting" | "open" | "reconnecting" | "offline";
  /** When the next try is due (ms since the epoch), while reconnecting. */
  retryAt: number | null;
}

/** Who the shared socket is authenticated as (the server's `authenticated` reply). */
export interface Identity {
  user: string;
  /** The token's expiry, in seconds since the epoch. */
  exp: number;
}

/** Where a message stands in its room's history. */
export interface Position {
  offset: number;
  epoch: string;
}

/** A room's numbers: `connections` browsers, `tabs` subscriptions; `users` in presence rooms only. */
export interface Count {
  connections: number;
  tabs: number;
  /** When the room last changed (seconds since the epoch); null for an empty room. */
  updated: number | null;
  users?: number;
}

export interface MessageMeta {
  /** The message's place in the room's history; null for a raw backend PUBLISH. */
  offset: number | null;
  epoch: string | null;
  /** The name its publisher gave it (a Pusher event's name), when it has one. */
  event?: string;
}

/** An error frame about a subscription or about the whole socket. */
export interface RrrError {
  /** The server's code (`forbidden`, `no_token`, `origin_refused`, `too_many_tabs`, ...). */
  code: string;
  reason: string;
}

/** A presence member as the token's `info` describes it. */
export interface Member {
  info?: unknown;
}

/** One page of a presence room's members, in ascending user ids. */
export interface PresencePage {
  members: Record<string, Member>;
  /** The room's users. */
  total: number;
  /** Whether some members are not in `members`. */
  more: boolean;
}

/** What changed since the last page or diff; null for a first page. */
export interface PresenceDiff {
  joins: Record<string, Member>;
  leaves: Record<string, unknown>;
}

export interface RoomHandlers {
  onCount?: (count: Count) => void;
  /** Each message once, in order, also across reconnects (missed ones are replayed). */
  onMessage?: (data: unknown, meta: MessageMeta) => void;
  /** Another subscriber's whisper (or a Pusher client's `client-*` event); `user` null: anonymous. */
  onWhisper?: (event: string, data: unknown, user: string | null) => void;
  /** Messages were missed and could not be recovered: reload the page's state. */
  onReset?: (position: { offset: number; epoch: string | null }) => void;
  onState?: (state: LinkState) => void;
  onError?: (error: RrrError) => void;
  /** Presence rooms: the first page of members, kept current by each diff. */
  onPresence?: (presence: PresencePage, diff: PresenceDiff | null) => void;
  /** Start after this message (e.g. the offset the page was rendered at). */
  since?: Position;
}

/** An Error a refused page of members rejects with. */
export interface MembersError extends Error {
  code: string;
  reason: string;
}

/** `room.members()`: the pages, each asked of the server when the iterator is advanced. */
export interface MemberPages extends AsyncIterableIterator<PresencePage> {
  /** Every member in one object (walks every page). */
  all(): Promise<Record<string, Member>>;
}

/** A subscription to one room; each counts as one tab on the server. */
export interface Room {
  readonly room: string;
  /** With `--client-publish`; `event` is the name Pusher clients hear it as (default `message`). */
  publish(data: unknown, options?: { event?: string | null }): void;
  /** Private and presence rooms only: an event for the other subscribers now, never stored. */
  whisper(event: string, data: unknown): void;
  /** The last message handed to the page (null before one): resubscribing from here misses nothing. */
  position(): Position | null;
  /** Presence rooms: the members, a page at a time, from the start or after the user id `after`. */
  members(options?: { after?: string }): MemberPages;
  leave(): void;
}

export interface ConnectOptions {
  /** The socket URL; defaults to `/ws/` on this page's host (`/sse/` and `/poll/` are beside it). */
  url?: string;
  /** A JWT from the application, for private and presence rooms. */
  getToken?: () => Promise<string>;
  /** Hears each `authenticated` reply. */
  onAuth?: (identity: Identity) => void;
  /** Which wires may be used, best first (default all three); anything else throws TypeError. */
  transports?: Transport[];
}

/** One page's side of the browser's shared connection. */
export interface Connection {
  readonly url: string;
  readonly tabId: string;
  readonly transport: Transport | "none";
  readonly sharing: Sharing;
  readonly state: LinkState;
  readonly identity: Identity | null;
  /** Join a room; throws TypeError for an invalid slug, Error after close(). */
  room(slug: string, handlers?: RoomHandlers): Room;
  /** While reconnecting or offline: try now instead of waiting. */
  retryNow(): void;
  /** Leave every room; release the timers, listeners, locks and link. Idempotent. */
  close(): void;
}

export function connect(options?: ConnectOptions): Connection;
