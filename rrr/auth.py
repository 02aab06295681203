"""Tokens: who a socket is, and which rooms it may read and publish to.

Standard JWTs (RFC 7519), verified with PyJWT. ``--token-secret`` enables HS256;
``--token-public-key`` (PEM) enables RS256/ES256, so rrr can verify tokens it cannot mint.
Rooms named ``private-<rest>`` or ``presence-<rest>`` need a grant; every other room is
public. This module is pure: no Redis, no sockets; revocation (which needs Redis) is
checked by the caller with `Identity.issued_at`.

Claims:

* ``sub``: the user id, a string of at most 128 characters (required);
* ``exp``: required, checked with no leeway; ``iat`` and ``nbf``: optional; each a finite number
  of seconds between 0 and the end of year 9999, and ``iat`` at most `IAT_SKEW` s ahead (a token
  "issued" later than any sign-out would escape them all);
* ``info``: an optional JSON object of at most 1 KiB encoded, shown to other members;
* ``rooms`` / ``publish``: grants, each an exact slug or a prefix ending in ``*``.

Unknown claims are ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from .protocol import is_presence_room, needs_grant

__all__ = ["Grants", "Identity", "TokenError", "Verifier", "is_presence_room", "mint", "needs_grant"]

SUB_MAX = 128
INFO_MAX = 1024
GRANTS_MAX = 100
#: The largest time a numeric claim may hold: 9999-12-31T23:59:59Z (as PyJWT's datetimes allow).
TIME_MAX = 253_402_300_799
#: How far ahead of our clock a token's ``iat`` may be (the issuer's clock may run a little fast).
IAT_SKEW = 60.0
HMAC_ALGORITHMS = ("HS256",)
KEY_ALGORITHMS = ("RS256", "ES256")


class TokenError(ValueError):
    """A token we refuse; ``reason`` says why in words a developer can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grants:
    """Exact room names and prefixes (a grant ``"private-user-42-*"`` is the prefix ``private-user-42-``)."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any, claim: str) -> Grants:
        if value is None:
            return cls()
        if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
            raise TokenError(f"'{claim}' must be a list of room names or prefixes ending in '*'")
        if len(value) > GRANTS_MAX:
            raise TokenError(f"'{claim}' has more than {GRANTS_MAX} grants")
        exact = frozenset(g for g in value if not g.endswith("*"))
        prefixes = tuple(sorted({g[:-1] for g in value if g.endswith("*")}))
        return cls(exact, prefixes)

    def allows(self, room: str) -> bool:
        return room in self.exact or any(room.startswith(p) for p in self.prefixes)


@dataclass(frozen=True)
class Identity:
    """A verified token's meaning."""

    user: str
    expires: float
    issued_at: float | None = None
    info: dict[str, Any] | None = None
    info_json: str = "null"
    rooms: Grants = field(default_factory=Grants)
    publish: Grants = field(default_factory=Grants)

    def may_read(self, room: str) -> bool:
        """A ``publish`` grant implies read (README, the ``publish`` claim): a publisher that cannot
        see the room it writes to surprises, and only the backend mints tokens. Not the reverse."""
        return not needs_grant(room) or self.rooms.allows(room) or self.publish.allows(room)

    def may_publish(self, room: str) -> bool:
        return self.publish.allows(room)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires


def issued_before(identity: Identity, revoked_at: float | None) -> bool:
    """Whether ``identity``'s token was issued before its user's last revocation (at ``revoked_at``,
    None: never or long ago); a token without ``iat`` counts as issued before."""
    return revoked_at is not None and (identity.issued_at is None or identity.issued_at < revoked_at)


