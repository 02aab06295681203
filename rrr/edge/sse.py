"""Server-sent events on the wire: a frame of ``/ws/`` as one SSE event, the keepalive comment, and
HTTP/1.1 chunked framing around either (pure: bytes in, bytes out).

An event is ``data: <frame JSON>`` and a blank line, with no ``event:`` field, so a browser's
``EventSource.onmessage`` sees every one. A frame holds no line break in practice (the server's JSON
is compact), but a message's data is relayed byte for byte as published, and JSON may carry CR or
LF as whitespace between its tokens (never inside a string). SSE ends a line at CR, LF or CRLF, so
each line of such a frame becomes a ``data:`` line of its own: the event's data is the lines joined
by LF, the same JSON value.
"""

from __future__ import annotations

import re

#: Sent whenever a stream has been silent for ``--sse-keepalive`` seconds: a comment, which
#: ``EventSource`` ignores, keeps proxies' idle timers from cutting a quiet stream.
KEEPALIVE = b": keepalive\n\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def event(text: str, event_id: str | None = None) -> bytes:
    """One event carrying ``text`` (a frame's JSON), with an ``id:`` line if ``event_id`` is given."""
    if "\n" in text or "\r" in text:
        data = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(text))
    else:
        data = f"data: {text}\n"
    head = f"id: {event_id}\n" if event_id is not None else ""
    return (head + data + "\n").encode("utf-8")


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body (Tornado's own framing of a response it
    streams without a length): what a stream's bytes look like when written past Tornado."""
    return b"%x\r\n%s\r\n" % (len(data), data)
