"""The browser library as an npm package (#26): ``static/js`` packs as ``rrr-client``, an app installs
the tarball, bundles it with esbuild and with Vite, and the SharedWorker survives the bundling: three
tabs of a page served from another origin than rrr share one socket and hear counts and messages.
Its hand-written declarations type-check a consumer that calls every public part.

Offline: the tarball is installed with ``npm --offline``; esbuild, Vite and TypeScript are the
checkout's test devDependencies (package.json), run from its node_modules.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

from support.browsers import LAUNCH_ARGS, ErrorLog, chromium_path, eventually, metric, publish, room
from support.processes import REQUIRE_ALL, AppProcess, free_port, need_binary

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "static" / "js"
SAMPLE = ROOT / "tests" / "npm"
NODE_MODULES = ROOT / "node_modules"
GUIDE = ROOT / "docs" / "guides" / "bundlers.md"
TOKEN = "npm-package-token"
BUNDLERS = ("esbuild", "vite")


def unavailable(what: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{what} is required (RRR_REQUIRE_ALL=1) but not installed")
    pytest.skip(f"{what} not installed")


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def guide_blocks(language: str) -> list[str]:
    """The fenced code blocks of docs/guides/bundlers.md in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)


def dev_tool(package: str, script: str) -> list[str]:
    """A test devDependency's command line, run by node from the checkout's node_modules."""
    node = need_binary("node")
    path = NODE_MODULES / package / script
    if not path.is_file():
        unavailable(f"npm {package} (npm ci)")
    return [node, str(path)]


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``npm pack`` of static/js: the tarball's path and what npm says it holds."""
    npm = need_binary("npm")
    out = tmp_path_factory.mktemp("pack")
    (info,) = json.loads(run([npm, "pack", "--ignore-scripts", "--json", "--pack-destination", str(out)], LIBRARY))
    return {**info, "tarball": out / info["filename"], "files": sorted(f["path"] for f in info["files"])}


