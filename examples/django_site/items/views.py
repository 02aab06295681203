from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from .models import Item, LastSeen, Occupancy
from .notify import create_item


class ItemForm(forms.Form):
    title = forms.CharField(max_length=200)


@login_required
def item_list(request: HttpRequest) -> HttpResponse:
    """The list and the form that adds to it (the other users get a notification)."""
    form = ItemForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        create_item(request.user, form.cleaned_data["title"])
        return redirect("items")
    items = Item.objects.select_related("created_by")[:50]
    return render(request, "items/list.html", page("page-items", form=form, items=items))


@login_required
def item_detail(request: HttpRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(Item.objects.select_related("created_by"), pk=pk)
    return render(request, "items/detail.html", page(f"page-item-{item.pk}", item=item))


@login_required
def person(request: HttpRequest, pk: int) -> HttpResponse:
    """A user's page: when their last tab left the site (rrr's member_removed)."""
    user = get_object_or_404(get_user_model(), pk=pk)
    seen = LastSeen.objects.filter(user=user).first()
    return render(request, "items/person.html", page(f"page-user-{user.pk}", person=user, last_seen=seen))


def page(room: str, **context: object) -> dict[str, object]:
    """A page's context: its room (the talk's counter) and since when it has been occupied (rrr's
    channel_occupied; None while nobody else had it open)."""
    occupancy = Occupancy.objects.filter(room=room).first()
    return {"page_room": room, "occupied_since": occupancy.since if occupancy else None, **context}


@login_required
def pusher_page(request: HttpRequest) -> HttpResponse:
    """The same "online now" and the site's events, driven by pusher-js (not rrr's library): rrr is
    also a Pusher server, and this page authorizes its channels with rrr.django's Pusher views."""
    address, slash, path = settings.RRR_PUSHER_HOST.partition("/")  # host:port[/_rrr] (pusher-js's wsPath)
    host, _, port = address.rpartition(":")
    return render(request, "items/pusher.html", {"pusher_key": settings.RRR_PUSHER_KEY, "ws_host": host,
                                                 "ws_port": port, "ws_path": slash + path})


def pusher_js(request: HttpRequest) -> FileResponse:
    """pusher-js's browser build from this checkout's npm dev dependencies (an example's convenience:
    a real site serves its own bundle)."""
    if not settings.PUSHER_JS.is_file():
        raise Http404("pusher-js is not installed: run `npm ci` in the repository")
    return FileResponse(open(settings.PUSHER_JS, "rb"), content_type="text/javascript")
