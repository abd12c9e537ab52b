"""Docker's service templates: placeholders in a task's environment values and
hostname, filled in on the node that runs the task, e.g.

    --env 'TASK_NAME={{.Task.Name}}' --hostname '{{.Node.Hostname}}-{{.Task.Slot}}'

Supported: .Service.ID .Service.Name .Task.ID .Task.Name .Task.Slot
.Node.ID .Node.Hostname (Task.Name is swarm.api.naming.task_name: SERVICE.SLOT.TASKID,
or SERVICE.NODEID.TASKID for a global service, as docker names them). The
template syntax is swarm.api.templates, which swarmctl's --format shares.
"""

from __future__ import annotations

from collections.abc import Mapping

from swarm.api.naming import task_name
from swarm.api.templates import Action, TemplateError, parse, substitute
from swarm.api.v1 import objects_pb2 as pb

from .runtime.base import RejectError


def template_values(task: pb.Task, node_id: str, node_hostname: str) -> dict[str, str]:
    return {
        ".Service.ID": task.service_id, ".Service.Name": task.service_name,
        ".Task.ID": task.id, ".Task.Name": task_name(task),
        ".Task.Slot": str(task.slot) if task.slot else "",
        ".Node.ID": node_id or task.node_id, ".Node.Hostname": node_hostname,
    }


def expand(text: str, values: Mapping[str, str], where: str) -> str:
    """text with its placeholders filled in; RejectError naming `where` for an
    unknown one."""
    def fill(action: Action) -> str:
        if action.function or action.path not in values:
            raise RejectError(f"{where}: unknown template field {action} (known: "
                              + ", ".join(sorted(values)) + ")")
        return values[action.path]
    try:
        parts = parse(text)
    except TemplateError as error:
        raise RejectError(f"{where}: {error}") from None
    return substitute(parts, fill)


def expand_task(task: pb.Task, node_id: str, node_hostname: str) -> pb.Task:
    """A copy of the task with its env values and hostname expanded (the task
    itself is left as the controller sent it)."""
    container = task.spec.container
    if "{{" not in container.hostname and not any("{{" in e for e in container.env):
        return task
    values = template_values(task, node_id, node_hostname)
    expanded = pb.Task()
    expanded.CopyFrom(task)
    target = expanded.spec.container
    target.hostname = expand(container.hostname, values, "hostname")
    del target.env[:]
    for entry in container.env:
        key, sep, value = entry.partition("=")
        target.env.append(key + sep + expand(value, values, f"env {key}"))
    return expanded
