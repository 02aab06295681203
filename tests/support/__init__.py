"""What the tests share besides fixtures (those live in tests/conftest.py): servers, clients, Redis
relays, processes, browsers, a Redis Cluster and production-shaped setups; and for the core's unit
tests a backplane in memory, an in-memory socket and a process built on both (memory_*.py). Tests import from
``support.<module>``; setup.cfg puts tests/ on the path."""
