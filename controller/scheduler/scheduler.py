"""Place pending tasks on nodes, many at once, in memory.

One pass takes every waiting task. Tasks of one service and spec (a "group")
need the same from a node, so the filter pipeline runs once per group over the
nodes, not once per task. The group's tasks are then handed out from a heap of
the passing nodes keyed by (tasks of this service, tasks overall, node id):
the spread strategy, deterministic on ties. Conditions that change as tasks
land (resources, host ports, replicas per node) are re-checked on the node at
the top of the heap; a node that no longer fits leaves the heap for the rest
of the group, since placing more tasks never frees anything.

Placement preferences (`spread=node.labels.zone`, nested when several) put a
tree of label values above the heaps: each task goes down the branch with the
fewest tasks of its service, as in Docker, and nodes without the label form a
branch of their own.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from swarm.api.constraints import node_attribute
from swarm.api.v1 import objects_pb2 as pb

from .filters import Filter
from .generic import NOTHING, Holding, Wants, wants_of
from .nodeinfo import HostPort, NodeInfo, host_ports, reservations
from .pipeline import NO_NODES, Pipeline, no_suitable_node


@dataclass(frozen=True, slots=True)
class Decision:
    task_id: str
    node_id: str  # "" when no node fits
    reason: str  # "" on success; else why no node fits
    # The generic resources' units given to the task on the node (written on
    # the task as assigned_generic_resources).
    assigned: Holding = NOTHING


DecisionHook = Callable[[Decision], None]

# (tasks of the service on the node, tasks on the node, node id, the node).
# The node id is unique, so tuples never get as far as comparing NodeInfos.
_HeapEntry = tuple[int, int, str, NodeInfo]


class _Leaf:
    __slots__ = ("heap",)

    def __init__(self, heap: list[_HeapEntry]) -> None:
        self.heap = heap


class _Branch:
    """One level of placement preferences: children per label value.

    `children` is a heap of (tasks of the service in the subtree, label value,
    subtree); an exhausted subtree is popped and never comes back.
    """

    __slots__ = ("children",)

    def __init__(self, children: list[tuple[int, str, _Leaf | _Branch]]) -> None:
        self.children = children


def group_tasks(tasks: Iterable[pb.Task]) -> list[list[pb.Task]]:
    """Split tasks into groups that need the same from a node, in first-seen order.

    Keyed by service and spec version, and also by host ports (the endpoint
    can change without a new spec version) and the serialized spec, so that a
    caller that does not maintain spec_version still gets correct groups.
    Serializing costs about what one spec comparison does, and keeps grouping
    linear. Duplicate task ids are kept once.
    """
    by_key: dict[tuple[str, int, frozenset[HostPort], bytes], list[pb.Task]] = {}
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            continue
        seen.add(task.id)
        key = (task.service_id, task.spec_version, host_ports(task),
               task.spec.SerializeToString(deterministic=True))
        group = by_key.get(key)
        if group is None:
            by_key[key] = [task]
        else:
            group.append(task)
    return list(by_key.values())


def build_tree(infos: Sequence[NodeInfo], service_id: str,
               preferences: Sequence[str]) -> _Leaf | _Branch:
    """The spread tree over the nodes that passed the filters."""
    if not preferences:
        heap = [(info.tasks_by_service.get(service_id, 0), info.total_tasks, info.node.id, info)
                for info in infos]
        heapq.heapify(heap)
        return _Leaf(heap)
    key, rest = preferences[0], preferences[1:]
    buckets: dict[str, list[NodeInfo]] = {}
    for info in infos:
        # Missing label and empty value share the "" branch, as in Docker.
        buckets.setdefault(node_attribute(info.node, key) or "", []).append(info)
    children = [
        (sum(info.tasks_by_service.get(service_id, 0) for info in members), value,
         build_tree(members, service_id, rest))
        for value, members in buckets.items()
    ]
    heapq.heapify(children)
    return _Branch(children)


class _Placer:
    """Hands out nodes for the tasks of one group, one task at a time."""

    def __init__(self, service_id: str, nano_cpus: int, memory_bytes: int,
                 ports: frozenset[HostPort], recheck: Callable[[NodeInfo], bool] | None,
                 wants: Wants = NOTHING) -> None:
        self._service_id = service_id
        self._cpus = nano_cpus
        self._memory = memory_bytes
        self._ports = ports
        self._recheck = recheck
        self._wants = wants

    def place(self, tree: _Leaf | _Branch, task_id: str) -> NodeInfo | None:
        """Account `task_id` on the best node of `tree`; None when no node is left."""
        if isinstance(tree, _Leaf):
            return self._place_leaf(tree.heap, task_id)
        children = tree.children
        while children:
            count, value, child = children[0]
            info = self.place(child, task_id)
            if info is None:
                heapq.heappop(children)
                continue
            heapq.heapreplace(children, (count + 1, value, child))
            return info
        return None

    def _place_leaf(self, heap: list[_HeapEntry], task_id: str) -> NodeInfo | None:
        recheck, service_id = self._recheck, self._service_id
        while heap:
            _, _, node_id, info = heap[0]
            if recheck is not None and not recheck(info):
                heapq.heappop(heap)  # full for this group: nothing frees up mid-pass
                continue
            holding = NOTHING
            if self._wants:
                # The recheck (GenericResourceFilter) passed: the units are there.
                holding = info.pool().assign(self._wants) or NOTHING
            info.account(task_id, service_id, self._cpus, self._memory, self._ports, holding)
            heapq.heapreplace(
                heap, (info.tasks_by_service[service_id], info.total_tasks, node_id, info))
            return info
        return None


class Scheduler:
    """Decides PENDING tasks over in-memory NodeInfos.

    `on_decision`, when given, is called as each decision is made (the
    benchmark uses it to time decisions); it must not touch the NodeInfos.
    """

    def __init__(self, filters: Sequence[Filter] | None = None,
                 on_decision: DecisionHook | None = None) -> None:
        self._pipeline = Pipeline(filters)
        self._on_decision = on_decision

    def schedule(self, tasks: Sequence[pb.Task], nodes: dict[str, NodeInfo]) -> list[Decision]:
        """One Decision per distinct task, in the order the tasks were given.

        Placements are accounted on `nodes` (NodeInfo.add_task), so later
        decisions, in this pass and the next if the caller keeps the infos,
        see them. A task whose node_id is already set (global services) is
        only checked against that node.
        """
        decided: dict[str, Decision] = {}
        hook = self._on_decision

        def emit(decision: Decision) -> None:
            decided[decision.task_id] = decision
            if hook is not None:
                hook(decision)

        for group in group_tasks(tasks):
            preset = [task for task in group if task.node_id]
            for task in preset:
                emit(self._check_preset(task, nodes))
            if len(preset) < len(group):
                free = [task for task in group if not task.node_id] if preset else group
                self._place_group(free, nodes, emit)
        # pop: a task id given twice gets one decision, at its first position.
        return [decided.pop(task.id) for task in tasks if task.id in decided]

    def _check_preset(self, task: pb.Task, nodes: dict[str, NodeInfo]) -> Decision:
        info = nodes.get(task.node_id)
        if info is None:
            missing = f"node {task.node_id} is not in the cluster"
            return Decision(task.id, "", no_suitable_node([missing]))
        # The task may already be accounted on its node (PENDING with a node is
        # live); it must not compete with itself for resources and ports.
        info.remove_task(task)
        self._pipeline.set_task(task)
        if not self._pipeline.check(info):
            return Decision(task.id, "", self._pipeline.explain())
        wants = wants_of(task)
        holding = (info.pool().assign(wants) or NOTHING) if wants else NOTHING
        cpus, memory = reservations(task)
        info.account(task.id, task.service_id, cpus, memory, host_ports(task), holding)
        return Decision(task.id, info.node.id, "", holding)

    def _place_group(self, group: list[pb.Task], nodes: dict[str, NodeInfo],
                     emit: DecisionHook) -> None:
        first = group[0]
        if not nodes:
            reason = no_suitable_node([NO_NODES])
            for task in group:
                emit(Decision(task.id, "", reason))
            return
        pipeline = self._pipeline
        pipeline.set_task(first)
        passed = pipeline.passing(nodes.values())
        preferences = [pref.spread for pref in first.spec.placement.preferences if pref.spread]
        tree = build_tree(passed, first.service_id, preferences)
        cpus, memory = reservations(first)
        placer = _Placer(first.service_id, cpus, memory, host_ports(first),
                         pipeline.recheck if pipeline.rechecks else None, wants_of(first))
        place = placer.place
        for done, task in enumerate(group):
            info = place(tree, task.id)
            if info is None:
                # Every node has been counted at its first failing filter.
                reason = pipeline.explain()
                for rest in group[done:]:
                    emit(Decision(rest.id, "", reason))
                return
            emit(Decision(task.id, info.node.id, "", info.held.get(task.id, NOTHING)))
