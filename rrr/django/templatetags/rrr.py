"""``{% load rrr %}{% rrr_scripts %}`` in ``<head>``: the browser library, pointed at the rrr service.

It writes an import map (``"rrr"`` → the library beside ``RRR_SOCKET_URL``, ``"rrr/django"`` →
this app's ``rrr/django.js``) and the configuration that module reads (the socket URL and the
token view's URL), so a page's own module needs only::

    import { connect } from "rrr/django";
    const rt = connect();   // the service's socket; getToken calls the token view

The library is served beside the socket, as its fallbacks are (``/ws/`` → ``/static/js/rrr.js``,
``/_rrr/ws/`` → ``/_rrr/static/js/rrr.js``). Same origin (``RRR_SOCKET_URL = "/_rrr/ws/"``:
nginx sends ``/_rrr/`` to rrr, deploy/nginx-same-origin.conf), it loads from
``/_rrr/static/js/rrr.js``, never from the site's own ``/static/``; with ``RRR_CONNECT_PROXY =
True`` no token view is named and ``connect()`` gets no ``getToken``: rrr asks the connect view
who the session cookie is.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from django import template
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()

# What json_script escapes: the JSON stays valid and cannot end the <script> element.
_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


#: The library relative to the socket (rrr serves ``/ws/`` and ``/static/``, and both again under ``/_rrr/``).
LIBRARY = "../static/js/rrr.js"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")).translate(_ESCAPES)


def library_url() -> str:
    """``../static/js/rrr.js`` from ``RRR_SOCKET_URL``, over http(s) for ws(s): where rrr serves the
    library beside that socket (``wss://rt.example.com/ws/`` → ``https://rt.example.com/static/js/rrr.js``;
    the path ``/_rrr/ws/``, rrr under the page's own origin → ``/_rrr/static/js/rrr.js``)."""
    socket_url = getattr(settings, "RRR_SOCKET_URL", "")
    if not socket_url:
        raise ImproperlyConfigured("RRR_SOCKET_URL is not set (e.g. wss://rt.example.com/ws/, or /_rrr/ws/ on the "
                                   "site's own origin)")
    if socket_url.startswith("/") and not socket_url.startswith("//"):
        return urllib.parse.urljoin(urllib.parse.urlsplit(socket_url).path, LIBRARY)
    parts = urllib.parse.urlsplit(socket_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ImproperlyConfigured(f"RRR_SOCKET_URL must be a ws:// or wss:// URL or a path, not {socket_url!r}")
    return urllib.parse.urljoin(f"{scheme}://{parts.netloc}{parts.path or '/'}", LIBRARY)


@register.simple_tag
def rrr_scripts(nonce: str = "") -> SafeString:
    """The import map and ``#rrr-config``; ``nonce`` for a Content-Security-Policy that asks for one."""
    imports = {"imports": {"rrr": library_url(), "rrr/django": static("rrr/django.js")}}
    config: dict[str, Any] = {"socketUrl": settings.RRR_SOCKET_URL}
    if not getattr(settings, "RRR_CONNECT_PROXY", False):
        config["tokenUrl"] = reverse("rrr:token")
    nonce_attr = format_html(' nonce="{}"', nonce) if nonce else ""
    return format_html(
        '<script type="importmap"{}>{}</script>\n<script type="application/json" id="rrr-config">{}</script>',
        nonce_attr, SafeString(_json(imports)), SafeString(_json(config)),
    )
