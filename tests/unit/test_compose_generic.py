"""Compose's generic resource reservations (`deploy.resources.reservations`'
generic_resources and devices), as docker stack deploy reads them, and bad
input as one line naming its place in the file."""

from __future__ import annotations

import pytest

from swarm.api import generic_resources as gres
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.compose import StackError, parse_stack

BASE = "name: s\nservices:\n  web:\n    image: busybox\n    deploy:\n      resources:\n" \
       "        reservations:\n"


def parse(text: str) -> tuple[pb.ServiceSpec, list[str]]:
    stack = parse_stack(BASE + text, filename="f.yaml", environ={})
    return stack.services["web"].spec, [str(w) for w in stack.warnings]


def reserved(spec: pb.ServiceSpec) -> str:
    return gres.text(spec.task.resources.reservations.generic)


def test_generic_resources_in_dockers_form() -> None:
    spec, warnings = parse("""\
          memory: 64M
          generic_resources:
            - discrete_resource_spec: {kind: gpu, value: 2}
            - discrete_resource_spec: {kind: fpga, value: 1}
""")
    assert (reserved(spec), warnings) == ("gpu=2 fpga=1", [])
    assert spec.task.resources.reservations.memory_bytes == 64 << 20


def test_gpu_devices_by_count_or_by_id() -> None:
    spec, warnings = parse("""\
          devices:
            - capabilities: [gpu]
              count: 2
""")
    assert (reserved(spec), warnings) == ("gpu=2", [])
    spec, warnings = parse("""\
          devices:
            - capabilities: [gpu, utility]
              driver: nvidia
              device_ids: ['0', 'GPU-9f2c']
""")
    assert reserved(spec) == "gpu=nvidia0,GPU-9f2c"  # an index is the discovered nvidiaN
    assert warnings == ["f.yaml:10:23: services.web.deploy.resources.reservations.devices[0]"
                        ".driver: not supported (devices are the node's); ignored"]


BAD = [
    ("""\
          generic_resources:
            - discrete_resource_spec: {kind: gpu, value: -1}
""", "f.yaml:9:58: services.web.deploy.resources.reservations.generic_resources[0]"
     ".discrete_resource_spec.value: must be at least 1 (got -1)"),
    ("""\
          generic_resources:
            - discrete_resource_spec: {kind: 'g pu', value: 1}
""", "f.yaml:9:39: services.web.deploy.resources.reservations.generic_resources[0]"
     ".discrete_resource_spec: invalid resource kind 'g pu': a letter, then letters, digits, "
     "'-', '_' or '.' (at most 64)"),
    ("""\
          generic_resources:
            - gpu: 1
""", "f.yaml:9:15: services.web.deploy.resources.reservations.generic_resources[0]: expected "
     "one of discrete_resource_spec or named_resource_spec"),
    ("""\
          devices:
            - capabilities: [gpu]
              count: all
""", "f.yaml:10:22: services.web.deploy.resources.reservations.devices[0].count: `all` cannot "
     "be reserved on a swarm; give a number of GPUs"),
    ("""\
          devices:
            - capabilities: [gpu]
""", "f.yaml:9:15: services.web.deploy.resources.reservations.devices[0]: expected `count: N` "
     "or `device_ids` (all GPUs cannot be reserved on a swarm)"),
    ("""\
          devices:
            - capabilities: [tpu]
              count: 1
""", "f.yaml:9:29: services.web.deploy.resources.reservations.devices[0].capabilities: only "
     "gpu devices can be reserved (got tpu)"),
    ("""\
          devices:
            - capabilities: [gpu]
              count: 1
              device_ids: ['1']
""", "f.yaml:11:27: services.web.deploy.resources.reservations.devices[0].device_ids: count "
     "and device_ids cannot be used together"),
    ("""\
          generic_resources:
            - discrete_resource_spec: {kind: gpu, value: 1}
          devices:
            - capabilities: [gpu]
              count: 1
""", "f.yaml:11:13: services.web.deploy.resources.reservations.devices: gpu: counted twice"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_reservations_are_one_line_with_their_place(text: str, message: str) -> None:
    with pytest.raises(StackError) as caught:
        parse(text)
    assert str(caught.value) == message
