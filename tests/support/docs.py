"""Reading the documentation as the tests that run its samples do: a section of the README or of a
page of the site (docs/), its fenced code blocks, the lines of them that hold a command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def headings(text: str) -> list[tuple[int, int, str]]:
    """``(offset, level, title)`` of each Markdown heading outside fenced code (a shell comment such
    as ``# Auth0`` in a code block is no heading)."""
    found, fence, offset = [], False, 0
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"(#{1,6}) (.+?)\s*$", line)):
            found.append((offset, len(m[1]), m[2]))
        offset += len(line)
    return found


def section(title: str, path: str = "README.md") -> str:
    """The section of ``path`` (the README, or a page such as ``docs/guides/django.md``) headed
    ``title`` at any level, up to the next heading of that level or above."""
    text = (ROOT / path).read_text()
    marks = headings(text)
    for i, (start, level, name) in enumerate(marks):
        if name == title:
            end = next((o for o, lv, _ in marks[i + 1:] if lv <= level), len(text))
            return text[start:end]
    raise AssertionError(f"{path} has no section {title!r}")


def blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of ``lang``, with shell line continuations joined."""
    return [b.replace("\\\n", " ") for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S)]


def lines_with(text: str, lang: str, needle: str) -> list[str]:
    return [line.strip() for block in blocks(text, lang) for line in block.splitlines() if needle in line]
