"""rrr for Django: a token view, the connect proxy view, a template tag for the browser library,
`publish_on_commit`, and a webhook view that turns rrr's events into signals (`rrr.django.signals`).

Optional: add ``"rrr.django"`` to ``INSTALLED_APPS`` (``pip install rrr[django]``). Settings:

* ``RRR_REDIS_URL``: the rrr service's Redis (its ``--redis-url``); `publish_on_commit` writes there.
* ``RRR_TOKEN_SECRET``: the service's ``--token-secret``; the token view signs with it (with the
  first of a comma list: the new secret of a rotation).
* ``RRR_SOCKET_URL``: the service's socket, e.g. ``wss://rt.example.com/ws/``, or ``/_rrr/ws/`` when
  nginx serves rrr under the site's own origin (deploy/nginx-same-origin.conf); the template tag
  loads the browser library from beside the socket (``https://rt.example.com/static/js/rrr.js``,
  ``/_rrr/static/js/rrr.js``: never the site's own ``/static/``).
* ``RRR_CONNECT_PROXY`` (``False``): pages connect without a token view and without ``getToken``;
  rrr (``--connect-proxy-url <site>/rrr/connect/``) asks the connect view who the session cookie
  is. Needs the same origin (the browser sends the site's cookie to rrr only then).
* ``RRR_PRESENCE_ROOMS`` (``[]``): the public ``presence-…`` rooms every signed-in user may join.
* ``RRR_GRANTS`` (unset): a callable, or the dotted path of one, ``grants(user) -> dict`` with the
  keys ``rooms``, ``publish`` and ``info`` (see `rrr.django.tokens.default_grants`).
* ``RRR_TOKEN_TTL`` (``3600``): seconds a token lives (the browser library refreshes it); the
  connect view's answers live as long at most (rrr asks again at 80 %).
* ``RRR_API_TOKEN``, ``RRR_API_URL``: the service's ``--api-token`` and its HTTP base URL (default:
  the origin of ``RRR_SOCKET_URL``), for `rrr.django.api.disconnect_user`.
* ``RRR_WEBHOOK_SECRET``, ``RRR_WEBHOOK_KEY`` (``rrr``): the service's ``--webhook-secret`` and
  ``--webhook-key``; the webhook view (``/rrr/webhook/``) checks them and sends the signals of
  `rrr.django.signals`. ``RRR_WEBHOOK_CACHE`` (``default``): the cache that remembers the event ids
  handled, ``RRR_WEBHOOK_REMEMBER`` (``7200``) seconds each.

Importing this package imports nothing of Django's settings; `rrr.client` never needs Django.
"""

from __future__ import annotations

from typing import Any

__all__ = ["publish_on_commit"]


def publish_on_commit(room: str, data: Any, *, using: str | None = None, robust: bool = True) -> None:
    """Publish ``data`` to ``room`` once the current database transaction commits (at once outside
    one); a rolled-back transaction publishes nothing, so no page hears of a row that never was.
    A bad room or payload (not JSON, or over the servers' ``--max-message-size``) raises ValueError
    now; a failed publish after the commit is logged (``robust=False``: raised). See
    `rrr.django.publish.publish_on_commit`."""
    from .publish import publish_on_commit as impl

    impl(room, data, using=using, robust=robust)
