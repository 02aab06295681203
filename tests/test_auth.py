"""Tokens: standard JWTs minted with PyJWT directly, and the rules rrr applies to them."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import jwt.algorithms
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from support.jwks import SigningKey, hand_signed
from rrr.auth import (
    JWKS_MAX_KEYS, Grants, TokenError, UnknownKeyError, Verifier, is_presence_room, key_from_pem, keys_from_jwks, mint,
    needs_grant, split_secrets,
)
from rrr.jwks import JwksKeys, check_url

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


# -- keys: several, chosen by kid, each pinned to its algorithm ---------------------------------


def key_set(*keys: SigningKey) -> JwksKeys:
    """A key set as `rrr.jwks` holds one once fetched (nothing is fetched here)."""
    held = JwksKeys("https://issuer.example/.well-known/jwks.json")
    held.keys = tuple(keys_from_jwks({"keys": [k.jwk() for k in keys]})[0])
    return held


RSA_KEY, EC_KEY, ED_KEY = SigningKey.new("RS256", "r1"), SigningKey.new("ES256", "e1"), SigningKey.new("EdDSA", "d1")


def test_each_key_verifies_the_tokens_that_name_it() -> None:
    verifier = Verifier(jwks=key_set(RSA_KEY, EC_KEY, ED_KEY))
    for key in (RSA_KEY, EC_KEY, ED_KEY):
        assert verifier.verify(key.sign(claims(sub=key.alg)), now=NOW).user == key.alg
    # A kid names one key: another key's signature under it is a bad signature, not a search.
    other_ec = SigningKey.new("ES256", "e1")
    with pytest.raises(TokenError, match="Signature verification failed"):
        verifier.verify(other_ec.sign(claims()), now=NOW)
    with pytest.raises(UnknownKeyError, match="unknown key id 'e9'"):
        verifier.verify(EC_KEY.sign(claims(), headers={"kid": "e9"}), now=NOW)


def test_a_token_without_kid_is_tried_against_each_key_of_its_type() -> None:
    first, second = SigningKey.new("ES256", "e1"), SigningKey.new("ES256", "e2")
    verifier = Verifier(jwks=key_set(RSA_KEY, first, second))
    for key in (first, second, RSA_KEY):
        assert verifier.verify(key.sign(claims(), headers={"kid": None}), now=NOW).user == "user-42"
    with pytest.raises(UnknownKeyError, match="no key here verifies 'EdDSA'"):
        verifier.verify(ED_KEY.sign(claims(), headers={"kid": None}), now=NOW)
    with pytest.raises(TokenError, match="Signature verification failed"):
        verifier.verify(SigningKey.new("ES256", None).sign(claims()), now=NOW)


@pytest.mark.parametrize(
    "token, why",
    [
        # The RSA key's id on an ES256 token signed with the EC key: the key, not the header, decides.
        (EC_KEY.sign(claims(), headers={"kid": "r1"}), "token algorithm 'ES256' does not match key 'r1' (RS256)"),
        (RSA_KEY.sign(claims(), alg="RS512"), "token algorithm 'RS512' does not match key 'r1' (RS256)"),
        (RSA_KEY.sign(claims(), alg="PS256"), "token algorithm 'PS256' does not match key 'r1' (RS256)"),
        # The confusion attack: HS256 "signed" with the public key as the HMAC secret.
        (hand_signed({"alg": "HS256", "kid": "r1"}, claims(), RSA_KEY.public_pem()),
         "token algorithm 'HS256' does not match key 'r1' (RS256)"),
        (hand_signed({"alg": "HS256", "kid": "r1"}, claims(), json.dumps(RSA_KEY.jwk()).encode()),
         "token algorithm 'HS256' does not match key 'r1' (RS256)"),
        (hand_signed({"alg": "HS256"}, claims(), RSA_KEY.public_pem()), "Signature verification failed"),
        (hand_signed({"alg": "none", "kid": "r1"}, claims(), None), "token algorithm 'none' is not accepted"),
        (hand_signed({"alg": "None"}, claims(), None), "token algorithm 'None' is not accepted"),
        (hand_signed({"alg": "NONE", "kid": "d1"}, claims(), None), "token algorithm 'NONE' is not accepted"),
        (hand_signed({"kid": "r1"}, claims(), None), "token algorithm None is not accepted"),
        (hand_signed({"alg": "RS256", "kid": 7}, claims(), None), "Key ID header parameter must be a string"),
    ],
)
def test_an_algorithm_that_does_not_match_its_key_is_refused(token: str, why: str) -> None:
    verifier = Verifier(secret=SECRET, jwks=key_set(RSA_KEY, EC_KEY, ED_KEY))
    with pytest.raises(TokenError) as e:
        verifier.verify(token, now=NOW)
    assert why in e.value.reason and not isinstance(e.value, UnknownKeyError)


def test_without_a_secret_an_hmac_token_is_never_checked_against_a_public_key() -> None:
    pem = RSA_KEY.public_pem()
    for verifier in (Verifier(jwks=key_set(RSA_KEY)), Verifier(public_key=pem.decode())):
        with pytest.raises(TokenError, match="'HS256' is not accepted here"):
            verifier.verify(hand_signed({"alg": "HS256"}, claims(), pem), now=NOW)


def test_an_rsa_key_whose_jwk_names_another_rsa_algorithm_verifies_that_one_only() -> None:
    pss = SigningKey.new("PS256", "p1")
    verifier = Verifier(jwks=key_set(pss))
    assert verifier.verify(pss.sign(claims()), now=NOW).user == "user-42"
    with pytest.raises(TokenError, match="'RS256' does not match key 'p1' \\(PS256\\)"):
        verifier.verify(pss.sign(claims(), alg="RS256"), now=NOW)


def test_the_pem_key_is_pinned_to_its_type_and_verifies_beside_the_key_set() -> None:
    for key in (SigningKey.new("RS256", None), SigningKey.new("ES256", None), SigningKey.new("EdDSA", None)):
        pinned = key_from_pem(key.public_pem())
        assert pinned.alg == key.alg and pinned.kid is None
        verifier = Verifier(public_key=key.public_pem().decode(), jwks=key_set(RSA_KEY))
        # Many issuers always send a kid: the PEM key has none of its own, so it is tried for any.
        assert verifier.verify(key.sign(claims(), headers={"kid": "anything"}), now=NOW).user == "user-42"
        assert verifier.verify(RSA_KEY.sign(claims()), now=NOW).user == "user-42"
    assert key_from_pem(pem_of(ED_KEY.private, private=True)).alg == "EdDSA"
    assert key_from_pem(certificate_pem(EC_KEY.private)).alg == "ES256"
    with pytest.raises(ValueError, match="unsupported key \\(EC secp384r1\\)"):
        key_from_pem(pem_of(ec.generate_private_key(ec.SECP384R1()).public_key()))
    with pytest.raises(ValueError, match="not a PEM public key"):
        key_from_pem("-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="not a PEM public key"):
        Verifier(public_key="hello")


def pem_of(key: Any, private: bool = False) -> bytes:
    if private:
        return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def certificate_pem(private: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.example")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
            .sign(private, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_key_set_keeps_the_keys_it_can_use_and_says_why_it_skips_the_others() -> None:
    rsa_jwk, ec_jwk = RSA_KEY.jwk(), EC_KEY.jwk()
    private_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ED_KEY.private)) | {"kid": "d1"}
    document = {"keys": [
        rsa_jwk,
        {"kty": "oct", "k": "c2VjcmV0", "kid": "h1"},
        ec_jwk | {"kid": "enc", "use": "enc"},
        ec_jwk | {"kid": "p384", "crv": "P-384"},
        rsa_jwk | {"kid": "rs-as-hs", "alg": "HS256"},
        rsa_jwk | {"kid": "broken", "n": "!!"},
        {"kty": "XYZ", "kid": "odd"},
        "not a key",
        ec_jwk,
        private_jwk,
    ]}
    keys, notes = keys_from_jwks(document)
    assert [(k.kid, k.alg) for k in keys] == [("r1", "RS256"), ("e1", "ES256"), ("d1", "EdDSA")]
    text = "\n".join(notes)
    for why in ("'h1'", "symmetric", "'enc'", "'use' is 'enc'", "'p384'", "'P-384'", "'rs-as-hs'",
                "'HS256' does not fit a RSA key", "'broken'", "'odd'", "unsupported key type 'XYZ'",
                "key 7 skipped: not a JSON object", "private part"):
        assert why in text, why
    # The private key's public half verifies; nothing else of it is kept.
    assert Verifier(jwks=key_set(ED_KEY)).verify(ED_KEY.sign(claims()), now=NOW).user == "user-42"
    junk: Any
    for junk in ([], {"keys": {}}, {"no": "keys"}, "text"):
        with pytest.raises(ValueError, match="not a JWK Set"):
            keys_from_jwks(junk)
    many, notes = keys_from_jwks({"keys": [ec_jwk] * (JWKS_MAX_KEYS + 3)})
    assert len(many) == JWKS_MAX_KEYS and len(notes) == 3


# -- audience and issuer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, why",
    [
        ({"aud": "rrr", "iss": "https://issuer.example/"}, None),
        ({"aud": ["other", "rrr"], "iss": "https://issuer.example/"}, None),
        ({"iss": "https://issuer.example/"}, "'aud' must be or contain 'rrr' (--token-audience)"),
        ({"aud": "other", "iss": "https://issuer.example/"}, "'aud' must be or contain 'rrr'"),
        ({"aud": ["other"], "iss": "https://issuer.example/"}, "'aud' must be or contain 'rrr'"),
        ({"aud": "rrrr", "iss": "https://issuer.example/"}, "'aud' must be or contain 'rrr'"),
        ({"aud": "rrr"}, "'iss' must be 'https://issuer.example/' (--token-issuer)"),
        ({"aud": "rrr", "iss": "https://issuer.example"}, "'iss' must be 'https://issuer.example/'"),
    ],
)
def test_audience_and_issuer_when_set(extra: dict[str, Any], why: str | None) -> None:
    strict = Verifier(secret=SECRET, jwks=key_set(EC_KEY), audience="rrr", issuer="https://issuer.example/")
    for token in (hs(claims(**extra)), EC_KEY.sign(claims(**extra))):
        if why is None:
            assert strict.verify(token, now=NOW).user == "user-42"
        else:
            with pytest.raises(TokenError) as e:
                strict.verify(token, now=NOW)
            assert why in e.value.reason
        # Unset, neither is looked at.
        assert Verifier(secret=SECRET, jwks=key_set(EC_KEY)).verify(token, now=NOW).user == "user-42"


# -- HMAC secrets: a comma list, for rotation ---------------------------------------------------


def test_each_secret_of_a_comma_list_verifies() -> None:
    new, old = "new-secret-of-reasonable-length-0001", "old-secret-of-reasonable-length-0002"
    assert split_secrets(f" {new}, {old} ,,") == (new, old)
    verifier = Verifier(secret=f"{new},{old}")
    assert verifier.verify(hs(claims(sub="by-new"), secret=new), now=NOW).user == "by-new"
    assert verifier.verify(hs(claims(sub="by-old"), secret=old), now=NOW).user == "by-old"
    with pytest.raises(TokenError, match="Signature verification failed"):
        verifier.verify(hs(claims(), secret=f"{new},{old}"), now=NOW)
    # A signature that holds decides: the claims' faults are reported, not "bad signature".
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(hs(claims(exp=int(NOW - 1)), secret=old), now=NOW)
    assert "secret" not in repr(verifier) and new not in repr(verifier)


# -- where keys may be fetched from ---------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://tenant.auth0.example/.well-known/jwks.json", "https://10.0.0.1/jwks", "http://127.0.0.1:8080/jwks.json",
    "http://127.1.2.3/jwks", "http://[::1]:9000/jwks", "http://localhost/jwks", "http://LOCALHOST./jwks",
])
def test_key_sets_come_over_https_or_from_this_machine(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize("url", [
    "http://issuer.example/jwks.json", "http://10.0.0.1/jwks", "http://[::2]/jwks", "http://127.0.0.1.example/j",
    "ftp://127.0.0.1/jwks", "file:///etc/jwks.json", "https://", "https:///path", "127.0.0.1/jwks", "http://[::1",
    "http://127.0.0.1:99999/jwks",
])
def test_any_other_key_set_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must be an https:// URL, or http:// to a loopback host"):
        check_url(url)
