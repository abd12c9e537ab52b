"""What the scheduler knows about each node.

A NodeInfo holds a node's accounting (tasks per service, free resources,
host ports in use). The scheduler's loop keeps one per node for as long as
it leads (NodeInfos), updated from each node and task change as it comes,
so that a pass costs what it places, not a rebuild over every task of the
cluster (at 100,000 tasks the rebuild was most of a pass). A pass accounts
its placements on them as it makes them, so later decisions in the same pass
see the earlier ones; the write-through of the placement is then a no-op
(accounting is by task id), and a placement whose write failed is taken back
(NodeInfos.unplace). `build_node_infos` builds the same from scratch (the
reference the incremental index is tested against; rebalance plans use it).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from swarm.api.v1 import objects_pb2 as pb

from .generic import NOTHING, Holding, Pool, holding_of

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
    # Generic resources (generic.py): the node's and what its tasks hold; None
    # for the usual node that has none and runs no task holding any.
    generic: Pool | None = None
    held: dict[str, Holding] = field(default_factory=dict)  # task id -> units (non-empty)

    @classmethod
    def empty(cls, node: pb.Node) -> NodeInfo:
        """A node with nothing on it: all of its resources available."""
        resources = node.description.resources
        return cls(node=node, available_nano_cpus=resources.nano_cpus,
                   available_memory_bytes=resources.memory_bytes,
                   generic=Pool.of(resources) if resources.generic else None)

    def pool(self) -> Pool:
        if self.generic is None:
            self.generic = Pool.of(self.node.description.resources)
        return self.generic

    def set_node(self, node: pb.Node) -> None:
        """The node record changed: its advertised resources may have."""
        before, after = self.node.description.resources, node.description.resources
        self.available_nano_cpus += after.nano_cpus - before.nano_cpus
        self.available_memory_bytes += after.memory_bytes - before.memory_bytes
        if self.generic is not None or after.generic:
            self.pool().update(after)
        self.node = node

    @property
    def node_id(self) -> str:
        return self.node.id

    def add_task(self, task: pb.Task) -> None:
        """Account a task placed on (or already running on) this node."""
        cpus, memory = reservations(task)
        self.account(task.id, task.service_id, cpus, memory, host_ports(task),
                     holding_of(task))

    def remove_task(self, task: pb.Task) -> bool:
        """Release what a task held; a task never accounted here is ignored
        (returns whether it was accounted)."""
        if task.id not in self.task_ids:
            return False
        self.task_ids.discard(task.id)
        self.tasks_by_service[task.service_id] -= 1
        if self.tasks_by_service[task.service_id] <= 0:
            del self.tasks_by_service[task.service_id]
        self.total_tasks -= 1
        cpus, memory = reservations(task)
        self.available_nano_cpus += cpus
        self.available_memory_bytes += memory
        self.used_host_ports -= host_ports(task)
        holding = self.held.pop(task.id, NOTHING)
        if holding:
            self.pool().release(holding)
        return True

    def account(self, task_id: str, service_id: str, nano_cpus: int, memory_bytes: int,
                ports: frozenset[HostPort], holding: Holding = NOTHING) -> bool:
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
        if holding:
            self.held[task_id] = holding
            self.pool().hold(holding)
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


class NodeInfos:
    """NodeInfo per node id, kept up to date from node and task changes.

    Invariant (tested against build_node_infos): after any sequence of
    apply_node/apply_task calls mirroring the store, `infos` accounts exactly
    the live tasks of each present node, plus the placements a pass made and
    has not yet seen written or taken back. Tasks of a node not (yet, or no
    longer) present are accounted when it appears.
    """

    def __init__(self, nodes: Iterable[pb.Node] = (), tasks: Iterable[pb.Task] = ()) -> None:
        tasks = list(tasks)
        self.infos: dict[str, NodeInfo] = build_node_infos(nodes, tasks)
        # Every live task by node, present or not: a node that appears (or
        # comes back after its removal) is accounted with what it holds.
        self._live: dict[str, dict[str, pb.Task]] = {}
        for task in tasks:
            if is_live(task):
                self._live.setdefault(task.node_id, {})[task.id] = task

    def apply_node(self, old: pb.Node | None, new: pb.Node | None) -> None:
        if new is None:
            if old is not None:
                self.infos.pop(old.id, None)
            return
        info = self.infos.get(new.id)
        if info is None:
            info = self.infos[new.id] = NodeInfo.empty(new)
            for task in self._live.get(new.id, {}).values():
                info.add_task(task)
            return
        info.set_node(new)

    def apply_task(self, old: pb.Task | None, new: pb.Task | None) -> None:
        if old is not None and new is not None and is_live(old) and is_live(new) \
                and old.node_id == new.node_id and reservations(old) == reservations(new) \
                and host_ports(old) == host_ports(new) and holding_of(old) == holding_of(new):
            self._live.setdefault(new.node_id, {})[new.id] = new
            return  # status progress on the same node: the accounting stands
        if old is not None and is_live(old):
            _forget(self._live, old.node_id, old.id)
            info = self.infos.get(old.node_id)
            if info is not None:
                info.remove_task(old)
        if new is not None and is_live(new):
            self._live.setdefault(new.node_id, {})[new.id] = new
            info = self.infos.get(new.node_id)
            if info is not None:
                info.add_task(new)

    def unplace(self, placed: pb.Task, current: pb.Task | None) -> None:
        """A pass accounted `placed` (with its node) but did not write it:
        take it back unless the store holds it live on that node anyway."""
        if current is not None and is_live(current) and current.node_id == placed.node_id:
            return
        info = self.infos.get(placed.node_id)
        if info is not None:
            info.remove_task(placed)


def _forget(index: dict[str, dict[str, pb.Task]], node_id: str, task_id: str) -> None:
    tasks = index.get(node_id)
    if tasks is not None:
        tasks.pop(task_id, None)
        if not tasks:
            del index[node_id]
