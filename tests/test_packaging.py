"""The project installs: ``pip install .`` gives an importable ``rrr``, with its pins in one place."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_builds_with_the_library_and_the_pins_of_pyproject(tmp_path: Path) -> None:
    # Built from a copy without the checkout's build/: setuptools packs what an earlier build left
    # there, so a package missing from pyproject's list would still be in the wheel.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "node_modules", ".git", ".venv", ".mypy_cache", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(source)],
        check=True, cwd=tmp_path, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("rrr-*.whl")
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


def test_requirements_files_only_point_at_pyproject() -> None:
    for name, want in (("requirements.txt", "-e ."), ("requirements-dev.txt", "-e .[dev]")):
        lines = [ln for ln in (ROOT / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert lines == [want], f"{name} pins packages of its own: {lines}"


def test_setup_cfg_keeps_only_tool_config() -> None:
    text = (ROOT / "setup.cfg").read_text()
    assert "[metadata]" not in text and "[options]" not in text
