"""In-process servers: what `make_app` builds, served on loopback, as the tests see it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import tornado.httpserver

from rrr.hub import Hub
from rrr.metrics import Metrics
from rrr.service import Service


@dataclass
class Server:
    """A running app: its hub, its HTTP server, and helpers to talk to it."""

    service: Service
    http: tornado.httpserver.HTTPServer
    port: int
    hub: Hub = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.hub = self.service.hub
        self.metrics = self.service.metrics

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


ServerFactory = Callable[..., Awaitable[Server]]
