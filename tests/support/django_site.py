"""The example Django site (examples/django_site) as the browser tests run it: ``run.py`` against
a real rrr and Redis (two origins, or one behind nginx with ``--same-origin``), its users signed in
through the login form in Chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from rrr.backplane.embedded import EmbeddedRedis
from support.browsers import LAUNCH_ARGS, chromium_path
from support.processes import REQUIRE_ALL, ROOT, free_port

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

SITE_DIR = ROOT / "examples" / "django_site"
SECRET = "django-e2e-token-secret-of-decent-length"
API_KEY = "django-e2e-server-key"
PUSHER_KEY = "django-e2e-pusher-key"
PUSHER_SECRET = "django-e2e-pusher-secret"
PASSWORD = "demo-pass"  # items/management/commands/seed_demo.py
WAIT_MS = 15_000

# Every socket a page opens reports its close code here (the leader tab's socket is the browser's),
# and the rooms it was told it is subscribed to (`subscribed`: from then on the library knows the
# room's position, so a reconnect recovers what it missed); a test can cut the page off: with
# __blocked set, new sockets go to a closed loopback port.
RECORD_CLOSES = """
(() => {
  const Native = window.WebSocket;
  window.__closes = [];
  window.__sockets = [];
  window.__subscribed = [];
  window.__blocked = false;
  window.WebSocket = class extends Native {
    constructor(url, ...rest) {
      super(window.__blocked ? "ws://127.0.0.1:9/blocked" : url, ...rest);
      window.__sockets.push(this);
      this.addEventListener("close", (event) => window.__closes.push(event.code));
      this.addEventListener("message", (event) => {
        try {
          const frame = JSON.parse(event.data);
          if (frame.type === "subscribed") window.__subscribed.push(frame.room);
        } catch (e) { /* not ours to judge */ }
      });
    }
  };
})();
"""


@dataclass
class Site:
    url: str  # what the browser opens (nginx, with --same-origin)
    rrr_url: str
    env: dict[str, str]
    ids: dict[str, str]
    log: Path  # run.py's output: rrr's, runserver's and nginx's lines
    django_url: str  # the site's own port (behind nginx with --same-origin; else url)

    @property
    def socket_url(self) -> str:
        return self.rrr_url.replace("http://", "ws://") + "/ws/"

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(SITE_DIR / "manage.py"), *args], cwd=SITE_DIR, env=self.env,
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def api(self, path: str) -> Any:
        request = urllib.request.Request(self.rrr_url + path, headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"run.py exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def run_site(redis_server: EmbeddedRedis, tmp: Path, *flags: str) -> Iterator[Site]:
    """``python examples/django_site/run.py [flags]``: rrr, migrate, seed_demo and runserver (nginx
    in front with ``--same-origin``), on the suite's Redis, emptied first."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    port, rrr_port, django_port = free_port(), free_port(), free_port()
    env = {
        **os.environ, "RRR_TOKEN_SECRET": SECRET, "RRR_API_TOKEN": API_KEY, "EXAMPLE_FAST_PASSWORDS": "1",
        "EXAMPLE_DB": str(tmp / "db.sqlite3"), "RRR_REDIS_URL": redis_server.url,
        "RRR_SOCKET_URL": f"ws://127.0.0.1:{rrr_port}/ws/", "PYTHONPATH": str(ROOT),  # as run.py sets it
        "RRR_PUSHER_APP_ID": "example", "RRR_PUSHER_KEY": PUSHER_KEY, "RRR_PUSHER_SECRET": PUSHER_SECRET,
    }
    log = tmp / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SITE_DIR / "run.py"), "--port", str(port), "--rrr-port", str(rrr_port),
             "--django-port", str(django_port), "--redis-url", redis_server.url, "--db", env["EXAMPLE_DB"], *flags],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{rrr_port}/healthz", proc, log)
        wait_http(f"http://127.0.0.1:{port}/accounts/login/", proc, log)
        same_origin = "--same-origin" in flags
        site = Site(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{rrr_port}", env, {}, log,
                    f"http://127.0.0.1:{django_port if same_origin else port}")
        out_ids = site.manage(
            "shell", "-c",
            "import json; from django.contrib.auth.models import User; "
            "print(json.dumps({u.username: str(u.pk) for u in User.objects.all()}))",
        )
        site.ids.update(json.loads(out_ids.strip().splitlines()[-1]))
        yield site
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def chromium() -> Iterator[Browser]:
    """Debian's Chromium through Playwright; skipped (failed with RRR_REQUIRE_ALL=1) without them."""
    path = chromium_path()
    missing = "Python Playwright" if sync_playwright is None else None if path else "/usr/bin/chromium"
    if missing:
        if REQUIRE_ALL:
            pytest.fail(f"{missing} is required (RRR_REQUIRE_ALL=1) but not installed")
        pytest.skip(f"{missing} not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@dataclass
class User:
    name: str
    id: str
    context: BrowserContext
    pages: list[Page]
    errors: list[str]
    requests: list[str]  # every URL its pages asked for

    def token(self, page: Page | None = None) -> str:
        return str((page or self.pages[0]).evaluate("fetch('/rrr/token/').then((r) => r.text())"))


class SignIn:
    """``sign_in("alice", tabs=2)``: a fresh browser profile signed in through the login form, with
    ``tabs`` tabs on the items page, each live (its socket open). ``close()`` closes them all and
    fails if any page threw."""

    def __init__(self, browser: Browser, site: Site) -> None:
        self.browser = browser
        self.site = site
        self.made: list[User] = []

    def __call__(self, name: str, tabs: int = 1, path: str = "/") -> User:
        site = self.site
        context = self.browser.new_context()
        context.add_init_script(RECORD_CLOSES)
        errors: list[str] = []
        context.on("weberror", lambda e: errors.append(str(e.error)))
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        page.goto(f"{site.url}/accounts/login/?next={path}")
        page.fill("#id_username", name)
        page.fill("#id_password", PASSWORD)
        page.click("main button[type=submit]")
        expect(page.locator("#me")).to_have_text(name, timeout=WAIT_MS)
        pages = [page]
        for _ in range(tabs - 1):
            extra = context.new_page()
            extra.goto(site.url + path)
            pages.append(extra)
        user = User(name, site.ids[name], context, pages, errors, requests)
        self.made.append(user)
        for p in pages:
            expect(p.locator("#live-status")).to_have_attribute("data-status", "open", timeout=WAIT_MS)
        return user

    def close(self) -> None:
        for user in self.made:
            user.context.close()
        for user in self.made:
            assert not user.errors, f"{user.name}'s pages threw: {user.errors}"


def online(page: Page, name: str) -> Any:
    return page.locator(f'#online li[data-user="{name}"]')


def notification(page: Page, item: str) -> Any:
    return page.locator(f'#notifications li[data-item="{item}"]')


def subscribed_tabs(site: Site, room: str) -> int:
    return int(site.api(f"/api/rooms/{room}")["tabs"])


def wait_for(pred: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
