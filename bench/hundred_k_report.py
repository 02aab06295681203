"""The "100,000 sockets" section of ``docs/benchmarks.md`` and ``docs/bench-100k.png``, drawn from the results of
``python -m bench.hundred_k`` (``bench/results/hundred_k.json`` and any ``hundred_k-<name>.json`` beside it); and
the "200,000 sockets" section (issue 25's targets, a per-CPU table and plot against Centrifugo's published figures)
from ``bench/results/sockets_200k.json`` (and any ``sockets_200k-<name>.json``), the same run at twice the size.

Apart from the run itself (``bench/hundred_k.py``): ``bench/report.py`` keeps this section whenever it redraws the
page, and ``python -m bench.hundred_k --report-only`` redraws it alone, both from saved results on any machine,
without the code that starts servers and drivers.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .machine import ROOT

RESULT_FILE = ROOT / "bench" / "results" / "hundred_k.json"
DOCS = ROOT / "docs"
PLOT = DOCS / "bench-100k.png"
SECTION = "## 100,000 sockets"
#: Centrifugo's published 1M-connection run, as sockets per CPU (the figure issue 13 compares with).
CENTRIFUGO_PER_CPU = 25_000
CENTRIFUGO_URL = "https://centrifugal.dev/blog/2020/02/10/million-connections-with-centrifugo"
TARGETS = {"rss_per_socket_kib": 16.0, "storm_s": 60.0, "fanout_p99_ms": 1500.0}
#: Centrifugo's figures as issue 25 quotes them (2026): 200,000 idle sockets with its defaults on 0.94 of a core at
#: about 27 KB each; 1,000,000 on one 16-vCPU node at 11.6 KB each with its paid options.
CENTRIFUGO_IDLE = {"sockets": 200_000, "cores_used": 0.94, "kb_per_socket": 27.0}
CENTRIFUGO_NODE = {"sockets": 1_000_000, "vcpus": 16, "kb_per_socket": 11.6}


@dataclass(frozen=True)
class Page:
    """One section of the page drawn from one run's results: where they are kept, what it is held to."""

    name: str
    title: str
    results: Path
    plot: Path
    issue: int
    targets: dict[str, float] = field(default_factory=dict)
    per_cpu_plot: Path | None = None


HUNDRED_K = Page("100k", SECTION, RESULT_FILE, PLOT, 13, TARGETS)
TWO_HUNDRED_K = Page("200k", "## 200,000 sockets", ROOT / "bench" / "results" / "sockets_200k.json",
                     DOCS / "bench-200k.png", 25,
                     {"rss_per_socket_kib": 12.0, "storm_s": 120.0, "fanout_p99_ms": 2000.0,
                      "idle_server_cpu_pct": 25.0},
                     DOCS / "bench-200k-per-cpu.png")
PAGES = {p.name: p for p in (HUNDRED_K, TWO_HUNDRED_K)}


def fmt(x: Any, spec: str = "{:,.1f}") -> str:
    return "n/a" if x is None else spec.format(x)


def storm_rounds(results: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any], float]]:
    """(suffix, storm, fanout, count interval) of each round that ran."""
    out = []
    for sfx in ("", "_b"):
        if "storm" + sfx in results:
            ci = results.get("count_interval" + sfx, results["meta"]["count_interval"])
            out.append((sfx, results["storm" + sfx], results.get("fanout" + sfx, {}), ci))
    return out


def all_rounds(results: dict[str, Any],
               variants: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any], float]]:
    """Every storm round of the main run and of the other runs, labelled by interval (and run)."""
    runs = [results, *variants]
    out = []
    for k, r in enumerate(runs):
        for _sfx, st, fo, ci in storm_rounds(r):
            out.append((f"--count-interval {ci:g}" + (f", run {k + 1}" if len(runs) > 1 else ""), st, fo, ci))
    return out


