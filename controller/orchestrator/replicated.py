"""Replicated services: slots 1..replicas.

Each slot wants one live task; tasks of slots above the replica count are shut
down (scaling down removes the highest slots) and deleted once stopped. A
live task whose node is gone, DOWN or drained, or no longer meets the task's
placement constraints, is shut down and replaced at once, without counting as
a restart (the scheduler places the replacement elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

from swarm.api.v1 import objects_pb2 as pb

from .slots import Context, Role, Slot
from .tasks import node_unusable


def replicated_slots(service: pb.Service, tasks: Sequence[pb.Task]) -> list[Slot]:
    return numbered_slots(service.spec.replicated.replicas, tasks)


def numbered_slots(wanted: int, tasks: Sequence[pb.Task]) -> list[Slot]:
    """Slots 1..wanted, plus any other slot a task still holds (unwanted)."""
    slots = {number: Slot(number, "", Role.WANTED) for number in range(1, max(0, wanted) + 1)}
    for task in tasks:
        slot = slots.get(task.slot)
        if slot is None:
            slot = slots[task.slot] = Slot(task.slot, "", Role.UNWANTED)
        slot.task_ids.append(task.id)
    return [slots[number] for number in sorted(slots)]


def must_move(ctx: Context, task: pb.Task) -> bool:
    """Whether a replicated task must leave its node."""
    if not task.node_id:
        return False
    if node_unusable(task, ctx.nodes):
        return True
    node = ctx.nodes[task.node_id]
    return not ctx.constraints.satisfied(task.spec.placement.constraints, node)
