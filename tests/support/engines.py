"""Real browsers of three engines behind one small interface, `Tabs` (open a tab, evaluate an
expression in it, close it), so a test runs once per engine:

- chromium: Debian's Chromium through Python Playwright (tests/support/browsers.py has the recipe);
- firefox: tests/engines/firefox.mjs, npm ``puppeteer-core`` over WebDriver BiDi (no browser
  download, no geckodriver), answering one JSON command per line on stdin/stdout;
- webkit: Python ``selenium`` with ``WebKitWebDriver`` and MiniBrowser on a private Xvfb display.

And what tests read of the count page through it. All waiting is done by polling.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from support.browsers import LAUNCH_ARGS, ErrorLog, chromium_path
from support.processes import REQUIRE_ALL, need_binary

try:
    from selenium import webdriver
    from selenium.webdriver.webkitgtk.options import Options as WebKitOptions
    from selenium.webdriver.webkitgtk.service import Service as WebKitService
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None  # type: ignore[assignment]

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent.parent
FIREFOX_DRIVER = ROOT / "tests" / "engines" / "firefox.mjs"
# From libwebkit2gtk-4.1-0 (a dependency of webkit2gtk-driver), under the machine's multiarch folder.
MINIBROWSER = next(iter(sorted(glob.glob("/usr/lib/*/webkit2gtk-4.1/MiniBrowser"))), "MiniBrowser")


class Tabs(Protocol):
    """Tabs of one browser profile (so they may share one SharedWorker)."""

    version: str

    def open(self, url: str) -> int: ...
    def eval(self, tab: int, js: str) -> Any: ...
    def goto(self, tab: int, url: str) -> None: ...
    def back(self, tab: int) -> None: ...
    def set_offline(self, offline: bool) -> str: ...
    def crash(self, tab: int) -> None: ...
    def close(self, tab: int) -> None: ...
    def errors(self) -> list[str]: ...
    def quit(self) -> None: ...


def unavailable(what: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{what} is required (RRR_REQUIRE_ALL=1) but not installed")
    pytest.skip(f"{what} not installed")


# -- Firefox: a Node child speaking JSON lines -------------------------------------------------


class FirefoxTabs:
    def __init__(self, firefox: str, node: str, home: Path, log: Path, init: str | None) -> None:
        self.init = init
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [node, str(FIREFOX_DRIVER), firefox, str(home)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT,
            start_new_session=True,  # Node and the Firefox it started: one group to kill if it hangs
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.version = str(self._answer(timeout=60))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _answer(self, timeout: float) -> Any:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"firefox.mjs gave no answer within {timeout} s") from None
        if not line:
            raise AssertionError(f"firefox.mjs exited {self.proc.poll()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"firefox.mjs: {reply['error']}")
        return reply["value"]

    def _call(self, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def open(self, url: str) -> int:
        return int(self._call("open", url=url, init=self.init))

    def eval(self, tab: int, js: str) -> Any:
        return self._call("eval", tab=tab, js=js)

    def goto(self, tab: int, url: str) -> None:
        self._call("goto", tab=tab, url=url)

    def back(self, tab: int) -> None:
        self._call("back", tab=tab)

    def set_offline(self, offline: bool) -> str:
        """WebDriver BiDi's network emulation, tab by tab (the SharedWorker hears it through its tabs)."""
        self._call("offline", offline=offline)
        return "emulated"

    def crash(self, tab: int) -> None:
        raise NotImplementedError("Firefox over BiDi: no way found to crash one tab")

    def close(self, tab: int) -> None:
        self._call("close", tab=tab)

    def errors(self) -> list[str]:
        """Uncaught errors and console errors of every page (not of the SharedWorker)."""
        return list(self._call("errors"))

    def quit(self) -> None:
        try:
            if self.proc.poll() is None:
                self._call("quit")
            self.proc.wait(15)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        finally:
            self._reader.join(5)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._log.close()


# -- WebKit: selenium + WebKitWebDriver + MiniBrowser ------------------------------------------


