"""A room's message history in Redis: what makes a reconnect lose nothing.

Each room has a stream of its last ``--history-size`` messages (entry ID ``<offset>-0``)
and a meta hash with its *epoch* and top *offset*, both under the room's hash tag. A
message is stored and published by one script (`rrr.backplane.scripts.HISTORY_PUBLISH`), so every
message a socket can see live is already stored, in offset order: whoever missed some
reads them back from the offset it last saw, and knows (``recovered: false``) when it
cannot, because the epoch changed (the history was lost, or a failover made its offsets go
back or name other messages) or the oldest stored offset is past the one it needs (trimmed or
expired).

The meta outlives the stream (`meta_ttl`), so a room that was merely quiet keeps its
offsets: a client that saw the top offset before a long silence still recovers.

Pure parts (`parse_message`, `Read.covers`) are separate from the calls; the backend's
helper (`rrr.client.publish`) runs the same scripts with the same argument builders.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import keys
from ..errors import BackplaneError
from ..protocol import MAX_MESSAGE_SIZE, is_epoch, parse_uint, validate_payload
from ..pusher.names import CACHE_PREFIXES

#: What a process delivered up to in a room: its epoch, top offset and the `digest` of the data
#: delivered at that offset ("": unknown).
Seen = tuple[str, int, str]

#: The smallest TTL of a room's meta (epoch and offsets), in seconds; see `meta_ttl`.
META_TTL_MIN = 3600


class BadHistory(BackplaneError):
    """Redis answered a history call with something it cannot have meant."""


def new_epoch() -> str:
    return secrets.token_hex(4)


def meta_ttl(ttl: float) -> int:
    """How long a room's epoch and offsets outlive its last use: at least an hour, and at least
    twice the history's own TTL, so offsets never restart while the messages they name exist."""
    return max(META_TTL_MIN, int(2 * ttl) + 1)


@dataclass(frozen=True)
class Published:
    offset: int
    epoch: str
    receivers: int  # pub/sub connections that got it (every process with a local subscriber)


@dataclass(frozen=True)
class Read:
    """A room's position, and the stored messages after some offset (oldest first)."""

    epoch: str  # "" for a room that has none (a read-only look at a room nobody used)
    top: int
    entries: list[tuple[int, str]]  # (offset, data JSON), strictly increasing (`parse_read`)

    def covers(self, after: int, epoch: str | None = None) -> bool:
        """Whether these entries are every message after ``after`` (of ``epoch``, if given): nothing
        between ``after`` and the top is missing, because nothing was trimmed or lost. Counted, not
        only bounded: a stream with a hole in it (an XDEL, a partial restore) does not cover."""
        if epoch is not None and epoch != self.epoch:
            return False
        if after == self.top:
            return True
        return after < self.top and len(self.entries) == self.top - after and self.entries[0][0] == after + 1


def parse_message(raw: bytes | str) -> tuple[int, str, str]:
    """``<offset> <epoch> <payload>`` from a room's message channel (the payload: data JSON, or
    `rrr.protocol.pack`ed with its event); ValueError if malformed."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    offset_text, _, rest = text.partition(" ")
    epoch, _, data = rest.partition(" ")
    if not is_epoch(epoch):
        raise ValueError("history message needs '<offset> <epoch> <data>'")
    offset = parse_uint(offset_text)
    if offset < 1:
        raise ValueError("history offsets start at 1")
    return offset, epoch, validate_payload(data)


def publish_args(
    room: str, data_json: str, size: int, ttl: float, *, own: bool, sharded: bool = False, cache_ttl: float = 0.0,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of `rrr.backplane.scripts.HISTORY_PUBLISH`. ``own``: these are the server's settings
    (the helper passes its defaults, used only for a room no server has set up). ``sharded``: on a
    Redis Cluster, published with ``SPUBLISH`` (only the room's shard handles it). ``cache_ttl``: a
    cache channel's message is also kept as its last one this long (`cache_ms`). Each call gets a
    fresh id, which redis-py's retry after a broken connection sends again: the script then answers
    the offset the first run gave instead of storing the message twice."""
    k = [keys.history(room), keys.meta(room)]
    a: list[Any] = [keys.message_channel(room), data_json, size, int(ttl * 1000), meta_ttl(ttl), new_epoch(),
                    int(own), int(sharded), secrets.token_hex(8)]
    ms = cache_ms(room, cache_ttl)
    if ms:
        k.append(keys.cache(room))
        a.append(ms)
    return k, a


