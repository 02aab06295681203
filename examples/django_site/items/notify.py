"""What the site tells people live: every other user hears of a new item, in their own room."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from rrr.django import publish_on_commit
from rrr.django.tokens import private_room

from .models import Item


def create_item(user: object, title: str) -> Item:
    """Create an item and tell every other active user, once the transaction commits (inside a
    caller's transaction that later rolls back, nobody hears of it)."""
    with transaction.atomic():
        item = Item.objects.create(title=title, created_by=user)
        data = {"type": "item_created", "item": item.pk, "title": item.title, "by": item.created_by.get_username()}
        for other in get_user_model().objects.filter(is_active=True).exclude(pk=item.created_by.pk):
            publish_on_commit(private_room(other), data)
    return item
