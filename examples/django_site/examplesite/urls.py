from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    # rrr:token (rrr/token/), which the browser library's getToken calls, and rrr:connect
    # (rrr/connect/), which rrr's --connect-proxy-url names (run.py --same-origin)
    path("rrr/", include("rrr.django.urls")),
    path("chat/", include("chat.urls")),  # the site chat (docs/guides/chat.md)
    path("", include("items.urls")),
]
