"""A newcomer's first hour (#26): the README's and the site's recipes work as written, run as a person would run
them, and a mistake shows where its maker looks (the log, the terminal, the page's console)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.options import options

import app  # noqa: F401 - defines the options whose names deploy/ must use
from rrr import client as rrr_client
from support.clients import Client, connect, wait_until
from support.docs import lines_with, section
from support.processes import AppProcess, Command, free_port, need_binary

ROOT = Path(__file__).resolve().parent.parent


def as_argv(line: str, port: int) -> list[str]:
    """A README's ``python app.py ...`` as this checkout's interpreter runs it, on ``port``."""
    line = line.split("#", 1)[0] if " #" in line else line
    argv = shlex.split(os.path.expandvars(line))
    assert argv[:2] == ["python", "app.py"], argv
    return [sys.executable, str(ROOT / "app.py"), *argv[2:], "--address", "127.0.0.1", "--port", str(port)]


async def closed(clients: list[Client]) -> None:
    """Close the test's sockets while its loop still runs (their readers end with it)."""
    for c in clients:
        c.close()
    for c in clients:
        await wait_until(c.closed.is_set, what="the socket closed")


async def subscribed(port: int, room: str, clients: list[Client]) -> Client:
    c = await connect(f"ws://127.0.0.1:{port}/ws/")
    clients.append(c)
    await c.send(type="subscribe", room=room, sub="tab")
    await c.reply("subscribed")
    return c


# -- the Django guide: rrr reads the Redis Django publishes to --------------------------------


DJANGO = section("Using rrr from Django", "docs/guides/django.md")
DJANGO_COMMANDS = lines_with(DJANGO, "sh", "python app.py")


def test_the_django_guide_says_rrr_must_run_on_djangos_redis() -> None:
    assert "on the same Redis" in DJANGO and "RRR_REDIS_URL" in DJANGO
    assert len(DJANGO_COMMANDS) >= 2, "the cross-origin and the same-origin command"


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("line", DJANGO_COMMANDS)
async def test_rrr_started_as_the_django_guide_says_delivers_what_django_publishes(
    line: str, redis_url: str, clients: list[Client], command_factory: Callable[..., Command],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings' ``RRR_REDIS_URL`` and the command's Redis stand for one Redis (the test's);
    Django's publish (``rrr.client``, what ``publish_on_commit`` calls) reaches a socket of the rrr
    the guide starts. Started without ``--redis-url``, rrr ran an embedded Redis of its own."""
    settings_url = re.search(r'RRR_REDIS_URL = "([^"]+)"', DJANGO)
    assert settings_url, "the settings name RRR_REDIS_URL"
    monkeypatch.setenv("RRR_TOKEN_SECRET", "s" * 32)
    monkeypatch.setenv("RRR_API_TOKEN", "k" * 32)
    port = free_port()
    command_factory(as_argv(line.replace(settings_url[1], redis_url), port), f"http://127.0.0.1:{port}/healthz")
    c = await subscribed(port, "news", clients)
    # Django's side publishes to RRR_REDIS_URL: the test's Redis, where the guide has its own.
    await rrr_client.apublish("news", {"item": 1}, redis_url=redis_url)
    got = await c.next("message", timeout=10)
    assert got["data"] == {"item": 1}
    await closed(clients)


# -- rrr.client: a Redis no server announced itself on is said so, once -----------------------


PUBLISHER = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    from rrr.client import publish
    first, second = sys.argv[1], sys.argv[2]
    print([publish("news", {"n": i}, redis_url=first) for i in range(3)], [publish("news", {"n": 9}, redis_url=second)])
""")


def publish_in_a_process(*urls: str) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PUBLISHER, *urls], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )
    return done.stdout, done.stderr


