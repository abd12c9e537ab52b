"""Rebalancing: spread a replicated service's tasks over its eligible nodes
again (after nodes joined or came back), moving as few tasks as possible.

Docker Swarm never had this (moby/moby#24103, moby/swarmkit#310): its answer
is `service update --force`, which replaces every task. Here a rebalance is a
rolling update of only the tasks that must move:

1. `plan_rebalance` (pure) decides which slots move, from which node to which,
   and why ("web.3: node h1 has 3 tasks of web, h3 has 0").
2. `start` marks those tasks (Task.rebalance) and sets the service's update
   status to UPDATING ("rebalancing: 2 slots moving"), in one transaction.
3. The ordinary update machinery (update.progress, slots.fill/deduplicate)
   replaces a marked task as it replaces an out-of-date one
   (tasks.is_out_of_date): parallelism, delay, order, monitor and failure
   action are the service's update config, and every hook the update has
   (health gating, drain before stop) applies. The successor is a PENDING
   task like any other: the scheduler places it on the least-loaded node,
   which is the planner's target (the planner orders nodes as the scheduler
   does: tasks of the service, then tasks overall, then node ID).
4. `follow` (each orchestrator pass) keeps the message current, turns a
   failure action ROLLBACK into a pause (a rebalance has no spec to roll back
   to) and, once the update completes, says "rebalance completed".

Eligible nodes are those the scheduler could place a task of the service on
now, by its static filters: READY, availability ACTIVE, meeting the
constraints. Tasks on other nodes (paused, down, failing the constraints) are
neither counted nor moved here: the orchestrator's own rules govern them. A
target must also pass the filters that change as tasks land (resources, host
ports, max replicas per node), checked with every earlier move accounted.

The planner is greedy and level by level. Placement preferences
(`spread=node.labels.zone`, nested) form a tree of label values above the
nodes, as in the scheduler; at each level, while two sibling groups differ
by two tasks or more, one task moves from the fullest to the emptiest (taken
from the fullest node below the one, placed on the emptiest that accepts
below the other). Each move lowers the sum of squared counts at its level and
leaves the levels above unchanged, so the loop ends; no task moves twice.
Without preferences the level is the nodes themselves, so no move ever leaves
its target as loaded as its source, and the result differs by at most one
task between eligible nodes (where capacity allows). With preferences the
label groups are balanced first, as Docker's spread does, which can put more
tasks on a node of a small zone than on one of a big zone.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from swarm.api.constraints import node_attribute
from swarm.api.units import timestamp
from swarm.api.v1 import objects_pb2 as pb

from ..scheduler.filters import ConstraintFilter, ReadyFilter, default_filters, takes_new_tasks
from ..scheduler.nodeinfo import HostPort, NodeInfo, build_node_infos, host_ports, reservations
from ..scheduler.pipeline import Pipeline
from .slots import Context
from .tasks import ConstraintCache, is_live
from .update import IN_PROGRESS, PAUSED, UPDATE_COMPLETED_MESSAGE

# A rebalance is started in one transaction (the service and its marked
# tasks), so it moves at most this many slots; running it again moves the rest.
MAX_MOVES = 120
REBALANCING = "rebalancing"
_ROLLBACK_PREFIX = "update rolled back due to"
_PAUSE_PREFIX = "update paused due to"


@dataclass(frozen=True)
class Move:
    slot: int
    task_id: str
    from_node: str
    to_node: str
    reason: str


@dataclass(frozen=True)
class RebalancePlan:
    moves: tuple[Move, ...]
    # Tasks of the service per eligible node, before the moves (hostname order).
    counts: tuple[tuple[str, int], ...]

    def summary(self) -> str:
        """'2 2 1 tasks on 3 eligible nodes' (fullest first), as an operator would
        check it."""
        spread = " ".join(str(count) for count in sorted(
            (count for _, count in self.counts), reverse=True))
        return f"{spread or 0} tasks on {len(self.counts)} eligible nodes"


@dataclass
class _NodeState:
    node: pb.Node
    info: NodeInfo
    path: tuple[str, ...]  # label values of the placement preferences
    real: list[pb.Task] = field(default_factory=list)  # movable tasks still here
    count: int = 0  # tasks of the service here, moves applied

    @property
    def name(self) -> str:
        return self.node.description.hostname or self.node.id


def template_task(service: pb.Service, service_id: str) -> pb.Task:
    """What the scheduler would be asked to place for this service."""
    task = pb.Task(service_id=service_id, service_name=service.spec.name,
                   spec_version=service.spec_version)
    task.spec.CopyFrom(service.spec.task)
    if service.HasField("endpoint"):
        task.endpoint.CopyFrom(service.endpoint)
    elif service.spec.HasField("endpoint"):
        task.endpoint.spec.CopyFrom(service.spec.endpoint)
    return task


def refusal(service: pb.Service, tasks: Iterable[pb.Task]) -> str | None:
    """Why the service cannot be rebalanced now, or None."""
    name = service.spec.name
    if service.spec.WhichOneof("mode") != "replicated":
        return (f"service {name!r} is {service.spec.WhichOneof('mode') or 'of no mode'}: "
                "rebalance applies to replicated services only")
    status = service.update_status
    if in_progress(service):
        return f"service {name!r} is already rebalancing ({status.message})"
    wait = "rebalance once the update has completed or been rolled back"
    if status.state in IN_PROGRESS:
        return f"service {name!r} is being updated ({status.message}): {wait}"
    if status.state in PAUSED and not _paused_rebalance(service):
        return f"service {name!r} has a paused update ({status.message}): {wait}"
    if any(is_live(task) and task.spec_version < service.spec_version for task in tasks):
        return f"service {name!r} has tasks of an older spec: update it first"
    return None


def eligible_node_ids(service: pb.Service, nodes: Mapping[str, pb.Node],
                      constraints: ConstraintCache) -> frozenset[str]:
    """The nodes the scheduler could place a task of the service on now, by its
    static filters (ReadyFilter, ConstraintFilter)."""
    texts = service.spec.task.placement.constraints
    return frozenset(node_id for node_id, node in nodes.items()
                     if takes_new_tasks(node) and constraints.satisfied(texts, node))


def may_move(service: pb.Service, tasks: Iterable[pb.Task], eligible: Collection[str]) -> bool:
    """A cheap necessary condition for a plan to move anything (the auto mode
    asks it of every service before planning the few that pass): two eligible
    nodes two tasks apart. With placement preferences, always (plan to know)."""
    if any(pref.spread for pref in service.spec.task.placement.preferences):
        return True
    found = Counter(task.node_id for task in tasks
                    if task.node_id in eligible and is_live(task)
                    and task.status.state <= pb.RUNNING)
    if not found:
        return False
    lowest = 0 if len(found) < len(eligible) else min(found.values())
    return max(found.values()) - lowest >= 2


def plan_rebalance(service: pb.Service, tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node],
                   cluster_tasks: Iterable[pb.Task], service_id: str = "",
                   limit: int = MAX_MOVES) -> RebalancePlan:
    """Which of the service's tasks move where, and why. Pure. `tasks` are the
    service's, `cluster_tasks` every task (for the nodes' resources and ports)."""
    service_id = service_id or service.id
    template = template_task(service, service_id)
    ready, constraint = ReadyFilter(), ConstraintFilter()
    constraint_applies = constraint.set_task(template)
    infos = build_node_infos(nodes.values(), cluster_tasks)
    preferences = [pref.spread for pref in service.spec.task.placement.preferences
                   if pref.spread]
    states: dict[str, _NodeState] = {}
    for node_id in sorted(nodes):
        info = infos[node_id]
        if ready.check(info) and (not constraint_applies or constraint.check(info)):
            path = tuple(node_attribute(info.node, key) or "" for key in preferences)
            states[node_id] = _NodeState(info.node, info, path)
    for task in sorted(tasks, key=_movable_last):
        state = states.get(task.node_id)
        if state is not None and is_live(task) and task.status.state <= pb.RUNNING:
            state.real.append(task)
            state.count += 1
    counts = tuple((state.name, state.count)
                   for state in sorted(states.values(), key=lambda s: (s.name, s.node.id)))
    pipeline = Pipeline(default_filters())
    pipeline.set_task(template)
    planner = _Planner(service.spec.name, service_id, preferences, pipeline,
                       _reserved(template), limit)
    planner.balance(list(states.values()), 0)
    return RebalancePlan(tuple(planner.moves), counts)


class _Planner:
    """Balances one group after the other, top level first (see the module
    docstring): moves at one level change no total at the levels above, nor in
    sibling groups, so each group is balanced once, fully, before its children."""

    def __init__(self, name: str, service_id: str, preferences: Sequence[str],
                 pipeline: Pipeline, reserved: tuple[int, int, frozenset[HostPort]],
                 limit: int) -> None:
        self.name, self.service_id, self.preferences = name, service_id, preferences
        self.pipeline, self.reserved, self.limit = pipeline, reserved, limit
        self.moves: list[Move] = []

    def apply(self, source: _NodeState, target: _NodeState, reason: str) -> None:
        task = source.real.pop()
        source.count -= 1
        source.info.remove_task(task)
        target.count += 1
        target.info.account(f"rebalance:{task.id}", self.service_id, *self.reserved)
        self.moves.append(Move(task.slot, task.id, source.node.id, target.node.id, reason))

    def balance(self, members: list[_NodeState], depth: int) -> None:
        if depth == len(self.preferences):
            self.balance_nodes(members)
            return
        while len(self.moves) < self.limit:
            move = _move_within(self.name, self.preferences, depth, members, self.pipeline)
            if move is None:
                break
            self.apply(*move)
        children: dict[str, list[_NodeState]] = defaultdict(list)
        for state in members:
            children[state.path[depth]].append(state)
        for key in sorted(children):
            self.balance(children[key], depth + 1)

    def balance_nodes(self, members: list[_NodeState]) -> None:
        """Fullest node (with a task to move) to emptiest node that accepts,
        until they are within one: two heaps with lazy deletion, so a plan over
        thousands of nodes costs a few log-time steps per move."""
        rank = {state.node.id: i for i, state in enumerate(
            sorted(members, key=lambda s: s.node.id))}
        by_id = {state.node.id: state for state in members}

        def source_entry(state: _NodeState) -> tuple[int, int, int, str]:
            return -state.count, -state.info.total_tasks, -rank[state.node.id], state.node.id

        def target_entry(state: _NodeState) -> tuple[int, int, str]:
            return _node_key(state)

        sources = [source_entry(state) for state in members if state.real]
        targets = [target_entry(state) for state in members]
        heapq.heapify(sources)
        heapq.heapify(targets)
        refused: set[str] = set()
        while len(self.moves) < self.limit and sources and targets:
            source = by_id[sources[0][3]]
            if not source.real or sources[0] != source_entry(source):
                heapq.heappop(sources)  # stale, or nothing left to move from it
                continue
            target = by_id[targets[0][2]]
            if target.node.id in refused or targets[0] != target_entry(target):
                heapq.heappop(targets)
                continue
            if source.count - target.count < 2:
                return
            if not _accepts(target, self.pipeline):
                # Full for this service (resources, ports, replicas per node):
                # moves only add to it, so it stays full for this plan.
                refused.add(target.node.id)
                heapq.heappop(targets)
                continue
            reason = (f"node {source.name} has {source.count} tasks of {self.name}, "
                      f"{target.name} has {target.count}")
            self.apply(source, target, reason)
            for state in (source, target):
                if state.real:
                    heapq.heappush(sources, source_entry(state))
                heapq.heappush(targets, target_entry(state))


def _reserved(task: pb.Task) -> tuple[int, int, frozenset[HostPort]]:
    cpus, memory = reservations(task)
    return cpus, memory, host_ports(task)


def _movable_last(task: pb.Task) -> tuple[bool, int, str]:
    """Order of the tasks of a node, the one to move first last: a task not
    running yet costs least to move, then the highest slot (scale-down's order)."""
    return task.status.state != pb.RUNNING, task.slot, task.id


def _node_key(state: _NodeState) -> tuple[int, int, str]:
    """The scheduler's order (scheduler.build_tree): fewest tasks of the service,
    then fewest tasks overall, then node ID."""
    return state.count, state.info.total_tasks, state.node.id


def _move_within(name: str, preferences: Sequence[str], depth: int,
                 members: list[_NodeState], pipeline: Pipeline
                 ) -> tuple[_NodeState, _NodeState, str] | None:
    """One move between the label values at `depth` of one group, when two of
    them differ by two tasks or more: (source node, target node, reason)."""
    groups: dict[str, list[_NodeState]] = defaultdict(list)
    totals: dict[str, int] = defaultdict(int)
    for state in members:
        groups[state.path[depth]].append(state)
        totals[state.path[depth]] += state.count
    sources = sorted((key for key, group in groups.items() if any(s.real for s in group)),
                     key=lambda key: (-totals[key], key))
    targets = sorted(groups, key=lambda key: (totals[key], key))
    accepting: dict[str, list[_NodeState]] = {}  # asked only as far as needed
    for source_key in sources:
        for target_key in targets:
            if totals[source_key] - totals[target_key] < 2:
                break
            if target_key not in accepting:
                accepting[target_key] = [s for s in groups[target_key] if _accepts(s, pipeline)]
            source = _fullest(groups[source_key], depth + 1, len(preferences))
            target = _emptiest(accepting[target_key], depth + 1, len(preferences))
            if source is None or target is None:
                continue
            key = preferences[depth]
            reason = (f"{key}={source_key or '(none)'} has {totals[source_key]} tasks of "
                      f"{name}, {key}={target_key or '(none)'} has {totals[target_key]}")
            return source, target, reason
    return None


def _accepts(state: _NodeState, pipeline: Pipeline) -> bool:
    return pipeline.check(state.info)


def _fullest(states: Sequence[_NodeState], depth: int, levels: int) -> _NodeState | None:
    """Down the fullest branch to the fullest node that still has a task to move."""
    candidates = [s for s in states if s.real]
    return _descend(candidates, depth, levels, fullest=True) if candidates else None


def _emptiest(states: Sequence[_NodeState], depth: int, levels: int) -> _NodeState | None:
    if not states:
        return None
    return _descend(list(states), depth, levels, fullest=False)


def _descend(states: list[_NodeState], depth: int, levels: int, *,
             fullest: bool) -> _NodeState:
    while depth < levels:
        groups: dict[str, list[_NodeState]] = defaultdict(list)
        totals: dict[str, int] = defaultdict(int)
        for state in states:
            groups[state.path[depth]].append(state)
            totals[state.path[depth]] += state.count
        key = max(groups, key=lambda k: (totals[k], k)) if fullest \
            else min(groups, key=lambda k: (totals[k], k))
        states = groups[key]
        depth += 1
    if fullest:
        return max(states, key=lambda s: (s.count, s.info.total_tasks, s.node.id))
    return min(states, key=_node_key)


# ---------------------------------------------------------------- the service's state


def in_progress(service: pb.Service) -> bool:
    """A rebalance is running: started at this spec version, and the update it
    drives is in progress."""
    return service.HasField("rebalance") \
        and service.rebalance.spec_version == service.spec_version \
        and service.update_status.state == pb.UpdateStatus.UPDATING


def _paused_rebalance(service: pb.Service) -> bool:
    return service.HasField("rebalance") \
        and service.rebalance.spec_version == service.spec_version \
        and service.update_status.state == pb.UpdateStatus.PAUSED


def moving_message(slots: int) -> str:
    return f"{REBALANCING}: {slots} slot{'s' if slots != 1 else ''} moving"


def start(service: pb.Service, tasks: Sequence[pb.Task], plan: RebalancePlan,
          now: float) -> tuple[pb.Service, list[pb.Task]]:
    """The writes that start a rebalance: the service (a copy) with its update
    status and rebalance status, and the tasks whose mark changes (copies):
    the moving ones marked with their reason, stale marks of a paused rebalance
    cleared."""
    result = pb.Service()
    result.CopyFrom(service)
    result.rebalance.Clear()
    result.rebalance.spec_version = service.spec_version
    result.rebalance.slots = len(plan.moves)
    result.rebalance.started_at.CopyFrom(timestamp(now))
    result.update_status.Clear()
    result.update_status.state = pb.UpdateStatus.UPDATING
    result.update_status.started_at.CopyFrom(timestamp(now))
    result.update_status.message = moving_message(len(plan.moves))
    reasons = {move.task_id: move.reason for move in plan.moves}
    changed: list[pb.Task] = []
    for task in tasks:
        wanted = reasons.get(task.id, "") if is_live(task) else task.rebalance
        if wanted != task.rebalance:
            copy = pb.Task()
            copy.CopyFrom(task)
            copy.rebalance = wanted
            changed.append(copy)
    return result, changed


def _moving_slots(ctx: Context) -> int:
    """Slots not yet moved: with a live marked task, or whose new task has not
    reached RUNNING."""
    by_slot: dict[int, list[pb.Task]] = defaultdict(list)
    for task in ctx.work.tasks.values():
        if task.id not in ctx.work.deleted:
            by_slot[task.slot].append(task)
    moving = 0
    for slot_tasks in by_slot.values():
        if not any(task.rebalance for task in slot_tasks):
            continue
        live = [task for task in slot_tasks if is_live(task)]
        if any(task.rebalance for task in live) or not any(
                task.status.state == pb.RUNNING for task in live):
            moving += 1
    return moving


def after_failure(service: pb.Service, failed: pb.Service | None) -> pb.Service | None:
    """A failing rebalance pauses, whatever the failure action: ROLLBACK would
    restore the previous spec, which a rebalance did not change."""
    if failed is None or not in_progress(service):
        return failed
    message = failed.update_status.message
    for prefix in (_ROLLBACK_PREFIX, _PAUSE_PREFIX):
        if message.startswith(prefix):
            message = "rebalance paused due to" + message.removeprefix(prefix)
    result = pb.Service()
    result.CopyFrom(service)
    result.update_status.state = pb.UpdateStatus.PAUSED
    result.update_status.message = message
    return result


def follow(ctx: Context, was_rebalancing: bool) -> None:
    """After update.progress: the rebalance's own words in the update status."""
    if not was_rebalancing:
        return
    status = ctx.service.update_status
    if status.state == pb.UpdateStatus.COMPLETED and status.message == UPDATE_COMPLETED_MESSAGE:
        service = ctx.edit_service()
        moved = service.rebalance.slots
        service.update_status.message = (
            f"rebalance completed: {moved} slot{'s' if moved != 1 else ''} moved")
        service.ClearField("rebalance")
        return
    if status.state == pb.UpdateStatus.UPDATING:
        moving, moved = _moving_slots(ctx), ctx.service.rebalance.slots
        message = moving_message(moving) if moving else (
            f"{REBALANCING}: {moved} slot{'s' if moved != 1 else ''} moved, monitoring")
        if status.message != message:
            ctx.edit_service().update_status.message = message
