"""HTML pages: the redirect to a fresh room, and the live count page."""

from __future__ import annotations

import secrets
import string

from handlers.base import SecureHeaders

_ALPHABET = string.ascii_letters + string.digits


class IndexHandler(SecureHeaders):
    def get(self) -> None:
        slug = "".join(secrets.choice(_ALPHABET) for _ in range(6))
        self.redirect(f"/count/{slug}/", status=302)


class CountPageHandler(SecureHeaders):
    def initialize(self, client_publish: bool) -> None:
        self.client_publish = client_publish
        # A fresh nonce per response lets the inline import map run and nothing else inline.
        self.csp_nonce = secrets.token_urlsafe(16)
        self.set_default_headers()

    def get(self, slug: str) -> None:
        self.render("count.html", slug=slug, client_publish=self.client_publish, csp_nonce=self.csp_nonce)