def test_publishing_where_no_rrr_server_announced_itself_warns_once_per_process_and_url_and_still_publishes(
    redis_url: str,
) -> None:
    other = redis_url.rsplit("/", 1)[0] + "/5"  # the same server, another database: another Redis URL
    out, err = publish_in_a_process(redis_url, other)
    assert out.strip() == "[1, 2, 3] [1]", "every publish went through, stored in history"
    warnings = [line for line in err.splitlines() if line.startswith("WARNING rrr.client ")]
    assert len(warnings) == 2, err
    assert redis_url in warnings[0] and other in warnings[1]
    assert all("rrr:config:history" in w and "--redis-url" in w for w in warnings)
    # Another process warns again: once per process.
    assert len([line for line in publish_in_a_process(redis_url, other)[1].splitlines()
                if line.startswith("WARNING rrr.client ")]) == 2


def test_publishing_where_an_rrr_server_runs_says_nothing(
    redis_url: str, app_factory: Callable[..., AppProcess],
) -> None:
    app_factory(redis_url=redis_url)
    other = redis_url.rsplit("/", 1)[0] + "/5"
    out, err = publish_in_a_process(redis_url, other)
    warnings = [line for line in err.splitlines() if line.startswith("WARNING rrr.client ")]
    assert len(warnings) == 1 and other in warnings[0], err


def test_a_password_in_the_url_stays_out_of_the_warning() -> None:
    assert rrr_client._redacted("redis://rrr:hunter2@10.0.0.1:6379/0") == "redis://rrr:***@10.0.0.1:6379/0"
    assert rrr_client._redacted("rediss://:hunter2@h/0") == "rediss://:***@h/0"
    assert rrr_client._redacted("redis://h:6379/0") == "redis://h:6379/0"


# -- the quick start ends with a delivered message ------------------------------------------


QUICK = section("The two commands")


@pytest.mark.gen_test(timeout=120)
async def test_the_quick_starts_curl_reaches_a_page_of_a_server_started_as_it_says(
    clients: list[Client], command_factory: Callable[..., Command],
) -> None:
    """``make run ARGS="..."`` is ``python app.py $(ARGS)`` (Makefile); the documented curl, run
    with curl itself, delivers to a socket subscribed to the documented room, and a page's publish
    (``--client-publish``) reaches the other tabs."""
    curl = need_binary("curl")
    (make,) = lines_with(QUICK, "sh", 'make run ARGS="')
    assert "$(PY) app.py $(ARGS)" in (ROOT / "Makefile").read_text()
    args = re.search(r'ARGS="([^"]*)"', make)
    assert args
    (curl_line,) = lines_with(QUICK, "sh", "curl ")
    room = re.search(r"/api/rooms/([A-Za-z0-9_-]+)/messages", curl_line)
    assert room and f"http://127.0.0.1:8888/count/{room[1]}/" in QUICK, "the page to open is the curl's room"
    port = free_port()
    command_factory([sys.executable, str(ROOT / "app.py"), *shlex.split(args[1]), "--port", str(port)],
                    f"http://127.0.0.1:{port}/healthz")
    tab = await subscribed(port, room[1], clients)
    other_tab = await subscribed(port, room[1], clients)
    argv = shlex.split(curl_line.replace("127.0.0.1:8888", f"127.0.0.1:{port}"))
    assert argv[0] == "curl"
    done = subprocess.run([curl, "--silent", "--show-error", "--fail", *argv[1:]], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    body = json.loads(argv[argv.index("-d") + 1])
    assert (await tab.next("message"))["data"] == body
    await tab.send(type="publish", room=room[1], data="typed in a page")
    await wait_until(lambda: any(f.get("data") == "typed in a page" for f in other_tab.of_type("message")),
                     what="the page's message in the other tab")
    await closed(clients)


# -- a busy port is one line naming --port -------------------------------------------------


def test_an_address_rrr_cannot_listen_on_is_one_line_naming_address() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--address", "192.0.2.1", "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--address" in lines[0] and "192.0.2.1" in lines[0], done.stderr


@pytest.mark.parametrize("processes", [1, 2])
def test_a_busy_port_is_one_line_naming_the_option_to_change(processes: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--processes", str(processes)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--port" in lines[0] and str(port) in lines[0] and "in use" in lines[0]


@pytest.mark.parametrize("option", ["--port", "--rrr-port"])
def test_make_example_on_a_busy_port_is_one_line_naming_the_option_to_change(option: str) -> None:
    """``make example`` while something else holds 8000 (a ``python3 -m http.server`` from the quick
    start) used to start rrr and Redis, print "The example site is at http://127.0.0.1:8000/" because the
    other server answered there, and end when Django could not bind."""
    ports = {"--port": free_port(), "--rrr-port": free_port()}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[option]))
        holder.listen()
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "django_site" / "run.py"),
             "--port", str(ports["--port"]), "--rrr-port", str(ports["--rrr-port"])],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert option in lines[0] and str(ports[option]) in lines[0] and "in use" in lines[0]
    assert "The example site is at" not in done.stdout


