"""The checkout built as a wheel, as a user's ``pip install`` gets it (tests/test_packaging.py,
tests/test_django_versions.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support.processes import ROOT


def build_wheel(out: Path) -> Path:
    """The wheel, built into ``out`` from a copy without the checkout's build/: setuptools packs what
    an earlier build left there, so a package missing from pyproject's list would still be in it."""
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
