from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """The site chat (``/chat/``): rooms, a room per pair of users, typing, history and unread counts,
    all on rrr's public pieces (README "Using rrr from Django", docs/guides/chat.md)."""

    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import receivers  # noqa: F401 - connects rrr's webhook signals
