"""The Redis backplane: presence rows, pub/sub, history, keys and scripts, and the connection to Redis."""
