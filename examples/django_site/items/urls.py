from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.item_list, name="items"),
    path("items/<int:pk>/", views.item_detail, name="item"),
    path("people/<int:pk>/", views.person, name="person"),
    path("pusher/", views.pusher_page, name="pusher"),
    path("pusher/pusher.min.js", views.pusher_js, name="pusher-js"),
]
