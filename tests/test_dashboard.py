"""deploy/grafana-dashboard.json: every metric it queries is one a running rrr exports on /metrics,
and it shows what an operator watches (sockets, rooms, frames, Redis health, caps hit, webhook
backlog, task errors)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from support.processes import AppProcess
from support.webhooks import Receiver

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())

#: A selector's metric name: an identifier right before ``{`` (every query selects its processes).
SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries() -> list[str]:
    exprs = [t["expr"] for p in all_panels(DASHBOARD["panels"]) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in DASHBOARD["templating"]["list"] if v.get("definition")]
    return exprs


def queried_metrics() -> set[str]:
    names: set[str] = set()
    for expr in queries():
        found = set(SELECTOR.findall(expr)) | set(re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", expr))
        # Every rrr_ name in a query is a selector we read (none hides bare, unchecked).
        assert set(re.findall(r"\brrr_[a-z_]+", expr)) <= found, expr
        names |= found
    return names


def exported(text: str) -> set[str]:
    """The metric names of an exposition: every sample's, and every family's declared in ``# TYPE``
    (a labelled counter has no sample until its first label, yet it is exported)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family, kind = line.split()[2:4]
            names.add(family)
            if kind == "counter":
                names |= {family if family.endswith("_total") else family + "_total"}
            if kind in ("histogram", "summary"):
                names |= {family + suffix for suffix in ("_bucket", "_count", "_sum")}
    return names


def test_every_metric_the_dashboard_queries_is_on_a_running_rrrs_metrics(
    app_factory: Callable[..., AppProcess], redis_url: str, receiver: Receiver,
) -> None:
    """rrr with webhooks on (their metrics exist only then), as ``python app.py`` runs it."""
    server = app_factory(redis_url=redis_url, webhook_url=receiver.url, webhook_secret="s")
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as r:
        metrics = exported(r.read().decode())
    queried = queried_metrics()
    assert len(queried) >= 30, sorted(queried)
    missing = sorted(queried - metrics)
    assert not missing, f"the dashboard queries metrics rrr does not export: {missing}"


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    titles = " / ".join(p["title"].lower() for p in all_panels(DASHBOARD["panels"]))
    for area in ("sockets", "rooms", "frames", "redis", "cap", "webhook backlog", "task errors"):
        assert area in titles, f"no panel about {area}: {titles}"
    queried = queried_metrics()
    for metric in ("rrr_open_sockets", "rrr_rooms", "rrr_messages_out_total", "rrr_health_check",
                   "rrr_limited_total", "rrr_webhook_backlog", "rrr_task_errors_total"):
        assert metric in queried, metric


def test_the_dashboard_imports_into_any_grafana() -> None:
    """Its data source is a variable (no uid of someone's Grafana), panel ids are unique, and every
    query selects the processes chosen in ``$instance``."""
    panels = list(all_panels(DASHBOARD["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in DASHBOARD["templating"]["list"]} == {"datasource", "instance"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            for selector in re.findall(r"\{([^}]*)\}", target["expr"].replace("{{", "").replace("}}", "")):
                assert 'instance=~"$instance"' in selector, target["expr"]
