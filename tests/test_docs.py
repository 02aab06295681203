"""The documentation (README.md and the site in docs/, #26) says what the code does: every option
and error code is in its reference and nothing there is made up, the README stays a short way in
whose links lead somewhere, its quick start works as written in a browser, and the site builds with
``mkdocs build --strict``, which a broken link fails."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tornado.options import options

import app  # noqa: F401 - defines the options the reference must list
from support.clients import Client, connect, wait_until
from support.docs import ROOT, blocks, lines_with, section
from support.processes import REQUIRE_ALL, AppProcess, Command, free_port, need_binary

README = ROOT / "README.md"
OPTIONS_PAGE = ROOT / "docs" / "reference" / "options.md"
WIRE_PAGE = ROOT / "docs" / "reference" / "wire.md"


def site_pages() -> list[Path]:
    """The Markdown the site and the README are made of (deploy/README.md is a page of the site too)."""
    return [README, ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def defined_options() -> set[str]:
    """app.py's options, as they are typed (``--api-token``); tornado's own logging options aside."""
    here = (ROOT / "app.py").resolve()
    return {name.replace("_", "-") for name, opt in options._options.items()
            if opt.file_name and Path(opt.file_name).resolve() == here}


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of the Markdown tables in ``text`` (header and rule rows too)."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in text.splitlines()
            if line.startswith("| ")]


# -- the options reference ---------------------------------------------------------------


def test_the_options_reference_lists_every_option_and_only_real_ones() -> None:
    documented = {name for row in table_rows(OPTIONS_PAGE.read_text())
                  for name in re.findall(r"`--([a-z0-9-]+)`", row[0])}
    defined = defined_options()
    assert len(defined) > 50, "app.py's options were read"
    assert defined - documented == set(), "options app.py defines that the reference leaves out"
    assert documented - defined == set(), "options the reference lists that app.py does not define"


def test_every_option_the_options_reference_mentions_exists() -> None:
    """Descriptions name other options (``see --count-rate``): each is one app.py defines."""
    mentioned = set(re.findall(r"`--([a-z0-9-]+)", OPTIONS_PAGE.read_text()))
    assert "name" in mentioned, "the page's own placeholder (`--name value`) was read"
    assert mentioned - {"name"} - defined_options() == set()


def commands(text: str) -> list[str]:
    """The rrr command lines in ``text``: ``python app.py ...``, ``make run ARGS="..."``, ``rrr --...``."""
    found = []
    for block in blocks(text, "sh") + blocks(text, "bash"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if re.search(r"\bpython3? app\.py\b|^make run ARGS=|^rrr --", line):
                found.append(line)
    return found


def test_every_rrr_command_on_the_site_uses_options_that_exist() -> None:
    """A command a reader copies from any page (``python app.py --token-jwks-url ...``) starts."""
    defined = defined_options()
    seen = 0
    for page in site_pages():
        for line in commands(page.read_text()):
            seen += 1
            tail = line.split("app.py", 1)[-1] if "app.py" in line else line
            unknown = {flag for flag in re.findall(r"(?:^|[\s\"'])--([a-z0-9-]+)", tail)} - defined
            assert not unknown, f"{page.relative_to(ROOT)}: {line!r} names {sorted(unknown)}"
    assert seen >= 10, "the commands were found"


# -- the wire reference ------------------------------------------------------------------


def protocol_error_codes() -> set[str]:
    """Every code rrr answers in an ``error`` frame: the ``ProtocolError``s raised anywhere in the
    service, and the caps' refusals (``too_many_*``, raised by rrr/session.py's cap checks)."""
    source = "\n".join(p.read_text() for d in ("rrr", "handlers") for p in sorted((ROOT / d).rglob("*.py")))
    codes = set(re.findall(r'ProtocolError\(\s*"([a-z_]+)"', source))
    codes |= set(re.findall(r'"(too_many_[a-z_]+)"', (ROOT / "rrr" / "session.py").read_text()))
    return codes


def test_the_wire_reference_explains_every_error_code_and_only_real_ones() -> None:
    codes = protocol_error_codes()
    assert {"bad_json", "forbidden", "too_many_tabs", "bad_since"} <= codes, "the source was read"
    errors = section("Errors", "docs/reference/wire.md")
    tabled = {code for row in table_rows(errors) for code in re.findall(r"`([a-z_]+)`", row[0])}
    assert codes - tabled == set(), "error codes rrr sends that the wire reference's table leaves out"
    assert tabled - codes == set(), "codes in the table that rrr never sends"
    listed = set(re.findall(r"`([a-z_]+)`", errors.split("| code |")[0]))
    assert codes <= listed, "the sentence listing the codes misses some"


def test_the_wire_reference_shows_every_client_frame_type_and_each_is_one_rrr_takes() -> None:
    """Each sample frame a client may send is parsed by rrr's own validator, as a socket's would be."""
    from rrr.protocol import CLIENT_TYPES, parse_client_message

    frames = [line for block in blocks(section("Client → server", "docs/reference/wire.md"), "json")
              for line in block.splitlines() if line.strip()]
    assert set(CLIENT_TYPES) <= {json.loads(f)["type"] for f in frames}
    for frame in frames:
        parse_client_message(frame)  # raises ProtocolError (with its code) for a frame rrr refuses


def server_frame_types() -> set[str]:
    """The ``type`` of every frame rrr's server side builds (rrr/protocol.py and the parts that
    write frames of their own: ``{"type":"pong"}``, SSE's ``session``, a session's ``close``)."""
    source = "\n".join(p.read_text() for p in sorted((ROOT / "rrr").rglob("*.py")) if "pusher" not in p.parts)
    pairs = re.findall(r'"type"\s*:\s*"([a-z_]+)"|\{"type":"([a-z_]+)"', source)
    return {a or b for a, b in pairs}


def test_the_wire_reference_shows_every_frame_the_server_sends() -> None:
    types = server_frame_types()
    assert {"connection_message", "message", "presence_diff", "session", "close"} <= types, "the source was read"
    server = section("Server → client", "docs/reference/wire.md")
    shown = set(re.findall(r'\{"type": "([a-z_]+)"', server))
    assert types - shown == set(), "frames rrr sends that the wire reference does not show"
    for line in (ln for block in blocks(server, "json") for ln in block.splitlines() if ln.strip()):
        if "<" not in line:  # a sample with a placeholder (<any JSON ...>) is no JSON
            assert json.loads(line)["type"] in types, line


def test_the_tokens_guides_sample_mints_a_token_with_what_it_says() -> None:
    import jwt

    (sample,) = blocks(section("Tokens and identity providers", "docs/guides/tokens.md"), "python")
    *setup, expression = sample.strip().splitlines()
    scope: dict[str, object] = {"SECRET": "s" * 32}
    exec("\n".join(setup), scope)
    minted = eval(expression, scope)
    claims = jwt.decode(minted, "s" * 32, algorithms=["HS256"])
    assert claims["sub"] == "42" and claims["info"] == {"name": "Ada"}
    assert claims["rooms"] == ["private-user-42-*", "presence-team-7"] and claims["exp"] > claims["iat"]


# -- the browser library's page -------------------------------------------------------------


def test_every_call_and_callback_the_browser_librarys_page_names_is_in_the_library() -> None:
    """``rt.retryNow()``, ``room.members()``, ``onPresence``, ``getToken``...: what a page is told
    to call or pass exists in static/js/rrr.js (the page side of the library), by that name."""
    page = (ROOT / "docs" / "reference" / "browser.md").read_text()
    code = "\n".join(blocks(page, "js"))
    names = set(re.findall(r"\b(?:rt|room)\.([a-zA-Z]+)\b", page))
    names |= set(re.findall(r"\b(on[A-Z][a-zA-Z]+|getToken|transports)\s*:", code))
    names |= set(re.findall(r"`(on[A-Z][a-zA-Z]+)[`(]", page))
    assert {"room", "retryNow", "members", "onPresence", "getToken", "onAuth", "sharing"} <= names
    library = (ROOT / "static" / "js" / "rrr.js").read_text()
    missing = {name for name in names if not re.search(rf"\b{name}\b", library)}
    assert missing == set(), f"named on the page, not in static/js/rrr.js: {sorted(missing)}"


# -- the Django guide's names ---------------------------------------------------------------

DJANGO_GUIDE = (ROOT / "docs" / "guides" / "django.md").read_text()

IMPORTS_CHECK = """
import importlib, json, sys
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "rrr.django"],
                   ROOT_URLCONF="rrr.django.urls", RRR_TOKEN_SECRET="s" * 32)
