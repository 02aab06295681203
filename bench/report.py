"""Turn a results JSON into ``docs/benchmarks.md`` and its plots.

``python -m bench.report [bench/results/quick.json]``. Figures are medians over
the repeats of a cell. A cell where any repeat failed a correctness check is
shown as FAIL (with the median of what was still measured in parentheses, for
context), and no ratio is computed from it: a wrong answer is not a slow one.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import history_report, hundred_k_report, soak_report
from .machine import ROOT

DOCS = ROOT / "docs"
#: The "Handshake cost" section, kept by hand from `bench/handshake_cost.py` runs.
HANDSHAKE = ROOT / "bench" / "results" / "handshake.md"
#: Issue #25's before/after figures (keepalive, joins at the floor), kept by hand from
#: `bench/keepalive_cost.py` and `bench/handshake_cost.py` runs.
PERFORMANCE = ROOT / "bench" / "results" / "performance.md"
#: Measured apart, by `python -m bench.identity_cost`.
IDENTITY = ROOT / "bench" / "results" / "identity.md"
#: Measured apart, by `python -m bench.transport_cost --write`.
TRANSPORTS = ROOT / "bench" / "results" / "transports.md"
#: Measured apart, by `python -m bench.webhook_cost --write`.
WEBHOOKS = ROOT / "bench" / "results" / "webhooks.md"
#: Measured apart, by `python -m bench.pusher_cost --write`.
PUSHER = ROOT / "bench" / "results" / "pusher.md"
#: Measured apart, by `python -m bench.doors --write` (the doors side by side at scale, issue 25).
DOORS = ROOT / "bench" / "results" / "doors.md"
OURS = "rrr"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "lower", "higher" or "" (context only)
    fmt: str = "{:.3g}"


METRICS: dict[str, list[Metric]] = {
    "idle": [
        Metric("ready_s", "time to open all and show true counts (s)", "lower"),
        Metric("opens_per_s", "opens per second", "higher", "{:.0f}"),
        Metric("rss_mib", "server RSS (MiB)", "lower", "{:.0f}"),
        Metric("rss_per_conn_kib", "server RSS per connection (KiB)", "lower", "{:.1f}"),
        Metric("redis_rss_per_conn_kib", "Redis RSS per connection (KiB)", "lower", "{:.2f}"),
        Metric("idle_cpu_pct", "server CPU while idle (% of a core)", "lower", "{:.1f}"),
    ],
    "join_storm": [
        Metric("all_show_n_s", "time until every client shows N (s)", "lower"),
        Metric("connect_s", "time until every handshake completed (s)", "lower"),
        Metric("count_frames", "count frames sent", "lower", "{:.0f}"),
        Metric("frames_per_client", "count frames per client", "lower", "{:.1f}"),
        Metric("server_cpu_s", "server CPU (s)", "lower", "{:.2f}"),
        Metric("redis_cpu_s", "Redis CPU (s)", "lower", "{:.2f}"),
    ],
    "fanout": [
        Metric("p50_ms", "delivery latency p50 (ms)", "lower"),
        Metric("p99_ms", "delivery latency p99 (ms)", "lower"),
        Metric("max_ms", "delivery latency max (ms)", "lower"),
        Metric("last_recipient_p50_ms", "time to last recipient, median message (ms)", "lower"),
        Metric("last_recipient_max_ms", "time to last recipient, worst message (ms)", "lower"),
        Metric("burst_frames_per_s", "burst: delivered frames/s", "higher", "{:.0f}"),
        Metric("server_cpu_us_per_frame", "burst: server CPU per delivered frame (us)", "lower", "{:.1f}"),
        Metric("redis_cpu_us_per_frame", "burst: Redis CPU per delivered frame (us)", "lower", "{:.2f}"),
        Metric("paced_interval_ms", "paced phase: publish interval (ms)", "", "{:.0f}"),
        Metric("burst_msgs", "burst phase: messages", "", "{:.0f}"),
    ],
    "churn": [
        Metric("ops_per_s", "opens + closes per second (closed loop)", "higher", "{:.0f}"),
        Metric("join_p50_ms", "open until first count, p50 (ms)", "lower", "{:.1f}"),
        Metric("join_p99_ms", "open until first count, p99 (ms)", "lower", "{:.1f}"),
        Metric("live_at_end", "sockets live at the end", "", "{:.0f}"),
        Metric("converge_s", "time for every count to be exact after the churn (s)", "lower", "{:.2f}"),
        Metric("server_cpu_ms_per_op", "server CPU per open or close (ms)", "lower", "{:.2f}"),
        Metric("redis_cpu_ms_per_op", "Redis CPU per open or close (ms)", "lower", "{:.3f}"),
    ],
}
METRICS["join_storm_2p"] = METRICS["join_storm"]
METRICS["fanout_2p"] = METRICS["fanout"]

DESCRIPTIONS = {
    "idle": "N sockets on the count endpoint in rooms of 10, opened 100 handshakes at a time, held idle for "
            "{idle_hold_s:g} s. "
            "RSS per connection = (server VmRSS with N open - VmRSS before) / N.",
    "join_storm": "N clients open the count socket of one room at once (100 handshakes in flight). "
                  "Clock from the first connect until the last client's shown count became N for good "
                  "(checked again after a quiet window). Frames = count frames received by all clients.",
    "fanout": "M subscribers in one room; a backend publishes stamped messages its stack's documented way "
              "(rrr: Redis PUBLISH to rrr:room:<slug>; Channels: channel_layer.group_send; Socket.IO: a "
              "write-only AsyncRedisManager). Paced phase: {fan_paced_msgs} messages, one every M/{fan_paced_rate:g} "
              "s (at least 20 ms), i.e. about {fan_paced_rate:g} frames/s offered -> latency (a server slower "
              "than that queues, and its latency shows it). Burst phase: {fan_burst_frames}/M messages "
              "(5 to 50) back to back -> delivered frames/s and CPU per frame. Latency = receipt time - the "
              "publisher's time_ns() inside the message; every member must get every message once, in order.",
    "churn": "Sockets opened and closed over 50 rooms by 64 concurrent loops for the given seconds (each open "
             "waits for its first count, each close for the server to drop TCP), so ops/s is bounded by how fast "
             "a join is acknowledged as much as by CPU; CPU per op is the efficiency figure. Then every live "
             "socket must show its room's exact count, the server's stored count must match, and after "
             "closing all, 0.",
    "join_storm_2p": "As the join storm, with two server processes on one Redis; clients alternate between them.",
    "fanout_2p": "As the fan-out, with two server processes on one Redis; subscribers alternate between them.",
}


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def aggregate(cells: list[dict[str, Any]]) -> dict[tuple[str, float, str], dict[str, Any]]:
    """(scenario, size, server) -> runs, failures, skipped, median of every metric."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["scenario"], c["size"], c["server"])].append(c)
    out = {}
    for key, runs in groups.items():
        done = [r for r in runs if "skipped" not in r]
        metrics: dict[str, list[float]] = defaultdict(list)
        for r in done:
            for k, v in r.get("metrics", {}).items():
                metrics[k].append(v)
        out[key] = {
            "runs": len(done),
            "failed": sum(not r["ok"] for r in done),
            "timed_out": sum(bool(r.get("timed_out")) and not r["ok"] for r in done),
            "skipped": [r["skipped"] for r in runs if "skipped" in r],
            "failures": [f for r in done for f in r["failures"]],
            "median": {k: median(v) for k, v in metrics.items()},
        }
    return out


