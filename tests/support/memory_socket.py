"""A client socket in memory, as the core sees one (`rrr.rooms.Connection`), and a recorder of what
a subscriber hears (`rrr.backplane.Events`).

`RecordingSocket` does what the WebSocket handler (handlers/sockets.py) does with what the core
sends it, without Tornado or a network: frames arrive in the order sent, a bulk delivery (a
replay, a member list) is written as the socket drains and everything sent after it waits behind
it (`stall`, `drain`), `may_queue` answers as the handler's outbox does, nothing arrives after a
close, and a close reaches the session a moment later (the handler's ``on_close``), never inside
the call that closed it. Every frame is decoded to JSON for assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rrr.edge.wsframe import Frame
from rrr.protocol import CountState

if TYPE_CHECKING:
    from rrr.session import Session


#: One sequence for every socket's frames: which of two sockets got a frame first.
_arrivals = itertools.count()


@dataclass(frozen=True)
class Received:
    frame: dict[str, Any]
    bulk: bool  # part of a bulk delivery (a replay, a member list)
    at: float  # the loop's time when it reached the client
    seq: int  # its place among the frames of every socket


class RecordingSocket:
    """`rrr.rooms.Connection` in memory, recording what reaches the client."""

    def __init__(self, name: str = "", *, bulk_limit: int = 100 * 65536) -> None:
        self.name = name
        self.bulk_limit = bulk_limit  # what the handler's outbox may owe at once (--history-size x --max-message-size)
        self.session: Session | None = None
        self.received: list[Received] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = False  # closed by the server, or the client hung up
        self.gone = asyncio.Event()  # the handler's on_close ran (the session is closed)
        self.on_close: Callable[[], None] | None = None
        self.stalled = False
        self._waiting: deque[tuple[Frame, bool]] = deque()
        self._waiting_bulk = 0

    def __repr__(self) -> str:
        return f"<RecordingSocket {self.name}>"

    # -- rrr.rooms.Connection ---------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        if not self.closed:
            self._write(frame, False)

    def send_bulk(self, frames: list[Frame]) -> None:
        if self.closed:
            return
        for frame in frames:
            self._write(frame, True)

    def may_queue(self, nbytes: int) -> bool:
        return self._waiting_bulk == 0 or self._waiting_bulk + nbytes <= self.bulk_limit

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.closed:
            return
        self.close_code, self.close_reason = code, reason
        self._closed()

    def announced_subs(self, room: str) -> Iterable[str]:
        return self.session.announced_subs(room) if self.session is not None else ()

    # -- the client's side --------------------------------------------------------------------------

    def hang_up(self) -> None:
        """The client closed the socket (a tab closed, a reload)."""
        if not self.closed:
            self._closed()

    def lost(self) -> None:
        """Its server died: nothing more arrives, and nothing runs on the server for it."""
        self.closed = True

    async def send(self, **msg: Any) -> None:
        """A JSON frame from the client (`send_text`)."""
        await self.send_text(json.dumps(msg))

    async def send_text(self, text: str) -> None:
        """A text frame from the client, handled as the handler's ``on_message`` does (awaited when
        the session returns an awaitable: Tornado reads the next frame only then). A socket that is
        closing reads nothing more."""
        if self.closed or self.session is None:
            return
        work: Awaitable[None] | None = self.session.handle(text)
        if work is not None:
            await work

    def stall(self) -> None:
        """The client stops reading: bulk deliveries and whatever follows them wait."""
        self.stalled = True

    def drain(self) -> None:
        """The client reads again: everything waiting arrives, in order."""
        self.stalled = False
        while self._waiting:
            frame, bulk = self._waiting.popleft()
            self._arrive(frame, bulk)
        self._waiting_bulk = 0

    @property
    def waiting(self) -> list[dict[str, Any]]:
        """Frames sent that wait for the client to read them (`stall`), in order."""
        return [json.loads(frame.text) for frame, _ in self._waiting]

    def _write(self, frame: Frame, bulk: bool) -> None:
        if self.stalled and (bulk or self._waiting):
            self._waiting.append((frame, bulk))
            if bulk:
                self._waiting_bulk += len(frame.wire)
            return
        self._arrive(frame, bulk)

    def _arrive(self, frame: Frame, bulk: bool) -> None:
        self.received.append(Received(json.loads(frame.text), bulk, asyncio.get_running_loop().time(), next(_arrivals)))

    def _closed(self) -> None:
        self.closed = True
        asyncio.get_running_loop().call_soon(self._on_close)

    def _on_close(self) -> None:
        if self.on_close is not None:
            self.on_close()
        self.gone.set()

    # -- what the client got --------------------------------------------------------------------------

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [r.frame for r in self.received]

    def of_type(self, kind: str, room: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind and (room is None or f.get("room") == room)]

    def counts(self, room: str | None = None) -> list[tuple[int, int]]:
        return [(f["connections"], f["tabs"]) for f in self.of_type("connection_message", room)]

    def last_count(self, room: str | None = None) -> tuple[int, int] | None:
        counts = self.counts(room)
        return counts[-1] if counts else None

    def messages(self, room: str | None = None) -> list[Any]:
        """The ``data`` of every message frame, in arrival order."""
        return [f["data"] for f in self.of_type("message", room)]

    def offsets(self, room: str | None = None) -> list[int]:
        return [f["offset"] for f in self.of_type("message", room)]

    def errors(self) -> list[str]:
        return [f["code"] for f in self.of_type("error")]

    def members(self, room: str) -> dict[str, Any]:
        """The member list this client holds: its last whole list with every diff after it applied."""
        members: dict[str, Any] = {}
        for f in self.frames:
            if f.get("room") != room:
                continue
            if f["type"] == "presence":
                members = dict(f["members"])
            elif f["type"] == "presence_diff":
                for user in f["leaves"]:
                    members.pop(user, None)
                members.update(f["joins"])
        return members


class RecordingEvents:
    """`rrr.backplane.Events` that records what a subscriber hears, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[Any, ...]] = []

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e[1:] for e in self.heard if e[0] == kind]

    def message(self, room: str, offset: int, epoch: str, data_json: str) -> None:
        self.heard.append(("message", room, offset, epoch, data_json))

    def raw_message(self, room: str, data_json: str) -> None:
        self.heard.append(("raw_message", room, data_json))

    def count(self, room: str, state: CountState) -> None:
        self.heard.append(("count", room, state))

    def room_confirmed(self, room: str) -> None:
        self.heard.append(("room_confirmed", room))

    def connected(self) -> None:
        self.heard.append(("connected",))

    def signed_out(self, user: str) -> None:
        self.heard.append(("signed_out", user))

    def control_confirmed(self) -> None:
        self.heard.append(("control_confirmed",))

    def inbox(self, data: bytes) -> None:
        self.heard.append(("inbox", data))