django.setup()
missing = []
for module, name in json.loads(sys.argv[1]):
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        missing.append(f"{module}.{name}: {e}")
print(json.dumps(missing))
"""


def test_the_django_guides_settings_are_the_ones_rrr_django_reads_and_no_others() -> None:
    source = "\n".join(p.read_text() for p in sorted((ROOT / "rrr" / "django").rglob("*.py")))
    read = set(re.findall(r"\bRRR_[A-Z_]+\b", source))
    documented = set(re.findall(r"\bRRR_[A-Z_]+\b", DJANGO_GUIDE))
    assert read - documented == set(), "settings rrr.django reads that the guide leaves out"
    assert documented - read == set(), "settings the guide names that rrr.django never reads"


def test_the_django_guides_code_imports_and_routes_what_rrr_django_has() -> None:
    """Each Python sample parses, and every name it imports (``from rrr.django import
    publish_on_commit``) is there in a configured Django; every URL name (``rrr:token``) and
    template tag it names exists."""
    import ast

    imports: list[tuple[str, str]] = []
    samples = blocks(DJANGO_GUIDE, "python")
    assert len(samples) >= 4
    for sample in samples:
        for node in ast.walk(ast.parse(sample)):
            if isinstance(node, ast.ImportFrom) and node.module:
                imports += [(node.module, alias.name) for alias in node.names]
    assert ("rrr.django", "publish_on_commit") in imports and ("rrr.django.signals", "member_removed") in imports
    done = subprocess.run([sys.executable, "-c", IMPORTS_CHECK, json.dumps(imports)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    routes = set(re.findall(r'name="([a-z-]+)"', (ROOT / "rrr" / "django" / "urls.py").read_text()))
    named = set(re.findall(r"(?:`|# )rrr:([a-z-]+)\b(?!:)", DJANGO_GUIDE))  # `rrr:connect`, # rrr:token
    assert {"token", "connect", "pusher-auth"} <= named and named <= routes
    for tag in set(re.findall(r"\{% (rrr_[a-z_]+)", DJANGO_GUIDE)):
        assert f"def {tag}(" in (ROOT / "rrr" / "django" / "templatetags" / "rrr.py").read_text(), tag


# -- the README ----------------------------------------------------------------------------


def nav_pages() -> set[str]:
    return set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))


def test_the_readme_is_short_and_its_links_lead_to_files_and_pages_that_exist() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    links = re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text)
    targets = [a or b for a, b in links]
    assert len(targets) >= 15
    nav = nav_pages()
    for target in targets:
        if target.startswith(("http://", "https://")):
            continue
        path = target.split("#", 1)[0]
        assert (ROOT / path).exists(), f"README links to {target}, which does not exist"
        if path.startswith("docs/") and path.endswith(".md"):
            assert path.removeprefix("docs/") in nav, f"README links to {path}, which is no page of the site"
    for needed in ("docs/getting-started.md", "docs/reference/options.md", "docs/guides/django.md",
                   "docs/guides/deploy.md", "docs/security.md"):
        assert needed in targets, f"the README leads to {needed}"


def test_the_getting_started_page_is_the_readmes_tested_sections() -> None:
    """The page takes the two commands and the quick start from the README (pymdownx.snippets), so
    what test_newcomer.py and the quick start's test run is what the site shows."""
    page = (ROOT / "docs" / "getting-started.md").read_text()
    readme = README.read_text()
    for name in ("two-commands", "quick-start"):
        assert f'--8<-- "README.md:{name}"' in page
        assert f"--8<-- [start:{name}]" in readme and f"--8<-- [end:{name}]" in readme


