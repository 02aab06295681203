from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

#: What one message may hold: the cap on what a user can make the site store per message.
MAX_TEXT = 2000


class Message(models.Model):
    """A chat message: the record (a reload renders the room from here); rrr's history only bridges a
    dropped connection."""

    room = models.CharField(max_length=164, db_index=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_messages")
    text = models.CharField(max_length=MAX_TEXT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.author} in {self.room}: {self.text[:40]}"

    def as_data(self) -> dict[str, Any]:
        """What the pages get, live (rrr) and on catching up (the messages view): one shape for both."""
        return {"type": "chat", "id": self.pk, "room": self.room, "author": str(self.author_id),
                "name": self.author.get_username(), "text": self.text, "at": self.created_at.isoformat()}


class Present(models.Model):
    """A user is in a chat room (at least one tab, anywhere): rrr's member_added creates the row, its
    member_removed deletes it (chat/receivers.py). Who is not here gets an unread count."""

    room = models.CharField(max_length=164)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="chat_present_once")]


class Unread(models.Model):
    """How many messages of a room arrived while the user was not in it."""

    room = models.CharField(max_length=164)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="chat_unread_once")]