def cache_ms(room: str, cache_ttl: float) -> int:
    """How long (ms) a message to ``room`` is kept as its last one: ``cache_ttl`` for a cache
    channel (``cache-``, ``private-cache-``, ``private-encrypted-cache-``, ``presence-cache-``), else 0."""
    return int(cache_ttl * 1000) if cache_ttl > 0 and room.startswith(CACHE_PREFIXES) else 0


def parse_published(reply: Any) -> Published:
    if not (isinstance(reply, list) and len(reply) == 3):
        raise BadHistory(f"expected {{offset, epoch, receivers}} from HISTORY_PUBLISH, got {reply!r:.80}")
    offset, epoch, receivers = reply
    epoch = _text(epoch)
    if not (_count(offset) and offset >= 1 and is_epoch(epoch) and _count(receivers)):
        raise BadHistory(f"expected {{offset, epoch, receivers}} from HISTORY_PUBLISH, got {reply!r:.80}")
    return Published(offset, epoch, receivers)


def parse_read(reply: Any, limit: int) -> Read:
    if not (isinstance(reply, list) and len(reply) == 3 and isinstance(reply[2], list)):
        raise BadHistory(f"expected {{epoch, top, entries}} from HISTORY_READ, got {reply!r:.80}")
    epoch, top, raw_entries = _text(reply[0]), reply[1], reply[2]
    if not ((is_epoch(epoch) or (epoch == "" and top == 0)) and _count(top)) or len(raw_entries) > limit:
        raise BadHistory(f"expected {{epoch, top, entries}} from HISTORY_READ, got {reply!r:.80}")
    entries: list[tuple[int, str]] = []
    last = 0
    for entry in raw_entries:
        try:
            entry_id, fields = entry
            ms, _, seq = _text(entry_id).partition("-")
            offset = parse_uint(ms)
            data = validate_payload(fields[1])
            if fields[0] != b"d" or seq != "0" or not last < offset <= top:
                raise ValueError("out of order")
        except (TypeError, ValueError, IndexError, UnicodeDecodeError):
            raise BadHistory(f"a malformed history entry: {entry!r:.80}") from None
        entries.append((offset, data))
        last = offset
    return Read(epoch, top, entries)


def digest(data_json: str) -> str:
    """What HISTORY_READ compares with the entry stored at a caller's ``seen`` top (``redis.sha1hex``
    of its ``d``): "" for a message not delivered (dropped as oversized), which is checked against
    nothing."""
    return hashlib.sha1(data_json.encode("utf-8")).hexdigest() if data_json else ""


