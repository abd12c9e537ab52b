"""Scheduler filters: each decides whether one node can take the current task.

A filter is told the task once (`set_task`), which lets it precompute what it
needs and say whether it matters for this task at all; it is then asked about
many nodes (`check`). Filters that explain their failures in detail (which
resource, which constraint, which port) count the details themselves while
checking; `set_task` resets those counts.

`per_placement` marks filters whose answer for a node can change while a pass
places tasks (resources, ports, replicas per node). The scheduler re-checks
only those when it is about to put another task on a node that passed before.
"""

from __future__ import annotations

import collections
from typing import Protocol

from swarm.api.constraints import Constraint, first_unmet, parse_constraint
from swarm.api.v1 import objects_pb2 as pb

from .generic import NOTHING, Pool, Wants, wants_of
from .nodeinfo import HostPort, NodeInfo, host_ports, reservations

_PROTOCOL_NAMES: dict[int, str] = {
    pb.PortConfig.TCP: "tcp", pb.PortConfig.UDP: "udp", pb.PortConfig.SCTP: "sctp"}


def nodes_phrase(n: int, singular_verb: str = "", plural_verb: str = "") -> str:
    """'1 node lacks' / '2 nodes lack': explanations read as sentences."""
    if n == 1:
        return f"1 node {singular_verb}".rstrip()
    return f"{n} nodes {plural_verb}".rstrip()


def port_text(port: HostPort) -> str:
    protocol, number = port
    return f"{number}/{_PROTOCOL_NAMES.get(protocol, str(protocol))}"


class Filter(Protocol):
    per_placement: bool

    def set_task(self, task: pb.Task) -> bool:
        """Prepare for `task`; False when the filter does not apply to it (skip it)."""
        ...

    def check(self, info: NodeInfo) -> bool:
        """True when the node passes."""
        ...

    def explain(self, n_failed: int) -> str:
        """Why `n_failed` nodes failed, e.g. '2 nodes lack memory'."""
        ...


def takes_new_tasks(node: pb.Node | None) -> bool:
    """The one rule of a usable node: READY, with availability ACTIVE (PAUSE
    keeps what runs but refuses new tasks; DRAIN moves tasks away). The
    scheduler's ReadyFilter, the orchestrator's re-planning, the rebalancer's
    eligible nodes and the auto-rebalancer's "a node arrived" all ask it."""
    return node is not None and node.status.state == pb.NodeStatus.READY \
        and node.spec.availability == pb.NodeSpec.ACTIVE


