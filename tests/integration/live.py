"""A live control plane for CLI tests: a real etcd, the real controller and
simulated nodes speaking the real dispatcher API, on an event loop of a background
thread, and helpers that drive swarmctl's typer app against it.

The CLI is synchronous gRPC, so the controller and the nodes run on their own loop
(`LiveCluster`) while CliRunner drives the app in the test's thread; tests read etcd
through the same loop to check what was (not) written. The `live` fixture is in
conftest.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from typer.testing import CliRunner, Result

from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.main import app
from swarm.controller.server import Controller
from swarm.controller.store.keys import KIND_TYPES, StoredObject, decode
from tests.etcd_server import EtcdServer
from tests.integration.conftest import FAST_SESSION, controller_config, sim_cluster

T = TypeVar("T")
BROKEN_IMAGE = "registry.invalid/broken:1"  # the simulated nodes reject it, as if unpullable
NODES = 3


class LiveCluster:
    """A controller and simulated nodes on an event loop of their own thread."""

    def __init__(self, etcd: EtcdServer, prefix: str, reject_images: Collection[str],
                 managers: int = 0, *, metrics_addr: str = "",
                 generic: Mapping[int, Sequence[pb.GenericResource]] | None = None) -> None:
        self.prefix = prefix
        self.metrics_addr = metrics_addr  # the controller's --metrics-addr (off when empty)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-cluster",
                                       daemon=True)
        self.thread.start()
        try:
            self.controller, self.nodes = self.run(self._start(etcd.endpoint, reject_images,
                                                               managers, generic))
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self, endpoint: str, reject_images: Collection[str], managers: int,
                     generic: Mapping[int, Sequence[pb.GenericResource]] | None = None
                     ) -> tuple[Controller, SimulatedCluster]:
        # Built on the loop: their gRPC channels belong to the loop they are made on.
        # As swarm-controller runs: with the ingress network (services publish ports).
        config = controller_config(endpoint, self.prefix, ingress=True)
        controller = Controller(dataclasses.replace(config, metrics_addr=self.metrics_addr))
        await controller.start()
        nodes = sim_cluster(controller, NODES, settings=FAST_SESSION,
                            reject_images=reject_images, managers=managers, generic=generic)
        nodes.start()
        try:
            await nodes.wait_connected(timeout=15)
            await self._wait_ingress_addresses(controller)
        except BaseException:
            await nodes.stop()
            await controller.stop()
            raise
        return controller, nodes

    async def _wait_ingress_addresses(self, controller: Controller, timeout: float = 15) -> None:
        """Until every node holds its ingress address: the ingress keeper gives them
        out after the nodes join, and a test comparing snapshots of etcd must not see
        those writes land in the middle (they did, on a loaded machine)."""
        addresses = f"{self.prefix}ipam/addr/".encode()
        deadline = time.monotonic() + timeout
        while True:
            _, kvs = await controller.etcd.range_prefix(addresses)
            if len(kvs) >= NODES:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(kvs)} of {NODES} nodes got an ingress address")
            await asyncio.sleep(0.05)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.controller.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        async def stop() -> None:
            await self.nodes.stop()
            await self.controller.stop()

        try:
            self.run(stop())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # ------------------------------------------------------------ what etcd holds

    def snapshot(self) -> dict[bytes, object]:
        """Every key with its mod_revision: equal snapshots mean nothing was written in
        between. Nodes are compared by spec instead, so that a heartbeat-driven status
        change on a loaded machine cannot fail a test; the leader key is left out."""
        _, kvs = self.run(self.controller.etcd.range_prefix(self.prefix.encode()))
        nodes, leader = (self.prefix + "nodes/").encode(), (self.prefix + "leader").encode()
        found: dict[bytes, object] = {}
        for kv in kvs:
            if kv.key.startswith(nodes):
                found[kv.key] = pb.Node.FromString(kv.value).spec.SerializeToString(
                    deterministic=True)
            elif kv.key != leader:
                found[kv.key] = kv.mod_revision
        return found

    def stored(self, kind: str) -> list[StoredObject]:
        assert kind in KIND_TYPES
        _, kvs = self.run(self.controller.etcd.range_prefix(f"{self.prefix}{kind}/".encode()))
        return [decode(kind, kv.value, kv.mod_revision) for kv in kvs]

    def service(self, name: str) -> pb.Service:
        (found,) = [s for s in self.stored("services") if isinstance(s, pb.Service)
                    and s.spec.name == name]
        return found

    def tasks(self, name: str) -> list[pb.Task]:
        service_id = self.service(name).id
        return [t for t in self.stored("tasks") if isinstance(t, pb.Task)
                and t.service_id == service_id]

    def running(self, name: str) -> list[pb.Task]:
        return [t for t in self.tasks(name)
                if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]

    def node_ids(self) -> dict[str, str]:
        """hostname -> node ID."""
        return {n.description.hostname: n.id for n in self.stored("nodes")
                if isinstance(n, pb.Node)}

    def eventually(self, condition: Callable[[], bool], timeout: float = 10.0,
                   message: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{message} not reached within {timeout}s")
            time.sleep(0.05)


def swarmctl(live: LiveCluster, *args: str) -> Result:
    return CliRunner().invoke(app, ["--controller", live.addr, *args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stderr.count("\n") <= 1, result.stderr
    return result


def assert_one_line_error(result: Result, *fragments: str, exit_code: int) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("swarmctl: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def table_rows(text: str) -> list[list[str]]:
    """Cells of an aligned table (columns are separated by three or more spaces)."""
    return [re.split(r"\s{3,}", line.strip()) for line in text.strip().splitlines()[1:]]
