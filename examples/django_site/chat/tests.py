"""The chat's server side (``python examples/django_site/manage.py test chat``), on a real Redis at
``RRR_REDIS_URL``; `tests/test_django.py` runs them with the suite's redis-server, and
`tests/test_chat_example.py` drives the whole chat in Chromium against a real rrr."""

from __future__ import annotations

import time
from typing import Any

import jwt
from django.contrib.auth import get_user_model
from django.test import TransactionTestCase, override_settings

from items.tests import WEBHOOK_SECRET, Listener, event
from rrr.pusher.webhooks import signed_webhook

from .models import MAX_TEXT, Message, Present, Unread
from .rooms import pair_of, pair_room, public_room

SECRET = "chat-tests-token-secret-of-decent-length"
GENERAL = public_room("general")


class RoomNameTests(TransactionTestCase):
    def test_a_pair_room_is_the_same_whoever_opens_it_and_only_its_own_names_parse(self) -> None:
        self.assertEqual(pair_room(7, 3), "presence-dm-3-7")
        self.assertEqual(pair_room(3, 7), pair_room(7, 3))
        self.assertEqual(pair_of("presence-dm-3-7"), (3, 7))
        for bad in ("presence-dm-7-3", "presence-dm-3-3", "presence-dm-a-b", "presence-dm-3", "presence-dm-3-7-9",
                    "presence-chat-general", "private-user-3"):
            self.assertIsNone(pair_of(bad), bad)


# With no Pusher app (its key would be the webhooks' default key): these sign with the key "rrr".
@override_settings(RRR_TOKEN_SECRET=SECRET, RRR_WEBHOOK_SECRET=WEBHOOK_SECRET, RRR_PUSHER_KEY="",
                   RRR_PUSHER_SECRET="")
class ChatViewTests(TransactionTestCase):
    """Real commits (TransactionTestCase), so publish_on_commit publishes as in production."""

    def setUp(self) -> None:
        User = get_user_model()
        self.alice, self.bob, self.carol = (User.objects.create_user(n) for n in ("alice", "bob", "carol"))
        self.pair = pair_room(self.alice, self.bob)

    def send(self, user: Any, room: str, text: str) -> Any:
        self.client.force_login(user)
        return self.client.post(f"/chat/send/{room}/", {"text": text}, headers={"Accept": "application/json"})

    def webhook(self, *events: dict[str, object]) -> None:
        body, headers = signed_webhook("rrr", WEBHOOK_SECRET, events, time.time() * 1000)
        response = self.client.post("/rrr/webhook/", data=body, content_type="application/json", headers={
            "X-Pusher-Key": headers["X-Pusher-Key"], "X-Pusher-Signature": headers["X-Pusher-Signature"]})
        self.assertEqual(response.status_code, 200)

    def test_a_third_users_token_names_every_room_but_the_pair_room_of_two_others(self) -> None:
        self.client.force_login(self.carol)
        claims = jwt.decode(self.client.get("/rrr/token/").content.decode(), SECRET, algorithms=["HS256"])
        self.assertEqual(claims["rooms"], [
            f"private-user-{self.carol.pk}", "presence-site", GENERAL, public_room("random"),
            pair_room(self.carol, self.alice), pair_room(self.carol, self.bob)])

    def test_the_site_refuses_a_pair_room_to_a_third_user_and_stores_nothing(self) -> None:
        self.assertEqual(self.send(self.carol, self.pair, "let me in").status_code, 403)
        self.assertEqual(self.client.get(f"/chat/messages/{self.pair}/?after=0").status_code, 403)
        self.assertEqual(self.send(self.carol, "presence-chat-nowhere", "x").status_code, 403)
        self.assertFalse(Message.objects.exists())

    def test_a_message_is_saved_published_on_commit_and_capped(self) -> None:
        listener = Listener(self.pair)
        self.addCleanup(listener.close)
        response = self.send(self.alice, self.pair, "  hello bob  ")
        self.assertEqual(response.status_code, 201)
        message = Message.objects.get()
        self.assertEqual(message.text, "hello bob")
        self.assertEqual(listener.until_sentinel(self.pair), [(self.pair, message.as_data())])
        self.assertEqual(self.send(self.alice, self.pair, "x" * (MAX_TEXT + 1)).status_code, 400)
        self.assertEqual(self.send(self.alice, self.pair, "   ").status_code, 400)
        self.assertEqual(Message.objects.count(), 1)
        page = self.client.get(f"/chat/messages/{self.pair}/?after=0").json()
        self.assertEqual(page, {"messages": [message.as_data()], "more": False})
        self.assertEqual(self.client.get(f"/chat/messages/{self.pair}/?after=-1").status_code, 400)

    def test_the_pages_and_a_plain_form_without_script(self) -> None:
        self.client.force_login(self.alice)
        plain = self.client.post(f"/chat/send/{self.pair}/", {"text": "no script here"})
        self.assertEqual((plain.status_code, plain["Location"]), (302, "/chat/with/bob/"))
        page = self.client.get("/chat/with/bob/")
        self.assertContains(page, "no script here")
        self.assertContains(page, f'data-room="{self.pair}"')
        self.assertEqual(self.client.get("/chat/with/alice/")["Location"], "/chat/")  # no room with oneself
        self.assertEqual(self.client.get("/chat/room/nowhere/").status_code, 404)
        self.assertEqual(self.client.get("/chat/with/nobody/").status_code, 404)
        self.client.logout()
        self.assertEqual(self.client.get("/chat/with/bob/").status_code, 302)  # to the login page

    def test_unread_counts_go_to_those_the_webhooks_left_out_of_the_room_and_clear_when_they_come(self) -> None:
        bob_room, carol_room = f"private-user-{self.bob.pk}", f"private-user-{self.carol.pk}"
        listener = Listener(bob_room, carol_room)
        self.addCleanup(listener.close)
        self.webhook(event("member_added", GENERAL, "c-1", 1, str(self.bob.pk)))
        self.assertTrue(Present.objects.filter(room=GENERAL, user=self.bob).exists())
        self.send(self.alice, GENERAL, "one")
        self.assertEqual(listener.until_sentinel(bob_room),
                         [(carol_room, {"type": "unread", "room": GENERAL, "count": 1})])
        self.assertFalse(Unread.objects.filter(user=self.bob, count__gt=0).exists())

        self.webhook(event("member_removed", GENERAL, "c-2", 2, str(self.bob.pk)))
        self.send(self.alice, GENERAL, "two")
        self.assertEqual(listener.until_sentinel(bob_room), [
            (bob_room, {"type": "unread", "room": GENERAL, "count": 1}),
            (carol_room, {"type": "unread", "room": GENERAL, "count": 2})])
        self.webhook(event("member_added", GENERAL, "c-3", 3, str(self.bob.pk)))
        self.assertEqual(listener.until_sentinel(bob_room), [(bob_room, {"type": "unread", "room": GENERAL,
                                                                         "count": 0})])
        self.assertEqual(Unread.objects.get(user=self.carol, room=GENERAL).count, 2)
        # Not a chat room, or not a user: nothing to keep.
        self.webhook(event("member_added", "presence-site", "c-4", 4, str(self.carol.pk)),
                     event("member_added", GENERAL, "c-5", 5, "nobody"))
        self.assertEqual(Present.objects.count(), 1)
