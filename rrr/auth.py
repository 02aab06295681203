"""Tokens: who a socket is, and which rooms it may read and publish to.

Standard JWTs (RFC 7519), verified with PyJWT against the configured keys: HMAC secrets
(``--token-secret``, a comma list for rotation) verify HS256; public keys, from a PEM file
(``--token-public-key``) or a JWK Set (``--token-jwks-url``, fetched by `rrr.jwks`), verify
RS256, ES256 or EdDSA, so rrr can verify tokens it cannot mint. Each key verifies the one
algorithm of its type and nothing else: a token whose ``alg`` does not match the key it names is
refused, ``none`` always is, and an HMAC is never checked with a public key (the classic
confusion: an HS256 token "signed" with the public key's PEM as its secret).

Rooms named ``private-<rest>`` or ``presence-<rest>`` need a grant; every other room is public.
This module is pure: no Redis, no sockets, no fetching. `Verifier.verify` judges a token against
the keys held at that moment; `Verifier.verify_async` may first wait for one refetch of the key
set (rate-limited by the key source) when the token names a key id the set lacks. Revocation
(which needs Redis) is checked by the caller with `Identity.issued_at`.

Claims:

* ``sub``: the user id, a string of at most 128 characters (required);
* ``exp``: required, checked with no leeway; ``iat`` and ``nbf``: optional; each a finite number
  of seconds between 0 and the end of year 9999, and ``iat`` at most `IAT_SKEW` s ahead (a token
  "issued" later than any sign-out would escape them all);
* ``aud`` / ``iss``: with ``--token-audience``, ``aud`` (a string or a list) must contain it; with
  ``--token-issuer``, ``iss`` must equal it; unchecked otherwise;
* ``info``: an optional JSON object of at most 1 KiB encoded, shown to other members;
* ``rooms`` / ``publish``: grants, each an exact slug or a prefix ending in ``*``.

Unknown claims are ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .protocol import is_presence_room, needs_grant

__all__ = [
    "Grants", "Identity", "Key", "KeySource", "TokenError", "UnknownKeyError", "Verifier", "identity_from_claims",
    "info_from_claim", "is_presence_room", "key_from_jwk", "key_from_pem", "keys_from_jwks", "mint", "needs_grant",
    "split_secrets",
]

SUB_MAX = 128
INFO_MAX = 1024
GRANTS_MAX = 100
#: The largest time a numeric claim may hold: 9999-12-31T23:59:59Z (as PyJWT's datetimes allow).
TIME_MAX = 253_402_300_799
#: How far ahead of our clock a token's ``iat`` may be (the issuer's clock may run a little fast).
IAT_SKEW = 60.0
HMAC_ALGORITHMS = ("HS256",)
#: What an RSA key may verify: RS256, or the one other algorithm its JWK's ``alg`` names.
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
KEY_ALGORITHMS = (*RSA_ALGORITHMS, "ES256", "EdDSA")
#: Keys taken from one JWK Set; a token without ``kid`` may be tried against each of its type.
JWKS_MAX_KEYS = 100


class TokenError(ValueError):
    """A token we refuse; ``reason`` says why in words a developer can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKeyError(TokenError):
    """The token needs a public key this server does not hold (its ``kid``, or any key of its
    algorithm): a fresh copy of the key set may have it (`Verifier.verify_async`)."""


def _show(value: object, limit: int = 40) -> str:
    """A token's header value in a reason: quoted and short (the reason goes to the client and the log)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


@dataclass(frozen=True)
class Key:
    """A public key and the one algorithm it verifies."""

    alg: str
    key: Any = field(repr=False)  # a cryptography public key
    kid: str | None = None

    def __str__(self) -> str:
        return f"key {_show(self.kid)} ({self.alg})" if self.kid is not None else f"a key without 'kid' ({self.alg})"


def _algorithm_of(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    kind = f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    raise ValueError(f"an unsupported key ({kind}): rrr verifies with RSA, EC P-256 or Ed25519 keys")


def key_from_pem(pem: str | bytes) -> Key:
    """``--token-public-key``: a PEM public key (or certificate, or private key, whose public part is
    used), pinned to its type's algorithm: RSA RS256, EC P-256 ES256, Ed25519 EdDSA."""
    data = pem.encode() if isinstance(pem, str) else pem
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            try:
                key = serialization.load_pem_private_key(data, password=None).public_key()
            except (ValueError, TypeError):
                raise ValueError("not a PEM public key, certificate or unencrypted private key") from None
    return Key(_algorithm_of(key), key)


