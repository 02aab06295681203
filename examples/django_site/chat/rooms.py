"""The chat's rooms and who may use them. rrr judges the socket side from the token (``RRR_GRANTS`` =
`grants`), and the views judge the site side with the same answer (`may_use`), so a page cannot post to,
read or whisper in a room whose token it would not get."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from rrr.django.tokens import default_grants

#: The rooms everyone may use: name → title. Presence rooms, so each says who is in it.
ROOMS = {"general": "General", "random": "Random"}

PUBLIC_PREFIX = "presence-chat-"
PAIR_PREFIX = "presence-dm-"


def public_room(name: str) -> str:
    return f"{PUBLIC_PREFIX}{name}"


def pair_room(a: Any, b: Any) -> str:
    """The room of two users, the same whoever opens it: ``presence-dm-<lower pk>-<higher pk>``.
    A presence room, so each sees whether the other is there, and a whisper (typing) may go in it."""
    low, high = sorted((int(getattr(a, "pk", a)), int(getattr(b, "pk", b))))
    return f"{PAIR_PREFIX}{low}-{high}"


def pair_of(room: str) -> tuple[int, int] | None:
    """The two user pks of a pair room's name, or None for any other name."""
    if not room.startswith(PAIR_PREFIX):
        return None
    low, sep, high = room[len(PAIR_PREFIX):].partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or int(low) >= int(high):
        return None
    return int(low), int(high)


def is_chat_room(room: str) -> bool:
    return room in {public_room(name) for name in ROOMS} or pair_of(room) is not None


def readers(room: str) -> QuerySet[Any]:
    """The active users who may read ``room``: everyone for a public room, the two for a pair room."""
    users = get_user_model().objects.filter(is_active=True)
    pair = pair_of(room)
    if pair is not None:
        return users.filter(pk__in=pair)
    return users if is_chat_room(room) else users.none()


def may_use(user: Any, room: str) -> bool:
    return bool(user.is_authenticated and user.is_active and readers(room).filter(pk=user.pk).exists())


def grants(user: Any) -> dict[str, Any]:
    """The example site's ``RRR_GRANTS``: rrr.django's defaults (the user's private room, the site's
    presence room), then the chat's public rooms and one pair room with each other active user, each
    granted by its exact name: the token a third user gets never names the pair room of two others,
    so rrr refuses it that room (``forbidden``). A user added later is in the others' tokens from
    their next refresh (the browser library refreshes at 80 % of ``RRR_TOKEN_TTL``)."""
    granted = default_grants(user)
    others = get_user_model().objects.filter(is_active=True).exclude(pk=user.pk).values_list("pk", flat=True)
    chat = [public_room(name) for name in ROOMS] + [pair_room(user.pk, other) for other in others.order_by("pk")]
    return {**granted, "rooms": [*granted["rooms"], *chat]}
