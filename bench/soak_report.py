"""The "Soak" section of ``docs/benchmarks.md`` and its timeline plot, from ``bench/results/soak.json``; its
"Soak on Sentinel" subsection from ``bench/results/soak-sentinel.json`` (``--redis sentinel``). Either run
rewrites only its own part: the other's figures are read back from its saved results.

Apart from ``bench/soak.py``, which runs the soak and saves that file: ``bench/report.py`` keeps this section
whenever it redraws the page, from the saved results, without the code that runs the soak.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .machine import ROOT

RESULTS = ROOT / "bench" / "results" / "soak.json"
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "bench-soak.png"
SECTION = "## Soak: everything at once, with faults"
SENTINEL_RESULTS = ROOT / "bench" / "results" / "soak-sentinel.json"
SENTINEL_SECTION = "### Soak on Sentinel"


def results_path(redis: str) -> Path:
    """Where a full run on ``redis`` (``cluster`` or ``sentinel``) saves its results."""
    return SENTINEL_RESULTS if redis == "sentinel" else RESULTS


def _fmt(x: Any, unit: str = "") -> str:
    return "-" if x is None else f"{x:g}{unit}" if isinstance(x, (int, float)) else str(x)


def verdict(res: dict[str, Any]) -> list[str]:
    """What failed: the run's own list, and counts exact only after the bound (a run whose results predate that
    check listed them as a figure only; issue #27 wants 0)."""
    seen: dict[str, int] = {}
    for f in res.get("failures", []):  # the same failure many times is said once, with how many
        seen[f] = seen.get(f, 0) + 1
    failures = [f if n == 1 else f"{f} (x{n})" for f, n in seen.items()]
    late = [f for f in res.get("faults", []) if not f.get("within_bound") and f.get("recovery_s") is not None]
    if late and not any(x.startswith("counts wrong after the bound") for x in failures):
        bound = res.get("meta", {}).get("client_bound_s")
        failures.append(f"counts wrong after the bound ({bound} s) after {len(late)} fault(s): "
                        + ", ".join(f"{f['kind']} at {f['t']:.0f} s (exact {f['recovery_s']} s after it)"
                                    for f in late[:5]))
    return failures


