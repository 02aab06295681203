"""Every signature in the Pusher protocol: one HMAC-SHA256 with the app secret, over four strings.

* Channel authorization: ``auth`` = ``<key>:<hex HMAC(secret, "<socket_id>:<channel>")>``, with
  ``":<channel_data>"`` appended when the app server sent presence data along. The client cannot
  forge it (it lacks the secret) nor reuse it on another connection (the socket id is signed).
* User authentication (``pusher:signin``): ``<key>:<hex HMAC(secret, "<socket_id>::user::<user_data>")>``.
* HTTP API requests: ``auth_signature`` = hex HMAC of ``METHOD\\nPATH\\n<query sorted by key>``.
* Webhooks: ``X-Pusher-Signature`` = hex HMAC of the exact body bytes.

The strings are signed exactly as sent (``channel_data`` and ``user_data`` are JSON text the app
server produced; they are never re-encoded before checking), because the SDKs sign their own
serialisation: Python's ``json.dumps`` puts spaces after ``:`` and ``,``, Node's ``JSON.stringify``
does not, and either must verify. What the SDKs do is the contract, checked in the tests against
the real ``pusher`` package.

Comparisons are constant-time (`hmac.compare_digest`); the error messages say what should have
been signed (as Pusher's do), never what the right signature is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote_plus

from ..protocol import parse_uint

#: The only HTTP API signature version there is.
AUTH_VERSION = "1.0"
#: HTTP API requests are accepted while ``auth_timestamp`` is less than this many seconds from
#: the server's clock (either way), as Pusher does; a captured request cannot be replayed later.
TIMESTAMP_GRACE = 600
#: More query parameters than any API call has: a request with more is refused before any work.
QUERY_PARAMS_MAX = 100
#: The ``pusher`` Python SDK's `validate_webhook` drops webhooks whose ``time_ms`` is further than
#: this from its clock: a webhook retried later must be signed again with a fresh ``time_ms``.
WEBHOOK_MAX_AGE_MS = 300_000

_AUTH_PARAMS = frozenset({"auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5"})


def hmac_hex(secret: str, message: str | bytes) -> str:
    """Lower-case hex HMAC-SHA256; text is signed as UTF-8, as every SDK does."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    # compare_digest refuses non-ASCII str; a client can send anything, so compare bytes.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- channel authorization and user authentication (the socket) -------------------------------


class AuthError(ValueError):
    """An ``auth`` string we refuse; ``message`` is sent back to the client as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def channel_string_to_sign(socket_id: str, channel: str, channel_data: str | None = None) -> str:
    """``channel_data`` counts only when non-empty: the SDKs leave an empty one out of what they
    sign (Python tests ``if custom_data``)."""
    text = f"{socket_id}:{channel}"
    return text + ":" + channel_data if channel_data else text


def channel_auth(key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None) -> str:
    """What an app server's authorization endpoint answers in ``auth`` (the SDKs' ``authenticate``)."""
    return key + ":" + hmac_hex(secret, channel_string_to_sign(socket_id, channel, channel_data))


def user_string_to_sign(socket_id: str, user_data: str) -> str:
    return f"{socket_id}::user::{user_data}"


def user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    """What an app server's user-authentication endpoint answers in ``auth`` (``authenticate_user``)."""
    return key + ":" + hmac_hex(secret, user_string_to_sign(socket_id, user_data))


def verify_channel_auth(
    key: str, secret: str, socket_id: str, channel: str, auth: object, channel_data: str | None = None,
) -> None:
    """Raise `AuthError` unless ``auth`` was signed with our secret for this socket and channel
    (and this exact ``channel_data``)."""
    _verify_auth(key, secret, auth, channel_string_to_sign(socket_id, channel, channel_data))


def verify_user_auth(key: str, secret: str, socket_id: str, auth: object, user_data: str) -> None:
    """Raise `AuthError` unless ``auth`` signs this ``user_data`` for this socket."""
    _verify_auth(key, secret, auth, user_string_to_sign(socket_id, user_data))