# -- deploy/ names options as they are named now ------------------------------------------


def test_deploy_names_no_option_by_an_older_name() -> None:
    """deploy/'s files (the systemd unit's env file, run-cluster.sh, its README) set options through
    ``RRR_<OPTION>``; none may be an option kept only as the older name of another."""
    older = {name for name, opt in options._options.items() if (opt.help or "").startswith("the older name of")}
    assert "publish-token" in older or "publish_token" in older
    for path in sorted((ROOT / "deploy").iterdir()):
        if not path.is_file():
            continue
        for var in set(re.findall(r"RRR_([A-Z0-9_]+)", path.read_text(errors="replace"))):
            name = var.lower()
            assert name not in older and name.replace("_", "-") not in older, f"{path.name} uses RRR_{var}"


def run_cluster(root: Path, run_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """deploy/run-cluster.sh from the checkout at ``root``, as the deploy guide runs it."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    return subprocess.run(
        ["bash", str(root / "deploy" / "run-cluster.sh")], cwd=root, capture_output=True, text=True, timeout=120,
        env=dict(base, RRR_REDIS_URL="redis://127.0.0.1:1/0", RRR_PORTS=str(free_port()), RUN_DIR=str(run_dir), **env),
    )


def test_run_cluster_with_an_interpreter_lacking_the_requirements_says_so_and_names_python(tmp_path: Path) -> None:
    """The guide's one-box command run with a Python that has no requirements (the system one) used to
    wait 30 s for apps that had died at their first import, then blame their health."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    bare = str(tmp_path / "bare" / "bin" / "python")
    done = run_cluster(ROOT, tmp_path / "run", PYTHON=bare)
    assert done.returncode != 0
    assert f"run-cluster: {bare} cannot import rrr's requirements" in done.stderr, done.stderr
    assert "PYTHON=" in done.stderr and "make run" in done.stderr
    assert "not healthy" not in done.stderr and "app.py on" not in done.stderr, "no app was started"


def test_run_cluster_uses_the_checkouts_venv_that_make_run_made(tmp_path: Path) -> None:
    """Without PYTHON the script takes the checkout's .venv/bin/python (what ``make run`` creates), not
    whatever python3 is on PATH."""
    checkout = tmp_path / "checkout"
    (checkout / "deploy").mkdir(parents=True)
    (checkout / "deploy" / "run-cluster.sh").write_text((ROOT / "deploy" / "run-cluster.sh").read_text())
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True, timeout=120)
    done = run_cluster(checkout, tmp_path / "run")
    assert done.returncode != 0  # that bare .venv has no requirements: the check names it
    assert f"run-cluster: {checkout / '.venv' / 'bin' / 'python'} cannot import" in done.stderr, done.stderr


# -- a refused Origin is named in the page's console ----------------------------------------


