"""``path("rrr/", include("rrr.django.urls"))``: ``rrr:token`` is the token view (``/rrr/token/``),
``rrr:connect`` the connect proxy view (``/rrr/connect/``) rrr's ``--connect-proxy-url`` names, and
``rrr:webhook`` (``/rrr/webhook/``) the view rrr's ``--webhook-url`` points at."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "rrr"
urlpatterns = [
    path("token/", views.token, name="token"),
    path("connect/", views.connect, name="connect"),
    path("webhook/", views.webhook, name="webhook"),
]
