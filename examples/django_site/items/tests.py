"""The example site's own tests (``python examples/django_site/manage.py test items``), on a real
Redis at ``RRR_REDIS_URL``; `tests/test_django.py` runs them with the suite's redis-server. The
browser end of things (presence, the socket, sign-out) is tested there, against a real rrr."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.template import Context, Template
from django.test import TestCase, TransactionTestCase, override_settings

from rrr.backplane import keys
from rrr.django import publish_on_commit
from rrr.django.signals import member_added, member_removed, room_occupied, room_vacated
from rrr.errors import BackplaneError
from rrr.pusher.webhooks import signed_webhook

from .models import Item, LastSeen, Occupancy
from .notify import create_item

SECRET = "items-tests-secret"
SENTINEL = {"type": "sentinel"}


def custom_grants(user: Any) -> dict[str, Any]:
    return {"rooms": ["presence-staff"], "publish": ["presence-staff"], "info": {"name": "custom"}}


@override_settings(RRR_TOKEN_SECRET=SECRET)
class TokenViewTests(TestCase):
    def setUp(self) -> None:
        self.alice = get_user_model().objects.create_user("alice", password="pw")

    def test_anonymous_users_get_403_not_a_login_redirect(self) -> None:
        response = self.client.get("/rrr/token/")
        self.assertEqual(response.status_code, 403)

    def test_a_signed_in_user_gets_a_fresh_token_for_their_own_room_and_the_presence_rooms(self) -> None:
        self.client.force_login(self.alice)
        response = self.client.get("/rrr/token/")
        self.assertEqual(response.status_code, 200)
        self.assertIn("no-cache", response["Cache-Control"])
        claims = jwt.decode(response.content.decode(), SECRET, algorithms=["HS256"])
        self.assertEqual(claims["sub"], str(self.alice.pk))
        # rrr.django's default grants, then the chat's rooms (chat/rooms.py)
        self.assertEqual(claims["rooms"][:2], [f"private-user-{self.alice.pk}", "presence-site"])
        self.assertTrue(all(room.startswith(("presence-chat-", "presence-dm-")) for room in claims["rooms"][2:]))
        self.assertEqual(claims["info"], {"name": "alice"})
        self.assertNotIn("publish", claims)
        self.assertLessEqual(abs(claims["exp"] - time.time() - 3600), 5)

    @override_settings(RRR_GRANTS="items.tests.custom_grants")
    def test_grants_come_from_the_callable_the_setting_names(self) -> None:
        self.client.force_login(self.alice)
        claims = jwt.decode(self.client.get("/rrr/token/").content.decode(), SECRET, algorithms=["HS256"])
        self.assertEqual((claims["rooms"], claims["publish"], claims["info"]),
                         (["presence-staff"], ["presence-staff"], {"name": "custom"}))

    @override_settings(RRR_TOKEN_SECRET=f" {SECRET} , a-secret-being-rotated-out")
    def test_during_a_rotation_tokens_are_signed_with_the_first_secret_of_the_list(self) -> None:
        self.client.force_login(self.alice)
        claims = jwt.decode(self.client.get("/rrr/token/").content.decode(), SECRET, algorithms=["HS256"])
        self.assertEqual(claims["sub"], str(self.alice.pk))

    def test_only_get(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.post("/rrr/token/").status_code, 405)


class TemplateTagTests(TestCase):
    def render(self) -> str:
        return Template("{% load rrr %}{% rrr_scripts %}").render(Context({}))

    @override_settings(RRR_SOCKET_URL="wss://rt.example.com/ws/")
    def test_the_import_map_points_at_the_services_origin(self) -> None:
        html = self.render()
        imports = json.loads(html.split('<script type="importmap">', 1)[1].split("</script>", 1)[0])["imports"]
        self.assertEqual(imports["rrr"], "https://rt.example.com/static/js/rrr.js")
        self.assertEqual(imports["rrr/django"], "/static/rrr/django.js")
        config = json.loads(html.split('id="rrr-config">', 1)[1].split("</script>", 1)[0])
        self.assertEqual(config, {"socketUrl": "wss://rt.example.com/ws/", "tokenUrl": "/rrr/token/"})

    @override_settings(RRR_SOCKET_URL="ws://127.0.0.1:8888/ws/?x=</script><script>alert(1)</script>")
    def test_nothing_in_the_settings_can_end_the_script_element(self) -> None:
        html = self.render()
        self.assertEqual(html.count("</script>"), 2)


class Listener:
    """A real Redis subscriber to users' private rooms, on both channels rrr relays: messages
    stored in history (``<offset> <epoch> <data>`` on the room's message channel) and plain
    backend ones (the room channel). `until_sentinel` reads up to a marker, so "nothing arrived"
    is checked against a message that did (Redis delivers to a subscriber in publish order)."""

    def __init__(self, *rooms: str) -> None:
        self.client = redis.Redis.from_url(settings.RRR_REDIS_URL)
        self.pubsub = self.client.pubsub()
        self.rooms = {keys.room_channel(r): r for r in rooms} | {keys.message_channel(r): r for r in rooms}
        self.pubsub.subscribe(*self.rooms)
        confirmed = 0
        while confirmed < len(self.rooms):  # wait until Redis has taken every SUBSCRIBE
            message = self.pubsub.get_message(timeout=10)
            assert message is not None, "redis did not confirm the subscriptions within 10 s"
            confirmed += message["type"] == "subscribe"

    def until_sentinel(self, room: str) -> list[tuple[str, Any]]:
        self.client.publish(keys.room_channel(room), json.dumps(SENTINEL))
        got: list[tuple[str, Any]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1)
            if message is None or message["type"] != "message":
                continue
            channel = message["channel"].decode()
            text = message["data"].decode()
            if channel.startswith(keys.message_channel("")[:-2]):
                text = text.split(" ", 2)[2]
            data = json.loads(text)
            if data == SENTINEL:
                return got
            got.append((self.rooms[channel], data))
        raise AssertionError(f"no sentinel within 10 s; got {got}")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


class PublishOnCommitTests(TransactionTestCase):
    """Real commits (TransactionTestCase), so on_commit runs as in production."""

    def setUp(self) -> None:
        User = get_user_model()
        self.alice = User.objects.create_user("alice")
        self.bob = User.objects.create_user("bob")
        self.listener = Listener(f"private-user-{self.alice.pk}", f"private-user-{self.bob.pk}")
        self.addCleanup(self.listener.close)

    def test_a_new_item_reaches_the_other_users_room_only(self) -> None:
        item = create_item(self.alice, "apples")
        got = self.listener.until_sentinel(f"private-user-{self.alice.pk}")
        self.assertEqual(got, [(f"private-user-{self.bob.pk}",
                                {"type": "item_created", "item": item.pk, "title": "apples", "by": "alice"})])

    def test_nothing_is_published_before_the_commit_nor_after_a_rollback(self) -> None:
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                create_item(self.alice, "never")
                self.assertEqual(self.listener.until_sentinel(f"private-user-{self.bob.pk}"), [])
                raise RuntimeError("roll back")
        self.assertFalse(Item.objects.exists())
        self.assertEqual(self.listener.until_sentinel(f"private-user-{self.bob.pk}"), [])

    @override_settings(RRR_REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens there
    def test_a_publish_that_fails_after_the_commit_is_logged_and_the_rows_stay(self) -> None:
        with self.assertLogs("django.db.backends.base", "ERROR") as logged:
            create_item(self.alice, "saved")
        self.assertTrue(Item.objects.filter(title="saved").exists())
        self.assertIn("BackplaneError", "\n".join(logged.output))
        with self.assertRaises(BackplaneError):
            with transaction.atomic():
                publish_on_commit("anywhere", {"a": 1}, robust=False)

    def test_a_bad_room_or_payload_fails_at_once_in_the_caller(self) -> None:
        with self.assertRaises(ValueError):
            publish_on_commit("no spaces", {"a": 1})
        with self.assertRaises(ValueError):
            publish_on_commit("fine", {"a": object()})

    def test_a_payload_the_servers_would_drop_fails_at_once_and_sends_nothing(self) -> None:
        room = f"private-user-{self.bob.pk}"
        with self.assertRaises(ValueError):
            with transaction.atomic():
                publish_on_commit(room, {"blob": "x" * 70_000})  # over the servers' 64 KiB
        self.assertEqual(self.listener.until_sentinel(room), [])


WEBHOOK_SECRET = "items-webhook-secret"


def event(name: str, room: str, id: str, at_ms: int, user: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "channel": room, "id": id, "at_ms": at_ms}
    if user is not None:
        out["user_id"] = user
    return out


# With no Pusher app (its key would be the webhooks' default key): these sign with the key "rrr".
@override_settings(RRR_WEBHOOK_SECRET=WEBHOOK_SECRET, RRR_PUSHER_KEY="", RRR_PUSHER_SECRET="")
class WebhookViewTests(TestCase):
    """``/rrr/webhook/``: what rrr's webhooks become here, signed as rrr signs them."""

    def setUp(self) -> None:
        self.alice = get_user_model().objects.create_user("alice", password="pw")
        self.heard: list[tuple[str, dict[str, Any]]] = []
        for signal in (room_occupied, room_vacated, member_added, member_removed):
            signal.connect(self.hear, dispatch_uid=f"test-{id(signal)}")
            self.addCleanup(signal.disconnect, dispatch_uid=f"test-{id(signal)}")

    def hear(self, signal: Any, sender: Any, **kwargs: Any) -> None:
        name = {room_occupied: "occupied", room_vacated: "vacated", member_added: "added",
                member_removed: "removed"}[signal]
        self.heard.append((name, kwargs))

    def post(self, events: list[dict[str, Any]], *, key: str = "rrr", secret: str = WEBHOOK_SECRET,
             time_ms: float | None = None, tamper: bool = False) -> Any:
        body, headers = signed_webhook(key, secret, events, time.time() * 1000 if time_ms is None else time_ms)
        if tamper:
            body = body.replace(b'"at_ms":', b'"at_ms": ')
        return self.client.post("/rrr/webhook/", data=body, content_type="application/json", headers={
            "X-Pusher-Key": headers["X-Pusher-Key"], "X-Pusher-Signature": headers["X-Pusher-Signature"],
        })

    def test_each_event_sends_its_signal_with_room_user_and_when(self) -> None:
        at = 1_700_000_000_123
        room = f"private-user-{self.alice.pk}"
        response = self.post([
            event("channel_occupied", "presence-site", "e-1", at),
            event("member_added", "presence-site", "e-2", at, str(self.alice.pk)),
            event("member_removed", "presence-site", "e-3", at + 5000, str(self.alice.pk)),
            event("channel_vacated", room, "e-4", at + 6000),
        ])
        self.assertEqual(response.status_code, 200)
        self.assertEqual([name for name, _ in self.heard], ["occupied", "added", "removed", "vacated"])
        _, removed = self.heard[2]
        self.assertEqual((removed["room"], removed["user_id"]), ("presence-site", str(self.alice.pk)))
        self.assertEqual(removed["at"].timestamp(), (at + 5000) / 1000)
        self.assertIsNone(self.heard[0][1]["user_id"])
        # The example site's receivers: the user's last seen, the room's occupancy.
        self.assertEqual(LastSeen.objects.get(user=self.alice).at.timestamp(), (at + 5000) / 1000)
        self.assertTrue(Occupancy.objects.filter(room="presence-site").exists())
        self.assertFalse(Occupancy.objects.filter(room=room).exists())

    def test_an_id_already_handled_is_dropped(self) -> None:
        first = event("channel_occupied", "page-items", "dup-1", 1_700_000_000_000)
        self.assertEqual(self.post([first]).status_code, 200)
        again = self.post([first, event("channel_vacated", "page-items", "dup-2", 1_700_000_001_000)])
        self.assertEqual(again.status_code, 200)
        self.assertEqual(json.loads(again.content), {"handled": 1, "duplicates": 1})
        self.assertEqual([name for name, _ in self.heard], ["occupied", "vacated"])

    def test_a_wrong_key_signature_body_or_an_old_time_is_refused_and_changes_nothing(self) -> None:
        events = [event("member_removed", "presence-site", "bad-1", 1_700_000_000_000, str(self.alice.pk))]
        for response in (
            self.post(events, key="not-rrr"),
            self.post(events, secret="not-the-secret"),
            self.post(events, tamper=True),
            self.post(events, time_ms=time.time() * 1000 - 301_000),
            self.client.post("/rrr/webhook/", data=b"{}", content_type="application/json"),
        ):
            self.assertEqual(response.status_code, 401, response.content)
        self.assertEqual(self.heard, [])
        self.assertFalse(LastSeen.objects.exists())
        self.assertEqual(self.client.get("/rrr/webhook/").status_code, 405)
        # and a genuine one of the same events still goes through afterwards (nothing was remembered)
        self.assertEqual(self.post(events).status_code, 200)
        self.assertEqual(len(self.heard), 1)

    @override_settings(RRR_WEBHOOK_KEY="site-key")
    def test_the_key_comes_from_the_setting(self) -> None:
        events = [event("channel_occupied", "page-items", "k-1", 1_700_000_000_000)]
        self.assertEqual(self.post(events).status_code, 401)
        self.assertEqual(self.post(events, key="site-key").status_code, 200)

    def test_a_receiver_that_fails_gets_the_event_again_with_rrrs_retry(self) -> None:
        calls: list[str] = []

        def flaky(sender: Any, room: str, **kwargs: Any) -> None:
            calls.append(room)
            if len(calls) == 2:
                raise RuntimeError("the database is busy")

        room_occupied.connect(flaky, dispatch_uid="flaky")
        self.addCleanup(room_occupied.disconnect, dispatch_uid="flaky")
        batch = [event("channel_occupied", "page-a", "f-1", 1_700_000_000_000),
                 event("channel_occupied", "page-b", "f-2", 1_700_000_000_000)]
        with self.assertLogs("rrr.django", "ERROR"):
            self.assertEqual(self.post(batch).status_code, 500)
        self.assertEqual(self.post(batch).status_code, 200)  # rrr's retry: f-1 was handled, f-2 was not
        self.assertEqual(calls, ["page-a", "page-b", "page-b"])

    def test_the_users_page_and_the_admin_show_last_seen_and_pages_since_when_they_are_open(self) -> None:
        at = int(time.time() * 1000) - 60_000
        self.post([event("member_removed", "presence-site", "p-1", at, str(self.alice.pk)),
                   event("channel_occupied", "page-items", "p-2", at)])
        self.client.force_login(self.alice)
        page = self.client.get(f"/people/{self.alice.pk}/").content.decode()
        self.assertIn('id="last-seen"', page)
        self.assertIn(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at / 1000)), page)
        items = self.client.get("/").content.decode()
        self.assertIn("Open somewhere since " + time.strftime("%H:%M:%S", time.gmtime(at / 1000)), items)
        admin = get_user_model().objects.create_superuser("root", password="pw")
        self.client.force_login(admin)
        listing = self.client.get("/admin/auth/user/").content.decode()
        self.assertIn("last seen", listing.lower())
        self.assertIn("column-last_seen_at", listing)
