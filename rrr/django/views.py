"""The view the browser library's ``getToken`` calls."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .tokens import token_for


@never_cache
@require_GET
def token(request: HttpRequest) -> HttpResponse:
    """A fresh token for ``request.user`` as ``text/plain``; 403 for anonymous users (no redirect
    to the login page: a script asks, and a script must see the refusal)."""
    if not request.user.is_authenticated:
        return HttpResponseForbidden("sign in first", content_type="text/plain; charset=utf-8")
    return HttpResponse(token_for(request.user), content_type="text/plain; charset=utf-8")