class ReadyFilter:
    """Only READY nodes with availability ACTIVE take new tasks.

    PAUSE keeps what runs but refuses new tasks; DRAIN moves tasks away.
    Always relevant, and first: a node that is down explains nothing else.
    """

    per_placement = False

    def set_task(self, task: pb.Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return takes_new_tasks(info.node)

    def explain(self, n_failed: int) -> str:
        return nodes_phrase(n_failed, "not available", "not available")


class ConditionFilter:
    """A node that reports a condition (NodeStatus.conditions, e.g.
    disk-pressure: agent/conditions.py) takes no new tasks; what runs there
    stays."""

    per_placement = False

    def set_task(self, task: pb.Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return not info.node.status.conditions

    def explain(self, n_failed: int) -> str:
        return nodes_phrase(n_failed, "reports a condition (disk pressure)",
                            "report a condition (disk pressure)")


class ResourceFilter:
    """The node must have the task's reserved CPU and memory still available."""

    per_placement = True

    def __init__(self) -> None:
        self._cpus = 0
        self._memory = 0
        self._lacking: collections.Counter[str] = collections.Counter()

    def set_task(self, task: pb.Task) -> bool:
        self._cpus, self._memory = reservations(task)
        self._lacking.clear()
        return self._cpus > 0 or self._memory > 0

    def check(self, info: NodeInfo) -> bool:
        no_cpu = info.available_nano_cpus < self._cpus
        no_memory = info.available_memory_bytes < self._memory
        if not (no_cpu or no_memory):
            return True
        self._lacking["CPU and memory" if no_cpu and no_memory
                      else "CPU" if no_cpu else "memory"] += 1
        return False

    def explain(self, n_failed: int) -> str:
        if not self._lacking:
            return nodes_phrase(n_failed, "lacks resources", "lack resources")
        return "; ".join(nodes_phrase(n, f"lacks {what}", f"lack {what}")
                         for what, n in sorted(self._lacking.items()))


class GenericResourceFilter:
    """The node must have the generic resources the task reserves (gpu=1)
    still free: counted per kind, and the particular units it names.
    Failures are grouped by the first kind a node lacks: '1 node lacks gpu'."""

    per_placement = True
    _NONE = Pool()  # a node without generic resources (only read)

    def __init__(self) -> None:
        self._wants: Wants = NOTHING
        self._lacking: collections.Counter[str] = collections.Counter()

    def set_task(self, task: pb.Task) -> bool:
        self._wants = wants_of(task)
        self._lacking.clear()
        return bool(self._wants)

    def check(self, info: NodeInfo) -> bool:
        kind = (info.generic or self._NONE).lacking(self._wants)
        if not kind:
            return True
        self._lacking[kind] += 1
        return False

    def explain(self, n_failed: int) -> str:
        if not self._lacking:
            return nodes_phrase(n_failed, "lacks generic resources", "lack generic resources")
        return "; ".join(nodes_phrase(n, f"lacks {kind}", f"lack {kind}")
                         for kind, n in sorted(self._lacking.items()))


class ConstraintFilter:
    """The node must meet every placement constraint of the task.

    Failures are grouped by the first constraint a node does not meet, the one
    an operator would have to change. Parsed constraints are cached per
    constraint list: tasks of one service share it, and parsing is regex work.
    An invalid constraint (validation should have refused it) fails every node
    and says so, rather than crashing the scheduler.
    """

    per_placement = False
    _CACHE_LIMIT = 4096

    def __init__(self) -> None:
        self._cache: dict[tuple[str, ...], list[Constraint] | str] = {}
        self._constraints: list[Constraint] = []
        self._invalid = ""
        self._unmet: collections.Counter[str] = collections.Counter()

    def _parse(self, texts: tuple[str, ...]) -> list[Constraint] | str:
        parsed = self._cache.get(texts)
        if parsed is None:
            try:
                parsed = [parse_constraint(text) for text in texts]
            except ValueError as error:
                parsed = str(error)
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[texts] = parsed
        return parsed

    def set_task(self, task: pb.Task) -> bool:
        self._unmet.clear()
        texts = tuple(task.spec.placement.constraints)
        if not texts:
            return False
        parsed = self._parse(texts)
        if isinstance(parsed, str):
            self._constraints, self._invalid = [], parsed
        else:
            self._constraints, self._invalid = parsed, ""
        return True

    def check(self, info: NodeInfo) -> bool:
        if self._invalid:
            return False
        unmet = first_unmet(self._constraints, info.node)
        if unmet is None:
            return True
        self._unmet[unmet.text] += 1
        return False

    def explain(self, n_failed: int) -> str:
        if self._invalid:
            return self._invalid  # "invalid constraint 'x': expected ..." names the culprit
        if not self._unmet:
            return nodes_phrase(n_failed, "fails the constraints", "fail the constraints")
        return "; ".join(nodes_phrase(n, f"fails {text}", f"fail {text}")
                         for text, n in sorted(self._unmet.items()))


class HostPortFilter:
    """Ports published in HOST mode must be free on the node."""

    per_placement = True

    def __init__(self) -> None:
        self._ports: frozenset[HostPort] = frozenset()
        self._in_use: collections.Counter[HostPort] = collections.Counter()

    def set_task(self, task: pb.Task) -> bool:
        self._ports = host_ports(task)
        self._in_use.clear()
        return bool(self._ports)

    def check(self, info: NodeInfo) -> bool:
        used = info.used_host_ports
        if not used:
            return True
        clashes = self._ports & used
        if not clashes:
            return True
        self._in_use[min(clashes)] += 1
        return False

    def explain(self, n_failed: int) -> str:
        if not self._in_use:
            return nodes_phrase(n_failed, "has a published port in use",
                                "have a published port in use")
        return "; ".join(
            nodes_phrase(n, f"has port {port_text(port)} in use",
                         f"have port {port_text(port)} in use")
            for port, n in sorted(self._in_use.items(), key=lambda item: (item[0][1], item[0][0])))


class MaxReplicasFilter:
    """placement.max_replicas_per_node: at most that many tasks of the service per node."""

    per_placement = True

    def __init__(self) -> None:
        self._service_id = ""
        self._limit = 0

    def set_task(self, task: pb.Task) -> bool:
        self._service_id = task.service_id
        self._limit = task.spec.placement.max_replicas_per_node
        return self._limit > 0

    def check(self, info: NodeInfo) -> bool:
        return info.tasks_by_service.get(self._service_id, 0) < self._limit

    def explain(self, n_failed: int) -> str:
        return nodes_phrase(n_failed, f"reached max replicas per node ({self._limit})",
                            f"reached max replicas per node ({self._limit})")


def default_filters() -> list[Filter]:
    """The fixed order, SwarmKit's: readiness first (a node that is down
    explains nothing else), then the node's conditions, resources (CPU and memory, then
    generic ones), constraints, host ports and replicas per node. Each node is counted at
    its first failing filter."""
    return [ReadyFilter(), ConditionFilter(), ResourceFilter(), GenericResourceFilter(),
            ConstraintFilter(), HostPortFilter(), MaxReplicasFilter()]
