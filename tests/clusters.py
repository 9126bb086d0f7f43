"""A private three-primary Redis Cluster on free loopback ports, slot migration, and picking
stream names whose keys live on every node."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Any

import redis
from redis.crc import key_slot

from tests.servers import RedisServer, free_port
from tests.waiting import UNIT


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, as Redis requires."""
    for _ in range(1000):
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """``redis-server --cluster-enabled yes`` nodes joined by ``redis-cli --cluster create``:
    three primaries each owning a third of the slots, and ``replicas`` replicas of each."""

    def __init__(self, primaries: int = 3, replicas: int = 0) -> None:
        self.primaries = primaries
        self.replicas = replicas
        self.nodes = [RedisServer(cluster_port()) for _ in range(primaries * (1 + replicas))]

    def start(self) -> None:
        for node in self.nodes:
            node.extra = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"{node.dir}/nodes.conf",
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas)]
        subprocess.run(
            [cli, *create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30 * UNIT,
        )
        deadline = time.monotonic() + 30 * UNIT
        while any(
            self.command(n, "CLUSTER INFO")["cluster_state"] != "ok" for n in range(len(self.nodes))
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready")
            time.sleep(0.05)
        while self._synced_replicas() < self.primaries * self.replicas:
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas did not finish their first sync")
            time.sleep(0.05)

    def _synced_replicas(self) -> int:
        """Replicas whose link to their primary is up (ROLE: slave, host, port, "connected")."""
        roles = [self.command(n, "ROLE") for n in range(len(self.nodes))]
        return sum(
            1
            for role in roles
            if role[0] in (b"slave", "slave") and role[3] in (b"connected", "connected")
        )

    def client(self, n: int) -> redis.Redis:
        return redis.Redis(port=self.nodes[n].port, socket_timeout=5 * UNIT)

    def command(self, n: int, *args: object) -> Any:
        with self.client(n) as client:
            return client.execute_command(*args)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def owner(self, slot: int) -> int:
        """Index of the node that serves ``slot``."""
        for start, end, primary, *_ in self.command(0, "CLUSTER SLOTS"):
            if start <= slot <= end:
                port = primary[1]
                return next(n for n, node in enumerate(self.nodes) if node.port == port)
        raise LookupError(slot)

    def failover(self, slot: int) -> int:
        """Promote a replica of ``slot``'s primary with CLUSTER FAILOVER (the replica catches up
        first: nothing acknowledged is lost); returns the new primary's index."""
        old = self.owner(slot)
        primary = self.node_id(old)
        deadline = time.monotonic() + 30 * UNIT
        while True:  # "ip:port" -> {"node_id", "flags", "master_id", ...}
            nodes = self.command(old, "CLUSTER NODES")
            replicas = [a for a, n in nodes.items() if n["master_id"] == primary]
            if replicas or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        port = int(replicas[0].rsplit(":", 1)[1].split("@")[0])
        new = next(n for n, node in enumerate(self.nodes) if node.port == port)
        self.command(new, "CLUSTER FAILOVER")
        deadline = time.monotonic() + 30 * UNIT
        while self.owner(slot) != new:
            if time.monotonic() > deadline:
                raise RuntimeError("the failover did not complete")
            time.sleep(0.05)
        return new

    def node_id(self, n: int) -> str:
        return str(self.command(n, "CLUSTER MYID").decode())

    def migrate(
        self, slot: int, to: int, keys_per_step: int = 1, pause: float = 0.01, first: str = ""
    ) -> int:
        """Move ``slot`` to node ``to`` a few keys at a time, as ``redis-cli --cluster reshard``
        does, slowly enough that writers see the slot half-moved; keys containing ``first``
        move before the others (the worst order for a script that would not declare them).
        Returns the keys moved."""
        source = self.owner(slot)
        self.command(to, "CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.command(source, "CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(to))
        moved = 0
        while keys := self.command(source, "CLUSTER GETKEYSINSLOT", slot, 100_000):
            keys.sort(key=lambda k: bool(first) and first not in str(k))
            for step in range(0, len(keys), keys_per_step):
                batch = keys[step : step + keys_per_step]
                port = self.nodes[to].port
                self.command(source, "MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *batch)
                moved += len(batch)
                time.sleep(pause)
        for n in range(len(self.nodes)):
            self.command(n, "CLUSTER SETSLOT", slot, "NODE", self.node_id(to))
        return moved

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def slot(stream: str) -> int:
    return int(key_slot(f"{{{stream}}}".encode()))


def streams_on_every_node(cluster: Cluster, prefix: str) -> list[str]:
    """One stream name per primary: the keys of each live on a different node."""
    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < cluster.primaries:
        name = f"{prefix}-{n}"
        chosen.setdefault(cluster.owner(slot(name)), name)
        n += 1
    return [chosen[node] for node in sorted(chosen)]
