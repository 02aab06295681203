"""Reduce, Reuse, Recycle: live room presence and pub/sub relay over Tornado and Redis.

Run ``python app.py`` and open the URL it prints. Every option is also read from
an ``RRR_<NAME>`` environment variable (``--redis-url`` from ``RRR_REDIS_URL``);
the command line wins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import tornado.netutil
import tornado.web
from tornado.options import define, options

from handlers.api import (
    DisconnectHandler, HealthHandler, MembersHandler, MetricsHandler, NotFoundHandler, PublishHandler, RoomHandler,
)
from handlers.base import SecureStaticFileHandler, guard_hosts, room_route
from handlers.pages import CountPageHandler, IndexHandler
from handlers import pusher_api
from handlers.pusher import PusherSocket
from handlers.sockets import CountSocket, OriginCheck, RelaySocket
from handlers.transports import (
    PollOpenHandler, SessionHandler, SseCountHandler, SseHandler, TransportNotFound, Transports,
)
from rrr import workers
from rrr.edge.guard import default_max_connections, make_http_server
from rrr.edge.handoff import Handoff
from rrr.edge.headers import parse_hosts
from rrr.edge.keepalive import Keepalive
from rrr.edge.origins import parse_origins
from rrr.edge.requestlog import RequestLog, install_filters
from rrr.edge.sessions import Sessions
from rrr.jwks import JwksKeys, verifier_from_options
from rrr.limits import AddressLimits, Limits
from rrr.protocol import BROWSER_PREFIX, SLUG_PATTERN
from rrr.proxies import proxies_from_options
from rrr.pusher.door import pusher_app
from rrr.service import Service, Settings
from rrr.session import Shared
from rrr.webhooks import webhook_settings

ROOT = Path(__file__).resolve().parent

define("address", default="127.0.0.1", help="address to listen on")
define("port", default=8888, type=int, help="port to listen on (0: any free port)")
define(
    "backlog", default=1024, type=int,
    help="connections the kernel queues before we accept them (capped by net.core.somaxconn); beyond it "
    "a reconnect storm's SYNs are dropped and each such client waits a second or more to retry",
)
define(
    "redis_url", default="",
    help="redis://, rediss://, unix:// or redis+sentinel:// URL; empty starts an embedded redis-server",
)
define("allowed_origins", default="", help="comma list of extra allowed Origins ('*' for any); same origin always")
define("xheaders", default=False, type=bool, help="trust X-Real-IP/X-Forwarded-For/-Proto/-Host (behind nginx)")
define(
    "api_token", default="",
    help="server key (Bearer) for publishing and for private/presence rooms' API; empty disables those",
)
define("publish_token", default="", help="the older name of --api-token (used when --api-token is empty)")
define("client_publish", default=False, type=bool, help="let browsers publish to rooms over /ws/")
define("publish_rate", default=10.0, type=float, help="client publishes per second per socket (burst: 2x)")
define("presence_ttl", default=15.0, type=float, help="seconds a dead process's presence may outlive it")
define("count_interval", default=0.1, type=float, help="at most one count broadcast per room per interval (s)")
define(
    "write_interval", default=0.01, type=float,
    help="at most one batch of presence writes to Redis per interval (s); a new socket is counted once its "
    "batch is written, so this paces a join storm; 0: each batch as soon as the one before it is written",
)
define(
    "count_rate", default=20_000.0, type=float,
    help="most count frames per second per room, all processes together: a big room's broadcasts are spaced "
    "sockets/rate s apart, never less than --count-interval (0: no limit)",
)
define("sweep_interval", default=1.0, type=float, help="how often each process sweeps dead processes' presence (s)")
define(
    "ping_interval", default=20.0, type=float,
    help="WebSocket ping period (s); a peer silent for a period after a ping is dropped; keep under proxy timeouts",
)
define("max_message_size", default=65536, type=int, help="largest client frame or publish body (bytes)")
define("send_buffer", default=1 << 20, type=int, help="bytes buffered for a client that stops reading, then cut")
define("max_subscriptions", default=1000, type=int, help="subscriptions per socket")
define("redis_timeout", default=2.0, type=float, help="seconds before a Redis call is abandoned")
define(
    "redis_pool_size", default=32, type=int,
    help="Redis connections for requests (lease renewal and pub/sub have their own); callers beyond wait",
)
# Caps: everything an anonymous client can make us hold or do has a price (docs/reference/caps.md).
define("max_tabs_per_room", default=50, type=int, help="subscriptions (tabs) per socket per room")
define("max_rooms", default=10000, type=int, help="rooms with local subscribers per process (0: no cap)")
define("message_rate", default=50.0, type=float, help="client frames per second per socket, pings included (0: off)")
define("message_burst", default=100, type=int, help="client frames a socket may send at once before --message-rate")
define("max_sockets_per_ip", default=0, type=int, help="open sockets per client address (0: off; nginx limit_conn)")
define("max_subscriptions_per_ip", default=0, type=int, help="subscriptions per client address (0: off)")
define("publish_rate_per_ip", default=100.0, type=float, help="client publishes per second per address (burst: 2x)")
define("api_rate", default=100.0, type=float, help="GET /api/rooms/<slug> per second per address (0: off)")
define("api_burst", default=200, type=int, help="GET /api/rooms/<slug> a client address may send at once")
define(
    "history_read_rate", default=8 << 20, type=int,
    help="bytes per second of history GET /api/rooms/<slug>/messages sends one client address (0: off)",
)
define(
    "history_read_burst", default=16 << 20, type=int,
    help="bytes of history a client address may read at once before --history-read-rate applies",
)
define(
    "client_history_per_ip", default=32 << 20, type=int,
    help="bytes of history client publishes of one address may hold in Redis, per process (0: no cap)",
)
define(
    "client_history_max", default=256 << 20, type=int,
    help="bytes of history all client publishes may hold in Redis, per process (0: no cap)",
)
define(
    "presence_list_rate", default=1.0, type=float,
    help="presence-room subscriptions and member pages per second per socket, each sent a page of members (0: off)",
)
define(
    "presence_list_burst", default=20, type=int,
    help="presence-room subscriptions and member pages a socket may ask for at once",
)
define(
    "presence_list_max", default=1000, type=int,
    help="most members in one presence frame: the first page a subscription gets, each page asked for, each piece "
    "of a diff; and the default and largest limit of GET /api/rooms/<slug>/members",
)
define("max_members", default=0, type=int, help="users per presence room; the next is refused (0: no cap)")
define("log_level", default="info", help="debug, info, warning or error")
define("processes", default=1, type=int, help="worker processes sharing the port (0: one per CPU core)")
define(
    "loop", default="auto",
    help="event loop of each process: auto (uvloop when installed, else asyncio's), uvloop, asyncio",
)
# HTTP hardening: host allow-list, timeouts and the connection cap (rrr/edge/guard.py).
define("header_timeout", default=10.0, type=float, help="seconds from a request's first byte to its blank line")
define("body_timeout", default=30.0, type=float, help="seconds to receive a request body")
define("idle_timeout", default=60.0, type=float, help="seconds a connection may wait before sending a request")
define(
    "max_connections", default=0, type=int,
    help="open connections before new ones get 503 and close (0: the descriptor limit less headroom)",
)
# Identity (rrr/auth.py, rrr/jwks.py): with no key, private and presence rooms are refused.
define(
    "token_secret", default="",
    help="HS256 secret that verifies client tokens (JWT); a comma list verifies with each (rotation)",
)
define(
    "token_public_key", default="",
    help="PEM file with the public key (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA) that verifies client tokens",
)
define(
    "token_jwks_url", default="",
    help="https:// (or loopback http://) URL of a JWK Set, e.g. an OIDC provider's .well-known/jwks.json: its "
    "RS256/ES256/EdDSA keys verify client tokens, chosen by kid",
)
define("token_audience", default="", help="when set, a token's aud must be or contain it")
define("token_issuer", default="", help="when set, a token's iss must equal it")
define("token_max_age", default=24 * 3600.0, type=float, help="refuse tokens whose exp lies further ahead (s)")
# The application asked (rrr/proxies.py): who a handshake's cookie is, whether a socket may join a room.
define(
    "connect_proxy_url", default="",
    help="http(s) URL rrr POSTs a handshake's Cookie/Authorization to, when it carries no token; the answer "
    "(user, exp, info, rooms, publish) identifies the socket as a token would",
)
define("connect_proxy_timeout", default=2.0, type=float, help="seconds to wait for the connect proxy (then 503)")
define(
    "subscribe_proxy_url", default="",
    help="http(s) URL rrr POSTs a subscription to a --subscribe-proxy-rooms room to, when the socket's grants "
    "do not cover it; the answer allows or refuses it",
)
define(
    "subscribe_proxy_rooms", default="",
    help="comma list of private-/presence- room prefixes the subscribe proxy is asked about",
)
define("subscribe_proxy_timeout", default=2.0, type=float,
       help="seconds to wait for the subscribe proxy (then unavailable)")
define("history_size", default=100, type=int, help="messages kept per room for recovery (0: history off)")
define("history_ttl", default=300.0, type=float, help="seconds a room's history outlives its last message (0: off)")
define("allowed_hosts", default="", help="comma list of Host names served ('.example.com': and subdomains; '*')")
# The fallback transports, /sse/ and /poll/ (handlers/transports.py, rrr/edge/sessions.py).
define("sse_keepalive", default=15.0, type=float, help="seconds an SSE stream may be silent before a comment (0: none)")
define(
    "poll_timeout", default=25.0, type=float,
    help="seconds a long poll with nothing to take waits before answering empty (under 60); a session nobody "
    "polls for this + 10 s ends",
)
# Events out (rrr/webhooks.py): webhooks in Pusher's format when a room fills and empties, and who comes and goes.
define("webhook_url", default="", help="comma list of URLs each sent every event (empty: events off)")
define("webhook_key", default="", help="sent as X-Pusher-Key (default: the Pusher app key if configured, else rrr)")
define("webhook_secret", default="", help="HMAC-SHA256 key that signs webhooks (default: the Pusher app secret)")
define(
    "webhook_events", default="",
    help="comma list of the events sent: channel_occupied, channel_vacated, member_added, member_removed "
    "(default: all)",
)
define("webhook_retry_for", default=3600.0, type=float, help="seconds an event is retried from when it was stored")
define("webhook_timeout", default=5.0, type=float, help="seconds a receiver has to answer a webhook request")
define("webhook_batch", default=50, type=int, help="events per webhook request, at most")
define(
    "webhook_backlog", default=100_000, type=int, help="events Redis holds for webhooks at most (then the oldest go)",
)
define(
    "vacate_delay", default=2.0, type=float,
    help="seconds a room or a member must stay gone before it is reported gone (and the member list's leave grace)",
)
# The Pusher protocol (rrr/pusher): Pusher's client and server SDKs, unchanged, against rrr.
define("pusher_app_id", default="", help="the Pusher app id the HTTP API answers to (with --pusher-key and "
       "--pusher-secret: all three turn the Pusher endpoint /app/<key> and API /apps/<id>/ on)")
define("pusher_key", default="", help="the Pusher app key clients connect with (/app/<key>)")
define("pusher_secret", default="", help="the Pusher app secret that signs channel auth, sign-ins and API calls")
define("pusher_client_events", default=True, type=bool,
       help="let Pusher clients send client-* events on private and presence channels (and rrr clients whispers)")
define("cache_ttl", default=1800.0, type=float, help="seconds a cache channel keeps its last event")


def make_app(**overrides: Any) -> tornado.web.Application:
    """The Tornado application and the service behind it (``app.settings["service"]``, not yet
    started); ``overrides`` replace option values. ``main()`` and the tests both build it here."""
    o = {name: options[name] for name in options.as_dict()}
    o.update(overrides)
    verifier = verifier_from_options(o)  # first: a bad key file or URL raises before anything starts
    proxies_from_options(o)  # the same for the proxies' URLs and rooms
    webhooks = webhook_settings(o)
    pusher = pusher_app(o)
    if not 0 < o["poll_timeout"] < 60:
        raise ValueError("--poll-timeout must be above 0 and under 60 s (the browser library waits 60 s for a poll)")
    service = Service(
        Settings(
            redis_url=o["redis_url"],
            presence_ttl=o["presence_ttl"],
            count_interval=o["count_interval"],
            write_interval=o["write_interval"],
            count_rate=o["count_rate"],
            sweep_interval=o["sweep_interval"],
            redis_timeout=o["redis_timeout"],
            redis_pool_size=o["redis_pool_size"],
            history_size=o["history_size"],
            history_ttl=o["history_ttl"],
            max_message_size=o["max_message_size"],
            presence_list_max=max(1, o["presence_list_max"]),
            # Not options: tests shorten them to see reconnects quickly.
            pubsub_keepalive=o.get("pubsub_keepalive", 5.0),
            backoff_cap=o.get("backoff_cap", 5.0),
            vacate_delay=o["vacate_delay"],
            webhooks=webhooks,
            cache_ttl=o["cache_ttl"],
        )
    )
    metrics = service.metrics
    connect_proxy, subscribe_proxy = proxies_from_options(o, metrics)
    addresses = AddressLimits(
        max_sockets=o["max_sockets_per_ip"],
        max_subscriptions=o["max_subscriptions_per_ip"],
        publish_rate=o["publish_rate_per_ip"],
        publish_burst=2 * o["publish_rate_per_ip"],
        api_rate=o["api_rate"],
        api_burst=o["api_burst"],
        history_read_rate=o["history_read_rate"],
        history_read_burst=o["history_read_burst"],
        client_history_per_ip=o["client_history_per_ip"],
        client_history_max=o["client_history_max"],
        history_ttl=o["history_ttl"] if o["history_size"] > 0 else 0.0,
    )
    metrics.tracked_addresses.set_function(addresses.tracked)
    api_token = o["api_token"] or o["publish_token"]
    shared = Shared(
        hub=service.hub,
        limits=Limits(
            client_publish=o["client_publish"],
            publish_rate=o["publish_rate"],
            publish_burst=2 * o["publish_rate"],
            max_subscriptions=o["max_subscriptions"],
            max_tabs_per_room=o["max_tabs_per_room"],
            max_rooms=o["max_rooms"],
            message_rate=o["message_rate"],
            message_burst=o["message_burst"],
            presence_list_rate=o["presence_list_rate"],
            presence_list_burst=o["presence_list_burst"],
            max_members=o["max_members"],
            whispers=o["pusher_client_events"],
        ),
        addresses=addresses,
        verifier=verifier,
        metrics=metrics,
        history=service.history,
        reads=service.presence,
        connect_proxy=connect_proxy,
        subscribe_proxy=subscribe_proxy,
        events_out=service.webhooks,
    )
    # Replays (and member lists) a socket may be owed at once: one whole history's worth.
    bulk_limit = o["history_size"] * o["max_message_size"]
    sockets = dict(
        shared=shared,
        keepalive=Keepalive(o["ping_interval"], on_timeout=metrics.ping_timeouts.inc),
        allowed_origins=parse_origins(o["allowed_origins"]),
        send_buffer=o["send_buffer"],
        bulk_limit=bulk_limit,
        xheaders=o["xheaders"],
    )
    # SSE and long-polling: sessions are sockets to the core; a request for one held by another
    # process is handed to it through Redis (rrr/edge/handoff.py).
    sessions = Sessions(
        shared, service.process_tag, send_buffer=o["send_buffer"], bulk_limit=bulk_limit,
        poll_timeout=o["poll_timeout"], sse_keepalive=o["sse_keepalive"],
        max_sessions=o["max_connections"] or default_max_connections(),
    )
    handoff = Handoff(
        sessions, service.presence, metrics, timeout=2 * o["redis_timeout"] + 5,
        # On a Redis Cluster, PUBLISH counts one node's listeners only (rrr.backplane.clients: the cluster schemes).
        counts_receivers=not o["redis_url"].lower().startswith(("redis+cluster:", "rediss+cluster:")),
    )
    service.events.on_inbox = handoff.inbox
    service.settles.append(handoff.settle)
    service.drains.append(handoff.drain)
    transports = dict(transports=Transports(
        sessions, handoff, shared, parse_origins(o["allowed_origins"]), o["xheaders"], o["max_message_size"],
    ))

    def browser_routes(prefix: str) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
        """The sockets, their fallbacks, the Pusher socket and the browser library, under ``prefix``."""
        return [
            (rf"{prefix}/ws/", RelaySocket, sockets),
            # Whether the sockets take a page's Origin: the library asks after a handshake failed.
            (
                rf"{prefix}/ws/origin", OriginCheck,
                dict(allowed_origins=sockets["allowed_origins"], xheaders=sockets["xheaders"]),
            ),
            (rf"{prefix}/sse/", SseHandler, transports),
            (rf"{prefix}/sse/([^/]{{1,300}})/", SessionHandler, dict(transports, kind="sse")),
            (rf"{prefix}/poll/", PollOpenHandler, transports),
            (rf"{prefix}/poll/([^/]{{1,300}})/", SessionHandler, dict(transports, kind="poll")),
            (rf"{prefix}/(?:sse|poll)/.*", TransportNotFound, {}),
            *([(rf"{prefix}/app/([^/]{{1,200}})", PusherSocket, dict(sockets, pusher=pusher))] if pusher else []),
            # The bare /static/ is Tornado's own (static_path below); a site's /static/ is its own.
            *([(rf"{prefix}/static/(.*)", SecureStaticFileHandler, dict(path=str(ROOT / "static")))] if prefix else []),
        ]

    # One line per request, with no query string (tokens travel in it) and a bounded path, and
    # refusals at most once per 30 s per kind (rrr/edge/requestlog.py); handlers log errors through it too.
    request_log = RequestLog()
    install_filters()
    app = tornado.web.Application(
        [
            (r"/", IndexHandler),
            room_route("/count/{room}/", CountPageHandler, dict(client_publish=o["client_publish"])),
            room_route("/ws/count/{room}/", CountSocket, sockets),
            room_route("/sse/count/{room}/", SseCountHandler, transports),
            # What a site's pages use, at the bare paths and again under /_rrr/ (BROWSER_PREFIX), the
            # one prefix a site proxies when rrr shares its origin (deploy/nginx-same-origin.conf).
            *(
                rule
                for prefix in ("", BROWSER_PREFIX)
                for rule in browser_routes(prefix)
            ),
            room_route(
                "/api/rooms/{room}", RoomHandler,
                dict(reads=service.presence, metrics=metrics, rate=addresses.api, token=api_token),
            ),
            room_route(
                "/api/rooms/{room}/members", MembersHandler,
                dict(reads=service.presence, token=api_token, list_max=max(1, o["presence_list_max"])),
            ),
            (
                r"/api/users/([^/]{1,128})/disconnect", DisconnectHandler,
                dict(reads=service.presence, token=api_token, keep_for=o["token_max_age"]),
            ),
            room_route(
                "/api/rooms/{room}/messages",
                PublishHandler,
                dict(
                    history=service.history, metrics=metrics, token=api_token, max_size=o["max_message_size"],
                    rate=addresses.api,
                    history_bytes=addresses.history_bytes,
                ),
            ),
            *(pusher_api.routes(pusher, service.history, service.presence, o["token_max_age"]) if pusher else []),
            (r"/healthz", HealthHandler, dict(health=service.health, info=service.info)),
            (r"/metrics", MetricsHandler, dict(metrics=metrics)),
            # The talk's own page and SharedWorker, unchanged (examples/talk/README.md).
            (
                rf"/examples/talk/(?:{SLUG_PATTERN})/(.*)",
                SecureStaticFileHandler,
                dict(path=str(ROOT / "examples" / "talk"), default_filename="index.html"),
            ),
        ],
        default_handler_class=NotFoundHandler,
        template_path=str(ROOT / "templates"),
        static_path=str(ROOT / "static"),
        static_handler_class=SecureStaticFileHandler,
        xheaders=o["xheaders"],
        # Pings come from one Keepalive timer per process instead of a Task per socket.
        websocket_ping_interval=None,
        websocket_max_message_size=o["max_message_size"],
        service=service,
        # Fetched by main() at start (JwksKeys.start), then kept current.
        jwks=verifier.jwks,
        log_function=request_log,
        request_log=request_log,
        # What make_http_server needs, from the same options (main() and the tests both use it).
        http_server=dict(
            xheaders=o["xheaders"],
            # Publish bodies over --max-message-size get a 413; far bigger ones are cut off unread.
            max_body_size=max(2 * o["max_message_size"], 1 << 20),
            header_timeout=o["header_timeout"], body_timeout=o["body_timeout"], idle_timeout=o["idle_timeout"],
            max_connections=o["max_connections"],
        ),
    )
    guard_hosts(app, parse_hosts(o["allowed_hosts"]), o["xheaders"])
    return app


def check_options() -> None:
    """Run once the command line is parsed, before any worker forks or Redis starts: an option rrr
    cannot use stops it with one line naming the option, not a traceback in every worker."""
    o = {name: options[name] for name in options.as_dict()}
    try:
        verifier_from_options(o)
        proxies_from_options(o)
        webhook_settings(o)
        pusher_app(o)
        if not 0 < options.poll_timeout < 60:
            raise ValueError("--poll-timeout must be above 0 and under 60 s (the library waits 60 s for a poll)")
        workers.loop_factory(options.loop)
    except ValueError as e:
        raise SystemExit(f"rrr: {e}") from None
    if options.presence_list_max < 1:
        raise SystemExit("rrr: --presence-list-max must be at least 1")
    if options.max_members < 0:
        raise SystemExit("rrr: --max-members must be 0 (no cap) or more")


options.add_parse_callback(check_options)


async def main(redis_url: str, sockets: list[socket.socket] | None = None) -> None:
    """One rrr process on ``redis_url``: on ``sockets`` (a worker of ``--processes``, forked by
    `rrr.workers`, which also parses the options and starts the embedded Redis), else on
    ``--address``/``--port`` bound here."""
    log = logging.getLogger("rrr")
    app = make_app(redis_url=redis_url)
    service: Service = app.settings["service"]
    await service.start()
    jwks: JwksKeys | None = app.settings["jwks"]
    if jwks is not None:
        await jwks.start(service.supervisor)
    if sockets is None:
        sockets = tornado.netutil.bind_sockets(options.port, options.address, backlog=options.backlog)
    server = make_http_server(app, service.metrics, **app.settings["http_server"])
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    host = f"[{options.address}]" if ":" in options.address else options.address
    log.info("rrr serving http://%s:%d/ (pid %d, on %s)", host, port, os.getpid(),
             workers.loop_name(asyncio.get_running_loop()))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down: removing presence, closing sockets with 1001")
    server.stop()
    await service.shutdown()
    try:
        await asyncio.wait_for(server.close_all_connections(), 5)
    except asyncio.TimeoutError:
        log.warning("some connections did not close within 5 s")


if __name__ == "__main__":
    sys.exit(workers.run(main))
