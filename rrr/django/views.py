"""The views rrr.django adds: the token view the browser library's ``getToken`` calls, and the
connect proxy view rrr itself calls (``--connect-proxy-url``)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .connect import resolve
from .tokens import token_for


@never_cache
@require_GET
def token(request: HttpRequest) -> HttpResponse:
    """A fresh token for ``request.user`` as ``text/plain``; 403 for anonymous users (no redirect
    to the login page: a script asks, and a script must see the refusal)."""
    if not request.user.is_authenticated:
        return HttpResponseForbidden("sign in first", content_type="text/plain; charset=utf-8")
    return HttpResponse(token_for(request.user), content_type="text/plain; charset=utf-8")


@csrf_exempt
@login_not_required
@never_cache
@require_POST
def connect(request: HttpRequest) -> HttpResponse:
    """rrr's connect proxy: ``{"transport", "headers", "ip"[, "user"]}`` in, the user the
    ``Cookie`` among ``headers`` is signed in as (`rrr.django.connect.resolve`) out.

    Open to any caller, and exempt from CSRF, on purpose: it reads none of its own request's
    cookies, only the one in the body, and answers only who that cookie's holder already is
    (what the token view would tell that holder, signed). An answer is no credential: rrr trusts
    it only as the reply to its own call to the URL its operator configured, so a browser that
    POSTs here learns nothing about anyone it could not already act as (README, "Using rrr from
    Django")."""
    try:
        call: Any = json.loads(request.body)
        headers = call["headers"]
        ip = call.get("ip", "")
        if not (isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in headers.items()) and isinstance(ip, str)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return HttpResponseBadRequest('a JSON object {"transport", "headers": {name: value}, "ip"} is expected',
                                      content_type="text/plain; charset=utf-8")
    return JsonResponse(resolve(request, headers, ip))
