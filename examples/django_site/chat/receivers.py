"""Who is in which chat room, from rrr's webhooks (member_added and member_removed of the chat's presence
rooms, sent to ``/rrr/webhook/`` as rrr.django's signals): a message counts as unread for every reader
not in its room (chat/views.py), and coming back to a room clears its count, in every tab of that user."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.dispatch import receiver

from rrr.django.signals import member_added, member_removed

from .models import Present
from .unread import clear
from .rooms import is_chat_room


def _user(room: str, user_id: str | None) -> Any:
    if not is_chat_room(room) or user_id is None or not user_id.isdigit():
        return None
    return get_user_model().objects.filter(pk=int(user_id)).first()


@receiver(member_added)
def came(sender: Any, room: str, user_id: str | None, at: datetime, **kwargs: Any) -> None:
    user = _user(room, user_id)
    if user is not None:
        Present.objects.get_or_create(room=room, user=user)
        clear(user, room)


@receiver(member_removed)
def left(sender: Any, room: str, user_id: str | None, at: datetime, **kwargs: Any) -> None:
    user = _user(room, user_id)
    if user is not None:
        Present.objects.filter(room=room, user=user).delete()
