#!/usr/bin/env python
"""``make example``: the example Django site next to rrr and its Redis, on this machine.

Starts, in order: a real ``redis-server`` (embedded, on a private unix socket; or ``--redis-url``),
rrr (``python app.py`` with a fresh token secret, server key and webhook secret, allowing the
site's Origin and sending its webhooks to the site's ``/rrr/webhook/``),
then the site (``migrate``, ``seed_demo``, ``runserver``). Ctrl-C (or SIGTERM) stops all three.

    python examples/django_site/run.py [--port 8000] [--rrr-port 8888] [--redis-url URL] [--db PATH]
                                       [--same-origin]

Two ways, as docs/guides/django.md describes them:

* by default the site (``--port``) and rrr (``--rrr-port``) are two origins: pages fetch a token
  from the site's token view (``/rrr/token/``) and send it to rrr;
* ``--same-origin`` puts nginx on ``--port`` in front of both (``deploy/nginx-same-origin.conf``:
  ``/_rrr/`` to rrr, the rest to the site, its own ``/static/`` included, which runs on a port of
  its own): the browser sends the site's session cookie to rrr, which asks the site who it is
  (``--connect-proxy-url``, the connect view ``/rrr/connect/``). No token view, no ``getToken``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from deploy.render import render, same_origin  # noqa: E402
from rrr.backplane.embedded import EmbeddedRedis  # noqa: E402


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not answer at {url} within {timeout} s")
        time.sleep(0.1)


def refuse_busy(port: int, option: str) -> None:
    """One line naming the option to change, before anything starts: else whatever already answers on
    the site's port passes for the site, and the banner points at it while Django dies behind it."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"run.py: port {port} on 127.0.0.1 is in use (another make example?): "
                             f"choose another with {option}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(port: int, rrr_port: int, django_port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """nginx on ``port`` in front of rrr and the site: deploy/nginx-same-origin.conf with its three
    CHANGE lines set, in ``nginx.conf.template``'s process settings, all of it in a fresh directory."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                            if os.access(p, os.X_OK)), None)
    if binary is None:
        raise SystemExit("--same-origin needs nginx (on PATH, or /usr/sbin/nginx)")
    run_dir = Path(tempfile.mkdtemp(prefix="rrr-example-nginx-"))
    conf = run_dir / "nginx.conf"
    recipe = run_dir / "same-origin.conf"
    recipe.write_text(same_origin(rrr=f"127.0.0.1:{rrr_port}", django=f"127.0.0.1:{django_port}",
                                  listen=f"127.0.0.1:{port}"))
    conf.write_text(render((HERE / "nginx.conf.template").read_text(), {
        # As root, workers run as root too, so they can read what this user can.
        "user_line": "user root;" if os.geteuid() == 0 else "",
        "run_dir": str(run_dir), "recipe": str(recipe),
    }))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(run_dir), "-e", str(run_dir / "error.log")])
    return proc, run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="the Django site's port (127.0.0.1)")
    parser.add_argument("--rrr-port", type=int, default=8888, help="rrr's port (127.0.0.1)")
    parser.add_argument("--redis-url", default="", help="a Redis to use; empty starts an embedded redis-server")
    parser.add_argument("--db", default="", help="the site's SQLite file (default examples/django_site/db.sqlite3)")
    parser.add_argument("--same-origin", action="store_true",
                        help="nginx on --port in front of rrr and the site; rrr asks the site who a cookie is")
    parser.add_argument("--django-port", type=int, default=0,
                        help="with --same-origin: the site's own port behind nginx (default: a free one)")
    args = parser.parse_args()
    refuse_busy(args.port, "--port")
    refuse_busy(args.rrr_port, "--rrr-port")
    if args.same_origin and args.django_port:
        refuse_busy(args.django_port, "--django-port")

    redis = None
    redis_url = args.redis_url
    if not redis_url:
        redis = EmbeddedRedis().start()
        redis_url = redis.url
    site = f"http://127.0.0.1:{args.port}"
    # Same origin: nginx on --port, the site on a port of its own that only nginx and rrr use.
    django_port = (args.django_port or free_port()) if args.same_origin else args.port
    env = dict(os.environ)
    env.setdefault("RRR_TOKEN_SECRET", secrets.token_urlsafe(32))
    env.setdefault("RRR_API_TOKEN", secrets.token_urlsafe(32))
    env.setdefault("RRR_WEBHOOK_SECRET", secrets.token_urlsafe(32))
    # rrr's Pusher app (--pusher-app-id, --pusher-key, --pusher-secret, read from these by rrr and the site).
    env.setdefault("RRR_PUSHER_APP_ID", "example")
    env.setdefault("RRR_PUSHER_KEY", secrets.token_hex(10))
    env.setdefault("RRR_PUSHER_SECRET", secrets.token_urlsafe(32))
    env["RRR_PUSHER_HOST"] = f"127.0.0.1:{args.rrr_port}"
    env.update(RRR_REDIS_URL=redis_url, RRR_SOCKET_URL=f"ws://127.0.0.1:{args.rrr_port}/ws/", PYTHONUNBUFFERED="1")
    # the site imports rrr.django from this checkout, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if args.db:
        env["EXAMPLE_DB"] = args.db
    rrr_extra: list[str] = []
    if args.same_origin:
        # The pages' socket is /_rrr/ws/ on their own origin (the library beside it, /_rrr/static/js/), and
        # they ask for no token (RRR_CONNECT_PROXY): rrr asks the connect view directly (not through nginx)
        # who each handshake's cookie is. pusher-js connects to /_rrr/app/<key> (its wsPath).
        env.update(RRR_SOCKET_URL="/_rrr/ws/", RRR_CONNECT_PROXY="1", RRR_API_URL=f"http://127.0.0.1:{args.rrr_port}",
                   RRR_PUSHER_HOST=f"127.0.0.1:{args.port}/_rrr")
        rrr_extra = ["--xheaders", "--connect-proxy-url", f"http://127.0.0.1:{django_port}/rrr/connect/"]
    # Both names of the site's host: the browser's Origin is whichever the person typed.
    origins = f"{site},http://localhost:{args.port}"

    procs: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis is not None:
            redis.close()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        rrr = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--address", "127.0.0.1", "--port", str(args.rrr_port),
             "--redis-url", redis_url, "--allowed-origins", origins, *rrr_extra,
             # Events out: the site hears who left when, and since when a page is open (items/receivers.py).
             "--webhook-url", f"{site}/rrr/webhook/"],
            cwd=ROOT, env=env,
        )
        procs.append(rrr)
        wait_http(f"http://127.0.0.1:{args.rrr_port}/healthz", rrr, "rrr")
        manage = [sys.executable, str(HERE / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=HERE, env=env, check=True)
        subprocess.run([*manage, "seed_demo"], cwd=HERE, env=env, check=True)
        django = subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{django_port}"], cwd=HERE,
                                  env=env)
        procs.append(django)
        wait_http(f"http://127.0.0.1:{django_port}/accounts/login/", django, "the Django site")
        if args.same_origin:
            nginx, nginx_dir = start_nginx(args.port, args.rrr_port, django_port)
            procs.append(nginx)
            wait_http(f"{site}/accounts/login/", nginx, f"nginx (its log: {nginx_dir / 'error.log'})")
        print(f"\nThe example site is at {site}/ (rrr at http://127.0.0.1:{args.rrr_port}/). Ctrl-C stops it.",
              flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