def key_from_jwk(jwk: Any) -> tuple[Key, str | None]:
    """One JWK of a key set (RFC 7517) as a pinned key, and a note for the log if something about
    it is off; ValueError says why a key is unusable (the caller skips it)."""
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not (isinstance(kid, str) and kid):
        raise ValueError("'kid' is not a non-empty string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"'use' is {_show(use)}, not 'sig'")
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "RSA":
        pinned = "RS256" if alg is None else alg if alg in RSA_ALGORITHMS else None
    elif kty == "EC" and crv == "P-256":
        pinned = "ES256" if alg in (None, "ES256") else None
    elif kty == "OKP" and crv == "Ed25519":
        pinned = "EdDSA" if alg in (None, "EdDSA") else None
    elif kty == "oct":
        raise ValueError("a symmetric ('oct') key: secrets are never taken from a published key set")
    else:
        curve = f" on curve {_show(crv)}" if crv is not None else ""
        raise ValueError(f"unsupported key type {_show(kty)}{curve} (rrr takes RSA, EC P-256 and Ed25519)")
    if pinned is None:
        raise ValueError(f"'alg' {_show(alg)} does not fit a {kty} key")
    try:
        key: Any = jwt.PyJWK(jwk, algorithm=pinned).key
    except (jwt.PyJWTError, ValueError, TypeError) as e:
        raise ValueError(f"not a valid {kty} key: {str(e)[:120]}") from None
    note = None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        key = key.public_key()
        note = "it holds its private part; only the public part is used (the key set should not publish it)"
    return Key(pinned, key, kid), note


def keys_from_jwks(document: Any) -> tuple[list[Key], list[str]]:
    """A JWK Set's usable keys, and a line for the log about each other one (skipped) or odd one."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set (a JSON object with a 'keys' list)")
    keys: list[Key] = []
    notes: list[str] = []
    for i, jwk in enumerate(document["keys"]):
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        name = f"key {i}" + (f" ({_show(kid)})" if kid is not None else "")
        if len(keys) >= JWKS_MAX_KEYS:
            notes.append(f"{name} skipped: more than {JWKS_MAX_KEYS} keys")
            continue
        try:
            key, note = key_from_jwk(jwk)
        except ValueError as e:
            notes.append(f"{name} skipped: {e}")
            continue
        keys.append(key)
        if note is not None:
            notes.append(f"{name}: {note}")
    return keys, notes


def split_secrets(value: str) -> tuple[str, ...]:
    """``--token-secret new,old``: each secret verifies (rotation). Commas separate, spaces around
    each are dropped, so a secret itself holds neither."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


class KeySource(Protocol):
    """Public keys that change while we run (`rrr.jwks.JwksKeys`)."""

    @property
    def keys(self) -> Sequence[Key]: ...

    def may_refetch(self) -> bool:
        """Whether `refetch` would fetch (or join a fetch under way) rather than decline at once."""
        ...

    async def refetch(self) -> bool:
        """Fetch the set again for a token that names a key it lacks, unless rate-limited; True if fetched."""
        ...


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
        """A ``publish`` grant implies read (docs/guides/tokens.md, the ``publish`` claim): a publisher that cannot
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
    (and private and presence rooms with it); public rooms need none.

    ``secret``: one HMAC secret or a comma list (`split_secrets`); ``public_key``: PEM text;
    ``jwks``: a key set kept current elsewhere (`rrr.jwks`). Raises ValueError for a PEM it cannot use."""

    secret: str = field(default="", repr=False)
    public_key: str = field(default="", repr=False)
    max_age: float = 24 * 3600
    audience: str = ""
    issuer: str = ""
    jwks: KeySource | None = None
    secrets: tuple[str, ...] = field(init=False, repr=False, compare=False)
    pem_key: Key | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", split_secrets(self.secret))
        object.__setattr__(self, "pem_key", key_from_pem(self.public_key) if self.public_key.strip() else None)

    @property
    def enabled(self) -> bool:
        return bool(self.secrets or self.pem_key or self.jwks is not None)

    def keys(self) -> list[Key]:
        """The public keys held now: the PEM file's, then the key set's."""
        held = [self.pem_key] if self.pem_key is not None else []
        if self.jwks is not None:
            held += self.jwks.keys
        return held

    def verify(self, token: object, now: float | None = None) -> Identity:
        """The token's identity, judged against the keys held now; `UnknownKeyError` if it needs a
        public key that a refetch of the key set might bring (see `verify_async`)."""
        if not self.enabled:
            raise TokenError(
                "this server verifies no tokens (no --token-secret, --token-public-key or --token-jwks-url)"
            )
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise TokenError("token must be a JWT string of at most 8 KiB")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenError(f"token is not a JWT: {e}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None and not (isinstance(kid, str) and kid):
            raise TokenError("'kid' in the token's header must be a non-empty string")
        now = time.time() if now is None else now
        if alg in HMAC_ALGORITHMS:
            claims = self._decode_hmac(token, alg, kid)
        elif alg in KEY_ALGORITHMS:
            claims = self._decode_signed(token, alg, kid)
        else:  # 'none' among them, in any spelling
            raise TokenError(f"token algorithm {_show(alg, 20)} is not accepted here")
        return self._identity(claims, now)

    async def verify_async(self, token: object) -> Identity:
        """`verify`, but a token naming a key the set lacks first waits for one refetch of the set
        (joined if one is under way; declined at once when the key source's rate limit says so)."""
        try:
            return self.verify(token)
        except UnknownKeyError:
            if self.jwks is None or not await self.jwks.refetch():
                raise
        return self.verify(token)

    def refetch_may_help(self, error: TokenError) -> bool:
        """Whether `verify_async` would wait for a refetch before refusing this token again."""
        return isinstance(error, UnknownKeyError) and self.jwks is not None and self.jwks.may_refetch()

    def _decode_hmac(self, token: str, alg: str, kid: str | None) -> dict[str, Any]:
        if kid is not None:
            named = next((k for k in self.keys() if k.kid == kid), None)
            if named is not None:  # a public key's id on an HMAC: never checked against that key
                raise TokenError(f"token algorithm {_show(alg)} does not match {named}")
        if not self.secrets:
            raise TokenError(f"token algorithm {_show(alg)} is not accepted here (no --token-secret)")
        return self._decode(token, alg, self.secrets, unknown=None)

    def _decode_signed(self, token: str, alg: str, kid: str | None) -> dict[str, Any]:
        held = self.keys()
        if not held and self.jwks is None:
            raise TokenError(f"token algorithm {_show(alg)} is not accepted here (no --token-public-key or "
                             "--token-jwks-url)")
        unknown: str | None = None
        if kid is not None:
            named = [k for k in held if k.kid == kid]
            if named:
                fit = [k.key for k in named if k.alg == alg]
                if not fit:
                    raise TokenError(f"token algorithm {_show(alg)} does not match {named[0]}")
                return self._decode(token, alg, fit, unknown=None)
            unknown = f"unknown key id {_show(kid)}"
        # No kid, or one we do not hold: each key of the token's algorithm that has no kid of its
        # own (the PEM file's), and without a kid every key of that algorithm.
        candidates = [k.key for k in held if k.alg == alg and (kid is None or k.kid is None)]
        if not candidates:
            kinds = ", ".join(sorted({k.alg for k in held})) or "none"
            raise self._unknown(unknown or f"no key here verifies {_show(alg)} (keys held: {kinds})")
        return self._decode(token, alg, candidates, unknown=unknown)

    def _unknown(self, reason: str) -> TokenError:
        return UnknownKeyError(reason) if self.jwks is not None else TokenError(reason)

    def _decode(self, token: str, alg: str, keys: Sequence[Any], unknown: str | None) -> dict[str, Any]:
        """The claims, from the first of ``keys`` whose signature holds (each tried, none skipped
        on a first failure: a rotation's old and new keys both verify)."""
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=[alg], leeway=0,
                    # The times are judged in _identity, against ``now`` and with their range checked;
                    # 'aud' and 'iss' there too, as the options say.
                    options={"require": ["exp", "sub"], "verify_exp": False, "verify_iat": False,
                             "verify_aud": False, "verify_iss": False, "verify_nbf": False},
                )
                return claims
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as e:
                raise TokenError(f"token refused: {e}") from None
            except (ValueError, TypeError) as e:  # PyJWT's key preparation raises these, not PyJWTError
                raise TokenError(f"token refused: {str(e)[:120]}") from None
        if unknown is not None and self.jwks is not None:
            raise UnknownKeyError(unknown)
        raise TokenError("token refused: Signature verification failed")

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        if self.audience:
            aud = claims.get("aud")
            if self.audience not in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []):
                raise TokenError(f"'aud' must be or contain {_show(self.audience, 80)} (--token-audience)")
        if self.issuer and claims.get("iss") != self.issuer:
            raise TokenError(f"'iss' must be {_show(self.issuer, 120)} (--token-issuer)")
        return identity_from_claims(claims, now, self.max_age)


