from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from .models import Item
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
    return render(request, "items/list.html", {"form": form, "items": items, "page_room": "page-items"})


@login_required
def item_detail(request: HttpRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(Item.objects.select_related("created_by"), pk=pk)
    return render(request, "items/detail.html", {"item": item, "page_room": f"page-item-{item.pk}"})
