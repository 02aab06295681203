"""docs/reference/python-client.md shows only code that runs: each free-standing Python block is run
here, against a real redis-server and a real rrr whose socket must receive what the blocks publish;
each other block is quoted, word for word, from a file the suite runs (the example Django site, the
nginx recipe), which this test checks is still so."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

from rrr.backplane.embedded import EmbeddedRedis
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=90)

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "python-client.md"
#: The page's stand-ins, and what they become here.
PAGE_REDIS = "redis://127.0.0.1:6379/0"
PAGE_SECRET = "the same value as rrr's --token-secret"
BLOCK = re.compile(r"(?:<!-- quoted: (?P<source>\S+) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.DOTALL)


def blocks() -> list[tuple[str | None, str, str]]:
    found = [(m["source"], m["lang"], m["code"]) for m in BLOCK.finditer(PAGE.read_text())]
    assert found, f"no code blocks in {PAGE}"
    return found


def test_every_quoted_block_is_still_in_its_file() -> None:
    quoted = [(source, code) for source, _, code in blocks() if source]
    assert len(quoted) >= 5
    for source, code in quoted:
        path = ROOT / source
        assert path.is_file(), f"the page quotes {source}, which does not exist"
        assert code in path.read_text(), f"the page's quote of {source} is no longer in it:\n{code}"


def test_every_block_is_either_quoted_or_python_this_test_runs() -> None:
    loose = [(lang, code[:60]) for source, lang, code in blocks() if not source and lang != "python"]
    assert loose == [], "a block that is neither quoted from a tested file nor run here"


async def test_the_pages_python_examples_publish_to_a_real_rrr_and_mint_a_token_it_accepts(
    own_redis: EmbeddedRedis, server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(redis=own_redis.url, token_secret=PAGE_SECRET)
    page = await connect(server.ws_url("/ws/"))
    clients.append(page)
    await page.send(type="subscribe", room="news", sub="tab")
    await page.settles_on(1, 1, room="news")

    runnable = [code for source, lang, code in blocks() if not source and lang == "python"]
    assert len(runnable) >= 5
    # every block that reaches Redis names the stand-in URL, so none publishes to a Redis of its own
    assert all(PAGE_REDIS in code for code in runnable if re.search(r"\b(?:a?publish|max_message_size)\(", code))
    outputs: list[str] = []
    spaces: list[dict[str, Any]] = []

    def run_all() -> None:
        """Each block as a reader would paste it into a fresh interpreter (in a thread of its own,
        so a block's asyncio.run has no running loop around it)."""
        for code in runnable:
            namespace: dict[str, Any] = {"__name__": "__main__"}
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code.replace(PAGE_REDIS, own_redis.url), str(PAGE), "exec"), namespace)
            outputs.append(out.getvalue())
            spaces.append(namespace)

    await asyncio.get_running_loop().run_in_executor(None, run_all)

    # What the publishing blocks sent, in order, each once; the failing ones sent nothing.
    await wait_until(lambda: len(page.of_type("message")) >= 3, what="the three published messages")
    await asyncio.sleep(0.5)
    messages = page.of_type("message")
    assert [m["data"] for m in messages] == [
        {"headline": "rrr speaks Python"}, {"id": 7, "title": "Plums"}, {"headline": "and asyncio too"},
    ]
    assert messages[1].get("event") == "item-created" and "event" not in messages[0]
    printed = "".join(outputs)
    assert f"stored as message {messages[0]['offset']}\n" in printed
    assert f"stored as message {messages[2]['offset']}\n" in printed
    assert printed.count("refused, nothing sent:") == 3 and "Redis" not in printed.split("refused")[0]
    assert "over the servers' --max-message-size (65536 bytes); nothing was sent" in printed

    # The token block's token, on rrr's socket.
    (jwt,) = [space["jwt"] for space in spaces if "jwt" in space]
    await page.send(type="auth", token=jwt)
    assert (await page.next("authenticated"))["user"] == "42"
