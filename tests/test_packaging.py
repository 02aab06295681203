"""The project installs: ``pip install .`` gives an importable ``rrr``, with its pins in one place."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built as a wheel (once for the module), from a copy without the checkout's build/:
    setuptools packs what an earlier build left there, so a package missing from pyproject's list
    would still be in the wheel."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "node_modules", ".git", ".venv", ".mypy_cache", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(source)],
        check=True, cwd=out, capture_output=True, timeout=300,
    )
    (built,) = out.glob("rrr-*.whl")
    return built


def test_a_wheel_builds_with_the_library_and_the_pins_of_pyproject(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "rrr/service.py" in names and "handlers/api.py" in names and "app.py" in names
    assert "rrr/django/views.py" in names and "rrr/django/templatetags/rrr.py" in names
    assert "rrr/django/static/rrr/django.js" in names
    assert "rrr/pusher/protocol.py" in names and "rrr/pusher/signing.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "deploy/"))]
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    required = [Requirement(line.split(": ", 1)[1]) for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    for pin in map(Requirement, pins):
        assert pin in required, f"{pin} missing from the wheel's Requires-Dist {required}"


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
    assert int(loaded[1]) > 1000 and loaded[2:] == ["5", "13"]


def test_requirements_files_only_point_at_pyproject() -> None:
    for name, want in (("requirements.txt", "-e ."), ("requirements-dev.txt", "-e .[dev]")):
        lines = [ln for ln in (ROOT / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert lines == [want], f"{name} pins packages of its own: {lines}"


def test_setup_cfg_keeps_only_tool_config() -> None:
    text = (ROOT / "setup.cfg").read_text()
    assert "[metadata]" not in text and "[options]" not in text