@pytest.fixture(scope="module")
def sample_app(packed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample app (tests/npm) with the tarball installed, as an app outside the checkout would."""
    npm = need_binary("npm")
    app = tmp_path_factory.mktemp("sample-app")
    for source in SAMPLE.iterdir():
        shutil.copy(source, app / source.name)
    (app / "package.json").write_text(json.dumps({"name": "sample-app", "private": True, "type": "module"}))
    run([npm, "install", "--offline", "--ignore-scripts", "--no-audit", "--no-fund", str(packed["tarball"])], app)
    return app


@pytest.fixture(scope="module")
def bundles(sample_app: Path) -> dict[str, Path]:
    """The sample app built by each bundler: a directory of files to serve as the site."""
    esbuild = dev_tool("esbuild", "bin/esbuild")
    vite = dev_tool("vite", "bin/vite.js")
    built = sample_app / "dist"
    # esbuild rewrites no worker URL: the app builds the package's worker as worker.js beside its
    # bundle, with the guide's own commands.
    (commands,) = [block for block in guide_blocks("sh") if "npx esbuild" in block]
    lines = commands.splitlines()
    assert len(lines) == 2 and "rrr-client/worker" in lines[1], lines
    for line in lines:
        run([*esbuild, *line.split()[2:]], sample_app)
    shutil.copy(sample_app / "index.html", built / "index.html")
    run([*vite, "build", "--outDir", "dist-vite", "--logLevel", "warn"], sample_app)
    return {"esbuild": built, "vite": sample_app / "dist-vite"}


class Site:
    """A static file server for a bundle on its own port (another origin than rrr's), noting each path asked for."""

    def __init__(self, directory: Path) -> None:
        self.paths: list[str] = []
        site = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                site.paths.append(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(Handler, directory=str(directory)))
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if sync_playwright is None:
        unavailable("Python Playwright")
    if not path:
        unavailable("/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        yield browser
        browser.close()


# -- the package ----------------------------------------------------------------


def test_the_package_holds_the_library_and_its_worker_and_nothing_it_does_not_need(packed: dict[str, Any]) -> None:
    manifest = json.loads((LIBRARY / "package.json").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (packed["name"], packed["version"]) == (manifest["name"], version), "the package's version is pyproject's"
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./rrr.d.ts", "default": "./rrr.js"}
    assert manifest["exports"]["./worker"]["default"] == "./worker.js"
    assert "dependencies" not in manifest and "peerDependencies" not in manifest, "no runtime dependencies"
    # Every module rrr.js and worker.js import, found by following their imports, and nothing else:
    # not the count page's own script, not the Django helper (rrr/django/static).
    wanted, todo = set(), ["rrr.js", "worker.js"]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += re.findall(r'^import[^;]*?from "\./([\w-]+\.js)";', (LIBRARY / name).read_text(), re.M | re.S)
    assert packed["files"] == sorted(wanted | {"package.json", "rrr.d.ts", "worker.d.ts"})
    assert "count-page.js" not in packed["files"] and "django.js" not in packed["files"]


def test_the_guide_shows_the_files_the_tests_run(packed: dict[str, Any]) -> None:
    """docs/guides/bundlers.md: its import is the sample app's, its type imports the consumer's, its
    worker form rrr.js's, its tarball the one npm packs (its esbuild commands the bundles fixture runs)."""
    (install,) = [block for block in guide_blocks("sh") if "npm pack" in block]
    assert packed["filename"] in install
    imports, worker = guide_blocks("js")
    assert imports in (SAMPLE / "main.js").read_text()
    assert f"return {worker.strip()};" in (LIBRARY / "rrr.js").read_text()
    (types,) = guide_blocks("ts")
    assert types in (SAMPLE / "consumer.ts").read_text()


def test_the_declarations_type_check_a_consumer_of_every_public_call(sample_app: Path) -> None:
    """tests/npm/consumer.ts against the installed package's rrr.d.ts; its ``@ts-expect-error``
    misuses fail the check should a declaration become ``any``."""
    tsc = dev_tool("typescript", "bin/tsc")
    run([*tsc, "-p", "tsconfig.json", "--noEmit"], sample_app)


# -- bundled, in Chromium -------------------------------------------------------------


def three_tabs(site: Site, server: AppProcess, browser: Browser, sharing: str) -> tuple[str, ErrorLog]:
    """Three tabs of the site's page in one profile, connected to ``server`` as ``sharing`` says;
    then one socket on the server, and every tab hears the room's count and two API messages."""
    slug = "npm-" + secrets.token_hex(4)
    socket_url = server.base_url.replace("http://", "ws://") + "/ws/"
    errors = ErrorLog(browser)
    context = errors.watch(browser.new_context())
    pages: list[Page] = []
    for _ in range(3):
        page = context.new_page()
        page.goto(f"{site.origin}/index.html?room={slug}&rrr={socket_url}")
        pages.append(page)
    for page in pages:
        expect(page.locator("#count")).to_have_text("1 browsers, 3 tabs", timeout=20_000)
        expect(page.locator("#state")).to_have_text(f"open via {sharing} over websocket", timeout=20_000)
    eventually(lambda: metric(server.base_url, "rrr_open_sockets"), 1.0, what="rrr_open_sockets")
    eventually(lambda: {k: room(server.base_url, slug)[k] for k in ("connections", "tabs")},
               {"connections": 1, "tabs": 3}, what=f"/api/rooms/{slug}")
    for n in (1, 2):
        assert publish(server.base_url, slug, TOKEN, {"n": n}) == 202
    for page in pages:
        expect(page.locator("#messages")).to_have_text('[{"n":1},{"n":2}]', timeout=20_000)
        assert page.evaluate("window.sample.seen.errors") == []
    context.close()
    return slug, errors


@pytest.mark.browser
@pytest.mark.parametrize("bundler", BUNDLERS)
def test_three_tabs_of_a_bundled_app_on_another_origin_share_one_socket_through_the_bundled_worker(
    bundler: str, bundles: dict[str, Path], browser: Browser, app_factory: Any, redis_url: str,
) -> None:
    site = Site(bundles[bundler])
    try:
        server = app_factory(redis_url=redis_url, publish_token=TOKEN, allowed_origins=site.origin)
        _, errors = three_tabs(site, server, browser, "sharedworker")
        # The worker the tabs share is the bundler's build of it (Vite rewrote the URL to it; with
        # esbuild the app built it beside its bundle), and no module of the package was fetched as
        # a file of its own: everything came in the bundles.
        workers = [p for p in site.paths if "worker" in p]
        assert workers, f"no worker script was asked for: {site.paths}"
        expected = r"/assets/worker-[\w-]+\.js" if bundler == "vite" else r"/worker\.js"
        assert all(re.fullmatch(expected, p) for p in workers), workers
        singles = ("/rrr.js", "/protocol.js", "/socket-owner.js", "/wires.js")
        assert not [p for p in site.paths if p.endswith(singles)], site.paths
        assert errors.errors == []
    finally:
        site.close()


@pytest.mark.browser
def test_a_bundled_worker_of_another_link_version_refuses_and_the_tabs_elect_a_leader(
    bundles: dict[str, Path], browser: Browser, app_factory: Any, redis_url: str, tmp_path: Path,
) -> None:
    """A cache mixing two deploys: the page's bundle of this link version, a worker.js of another.
    A bundler's worker URL carries no ``link=``, so the worker reads the version from its name and
    answers ``unsupported``; the tabs fall back to a leader tab, still one socket."""
    version = re.search(r"LINK_VERSION = (\d+);", (LIBRARY / "protocol.js").read_text())
    assert version
    stale = tmp_path / "stale"
    shutil.copytree(bundles["esbuild"], stale)
    worker = stale / "worker.js"
    built = worker.read_text()
    assert built.count(f"LINK_VERSION = {version[1]};") == 1
    worker.write_text(built.replace(f"LINK_VERSION = {version[1]};", f"LINK_VERSION = {int(version[1]) + 1};"))
    site = Site(stale)
    try:
        server = app_factory(redis_url=redis_url, publish_token=TOKEN, allowed_origins=site.origin)
        three_tabs(site, server, browser, "leader")
        assert "/worker.js" in site.paths, "the tabs tried the SharedWorker first"
    finally:
        site.close()
