"""The Redis backplane as the core sees it: the Protocols it uses, and one factory (`connect`) that
picks their classic or cluster implementation from the URL.

* `Presence`: this process's rows in each room (written in batches by `rrr.writer`), its lease,
  the sweep of dead processes, and health probes; with `PresenceReads`, what handlers and
  sessions read (a room's totals, its members, revocations).
* `Subscriber`: the pub/sub side. The core *follows* a room (its channels subscribed) while the
  room has local subscriptions, and learns through `Events` what Redis sends: messages, counts,
  confirmations, sign-outs.
* `History`: a room's stored messages (publish, read back, look).
* `EventStore` (webhooks on): the events the presence scripts record, moved out in order to the
  outbox, read and acknowledged per URL by the one process that holds the sender's lease.

Classic: one Redis or a Sentinel-managed one (`presence`, `subscriber`); cluster: a Redis 7
Cluster (`cluster_presence`, `cluster_subscriber`). Both share `history`, `keys`, the Lua
scripts (`scripts`, ``lua/*.lua``), the call wrapper and reply parsers (`calls`) and the pub/sub
read loop and dispatch (`pubsub`). Importing this package imports no Redis client: `connect` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..protocol import CountState
from .history import Published, Read, Seen

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = [
    "CHUNK", "Backplane", "EventSettings", "EventStore", "Events", "History", "MemberDelta", "Moved", "Presence",
    "PresenceReads", "Published", "Publisher", "Read", "RoomReport", "Seen", "StoredEvent", "Subscriber", "WriteResult",
    "connect",
]

#: Rooms per presence write call, and users per round of revocation checks: each is one round trip
#: for a whole batch, yet short scripts.
CHUNK = 500

#: A presence room's member changes for one write: users added (user -> info JSON), users removed,
#: and whether the write *replaces* this process's members in the room (every other member field of
#: ours goes too): after a resync the process cannot know which of its members Redis still holds
#: (a removal that had not landed, or one a failover lost), so it states them all.
MemberDelta = tuple[dict[str, str], list[str], bool]


@dataclass(frozen=True)
class RoomReport:
    """What a row write tells its room's events (`Presence.write`'s ``reports``), that only the
    process knows: seconds since the room's last local subscription left (its vacated happened
    then) and since each removed member's last tab here left (their member_removed did)."""

    left_ago: float = 0.0
    users_left_ago: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EventSettings:
    """Events are recorded (webhooks on): a vacated waits ``vacate_delay`` s before it goes out, and
    Redis holds at most ``backlog`` events waiting for the outbox per room, and in the outbox."""

    vacate_delay: float = 2.0
    backlog: int = 100_000
    retry_for: float = 3600.0


@dataclass
class WriteResult:
    """What a presence write did: each room's new totals, and whether our lease had been lost
    (then every other local room must be written again too)."""

    states: dict[str, CountState] = field(default_factory=dict)
    lease_lost: bool = False


class Events(Protocol):
    """What the pub/sub connection hears, handed to the core (`rrr.service` wires it: messages to
    delivery, counts to the hub, confirmations to the writer and delivery). Called from the
    connection's own task, never from inside a call the core made. An event the core fails on is
    lost alone (counted, logged once per 30 s), never the connection; `connected` is the exception:
    a failure there ends the connection, which is then made again."""

    def message(self, room: str, offset: int, epoch: str, data_json: str) -> None:
        """A message stored in the room's history (published by its script)."""

    def raw_message(self, room: str, data_json: str) -> None:
        """A raw ``PUBLISH rrr:room:<slug>`` from a backend: live only, no offset."""

    def count(self, room: str, state: CountState) -> None:
        """The room's totals changed (announced by a presence script)."""

    def room_confirmed(self, room: str) -> None:
        """Every channel of a followed room is confirmed: its presence may be written, and its
        history read, now."""

    def connected(self) -> None:
        """A new connection (after a restart or a cut), or a repaired one: whatever was missed,
        read back, and every room's presence written again."""

    def signed_out(self, user: str) -> None:
        """Every process was told to close the sockets of ``user`` (its tokens were revoked)."""

    def control_confirmed(self) -> None:
        """Redis confirmed the control channel on a new connection: from now on every sign-out
        arrives as a message, and any made while the connection was down is only in Redis."""

    def inbox(self, data: bytes) -> None:
        """A message on this process's inbox (`keys.inbox_channel`): another process hands it a
        request for one of its SSE or polling sessions, or answers one it handed on."""


class Publisher(Protocol):
    async def publish(self, channel: str, data: str) -> int:
        """PUBLISH (SPUBLISH where the channel is a room's shard channel); how many received it."""

    async def alive(self, tag: str) -> bool:
        """Whether the process whose tag is ``tag`` is there: on one Redis, whether its inbox has a
        listener; on a cluster (where PUBLISH counts one node's listeners only), whether it holds its
        liveness key (`keys.alive`: renewed with its presence, deleted when it leaves)."""


