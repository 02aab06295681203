"""Unread counts, kept per user and room, and told to the user's pages in their private room
(``private-user-<pk>``, rrr.django's default grant) as ``{"type": "unread", "room", "count"}``."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F

from rrr.django import publish_on_commit
from rrr.django.tokens import private_room

from .models import Message, Present, Unread
from .rooms import readers


def tell(user: Any, room: str, count: int) -> None:
    publish_on_commit(private_room(user), {"type": "unread", "room": room, "count": count})


def count_for_absent(message: Message) -> None:
    """One more unread for every reader of the message's room who is not in it (no Present row, as rrr's
    webhooks left it) but its author."""
    present = Present.objects.filter(room=message.room).values_list("user_id", flat=True)
    for reader in readers(message.room).exclude(pk=message.author_id).exclude(pk__in=present):
        with transaction.atomic():
            row, _ = Unread.objects.select_for_update().get_or_create(user=reader, room=message.room)
            Unread.objects.filter(pk=row.pk).update(count=F("count") + 1)
            row.refresh_from_db()
            tell(reader, message.room, row.count)


def clear(user: Any, room: str) -> None:
    """Read: the count goes to 0 (and every tab of the user hears it), if it was not already."""
    if Unread.objects.filter(user=user, room=room, count__gt=0).update(count=0):
        tell(user, room, 0)


def counts(user: Any) -> dict[str, int]:
    return dict(Unread.objects.filter(user=user, count__gt=0).values_list("room", "count"))
