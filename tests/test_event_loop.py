"""Each process runs on uvloop when it is installed (``--loop auto``), and so does this suite (issue 25).

``--loop asyncio`` (or ``RRR_LOOP=asyncio``) opts out, ``--loop uvloop`` insists; a value rrr does
not know stops the start with one line. Each worker of ``--processes`` makes its own loop after the
fork. The suite's in-process servers run on the loop pytest-tornado makes, through the policy
tests/conftest.py sets (``RRR_TEST_LOOP=asyncio`` runs it on asyncio's own).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support.clients import wait_until
from support.processes import ROOT, AppProcess


@pytest.mark.gen_test(timeout=30)
async def test_the_suite_runs_on_uvloop_unless_told_otherwise() -> None:
    expected = "asyncio" if os.environ.get("RRR_TEST_LOOP") == "asyncio" else "uvloop"
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.split(".")[0] == expected, type(loop)


def started_on(app: AppProcess, count: int = 1) -> list[str]:
    """The loop named by each ``rrr serving`` line of ``app``'s log."""
    lines = [line for line in app.log().splitlines() if "rrr serving" in line]
    assert len(lines) == count, app.log()
    return [line.rsplit(" on ", 1)[1].rstrip(")") for line in lines]


@pytest.mark.gen_test(timeout=60)
async def test_app_runs_on_uvloop_by_default_and_so_does_each_worker(
    redis_url: str, app_factory: Callable[..., AppProcess],
) -> None:
    single = app_factory(redis_url=redis_url)
    assert started_on(single) == ["uvloop"]
    workers = app_factory(redis_url=redis_url, processes=2)
    await wait_until(lambda: workers.log().count("rrr serving") == 2, what="both workers serving")
    assert started_on(workers, 2) == ["uvloop", "uvloop"]


@pytest.mark.gen_test(timeout=60)
async def test_loop_asyncio_opts_out_by_option_or_environment(
    redis_url: str, app_factory: Callable[..., AppProcess], monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert started_on(app_factory(redis_url=redis_url, loop="asyncio")) == ["asyncio"]
    monkeypatch.setenv("RRR_LOOP", "asyncio")
    assert started_on(app_factory(redis_url=redis_url)) == ["asyncio"]
    assert started_on(app_factory(redis_url=redis_url, loop="uvloop")) == ["uvloop"]  # the command line wins


def test_a_loop_rrr_does_not_know_stops_the_start_with_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--port=0", "--loop=trio"], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == "rrr: --loop must be auto, uvloop or asyncio, not 'trio'"
    assert "Traceback" not in out.stderr
