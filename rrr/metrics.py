"""Prometheus metrics, one registry per application.

A registry per app (not the global default) lets two apps live in one test
process, and keeps /metrics free of whatever else imported prometheus_client.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


#: The ``limit`` label values of ``rrr_limited_total``, one per cap.
LIMITS = (
    "tabs_per_room", "subscriptions_per_socket", "subscriptions_per_ip", "rooms", "sockets_per_ip",
    "message_rate", "publish_rate", "publish_rate_per_ip", "api_rate", "history_bytes",
    "client_history", "presence_list_rate", "members",
)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.open_sockets = Gauge("rrr_open_sockets", "Open WebSocket connections", registry=r)
        self.subscriptions = Gauge("rrr_subscriptions", "Subscriptions (tabs) held by this process", registry=r)
        self.rooms = Gauge("rrr_rooms", "Rooms with at least one local subscriber", registry=r)
        self.transports = Gauge(
            "rrr_sockets_by_transport", "Open sockets by the transport the client reported",
            ["transport"], registry=r,
        )
        self.sessions = Gauge(
            "rrr_open_sessions", "SSE streams and long-polling sessions held here (each is in rrr_open_sockets too)",
            ["transport"], registry=r,
        )
        self.handoffs = Counter(
            "rrr_handoffs", "Requests for a session another process holds, handed to it through Redis, by result "
            "(the owner's HTTP status, or gone, timeout, unavailable)", ["op", "result"], registry=r,
        )
        self.messages_in = Counter("rrr_messages_in", "Frames received from clients", registry=r)
        self.messages_out = Counter("rrr_messages_out", "Frames sent to clients", registry=r)
        self.relayed = Counter("rrr_relayed_messages", "Room messages received from Redis", registry=r)
        self.history_replayed = Counter(
            "rrr_history_replayed", "Messages sent again from history (a resubscribe's since, or a gap here)",
            registry=r,
        )
        self.history_gaps = Counter(
            "rrr_history_gaps", "Live messages that arrived after a gap, which was then read from history", registry=r,
        )
        self.history_resets = Counter(
            "rrr_history_resets", "Subscriptions told recovered: false (history lost, trimmed, or no since)",
            registry=r,
        )
        self.count_broadcasts = Counter("rrr_count_broadcasts", "Coalesced count broadcasts to a room", registry=r)
        self.redis_reconnects = Counter("rrr_redis_reconnects", "Pub/sub connection re-establishments", registry=r)
        self.redis_errors = Counter("rrr_redis_errors", "Failed Redis calls", ["op"], registry=r)
        self.malformed_payloads = Counter("rrr_malformed_payloads", "Non-JSON payloads dropped from Redis", registry=r)
        self.oversized_messages = Counter(
            "rrr_oversized_messages",
            "Messages from Redis over --max-message-size, not delivered (live, or each time a replay met one)",
            registry=r,
        )
        self.slow_client_disconnects = Counter(
            "rrr_slow_client_disconnects",
            "Clients cut off for not reading: over --send-buffer queued, or a replay stalled for a ping interval",
            registry=r,
        )
        self.ping_timeouts = Counter(
            "rrr_ping_timeouts", "Sockets closed because they sent nothing for a whole ping interval", registry=r,
        )
        self.presence_expired = Counter(
            "rrr_presence_expired", "Dead processes whose presence this process swept", registry=r,
        )
        self.client_errors = Counter("rrr_client_errors", "Error replies sent to clients", ["code"], registry=r)
        self.task_errors = Counter(
            "rrr_task_errors", "Failures of long-lived tasks (each logged, then retried or restarted)", ["task"],
            registry=r,
        )
        self.redis_oom = Gauge(
            "rrr_redis_oom", "1 while Redis refuses writes at maxmemory (its last probe write failed OOM)", registry=r,
        )
        self.health = Gauge("rrr_health_check", "Each /healthz check at its last run (1 ok, 0 failing)", ["check"],
                            registry=r)
        self.limited = Counter(
            "rrr_limited", "Requests refused by a cap or a rate limit (see docs/reference/caps.md)", ["limit"],
            registry=r,
        )
        for limit in LIMITS:
            self.limited.labels(limit)  # every series exists from the start, at 0, for alerts
        self.connect_proxy_calls = Counter(
            "rrr_connect_proxy_calls", "Calls to --connect-proxy-url by result: user, anonymous, refused (401/403), "
            "failed (no usable answer)", ["result"], registry=r,
        )
        self.subscribe_proxy_calls = Counter(
            "rrr_subscribe_proxy_calls", "Calls to --subscribe-proxy-url by result: allowed, denied, failed",
            ["result"], registry=r,
        )
        for result in ("user", "anonymous", "refused", "failed"):
            self.connect_proxy_calls.labels(result)
        for result in ("allowed", "denied", "failed"):
            self.subscribe_proxy_calls.labels(result)
        self.tracked_addresses = Gauge(
            "rrr_tracked_addresses", "Per-client-address entries held for caps and rate limits", registry=r,
        )
        # The HTTP server's own guards (rrr/edge/guard.py).
        self.http_open_connections = Gauge(
            "rrr_http_open_connections", "Client TCP connections held open (HTTP and WebSocket)", registry=r,
        )
        self.http_max_connections = Gauge(
            "rrr_http_max_connections", "The connection cap (--max-connections, or the one derived)", registry=r,
        )
        self.connections_shed = Counter(
            "rrr_connections_shed", "Connections answered 503 and closed at --max-connections", registry=r,
        )
        self.accept_errors = Counter(
            "rrr_accept_errors", "accept() failures (EMFILE: out of descriptors); each pauses accepting", ["errno"],
            registry=r,
        )
        self.http_timeouts = Counter(
            "rrr_http_timeouts", "Connections closed for sending no request (idle) or too slow a head (header)",
            ["phase"], registry=r,
        )

        # Events out (rrr/webhooks.py): every series exists from the start, at 0, for alerts.
        self.webhook_events = Counter(
            "rrr_webhook_events", "Events that became final and went to the outbox (this process sending)", ["name"],
            registry=r,
        )
        for name in ("channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event",
                     "cache_miss"):
            self.webhook_events.labels(name)
        self.webhook_requests = Counter(
            "rrr_webhook_requests", "Webhook requests by outcome: ok (2xx), error (any other answer, or none), timeout",
            ["outcome"], registry=r,
        )
        for outcome in ("ok", "error", "timeout"):
            self.webhook_requests.labels(outcome)
        self.webhook_backlog = Gauge(
            "rrr_webhook_backlog", "Events in Redis not yet delivered to every webhook URL (as the sender last said)",
            registry=r,
        )
        self.webhook_dropped = Counter(
            "rrr_webhook_dropped", "Events dropped: expired (past --webhook-retry-for, per URL), backlog (over "
            "--webhook-backlog, the oldest) or unrecorded (a client_event or cache_miss Redis refused)", ["reason"],
            registry=r,
        )
        for reason in ("expired", "backlog", "unrecorded"):
            self.webhook_dropped.labels(reason)

    def bind_gauges(self, sockets: Callable[[], float], subs: Callable[[], float], rooms: Callable[[], float]) -> None:
        """Read gauges from the hub at scrape time instead of updating them on every subscription."""
        self.open_sockets.set_function(sockets)
        self.subscriptions.set_function(subs)
        self.rooms.set_function(rooms)

    def render(self) -> bytes:
        return generate_latest(self.registry)
