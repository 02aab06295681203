"""The views ``rrr.django.urls`` serves: the token the browser library's ``getToken`` calls, the
connect proxy view rrr itself calls (``--connect-proxy-url``), and the webhook rrr's
``--webhook-url`` points at."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from ..auth import Grants
from ..protocol import dumps
from ..pusher import names
from ..pusher.signing import WebhookError, channel_auth, user_auth, verify_webhook
from .connect import resolve
from .signals import BY_EVENT
from .tokens import grants_function, token_for

log = logging.getLogger("rrr.django")

try:
    from django.contrib.auth.decorators import login_not_required
except ImportError:  # Django < 5.1 has no LoginRequiredMiddleware, so nothing to be exempted from

    def login_not_required(view_func: Any) -> Any:
        return view_func


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
    POSTs here learns nothing about anyone it could not already act as (docs/guides/django.md)."""
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


#: Seconds an event id is remembered, so a retry of what was handled is dropped: longer than the
#: service retries an event (``--webhook-retry-for``, an hour by default).
REMEMBER = 2 * 3600


@csrf_exempt
@login_not_required
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    """rrr's webhooks (Pusher's format): the key (``RRR_WEBHOOK_KEY``, else ``RRR_PUSHER_KEY``, else
    ``rrr``, as the service defaults its ``--webhook-key``), the signature of the exact body and ``time_ms``
    within 300 s are checked (401 otherwise), each event's ``id`` is claimed in Django's cache
    (``RRR_WEBHOOK_CACHE``, default ``default``; an id is remembered ``RRR_WEBHOOK_REMEMBER``
    seconds, two hours by default, so a retry of an event already handled is dropped), and each
    new one sends its signal (`rrr.django.signals`). A receiver that raises: 500, and that event
    and those after it are not remembered, so rrr's retry brings them again."""
    # As the service defaults them: the Pusher app's key and secret when it is one.
    secret = str(getattr(settings, "RRR_WEBHOOK_SECRET", "") or getattr(settings, "RRR_PUSHER_SECRET", "") or "")
    if not secret:
        raise ImproperlyConfigured("RRR_WEBHOOK_SECRET is not set (the rrr service's --webhook-secret)")
    key = str(getattr(settings, "RRR_WEBHOOK_KEY", "") or getattr(settings, "RRR_PUSHER_KEY", "") or "rrr")
    try:
        payload = verify_webhook(
            key, secret, request.headers.get("X-Pusher-Key"), request.headers.get("X-Pusher-Signature"),
            request.body, now_ms=time.time() * 1000,
        )
    except WebhookError as e:
        return JsonResponse({"error": str(e)}, status=401)
    cache = caches[str(getattr(settings, "RRR_WEBHOOK_CACHE", "default"))]
    remember = int(getattr(settings, "RRR_WEBHOOK_REMEMBER", REMEMBER))
    handled = dropped = 0
    for event in payload["events"]:
        if not (isinstance(event, dict) and isinstance(event.get("id"), str) and event.get("name") in BY_EVENT):
            continue  # an event this site does not know (a newer service): not ours to refuse
        claim = f"rrr:webhook:{event['id']}"
        if not cache.add(claim, 1, remember):
            dropped += 1
            continue
        try:
            _send(event)
        except Exception:
            cache.delete(claim)
            log.exception("a receiver of rrr's %s failed; rrr will send it again", event["name"])
            return JsonResponse({"error": "a receiver failed", "handled": handled}, status=500)
        handled += 1
    return JsonResponse({"handled": handled, "duplicates": dropped})


def _send(event: dict[str, Any]) -> None:
    at_ms = event.get("at_ms")
    at = datetime.fromtimestamp(at_ms / 1000, timezone.utc) if isinstance(at_ms, (int, float)) else None
    user = event.get("user_id")
    BY_EVENT[event["name"]].send(
        sender=webhook, room=str(event.get("channel")), user_id=None if user is None else str(user), at=at,
    )


def _pusher_app() -> tuple[str, str]:
    key = str(getattr(settings, "RRR_PUSHER_KEY", "") or "")
    secret = str(getattr(settings, "RRR_PUSHER_SECRET", "") or "")
    if not (key and secret):
        raise ImproperlyConfigured("RRR_PUSHER_KEY and RRR_PUSHER_SECRET are not set (the service's --pusher-key "
                                   "and --pusher-secret)")
    return key, secret


def _refused(status: int, why: str) -> HttpResponse:
    return HttpResponse(why, status=status, content_type="text/plain; charset=utf-8")


@never_cache
@require_POST
def pusher_auth(request: HttpRequest) -> HttpResponse:
    """pusher-js's (and Laravel Echo's) channel authorization: ``socket_id`` and ``channel_name``,
    form-encoded, from a signed-in user (403 otherwise), CSRF-checked as any cookie-authenticated
    POST. A private or presence channel is signed (``{"auth"[, "channel_data"]}``) when the user's
    grants (``RRR_GRANTS``, the token view's) cover it, as their token's ``rooms`` would; in a
    presence channel the user is ``str(user.pk)``, showing the grants' ``info``. Encrypted channels
    need an encryption master key this view does not hold: 403."""
    if not request.user.is_authenticated:
        return _refused(403, "sign in first")
    socket_id, channel = request.POST.get("socket_id", ""), request.POST.get("channel_name", "")
    if not names.is_valid_socket_id(socket_id) or not names.is_valid_channel_name(channel):
        return _refused(400, "socket_id (<digits>.<digits>) and channel_name (a channel name) are required")
    if not names.is_private_channel(channel) or names.is_encrypted_channel(channel):
        return _refused(403, "only private- and presence- channels are authorized here")
    grants = grants_function()(request.user)
    if not Grants.parse(list(grants.get("rooms", ())), "rooms").allows(channel):
        return _refused(403, "your grants do not cover this channel")
    key, secret = _pusher_app()
    if not names.is_presence_channel(channel):
        return JsonResponse({"auth": channel_auth(key, secret, socket_id, channel)})
    channel_data = dumps({"user_id": str(request.user.pk), "user_info": grants.get("info")})
    return JsonResponse({"auth": channel_auth(key, secret, socket_id, channel, channel_data),
                         "channel_data": channel_data})


@never_cache
@require_POST
def pusher_user_auth(request: HttpRequest) -> HttpResponse:
    """pusher-js's user authentication (``pusher.signin()``): ``socket_id`` in, ``{"auth",
    "user_data"}`` out for the signed-in user (``id`` its pk, ``user_info`` its grants' ``info``)."""
    if not request.user.is_authenticated:
        return _refused(403, "sign in first")
    socket_id = request.POST.get("socket_id", "")
    if not names.is_valid_socket_id(socket_id):
        return _refused(400, "socket_id (<digits>.<digits>) is required")
    key, secret = _pusher_app()
    user_data = dumps({"id": str(request.user.pk), "user_info": grants_function()(request.user).get("info")})
    return JsonResponse({"auth": user_auth(key, secret, socket_id, user_data), "user_data": user_data})