def plot(results: dict[str, Any], variants: list[dict[str, Any]] | None = None, path: Path = PLOT,
         targets: dict[str, float] = TARGETS) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = all_rounds(results, variants or [])
    if not rounds:
        return None
    n = results["meta"]["sockets"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, st, _fo, _ci in rounds:
        if st.get("timeline"):
            t = [p[0] for p in st["timeline"]]
            line = ax1.plot(t, [p[1] for p in st["timeline"]], ls="--", lw=1, label=f"sockets open ({label})")
            ax1.plot(t, [p[2] for p in st["timeline"]], color=line[0].get_color(),
                     label=f"clients showing {n:,} ({label})")
    ax1.axvline(targets["storm_s"], color="grey", ls=":", label=f"target {targets['storm_s']:.0f} s")
    ax1.set_xlabel("seconds since the first connect")
    ax1.set_ylabel("clients")
    ax1.set_title(f"Join storm: {n:,} into one room")
    ax1.legend(loc="center right", fontsize=6)
    ax1.grid(alpha=0.3)
    drawn = False
    for label, _st, fo, _ci in rounds:
        for i, m in enumerate(fo.get("messages", [])):
            if m.get("cdf"):
                ax2.plot([p[1] for p in m["cdf"]], [p[0] for p in m["cdf"]], label=f"message {i + 1} ({label})")
                drawn = True
    if drawn:
        ax2.axvline(targets["fanout_p99_ms"], color="grey", ls=":", label="target p99")
        ax2.axhline(0.99, color="grey", ls="--", lw=0.8)
        ax2.legend(loc="lower right", fontsize=7)
    ax2.set_xlabel("delivery latency (ms)")
    ax2.set_ylabel("fraction of recipients")
    ax2.set_title(f"Fan-out of one message to {n:,}")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def warnings_text(meta: dict[str, Any]) -> str:
    w = meta.get("server_warnings")
    if not w:
        return " The servers logged no warning." if w is not None else ""
    return " The servers logged: " + "; ".join(f"`{text}` ×{k}" for text, k in w.items()) + "."


def other_runs(variants: list[dict[str, Any]]) -> list[str]:
    """What the other runs in the table were (``--out bench/results/hundred_k-<name>.json``)."""
    rows = []
    for k, v in enumerate(variants):
        m = v["meta"]
        loads = [x[1] for x in m.get("load_samples", [])]
        status = "every check passed" if v.get("ok") else "failed: " + "; ".join(f[:250] for f in v["failures"])
        d = v.get("density", {})
        if d.get("rss_per_socket_kib") is not None:
            status += (f"; density: {d['rss_per_socket_kib']:.2f} KiB per socket, idle server CPU "
                       f"{fmt(d.get('idle_server_cpu_pct'))} % of a core over {fmt(d.get('hold_s'), '{:g}')} s")
        rows.append(f"- Run {k + 2}: `{m['command']}` (run {m['started']}, {m.get('elapsed_s', 0) / 60:.1f} min, "
                    f"load at the start {m.get('loadavg_start')}, during {fmt(min(loads, default=None), '{:.2f}')} "
                    f"to {fmt(max(loads, default=None), '{:.2f}')}): {status}.{warnings_text(m)}")
    return rows + [""] if rows else []


def worst(msgs: list[dict[str, Any]], key: str) -> float | None:
    return max((m[key] for m in msgs if m.get(key) is not None), default=None)


def storm_time(st: dict[str, Any]) -> str:
    if st.get("all_show_n_s") is not None:
        return f"{st['all_show_n_s']:,.1f} s"
    if "live_at_stop" in st:
        return (f"not reached: stopped at {st.get('elapsed_s', 0):.0f} s with {st['live_at_stop']:,} connected, "
                f"{st['showing_n_at_stop']:,} showing N")
    return "n/a"


def reading(rounds: list[tuple[str, dict[str, Any], dict[str, Any], float]], n: int,
            d: dict[str, Any], history: bool = True) -> list[str]:
    """What the storm rounds show, in numbers taken from them."""
    parts = []
    for label, st, _fo, _ci in rounds:
        live = st.get("live_at_stop") or (n if st.get("all_show_n_s") is not None else None)
        if not live or st.get("count_frames") is None:
            continue
        spent = st.get("all_show_n_s") or st.get("elapsed_s") or 0
        parts.append(f"`{label}`: {st['count_frames']:,} count frames to the {live:,} clients connected after "
                     f"{spent:.0f} s ({st['count_frames'] / live:.0f} each), {st.get('server_cpu_s', 0):.0f} s of "
                     f"server and {st.get('driver_cpu_s', 0):.0f} s of driver CPU")
    if not parts:
        return []
    tails = [st["all_show_n_s"] - st["connect_s"] for _l, st, _f, _c in rounds
             if st.get("all_show_n_s") is not None and st.get("connect_s") is not None]
    tail = (f" (here {', '.join(f'{t:.1f} s' for t in tails)} from the last 101 to every client showing N)"
            if tails else "")
    return ["**Reading the storm.** " + "; ".join(parts) + ". Count broadcasts are coalesced per room and per "
            "process and paced by the room's size (`--count-rate`: at most 20,000 count frames a second per room, "
            f"all processes together, so a room of {n:,} is sent a count every {n / 20_000:g} s; each new socket gets "
            "its own "
            "at once), so a storm costs about the rate × its duration in frames, O(N) whatever the room's size. "
            + ("Before the pacing, a fixed 0.1 s interval sent every member a count 10 times a second for as long as "
               "the storm lasted: 3.8 million frames, and the storm had not finished after 180 s. "
               if history else "")
            + "What the storm's "
            "time is now: the joins themselves (each a TCP handshake, an upgrade and a presence write, on the "
            f"server and on the driver, all on these 2 cores; the density phase opened its {n:,} sockets, with "
            f"no storm, in {fmt(d.get('ready_s'), '{:.0f}')} s), then the wait for the room's next paced broadcast, "
            f"up to {n / 20_000:g} s{tail}.", "", *reading_fanout(rounds, d, n)]


def reading_warnings(runs: list[dict[str, Any]]) -> list[str]:
    silent = sum(k for r in runs for text, k in (r["meta"].get("server_warnings") or {}).items()
                 if "pub/sub silent" in text)
    if not silent:
        return []
    return [f"**Under starvation.** The servers logged `pub/sub silent` {silent} times: with every core busy, a "
            "process's event loop ran so late that its pub/sub connection saw no reply for 3 keepalives (15 s) "
            "although Redis was idle (about 1 s of Redis CPU over a whole storm), so the subscriber dropped a "
            "healthy connection and resubscribed all its rooms, at the worst moment; its members kept an old count "
            "until then (in the 420 s storm at 5 s, 12,395 clients, about one process's share, still showed "
            "75,008 when others "
            "showed 100,000). Also logged once each in run 1: a presence write and a history read past "
            "`--redis-timeout` (2 s), for the same reason.", ""]


def reading_fanout(rounds: list[tuple[str, dict[str, Any], dict[str, Any], float]], d: dict[str, Any],
                   n: int = 100_000) -> list[str]:
    if not any(fo.get("messages") for _l, _s, fo, _c in rounds):
        return []
    return ["**Reading the fan-out.** Each message is one frame per member, serialized once per process; the "
            "delivery window's server CPU also holds what the processes do anyway (held idle, the density phase's "
            f"processes used {fmt(d.get('idle_server_cpu_pct'))} % of a core for their {n:,} sockets, mostly the "
            "keepalive pings), so CPU per frame here is an upper bound, and the drivers parse every frame on the "
            "same 2 cores: the latency is the servers' and the drivers' queueing together.", ""]


def section(results: dict[str, Any], variants: list[dict[str, Any]] | None = None, page: Page = HUNDRED_K) -> str:
    """The markdown of the page's section ("100,000 sockets" unless ``page`` says), from a results file (and other
    runs', if any)."""
    meta = results["meta"]
    tg = page.targets
    n, procs, cores = meta["sockets"], meta["servers"], meta["machine"]["cores"]
    d = results.get("density", {})
    rounds = all_rounds(results, variants or [])
    loads = [x[1] for x in meta.get("load_samples", [])]
    avail = [x[2] for x in meta.get("load_samples", [])]

    def met(value: float | None, target: float, gave_up: bool = False) -> str:
        if value is None:
            return "**no**" if gave_up else "n/a"
        return "yes" if value <= target else "**no**"

    quiet = meta.get("wait", {})
    busy = "" if not quiet or quiet.get("quiet") else (
        f" The machine did not become quiet (1-minute load under 1.5) within the wait; the run went ahead at "
        f"load {quiet.get('load1_at_start')}.")
    failures = results.get("failures", [])
    status = "every check passed" if not failures else (
        f"{len(failures)} check(s) failed: " + "; ".join(f[:250] for f in failures))
    rows = [
        f"| server RSS per socket, presence included ({n:,} in rooms of {d.get('room_size', '?')}, "
        f"{n // procs:,} per process) | ≤ {tg['rss_per_socket_kib']:g} KiB | "
        f"{fmt(d.get('rss_per_socket_kib'), '{:.2f}')} KiB | "
        f"{met(d.get('rss_per_socket_kib'), tg['rss_per_socket_kib'])} |",
    ]
    if "idle_server_cpu_pct" in tg:
        rows.append(
            f"| idle server CPU, all {procs} processes, {n:,} sockets held {fmt(d.get('hold_s'), '{:g}')} s at the "
            f"default `--ping-interval` (20 s) | ≤ {tg['idle_server_cpu_pct']:g} % of a core | "
            f"{fmt(d.get('idle_server_cpu_pct'))} % | {met(d.get('idle_server_cpu_pct'), tg['idle_server_cpu_pct'])} |")
    for label, st, fo, _ci in rounds:
        msgs = fo.get("messages", [])
        label = f"`{label}`"
        rows += [
            f"| join storm of {n:,} into one room, {label}: every client shows {n:,} | ≤ {tg['storm_s']:g} s | "
            f"{storm_time(st)} | {met(st.get('all_show_n_s'), tg['storm_s'], 'live_at_stop' in st)} |",
            f"| join storm, {label}: count frames sent | | {fmt(st.get('count_frames'), '{:,}')}"
            + (f" ({st['frames_per_client']:.1f} per client)" if st.get("frames_per_client") else "") + " | |",
            f"| join storm, {label}: server CPU; Redis CPU; driver CPU | | {fmt(st.get('server_cpu_s'))} s; "
            f"{fmt(st.get('redis_cpu_s'), '{:.2f}')} s; {fmt(st.get('driver_cpu_s'))} s | |",
        ]
        if msgs:
            rows += [
                f"| fan-out of one message to {n:,} ({label}): p99 latency, worst of {len(msgs)} messages | "
                f"≤ {tg['fanout_p99_ms'] / 1000:g} s | {fmt(worst(msgs, 'p99_ms'), '{:,.0f}')} ms | "
                f"{met(worst(msgs, 'p99_ms'), tg['fanout_p99_ms'])} |",
                f"| fan-out: last recipient, worst of {len(msgs)} | | "
                f"{fmt(worst(msgs, 'last_recipient_ms'), '{:,.0f}')} ms | |",
                "| fan-out: p50 / p99 / last recipient of each message | | " + "; ".join(
                    f"{fmt(m.get('p50_ms'), '{:,.0f}')} / {fmt(m.get('p99_ms'), '{:,.0f}')} / "
                    f"{fmt(m.get('last_recipient_ms'), '{:,.0f}')} ms" for m in msgs) + " | |",
                f"| fan-out: server CPU per delivered frame, each message | | "
                f"{', '.join(fmt(m.get('server_cpu_us_per_frame')) for m in msgs)} µs | |",
                f"| fan-out: Redis CPU, each message | | {', '.join(fmt(m.get('redis_cpu_ms'), '{:g}') for m in msgs)} "
                "ms | |",
            ]
    rows += [
        f"| density: Redis CPU to register {n:,} sockets; idle Redis CPU | | "
        f"{fmt(d.get('open_redis_cpu_s'), '{:.2f}')} s; {fmt(d.get('idle_redis_cpu_pct'), '{:.1f}')} % of a core | |",
    ]
    lines = [
        page.title,
        "",
        ("Run 1: " if variants else "")
        + f"`{meta['command']}` (started {meta['started']}, {meta.get('elapsed_s', 0) / 60:.1f} min "
        f"including {quiet.get('waited_s', 0)} s waiting for a quiet machine; results in "
        f"`{page.results.relative_to(ROOT)}`): {n:,} concurrent sockets on this {cores}-core, "
        f"{meta['machine']['memory_gib']} GiB machine: {procs} `app.py` processes (one port each, "
        f"{n // procs:,} sockets each, defaults but `--count-interval`) on one `redis-server` "
        f"{meta.get('redis_version', '')}" + (f" (rrr at {meta['rrr_commit']})" if meta.get("rrr_commit") else "")
        + f", and {meta['drivers']} load-driver processes (`bench/worker.py` on uvloop, "
        "each connecting from its own eight 127.x.y.z source addresses, a fresh set per phase), all sharing "
        f"the same {cores} cores. Result: {status}.{busy} Load average (1 min) sampled during the run: "
        f"{fmt(min(loads, default=None), '{:.2f}')} to {fmt(max(loads, default=None), '{:.2f}')} "
        f"(at the start {meta.get('loadavg_start')}; the run's own {procs + meta['drivers']} processes count in "
        f"it); least memory available: {fmt(min(avail, default=None), '{:.1f}')} GiB.{warnings_text(meta)}",
        "",
        *other_runs(variants or []),
        "| figure | target | measured | met |",
        "|---|---|---|---|",
        *rows,
        "",
        *reading(rounds, n, d, page is HUNDRED_K),
        *(reading_warnings([results, *(variants or [])]) if page is HUNDRED_K else []),
        "How each figure was checked, not assumed: in the density phase each client showed its room's exact "
        f"count, each of the {fmt(d.get('rooms'), '{:,}')} rooms' stored count (`GET /api/rooms/<room>`) matched, "
        "each process held exactly its share of the sockets (its own `rrr_open_sockets`), and after a graceful "
        "close every room and every process was back to 0. In a storm that finished, each client's last count was "
        f"exactly {n:,}, still after a quiet window, and the stored count was {n:,}; in the fan-out each client "
        "received each message exactly once (no loss, no duplicate, nothing foreign; published with "
        "`rrr.client.apublish`, the stored path), and no socket was dropped by the server.",
        "",
        "| density detail | value |",
        "|---|---|",
        f"| all {n:,} open and showing their rooms' true counts | {fmt(d.get('ready_s'), '{:.1f}')} s "
        f"(server CPU {fmt(d.get('open_server_cpu_s'), '{:.1f}')} s) |",
        f"| server RSS before / with {n:,} (all processes) | {fmt(d.get('rss_base_mib'))} / "
        f"{fmt(d.get('rss_mib'))} MiB (per process {d.get('rss_per_process_mib')}) |",
        f"| rooms per process | {d.get('rooms_per_process')} |",
        f"| Redis per socket (`used_memory`; RSS) | {fmt(d.get('redis_used_memory_per_socket_b'), '{:.0f}')} B; "
        f"{fmt(d.get('redis_rss_per_socket_kib'), '{:.2f}')} KiB |",
        f"| held idle {fmt(d.get('hold_s'), '{:g}')} s: server CPU | {fmt(d.get('idle_server_cpu_pct'))} % of a "
        "core (all processes) |",
        f"| graceful close of all | {fmt(d.get('close_s'))} s |",
        "",
        f"![{n:,} sockets: join storm and fan-out]({page.plot.name})",
        "",
    ]
    if page is not HUNDRED_K:
        return "\n".join(lines + limits(results, page) + per_cpu(results, page))
    lines += [
        f"**Per-CPU density.** {n:,} sockets on {cores} cores is {n / cores:,.0f} sockets per CPU, "
        f"{n / cores / CENTRIFUGO_PER_CPU:.1f}× the about {CENTRIFUGO_PER_CPU:,} per CPU of Centrifugo's "
        f"published 1M-connection run ([Million connections with Centrifugo]({CENTRIFUGO_URL}): 1,000,000 "
        "WebSocket connections on 20 server pods, Redis sharded over 5 instances). Not the same load: that run "
        "delivered about 500,000 messages a second and 200,000 connects and disconnects a minute while holding "
        "its million, each connection in two channels, at a p99 of 200 ms; here the sockets mostly sit idle "
        f"between the storm and the fan-out, and the same {cores} cores also run the load drivers and Redis. It "
        "says how many sockets a core can hold with exact presence, not how much traffic they can carry.",
        "",
    ]
    return "\n".join(lines)


def splice(page: str, text: str, title: str = SECTION) -> str:
    """Put ``text`` in place of the page's section ``title``, else before "Failures and skips"."""
    start = page.find("\n" + title + "\n")
    if start >= 0:
        end = page.find("\n## ", start + 1)
        return page[:start + 1] + text + (page[end + 1:] if end >= 0 else "")
    anchor = page.find("\n## Failures and skips")
    if anchor >= 0:
        return page[:anchor + 1] + text + "\n" + page[anchor + 1:]
    return page.rstrip("\n") + "\n\n" + text


def load_variants(main: Path = RESULT_FILE) -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text()) for p in main.parent.glob(f"{main.stem}-*.json") if p != main]
    return sorted(runs, key=lambda r: r["meta"]["started"])


