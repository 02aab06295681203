"""``--token-jwks-url``: the public keys an identity provider publishes, fetched and kept current.

An OIDC provider (Auth0, Keycloak, Cognito, ...) signs its tokens with keys it publishes as a
JWK Set and rotates them: a new key appears, tokens start naming it by ``kid``, the old one
goes. `JwksKeys` holds the set rrr verifies with (`rrr.auth.Verifier` reads it, synchronously)
and fetches it: once at start, every `REFRESH_EVERY` s (after a failure every ``min_interval``
s), and at once when a token names a ``kid`` the set lacks, but for that reason at most once per
``min_interval`` (30 s): a flood of tokens with made-up kids costs the provider one request per
30 s, never one per token. Tokens that arrive while a fetch runs wait for it and share it.

A fetch that succeeds (200, a JSON object with a ``keys`` list) replaces the set, even with an
empty one (the provider withdrew every key); any other answer, a timeout, or a body over
``max_bytes`` keeps the set held. Redirects are not followed: a key set is fetched from the URL
the operator gave (an ``https://`` one, or ``http://`` to this machine: `check_url`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient

from .auth import Key, Verifier, key_from_pem, keys_from_jwks
from .supervise import RateLimitedLog, Supervisor

log = logging.getLogger("rrr.jwks")

#: Unknown-kid refetches at most once per this many seconds.
MIN_INTERVAL = 30.0
#: A held key set is fetched again this often, so a key the provider withdrew stops verifying.
REFRESH_EVERY = 600.0
FETCH_TIMEOUT = 5.0
MAX_BYTES = 1 << 20


class JwksError(Exception):
    """A fetch that did not bring a key set."""


def check_url(url: str) -> str:
    """``url`` if rrr may fetch keys from it: ``https://`` to any host, ``http://`` only to a
    loopback one (127.0.0.0/8, ::1, localhost), since keys fetched in the clear from elsewhere could
    be anyone's. ValueError otherwise."""
    why = "must be an https:// URL, or http:// to a loopback host (127.0.0.1, ::1, localhost)"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"{why}; {url[:200]!r} is not a URL") from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and _loopback(host):
        return url
    raise ValueError(f"{why}, not {url[:200]!r}")


