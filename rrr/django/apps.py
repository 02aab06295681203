from __future__ import annotations

from django.apps import AppConfig


class RrrConfig(AppConfig):
    """``INSTALLED_APPS = [..., "rrr.django"]``: the token view, the ``{% load rrr %}`` tags and the
    static helper module ``rrr/django.js``."""

    name = "rrr.django"
    label = "rrr_django"
    verbose_name = "rrr (live presence and messages)"
