"""Origin rules, publish rate limits, and how options are read from env and argv."""

import pytest
from tornado.options import OptionParser

from rrr.config import command_line
from rrr.edge.origins import origin_allowed, parse_origins
from rrr.limits import TokenBucket

NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    "origin, host",
    [
        ("http://127.0.0.1:8888", "127.0.0.1:8888"),
        ("https://rrr.example", "rrr.example"),
        ("https://rrr.example:443", "rrr.example"),
        ("http://RRR.example", "rrr.example:80"),
    ],
)
def test_same_origin_is_allowed(origin: str, host: str) -> None:
    assert origin_allowed(origin, host, NONE, origin.split(":")[0].lower())


@pytest.mark.parametrize(
    "origin, host",
    [
        ("http://evil.example", "127.0.0.1:8888"),
        ("http://127.0.0.1:9999", "127.0.0.1:8888"),
        ("https://rrr.example", "rrr.example:8443"),
        ("null", "rrr.example"),
        ("file://", "rrr.example"),
        ("http://rrr.example:notaport", "rrr.example"),
    ],
)
def test_foreign_origins_are_refused(origin: str, host: str) -> None:
    assert not origin_allowed(origin, host, NONE, "http")


def test_allow_list_and_wildcard() -> None:
    allowed = parse_origins(" https://app.example/ , http://localhost:3000")
    assert origin_allowed("https://app.example", "api.example", allowed, "https")
    assert origin_allowed("http://localhost:3000", "api.example", allowed, "https")
    assert not origin_allowed("https://other.example", "api.example", allowed, "https")
    assert origin_allowed("https://anything.example", "api.example", parse_origins("*"), "https")


def test_token_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=0.001, burst=3)
    assert [bucket.take() for _ in range(5)] == [True, True, True, False, False]


def _parser() -> OptionParser:
    p = OptionParser()
    p.define("port", default=8888, type=int)
    p.define("redis_url", default="")
    p.define("xheaders", default=False, type=bool)
    return p


def test_env_vars_then_argv_with_space_or_equals() -> None:
    p = _parser()
    env = {"RRR_PORT": "7000", "RRR_REDIS_URL": "redis://x"}
    argv = command_line(p, ["app.py", "--port", "8001", "--xheaders"], env)
    p.parse_command_line(argv)
    assert (p.port, p.redis_url, p.xheaders) == (8001, "redis://x", True)


def test_env_var_alone_sets_an_option() -> None:
    p = _parser()
    p.parse_command_line(command_line(p, ["app.py"], {"RRR_PORT": "7001"}))
    assert p.port == 7001