def _loopback(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shown(url: str) -> str:
    """The URL for the log: no userinfo, no query."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


class JwksKeys:
    """The key set at ``url`` (`rrr.auth.KeySource`). ``fetches`` counts fetch attempts."""

    def __init__(
        self, url: str, *, min_interval: float = MIN_INTERVAL, refresh_every: float = REFRESH_EVERY,
        timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_BYTES, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = check_url(url)
        self.min_interval = min_interval
        self.refresh_every = refresh_every
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self.keys: tuple[Key, ...] = ()
        self.fetches = 0
        self.ok = False  # the last fetch brought a key set
        self._last_refetch: float | None = None  # when the last unknown-kid fetch started
        self._inflight: asyncio.Task[bool] | None = None
        self._supervisor: Supervisor | None = None
        self._log = RateLimitedLog(log)

    # -- what the verifier asks ------------------------------------------------

    def may_refetch(self) -> bool:
        last = self._last_refetch
        return self._inflight is not None or last is None or self.clock() - last >= self.min_interval

    async def refetch(self) -> bool:
        """For a token naming a key the set lacks: join the fetch under way, or start one unless one
        was started for this reason less than ``min_interval`` s ago (then False, at once)."""
        if self._inflight is None:
            if not self.may_refetch():
                return False
            self._last_refetch = self.clock()
        await self.refresh()
        return True

    # -- fetching --------------------------------------------------------------

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """The fetch at start; then, under ``supervisor``, the periodic ones. A failed first fetch
        is logged and the process serves anyway: tokens signed with the provider's keys are refused
        until a fetch succeeds (HMAC and PEM keys work meanwhile), as rrr starts without Redis."""
        self._supervisor = supervisor
        if not await self.refresh():
            log.warning("starting without the key set of %s: its tokens are refused until a fetch succeeds "
                        "(retried every %.0f s, and at once for a token's unknown kid)",
                        _shown(self.url), self.min_interval)
        if supervisor is not None:
            supervisor.spawn("jwks", self.run)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_every if self.ok else self.min_interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """One fetch, shared by everyone who asks while it runs; True if it replaced the key set."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        # Shielded: a handshake that gives up waiting must not cancel everyone's fetch.
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            keys, notes = await self._get()
        except Exception as e:  # noqa: BLE001 - whatever the provider answers, the held set stays
            self.ok = False
            self._failed(e)
            return False
        finally:
            self._inflight = None
        changed = not self.ok or [(k.kid, k.alg) for k in keys] != [(k.kid, k.alg) for k in self.keys]
        self.keys = tuple(keys)
        self.ok = True
        if self._supervisor is not None:
            self._supervisor.recovered("jwks")
        if changed:
            for note in notes:
                log.warning("key set %s: %s", _shown(self.url), note)
            if keys:
                log.info("key set %s: %s", _shown(self.url), ", ".join(str(k) for k in keys))
            else:
                log.warning("key set %s holds no usable key: tokens for it are refused", _shown(self.url))
        return True

    async def _get(self) -> tuple[list[Key], list[str]]:
        where = _shown(self.url)
        declared = [0]  # Content-Length, if the answer says
        chunks: list[bytes] = []

        def header(line: str) -> None:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                declared[0] = int(value.strip())

        # Tornado cuts the connection past max_body_size (declared or chunked) without reading on.
        client = AsyncHTTPClient(force_instance=True, max_body_size=self.max_bytes)
        try:
            response = await client.fetch(
                self.url, connect_timeout=self.timeout, request_timeout=self.timeout, follow_redirects=False,
                raise_error=False, headers={"Accept": "application/json"}, user_agent="rrr",
                header_callback=header, streaming_callback=chunks.append,
            )
        except Exception as e:  # noqa: BLE001 - refused, reset, timed out, cut off: all one failure
            if declared[0] > self.max_bytes:
                raise JwksError(f"{where}: the key set is over {self.max_bytes} bytes ({declared[0]})") from None
            got = sum(map(len, chunks))
            after = f" after {got} bytes (at most {self.max_bytes} are read)" if got else ""
            raise JwksError(f"{where}: {type(e).__name__}: {e}{after}") from None
        finally:
            client.close()
        if response.code != 200:
            redirect = " (redirects are not followed: give the final URL)" if 300 <= response.code < 400 else ""
            raise JwksError(f"{where} answered {response.code}{redirect}")
        body = b"".join(chunks)
        if len(body) > self.max_bytes:
            raise JwksError(f"{where}: the key set is over {self.max_bytes} bytes")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise JwksError(f"{where}: the answer is not JSON") from None
        try:
            return keys_from_jwks(document)
        except ValueError as e:
            raise JwksError(f"{where}: {e}") from None

    def _failed(self, e: Exception) -> None:
        """Counted in ``rrr_task_errors_total{task="jwks"}`` and logged at most once per 30 s."""
        if self._supervisor is not None:
            self._supervisor.report("jwks", e)
        else:
            self._log.warning("jwks", "fetching the key set failed: %s", e)


def verifier_from_options(o: Mapping[str, Any]) -> Verifier:
    """The `Verifier` the ``--token-*`` options in ``o`` describe (nothing fetched yet:
    `JwksKeys.start`). ValueError, naming the option, for a key file or URL rrr cannot use.
    ``jwks_min_interval`` is no option: tests shorten it to see a second refetch."""
    secret, public_key_file, jwks_url = o["token_secret"], o["token_public_key"], o["token_jwks_url"]
    pem = ""
    if public_key_file:
        try:
            pem = Path(public_key_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--token-public-key: cannot read {public_key_file}: {e}") from None
        try:
            key_from_pem(pem)
        except ValueError as e:
            raise ValueError(f"--token-public-key: {public_key_file} is {e}") from None
    jwks = None
    if jwks_url:
        try:
            jwks = JwksKeys(jwks_url, min_interval=o.get("jwks_min_interval", MIN_INTERVAL))
        except ValueError as e:
            raise ValueError(f"--token-jwks-url {e}") from None
    return Verifier(
        secret=secret, public_key=pem, max_age=o["token_max_age"], audience=o["token_audience"],
        issuer=o["token_issuer"], jwks=jwks,
    )
