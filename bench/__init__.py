"""rrr benchmark harness: rrr vs the talk's Channels stack vs Socket.IO, same run, same machine.

Run ``make bench-quick`` (or ``python -m bench.run --help``). Layout:

* ``wsconn``   - one client WebSocket as a bare asyncio protocol (no task per socket);
* ``dialects`` - how each server kind is spoken to (the one client abstraction);
* ``worker``   - a load-driver process holding thousands of those sockets;
* ``drivers``  - the orchestrator's handle on the worker processes;
* ``servers``  - starting Redis and each server kind, publishing, reading /proc;
* ``scenarios``- idle hold, join storm, fan-out, churn (each checks correctness);
* ``run``      - profiles, rotation, repeats, results JSON;
* ``report``   - docs/benchmarks.md and its plots.
"""