def summary(res: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    if "meta" not in res:
        return "soak: no results"
    m = res["messages"]
    lines = [
        f"soak seed {res['meta']['seed']}, {res['meta']['minutes']:g} min, {res['meta']['clients']} clients, "
        f"{res['meta']['rooms']} rooms, on {res['meta'].get('redis', 'cluster')}",
        f"published {sum(m['published'].values())} {m['published']} (refused {m['publish_refused']}); "
        f"delivered {m['delivered']} to {m['subscriptions']} subscriptions; lost {m['lost']}, duplicated "
        f"{m['duplicated']}, out of order {m['out_of_order']}; recovered:false {m['resets']}; stored twice "
        f"{m.get('stored_twice', 0)}; first write lost by a failover "
        f"{m.get('delivered_twice_first_write_lost_by_failover', 0)}; offsets reused {m.get('offsets_reused', 0)}; "
        f"acknowledged, reached no live subscription {m.get('acknowledged_unreached', 0)}; acknowledged, lost in a "
        f"failover {m.get('acknowledged_lost_in_failover', 0)}",
        f"latency p50 {_fmt(m['latency_p50_ms'], ' ms')}, max {_fmt(m['latency_max_ms'], ' ms')}; whispers "
        f"{res['whispers']}; reconnects {res['reconnects']}",
        "faults: " + ", ".join(f"{k} {v['survived']}/{v['injected']} (p50 {_fmt(v['p50_s'], ' s')}, "
                               f"max {_fmt(v['max_s'], ' s')})" for k, v in sorted(res["by_kind"].items())),
        f"counts wrong after the bound: {res['counts_wrong_after_bound']}; webhooks {res['webhooks'].get('events')} "
        f"events, {res['webhooks'].get('duplicates')} repeated ids; fd leaks {res['descriptors']['leaks']}; "
        f"RSS growth {'-' if res['rss_growth'] is None else format(res['rss_growth'], '+.1%')}",
    ]
    if "churn" in res:
        ch = res["churn"]
        lines.append(f"churn {ch['steps']} steps in {ch['seconds_on']} s while on ({_fmt(ch['per_s_while_on'])}/s); "
                     f"CPU (cores) {res['cpu_cores']}; load average {res['load_average']}")
    if "command" in res["meta"]:
        lines.insert(0, res["meta"]["command"])
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path = PLOT) -> str | None:
    """Faults, counts' error, delivery latency and RSS over the run (matplotlib, as ``report.py``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tl = res["timeline"]
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    lat = tl.get("latency", [])
    if lat:
        axes[0].plot([x[0] for x in lat], [x[1] * 1000 for x in lat], label="p50")
        axes[0].plot([x[0] for x in lat], [x[2] * 1000 for x in lat], label="max", alpha=0.6)
        axes[0].set_yscale("log")
    axes[0].set_ylabel("delivery latency (ms)")
    axes[0].legend(loc="upper right", fontsize=7)
    faults = tl.get("faults", [])
    err = tl.get("count_error", [])
    if err:
        axes[1].plot([x[0] for x in err], [x[1] for x in err], color="tab:blue", label="rooms with a wrong count")
    axes[1].bar([f[0] for f in faults], [f[2] or 0 for f in faults], width=3, color="tab:red", alpha=0.5,
                label="s until exact after the fault")
    axes[1].set_ylabel("counts' error")
    axes[1].legend(loc="upper right", fontsize=7)
    rss = tl.get("rss", [])
    if rss:
        axes[2].plot([x[0] for x in rss], [x[1] / 2**20 for x in rss])
    axes[2].set_ylabel("server RSS (MiB)")
    axes[2].set_xlabel("seconds")
    for ax in axes:
        for f in faults:
            ax.axvline(f[0], color="tab:red", alpha=0.25, linewidth=0.8)
    for f in faults:
        axes[1].annotate(f[1], (f[0], 0), rotation=90, fontsize=6, va="bottom")
    fig.suptitle(f"soak, seed {res['meta']['seed']}: faults (red), recovery, latency, RSS")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def section(res: dict[str, Any], plot_name: str | None = PLOT.name) -> list[str]:
    meta, m = res["meta"], res["messages"]
    failures = verdict(res)
    ok = not failures
    cmd = meta.get("command") or f"python -m bench.soak --minutes {meta['minutes']:g} --seed {meta['seed']}"
    out = [
        SECTION, "",
        f"`{cmd}` (issue #27), run "
        f"{meta['started']}, {meta['elapsed_s'] / 60:.1f} min in all: "
        f"{'**every check passed**' if ok else '**FAILED**: ' + '; '.join(failures[:5])}.",
        "",
        f"Two `app.py --processes 2` behind nginx on a 6-node Redis Cluster, webhooks to a local receiver, "
        f"{meta['clients']:,} clients at a time ({meta['clients_made']:,} made through churn of "
        f"{meta['churn_rate']:g}/s) over {meta['rooms']} rooms (public, private, presence), shares "
        + ", ".join(f"{k} {v:.0%}" for k, v in meta["shares"].items())
        + f"; publishers at {meta['publish_rate']:g}/s through the HTTP API, `rrr.client` and the Pusher HTTP "
        f"API; whispers in presence rooms. Counts' bound (presence TTL + sweep + count interval): "
        f"{meta['bound_s']:g} s; with a client's way back (a polling session's owner gone on a Cluster): "
        f"{meta.get('client_bound_s', meta['bound_s']):g} s.",
        "",
        "| fault | injected | survived | until counts, tabs, members exact: p50 | max |",
        "|---|---|---|---|---|",
        *(f"| {k} | {v['injected']} | {v['survived']} | {_fmt(v['p50_s'], ' s')} | {_fmt(v['max_s'], ' s')} |"
          for k, v in sorted(res["by_kind"].items())),
        "",
        "| messages | |",
        "|---|---|",
        f"| published (acknowledged) | {sum(m['published'].values()):,} ({m['published']}) |",
        f"| refused during faults (not acknowledged) | {sum(m['publish_refused'].values()):,} |",
        f"| delivered | {m['delivered']:,} to {m['subscriptions']:,} subscriptions |",
        f"| lost | {m['lost']} |",
        f"| duplicated | {m['duplicated']} |",
        f"| out of order | {m['out_of_order']} |",
        f"| one publish stored twice | {m.get('stored_twice', 0)} |",
        f"| delivered twice, the first write lost by a failover (documented limit) | "
        f"{m.get('delivered_twice_first_write_lost_by_failover', 0)} |",
        f"| offsets a failover gave to other messages (documented limit) | {m.get('offsets_reused', 0)} |",
        f"| acknowledged, reached none of the subscriptions live around it (a failure) | "
        f"{m.get('acknowledged_unreached', 0)} |",
        f"| acknowledged, stored nowhere: lost in a failover before anyone got it (documented limit) | "
        f"{m.get('acknowledged_lost_in_failover', 0)} |",
        f"| `recovered: false`, by reason | {m['resets'] or 'none'} |",
        f"| delivery latency p50 / max | {_fmt(m['latency_p50_ms'], ' ms')} / {_fmt(m['latency_max_ms'], ' ms')} |",
        f"| counts wrong after the bound | {res['counts_wrong_after_bound']} |",
        f"| webhook events (repeated ids) | {res['webhooks'].get('events')} ({res['webhooks'].get('duplicates')}) |",
        f"| server RSS growth after the warm-up (limit 5 %, full runs) | "
        f"{'-' if res['rss_growth'] is None else format(res['rss_growth'], '+.1%')} |",
        f"| descriptors not back to baseline | {res['descriptors']['leaks'] or 'none'} |",
    ]
    if "churn" in res:
        ch = res["churn"]
        out += [
            f"| churn (joins/leaves while churning; paused while counts are judged) | {ch['steps']:,} steps in "
            f"{ch['seconds_on']:,} s: {_fmt(ch['per_s_while_on'])}/s |",
            "| CPU used, cores (2 on this machine) | " + ", ".join(f"{k} {v:g}" for k, v in res["cpu_cores"].items())
            + " |",
            f"| load average, mean / max | {_fmt(res['load_average']['mean'])} / {_fmt(res['load_average']['max'])} |",
        ]
    out.append("")
    if plot_name:
        out += [f"![soak timeline]({plot_name})", ""]
    return out


def sentinel_section(runs: list[dict[str, Any]]) -> list[str]:
    """Short tables: the same soak on one Redis under Sentinel (its faults hit the current master), per run."""
    if not runs:
        return []
    return [
        SENTINEL_SECTION, "",
        f"The same apps, clients and publishers on {runs[0]['meta'].get('redis_described', 'Sentinel')}, given as "
        "a `redis+sentinel://` URL. `master_kill9`: kill -9 of the current master (the sentinels promote the "
        "replica; the killed server comes back as its replica); `redis_sigstop`: the current master stopped 5 s "
        "(voted down after 1 s and failed over; it wakes as a replica); `pubsub_kill`: `CLIENT KILL TYPE pubsub` "
        "on the master.",
        "",
        *(line for res in runs for line in _sentinel_run(res)),
    ]


def _sentinel_run(res: dict[str, Any]) -> list[str]:
    meta, m = res["meta"], res["messages"]
    ok = not res["failures"]
    load = meta.get("load_avg_end")
    return [
        f"`python -m bench.soak --redis sentinel --minutes {meta['minutes']:g} --seed {meta['seed']} --clients "
        f"{meta['clients']} --rooms {meta['rooms']} --publish-rate {meta['publish_rate']:g} --churn-rate "
        f"{meta['churn_rate']:g}`, run {meta['started']}, {meta['elapsed_s'] / 60:.1f} min in all"
        + (f" (load average at the end {load[0]:g}, {load[1]:g}, {load[2]:g} on {meta['machine']['cores']} cores)"
           if load else "")
        + f": {'**every check passed**' if ok else '**FAILED**: ' + '; '.join(res['failures'][:5])}.",
        "",
        "| fault | injected | survived | until exact: p50 | max |",
        "|---|---|---|---|---|",
        *(f"| {k} | {v['injected']} | {v['survived']} | {_fmt(v['p50_s'], ' s')} | {_fmt(v['max_s'], ' s')} |"
          for k, v in sorted(res["by_kind"].items())),
        "",
        "| published (acknowledged) | delivered | lost | duplicated | out of order | stored twice "
        "| counts wrong after the bound | RSS growth | descriptors not back |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {sum(m['published'].values()):,} | {m['delivered']:,} to {m['subscriptions']:,} subscriptions "
        f"| {m['lost']} | {m['duplicated']} | {m['out_of_order']} | {m.get('stored_twice', 0)} "
        f"| {res['counts_wrong_after_bound']} "
        f"| {'-' if res['rss_growth'] is None else format(res['rss_growth'], '+.1%')} "
        f"| {res['descriptors']['leaks'] or 'none'} |",
        "",
    ]


def _saved(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    return res if "meta" in res else None


def sentinel_runs(current: tuple[Path, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every saved Sentinel run: ``soak-sentinel.json`` first, then ``soak-sentinel-*.json`` (e.g. a seed whose
    faults hit the master more often) by name; ``current`` (a run just saved there, or elsewhere) in its place."""
    paths = sorted(SENTINEL_RESULTS.parent.glob(SENTINEL_RESULTS.stem + "*.json"),
                   key=lambda p: (p != SENTINEL_RESULTS, p.name))
    runs: list[dict[str, Any]] = []
    placed = False
    for path in paths:
        if current is not None and path.resolve() == current[0].resolve():
            runs.append(current[1])
            placed = True
        elif (res := _saved(path)) is not None:
            runs.append(res)
    if current is not None and not placed:
        runs.append(current[1])
    return runs


def _lines(cluster: dict[str, Any] | None, plot_name: str | None, sentinel: list[dict[str, Any]]) -> list[str]:
    out = section(cluster, plot_name) if cluster is not None else ([SECTION, ""] if sentinel else [])
    return out + sentinel_section(sentinel)


def load() -> list[str]:
    """The section from the saved results (``report.py`` keeps it on the page)."""
    return _lines(_saved(RESULTS), PLOT.name if PLOT.exists() else None, sentinel_runs())


def write(res: dict[str, Any], saved_at: Path | None = None) -> None:
    """Put the section on the page in place of the old one (or at its end): a Cluster run draws the plot and
    rewrites the section above the Sentinel subsection, a Sentinel run (saved at ``saved_at``, by default its
    kind's results file) only that subsection."""
    redis = res["meta"].get("redis", "cluster")
    if redis == "sentinel":
        here = saved_at or results_path(redis)
        lines = _lines(_saved(RESULTS), PLOT.name if PLOT.exists() else None, sentinel_runs((here, res)))
    else:
        lines = _lines(res, plot(res), sentinel_runs())
    text = DOC.read_text() if DOC.exists() else ""
    new = "\n".join(lines)
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _m: new.rstrip() + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + new
    DOC.write_text(text)
