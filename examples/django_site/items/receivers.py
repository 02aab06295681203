"""What rrr's webhooks change here (connected in ItemsConfig.ready): each user's "last seen" and
since when each page's room has been occupied. rrr sends them to ``/rrr/webhook/`` (run.py points
its ``--webhook-url`` there), and the view sends these signals once per event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.dispatch import receiver

from rrr.django.signals import member_removed, room_occupied, room_vacated

from .models import LastSeen, Occupancy

#: The site's presence room ("Online now", settings.RRR_PRESENCE_ROOMS).
SITE_ROOM = "presence-site"


@receiver(member_removed)
def remember_last_seen(sender: Any, room: str, user_id: str | None, at: datetime, **kwargs: Any) -> None:
    """The user's last tab left the site (a member_removed of ``presence-site``)."""
    if room != SITE_ROOM or user_id is None or not user_id.isdigit():
        return
    if get_user_model().objects.filter(pk=int(user_id)).exists():
        LastSeen.objects.update_or_create(user_id=int(user_id), defaults={"at": at})


@receiver(room_occupied)
def occupied(sender: Any, room: str, at: datetime, **kwargs: Any) -> None:
    Occupancy.objects.update_or_create(room=room, defaults={"since": at})


@receiver(room_vacated)
def vacated(sender: Any, room: str, **kwargs: Any) -> None:
    Occupancy.objects.filter(room=room).delete()
