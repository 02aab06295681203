"""A real Redis 7 Cluster on loopback: 6 ``redis-server`` nodes (3 masters, 3 replicas).

The fixture ``redis_cluster`` (tests/conftest.py) is module-scoped (a cluster takes a few
seconds to form); a test that kills a node restarts it (`RedisCluster.restart`), and every
test starts by waiting until the cluster is whole again (`RedisCluster.wait_healthy`) and
empty (`RedisCluster.flush`).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from rrr.backplane.embedded import die_with_parent

NODE_TIMEOUT_MS = 2000
ROOT = Path(__file__).resolve().parent.parent.parent
#: The app connects as deploy/redis.conf's ``rrr`` ACL user with its cluster additions, so a
#: command the app needs on a cluster and that documented ACL forbids fails a test.
APP_PASSWORD = "cluster-test-rrr-password"


def app_acl_rules() -> list[str]:
    """deploy/redis.conf's ``user rrr`` rules (password replaced) plus its ``rrr-cluster-acl`` line."""
    conf = (ROOT / "deploy" / "redis.conf").read_text().splitlines()
    user = next(line for line in conf if line.startswith("user rrr "))
    extra = next(line for line in conf if line.startswith("# rrr-cluster-acl:"))
    rules = [">" + APP_PASSWORD if r.startswith(">") else r for r in user.split()[2:]]
    return rules + extra.split(":", 1)[1].split()


def _port_pair_free(port: int) -> bool:
    for p in (port, port + 10000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def cluster_port(taken: list[int]) -> int:
    """A free loopback port whose cluster bus port (+10000) is free too (a node's port must be
    at most 55535)."""
    while True:
        port = random.randrange(20000, 45000)
        if port not in taken and port + 10000 not in taken and _port_pair_free(port):
            return port


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class RedisCluster:
    """Six real nodes; ``url`` is the ``redis+cluster://`` URL rrr takes."""

    def __init__(self, workdir: Path, server: str, cli: str) -> None:
        self.workdir = workdir
        self.server = server
        self.cli = cli
        self.ports: list[int] = []
        for _ in range(6):
            self.ports.append(cluster_port(self.ports))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """As the app gets it: deploy/redis.conf's ``rrr`` user, three of the nodes."""
        return f"redis+cluster://rrr:{APP_PASSWORD}@" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)

    def _spawn(self, port: int) -> None:
        log = open(self.workdir / f"redis-{port}.log", "ab")
        self.procs[port] = subprocess.Popen(
            [
                self.server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "no", "--save", "",
                "--protected-mode", "no",
            ],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        log.close()
        _wait(lambda: self.node(port).ping(), 10, f"redis-server on {port}")
        self.node(port).execute_command("ACL", "SETUSER", "rrr", "reset", *app_acl_rules())

    def start(self) -> RedisCluster:
        for port in self.ports:
            self._spawn(port)
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60,
        )
        self.wait_healthy()
        return self

    def info(self, port: int, section: str) -> dict[str, Any]:
        return dict(self.node(port).info(section))

    def cluster_info(self, port: int) -> str:
        raw = self.node(port).execute_command("CLUSTER", "INFO")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        return [p for p in self.alive() if self.info(p, "replication").get("role") == "master"]

    def healthy(self) -> bool:
        """Every node up and ``cluster_state:ok``, 3 masters, every replica's link to its master up
        (a replica with its link down refuses to take over)."""
        if len(self.alive()) != 6:
            return False
        for port in self.ports:
            if "cluster_state:ok" not in self.cluster_info(port):
                return False
            repl = self.info(port, "replication")
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                return False
        return len(self.masters()) == 3

    def wait_healthy(self, timeout: float = 30.0) -> None:
        _wait(self.healthy, timeout, "a whole cluster (cluster_state:ok, every replica linked)")

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        slot = int(self.node(self.alive()[0]).execute_command("CLUSTER", "KEYSLOT", key))
        for entry in self.node(self.alive()[0]).execute_command("CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                return int(entry[2][1])
        raise AssertionError(f"no master for slot {slot}")

    def rooms_on_every_master(self, prefix: str, key: Callable[[str], str]) -> list[str]:
        """One room per master (by the slot of ``key(room)``): ``<prefix>0``, ``<prefix>1``, ..."""
        by_master: dict[int, str] = {}
        i = 0
        while len(by_master) < 3:
            room = f"{prefix}{i}"
            by_master.setdefault(self.master_of(key(room)), room)
            i += 1
        return list(by_master.values())

    def replicated(self, key: str, timeout: float = 5.0) -> bool:
        """Whether a replica of ``key``'s master has every write the master took so far: a write in
        the key's slot on a direct connection, then ``WAIT 1`` on that same connection."""
        node = self.node(self.master_of(key))
        try:
            tag = key[key.index("{") : key.index("}") + 1]
            node.set(f"replicated-probe:{tag}", str(time.time()))
            return int(node.execute_command("WAIT", 1, int(timeout * 1000))) >= 1
        finally:
            node.close()

    def replica_of(self, master: int) -> int:
        """The port of ``master``'s replica."""
        replica = self.info(master, "replication").get("slave0")
        assert isinstance(replica, dict), f"{master} has no replica"
        return int(replica["port"])

    def pause(self, port: int, paused: bool = True) -> None:
        """SIGSTOP one node (it takes nothing, answers nothing, replicates nothing), or SIGCONT it."""
        os.kill(self.procs[port].pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def flush(self) -> None:
        for port in self.masters():
            self.node(port).flushall()

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        proc = self.procs[port]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port: with its nodes.conf it rejoins (as a replica, if
        its replica took over meanwhile)."""
        if self.procs[port].poll() is None:
            return
        self._spawn(port)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
