"""Who may join what: the grants in each user's token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from rrr import client
from rrr.auth import split_secrets

Grants = dict[str, Any]


def private_room(user: Any) -> str:
    """The user's own room, ``private-user-<pk>``: what `publish_on_commit` addresses to one user."""
    return f"private-user-{user.pk}"


def default_grants(user: Any) -> Grants:
    """The user's own private room and every room in ``RRR_PRESENCE_ROOMS``; no publishing;
    ``info.name`` (what other members of a presence room see) is the username."""
    presence = list(getattr(settings, "RRR_PRESENCE_ROOMS", []))
    bad = [room for room in presence if not room.startswith("presence-")]
    if bad:
        raise ImproperlyConfigured(f"RRR_PRESENCE_ROOMS must name presence-… rooms, not {bad}")
    return {"rooms": [private_room(user), *presence], "publish": [], "info": {"name": user.get_username()}}


def grants_function() -> Callable[[Any], Grants]:
    value = getattr(settings, "RRR_GRANTS", None)
    if value is None:
        return default_grants
    if isinstance(value, str):
        value = import_string(value)
    if not callable(value):
        raise ImproperlyConfigured("RRR_GRANTS must be a callable or the dotted path of one")
    return value


def secret() -> str:
    """The first secret of ``RRR_TOKEN_SECRET``. The setting usually mirrors the service's
    ``RRR_TOKEN_SECRET``, and during a rotation that is ``new,old``: the service verifies with each,
    tokens are signed with the new one."""
    value = split_secrets(str(getattr(settings, "RRR_TOKEN_SECRET", "") or ""))
    if not value:
        raise ImproperlyConfigured("RRR_TOKEN_SECRET is not set (the rrr service's --token-secret)")
    return value[0]


def token_for(user: Any) -> str:
    """A fresh token for ``user`` (signed in), with the grants of ``RRR_GRANTS``."""
    grants = grants_function()(user)
    return client.token(
        str(user.pk),
        rooms=grants.get("rooms", ()),
        publish=grants.get("publish", ()),
        info=grants.get("info"),
        ttl=float(getattr(settings, "RRR_TOKEN_TTL", 3600)),
        secret=secret(),
    )