# -- the quick start, in a browser ---------------------------------------------------------


QUICK = section("Quick start: a first room in 5 minutes")


@pytest.mark.browser
def test_the_quick_starts_page_shows_the_count_and_the_published_message_in_two_tabs(
    tmp_path: Path, command_factory: Callable[..., Command],
) -> None:
    """As the README says: hello.html served by ``python3 -m http.server``, rrr started with its
    ``make run ARGS=...`` (``python app.py $(ARGS)``), two tabs, then the curl. The page's origin and
    rrr's ports are this test's own; everything else is the README's text."""
    from support.django_site import chromium

    curl = need_binary("curl")
    (html,) = blocks(QUICK, "html")
    (serve,) = lines_with(QUICK, "sh", "http.server")
    (make,) = lines_with(QUICK, "sh", 'make run ARGS="')
    (curl_line,) = lines_with(QUICK, "sh", "curl ")
    page_port, rrr_port = free_port(), free_port()

    def here(text: str) -> str:
        text = text.replace("127.0.0.1:8888", f"127.0.0.1:{rrr_port}")
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{page_port}")

    (tmp_path / "hello.html").write_text(here(html))
    (tmp_path / "favicon.ico").write_bytes(b"")  # what Chromium asks every server for, README or not
    serve_argv = shlex.split(serve)
    assert serve_argv[:3] == ["python3", "-m", "http.server"] and "8000" in serve_argv
    serve_argv = [sys.executable, *serve_argv[1:]]
    serve_argv[serve_argv.index("8000")] = str(page_port)
    page_url = f"http://127.0.0.1:{page_port}/hello.html"
    assert "http://127.0.0.1:8000/hello.html" in QUICK, "the page the README opens is the one it serves"
    command_factory(serve_argv, page_url, cwd=tmp_path)
    args = re.search(r'ARGS="([^"]*)"', make)
    assert args and "$(PY) app.py $(ARGS)" in (ROOT / "Makefile").read_text()
    command_factory([sys.executable, str(ROOT / "app.py"), *shlex.split(here(args[1])), "--port", str(rrr_port)],
                    f"http://127.0.0.1:{rrr_port}/healthz")

    for browser in chromium():
        context = browser.new_context()
        console: list[str] = []
        tabs = [context.new_page(), context.new_page()]
        for tab in tabs:
            tab.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            tab.goto(page_url)
        for tab in tabs:
            tab.wait_for_function("() => document.getElementById('count').textContent === '1'", timeout=30_000)
        argv = shlex.split(here(curl_line))
        done = subprocess.run([curl, "--silent", "--show-error", "--fail", *argv[1:]], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        text = re.search(r'"text": "([^"]+)"', curl_line)
        assert text
        for tab in tabs:
            tab.wait_for_function(
                "(t) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent === t)",
                arg=text[1], timeout=30_000)
            assert tab.locator("#count").text_content() == "1", "two tabs of one browser are one socket"
        assert not console, console
        context.close()


# -- the publishing guide's samples ---------------------------------------------------------


PUBLISHING = (ROOT / "docs" / "guides" / "publishing.md").read_text()


async def subscribed(port: int, room: str, clients: list[Client]) -> Client:
    c = await connect(f"ws://127.0.0.1:{port}/ws/")
    clients.append(c)
    await c.send(type="subscribe", room=room, sub="tab")
    await c.reply("subscribed")
    return c


async def closed(clients: list[Client]) -> None:
    """Close the test's sockets while its loop still runs (their readers end with it)."""
    for c in clients:
        c.close()
    for c in clients:
        await wait_until(c.closed.is_set, what="the socket closed")


async def run(argv: list[str], env: dict[str, str]) -> str:
    """A command run while this test's sockets keep reading (the loop is not blocked)."""
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env={**os.environ, **env},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (argv, out, err)
    return out.decode()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("script", ["examples/publish/publish.py", "examples/publish/publish.mjs"])
async def test_the_publishing_guides_scripts_reach_a_subscriber_with_their_event_name(
    script: str, redis_url: str, app_factory: Callable[..., AppProcess], clients: list[Client],
) -> None:
    assert f'--8<-- "{script}"' in PUBLISHING, "the guide shows the file itself"
    server = app_factory(redis_url=redis_url, api_token="dev")
    c = await subscribed(server.port, "orders", clients)
    interpreter = sys.executable if script.endswith(".py") else need_binary("node")
    before = len(c.frames)  # the sockets read while the script runs
    out = await run([interpreter, script, "orders", '{"id": 7}', "order.shipped"],
                    {"RRR_REDIS_URL": redis_url, "RRR_URL": server.base_url, "RRR_API_TOKEN": "dev"})
    assert "published to orders: offset 1" in out
    got = await c.next("message", timeout=10, after=before)
    assert got["data"] == {"id": 7} and got["event"] == "order.shipped" and got["offset"] == 1
    await closed(clients)


def test_the_node_script_without_a_server_key_says_which_variable_to_set(
    redis_url: str, app_factory: Callable[..., AppProcess],
) -> None:
    """A newcomer who forgot RRR_API_TOKEN used to read "refused with 403: wrong API token" (the
    script had sent "Bearer undefined"), as if the key they had were wrong."""
    server = app_factory(redis_url=redis_url, api_token="dev")
    env = {k: v for k, v in os.environ.items() if k != "RRR_API_TOKEN"}
    done = subprocess.run([need_binary("node"), "examples/publish/publish.mjs", "orders", '{"id": 7}'], cwd=ROOT,
                          env={**env, "RRR_URL": server.base_url}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "set RRR_API_TOKEN to rrr's --api-token" in done.stderr, done.stderr
    assert "wrong API token" not in done.stderr


@pytest.mark.gen_test(timeout=120)
async def test_the_publishing_guides_curl_lines_reach_their_rooms(
    redis_url: str, app_factory: Callable[..., AppProcess], clients: list[Client],
) -> None:
    curl = need_binary("curl")
    lines = lines_with(section("curl", "docs/guides/publishing.md"), "sh", "curl ")
    assert len(lines) == 2
    server = app_factory(redis_url=redis_url, api_token="dev")
    for line in lines:
        line = line.split("    #", 1)[0].replace("127.0.0.1:8888", f"127.0.0.1:{server.port}")
        argv = shlex.split(line.replace("$TOKEN", "dev"))  # the key the server was started with
        url = argv[-1]
        room = re.search(r"/api/rooms/([^/]+)/messages", url)
        assert room
        c = await subscribed(server.port, room[1], clients)
        before = len(c.frames)
        await run([curl, "--silent", "--show-error", "--fail", *argv[1:]], {})
        got = await c.next("message", timeout=10, after=before)
        assert got["data"] == json.loads(argv[argv.index("-d") + 1])
        assert got.get("event") == ("order.shipped" if "?event=" in url else None)
    await closed(clients)


# -- the site builds, strictly -------------------------------------------------------------


def mkdocs() -> list[str]:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        message = "mkdocs and mkdocs-material (pip install '.[docs]') are not installed"
        if REQUIRE_ALL:
            pytest.fail(message + " (RRR_REQUIRE_ALL=1)")
        pytest.skip(message)
    return [sys.executable, "-m", "mkdocs"]


def build(cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mkdocs(), "build", "--strict", "--site-dir", str(site)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "reference" / "options" / "index.html").exists()
    guide = (tmp_path / "site" / "guides" / "deploy" / "index.html").read_text()
    assert "Redis Sentinel" in guide, "deploy/README.md is included"
    start = (tmp_path / "site" / "getting-started" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", start)
    assert 'make run ARGS="--api-token dev --client-publish"' in text.replace("&quot;", '"'), "the two commands"
    assert "Quick start: a first room in 5 minutes" in text, "the README's sections are included"


@pytest.mark.parametrize("breakage", ["a link to a missing page", "a missing anchor", "a page left out of the nav",
                                      "a missing snippet"])
def test_a_broken_link_or_a_missing_page_fails_the_build(tmp_path: Path, breakage: str) -> None:
    """The same configuration on a copy of the sources, broken once."""
    mkdocs()
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs", copy / "docs")
    included = {m for page in (ROOT / "docs").rglob("*.md") for m in re.findall(r'--8<-- "([^":]+)', page.read_text())}
    assert {"README.md", "deploy/README.md"} <= included
    for name in {"mkdocs.yml", *included}:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    page = copy / "docs" / "concepts" / "rooms.md"
    if breakage == "a link to a missing page":
        page.write_text(page.read_text() + "\nSee [nowhere](nowhere.md).\n")
    elif breakage == "a missing anchor":
        page.write_text(page.read_text() + "\nSee [counts](counts.md#no-such-heading).\n")
    elif breakage == "a page left out of the nav":
        (copy / "docs" / "orphan.md").write_text("# Orphan\n")
    else:
        page.write_text(page.read_text() + '\n--8<-- "no/such/file.md"\n')
    assert build(copy, tmp_path / "broken-site").returncode != 0
    # the unbroken copy builds, so it was the breakage that failed it
    shutil.rmtree(copy / "docs")
    shutil.copytree(ROOT / "docs", copy / "docs")
    done = build(copy, tmp_path / "site")
    assert done.returncode == 0, done.stderr