def test_the_origin_check_answers_for_the_requests_origin_to_anyone(app_factory: Callable[..., AppProcess],
                                                                    redis_url: str) -> None:
    server = app_factory(redis_url=redis_url, allowed_origins="https://site.example")

    def ask(query: str = "", origin: str | None = None) -> tuple[int, dict[str, str], object]:
        req = urllib.request.Request(server.base_url + "/ws/origin" + query,
                                     headers={"Origin": origin} if origin else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read())

    status, headers, body = ask(origin="https://evil.example")
    assert status == 200 and body == {"origin": "https://evil.example", "allowed": False, "option": "--allowed-origins"}
    assert headers["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in headers
    assert headers["Cache-Control"] == "no-store"
    assert ask(origin="https://site.example")[2] == {
        "origin": "https://site.example", "allowed": True, "option": "--allowed-origins"}
    # A same-origin GET carries no Origin: the page says its own.
    assert ask(f"?origin={server.base_url}")[2] == {"origin": server.base_url, "allowed": True,
                                                    "option": "--allowed-origins"}
    # The browser's Origin wins over what the query claims.
    claimed = ask(f"?origin={server.base_url}", origin="https://evil.example")[2]
    assert isinstance(claimed, dict) and claimed["allowed"] is False
    assert ask()[0] == 400


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>a site of another origin</title>
<link rel="icon" href="data:,">
<script type="importmap">{"imports": {"rrr": "%(rrr)s/static/js/rrr.js"}}</script>
<script type="module">
  import { connect } from "rrr";
  window.seen = { errors: [], counts: [] };
  const rt = connect({ url: "%(socket)s" });
  rt.room("hello", {
    onError: (error) => window.seen.errors.push(error),
    onCount: (count) => window.seen.counts.push(count),
    onState: (state) => { window.seen.sharing = state.sharing; },
  });
</script>
"""


class PageServer:
    """A page of another origin (its own port), as a Django site's would be, loading rrr's library."""

    def __init__(self, directory: Path) -> None:
        import functools
        import http.server
        import threading

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.browser
@pytest.mark.parametrize("library", ["from rrr", "from the site"])
def test_a_refused_origin_is_an_error_naming_allowed_origins_in_the_pages_console(
    library: str, app_factory: Callable[..., AppProcess], redis_url: str, tmp_path: Path,
) -> None:
    """Chromium gives the page's script only 1006 for the refused handshake; the library asks
    ``/ws/origin`` and writes an error naming ``--allowed-origins`` and the Origin to add. A page
    of an allowed Origin, on the same server, gets its count and no such error.

    The library loaded from rrr (another origin) shares a socket through a leader tab; loaded from
    the site's own files, through a SharedWorker of the site's origin, which asks and tells the tabs."""
    from support.django_site import chromium

    refused, allowed = PageServer(tmp_path), PageServer(tmp_path)
    try:
        server = app_factory(redis_url=redis_url, allowed_origins=allowed.origin)
        if library == "from the site":
            (tmp_path / "static" / "js").mkdir(parents=True)
            for js in (ROOT / "static" / "js").glob("*.js"):
                (tmp_path / "static" / "js" / js.name).write_text(js.read_text())
        (tmp_path / "index.html").write_text(PAGE % {"rrr": server.base_url if library == "from rrr" else "",
                                                     "socket": f"ws://127.0.0.1:{server.port}/ws/"})
        for browser in chromium():
            console: list[str] = []
            page = browser.new_page()
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.goto(refused.origin + "/index.html")
            page.wait_for_function("() => window.seen && window.seen.errors.length > 0", timeout=30_000)
            said = [line for line in console if line.startswith("rrr: ")]
            assert len(said) == 1, console
            assert f"--allowed-origins {refused.origin}" in said[0] and server.base_url.split("//")[1] in said[0]
            errors = page.evaluate("() => window.seen.errors")
            assert errors[0]["code"] == "origin_refused"
            sharing = page.evaluate("() => window.seen.sharing")
            assert sharing == ("sharedworker" if library == "from the site" else "leader"), sharing

            other = browser.new_page()
            other_console: list[str] = []
            other.on("console", lambda m: other_console.append(m.text) if m.type == "error" else None)
            other.goto(allowed.origin + "/index.html")
            other.wait_for_function("() => window.seen && window.seen.counts.length > 0", timeout=30_000)
            assert other.evaluate("() => window.seen.errors") == [] and not other_console
    finally:
        refused.close()
        allowed.close()
