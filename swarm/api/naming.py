"""How tasks are named, the same everywhere: the agent fills {{.Task.Name}}
with it, the controller sends it with each overlay peer (DNS answers it), and
swarmctl shows the short form."""

from __future__ import annotations

from swarm.api.v1 import objects_pb2 as pb


def task_name(task: pb.Task) -> str:
    """SERVICE.SLOT.TASKID, or SERVICE.NODEID.TASKID for a global service's
    task (slot 0), as docker names them."""
    return f"{slot_name(task)}.{task.id}"


def slot_name(task: pb.Task) -> str:
    """SERVICE.SLOT (global: SERVICE.NODEID): the name without the task id,
    shared by the successive tasks of one slot (what `service ps` shows)."""
    return f"{task.service_name}.{task.slot or task.node_id}"
