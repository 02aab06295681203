#!/usr/bin/env python
"""``make example``: the example Django site next to rrr and its Redis, on this machine.

Starts, in order: a real ``redis-server`` (embedded, on a private unix socket; or ``--redis-url``),
rrr (``python app.py`` with a fresh token secret, server key and webhook secret, allowing the
site's Origin and sending its webhooks to the site's ``/rrr/webhook/``),
then the site (``migrate``, ``seed_demo``, ``runserver``). Ctrl-C (or SIGTERM) stops all three.

    python examples/django_site/run.py [--port 8000] [--rrr-port 8888] [--redis-url URL] [--db PATH]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="the Django site's port (127.0.0.1)")
    parser.add_argument("--rrr-port", type=int, default=8888, help="rrr's port (127.0.0.1)")
    parser.add_argument("--redis-url", default="", help="a Redis to use; empty starts an embedded redis-server")
    parser.add_argument("--db", default="", help="the site's SQLite file (default examples/django_site/db.sqlite3)")
    args = parser.parse_args()

    redis = None
    redis_url = args.redis_url
    if not redis_url:
        redis = EmbeddedRedis().start()
        redis_url = redis.url
    site = f"http://127.0.0.1:{args.port}"
    env = dict(os.environ)
    env.setdefault("RRR_TOKEN_SECRET", secrets.token_urlsafe(32))
    env.setdefault("RRR_API_TOKEN", secrets.token_urlsafe(32))
    env.setdefault("RRR_WEBHOOK_SECRET", secrets.token_urlsafe(32))
    env.update(RRR_REDIS_URL=redis_url, RRR_SOCKET_URL=f"ws://127.0.0.1:{args.rrr_port}/ws/", PYTHONUNBUFFERED="1")
    # the site imports rrr.django from this checkout, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if args.db:
        env["EXAMPLE_DB"] = args.db
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
             "--redis-url", redis_url, "--allowed-origins", origins,
             # Events out: the site hears who left when, and since when a page is open (items/receivers.py).
             "--webhook-url", f"{site}/rrr/webhook/"],
            cwd=ROOT, env=env,
        )
        procs.append(rrr)
        wait_http(f"http://127.0.0.1:{args.rrr_port}/healthz", rrr, "rrr")
        manage = [sys.executable, str(HERE / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=HERE, env=env, check=True)
        subprocess.run([*manage, "seed_demo"], cwd=HERE, env=env, check=True)
        django = subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{args.port}"], cwd=HERE, env=env)
        procs.append(django)
        wait_http(f"{site}/accounts/login/", django, "the Django site")
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
