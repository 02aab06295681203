"""The Redis under the soak (``python -m bench.soak --redis cluster|sentinel``) and its faults.

Both kinds answer the same few calls, so the soak injects "a master's kill -9", "a master SIGSTOP'd" and
"pub/sub connections cut" without knowing which Redis it runs on:

- ``cluster``: the 6-node Redis Cluster of ``tests/support/cluster.py`` (3 masters, 3 replicas); a fault hits
  one master picked by the soak's seeded random source; the killed node is started again once its replica took
  over, and rejoins as a replica.
- ``sentinel``: one master, one replica and three sentinels (quorum 2) of ``tests/support/production.py``; the
  apps get its ``redis+sentinel://`` URL. A fault hits the current master (the sentinels say which). After a kill
  -9 the sentinels promote the replica; the killed server is started again as a replica of the new master, so the
  next failover has somewhere to go. A master SIGSTOP'd 5 s is voted down after the sentinels' 1 s and failed
  over too; when it wakes, the sentinels turn it into a replica.

Every wait ends in a whole Redis again (a master, its replica in sync, every sentinel seeing both), so faults
never stack on a Redis still healing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from .machine import ROOT

sys.path.insert(0, str(ROOT / "tests"))

from support.cluster import RedisCluster  # noqa: E402
from support.production import SentinelGroup  # noqa: E402

KINDS = ("cluster", "sentinel")


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


class ClusterRedis:
    """The 6-node Cluster, as the soak has always run on it."""

    kind = "cluster"
    description = "a 6-node Redis Cluster"

    def __init__(self, workdir: Path, redis_server: str, redis_cli: str) -> None:
        (workdir / "cluster").mkdir(parents=True, exist_ok=True)
        self.cluster = RedisCluster(workdir / "cluster", redis_server, redis_cli)

    def start(self) -> ClusterRedis:
        self.cluster.start()
        return self

    @property
    def url(self) -> str:
        return self.cluster.url

    def names(self) -> list[Any]:
        return self.cluster.ports

    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return {f"redis-{port}": proc for port, proc in self.cluster.procs.items()}

    def pick_master(self, rng: random.Random) -> int:
        return rng.choice(self.cluster.masters())

    def pubsub_kill(self) -> int:
        killed = 0
        for port in self.cluster.alive():
            node = self.cluster.node(port)
            killed += int(node.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
            node.close()
        return killed

    def kill(self, port: int) -> None:
        self.cluster.kill(port)

    def recover_after_kill(self, port: int) -> None:
        """Blocking: the replica took over (3 masters, state ok everywhere), then the killed node back."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(self.cluster.masters()) == 3 and all(
                        "cluster_state:ok" in self.cluster.cluster_info(p) for p in self.cluster.alive()):
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.2)
        self.cluster.restart(port)
        self.cluster.wait_healthy(60)

    def pause(self, port: int, paused: bool) -> None:
        self.cluster.pause(port, paused)

    def wait_whole(self) -> None:
        self.cluster.wait_healthy(60)

    def stop(self) -> None:
        for port in list(self.cluster.procs):
            try:
                self.cluster.pause(port, False)
            except OSError:
                pass
        self.cluster.close()


class SentinelRedis:
    """One master, one replica, three sentinels; the two servers told apart by port, as roles swap."""

    kind = "sentinel"
    description = "one Redis master with one replica under three sentinels (quorum 2)"

    def __init__(self, workdir: Path, redis_server: str, redis_sentinel: str) -> None:
        self.group = SentinelGroup(workdir, redis_server, redis_sentinel)
        self.servers = {self.group.master_port: "master", self.group.replica_port: "replica"}

    def start(self) -> SentinelRedis:
        self.group.start()
        return self

    @property
    def url(self) -> str:
        return self.group.url

    def names(self) -> list[Any]:
        return [*self.servers, *self.group.sentinel_ports]

    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        out = {f"redis-{port}": self.group.procs[name] for port, name in self.servers.items()}
        for i, port in enumerate(self.group.sentinel_ports):
            out[f"sentinel-{port}"] = self.group.procs[f"sentinel-{i}"]
        return out

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2,
                           decode_responses=True)

    def _role(self, port: int) -> dict[str, Any]:
        with self._node(port) as r:
            return dict(r.info("replication"))

    def _master_says(self) -> set[int | None]:
        """The master's port by each sentinel (None: that one does not answer)."""
        out: set[int | None] = set()
        for port in self.group.sentinel_ports:
            try:
                addr = self.group.master_addr(port)
                out.add(addr[1] if addr else None)
            except redis.RedisError:
                out.add(None)
        return out

    def master(self) -> int:
        said = self._master_says() - {None}
        if len(said) != 1:
            raise AssertionError(f"the sentinels disagree on the master: {said}")
        port = said.pop()
        assert port is not None
        return port

    def pick_master(self, rng: random.Random) -> int:
        """The current master (no choice to make: the seeded source is left alone)."""
        return self.master()

    def pubsub_kill(self) -> int:
        with self._node(self.master()) as r:
            return int(r.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))

    def kill(self, port: int) -> None:
        self.group.kill(self.servers[port])

    def whole(self) -> bool:
        """Every sentinel names the same master, which says it is one; the other server is its replica with
        the link up; every sentinel sees that replica up and its two peers (a failover can be voted)."""
        said = self._master_says()
        if len(said) != 1 or None in said:
            return False
        master = next(iter(said))
        assert master is not None
        if self._role(master).get("role") != "master":
            return False
        for port in self.servers:
            if port == master:
                continue
            if self.group.procs[self.servers[port]].poll() is not None:
                return False
            role = self._role(port)
            if role.get("role") != "slave" or int(role.get("master_port", 0)) != master \
                    or role.get("master_link_status") != "up":
                return False
        for sport in self.group.sentinel_ports:
            with redis.Redis(port=sport, socket_timeout=1, decode_responses=True) as s:
                state = s.sentinel_master(self.group.SERVICE)
                replicas = s.sentinel_slaves(self.group.SERVICE)
            if int(state["num-other-sentinels"]) < 2:
                return False
            up = [x for x in replicas if not ({"s_down", "o_down", "disconnected"} & set(str(x["flags"]).split(",")))
                  and int(x["port"]) != master]
            if not up:
                return False
        return True

    def recover_after_kill(self, port: int) -> None:
        """Blocking: the sentinels promote the other server; then the killed one starts again as its replica."""
        def failed_over() -> bool:
            said = self._master_says() - {None}
            return len(said) == 1 and port not in said and self._role(self.master()).get("role") == "master"

        _wait(failed_over, 60, f"the sentinels to fail over from {port}")
        name = self.servers[port]
        self.group._spawn(name, self.group._server_args(name, port) + ["--replicaof", "127.0.0.1", str(self.master())])
        _wait(self.whole, 60, "a whole Sentinel group again (master, replica in sync, sentinels agreeing)")

    def pause(self, port: int, paused: bool) -> None:
        os.kill(self.group.procs[self.servers[port]].pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def wait_whole(self) -> None:
        _wait(self.whole, 60, "a whole Sentinel group again (master, replica in sync, sentinels agreeing)")

    def stop(self) -> None:
        for proc in self.group.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        self.group.stop()


def make(kind: str, workdir: Path, redis_server: str, redis_cli: str,
         redis_sentinel: str) -> ClusterRedis | SentinelRedis:
    if kind == "sentinel":
        return SentinelRedis(workdir, redis_server, redis_sentinel)
    return ClusterRedis(workdir, redis_server, redis_cli)
