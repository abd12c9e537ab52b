"""Service templates filled in on the node ({{.Task.Name}}, {{.Node.Hostname}}...)."""

from __future__ import annotations

import pytest

from swarm.agent.runtime.base import RejectError
from swarm.agent.templates import expand_task
from swarm.api.naming import slot_name, task_name
from swarm.api.v1 import objects_pb2 as pb


def task(**container: object) -> pb.Task:
    t = pb.Task(id="t1x", service_id="s1", service_name="web", slot=2, node_id="n1")
    for key, value in container.items():
        if key == "env":
            t.spec.container.env.extend(value)  # type: ignore[arg-type]
        else:
            setattr(t.spec.container, key, value)
    return t


def test_env_and_hostname_are_filled_in() -> None:
    original = task(env=["TASK={{.Task.Name}}", "NODE={{ .Node.Hostname }}", "PLAIN=a=b"],
                    hostname="{{.Service.Name}}-{{.Task.Slot}}")
    expanded = expand_task(original, "n1", "host-a")
    assert list(expanded.spec.container.env) == ["TASK=web.2.t1x", "NODE=host-a", "PLAIN=a=b"]
    assert expanded.spec.container.hostname == "web-2"
    assert original.spec.container.env[0] == "TASK={{.Task.Name}}"  # the original is kept


def test_global_task_name_uses_the_node() -> None:
    t = pb.Task(id="t9", service_name="mon", node_id="n7")
    assert task_name(t) == "mon.n7.t9"
    assert slot_name(t) == "mon.n7"


def test_replicated_task_name_uses_the_slot() -> None:
    t = pb.Task(id="t1x", service_name="web", slot=3, node_id="n1")
    assert (task_name(t), slot_name(t)) == ("web.3.t1x", "web.3")


def test_without_placeholders_the_task_is_returned_as_is() -> None:
    original = task(env=["A=1"], hostname="h")
    assert expand_task(original, "n1", "h") is original


def test_unknown_field_rejects_the_task_naming_it() -> None:
    with pytest.raises(RejectError, match=r"env X: unknown template field \{\{\.Task\.Nope\}\}"):
        expand_task(task(env=["X={{.Task.Nope}}"]), "n1", "h")
