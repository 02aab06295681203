"""Peer (a): the talk's own stack, Django Channels + daphne + channels_redis."""
