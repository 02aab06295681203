from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from rrr.django import publish_on_commit

from .models import MAX_TEXT, Message
from .rooms import PUBLIC_PREFIX, ROOMS, may_use, pair_of, pair_room, public_room
from .unread import clear, count_for_absent, counts

#: Messages a room page shows when it opens; older ones stay in the database.
SHOWN = 50
#: Messages one catch-up answer carries at most (the page asks again while ``more``).
PAGE = 100


class MessageForm(forms.Form):
    text = forms.CharField(max_length=MAX_TEXT, strip=True)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("chat-room", name=next(iter(ROOMS)))


@login_required
def room(request: HttpRequest, name: str) -> HttpResponse:
    if name not in ROOMS:
        raise Http404("no such room")
    return page(request, public_room(name), ROOMS[name])


@login_required
def pair(request: HttpRequest, username: str) -> HttpResponse:
    """The room of the signed-in user and ``username``: only those two can open it (the URL names the
    other one, so nobody can name a pair room they are not in)."""
    other = get_object_or_404(get_user_model(), username=username, is_active=True)
    if other.pk == request.user.pk:
        return redirect("chat")
    return page(request, pair_room(request.user, other), other.get_username(), other=other)


def page(request: HttpRequest, slug: str, title: str, other: Any = None) -> HttpResponse:
    """A room's page: its last messages from the database (the record, so a reload shows them), the
    unread counts, and what the page's script needs to go live (chat/static/chat/chat.js)."""
    user = request.user
    clear(user, slug)  # opening a room reads it (its member_added webhook does so too, a moment later)
    unread = counts(user)
    rooms = [{"slug": public_room(name), "title": room_title, "url": reverse("chat-room", args=[name]),
              "unread": unread.get(public_room(name), 0)} for name, room_title in ROOMS.items()]
    people = [{"slug": pair_room(user, person), "title": person.get_username(), "id": str(person.pk),
               "url": reverse("chat-pair", args=[person.get_username()]),
               "unread": unread.get(pair_room(user, person), 0)}
              for person in get_user_model().objects.filter(is_active=True).exclude(pk=user.pk).order_by("username")]
    shown = list(Message.objects.filter(room=slug).select_related("author").order_by("-pk")[:SHOWN])[::-1]
    config = {"room": slug, "me": str(user.pk),
              "sendUrl": reverse("chat-send", args=[slug]), "messagesUrl": reverse("chat-messages", args=[slug]),
              "lastId": shown[-1].pk if shown else 0}
    return render(request, "chat/chat.html", {
        "room_slug": slug, "title": title, "other": other, "rooms": rooms, "people": people,
        "messages": shown, "chat_config": config, "form": MessageForm(),
    })


@login_required
@require_POST
def send(request: HttpRequest, slug: str) -> HttpResponse:
    """A message, saved, then published to the room once the transaction commits (rrr keeps it in the
    room's history too, so a page that was briefly offline recovers it), and counted unread for the
    room's readers who are not in it. Answers JSON to the page's script, a redirect to a plain form."""
    if not may_use(request.user, slug):
        return HttpResponseForbidden("not your room")
    form = MessageForm(request.POST)
    wants_json = "application/json" in request.headers.get("Accept", "")
    if not form.is_valid():
        if wants_json:
            return JsonResponse({"errors": form.errors}, status=400)
        return redirect(back(request.user, slug))
    with transaction.atomic():
        message = Message.objects.create(room=slug, author=request.user, text=form.cleaned_data["text"])
        publish_on_commit(slug, message.as_data())
        count_for_absent(message)
    if wants_json:
        return JsonResponse({"id": message.pk}, status=201)
    return redirect(back(request.user, slug))


def back(user: Any, slug: str) -> str:
    """The page of ``slug``, where a plain form (no script) goes back to."""
    pair = pair_of(slug)
    if pair is None:
        return reverse("chat-room", args=[slug.removeprefix(PUBLIC_PREFIX)])
    other = get_user_model().objects.get(pk=pair[1] if pair[0] == user.pk else pair[0])
    return reverse("chat-pair", args=[other.get_username()])


@login_required
@require_GET
def messages(request: HttpRequest, slug: str) -> HttpResponse:
    """``?after=<id>``: the room's messages after that one, oldest first, at most PAGE (``more`` says
    whether others follow): how a page catches up with what was sent before its subscription was live,
    or after rrr could not recover (``onReset``)."""
    if not may_use(request.user, slug):
        return HttpResponseForbidden("not your room")
    after = request.GET.get("after", "0")
    if not after.isdigit() or len(after) > 18:
        return JsonResponse({"error": "after must be a message id"}, status=400)
    found = list(Message.objects.filter(room=slug, pk__gt=int(after)).select_related("author")[:PAGE + 1])
    return JsonResponse({"messages": [m.as_data() for m in found[:PAGE]], "more": len(found) > PAGE})
