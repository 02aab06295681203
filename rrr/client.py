"""What a backend (Django or any Python program) imports to talk to rrr."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .auth import mint


def token(
    sub: str, *, rooms: Iterable[str], publish: Iterable[str] = (), info: dict[str, Any] | None = None,
    ttl: float = 3600, secret: str,
) -> str:
    """A token rrr accepts (HS256 with ``--token-secret``): ``sub`` is the user, ``rooms`` and
    ``publish`` its grants (exact slugs, or prefixes ending in ``*``), ``info`` what other
    members of a presence room see."""
    return mint(sub, secret=secret, rooms=rooms, publish=publish, info=info, ttl=ttl)
