"""The floor of the stack rrr is built on: a bare Tornado ``WebSocketHandler`` with an empty ``open()``.

    python -m bench.tornado_floor --port 8890 [--loop auto]

What a join costs when nothing but Tornado's HTTP and WebSocket layers runs: the accept, the
request, the 101, and the frame loop's first read. ``bench.handshake_cost --floor`` starts one
next to ``app.py`` and measures both in the same runs (a floor join is done at the 101, having no
count to send). ``/ws/count/<room>/`` and ``/ws/`` are both the bare handler; ``/healthz``
answers 200, as ``app.py``'s does, so the tools can wait for it the same way. ``--loop`` as
``app.py``'s (auto: uvloop when installed), and the garbage collector's thresholds as an rrr
process sets them (`rrr.workers.tune_gc`; ``--gc default`` keeps CPython's, under which a storm
into a process holding thousands of sockets spends a third of its CPU in full collections), so
the two differ only in what runs above Tornado. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import tornado.web
import tornado.websocket

from rrr.workers import tune_gc


class Bare(tornado.websocket.WebSocketHandler):
    def open(self, *args: str) -> None:
        pass


class Healthy(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("ok")


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/ws/count/([^/]+)/", Bare), (r"/ws/", Bare), (r"/healthz", Healthy)])
    server = app.listen(port, address="127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"))
    ap.add_argument("--gc", default="rrr", choices=("rrr", "default"), help="rrr's thresholds or CPython's")
    args = ap.parse_args()
    if args.gc == "rrr":
        tune_gc()
    factory = None
    if args.loop != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if args.loop == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed") from None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