@dataclass(frozen=True)
class Verifier:
    """Checks tokens against the configured keys. With no key, every token is refused
    (and private and presence rooms with it); public rooms need none."""

    secret: str = ""
    public_key: str = ""
    max_age: float = 24 * 3600

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.public_key)

    def verify(self, token: object, now: float | None = None) -> Identity:
        if not self.enabled:
            raise TokenError("this server verifies no tokens (no --token-secret or --token-public-key)")
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise TokenError("token must be a JWT string of at most 8 KiB")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenError(f"token is not a JWT: {e}") from None
        alg = header.get("alg")
        if alg in HMAC_ALGORITHMS and self.secret:
            key: str = self.secret
        elif alg in KEY_ALGORITHMS and self.public_key:
            key = self.public_key
        else:
            raise TokenError(f"token algorithm {str(alg)[:16]!r} is not accepted here")
        now = time.time() if now is None else now
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], leeway=0,
                # The times are judged in _identity, against ``now`` and with their range checked.
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_iat": False,
                         "verify_aud": False, "verify_iss": False, "verify_nbf": False},
            )
        except jwt.PyJWTError as e:
            raise TokenError(f"token refused: {e}") from None
        return self._identity(claims, now)

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > SUB_MAX:
            raise TokenError(f"'sub' must be a string of 1 to {SUB_MAX} characters")
        exp = _number(claims.get("exp"), "exp")
        if exp is None:
            raise TokenError("'exp' is required")
        if now >= exp:  # no leeway: an expired token never extends anything
            raise TokenError("token has expired")
        if exp - now > self.max_age:
            raise TokenError(f"'exp' lies more than {self.max_age:.0f} s ahead (--token-max-age)")
        iat = _number(claims.get("iat"), "iat")
        if iat is not None and iat > now + IAT_SKEW:
            raise TokenError(f"'iat' lies more than {IAT_SKEW:.0f} s ahead of this server's clock")
        nbf = _number(claims.get("nbf"), "nbf")
        if nbf is not None and now < nbf:
            raise TokenError("token is not valid yet ('nbf')")
        info = claims.get("info")
        info_json = "null"
        if info is not None:
            if not isinstance(info, dict):
                raise TokenError("'info' must be a JSON object")
            info_json = json.dumps(info, separators=(",", ":"), ensure_ascii=False)
            try:
                size = len(info_json.encode("utf-8"))
            except UnicodeEncodeError:
                raise TokenError("'info' holds text that is not valid Unicode (a lone surrogate)") from None
            if size > INFO_MAX:
                raise TokenError(f"'info' is over {INFO_MAX} bytes encoded")
        return Identity(
            user=sub, expires=exp, issued_at=iat, info=info, info_json=info_json,
            rooms=Grants.parse(claims.get("rooms"), "rooms"), publish=Grants.parse(claims.get("publish"), "publish"),
        )


def _number(value: Any, claim: str) -> float | None:
    """A NumericDate as a float, or refused: ``NaN`` (JSON parsers take it) compares false with
    everything, so an ``exp`` of NaN never expired (its timer re-armed at once, forever) and an
    ``iat`` of NaN was never before a sign-out; ``1e400`` parses as infinity and ``10**400`` as an
    int that no float holds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenError(f"'{claim}' must be a number (seconds since the epoch)")
    # Compared before any conversion: float() of a huge int raises, and NaN fails every comparison.
    if not 0 <= value <= TIME_MAX:
        raise TokenError(f"'{claim}' must be a finite number of seconds from 0 to {TIME_MAX} (year 9999)")
    return float(value)


def mint(
    sub: str, *, secret: str, rooms: Iterable[str] = (), publish: Iterable[str] = (),
    info: dict[str, Any] | None = None, ttl: float = 3600, now: float | None = None,
) -> str:
    """An HS256 token the server accepts (what `rrr.client.token` returns)."""
    now = time.time() if now is None else now
    # iat to the microsecond (a NumericDate may have a fraction): a sign-out is compared with it, and
    # a token minted right after one must not look issued in the second that began before it.
    claims: dict[str, Any] = {"sub": sub, "iat": round(now, 6), "exp": int(now + ttl), "rooms": list(rooms)}
    if publish:
        claims["publish"] = list(publish)
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")
