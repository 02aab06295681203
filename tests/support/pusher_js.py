"""pusher-js 8 and the ``pusher`` Node server SDK, unchanged from npm, driven from a test through
tests/support/pusher_driver.mjs: one Node process holding any number of pusher-js clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from support.clients import wait_until
from support.pusher import PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET

DRIVER = Path(__file__).with_name("pusher_driver.mjs")


class PusherJs:
    """A Node process; every line it prints is kept in `lines` (a dict each)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, port: int, key: str = PUSHER_KEY, secret: str = PUSHER_SECRET) -> PusherJs:
        proc = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), PUSHER_APP_ID, key, secret, str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        driver = cls(proc)
        await driver.wait(lambda x: x["kind"] == "ready", "the driver to start")
        return driver

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            self.lines.append(json.loads(line))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())

    def of(self, who: str | None = None, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        return [x for x in self.lines if (who is None or x.get("id") == who) and (kind is None or x["kind"] == kind)
                and all(x.get(k) == v for k, v in match.items())]

    async def wait(self, pred: Any, what: str, timeout: float = 15.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((x for x in self.lines if pred(x)), None)

        result: dict[str, Any] = await wait_until(found, timeout, what=what)
        return result

    async def event(self, who: str, channel: str, event: str, after: int = 0, timeout: float = 15.0) -> dict[str, Any]:
        """The first ``event`` on ``channel`` that client ``who`` got, from line ``after`` on."""
        return await self.wait(
            lambda x: x in self.lines[after:] and x.get("id") == who and x["kind"] == "event"
            and x["channel"] == channel and x["event"] == event,
            f"{who} to get {event} on {channel}", timeout,
        )

    async def connected(self, who: str, **connect: Any) -> str:
        """Connect client ``who``; its socket id once connected."""
        self.send(op="connect", id=who, **connect)
        got = await self.wait(lambda x: x.get("id") == who and x["kind"] == "state" and x["current"] == "connected",
                              f"{who} to connect")
        socket_id: str = got["socket_id"]
        return socket_id

    async def subscribed(self, who: str, channel: str) -> dict[str, Any]:
        n = len(self.lines)
        self.send(op="subscribe", id=who, channel=channel)
        return await self.event(who, channel, "pusher:subscription_succeeded", after=n)

    async def server(self, call: str, *args: Any) -> dict[str, Any]:
        """A call of the Node server SDK (``trigger``, ``get``): its HTTP status and body."""
        tag = f"{call}-{len(self.lines)}"
        self.send(op="server", call=call, args=list(args), tag=tag)
        return await self.wait(lambda x: x["kind"] == "server" and x.get("tag") == tag, f"the SDK's {call}")

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
