"""No HTTP views: the peer only serves WebSockets."""

urlpatterns: list[object] = []
