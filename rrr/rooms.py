"""The local rooms: each room with subscriptions on this process, and the sockets in it.

The hub writes it (`rrr.hub.Hub.subscribe` and ``unsubscribe`` are the only writers); delivery,
counts, members and the writer read it as data, each keeping what it needs of a room beside it
(a stream, a count, a member list, sockets owed a count), so none of them calls the hub back
for a room's sockets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .edge.wsframe import Frame


class Connection(Protocol):
    """A client socket as the core sees it. ``send_frame`` never blocks and never raises."""

    def send_frame(self, frame: Frame) -> None: ...

    def send_bulk(self, frames: list[Frame]) -> None:
        """A replay or a page of members: written as the socket drains, what follows behind it."""

    def may_queue(self, nbytes: int) -> bool:
        """Whether a replay of ``nbytes`` fits in what the socket may be owed at once."""

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...

    def announced_subs(self, room: str) -> Iterable[str]:
        """Its subscriptions to ``room`` that are told ``subscribed`` (a reset included)."""


class LocalRoom:
    """One room's sockets here: each with its number of subscriptions (tabs) to the room."""

    __slots__ = ("conns", "tabs")

    def __init__(self) -> None:
        self.conns: dict[Connection, int] = {}
        self.tabs = 0

    @property
    def counts(self) -> tuple[int, int]:
        """This process's row for the room: ``(connections, tabs)``."""
        return len(self.conns), self.tabs


#: Every local room by name: what the hub writes, and the others read.
Rooms = dict[str, LocalRoom]
