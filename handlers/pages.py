"""HTML pages: the redirect to a fresh room, and the live count page."""

from __future__ import annotations

import secrets
import string

import tornado.web

_ALPHABET = string.ascii_letters + string.digits


class IndexHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        slug = "".join(secrets.choice(_ALPHABET) for _ in range(6))
        self.redirect(f"/count/{slug}/", status=302)


class CountPageHandler(tornado.web.RequestHandler):
    def initialize(self, client_publish: bool) -> None:
        self.client_publish = client_publish

    def get(self, slug: str) -> None:
        self.render("count.html", slug=slug, client_publish=self.client_publish)
