"""``WS /ws/count/<slug>/``: the talk's one-room socket, and the talk's own client reading it."""

import pytest

from support.clients import Client, connect
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=60)


class TalkClient:
    """The slide's browser code in Python: it reads only data['connections'] and data['updated']."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def shown(self) -> tuple[int, float] | None:
        frames = self.client.frames
        if not frames:
            return None
        data = frames[-1]
        return data["connections"], data["updated"]


async def test_a_new_socket_gets_the_count_at_once(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    a = await connect(server.ws_url("/ws/count/abc/"))
    clients.append(a)
    first = await a.next("connection_message", after=0)
    assert first["room"] == "abc" and first["connections"] == 1 and first["tabs"] == 1
    assert isinstance(first["updated"], float) and first["updated"] > 1.6e9


async def test_others_see_every_change(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    a = await connect(server.ws_url("/ws/count/abc/"))
    clients.append(a)
    await a.settles_on(1)
    b = await connect(server.ws_url("/ws/count/abc/"))
    clients.append(b)
    await a.settles_on(2)
    await b.settles_on(2)
    b.close()
    await a.settles_on(1)
    assert a.counts()[-1]["updated"] >= a.counts()[0]["updated"]


async def test_rooms_are_separate(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    a = await connect(server.ws_url("/ws/count/room-a/"))
    b = await connect(server.ws_url("/ws/count/room-b/"))
    clients += [a, b]
    await a.settles_on(1)
    await b.settles_on(1)
    assert all(f["room"] == "room-a" for f in a.frames)


async def test_the_talks_client_code_counts_correctly(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    talk = [TalkClient(await connect(server.ws_url("/ws/count/ZVk89y/"))) for _ in range(3)]
    clients += [t.client for t in talk]
    for t in talk:
        await t.client.settles_on(3)
    assert all(t.shown[0] == 3 for t in talk)  # type: ignore[index]
    talk[0].client.close()
    for t in talk[1:]:
        await t.client.settles_on(2)
        assert t.shown[0] == 2 and t.shown[1] >= talk[1].client.frames[0]["updated"]  # type: ignore[index]


async def test_the_talk_socket_answers_ping_and_refuses_other_rooms(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory()
    a = await connect(server.ws_url("/ws/count/abc/"))
    clients.append(a)
    await a.send(type="ping")
    await a.next("pong", after=0)
    await a.send(type="subscribe", room="other", sub="x")
    err = await a.next("error", after=0)
    assert err["code"] == "unsupported"
