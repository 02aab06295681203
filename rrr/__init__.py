"""Reduce, Reuse, Recycle: the Redis backplane and local fan-out behind the Tornado handlers."""