def write_page(results: dict[str, Any], which: Page = HUNDRED_K, page: Path = DOCS / "benchmarks.md") -> Path:
    variants = load_variants(which.results)
    plot(results, variants, which.plot, which.targets)
    if which.per_cpu_plot is not None:
        plot_per_cpu(results, which.per_cpu_plot)
    page.write_text(splice(page.read_text(), section(results, variants, which) + "\n", which.title))
    return page


def per_cpu_rows(results: dict[str, Any]) -> dict[str, float | None]:
    """rrr's figures per CPU from a run, beside Centrifugo's (issue 25's comparison)."""
    meta, d = results["meta"], results.get("density", {})
    n, cores = meta["sockets"], meta["machine"]["cores"]
    idle = d.get("idle_server_cpu_pct")
    return {
        "sockets_per_vcpu": n / cores,
        "idle_cores": idle / 100 if idle is not None else None,
        "sockets_per_idle_core": n / (idle / 100) if idle else None,
        "kib_per_socket": d.get("rss_per_socket_kib"),
    }


def per_cpu(results: dict[str, Any], page: Page) -> list[str]:
    """The table against Centrifugo's published figures, and its plot."""
    n, cores = results["meta"]["sockets"], results["meta"]["machine"]["cores"]
    r = per_cpu_rows(results)
    ci, cn = CENTRIFUGO_IDLE, CENTRIFUGO_NODE
    kib = 1000 / 1024
    lines = [
        f"**Per CPU, against Centrifugo's published figures** (as issue #25 quotes them: {ci['sockets']:,} idle "
        f"sockets with its defaults on {ci['cores_used']:g} of a core at about {ci['kb_per_socket']:g} KB each; "
        f"{cn['sockets']:,} on one {cn['vcpus']}-vCPU node at {cn['kb_per_socket']:g} KB each with its paid options). "
        f"rrr's memory is the servers' RSS with presence included (Redis apart: see the density detail); its idle "
        "CPU is the servers' (Redis and the drivers apart), with every socket answering the keepalive's pings. "
        f"Here the {cores} vCPUs also ran Redis and the {results['meta']['drivers']} load drivers.",
        "",
        f"| per CPU | rrr, {n:,} on this {cores}-vCPU box | Centrifugo, {ci['sockets']:,} idle, defaults | "
        f"Centrifugo, {cn['sockets']:,} on {cn['vcpus']} vCPUs |",
        "|---|---|---|---|",
        f"| sockets per vCPU of the machine | {fmt(r['sockets_per_vcpu'], '{:,.0f}')} | | "
        f"{cn['sockets'] / cn['vcpus']:,.0f} |",
        f"| CPU used by the idle sockets | {fmt(r['idle_cores'], '{:.3f}')} core | {ci['cores_used']:g} core | |",
        f"| idle sockets per core of CPU used | {fmt(r['sockets_per_idle_core'], '{:,.0f}')} | "
        f"{ci['sockets'] / ci['cores_used']:,.0f} | |",
        f"| memory per socket | {fmt(r['kib_per_socket'], '{:.2f}')} KiB | about {ci['kb_per_socket'] * kib:.1f} KiB "
        f"({ci['kb_per_socket']:g} KB) | {cn['kb_per_socket'] * kib:.1f} KiB ({cn['kb_per_socket']:g} KB) |",
        "",
    ]
    if page.per_cpu_plot is not None:
        lines += [f"![{n:,} sockets per CPU against Centrifugo]({page.per_cpu_plot.name})", ""]
    return lines