class Subscriber(Protocol):
    """This process's pub/sub: the rooms it follows, and a connection that `run` holds until it
    breaks (then it raises; the service runs it again after `backoff`)."""

    @property
    def connected(self) -> bool: ...

    @property
    def synced(self) -> bool:
        """Connected, and every followed room confirmed."""

    @property
    def ran_for(self) -> float:
        """Seconds the last connection was up (0 if it never came up)."""

    def bind(self, events: Events) -> None:
        """Where what the connection hears goes (before `run`)."""

    def follow(self, room: str) -> None:
        """Subscribe the room's channels (the room has local subscriptions now)."""

    def unfollow(self, room: str) -> None:
        """Unsubscribe them (its last local subscription went)."""

    def confirmed(self, room: str) -> bool:
        """Whether the room is followed and Redis confirmed each of its channels on this connection."""

    def reconnect_now(self) -> None:
        """Redis answers again: skip what is left of the reconnect backoff."""

    async def backoff(self, delay: float) -> None:
        """Wait ``delay``, or until `reconnect_now`."""

    async def probe(self, publisher: Publisher, timeout: float) -> bool:
        """Whether the connection delivers: a token published on our own channel(s) comes back."""

    async def run(self) -> None: ...

    async def stop(self) -> None:
        """End the connection's helper tasks before whoever runs `run` cancels it."""


class PresenceReads(Protocol):
    """What the handlers and sessions ask Redis about presence and sign-outs."""

    async def room_state(self, room: str) -> CountState: ...

    async def members(self, room: str) -> dict[str, str]:
        """A presence room's members across every live process: user -> info JSON."""

    async def rooms(self, prefix: str = "") -> list[str]:
        """The rooms whose name starts with ``prefix`` that have a presence row in Redis (some may
        be empty: read each one's state), found by scanning the keyspace (every master of a cluster)."""

    async def revoked_at(self, user: str) -> float | None:
        """When ``user``'s tokens were last revoked, if that still matters."""

    async def revoke(self, user: str, keep_for: float) -> float:
        """Sign ``user`` out everywhere: its sockets on every process close with 4001, and its tokens
        issued until now are refused for ``keep_for`` seconds. Returns when (unix time)."""


class Presence(PresenceReads, Publisher, Protocol):
    """This process's presence: its lease (or its rows' expiry), its rows, the health probes."""

    @property
    def process_id(self) -> str: ...

    @property
    def oom(self) -> bool:
        """The last write Redis was asked for was refused at maxmemory."""

    def lease_fresh(self) -> bool:
        """Renewed recently enough that no sweeper can have taken it."""

    async def renew(self) -> bool:
        """Extend the lease; True if it had been lost: every local room must be written again."""

    async def sweep(self) -> int:
        """Remove some dead processes' presence, announced; how many."""

    async def write(
        self, updates: Mapping[str, tuple[int, int]], members: Mapping[str, MemberDelta] | None = None,
        reports: Mapping[str, RoomReport] | None = None,
    ) -> WriteResult:
        """This process's ``(connections, tabs)`` per room and its member changes in presence rooms;
        with events on, what each room's events need to know (`RoomReport`; default: none of it)."""

    async def leave(self) -> None:
        """Remove this process's presence at once (clean shutdown)."""

    async def ping(self) -> bool: ...

    async def probe_write(self) -> None:
        """A tiny write Redis refuses at maxmemory (it sets `oom`)."""

    async def close(self) -> None: ...


class History(Protocol):
    """A room's message history. ``size`` or ``ttl`` 0: off (messages are relayed, not stored)."""

    size: int
    ttl: float
    max_message: int

    @property
    def enabled(self) -> bool: ...

    async def publish(self, room: str, data_json: str) -> Published:
        """Store and relay (history on), or relay only: then ``offset`` is 0 and ``epoch`` empty."""

    async def relay(self, room: str, payload: str) -> int:
        """Relay only, never stored (a whisper, a Pusher client event): how many processes got it."""

    async def cached(self, room: str) -> str | None:
        """A cache channel's last message (its payload), kept ``--cache-ttl``; None if none."""

    async def read(self, room: str, after: int | None, *, seen: Seen | None = None) -> Read:
        """The room's position (its epoch fixed now if it had none), and the messages after ``after``."""

    async def look(self, room: str, after: int) -> Read:
        """`read` without writing anything (the HTTP API)."""

    async def announce(self) -> None:
        """Tell backends' helpers how history is kept and the largest message delivered."""

    async def touch(self, rooms: Iterable[str]) -> None:
        """Keep the epochs of rooms with local subscribers."""


