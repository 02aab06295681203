"""The HTTP and WebSocket edge the handlers use: the server's guards and timeouts (`guard`), the
Host allow-list and security headers (`headers`), which Origins may drive a socket (`origins`),
one ping timer for every socket (`keepalive`), frames encoded once and written straight to the
stream (`wsframe`), bulk deliveries paced by a socket's draining (`outbox`), and what a log line
may show of a request (`requestlog`)."""
