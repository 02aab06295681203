"""`publish_on_commit`: `rrr.client.publish`, deferred to the end of the transaction."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db import transaction

from rrr import client
from rrr.errors import BackplaneError, OutcomeUnknown


def redis_url() -> str | None:
    return getattr(settings, "RRR_REDIS_URL", None) or None


def publish(room: str, data: Any) -> int:
    """`rrr.client.publish` to ``settings.RRR_REDIS_URL``: the message's offset in the room's history."""
    return client.publish(room, data, redis_url=redis_url())


def publish_on_commit(room: str, data: Any, *, using: str | None = None, robust: bool = True) -> None:
    """See `rrr.django.publish_on_commit`. The room and the payload are checked now (ValueError:
    a bad slug, data that is not JSON, or data over the servers' ``--max-message-size``), so a
    mistake surfaces in the code that made it rather than after the commit, and a copy is taken
    now, so changing ``data`` afterwards does not change the message. (The size is checked against
    what the servers announced in Redis; if Redis does not answer now, the publish after the commit
    checks it, and fails anyway.)

    ``robust`` (default): a publish that fails after the commit (Redis down: `BackplaneError`) is
    logged by Django (logger ``django.db.backends.base``, ERROR) and the other on-commit callbacks
    still run: the rows are saved, so the request should not fail. ``robust=False`` raises it."""
    text = client.encode(room, data)
    try:
        limit = client.max_message_size(redis_url())
    except (BackplaneError, OutcomeUnknown):
        limit = None
    if limit is not None:
        client.check_size(text, limit)
    frozen = json.loads(text)

    def publish_committed() -> None:  # a function, not a partial: Django logs a robust failure by its name
        publish(room, frozen)

    transaction.on_commit(publish_committed, using=using, robust=robust)