def identity_from_claims(claims: dict[str, Any], now: float, max_age: float) -> Identity:
    """What verified claims mean, with every rule a token's claims obey (the module's docstring)
    but ``aud`` and ``iss``; TokenError says which one they break. The connect proxy's answer is
    judged here too (`rrr.proxies`), so it gets exactly what a token with its claims would."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > SUB_MAX:
        raise TokenError(f"'sub' must be a string of 1 to {SUB_MAX} characters")
    exp = _number(claims.get("exp"), "exp")
    if exp is None:
        raise TokenError("'exp' is required")
    if now >= exp:  # no leeway: an expired token never extends anything
        raise TokenError("token has expired")
    if exp - now > max_age:
        raise TokenError(f"'exp' lies more than {max_age:.0f} s ahead (--token-max-age)")
    iat = _number(claims.get("iat"), "iat")
    if iat is not None and iat > now + IAT_SKEW:
        raise TokenError(f"'iat' lies more than {IAT_SKEW:.0f} s ahead of this server's clock")
    nbf = _number(claims.get("nbf"), "nbf")
    if nbf is not None and now < nbf:
        raise TokenError("token is not valid yet ('nbf')")
    info, info_json = info_from_claim(claims.get("info"))
    return Identity(
        user=sub, expires=exp, issued_at=iat, info=info, info_json=info_json,
        rooms=Grants.parse(claims.get("rooms"), "rooms"), publish=Grants.parse(claims.get("publish"), "publish"),
    )


def info_from_claim(info: Any) -> tuple[dict[str, Any] | None, str]:
    """An ``info`` claim (or the subscribe proxy's ``info``) and its JSON text, within `INFO_MAX`."""
    if info is None:
        return None, "null"
    if not isinstance(info, dict):
        raise TokenError("'info' must be a JSON object")
    info_json = json.dumps(info, separators=(",", ":"), ensure_ascii=False)
    try:
        size = len(info_json.encode("utf-8"))
    except UnicodeEncodeError:
        raise TokenError("'info' holds text that is not valid Unicode (a lone surrogate)") from None
    if size > INFO_MAX:
        raise TokenError(f"'info' is over {INFO_MAX} bytes encoded")
    return info, info_json


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
