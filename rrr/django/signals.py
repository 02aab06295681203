"""What rrr's webhooks tell a Django site, as signals (sent by `rrr.django.views.webhook`).

Each is sent with ``room`` (the rrr room, Pusher's ``channel``), ``user_id`` (the member's ``sub``,
a string; None for a room's events) and ``at`` (an aware UTC datetime: when the first subscription
joined, for occupied and added; when the last one left, for vacated and removed)::

    from django.dispatch import receiver
    from rrr.django.signals import member_removed

    @receiver(member_removed)
    def remember(sender, room, user_id, at, **kwargs):
        Profile.objects.filter(user_id=user_id).update(last_seen=at)

The view answers rrr 200 only once every receiver returned; if one raises, it answers 500 and
rrr sends the event again later (those of the batch already handled are not sent to the
receivers twice).
"""

from __future__ import annotations

from django.dispatch import Signal

#: A room went from no subscription anywhere to at least one (``user_id`` None).
room_occupied = Signal()
#: It went back to none and stayed so for the service's ``--vacate-delay`` (``user_id`` None).
room_vacated = Signal()
#: A user's first subscription to a presence room, anywhere.
member_added = Signal()
#: A user's last subscription to a presence room left (after the member list's grace).
member_removed = Signal()

#: Each webhook event's name, and the signal it sends.
BY_EVENT = {
    "channel_occupied": room_occupied,
    "channel_vacated": room_vacated,
    "member_added": member_added,
    "member_removed": member_removed,
}
