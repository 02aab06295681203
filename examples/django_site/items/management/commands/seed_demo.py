"""``manage.py seed_demo``: the demo's users (idempotent). Passwords are for a laptop demo only."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

USERS = ["alice", "bob", "carol", "dave"]
PASSWORD = "demo-pass"


class Command(BaseCommand):
    help = "Create the demo users alice, bob, carol, dave and the superuser admin (password: demo-pass)."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for name in [*USERS, "admin"]:
            user, created = User.objects.get_or_create(username=name)
            if created:
                user.set_password(PASSWORD)
                user.is_staff = user.is_superuser = name == "admin"
                user.save()
        self.stdout.write(f"users: {', '.join([*USERS, 'admin'])} (password {PASSWORD!r})")