def fmt_cell(agg: dict[str, Any] | None, m: Metric) -> str:
    if agg is None:
        return "n/a"
    if agg["runs"] == 0:
        return "skipped" if agg["skipped"] else "n/a"
    value = agg["median"].get(m.key)
    shown = "—" if value is None else m.fmt.format(value)
    if agg["failed"] and agg["failed"] == agg["timed_out"]:
        return f"**timeout** {agg['failed']}/{agg['runs']} ({shown})"
    if agg["failed"]:
        return f"**FAIL** {agg['failed']}/{agg['runs']} ({shown})"
    return shown


def ratio(ours: dict[str, Any] | None, peer: dict[str, Any] | None, m: Metric) -> str:
    """ours/peer of the medians; in parentheses when either side failed a check (context, not a result)."""
    if not ours or not peer or ours["runs"] == 0 or peer["runs"] == 0:
        return "—"
    a, b = ours["median"].get(m.key), peer["median"].get(m.key)
    if not a or not b:  # a zero is usually below the measurement's resolution (CPU ticks), not a real 0
        return "—"
    text = f"{a / b:.3g}"
    return f"({text})" if ours["failed"] or peer["failed"] else text


def scenario_table(name: str, sizes: list[float], servers: list[str], agg: dict[Any, Any], size_label: str) -> str:
    peers = [s for s in servers if s != OURS]
    head = ["figure", size_label, *servers, *(f"{OURS}/{p}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in METRICS[name]:
        arrow = {"lower": " ↓", "higher": " ↑", "": ""}[m.better]
        for size in sizes:
            row = [m.label + arrow, f"{size:g}"]
            row += [fmt_cell(agg.get((name, size, s)), m) for s in servers]
            row += [ratio(agg.get((name, size, OURS)), agg.get((name, size, p)), m) if m.better else ""
                    for p in peers]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plots(agg: dict[Any, Any], servers: list[str]) -> list[str]:
    """The three plots the issue asks for; a failed cell is drawn hollow, so it is not read as a result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    colors = {"rrr": "#1b9e77", "channels": "#d95f02", "socketio": "#7570b3"}

    def series(scenario: str, key: str, server: str) -> tuple[list[float], list[float], list[bool]]:
        xs, ys, ok = [], [], []
        for (sc, size, srv), a in sorted(agg.items(), key=lambda kv: kv[0][1]):
            if sc == scenario and srv == server and a["runs"] and a["median"].get(key) is not None:
                xs.append(size)
                ys.append(a["median"][key])
                ok.append(a["failed"] == 0)
        return xs, ys, ok

    def draw(ax: Any, scenario: str, key: str, server: str, style: str = "-", label_suffix: str = "") -> None:
        xs, ys, ok = series(scenario, key, server)
        if not xs:
            return
        c = colors.get(server, "gray")
        ax.plot(xs, ys, style, color=c, label=server + label_suffix)  # short names: the page lists the stacks
        ax.scatter([x for x, g in zip(xs, ok) if g], [y for y, g in zip(ys, ok) if g], color=c, zorder=3)
        bad = [(x, y) for x, y, g in zip(xs, ys, ok) if not g]
        if bad:
            ax.scatter(*zip(*bad), facecolors="none", edgecolors=c, s=90, linewidths=1.5, zorder=3)

    def finish(fig: Any, name: str) -> None:
        """One legend for the figure, under the plots, where it cannot hide a point."""
        path = DOCS / name
        handles, names = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.08 * math.ceil(len(names) / 3) + 0.02, 1, 1))
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(name)

    if any(k[0] == "fanout" for k in agg):
        fig, ax = plt.subplots(figsize=(7, 5))
        for s in servers:
            draw(ax, "fanout", "p50_ms", s, "-", " p50")
            draw(ax, "fanout", "p99_ms", s, "--", " p99")
        ax.set(xscale="log", yscale="log", xlabel="room size (members)", ylabel="delivery latency (ms)",
               title="Fan-out latency vs room size (hollow = failed a check)")
        ax.grid(True, which="both", alpha=0.3)
        finish(fig, "bench-fanout-latency.png")

    if any(k[0] == "idle" for k in agg):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for s in servers:
            draw(a1, "idle", "rss_mib", s)
            draw(a2, "idle", "rss_per_conn_kib", s)
        a1.set(xlabel="open connections", ylabel="server RSS (MiB)", title="Server RSS vs connections")
        a2.set(xlabel="open connections", ylabel="KiB per connection", title="RSS per connection")
        for a in (a1, a2):
            a.grid(True, alpha=0.3)
        finish(fig, "bench-idle-rss.png")

    if any(k[0] == "join_storm" for k in agg):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for s in servers:
            draw(a1, "join_storm", "all_show_n_s", s)
            draw(a2, "join_storm", "count_frames", s)
        a1.set(xscale="log", yscale="log", xlabel="clients joining at once (N)",
               ylabel="seconds until every client shows N", title="Join storm time vs N")
        a2.set(xscale="log", yscale="log", xlabel="clients joining at once (N)", ylabel="count frames sent",
               title="Join storm frames vs N (hollow = wrong final count)")
        for a in (a1, a2):
            a.grid(True, which="both", alpha=0.3)
        finish(fig, "bench-join-storm.png")
    return made


def correctness_table(agg: dict[Any, Any], scenarios: list[str], servers: list[str], titles: dict[str, str]) -> str:
    head = ["scenario", *servers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        row = [titles[sc]]
        for s in servers:
            cells = [a for (name, _, srv), a in agg.items() if name == sc and srv == s]
            runs = sum(a["runs"] for a in cells)
            failed = sum(a["failed"] for a in cells)
            timed_out = sum(a["timed_out"] for a in cells)
            skipped = sum(len(a["skipped"]) for a in cells)
            text = f"{runs - failed}/{runs} passed" if runs else "not run"
            if timed_out:
                text += f", {timed_out} timed out"
            if skipped:
                text += f", {skipped} skipped"
            row.append(text if not failed else f"**{text}**")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def failure_list(agg: dict[Any, Any], servers: list[str], titles: dict[str, str]) -> str:
    lines = []
    for (sc, size, srv), a in sorted(agg.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if not a["failures"] and not a["skipped"]:
            continue
        distinct: dict[str, int] = defaultdict(int)
        for f in a["failures"]:
            distinct[f[:240]] += 1
        for f, k in distinct.items():
            lines.append(f"- {titles[sc]}, {size:g}, **{srv}** ({k}x): {f}")
        for why in sorted(set(a["skipped"])):
            lines.append(f"- {titles[sc]}, {size:g}, **{srv}**: skipped, {why}")
    return "\n".join(lines) if lines else "None: every server passed every check in every run."


def headline(agg: dict[Any, Any], servers: list[str]) -> list[str]:
    """A few sentences from the largest size of each scenario; FAIL where a check failed."""
    def at_max(sc: str) -> float | None:
        sizes = [size for (name, size, _) in agg if name == sc]
        return max(sizes) if sizes else None

    def say(sc: str, key: str, fmt: str, unit: str, size_unit: str) -> str | None:
        size = at_max(sc)
        if size is None:
            return None
        parts = []
        for s in servers:
            a = agg.get((sc, size, s))
            if not a or not a["runs"]:
                parts.append(f"{s} skipped")
            elif a["failed"] and a["failed"] == a["timed_out"]:
                parts.append(f"{s} timed out")
            elif a["median"].get(key) is None:
                parts.append(f"{s} FAILED a check" if a["failed"] else f"{s} n/a")
            elif a["failed"]:
                parts.append(f"{s} {fmt.format(a['median'][key])}{unit} but FAILED a check in {a['failed']} of "
                             f"{a['runs']} runs")
            else:
                parts.append(f"{s} {fmt.format(a['median'][key])}{unit}")
        return f"{size:g}{size_unit}: " + ", ".join(parts)

    out = []
    for sc, key, fmt, unit, what, size_unit in (
        ("idle", "rss_per_conn_kib", "{:.1f}", " KiB", "Server memory per idle connection at", " connections"),
        ("join_storm", "all_show_n_s", "{:.2f}", " s", "Join storm, time until every client shows N, N =", ""),
        ("join_storm", "count_frames", "{:.0f}", " frames", "Join storm, count frames sent, N =", ""),
        ("fanout", "p99_ms", "{:.1f}", " ms", "Fan-out p99 delivery latency (paced), room of", " members"),
        ("fanout", "burst_frames_per_s", "{:.0f}", " frames/s", "Fan-out delivered frames/s (burst), room of",
         " members"),
        ("churn", "ops_per_s", "{:.0f}", " ops/s", "Churn, opens+closes per second over", " s"),
    ):
        line = say(sc, key, fmt, unit, size_unit)
        if line:
            out.append(f"- {what} {line}")
    return out


def marginal_rss(agg: dict[Any, Any], servers: list[str]) -> str | None:
    """RSS slope between the two largest idle sizes: the per-connection cost without start-up noise."""
    sizes = sorted({size for (name, size, _) in agg if name == "idle"})
    if len(sizes) < 2:
        return None
    lo, hi = sizes[-2], sizes[-1]
    parts = []
    for s in servers:
        a, b = agg.get(("idle", lo, s)), agg.get(("idle", hi, s))
        ra = a and a["runs"] and a["median"].get("rss_mib")
        rb = b and b["runs"] and b["median"].get("rss_mib")
        if ra is None or rb is None or not a or not b or not a["runs"] or not b["runs"]:
            parts.append(f"{s} n/a")
            continue
        kib = (rb - ra) * 1024 / (hi - lo)
        flag = " (a count check failed in those runs)" if a["failed"] or b["failed"] else ""
        parts.append(f"{s} {kib:.1f} KiB{flag}")
    return f"- Server memory per extra idle connection, {lo:g} to {hi:g} connections: " + ", ".join(parts)


@dataclass(frozen=True)
class Target:
    """One of issue #5's goals for rrr, read off the results at the size the goal names."""

    what: str
    scenario: str
    size: float
    key: str
    limit: float
    better: str  # "lower" or "higher"
    unit: str


TARGETS = (
    Target("idle: memory per connection, presence included", "idle", 19000, "rss_per_conn_kib", 16, "lower", "KiB"),
    Target("fan-out: server CPU per delivered frame", "fanout", 10000, "server_cpu_us_per_frame", 15, "lower", "us"),
    Target("fan-out to 10k members: p99 delivery latency", "fanout", 10000, "p99_ms", 200, "lower", "ms"),
    Target("join storm: every client shows N", "join_storm", 10000, "all_show_n_s", 10, "lower", "s"),
    Target("churn: opens + closes per second, counts exact", "churn", 30, "ops_per_s", 1000, "higher", "ops/s"),
)
#: Delivered frames per CPU second, rrr over each peer, at least this much (same room size, same run).
RATIO_TARGETS = {"channels": 10.0, "socketio": 3.0}


def targets_table(agg: dict[Any, Any], servers: list[str]) -> str:
    """Each goal: what rrr measured at that size (median), and whether it is met; absent sizes say so."""
    lines = ["| goal | size | target | rrr measured | met |", "|---|---|---|---|---|"]
    for t in TARGETS:
        a = agg.get((t.scenario, t.size, OURS))
        bound = f"{'≤' if t.better == 'lower' else '≥'} {t.limit:g} {t.unit}"
        value = a["median"].get(t.key) if a and a["runs"] else None
        if value is None:
            shown, met = "not measured in this profile", "—"
        elif a["failed"]:
            shown, met = f"{value:.4g} {t.unit}, but a check FAILED in {a['failed']} of {a['runs']} runs", "no"
        else:
            ok = value <= t.limit if t.better == "lower" else value >= t.limit
            shown, met = f"{value:.4g} {t.unit}", "yes" if ok else "**no**"
        lines.append(f"| {t.what} | {t.size:g} | {bound} | {shown} | {met} |")
    for peer, want in RATIO_TARGETS.items():
        if peer in servers:
            lines.append(ratio_row(agg, peer, want))
    return "\n".join(lines)


def ratio_row(agg: dict[Any, Any], peer: str, want: float) -> str:
    """rrr's delivered frames per CPU second over ``peer``'s: at the largest room both were measured at and
    passed every check in; failing that, the largest they were measured at, flagged (a server that loses
    frames is cheap per frame)."""
    what = f"delivered frames per CPU second, rrr / {peer}"
    measured = []
    for (name, size, server), a in agg.items():
        if name == "fanout" and server == OURS and a["runs"] and (b := agg.get((name, size, peer))) and b["runs"]:
            us, them = a["median"].get("server_cpu_us_per_frame"), b["median"].get("server_cpu_us_per_frame")
            if us and them:
                measured.append((not (a["failed"] or b["failed"]), size, them / us))
    if not measured:
        return f"| {what} | — | ≥ {want:g}× | not measured | — |"
    passed, size, times = max(measured)
    flag = "" if passed else " (a check failed in those runs)"
    met = "yes" if times >= want and passed else "**no**"
    return f"| {what} | {size:g} | ≥ {want:g}× | {times:.1f}×{flag} | {met} |"


#: What the harness found behind the peers' failures, shown only when such failures are in the results.
KNOWN_CAUSES = (
    ("show the true count",
     "**Stale final counts (both peers).** The talk's design INCRs or DECRs a counter and broadcasts the value "
     "it got back. Concurrent joins get their replies on different Redis connections (and, with two "
     "processes, their broadcasts travel different paths), so broadcasts can arrive out of order: the last "
     "frame a client sees may carry an older value, and nothing ever corrects it (no version, no resend). "
     "rrr versions every count in Redis, drops stale announcements and always sends the newest state last."),
    ("server count wrong",
     "**Leaked counter (Channels).** When a client disconnects while its consumer is sending it a group "
     "message, daphne raises `Disconnected: Attempt to send on a closed protocol` inside the consumer, the "
     "consumer dies without running `disconnect()`, and its DECR never happens: the room's stored count "
     "stays too high for good. rrr keeps presence per process under a lease instead of a bare counter."),
    ("still changing after",
     "**Timeouts (join storm).** With one broadcast per join every client receives about N frames, N^2 in "
     "all; past a few hundred clients the peers are still sending when the scenario gives up."),
)


def known_causes(results: dict[str, Any]) -> list[str]:
    text = " ".join(f for c in results["cells"] if c.get("server") != OURS for f in c.get("failures", []))
    return [f"- {why}" for needle, why in KNOWN_CAUSES if needle in text]


def composed_note(meta: dict[str, Any]) -> list[str]:
    """A results file put together from two runs says so, and why, at the top of the page."""
    c = meta.get("composed")
    if not c:
        return []
    r, p = c["rrr_run"], c["peers_run"]
    return [f"**Two runs.** {c['why']} rrr's cells come from the run of {r['started']} "
            f"({r['elapsed_s'] / 60:.0f} min, load {r['loadavg_start']} → {r['loadavg_end']}); the peers' from "
            f"the run of {p['started']} ({p['elapsed_s'] / 60:.0f} min), on the same machine and sizes.", ""]


def history_section() -> list[str]:
    """The "History and recovery" section, from the last ``python -m bench.history_cost --write``
    (its own results file: that benchmark runs apart from the profiles)."""
    if not history_report.RESULTS.exists():
        return []
    return history_report.section(json.loads(history_report.RESULTS.read_text())) + [""]


def write_report(results_path: Path, out: Path = DOCS / "benchmarks.md") -> Path:
    results = json.loads(results_path.read_text())
    meta = results["meta"]
    servers = list(meta["servers"])
    labels = meta["servers"]
    scenarios = list(meta["scenarios"])
    titles = {k: v["title"] for k, v in meta["scenarios"].items()}
    agg = aggregate(results["cells"])
    DOCS.mkdir(exist_ok=True)
    made = plots(agg, servers)
    p = meta["profile"]
    m = meta["machine"]

    doc = [
        "# Benchmarks: rrr vs the talk's stack vs Socket.IO",
        "",
        f"Generated by `bench/report.py` from `{results_path.relative_to(ROOT)}` (profile **{p['name']}**, "
        f"{p['repeats']} repeats, run {meta['started']}, {meta.get('elapsed_s', 0) / 60:.1f} min). "
        "Do not edit by hand: `make bench-quick` (or `make bench` for the full sizes) reruns everything and "
        "rewrites this page.",
        "",
        *composed_note(meta),
        "Servers, all on one Redis, all started fresh for every cell:",
        "",
        *(f"- **{k}**: {v}" for k, v in labels.items()),
        "",
        "## Key figures",
        "",
        *headline(agg, servers),
        *filter(None, [marginal_rss(agg, servers)]),
        "",
        "## rrr against its targets",
        "",
        "The goals of issue #5 (one server process on this 2-core machine), at the sizes they name:",
        "",
        targets_table(agg, servers),
        "",
        "Ratios below are ours/peer of the medians: under 1 is better for ↓ figures, over 1 for ↑ figures. "
        "A cell shows **FAIL k/n** when k of its n runs failed a correctness check (lost, duplicated or "
        "reordered message, wrong final count on a client or in the server, dropped socket, error frame); "
        "the number in parentheses is what was measured anyway, for context, and a ratio involving it is "
        "in parentheses too: context, not a result.",
        "",
        "## Correctness",
        "",
        correctness_table(agg, scenarios, servers, titles),
        "",
        "## Machine and versions",
        "",
        "| what | value |",
        "|---|---|",
        f"| CPU | {m['cpu']} ({m['cores']} cores, shared by servers, Redis and the load driver) |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| kernel | {m['kernel']} |",
        f"| open files per process | {m['nofile'][0]} (hard {m['nofile'][1]}) |",
        f"| load average (1, 5, 15 min) at start / end | {meta.get('loadavg_start')} / {meta.get('loadavg_end')} "
        "(other work on the machine skews every figure) |",
        f"| harness Python | {m['python']} |",
        *(f"| {k} | {v} |" for k, v in meta["versions"].items()),
        "",
        "## Method",
        "",
        f"- Load driver: {p['workers']} separate processes (`bench/worker.py`), each a single asyncio loop "
        "holding its sockets as bare protocol objects framed by `websockets`' Sans-I/O core (no task per "
        "socket), connecting from its own 127.0.0.x source addresses. No compression is offered, so every "
        "server sends plain frames. All traffic is on loopback.",
        "- Each server is spoken to through one dialect (`bench/dialects.py`); every scenario runs the same "
        "steps for every server and checks the same things.",
        "- Order: scenario, size, repeat, then the servers in an order rotated every repeat. Figures are medians "
        "over the repeats. A server that ran out of time at one size is skipped at the larger sizes of that "
        "scenario.",
        "- Server CPU: utime+stime of the server process(es) from /proc/<pid>/stat; RSS: VmRSS from "
        "/proc/<pid>/status. Redis is measured the same way and shown separately. CPU is counted in 10 ms "
        "ticks per process, so a phase that uses well under a second of CPU (small rooms, the quick "
        "profile's short bursts, Redis) carries tens of percent of rounding; 0.00 means under one tick.",
        "- rrr runs `app.py` with `--count-interval 0.1 --log-level warning` (counts coalesced per room, "
        "at most one broadcast per 0.1 s, always ending on the truth).",
        "- Channels peer (`bench/peers/channels_peer/`): the slides' `CountConsumer` (INCR/DECR a Redis counter, "
        "`group_send` a `connection_message` with `connections` and `updated` on connect and disconnect), with "
        "`redis.asyncio` and one pool instead of the slides' blocking client, daphne `-v 0`, channel-layer "
        f"capacity raised to {1_000_000:,} and a pool of 1000, `socket_timeout: None` (needed with redis-py 8). "
        "For fan-out a `RelayConsumer` only joins the group (no counter).",
        "- Socket.IO peer (`bench/peers/socketio_peer.py`): python-socketio on aiohttp with `AsyncRedisManager` "
        "(pool raised to 1000), the room passed in the connect `auth`, INCR/DECR + `emit` to the room. For "
        "fan-out the client joins with `count: false`.",
        "- Listen backlog: the peers get 1024; so does rrr (`--backlog`, 1024 since issue 13; these runs "
        "predate it and had Tornado's 128). The driver keeps at most 100 "
        "handshakes in flight, under either.",
        "- The driver and the servers share the 2 cores: latency includes the driver's own queueing, equally for "
        "every server. `driver_cpu_s` in the JSON shows how busy it was.",
        "",
    ]
    if made:
        doc += ["## Plots", ""] + [f"![{name}]({name})" for name in made] + [""]
    doc += ["## Results", ""]
    for sc in scenarios:
        sizes = sorted({size for (name, size, _) in agg if name == sc})
        if not sizes:
            continue
        doc += [f"### {titles[sc]}", "", DESCRIPTIONS.get(sc, "").format(**p), "",
                scenario_table(sc, sizes, servers, agg, meta["scenarios"][sc]["size_label"]), ""]
    # Measured apart, each by its own script.
    for extra in (HANDSHAKE, PERFORMANCE, IDENTITY, TRANSPORTS, WEBHOOKS, PUSHER, DOORS):
        if extra.exists():
            doc += [extra.read_text().rstrip(), ""]
    causes = known_causes(results)
    if causes:
        doc += ["## Why the peers fail", "", *causes, ""]
    killed = [c for c in results["cells"] if c.get("info", {}).get("killed_after_sigterm")]
    if killed:
        doc += ["## Shutdown", "",
                "Servers that ignored SIGTERM for 5 s at the end of a cell and were killed (not a benchmark "
                "failure, but an operational one): " + ", ".join(
                    f"{titles[c['scenario']]} {c['size']:g} {c['server']} r{c['repeat']}" for c in killed) + ".",
                ""]
    hundred_k = hundred_k_report.RESULT_FILE
    if hundred_k.exists():
        # A separate run (python -m bench.hundred_k); kept on the page whenever the page is redrawn.
        doc += [hundred_k_report.section(json.loads(hundred_k.read_text()), hundred_k_report.load_variants(hundred_k))]
    two = hundred_k_report.TWO_HUNDRED_K
    if two.results.exists():
        # python -m bench.hundred_k --sockets 200000 (issue 25); kept the same way.
        doc += [hundred_k_report.section(json.loads(two.results.read_text()),
                                         hundred_k_report.load_variants(two.results), two)]
    doc += ["## Failures and skips", "", failure_list(agg, servers, titles), ""]
    doc += history_section()
    # The soak (python -m bench.soak), a run of its own: kept whenever the page is redrawn.
    doc += soak_report.load()
    out.write_text("\n".join(doc))
    return out


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "quick.json"
    print(write_report(path.resolve()))


if __name__ == "__main__":
    main()
