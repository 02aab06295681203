"""Peer servers doing rrr's job with what a user would pick instead.

They are set up the way a competent user would: the documented APIs, no debug
logging, raised limits where the defaults would drop messages. Each speaks the
same JSON frames as rrr (``connection_message`` with ``connections`` and
``updated``; ``message`` with ``room`` and ``data``) so one driver measures all.
"""
