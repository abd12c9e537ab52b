"""A local cluster for fault tests and bench/chaos.py: `swarmctl dev up` with
several controllers and etcd members (real processes, real agents on
simulated hosts) plus a process of simulated agents, and what the tests need
around it: finding and killing the leader, restarting what was killed, and
telling whether a service has converged with no slot running twice.

Simulated agents carry the bulk of the tasks (60 real containers on a small
machine is slow and not what a control-plane fault is about); the real hosts
carry the services whose data path matters. The simulated agents are given
one controller's address only: they learn the others from their session.

A service on the real hosts may publish a port through the routing mesh;
`mesh_targets` are every real host's address and that port, reached from
this (the root) namespace as deploy/demo.sh fetches, for a bench.load client
load that tells whether a fault touched the data path."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from bench.load import Target, get
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.dev.daemons import Daemon, alive, spawn

T = TypeVar("T")
SIM_IMAGE = "busybox"  # never pulled: the simulated worker only pretends


def require_root() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        import pytest

        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")


def slot_tasks(tasks: Sequence[pb.Task]) -> dict[int, list[pb.Task]]:
    """Slot -> the tasks observed RUNNING in it."""
    slots: dict[int, list[pb.Task]] = {}
    for task in tasks:
        if task.status.state == pb.RUNNING:
            slots.setdefault(task.slot, []).append(task)
    return slots


def mismatch(tasks: Sequence[pb.Task], replicas: int, image: str = "") -> str:
    """'' when exactly slots 1..replicas each run one task that is meant to
    run (with `image`, if given); else what is wrong."""
    wanted = [t for t in tasks if t.desired_state == pb.RUNNING]
    running = [t for t in wanted if t.status.state == pb.RUNNING]
    twice = {s: len(ts) for s, ts in slot_tasks(tasks).items() if len(ts) > 1}
    if twice:
        return f"slots running twice: {twice}"
    slots = sorted(t.slot for t in running)
    if slots != list(range(1, replicas + 1)):
        return f"{len(running)} running of {replicas} (wanted {len(wanted)})"
    if image and any(t.spec.container.image != image for t in running):
        return f"{sum(t.spec.container.image != image for t in running)} not yet on {image}"
    return ""


def answering(target: Target) -> Callable[[], bool]:
    """Whether the target answers one request now (the demo httpd's page)."""
    return lambda: get(target, 2.0, b"hello from") == ""


@dataclass
class HACluster:
    name: str
    subnet: str
    controllers: int = 3
    etcd_members: int = 3
    hosts: int = 1
    sim_nodes: int = 10
    node_disk_bytes: int = 0  # a tmpfs of this size as each real agent's state dir
    agent_args: tuple[str, ...] = ()
    state: cluster.ClusterState | None = None
    _channel: grpc.Channel | None = None
    _turn: int = 0

    # ------------------------------------------------------------ lifecycle

    def up(self) -> None:
        self.state = cluster.up(self.name, self.hosts, self.subnet, say=lambda _: None,
                                controllers=self.controllers, etcd_members=self.etcd_members,
                                agent_args=self.agent_args, node_disk_bytes=self.node_disk_bytes)
        first = self.state.controller_addrs[0]
        host, port = first.rsplit(":", 1)
        if not self.sim_nodes:
            self.wait(lambda: self._ready_nodes() == self.hosts, 60, "nodes ready")
            return
        token = self.call(lambda: cluster.worker_token(self.state_))
        argv = [sys.executable, "-m", "swarm.agent.simulated", "--nodes", str(self.sim_nodes),
                "--hostname-prefix", "sim", "--controller", first,
                "--join-addr", f"{host}:{int(port) + 1}", "--join-token", token]
        self._record(spawn("simulated agents", argv,
                           cluster.state_dir(self.name) / "logs" / "simulated-agents.log"))
        self.wait(lambda: self._ready_nodes() == self.hosts + self.sim_nodes, 60, "nodes ready")

    def down(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        cluster.down(self.name, say=lambda _: None)

    @property
    def state_(self) -> cluster.ClusterState:
        assert self.state is not None, "the cluster is not up"
        return self.state

    def _record(self, daemon: Daemon) -> None:
        state = self.state_
        state.daemons = [d for d in state.daemons if d.role != daemon.role] + [daemon]
        cluster.save_state(state)

    # ------------------------------------------------------------ calls

    @property
    def control(self) -> cgrpc.ControlStub:
        if self._channel is None:
            self._channel = self._open_channel()
        return cgrpc.ControlStub(self._channel)

    def _open_channel(self) -> grpc.Channel:
        """A channel to one controller, the next one each time: a stopped
        (SIGSTOP) controller accepts connections and never answers, and a
        channel stays with a connection that is still open."""
        from swarm.api import channels
        from swarm.api.pki import NodeIdentity

        addrs = self.state_.controller_addrs
        addr = addrs[self._turn % len(addrs)]
        self._turn += 1
        identity = NodeIdentity.load(cluster.admin_dir(self.name))
        return channels.blocking_client_channel(addr, identity)

    def call(self, call: Callable[[], T], timeout: float = 30.0) -> T:
        """A call through whichever controller answers (one may just have died)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return call()
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                if self._channel is not None:
                    self._channel.close()
                    self._channel = None  # try the next controller
                time.sleep(0.2)

    def tasks(self, service: str) -> list[pb.Task]:
        service_id = self.service(service).id
        request = cpb.ListTasksRequest()
        request.filters.service_ids.append(service_id)
        return list(self.call(lambda: self.control.ListTasks(request, timeout=5)).tasks)

    def service(self, name: str) -> pb.Service:
        return self.call(lambda: self.control.GetService(
            cpb.GetRequest(ref=name), timeout=5)).service

    def create(self, name: str, replicas: int, image: str = SIM_IMAGE,
               constraints: Sequence[str] | None = None,
               publish: dict[int, int] | None = None) -> None:
        """`publish`: published port -> target port, in ingress mode (the routing mesh).
        `constraints` None: not on the real hosts (the simulated nodes only); () anywhere."""
        spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
        spec.task.container.image = image
        for published, target in (publish or {}).items():
            spec.endpoint.ports.append(pb.PortConfig(published_port=published,
                                                     target_port=target))
        spec.task.placement.constraints.extend(
            [f"node.hostname!={self.name}-h{i + 1}" for i in range(self.hosts)]
            if constraints is None else constraints)
        self.call(lambda: self.control.CreateService(cpb.CreateServiceRequest(spec=spec),
                                                      timeout=5))

    def create_web(self, name: str, replicas: int, port: int) -> list[Target]:
        """The demo image's httpd on the real hosts, publishing `port` through
        the routing mesh; returns the mesh targets once each answers."""
        image = f"{self.state_.registry}/{cluster.DEMO_IMAGE}:latest"
        # Not on a simulated node (they run nothing): all but those.
        self.create(name, replicas, image=image, publish={port: 80},
                    constraints=[f"node.hostname!=sim-{i:04d}" for i in range(self.sim_nodes)])
        self.converge(name, replicas, 90)
        targets = self.mesh_targets(port)
        for target in targets:
            self.wait(answering(target), 30, f"{target.name} answering")
        return targets

    def mesh_targets(self, port: int) -> list[Target]:
        """Every real host's underlay address and `port`, from this namespace."""
        return [Target(node.address.split("/")[0], port, label=f"mesh {node.host}")
                for node in self.state_.nodes]

    def container_pids(self, service: str) -> dict[str, int]:
        """Task id -> container pid of the service's RUNNING tasks."""
        return {t.id: t.status.container.pid for t in self.tasks(service)
                if t.status.state == pb.RUNNING}

    def scale(self, name: str, replicas: int) -> None:
        self.call(lambda: self.control.ScaleService(
            cpb.ScaleServiceRequest(ref=name, replicas=replicas), timeout=5))

    def remove(self, name: str) -> None:
        with contextlib.suppress(grpc.RpcError):
            self.control.RemoveService(cpb.RemoveRequest(ref=name), timeout=5)

    def controller_list(self) -> list[pb.ControllerInfo]:
        return list(self.call(lambda: self.control.ListControllers(
            cpb.ListControllersRequest(), timeout=5)).controllers)

    def _ready_nodes(self) -> int:
        nodes = self.call(lambda: self.control.ListNodes(cpb.ListNodesRequest(), timeout=5))
        return sum(n.status.state == pb.NodeStatus.READY for n in nodes.nodes)

    def down_nodes(self) -> list[str]:
        nodes = self.call(lambda: self.control.ListNodes(cpb.ListNodesRequest(), timeout=5))
        return [n.description.hostname for n in nodes.nodes
                if n.status.state == pb.NodeStatus.DOWN]

    # ------------------------------------------------------------ processes

    def daemon(self, role: str) -> Daemon:
        return next(d for d in self.state_.daemons if d.role == role)

    def role_at(self, addr: str) -> str:
        return next(d.role for d in self.state_.daemons
                    if cluster.process_address(self.state_, d.role) == addr)

    def leader(self) -> str:
        """The leading controller's address ('' while there is none)."""
        return next((c.addr for c in self.controller_list() if c.leader), "")

    def wait_leader(self, timeout: float = 20.0, other_than: str = "") -> str:
        found = ""

        def elected() -> bool:
            nonlocal found
            found = self.leader()
            return bool(found) and found != other_than

        self.wait(elected, timeout, "a leader")
        return found

    def signal(self, role: str, sig: int) -> None:
        daemon = self.daemon(role)
        assert alive(daemon), f"{role} is not running"
        os.kill(daemon.pid, sig)

    def restart(self, role: str) -> None:
        """Start a killed controller or etcd member again, with the same argv."""
        daemon = self.daemon(role)
        deadline = time.monotonic() + 10
        while alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = cluster.state_dir(self.name) / "logs" / f"{role.replace(' ', '-')}.log"
        self._record(spawn(role, daemon.argv, log))

    # ------------------------------------------------------------ waiting

    @staticmethod
    def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {timeout}s")
            time.sleep(0.1)

    def converge(self, service: str, replicas: int, timeout: float, image: str = "") -> float:
        """Wait until the service has converged; returns how long it took.
        Raises AssertionError naming what is still wrong."""
        start = time.monotonic()
        problem = "not checked"
        while time.monotonic() - start < timeout:
            problem = mismatch(self.tasks(service), replicas, image)
            if not problem:
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"{service} not converged within {timeout}s: {problem}")
