from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    # the browser library's getToken calls rrr:token (rrr/token/)
    path("rrr/", include("rrr.django.urls")),
    path("", include("items.urls")),
]
