"""Pure request rules: the Origin check with schemes, the Host allow-list, the security headers."""

from __future__ import annotations

import pytest

from rrr.edge.headers import content_security_policy, host_allowed, parse_hosts, request_host, security_headers
from rrr.edge.origins import origin_allowed, parse_origins

NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    "origin, host, scheme",
    [
        ("https://rrr.example", "rrr.example", "https"),
        ("https://rrr.example:443", "rrr.example", "https"),
        ("http://rrr.example", "rrr.example", "http"),
        ("HTTPS://RRR.example", "rrr.example:443", "HTTPS"),
        ("http://[::1]:8888", "[::1]:8888", "http"),
    ],
)
def test_same_scheme_host_and_port_is_allowed(origin: str, host: str, scheme: str) -> None:
    assert origin_allowed(origin, host, NONE, scheme)


@pytest.mark.parametrize(
    "origin, host, scheme",
    [
        # An http page must not drive the https site's socket, nor the reverse.
        ("http://rrr.example", "rrr.example", "https"),
        ("http://rrr.example:443", "rrr.example", "https"),
        ("https://rrr.example", "rrr.example", "http"),
        ("https://rrr.example:80", "rrr.example", "http"),
        # Userinfo never appears in a browser's Origin.
        ("http://user@rrr.example", "rrr.example", "http"),
        ("https://user:pw@rrr.example", "rrr.example", "https"),
        ("http://rrr.example@evil.example", "rrr.example", "http"),
        ("null", "rrr.example", "http"),
        ("http://rrr.example/path", "rrr.example", "http"),
        ("ws://rrr.example", "rrr.example", "http"),
    ],
)
def test_other_schemes_userinfo_and_null_are_refused(origin: str, host: str, scheme: str) -> None:
    assert not origin_allowed(origin, host, NONE, scheme)


def test_null_and_userinfo_are_refused_even_when_any_origin_is_allowed() -> None:
    anything = parse_origins("*")
    assert origin_allowed("https://app.example", "rrr.example", anything, "http")
    assert not origin_allowed("null", "rrr.example", anything, "http")
    assert not origin_allowed("https://u@app.example", "rrr.example", anything, "http")
    assert not origin_allowed("null", "rrr.example", parse_origins("null"), "http")


def test_allow_listed_origins_keep_their_own_scheme() -> None:
    allowed = parse_origins("https://app.example")
    assert origin_allowed("https://app.example", "rrr.example", allowed, "http")
    assert not origin_allowed("http://app.example", "rrr.example", allowed, "https")


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("rrr.example", "rrr.example"),
        ("RRR.example:8443", "rrr.example"),
        ("rrr.example.", "rrr.example"),
        ("a.b.rrr.example", ".rrr.example"),
        ("rrr.example", ".rrr.example"),
        ("anything.example:1", "*"),
        ("127.0.0.1:8888", "localhost, 127.0.0.1"),
        ("[::1]:8888", "::1"),
        ("whatever", ""),
    ],
)
def test_listed_hosts_are_served(host: str, allowed: str) -> None:
    assert host_allowed(host, parse_hosts(allowed))


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("evil.example", "rrr.example"),
        ("rrr.example.evil.example", "rrr.example"),
        ("evilrrr.example", ".rrr.example"),
        ("", "rrr.example"),
        ("", "*"),
        ("rrr.example/x", "*"),
        ("rrr.example; script-src *", "*"),
        ("user@rrr.example", "rrr.example"),
    ],
)
def test_unlisted_or_malformed_hosts_are_refused(host: str, allowed: str) -> None:
    assert not host_allowed(host, parse_hosts(allowed))


def test_forwarded_host_counts_only_behind_a_trusted_proxy() -> None:
    headers = {"X-Forwarded-Host": "public.example, inner.example"}
    assert request_host(headers, "10.0.0.5:8001", xheaders=True) == "public.example"
    assert request_host(headers, "10.0.0.5:8001", xheaders=False) == "10.0.0.5:8001"
    assert request_host({}, "10.0.0.5:8001", xheaders=True) == "10.0.0.5:8001"


def test_policy_allows_our_socket_and_nonce_only() -> None:
    csp = content_security_policy("https", "rrr.example", nonce="abc")
    directives = dict(d.split(" ", 1) for d in csp.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self' 'nonce-abc'"
    assert directives["connect-src"] == "'self' wss://rrr.example"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert "ws://127.0.0.1:8888" in content_security_policy("http", "127.0.0.1:8888")
    assert "'unsafe-inline'" not in csp and "*" not in csp


def test_a_malformed_host_never_reaches_the_policy() -> None:
    csp = content_security_policy("http", "x; script-src *")
    assert "script-src *" not in csp and "connect-src 'self';" in csp
    headers = security_headers("http", "rrr.example")
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
