"""rrr benchmark harness: rrr vs the talk's Channels stack vs Socket.IO, same run, same machine.

Run ``make bench-quick`` (or ``python -m bench.run --help``). Layout:

* ``machine``  - /proc readings, ports, waiting for and stopping processes, versions (imports no bench module);
* ``wsconn``   - one client WebSocket as a bare asyncio protocol (no task per socket);
* ``dialects`` - how each server kind is spoken to (the one client abstraction);
* ``worker``   - a load-driver process holding thousands of those sockets;
* ``drivers``  - the orchestrator's handle on the worker processes;
* ``servers``  - starting Redis and each server kind, publishing;
* ``scenarios``- idle hold, join storm, fan-out, churn (each checks correctness);
* ``run``      - profiles, rotation, repeats, results JSON;
* ``report``   - docs/benchmarks.md and its plots, from results JSON only.

Apart: ``hundred_k`` (100,000 sockets; its page in ``hundred_k_report``), ``socket_memory`` and the
``*_cost`` tools (history's page in ``history_report``); see bench/README.md.
"""
