from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="chat"),
    path("room/<slug:name>/", views.room, name="chat-room"),
    path("with/<str:username>/", views.pair, name="chat-pair"),
    path("send/<str:slug>/", views.send, name="chat-send"),
    path("messages/<str:slug>/", views.messages, name="chat-messages"),
]
