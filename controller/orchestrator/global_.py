"""Global services: one task per eligible node.

A node is eligible when it is not DOWN, its availability is ACTIVE, and it
meets the service's placement constraints; each eligible node is a WANTED slot
(tasks are created bound to it, slot 0). On a paused node the existing task
stays, but none is created or updated there; on a DOWN node tasks are left
alone, as the node may come back. Tasks on drained, removed or no longer
eligible nodes are shut down and not replaced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from swarm.api.v1 import objects_pb2 as pb

from .slots import Role, Slot
from .tasks import ConstraintCache


def node_role(service: pb.Service, node: pb.Node | None, constraints: ConstraintCache) -> Role:
    if node is None or node.spec.availability == pb.NodeSpec.DRAIN \
            or not constraints.satisfied(service.spec.task.placement.constraints, node):
        return Role.UNWANTED
    if node.status.state == pb.NodeStatus.DOWN or node.spec.availability == pb.NodeSpec.PAUSE:
        return Role.KEPT
    return Role.WANTED


def global_slots(service: pb.Service, tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node],
                 constraints: ConstraintCache) -> list[Slot]:
    slots: dict[str, Slot] = {}
    for node_id, node in nodes.items():
        role = node_role(service, node, constraints)
        if role is Role.WANTED:
            slots[node_id] = Slot(0, node_id, role)
    for task in tasks:
        slot = slots.get(task.node_id)
        if slot is None:
            role = node_role(service, nodes.get(task.node_id), constraints) \
                if task.node_id else Role.UNWANTED
            slot = slots[task.node_id] = Slot(0, task.node_id, role)
        slot.task_ids.append(task.id)
    return [slots[node_id] for node_id in sorted(slots)]

