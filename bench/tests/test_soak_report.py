"""The page's Soak section (bench/soak_report.py): a run on Sentinel writes its own subsection and leaves the
Cluster run's figures as they were; a Cluster run keeps the Sentinel subsection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import soak_report


def results(redis: str, published: int) -> dict[str, Any]:
    return {
        "meta": {"seed": 1, "minutes": 5, "smoke": False, "clients": 600, "rooms": 60, "publish_rate": 60,
                 "churn_rate": 10, "bound_s": 7.1, "client_bound_s": 26.1, "started": "2026-12-07 16:00:00 UTC",
                 "elapsed_s": 400, "machine": {"cores": 2}, "shares": {"ws": 0.4}, "clients_made": 900,
                 "redis": redis, "redis_described": f"the {redis}", "load_avg_end": [3.5, 3.0, 2.5]},
        "by_kind": {"master_kill9": {"injected": 2, "survived": 2, "p50_s": 10.0, "max_s": 12.0}},
        "messages": {"published": {"api": published}, "publish_refused": {}, "subscriptions": 10, "delivered": 99,
                     "lost": 0, "duplicated": 0, "out_of_order": 0, "resets": {}, "stored_twice": 0,
                     "latency_p50_ms": 1.0, "latency_max_ms": 9.0},
        "counts_wrong_after_bound": 0, "webhooks": {"events": 5, "duplicates": 0}, "rss_growth": 0.01,
        "descriptors": {"leaks": []}, "timeline": {}, "failures": [],
    }


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Before\n\ntext\n")
    monkeypatch.setattr(soak_report, "DOC", doc)
    monkeypatch.setattr(soak_report, "RESULTS", tmp_path / "soak.json")
    monkeypatch.setattr(soak_report, "SENTINEL_RESULTS", tmp_path / "soak-sentinel.json")
    monkeypatch.setattr(soak_report, "PLOT", tmp_path / "bench-soak.png")
    monkeypatch.setattr(soak_report, "plot", lambda res, path=None: None)
    return doc


def save(res: dict[str, Any], path: Path | None = None) -> None:
    (path or soak_report.results_path(res["meta"]["redis"])).write_text(json.dumps(res))


def test_a_sentinel_run_leaves_the_cluster_figures_and_a_cluster_run_keeps_the_sentinel_ones(page: Path) -> None:
    cluster = results("cluster", 24074)
    save(cluster)
    soak_report.write(cluster)
    assert "24,074" in page.read_text() and soak_report.SENTINEL_SECTION not in page.read_text()

    sentinel = results("sentinel", 12345)
    save(sentinel)
    soak_report.write(sentinel)
    text = page.read_text()
    assert text.count(soak_report.SECTION) == 1
    assert "24,074" in text and "12,345" in text
    assert text.index(soak_report.SECTION) < text.index(soak_report.SENTINEL_SECTION)
    assert "--redis sentinel" in text and "load average at the end 3.5" in text
    assert "## Before" in text

    cluster2 = results("cluster", 30000)
    save(cluster2)
    soak_report.write(cluster2)
    text = page.read_text()
    assert "30,000" in text and "24,074" not in text and "12,345" in text
    assert text.count(soak_report.SENTINEL_SECTION) == 1
    # What report.py keeps on the page when it redraws it: the same, from the saved results.
    assert "\n".join(soak_report.load()).rstrip() == text[text.index(soak_report.SECTION):].rstrip()


def test_the_sentinel_subsection_alone_still_sits_under_the_soak_heading(page: Path) -> None:
    sentinel = results("sentinel", 777)
    save(sentinel)
    soak_report.write(sentinel)
    text = page.read_text()
    assert soak_report.SECTION in text and "777" in text
    assert text.index(soak_report.SECTION) < text.index(soak_report.SENTINEL_SECTION)


def test_more_sentinel_runs_follow_the_first_each_once(page: Path, tmp_path: Path) -> None:
    first, other, elsewhere = results("sentinel", 111), results("sentinel", 222), results("sentinel", 333)
    other["meta"]["seed"] = 12
    save(first)
    seed12 = tmp_path / "soak-sentinel-seed12.json"
    save(other, seed12)
    soak_report.write(other, seed12)
    text = page.read_text()
    assert text.count(soak_report.SENTINEL_SECTION) == 1
    assert text.count("| 111 |") == 1 and text.count("| 222 |") == 1
    assert text.index("| 111 |") < text.index("--seed 12 ") < text.index("| 222 |")
    # A run saved outside bench/results (--out) comes last, once.
    out = tmp_path / "out" / "x.json"
    out.parent.mkdir()
    save(elsewhere, out)
    soak_report.write(elsewhere, out)
    text = page.read_text()
    assert [text.count(f"| {n} |") for n in (111, 222, 333)] == [1, 1, 1]
    assert text.index("| 222 |") < text.index("| 333 |")
