"""Thin Tornado handlers: they adapt HTTP and WebSocket callbacks to the hub, and hold no state of their own."""
