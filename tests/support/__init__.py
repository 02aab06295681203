"""What the tests share besides fixtures (those live in tests/conftest.py): servers, clients, Redis
relays, processes, browsers, a Redis Cluster and production-shaped setups. Tests import from
``support.<module>``; setup.cfg puts tests/ on the path."""
