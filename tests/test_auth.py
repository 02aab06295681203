"""Tokens: standard JWTs minted with PyJWT directly, and the rules rrr applies to them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rrr.auth import Grants, TokenError, Verifier, is_presence_room, mint, needs_grant

SECRET = "a-secret-of-reasonable-length-for-hs256"
NOW = 1_800_000_000.0


def hs(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def claims(**extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": "user-42", "exp": int(NOW + 600)}
    out.update(extra)
    return out


def test_a_valid_token_says_who_and_what() -> None:
    token = hs(claims(iat=int(NOW - 5), info={"name": "Ada"}, rooms=["presence-team-7", "private-user-42-*"],
                      publish=["presence-team-7"], color="ignored"))
    who = Verifier(secret=SECRET).verify(token, now=NOW)
    assert who.user == "user-42" and who.expires == NOW + 600 and who.issued_at == NOW - 5
    assert who.info == {"name": "Ada"} and who.info_json == '{"name":"Ada"}'
    assert who.may_read("presence-team-7") and who.may_read("private-user-42-inbox")
    assert not who.may_read("private-user-43-inbox") and not who.may_read("presence-team-8")
    assert who.may_read("lobby")  # public rooms need no grant
    assert who.may_publish("presence-team-7") and not who.may_publish("private-user-42-inbox")


@pytest.mark.parametrize(
    "token, why",
    [
        (hs(claims(), secret="wrong-secret-of-reasonable-length!!"), "Signature verification failed"),
        (hs({"sub": "user-42"}), "exp"),
        (hs(claims(exp=int(NOW))), "expired"),  # exactly now: no leeway
        (hs(claims(exp=int(NOW - 1))), "expired"),
        (hs(claims(sub="x" * 129)), "'sub'"),
        (hs(claims(sub="")), "sub"),
        (hs(claims(info=["not", "an", "object"])), "'info'"),
        (hs(claims(info={"bio": "x" * 1100})), "1024 bytes"),
        (hs(claims(rooms="presence-team-7")), "'rooms'"),
        (hs(claims(exp=int(NOW + 25 * 3600))), "--token-max-age"),
        (jwt.encode(claims(), "", algorithm="none"), "algorithm"),
        ("not.a.jwt", "not a JWT"),
        (42, "JWT string"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: object, why: str) -> None:
    with pytest.raises(TokenError) as e:
        Verifier(secret=SECRET).verify(token, now=NOW)
    assert why in e.value.reason


def signed_text(payload: str, key: bytes = SECRET.encode()) -> str:
    """An HS256 token over ``payload`` exactly as written: JSON with ``NaN`` or ``1e400`` in it,
    which a careless issuer (or an attacker holding a key) can sign."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload.encode())
    return head + "." + b64(hmac.new(key, head.encode(), hashlib.sha256).digest())


@pytest.mark.parametrize(
    "payload, why",
    [
        ('{"sub":"u","exp":NaN}', "'exp' must be a finite number"),
        ('{"sub":"u","exp":Infinity}', "'exp' must be a finite number"),
        ('{"sub":"u","exp":1e400}', "'exp' must be a finite number"),  # float("1e400") is inf
        ('{"sub":"u","exp":1' + "0" * 400 + "}", "'exp' must be a finite number"),  # float() would overflow
        ('{"sub":"u","exp":-1}', "'exp' must be a finite number"),
        ('{"sub":"u","exp":%d,"iat":NaN}' % (NOW + 600), "'iat' must be a finite number"),
        ('{"sub":"u","exp":%d,"iat":1e400}' % (NOW + 600), "'iat' must be a finite number"),
        ('{"sub":"u","exp":%d,"iat":1%s}' % (NOW + 600, "0" * 400), "'iat' must be a finite number"),
        ('{"sub":"u","exp":%d,"iat":-Infinity}' % (NOW + 600), "'iat' must be a finite number"),
        ('{"sub":"u","exp":%d,"nbf":NaN}' % (NOW + 600), "'nbf' must be a finite number"),
        ('{"sub":"u","exp":%d,"nbf":1e400}' % (NOW + 600), "'nbf' must be a finite number"),
        ('{"sub":"u","exp":%d,"nbf":%d}' % (NOW + 600, NOW + 1), "not valid yet"),
        # A token "issued" a year from now was never before a sign-out: it escaped every one.
        ('{"sub":"u","exp":%d,"iat":%d}' % (NOW + 600, NOW + 365 * 86400), "'iat' lies more than 60 s ahead"),
        ('{"sub":"u","exp":%d,"iat":%d}' % (NOW + 600, NOW + 61), "'iat' lies more than 60 s ahead"),
    ],
)
def test_numeric_claims_must_be_finite_times_in_range(payload: str, why: str) -> None:
    with pytest.raises(TokenError) as e:
        Verifier(secret=SECRET).verify(signed_text(payload), now=NOW)
    assert why in e.value.reason


def test_a_little_clock_skew_in_iat_and_nbf_is_fine() -> None:
    payload = '{"sub":"u","exp":%d,"iat":%d,"nbf":%d}' % (NOW + 600, NOW + 59, NOW)
    who = Verifier(secret=SECRET).verify(signed_text(payload), now=NOW)
    assert who.issued_at == NOW + 59 and who.expires == NOW + 600


def test_no_key_configured_refuses_every_token() -> None:
    assert not Verifier().enabled
    with pytest.raises(TokenError, match="verifies no tokens"):
        Verifier().verify(hs(claims()), now=NOW)


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_keys_verify_tokens_rrr_cannot_mint(kind: str) -> None:
    private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    verifier = Verifier(public_key=pem)
    assert verifier.verify(jwt.encode(claims(), private, algorithm=kind), now=NOW).user == "user-42"
    # An HS256 token "signed" with the public key itself is the classic confusion attack.
    with pytest.raises(TokenError, match="algorithm"):
        verifier.verify(hmac_by_hand(claims(), pem.encode()), now=NOW)


def hmac_by_hand(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed with ``key`` (PyJWT itself refuses a PEM key as an HMAC secret)."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(hmac.new(key, head.encode(), hashlib.sha256).digest())


def test_room_kinds_and_grants() -> None:
    assert needs_grant("private-x") and needs_grant("presence-x") and not needs_grant("privatex")
    assert is_presence_room("presence-team") and not is_presence_room("private-team")
    grants = Grants.parse(["a", "team-*"], "rooms")
    assert grants.allows("a") and grants.allows("team-1") and not grants.allows("ab") and not grants.allows("tea")


def test_minted_tokens_are_accepted() -> None:
    token = mint("ada", secret=SECRET, rooms=["presence-x"], info={"name": "Ada"}, ttl=60, now=time.time())
    who = Verifier(secret=SECRET).verify(token)
    assert who.user == "ada" and who.may_read("presence-x") and who.info == {"name": "Ada"}


def test_the_client_helper_mints_what_the_server_accepts() -> None:
    from rrr.client import token

    who = Verifier(secret=SECRET).verify(token("bo", rooms=["private-bo-*"], publish=["private-bo-x"], secret=SECRET))
    assert who.may_read("private-bo-inbox") and who.may_publish("private-bo-x")
