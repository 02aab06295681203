"""The HTTP and WebSocket edge the handlers use: the server's guards and timeouts (`guard`), the
Host allow-list and security headers (`headers`), which Origins may drive a socket (`origins`),
one ping timer for every socket that needs one (`keepalive`), frames encoded once and written
straight to the stream and small ones read in one step (`wsframe`), bulk deliveries paced by a
socket's draining (`outbox`), and what a log line may show of a request (`requestlog`)."""
