"""``manage.py create_item USER TITLE [--rollback]``: what a background job would do.

With ``--rollback`` the item is created and its notifications queued inside a transaction that
then fails: the row is gone and, since they were queued with ``publish_on_commit``, nobody hears of it.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from items.notify import create_item


class Rollback(Exception):
    pass


class Command(BaseCommand):
    help = "Create an item as USER (notifying the other users on commit); --rollback: roll it back instead."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user")
        parser.add_argument("title")
        parser.add_argument("--rollback", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.get(username=options["user"])
        try:
            with transaction.atomic():
                item = create_item(user, options["title"])
                if options["rollback"]:
                    raise Rollback
        except Rollback:
            self.stdout.write(f"rolled back item {item.pk}")
            return
        self.stdout.write(f"created item {item.pk}")
