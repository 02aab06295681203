"""The Pusher Channels protocol (version 7), as pure functions: no sockets, no Redis, no Tornado.

rrr speaks Pusher's protocol so that Pusher's own client and server SDKs (pusher-js, Laravel
Echo, the ``pusher`` Python and Node packages) work against it unchanged. Everything that decides
what such a client may send and what it gets back lives here, so it can be checked against the
real SDKs without a server, and the WebSocket endpoint and HTTP routes that use it stay thin:

* `rrr.pusher.names`: channel names and what their prefixes mean; event names; user ids;
  socket ids.
* `rrr.pusher.protocol`: the frames on the socket (parsing what a client sends, building what it
  receives), presence member lists, ``pusher:error`` codes.
* `rrr.pusher.signing`: every HMAC Pusher uses: channel authorization, user authentication
  (``pusher:signin``), HTTP API request signatures, webhook signatures.
* `rrr.pusher.api`: the HTTP API's request bodies and queries, validated into typed values with
  Pusher's statuses, and its response shapes.
* `rrr.pusher.webhooks`: the webhook events and the signed body that carries them.
* `rrr.pusher.crossing`: how a Pusher event and an rrr message become each other, so a room is
  one room whichever protocol its members speak.
"""