def _verify_auth(key: str, secret: str, auth: object, string_to_sign: str) -> None:
    if not isinstance(auth, str) or not auth:
        raise AuthError("auth is required: '<app key>:<signature>' from your authorization endpoint")
    given_key, sep, signature = auth.rpartition(":")
    if not sep:
        raise AuthError("auth must be '<app key>:<signature>'")
    if not _same(given_key, key):
        raise AuthError(f"Invalid key {_clip(given_key)!r} in auth: it is not this app's key")
    if not _same(signature.lower(), hmac_hex(secret, string_to_sign)):
        raise AuthError(
            f"Invalid signature: expected HMAC SHA256 hex digest of {string_to_sign!r}, "
            f"but got {_clip(signature)!r}"
        )


# -- HTTP API requests ------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP API request we refuse: answer ``status`` with ``message`` as plain text, as Pusher does
    (400 malformed, 401 authentication, 403 forbidden, 413 too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ApiRequest:
    """A request whose signature checked out. ``params`` are its other query parameters (keys in
    lower case, values URL-decoded), ``body`` the bytes whose MD5 was signed."""

    key: str
    params: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def api_string_to_sign(method: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    """``METHOD\\nPATH\\nk1=v1&k2=v2``: keys lower-cased and sorted, nothing URL-encoded,
    ``auth_signature`` left out (Pusher's HTTP API reference, "Generating authentication signatures")."""
    pairs = sorted((k.lower(), v) for k, v in params if k.lower() != "auth_signature")
    return "\n".join((method.upper(), path, "&".join(f"{k}={v}" for k, v in pairs)))


def body_md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def sign_api_request(
    method: str, path: str, params: Mapping[str, str], body: bytes, *, key: str, secret: str, timestamp: int,
    with_body_md5: bool | None = None,
) -> str:
    """The signed query string for a request (what a server SDK appends to the URL).

    ``with_body_md5``: None sends ``body_md5`` only with a body (as the Node SDK does); True also
    on an empty body (as the Python SDK does). Values are URL-encoded here, where the signature
    covers them decoded: `verify_api_request` accepts both this and the SDKs' raw form.
    """
    signed = dict(params)
    reserved = _AUTH_PARAMS.intersection(k.lower() for k in signed)
    if reserved:
        raise ValueError(f"{sorted(reserved)} are set by the signature, not by the caller")
    signed.update({"auth_key": key, "auth_timestamp": str(timestamp), "auth_version": AUTH_VERSION})
    if with_body_md5 or (with_body_md5 is None and body):
        signed["body_md5"] = body_md5(body)
    signature = hmac_hex(secret, api_string_to_sign(method, path, signed.items()))
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(signed.items()))
    return query + "&auth_signature=" + signature


def verify_api_request(
    method: str, path: str, query: str, body: bytes, *, key: str, secret: str, now: float,
    grace: int = TIMESTAMP_GRACE,
) -> ApiRequest:
    """Check an HTTP API request's signature; raise `ApiError` (400 or 401) if it does not hold.

    ``path`` is the path exactly as in the request line and ``query`` the raw query string (after
    ``?``, still URL-encoded): the SDKs sign those. The Python and Node SDKs put values in the URL
    without encoding them, while a client that encodes properly signs the decoded values; both are
    accepted, since each is what its sender signed and neither can be produced without the secret.

    ``body_md5`` is required with a non-empty body and checked whenever present: the Python SDK
    sends the MD5 of the empty body on a GET, the Node SDK sends none.
    """
    pairs = _query_pairs(query)
    params = _unique(pairs.decoded)
    given_key = params.get("auth_key")
    if given_key is None:
        raise ApiError(401, "Missing parameter: auth_key")
    if not _same(given_key, key):
        raise ApiError(401, "Unknown auth_key")
    version = params.get("auth_version")
    if version is None:
        raise ApiError(401, "Version required")
    if version != AUTH_VERSION:
        raise ApiError(401, "Version not supported")
    _check_timestamp(params.get("auth_timestamp"), now, grace)
    given = params.get("auth_signature", "").lower()
    expected = api_string_to_sign(method, path, pairs.decoded)
    if not _same(given, hmac_hex(secret, expected)):
        # Signed as sent, undecoded (an SDK that does not URL-encode, and a value holding "+" or "%"):
        # then the values are what the sender meant, undecoded too.
        as_sent = api_string_to_sign(method, path, pairs.raw)
        if pairs.raw == pairs.decoded or not _same(given, hmac_hex(secret, as_sent)):
            raise ApiError(
                401,
                f"Invalid signature: you should have sent HmacSHA256Hex({expected!r}, your_secret_key), "
                f"but you sent {_clip(given)!r}",
            )
        params = _unique(pairs.raw)
    md5 = params.get("body_md5")
    if md5 is not None:
        if not _same(md5.lower(), body_md5(body)):
            raise ApiError(401, "Invalid body_md5: it is not the MD5 of the request body")
    elif body:
        raise ApiError(401, "Missing parameter: body_md5 (required with a request body)")
    rest = {k: v for k, v in params.items() if k not in _AUTH_PARAMS}
    return ApiRequest(key=key, params=rest, body=body)


def _unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise ApiError(400, f"Duplicate query parameter {_clip(k)!r}")
        params[k] = v
    return params


@dataclass(frozen=True)
class _Pairs:
    raw: list[tuple[str, str]]
    decoded: list[tuple[str, str]]


def _query_pairs(query: str) -> _Pairs:
    pieces = [p for p in query.split("&") if p]
    if len(pieces) > QUERY_PARAMS_MAX:
        raise ApiError(400, f"Too many query parameters (at most {QUERY_PARAMS_MAX})")
    raw: list[tuple[str, str]] = []
    decoded: list[tuple[str, str]] = []
    for piece in pieces:
        k, _, v = piece.partition("=")
        raw.append((k.lower(), v))
        try:
            decoded.append((unquote_plus(k, errors="strict").lower(), unquote_plus(v, errors="strict")))
        except UnicodeDecodeError:
            raise ApiError(400, "Query string is not valid UTF-8 once decoded") from None
    return _Pairs(raw, decoded)


def _check_timestamp(value: str | None, now: float, grace: int) -> None:
    if value is None:
        raise ApiError(401, "Timestamp required")
    try:
        stamp = parse_uint(value)
    except ValueError:
        raise ApiError(401, f"Invalid auth_timestamp {_clip(value)!r}: expected seconds since 1970 UTC") from None
    if abs(stamp - int(now)) >= grace:
        raise ApiError(
            401,
            f"Timestamp expired: Given timestamp ({_iso(stamp)}) not within {grace}s of server time ({_iso(now)})",
        )


def _iso(stamp: float) -> str:
    try:
        return datetime.fromtimestamp(int(stamp), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(int(stamp))


# -- webhooks ---------------------------------------------------------------------------------


class WebhookError(ValueError):
    """A webhook the receiver must not act on."""


def sign_webhook(secret: str, body: bytes) -> str:
    """``X-Pusher-Signature``: the HMAC of the exact bytes sent, so the receiver checks the body
    before parsing it."""
    return hmac_hex(secret, body)


def webhook_headers(key: str, secret: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Pusher-Key": key,
        "X-Pusher-Signature": sign_webhook(secret, body),
    }


def verify_webhook(
    key: str, secret: str, header_key: str | None, signature: str | None, body: bytes, *, now_ms: float,
    max_age_ms: int = WEBHOOK_MAX_AGE_MS,
) -> dict[str, Any]:
    """The webhook's payload if it is ours and fresh, as the Python SDK's ``validate_webhook``
    decides; `WebhookError` otherwise. For receivers written in Python without the SDK, and to
    check what `webhooks.webhook_body` produces."""
    if header_key is None or not _same(header_key, key):
        raise WebhookError("X-Pusher-Key is not this app's key")
    if signature is None or not _same(signature.lower(), sign_webhook(secret, body)):
        raise WebhookError("X-Pusher-Signature does not match the body")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WebhookError("body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookError("body is not a JSON object")
    time_ms = payload.get("time_ms")
    if isinstance(time_ms, bool) or not isinstance(time_ms, (int, float)) or abs(now_ms - time_ms) > max_age_ms:
        raise WebhookError(f"time_ms is missing or more than {max_age_ms} ms from now")
    if not isinstance(payload.get("events"), list):
        raise WebhookError("events must be a list")
    return payload
