from __future__ import annotations

from django.conf import settings
from django.db import models


class Item(models.Model):
    title = models.CharField(max_length=200)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="items")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.title


class LastSeen(models.Model):
    """When a user's last tab left the site's presence room ("Online now"): set by rrr's
    member_removed webhook (items/receivers.py)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="last_seen")
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.user} last seen {self.at:%Y-%m-%d %H:%M:%S}"


class Occupancy(models.Model):
    """A room with someone in it, since when: set by rrr's channel_occupied webhook, removed by its
    channel_vacated (items/receivers.py). A page's room is ``page-…`` (items/views.py)."""

    room = models.CharField(max_length=200, primary_key=True)
    since = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.room} since {self.since:%Y-%m-%d %H:%M:%S}"
