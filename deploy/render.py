"""Render ``deploy/nginx.conf.template`` into a complete nginx.conf.

    python -m deploy.render --listen 80 --ports 8001-8004 -o /etc/nginx/nginx.conf
    python -m deploy.render --listen 127.0.0.1:8080 --ports 8001-8003 \\
        --runtime-dir /tmp/rrr-nginx --foreground -o /tmp/rrr-nginx/nginx.conf
    nginx -t -c /tmp/rrr-nginx/nginx.conf          # always check before reloading

Upstreams: ``--ports 8001-8004`` (processes on 127.0.0.1), ``--ports 8001,8002``, or
``--app HOST:PORT`` repeated (processes on other hosts). ``--runtime-dir DIR`` puts the
pid file, logs and temp directories under DIR (an unprivileged or test nginx); without
it the Debian/Ubuntu paths are used. The command refuses settings that would cut idle
WebSockets (``proxy_read_timeout`` not above twice ``--ping-interval``), quiet SSE streams or
long polls (``--stream-read-timeout`` not above ``--sse-keepalive`` and ``--poll-timeout``), or
that cannot hold the sockets (``worker_rlimit_nofile`` under 2 x ``worker_connections``).
``--tls-certificate``/``--tls-certificate-key`` serve TLS with HTTP/2 (browsers allow only six
HTTP/1.1 connections per origin; the library holds one per browser anyway).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_TIME = re.compile(r"^(\d+)(ms|s|m|h)?$")
_TIME_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def nginx_seconds(value: str) -> float:
    """``75s`` / ``2m`` / ``500ms`` / ``30`` (nginx time syntax, one unit) in seconds."""
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(f"not an nginx time: {value!r} (use e.g. 75s, 2m, 500ms)")
    return int(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_ports(spec: str) -> list[int]:
    """``8001-8004`` or ``8001,8002,8005`` (or a mix)."""
    ports: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"bad port range {part!r}")
            ports += range(lo, hi + 1)
        else:
            ports.append(int(part))
    for p in ports:
        if not 0 < p < 65536:
            raise ValueError(f"bad port {p}")
    return ports


def render(template: str, values: dict[str, str]) -> str:
    """Fill every ``{{ name }}``; a missing or unused value is an error, never a silent blank."""
    used: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{ {name} }}}} has no value")
        used.add(name)
        return values[name]

    out = _PLACEHOLDER.sub(fill, template)
    unused = set(values) - used
    if unused:
        raise KeyError(f"values not used by the template: {sorted(unused)}")
    return out


SAME_ORIGIN = Path(__file__).resolve().parent / "nginx-same-origin.conf"
#: The lines of nginx-same-origin.conf a user changes (marked CHANGE there), by what they are.
_SAME_ORIGIN_LINES = {
    "rrr": "    server 127.0.0.1:8888;  # CHANGE: rrr",
    "django": "    server 127.0.0.1:8000;  # CHANGE: the Django site",
    "listen": "    listen 80;  # CHANGE: the site's address",
}


def same_origin(rrr: str, django: str, listen: str) -> str:
    """deploy/nginx-same-origin.conf with its three CHANGE lines set (``HOST:PORT`` each), as a user
    would edit it; everything else as shipped, so what the tests run is the recipe itself."""
    text = SAME_ORIGIN.read_text()
    for name, value in (("rrr", rrr), ("django", django), ("listen", listen)):
        line = re.compile(rf"^{re.escape(_SAME_ORIGIN_LINES[name])}.*$", re.MULTILINE)
        if len(line.findall(text)) != 1:
            raise ValueError(f"{SAME_ORIGIN.name} has no single {name} line marked CHANGE")
        directive = "listen" if name == "listen" else "server"
        text = line.sub(f"    {directive} {value};  # {name}, set for this run", text)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy.render", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ups = p.add_argument_group("upstream app processes")
    ups.add_argument("--ports", help="app ports on 127.0.0.1: 8001-8004 or 8001,8002")
    ups.add_argument("--app", action="append", default=[], metavar="HOST:PORT", help="an app process (repeatable)")
    ups.add_argument("--fail-timeout", default="2s", help="how long nginx skips a process after a failed connect")
    ups.add_argument("--balance", choices=["least_conn", "round-robin"], default="least_conn",
                     help="how new connections are spread (default least_conn: long-lived sockets and streams)")
    srv = p.add_argument_group("server")
    srv.add_argument("--listen", default="80", help="nginx listen: PORT or ADDR:PORT (default 80)")
    srv.add_argument("--server-name", default="_", help="server_name (default _: any)")
    srv.add_argument("--static-root", default=str(ROOT / "static"), help="the app's static/ directory")
    srv.add_argument("--limit-conn", type=int, default=100, help="concurrent WebSockets per client IP (default 100)")
    srv.add_argument("--limit-conn-zone-size", default="10m",
                     help="shared memory for the per-IP table (10m: ~160k IPs)")
    srv.add_argument("--proxy-read-timeout", default="75s", help="idle limit on a proxied socket (default 75s)")
    srv.add_argument("--ping-interval", type=float, default=20.0,
                     help="the app's --ping-interval, to check proxy_read_timeout against (default 20)")
    srv.add_argument("--proxy-connect-timeout", default="2s", help="connect to an app process (default 2s)")
    srv.add_argument("--stream-read-timeout", default="75s",
                     help="idle limit on an SSE stream or a long poll (default 75s)")
    srv.add_argument("--sse-keepalive", type=float, default=15.0,
                     help="the app's --sse-keepalive, to check --stream-read-timeout against (default 15)")
    srv.add_argument("--poll-timeout", type=float, default=25.0,
                     help="the app's --poll-timeout, to check --stream-read-timeout against (default 25)")
    srv.add_argument("--tls-certificate", default="", help="PEM certificate (chain): listen with TLS and HTTP/2")
    srv.add_argument("--tls-certificate-key", default="", help="its PEM private key")
    srv.add_argument("--client-max-body-size", default="64k", help="largest request body (app: --max-message-size)")
    proc = p.add_argument_group("nginx process")
    proc.add_argument("--user", default="", help="worker user (e.g. www-data); default: leave nginx's default")
    proc.add_argument("--worker-processes", default="auto")
    proc.add_argument("--worker-connections", type=int, default=16384, help="per worker; each WebSocket uses 2")
    proc.add_argument("--worker-rlimit-nofile", type=int, default=0, help="default: 2 x worker-connections + 1024")
    proc.add_argument("--foreground", action="store_true", help="daemon off; (systemd Type=simple, tests)")
    proc.add_argument("--runtime-dir", help="put pid, logs and temp dirs under this directory (created)")
    proc.add_argument("--pid", default="/run/nginx.pid")
    proc.add_argument("--error-log", default="/var/log/nginx/error.log")
    proc.add_argument("--error-log-level", default="warn")
    proc.add_argument("--access-log", default="/var/log/nginx/access.log", help="a path, or 'off'")
    proc.add_argument("--temp-dir", default="/var/lib/nginx", help="parent of the *_temp_path directories")
    p.add_argument("--template", default=str(TEMPLATE))
    p.add_argument("-o", "--output", default="-", help="write here (default: stdout)")
    return p


def values_from_args(args: argparse.Namespace) -> dict[str, str]:
    servers: list[str] = [f"127.0.0.1:{port}" for port in parse_ports(args.ports or "")]
    servers += [a.strip() for a in args.app if a.strip()]
    if not servers:
        raise ValueError("no app processes: give --ports 8001-8004 and/or --app HOST:PORT")
    if len(set(servers)) != len(servers):
        raise ValueError(f"an app process is listed twice: {servers}")
    read_timeout = nginx_seconds(args.proxy_read_timeout)
    if read_timeout < 2 * args.ping_interval:
        raise ValueError(
            f"proxy_read_timeout {args.proxy_read_timeout} must be at least twice the app's ping interval "
            f"({args.ping_interval:g} s), or nginx closes quiet WebSockets between two pings"
        )
    stream_timeout = nginx_seconds(args.stream_read_timeout)
    if stream_timeout <= max(args.sse_keepalive, args.poll_timeout) + 5:
        raise ValueError(
            f"--stream-read-timeout {args.stream_read_timeout} must be above the app's --sse-keepalive "
            f"({args.sse_keepalive:g} s) and --poll-timeout ({args.poll_timeout:g} s) with 5 s to spare, or nginx "
            "cuts quiet SSE streams and waiting polls"
        )
    if bool(args.tls_certificate) != bool(args.tls_certificate_key):
        raise ValueError("--tls-certificate and --tls-certificate-key go together")
    nginx_seconds(args.proxy_connect_timeout)
    nginx_seconds(args.fail_timeout)
    if args.limit_conn < 1:
        raise ValueError("--limit-conn must be at least 1")
    rlimit = args.worker_rlimit_nofile or 2 * args.worker_connections + 1024
    if rlimit < 2 * args.worker_connections:
        raise ValueError("--worker-rlimit-nofile must be at least 2 x --worker-connections (2 fds per WebSocket)")
    pid, error_log, access_log, temp_dir = args.pid, args.error_log, args.access_log, args.temp_dir
    if args.runtime_dir:
        rt = Path(args.runtime_dir).resolve()
        for sub in ("logs", "temp"):
            (rt / sub).mkdir(parents=True, exist_ok=True)
        pid, error_log = str(rt / "nginx.pid"), str(rt / "logs" / "error.log")
        access_log = access_log if access_log == "off" else str(rt / "logs" / "access.log")
        temp_dir = str(rt / "temp")
    static_root = str(Path(args.static_root).resolve())
    if not Path(static_root).is_dir():
        raise ValueError(f"--static-root {static_root} is not a directory")
    upstream = "\n".join(
        f"        server {s} max_fails=1 fail_timeout={args.fail_timeout};" for s in servers
    )
    return {
        "user_line": f"user {args.user};" if args.user else "# user: nginx's default (set --user www-data as root)",
        "worker_processes": str(args.worker_processes),
        "worker_rlimit_nofile": str(rlimit),
        "worker_connections": str(args.worker_connections),
        "pid_path": pid,
        "error_log": error_log,
        "error_log_level": args.error_log_level,
        "daemon_line": "daemon off;" if args.foreground else "# daemon: on (nginx's default)",
        "client_max_body_size": args.client_max_body_size,
        "temp_dir": temp_dir,
        "access_log": "off" if access_log == "off" else f"{access_log} rrr",
        "limit_conn_zone_size": args.limit_conn_zone_size,
        "limit_conn": str(args.limit_conn),
        "upstream_servers": upstream,
        "listen": str(args.listen),
        "server_name": args.server_name,
        "proxy_connect_timeout": args.proxy_connect_timeout,
        "static_root": static_root,
        "proxy_read_timeout": args.proxy_read_timeout,
        "stream_read_timeout": args.stream_read_timeout,
        "balance_line": "least_conn;" if args.balance == "least_conn" else "# round-robin: nginx's default",
        "listen_tls": " ssl http2" if args.tls_certificate else "",
        "tls_lines": (
            f"        ssl_certificate {Path(args.tls_certificate).resolve()};\n"
            f"        ssl_certificate_key {Path(args.tls_certificate_key).resolve()};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        ) if args.tls_certificate else "",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        text = render(Path(args.template).read_text(), values_from_args(args))
    except (ValueError, KeyError) as e:
        parser.error(str(e.args[0] if e.args else e))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out)  # nginx never reads a half-written file
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
