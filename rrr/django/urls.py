"""``path("rrr/", include("rrr.django.urls"))``: ``rrr:token`` is the token view (``/rrr/token/``),
``rrr:connect`` the connect proxy view (``/rrr/connect/``) rrr's ``--connect-proxy-url`` names, and
``rrr:webhook`` (``/rrr/webhook/``) the view rrr's ``--webhook-url`` points at; ``rrr:pusher-auth``
(``/rrr/pusher/auth/``) and ``rrr:pusher-user-auth`` (``/rrr/pusher/user-auth/``) the channel
authorization and user authentication endpoints of pusher-js and Laravel Echo."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "rrr"
urlpatterns = [
    path("token/", views.token, name="token"),
    path("connect/", views.connect, name="connect"),
    path("webhook/", views.webhook, name="webhook"),
    path("pusher/auth/", views.pusher_auth, name="pusher-auth"),
    path("pusher/user-auth/", views.pusher_user_auth, name="pusher-user-auth"),
]
