"""What the scheduler knows about one node during a pass.

A NodeInfo is built once per pass from the cached nodes and tasks, and then
updated in memory as the pass places tasks, so that later decisions in the same
pass see the earlier ones without re-reading the store.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from swarm.api.v1 import objects_pb2 as pb

HostPort = tuple[int, int]  # (PortConfig.Protocol, published port)
_NO_PORTS: frozenset[HostPort] = frozenset()


def is_live(task: pb.Task) -> bool:
    """A task holds its node's resources and ports from assignment until it stops.

    PENDING tasks that already carry a node_id (global services) count as well:
    they are bound to that node. desired_state is deliberately ignored: a task
    asked to shut down still holds its reservations until it has stopped.
    """
    return bool(task.node_id) and task.status.state <= pb.RUNNING


def host_ports(task: pb.Task) -> frozenset[HostPort]:
    """Ports the task publishes directly on its node (publish mode HOST).

    A task's own spec has no ports: they come from its service's endpoint,
    copied onto the task. Both the requested (`endpoint.spec.ports`) and the
    allocated (`endpoint.ports`) lists are read, so a port counts whichever the
    allocator filled in. Published port 0 means "any free port", which never
    conflicts.
    """
    endpoint = task.endpoint
    requested, allocated = endpoint.spec.ports, endpoint.ports
    if not requested and not allocated:  # the common case, kept cheap
        return _NO_PORTS
    ports = [
        (port.protocol, port.published_port)
        for port in (*requested, *allocated)
        if port.publish_mode == pb.PortConfig.HOST and port.published_port
    ]
    return frozenset(ports) if ports else _NO_PORTS


def reservations(task: pb.Task) -> tuple[int, int]:
    """(nano CPUs, memory bytes) the task reserves on its node."""
    reserved = task.spec.resources.reservations
    return reserved.nano_cpus, reserved.memory_bytes


@dataclass(slots=True, eq=False)
class NodeInfo:
    node: pb.Node
    tasks_by_service: collections.Counter[str] = field(default_factory=collections.Counter)
    total_tasks: int = 0
    available_nano_cpus: int = 0
    available_memory_bytes: int = 0
    used_host_ports: set[HostPort] = field(default_factory=set)
    # Ids of the tasks accounted here, so that adding or removing the same task
    # twice (a preset global task already counted at build time) is harmless.
    task_ids: set[str] = field(default_factory=set)

    @classmethod
    def empty(cls, node: pb.Node) -> NodeInfo:
        """A node with nothing on it: all of its resources available."""
        resources = node.description.resources
        return cls(node=node, available_nano_cpus=resources.nano_cpus,
                   available_memory_bytes=resources.memory_bytes)

    @property
    def node_id(self) -> str:
        return self.node.id

    def add_task(self, task: pb.Task) -> None:
        """Account a task placed on (or already running on) this node."""
        cpus, memory = reservations(task)
        self.account(task.id, task.service_id, cpus, memory, host_ports(task))

    def remove_task(self, task: pb.Task) -> None:
        """Release what a task held; a task never accounted here is ignored."""
        if task.id not in self.task_ids:
            return
        self.task_ids.discard(task.id)
        self.tasks_by_service[task.service_id] -= 1
        if self.tasks_by_service[task.service_id] <= 0:
            del self.tasks_by_service[task.service_id]
        self.total_tasks -= 1
        cpus, memory = reservations(task)
        self.available_nano_cpus += cpus
        self.available_memory_bytes += memory
        self.used_host_ports -= host_ports(task)

    def account(self, task_id: str, service_id: str, nano_cpus: int, memory_bytes: int,
                ports: frozenset[HostPort]) -> bool:
        """add_task with the task's figures already extracted.

        The scheduler places a whole group of tasks that share one spec, so it
        reads the reservations and ports once per group and calls this per
        placement. Returns False (and changes nothing) when already accounted.
        """
        if task_id in self.task_ids:
            return False
        self.task_ids.add(task_id)
        self.tasks_by_service[service_id] += 1
        self.total_tasks += 1
        self.available_nano_cpus -= nano_cpus
        self.available_memory_bytes -= memory_bytes
        if ports:
            self.used_host_ports |= ports
        return True


def build_node_infos(nodes: Iterable[pb.Node], tasks: Iterable[pb.Task]) -> dict[str, NodeInfo]:
    """NodeInfo per node id, with the live tasks of each node accounted.

    Tasks naming a node that is not in `nodes` (deleted meanwhile) are skipped.
    """
    infos = {node.id: NodeInfo.empty(node) for node in nodes}
    for task in tasks:
        if is_live(task):
            info = infos.get(task.node_id)
            if info is not None:
                info.add_task(task)
    return infos