@dataclass(frozen=True)
class StoredEvent:
    """One event as the outbox holds it: ``sid`` its place there, ``stored_ms`` when the presence
    script recorded it (Redis ms; --webhook-retry-for counts from it)."""

    sid: str
    name: str
    room: str
    user: str
    at_ms: int
    id: str
    stored_ms: int
    event: str = ""  # a client_event's: its event name, data and sender's socket id
    data: str = ""
    socket_id: str = ""

    def payload(self) -> dict[str, object]:
        """The event as a webhook carries it (Pusher's shape, plus ``id`` and ``at_ms``)."""
        out: dict[str, object] = {"name": self.name, "channel": self.room}
        if self.name == "client_event":
            out.update(event=self.event, data=self.data, socket_id=self.socket_id)
        if self.user:
            out["user_id"] = self.user
        out["id"] = self.id
        out["at_ms"] = self.at_ms
        return out


@dataclass
class Moved:
    """What a move to the outbox did: the name of each event moved, and events dropped over the cap."""

    names: list[str] = field(default_factory=list)
    dropped: int = 0


class EventStore(Protocol):
    """The events in Redis as the sender sees them. Only the process holding the lease moves and
    sends; every process asks for the lease now and then (and reads the status it shares)."""

    async def lease(self, ttl: float, take: bool, error: str | None) -> tuple[bool, int, str]:
        """Renew the sender's lease if ours (or take it if free and ``take``); the holder writes the
        shared status (its last ``error``, '' for none, and the backlog). Returns whether we hold
        it, the backlog and the last error ('' for none)."""

    async def repair(self) -> int:
        """Find what a cluster's process that died between a room's script and its note left behind
        (events the due set lost, rooms its registry lacks); how many rooms it looked at."""

    async def release(self) -> None:
        """Give the lease up (a clean shutdown: another process takes over at once)."""

    async def due(self, limit: int) -> tuple[list[str], float | None]:
        """Rooms whose events may move now, and seconds until the next one may (None: none waits)."""

    async def move(self, rooms: list[str], names: frozenset[str]) -> Moved:
        """Move the rooms' events that may go (of ``names``; the others are dropped) to the outbox."""

    async def ring(self, timeout: float) -> None:
        """Wait until a new event is recorded anywhere, at most ``timeout`` seconds."""

    async def direct(self, name: str, room: str, fields: Mapping[str, str]) -> None:
        """An event no presence change makes (``client_event``, ``cache_miss``), into the outbox now."""

    async def read(self, url_key: str, limit: int) -> list[StoredEvent]:
        """The next events for the URL keyed ``url_key``, after what it acknowledged."""

    async def acked(self, url_key: str, sid: str, url_keys: list[str]) -> int:
        """The URL is done up to ``sid``; the outbox keeps what any of ``url_keys`` still needs.
        Returns the outbox's length (the backlog)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Backplane:
    presence: Presence
    subscriber: Subscriber
    history: History
    events: EventStore | None = None


def connect(
    url: str, metrics: Metrics, *, ttl: float = 15.0, timeout: float = 2.0, pool_size: int = 32,
    keepalive: float = 5.0, history_size: int = 100, history_ttl: float = 300.0, max_message: int = 65536,
    events: EventSettings | None = None, cache_ttl: float = 1800.0,
) -> Backplane:
    """The backplane for ``url``: a Redis Cluster's (``redis+cluster://``: per-row expiry, sharded
    pub/sub), or the classic one (one Redis, or Sentinel). Nothing connects until it is used.
    ``events``: the presence scripts record events, and an `EventStore` sends them."""
    from .clients import is_cluster_url, make_redis
    from .events import RedisEventStore
    from .history import RedisHistory

    cluster = is_cluster_url(url)
    # Pub/sub's own client, never reconnected behind the subscriber's back (it must resubscribe and
    # resync); on a cluster, the one it reads the topology with.
    pubsub = make_redis(url, timeout, 1, retries=0)
    if cluster:
        from .cluster_presence import ClusterPresence
        from .cluster_subscriber import ClusterSubscriber

        sharded = ClusterPresence(url, metrics, pubsub, ttl=ttl, timeout=timeout, pool_size=pool_size, events=events)
        history = RedisHistory(
            sharded, history_size, history_ttl, sharded=True, readers=max(1, pool_size // 2), max_message=max_message,
            cache_ttl=cache_ttl,
        )
        subscriber = ClusterSubscriber(
            pubsub, metrics, url=url, timeout=timeout, keepalive=keepalive, process_id=sharded.process_id,
        )
        store = RedisEventStore(url, metrics, sharded.process_id, events, timeout=timeout) if events else None
        return Backplane(sharded, subscriber, history, store)
    from .presence import ClassicPresence
    from .subscriber import ClassicSubscriber

    classic = ClassicPresence(url, metrics, pubsub, ttl=ttl, timeout=timeout, pool_size=pool_size, events=events)
    history = RedisHistory(
        classic, history_size, history_ttl, sharded=False, readers=max(1, pool_size // 2), max_message=max_message,
        cache_ttl=cache_ttl,
    )
    store = RedisEventStore(url, metrics, classic.process_id, events, timeout=timeout) if events else None
    return Backplane(classic, ClassicSubscriber(pubsub, metrics, keepalive=keepalive, process_id=classic.process_id),
                     history, store)
