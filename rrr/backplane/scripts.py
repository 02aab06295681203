"""The Lua scripts that keep presence idempotent and self-healing, and a room's history, loaded
from ``lua/*.lua``.

A script is its parts joined in order: on one Redis the key prelude (`rrr.backplane.keys`
writes the names of its keys and channels as Lua, so each is spelled once), ``rows.lua``
(member fields, shared with the cluster's scripts), ``events.lua`` (the webhooks' transitions,
recorded by the change that causes them), ``lease.lua`` (clock, recount, announce) and the
script's own file; on a cluster ``rows.lua``, ``events.lua``, ``cluster.lua`` and its own file
(every key in KEYS); history ``history.lua`` and its own file; the sender's ``outbox.lua`` and
its own file (every key in KEYS, on both). What each one takes and returns is said at the top
of its file.
"""

from __future__ import annotations

from importlib.resources import files

from .keys import LUA_PRELUDE

#: Redis 7 script flags: presence must keep working when Redis is at ``maxmemory``
#: (its writes are small and bounded per process by the caps), so these scripts may write
#: there; Redis < 7 does not know the shebang and gets the scripts without it.
FLAGS = "#!lua flags=allow-oom\n"
#: A cluster's reads declare that they write nothing.
NO_WRITES = "#!lua flags=no-writes\n"


def _load(*parts: str) -> str:
    """The files ``lua/<part>.lua`` in order, each after a line break."""
    lua = files(__package__).joinpath("lua")
    return "".join("\n" + lua.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in parts)


_LEASE = LUA_PRELUDE + _load("rows", "events", "lease")
SET_PRESENCE = _LEASE + _load("set_presence")
RENEW = _LEASE + _load("renew")
SWEEP = _LEASE + _load("sweep")
LEAVE = _LEASE + _load("leave")
COUNT = _LEASE + _load("count")
MEMBERS = _LEASE + _load("members")

_HISTORY = _load("history")
HISTORY_PUBLISH = _HISTORY + _load("history_publish")
HISTORY_READ = _HISTORY + _load("history_read")

_CLUSTER = _load("rows", "events", "cluster")
CLUSTER_WRITE = _CLUSTER + _load("cluster_write")
CLUSTER_RENEW = _CLUSTER + _load("cluster_renew")
CLUSTER_COUNT = _CLUSTER + _load("cluster_count")
CLUSTER_MEMBERS = _CLUSTER + _load("cluster_members")
CLUSTER_SWEEP = _CLUSTER + _load("cluster_sweep")

#: The sender's scripts (`rrr.backplane.events`), the same on one Redis and on a cluster.
SENDER_SCRIPTS = (
    "ev_move", "ev_take", "ev_push", "ev_ack", "ev_note", "ev_claim", "ev_swept", "ev_due", "ev_later",
    "ev_lease", "ev_release", "ev_read", "ev_acked", "ev_direct",
)
_OUTBOX = _load("outbox")
SENDER = {name: _OUTBOX + _load(name) for name in SENDER_SCRIPTS}

#: Every script by name, as `rrr.backplane.presence` loads them.
ALL = {
    "set_presence": SET_PRESENCE, "renew": RENEW, "sweep": SWEEP, "leave": LEAVE, "count": COUNT, "members": MEMBERS,
    "history_publish": HISTORY_PUBLISH, "history_read": HISTORY_READ,
}
#: Scripts that only read (no flags: they work on any Redis, at maxmemory too).
READ_ONLY = frozenset({"count", "members"})
#: Scripts that store what clients send: no ``allow-oom``, so Redis refuses them at maxmemory.
#: ``history_read`` is not one: it writes only a room's small meta (its epoch), and without the flag
#: a subscription to a room new at maxmemory never got ``subscribed``, its count or its presence.
NO_FLAGS = READ_ONLY | {"history_publish"}

#: The cluster's presence scripts by name, with Redis 7 flags: the writes may run at maxmemory (as
#: on one Redis), the reads declare they write nothing.
CLUSTER = {
    "cluster_write": FLAGS + CLUSTER_WRITE,
    "cluster_renew": FLAGS + CLUSTER_RENEW,
    "cluster_count": NO_WRITES + CLUSTER_COUNT,
    "cluster_members": NO_WRITES + CLUSTER_MEMBERS,
    "cluster_sweep": FLAGS + CLUSTER_SWEEP,
}


def flagged(flags: bool) -> dict[str, str]:
    """`ALL`, each script with `FLAGS` when Redis takes them (``flags``: 7.0+) and it may have them."""
    return {name: (FLAGS if flags and name not in NO_FLAGS else "") + text for name, text in ALL.items()}


def sender(flags: bool) -> dict[str, str]:
    """`SENDER`, each with `FLAGS` when Redis takes them: what they store is capped (--webhook-backlog),
    and moving events must not stop at maxmemory while presence scripts go on recording them."""
    return {name: (FLAGS if flags else "") + text for name, text in SENDER.items()}
