"""The admin: items, and users with a "sign out everywhere" action."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.sessions.models import Session
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from rrr.django.api import disconnect_user
from rrr.errors import BackplaneError

from .models import Item, LastSeen


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["title", "created_by", "created_at"]


def end_sessions(user_ids: set[str]) -> int:
    """Delete the Django sessions of these users (the database session backend), so neither the
    token view nor the connect view vouches for their browsers any more: the live page cannot come
    back as them, with a fresh token or with its cookie."""
    ended = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if str(session.get_decoded().get("_auth_user_id")) in user_ids:
            session.delete()
            ended += 1
    return ended


@admin.action(description="Sign out everywhere (sessions and live connections)")
def sign_out_everywhere(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> None:
    users = list(queryset)
    end_sessions({str(u.pk) for u in users})
    failed = []
    for user in users:
        try:
            disconnect_user(user)
        except BackplaneError as e:
            failed.append(f"{user.get_username()} ({e})")
    if failed:
        modeladmin.message_user(request, "rrr did not sign out: " + "; ".join(failed), messages.ERROR)
    else:
        names = ", ".join(u.get_username() for u in users)
        modeladmin.message_user(request, f"Signed out everywhere: {names}", messages.SUCCESS)


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class LiveUserAdmin(UserAdmin):
    actions = [sign_out_everywhere]
    list_display = (*UserAdmin.list_display, "last_seen_at")

    @admin.display(description="last seen", ordering="last_seen__at")
    def last_seen_at(self, user: Any) -> Any:
        """When the user's last tab left the site (rrr's member_removed webhook)."""
        try:
            return user.last_seen.at
        except LastSeen.DoesNotExist:
            return None
