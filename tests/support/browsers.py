"""Helpers for the real-browser tests: launching Debian's Chromium, collecting every
error a page *or the SharedWorker* reports, and reading the server's own numbers."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Browser, BrowserContext, CDPSession

CHROMIUM = "/usr/bin/chromium"
# Flags checked on this machine (shared/notes/browser.md): headless Chromium as root, no extras.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# How each rung of the transport ladder is forced: the page loses the APIs above it.
FORCE_TRANSPORT = {
    "sharedworker": None,
    "leader": "delete window.SharedWorker;",
    "direct": "delete window.SharedWorker; delete window.BroadcastChannel;",
}


def chromium_path() -> str | None:
    return CHROMIUM if shutil.which(CHROMIUM) else shutil.which("chromium")


class ErrorLog:
    """Console errors, uncaught exceptions and failed loads from pages and SharedWorkers.

    Pages are watched through Playwright. Playwright does not expose SharedWorkers,
    so a browser-level CDP session attaches to each one (non-flat, so the sync API
    can talk to it) and listens for console errors, exceptions and log entries.
    """

    def __init__(self, browser: Browser) -> None:
        self.errors: list[str] = []
        self._cdp: CDPSession = browser.new_browser_cdp_session()
        self._workers: dict[str, str] = {}  # CDP session id → worker URL
        self._cdp.on("Target.targetCreated", self._on_target)
        self._cdp.on("Target.receivedMessageFromTarget", self._on_worker_message)
        self._cdp.send("Target.setDiscoverTargets", {"discover": True})

    def watch(self, context: BrowserContext) -> BrowserContext:
        context.on("console",  # type: ignore[call-overload]
                   lambda m: m.type == "error"
                   and self.errors.append(f"console: {m.text}"))  # type: ignore[func-returns-value]
        context.on("weberror", lambda e: self.errors.append(f"pageerror: {e.error}"))
        return context

    def _on_target(self, event: dict[str, Any]) -> None:
        info = event["targetInfo"]
        if info["type"] != "shared_worker":
            return
        session = self._cdp.send("Target.attachToTarget", {"targetId": info["targetId"], "flatten": False})
        self._workers[session["sessionId"]] = info["url"]
        for i, method in enumerate(("Runtime.enable", "Log.enable")):
            message = json.dumps({"id": i + 1, "method": method})
            self._cdp.send("Target.sendMessageToTarget", {"sessionId": session["sessionId"], "message": message})

    def _on_worker_message(self, event: dict[str, Any]) -> None:
        url = self._workers.get(event["sessionId"], "worker")
        msg = json.loads(event["message"])
        params = msg.get("params", {})
        method = msg.get("method")
        if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"{url} console: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(f"{url} exception: {details.get('exception', {}).get('description', details['text'])}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{url} log: {params['entry']['text']}")


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return bytes(r.read())


def metric(base_url: str, name: str, labels: str = "") -> float:
    """One sample from the app's Prometheus text, e.g. metric(url, "rrr_open_sockets")."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in http_get(base_url + "/metrics").decode().splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def room(base_url: str, slug: str) -> dict[str, Any]:
    return dict(json.loads(http_get(f"{base_url}/api/rooms/{slug}")))


def publish(base_url: str, slug: str, token: str, data: Any) -> int:
    request = urllib.request.Request(
        f"{base_url}/api/rooms/{slug}/messages",
        data=json.dumps(data).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status)


def eventually(read: Callable[[], Any], expected: Any, timeout: float = 10.0, what: str = "value") -> None:
    """Poll a server-side value until it equals ``expected``; pages use Playwright's expect()."""
    deadline = time.monotonic() + timeout
    while (last := read()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: expected {expected!r} within {timeout} s, last {last!r}")
        time.sleep(0.1)