def plot_per_cpu(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = per_cpu_rows(results)
    n = results["meta"]["sockets"]
    ci, cn = CENTRIFUGO_IDLE, CENTRIFUGO_NODE
    kib = 1000 / 1024
    rrr = f"rrr, {n:,}\non {results['meta']['machine']['cores']} vCPUs"
    c_idle, c_node = f"Centrifugo\n{ci['sockets']:,} idle", f"Centrifugo\n{cn['sockets']:,} / {cn['vcpus']} vCPU"
    panels = [
        ("sockets per vCPU of the machine", {rrr: r["sockets_per_vcpu"], c_node: cn["sockets"] / cn["vcpus"]}),
        ("idle sockets per core of CPU used",
         {rrr: r["sockets_per_idle_core"], c_idle: ci["sockets"] / ci["cores_used"]}),
        ("memory per socket (KiB)", {rrr: r["kib_per_socket"], c_idle: ci["kb_per_socket"] * kib,
                                     c_node: cn["kb_per_socket"] * kib}),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (title, bars) in zip(axes, panels, strict=True):
        names = list(bars)
        values = [bars[k] or 0.0 for k in names]
        colors = ["tab:green" if k == rrr else "tab:grey" for k in names]
        ax.bar(names, values, color=colors)
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def limits(results: dict[str, Any], page: Page) -> list[str]:
    """What bounds each timed figure on this box, in numbers taken from the run: CPU seconds over its cores."""
    meta, d, st = results["meta"], results.get("density", {}), results.get("storm", {})
    n, cores = meta["sockets"], meta["machine"]["cores"]
    parts = []
    idle = d.get("idle_server_cpu_pct")
    if idle is not None:
        parts.append(f"idle, {idle:.1f} % of a core is {idle / 100 * 20 / n * 1e6:.1f} µs of server CPU per socket per "
                     f"20 s ping interval (the target, {page.targets.get('idle_server_cpu_pct', 0):g} %, allows "
                     f"{page.targets.get('idle_server_cpu_pct', 0) / 100 * 20 / n * 1e6:.1f}), the "
                     f"{meta['servers']} processes' own timers included")
    if st.get("server_cpu_s") is not None and st.get("driver_cpu_s") is not None:
        both = st["server_cpu_s"] + st["driver_cpu_s"]
        parts.append(f"the storm took {both:.0f} s of CPU (servers {st['server_cpu_s']:.0f}, drivers "
                     f"{st['driver_cpu_s']:.0f}): {both / cores:.0f} s of wall time on {cores} cores even with nothing "
                     f"else running, against a target of {page.targets.get('storm_s', 0):g} s; the servers spent "
                     f"{fmt(st.get('server_cpu_us_per_join'), '{:,}')} µs per join, with "
                     f"{fmt(st.get('frames_per_client'), '{:.0f}')} count frames per client")
    msgs = results.get("fanout", {}).get("messages", [])
    if msgs and all(m.get("server_cpu_us_per_frame") for m in msgs):
        per = statistics.median(m["server_cpu_us_per_frame"] for m in msgs)
        parts.append(f"one message is {n:,} frames at {per:.1f} µs of server CPU each, {per * n / 1e6:.1f} s of CPU, "
                     f"{per * n / 1e6 / cores:.1f} s on {cores} cores before the drivers read a frame")
    if not parts:
        return []
    return ["**What bounds the timed figures here.** " + "; ".join(parts) + ".", ""]