class WebKitTabs:
    def __init__(self, driver_path: str, display: str, home: Path, args: list[str]) -> None:
        options = WebKitOptions()
        options.binary_location = MINIBROWSER
        for arg in ["--automation", *args]:
            options.add_argument(arg)
        env = {**os.environ, "DISPLAY": display, "HOME": str(home)}
        self.driver = webdriver.WebKitGTK(options=options, service=WebKitService(executable_path=driver_path, env=env))
        self.handles: list[str | None] = []
        self.processes: list[set[int]] = []  # per tab, the web processes that appeared when it opened
        self.version = f"webkitgtk/{self.driver.capabilities.get('browserVersion', '?')}"

    def _web_processes(self) -> set[int]:
        """WebKitWebProcess children anywhere under our WebKitWebDriver (read from /proc)."""
        parents: dict[int, int] = {}
        names: dict[int, str] = {}
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    text = f.read()
            except OSError:
                continue
            pid = int(stat.split("/")[2])
            names[pid] = text[text.index("(") + 1:text.rindex(")")]
            parents[pid] = int(text[text.rindex(")") + 2:].split()[1])
        root = self.driver.service.process.pid
        found = set()
        for pid, name in names.items():
            if not name.startswith("WebKitWebProces"):
                continue
            up = pid
            while up > 1 and up != root:
                up = parents.get(up, 0)
            if up == root:
                found.add(pid)
        return found

    def _to(self, tab: int) -> None:
        handle = self.handles[tab]
        assert handle is not None, f"tab {tab} is closed"
        if self.driver.current_window_handle != handle:
            self.driver.switch_to.window(handle)

    def open(self, url: str) -> int:
        before = self._web_processes()
        if self.handles:
            self.driver.switch_to.new_window("tab")
        self.driver.get(url)
        self.handles.append(self.driver.current_window_handle)
        self.processes.append(self._web_processes() - before)
        return len(self.handles) - 1

    def goto(self, tab: int, url: str) -> None:
        self._to(tab)
        self.driver.get(url)

    def back(self, tab: int) -> None:
        self._to(tab)
        self.driver.back()

    def set_offline(self, offline: bool) -> str:
        """WebDriver (classic) has no network emulation: every tab hears the browser's event instead,
        which is all the library goes by (the socket itself is closed by the owner)."""
        event = "offline" if offline else "online"
        for tab, handle in enumerate(self.handles):
            if handle is not None:
                self.eval(tab, f"window.dispatchEvent(new Event('{event}'))")
        return "events"

    def crash(self, tab: int) -> None:
        """SIGKILL the web process the tab got when it opened (WebKit gives each tab its own). The
        driver is on another tab first: WebKitWebDriver ends the session when its current tab crashes."""
        assert len(self.processes[tab]) == 1, f"tab {tab}'s web processes: {self.processes[tab]}"
        self._to(next(i for i, h in enumerate(self.handles) if h is not None and i != tab))
        os.kill(next(iter(self.processes[tab])), signal.SIGKILL)
        self.handles[tab] = None

    def eval(self, tab: int, js: str) -> Any:
        self._to(tab)
        return self.driver.execute_script(f"return ({js});")

    def close(self, tab: int) -> None:
        self._to(tab)
        self.driver.close()
        self.handles[tab] = None
        alive = [h for h in self.handles if h is not None]
        if alive:
            self.driver.switch_to.window(alive[0])

    def errors(self) -> list[str]:
        """WebKitWebDriver exposes no console log; the pages' #messages notices are checked instead."""
        return []

    def quit(self) -> None:
        self.driver.quit()


# -- Chromium: Playwright's sync API -------------------------------------------------------------


class ChromiumTabs:
    """One Chromium browser (its own profile) driven by Playwright; ``init`` runs before each page's
    scripts. Errors of the pages and of their SharedWorker are collected (`ErrorLog`)."""

    def __init__(self, init: str | None = None) -> None:
        path = chromium_path()
        if sync_playwright is None or path is None:
            unavailable("Python Playwright" if sync_playwright is None else "/usr/bin/chromium")
        # Started per browser, not per session: the sync API holds an event loop as running while it
        # is started, which would break the pytest-tornado tests that run after it.
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        self._log = ErrorLog(self._browser)
        self._context = self._log.watch(self._browser.new_context())
        if init:
            self._context.add_init_script(init)
        self.pages: list[Page | None] = []
        self.version = f"chromium/{self._browser.version}"

    def _page(self, tab: int) -> Page:
        page = self.pages[tab]
        assert page is not None, f"tab {tab} is closed"
        return page

    def open(self, url: str) -> int:
        page = self._context.new_page()
        page.goto(url)
        self.pages.append(page)
        return len(self.pages) - 1

    def eval(self, tab: int, js: str) -> Any:
        return self._page(tab).evaluate(f"() => ({js})")

    def goto(self, tab: int, url: str) -> None:
        self._page(tab).goto(url)

    def back(self, tab: int) -> None:
        self._page(tab).go_back()

    def set_offline(self, offline: bool) -> str:
        self._context.set_offline(offline)
        return "emulated"

    def crash(self, tab: int) -> None:
        raise NotImplementedError("tests/test_browser.py crashes Chromium tabs")

    def close(self, tab: int) -> None:
        self._page(tab).close()
        self.pages[tab] = None

    def errors(self) -> list[str]:
        return list(self._log.errors)

    def quit(self) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()


@contextlib.contextmanager
def xvfb_display(log_path: Path) -> Iterator[str]:
    """A private X display; Xvfb picks a free number itself (-displayfd)."""
    xvfb = need_binary("Xvfb")
    read, write = os.pipe()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [xvfb, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=log,
        )
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        raise RuntimeError(f"Xvfb did not start: {log_path.read_text()}")
    try:
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


# -- what tests read of the count page ----------------------------------------------------------------


def text(tabs: Tabs, tab: int, selector: str) -> Any:
    return tabs.eval(tab, f"document.querySelector({json.dumps(selector)})?.textContent ?? null")


def messages(tabs: Tabs, tab: int) -> Any:
    return tabs.eval(tab, "[...document.querySelectorAll('#messages li')].map(li => li.className + ':' "
                          "+ li.querySelector('.text').textContent)")


def status(tabs: Tabs, tab: int) -> Any:
    return tabs.eval(tab, "document.querySelector('#state').dataset.status ?? null")


def until(read: Callable[[], Any], expected: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while (last := read()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: expected {expected!r} within {within} s, last {last!r}")
        time.sleep(0.2)


def expect_counts(tabs: Tabs, open_tabs: list[int], connections: int, n: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    for tab in open_tabs:
        until(lambda: (text(tabs, tab, "#count"), text(tabs, tab, "#tabs")), (str(connections), str(n)),
              max(1.0, deadline - time.monotonic()), f"tab {tab} count / tabs")


def open_tabs(tabs: Tabs, url: str, n: int) -> list[int]:
    return [tabs.open(url) for _ in range(n)]
