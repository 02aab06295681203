"""Reduce, Reuse, Recycle: live room presence and pub/sub relay behind the Tornado handlers.

The core (the hub, the local rooms, delivery, counts, members, the presence writer, assembled by
`rrr.service`), the Redis backplane it runs on (`rrr.backplane`), the HTTP/WebSocket edge the
handlers use (`rrr.edge`), and the public library for backends (`rrr.client`, `rrr.django`).
"""
