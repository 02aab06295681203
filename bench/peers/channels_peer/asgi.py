"""ASGI entry point for daphne: WebSockets routed to the consumers, HTTP to Django."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.channels_peer.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.urls import re_path  # noqa: E402

django_asgi_app = get_asgi_application()

from .consumers import CountConsumer, RelayConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # No AllowedHostsOriginValidator: the benchmark clients send no Origin, like rrr's bench mode.
        "websocket": URLRouter(
            [
                re_path(r"^ws/count/(?P<room_name>[A-Za-z0-9_-]{1,64})/$", CountConsumer.as_asgi()),
                re_path(r"^ws/relay/(?P<room_name>[A-Za-z0-9_-]{1,64})/$", RelayConsumer.as_asgi()),
            ]
        ),
    }
)