def read_args(
    room: str, after: int | None, limit: int, size: int, ttl: float, *, own: bool = True,
    seen: Seen | None = None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of `rrr.backplane.scripts.HISTORY_READ` (``after`` None: the position only; ``own``
    False: a read-only look; ``seen``: the epoch and top offset the caller delivered up to, and the
    `digest` of what it delivered there)."""
    seen_epoch, seen_top, seen_digest = seen or ("", 0, "")
    return (
        [keys.history(room), keys.meta(room)],
        [-1 if after is None else after, limit, new_epoch(), meta_ttl(ttl), size, int(ttl * 1000), int(own),
         seen_epoch, seen_top, seen_digest],
    )


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        try:
            return x.decode()
        except UnicodeDecodeError:
            return ""
    return x if isinstance(x, str) else ""


class ScriptRunner(Protocol):
    """A presence's way to Redis, which history borrows (its pool, its errors, its scripts)."""

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any: ...

    async def call_command(self, name: str, *args: Any, **kwargs: Any) -> Any: ...

    async def publish(self, channel: str, data: str) -> int: ...


class RedisHistory:
    """The server's history calls (`rrr.backplane.History`). ``size`` or ``ttl`` 0: history is off
    (messages are published plainly, with no offset, and nothing is stored)."""

    def __init__(
        self, redis: ScriptRunner, size: int, ttl: float, *, sharded: bool = False, readers: int = 16,
        max_message: int = MAX_MESSAGE_SIZE, cache_ttl: float = 1800.0,
    ) -> None:
        self.redis = redis
        self.cache_ttl = cache_ttl  # --cache-ttl: how long a cache channel keeps its last message
        self.size = max(0, size)
        self.ttl = max(0.0, ttl)
        # ``--max-message-size``: the largest data this process delivers. Whatever reaches Redis
        # another way (a raw PUBLISH, an older helper) may be bigger: delivery drops it.
        self.max_message = max(1, max_message)
        self.sharded = sharded  # on a Redis Cluster: messages go out with SPUBLISH
        # At most ``readers`` of this process's own reads at once. A burst of new rooms (a restart
        # brings every socket back into its rooms at once) reads each room's position; unbounded,
        # those reads held every pooled connection and presence writes timed out waiting for one
        # (1,667 new rooms per process in the 100,000-socket benchmark).
        self._readers = asyncio.Semaphore(max(1, readers))

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0

    async def publish(self, room: str, data_json: str) -> Published:
        """Store and relay (history on), or relay only: then ``offset`` is 0 and ``epoch`` empty."""
        if not self.enabled:
            ms = cache_ms(room, self.cache_ttl)
            if ms:
                await self.redis.call_command("set", keys.cache(room), data_json, px=ms)
            return Published(0, "", await self.redis.publish(keys.room_channel(room), data_json))
        k, a = publish_args(room, data_json, self.size, self.ttl, own=True, sharded=self.sharded,
                            cache_ttl=self.cache_ttl)
        return parse_published(await self.redis.script("history_publish", k, a))

    async def cached(self, room: str) -> str | None:
        """A cache channel's last message (its payload) if one is kept, else None (or malformed)."""
        raw = await self.redis.call_command("get", keys.cache(room))
        if raw is None:
            return None
        try:
            return validate_payload(raw)
        except ValueError:
            return None

    async def relay(self, room: str, payload: str) -> int:
        return await self.redis.publish(keys.room_channel(room), payload)

    async def read(self, room: str, after: int | None, *, seen: Seen | None = None) -> Read:
        """The room's position (its epoch fixed now if it had none), and (``after`` given) every
        stored message after it, at most ``size`` of them (all the stream can hold). ``seen``: the
        epoch and top this process delivered and the `digest` of what it delivered there, so a room
        whose top went back, or that holds another message at that offset, gets a new epoch: only
        the epoch changes, so what the room stored (acknowledged to its publishers) stays readable
        and its offsets go on from the top."""
        k, a = read_args(room, after, self.size, self.size, self.ttl, seen=seen)
        async with self._readers:
            reply = await self.redis.script("history_read", k, a)
        return parse_read(reply, self.size)

    async def look(self, room: str, after: int) -> Read:
        """`read` for the HTTP API, which anyone may call for public rooms: it writes nothing, so a
        room nobody used stays without an epoch (``""``) instead of gaining an hour-long key."""
        k, a = read_args(room, after, self.size, self.size, self.ttl, own=False)
        return parse_read(await self.redis.script("history_read", k, a), self.size)

    async def announce(self) -> None:
        """Tell backends' helpers how this deployment keeps history (``size`` 0: off) and the largest
        message it delivers (``max``, bytes), so `rrr.client.publish` stores as the servers do and
        refuses what they would drop, without being told."""
        await self.redis.call_command(
            "hset", keys.HISTORY_CONFIG,
            mapping={"size": self.size, "ttl": int(self.ttl * 1000), "max": self.max_message},
        )

    async def touch(self, rooms: Iterable[str]) -> None:
        """Keep the epochs of rooms with local subscribers (a quiet room must not restart its offsets)."""
        for room in rooms:
            await self.read(room, None)


def replay_entries(entries: Sequence[tuple[int, str]], after: int, upto: int) -> list[tuple[int, str]]:
    """The entries with ``after`` < offset <= ``upto``."""
    return [(o, d) for o, d in entries if after < o <= upto]
