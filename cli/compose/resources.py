"""Compose's generic resource reservations: `deploy.resources.reservations`'
`generic_resources` and `devices`, as `docker stack deploy` reads them.

    generic_resources:                      devices:
      - discrete_resource_spec:               - capabilities: [gpu]
          kind: gpu                               count: 1          # or
          value: 2                                device_ids: ['0', 'GPU-9f2c...']

`generic_resources` entries become counts (named_resource_spec, particular
units, is accepted too). A `devices` entry with `gpu` among its capabilities
reserves gpu units: `count` of them, or the ones `device_ids` names. A device
id of digits only is the GPU of that index, the unit `nvidiaN` the agent
discovers for /dev/nvidiaN; other ids are unit names (UUIDs) as given to
`swarm-agent --generic-resource gpu=...`. `count: all` (compose's default
when neither is given) means nothing to a scheduler that reserves (how many
is all, on which node?) and is refused;
devices without the gpu capability are refused; `driver` and `options` are
for docker's device drivers and are warned about and ignored.
"""

from __future__ import annotations

from swarm.api import generic_resources as gres
from swarm.api.v1 import objects_pb2 as pb

from .context import Context
from .model import Node
from .schema import as_integer, as_list, as_mapping, as_string, as_strings, fail

GPU_CAPABILITY = "gpu"
_SPECS = {"discrete_resource_spec", "named_resource_spec"}


def _checked(resource: pb.GenericResource, node: Node, path: str) -> pb.GenericResource:
    if error := gres.item_error(resource):
        fail(node, path, error)
    return resource


def generic_resources(node: Node, path: str) -> list[pb.GenericResource]:
    resources: list[pb.GenericResource] = []
    for index, item in enumerate(as_list(node, path)):
        where = f"{path}[{index}]"
        entry = as_mapping(item, where)
        if len(entry) != 1 or not set(entry) <= _SPECS:
            fail(item, where, "expected one of discrete_resource_spec or named_resource_spec")
        (spec_name, spec_node), = entry.items()
        spec_path = f"{where}.{spec_name}"
        spec = as_mapping(spec_node, spec_path)
        unknown = set(spec) - {"kind", "value"}
        if unknown or "kind" not in spec or "value" not in spec:
            fail(spec_node, spec_path, "expected `kind` and `value`")
        kind = as_string(spec["kind"], f"{spec_path}.kind")
        if spec_name == "discrete_resource_spec":
            value = as_integer(spec["value"], f"{spec_path}.value", minimum=1)
            resource = gres.discrete(kind, value)
        else:
            resource = gres.named(kind, as_string(spec["value"], f"{spec_path}.value"))
        resources.append(_checked(resource, spec_node, spec_path))
    return resources


def device_unit(device_id: str) -> str:
    """'0' -> 'nvidia0' (the GPU of that index); a UUID stays as it is."""
    return f"nvidia{int(device_id)}" if device_id.isdigit() else device_id


def devices(context: Context, node: Node, path: str) -> list[pb.GenericResource]:
    resources: list[pb.GenericResource] = []
    for index, item in enumerate(as_list(node, path)):
        where = f"{path}[{index}]"
        entry = as_mapping(item, where)
        unknown = set(entry) - {"capabilities", "count", "device_ids", "driver", "options"}
        if unknown:
            key = sorted(unknown)[0]
            fail(entry[key], f"{where}.{key}", "unknown key (expected capabilities, count, "
                 "device_ids, driver or options)")
        if "capabilities" not in entry:
            fail(item, where, "expected `capabilities: [gpu]`")
        capabilities = as_strings(entry["capabilities"], f"{where}.capabilities")
        if GPU_CAPABILITY not in capabilities:
            fail(entry["capabilities"], f"{where}.capabilities",
                 "only gpu devices can be reserved (got "
                 f"{', '.join(capabilities) or 'none'})")
        for ignored in ("driver", "options"):
            if ignored in entry:
                context.warn(entry[ignored], f"{where}.{ignored}",
                             "not supported (devices are the node's); ignored")
        if "count" in entry and "device_ids" in entry:
            fail(entry["device_ids"], f"{where}.device_ids", "count and device_ids cannot be "
                 "used together")
        if "device_ids" in entry:
            ids = as_strings(entry["device_ids"], f"{where}.device_ids")
            if not ids:
                fail(entry["device_ids"], f"{where}.device_ids", "expected at least one id")
            for number, device_id in enumerate(ids):
                resources.append(_checked(gres.named(GPU_CAPABILITY, device_unit(device_id)),
                                          entry["device_ids"], f"{where}.device_ids[{number}]"))
            continue
        count_node = entry.get("count")
        if count_node is None:  # compose's default is all of them
            fail(item, where, "expected `count: N` or `device_ids` (all GPUs cannot be "
                 "reserved on a swarm)")
        if isinstance(count_node.value, str) and count_node.value.strip().lower() == "all":
            fail(count_node, f"{where}.count", "`all` cannot be reserved on a swarm; give a "
                 "number of GPUs")
        count = as_integer(count_node, f"{where}.count", minimum=1)
        resources.append(gres.discrete(GPU_CAPABILITY, count))
    return resources


def reservations(context: Context, target: pb.Resources, option: str, node: Node,
                 path: str) -> None:
    """`generic_resources` or `devices` of deploy.resources.reservations into `target`."""
    found = generic_resources(node, path) if option == "generic_resources" \
        else devices(context, node, path)
    combined = [*target.generic, *found]
    if error := gres.list_error(combined, reservation=True):
        fail(node, path, error)
    del target.generic[:]
    target.generic.extend(combined)

