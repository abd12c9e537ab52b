"""The file's top-level networks and volumes."""

from __future__ import annotations

from swarm.api.v1 import objects_pb2 as pb

from .context import Context
from .model import Node, StackNetwork, StackVolume
from .schema import (
    NAMESPACE_LABEL,
    as_boolean,
    as_external,
    as_key_value_pairs,
    as_list,
    as_mapping,
    as_string,
    fail,
    record_locations,
)


def top_networks(context: Context, node: Node | None) -> dict[str, tuple[Node, StackNetwork]]:
    """The declared networks; a service's use of one adds it to context.networks."""
    declared: dict[str, tuple[Node, StackNetwork]] = {}
    if node is None:
        return declared
    for key, value in as_mapping(node, "networks").items():
        path = f"networks.{key}"
        options = as_mapping(value, path)
        external = False
        custom_name: str | None = None
        for option, option_node in options.items():
            where = f"{path}.{option}"
            if option == "external":
                external, legacy_name = as_external(option_node, where)
                custom_name = legacy_name or custom_name
            elif option == "name":
                custom_name = as_string(option_node, where)
            elif option in ("driver_opts", "enable_ipv6") or option.startswith("x-"):
                if not option.startswith("x-"):
                    context.warn(option_node, where, "not supported; ignored")
            elif option not in ("driver", "ipam", "attachable", "internal", "labels"):
                fail(option_node, where, "unknown key (expected driver, ipam, attachable, "
                      "internal, labels, external or name)")
        if external:
            extra = sorted(set(options) - {"external", "name"})
            if extra:
                fail(options[extra[0]], f"{path}.{extra[0]}",
                      "an external network takes no other settings than its name")
            declared[key] = (value, StackNetwork(key=key, name=custom_name or key, external=True,
                                                 spec=None, location=value.location))
            continue
        spec = pb.NetworkSpec(name=custom_name or context_name(context, key))
        if "driver" in options:
            spec.driver = as_string(options["driver"], f"{path}.driver")
        if "attachable" in options:
            spec.attachable = as_boolean(options["attachable"], f"{path}.attachable")
        if "internal" in options:
            spec.internal = as_boolean(options["internal"], f"{path}.internal")
        if "labels" in options:
            for label, text in as_key_value_pairs(options["labels"], f"{path}.labels",
                                                environment=False, environ={}).items():
                spec.labels[label] = text or ""
        spec.labels[NAMESPACE_LABEL] = context.stack
        if "ipam" in options:
            _ipam(context, spec, options["ipam"], f"{path}.ipam")
        network = StackNetwork(key=key, name=spec.name, external=False, spec=spec,
                               location=value.location)
        record_locations(value, "", network.where)
        declared[key] = (value, network)
    return declared


def context_name(context: Context, key: str) -> str:
    """STACK_KEY, as docker names a stack's services, networks and volumes."""
    return f"{context.stack}_{key}"


def _ipam(context: Context, spec: pb.NetworkSpec, node: Node, path: str) -> None:
    for option, value in as_mapping(node, path).items():
        if option == "driver":
            if as_string(value, f"{path}.driver") != "default":
                context.warn(value, f"{path}.driver", "only the default IPAM driver is "
                             "supported; ignored")
        elif option == "options":
            context.warn(value, f"{path}.options", "not supported; ignored")
        elif option != "config":
            fail(value, f"{path}.{option}", "unknown key (expected driver, config)")
    configs = as_list(as_mapping(node, path).get("config", Node([], node.location)), f"{path}.config")
    if len(configs) > 1:
        fail(configs[1], f"{path}.config[1]", "only one subnet per network is supported")
    for config in configs:
        where = f"{path}.config[0]"
        for option, value in as_mapping(config, where).items():
            if option == "subnet":
                spec.ipam.subnet = as_string(value, f"{where}.subnet")
            elif option == "gateway":
                spec.ipam.gateway = as_string(value, f"{where}.gateway")
            elif option in ("ip_range", "aux_addresses"):
                context.warn(value, f"{where}.{option}", "not supported; ignored")
            else:
                fail(value, f"{where}.{option}", "unknown key (expected subnet, gateway)")


def top_volumes(context: Context, node: Node | None) -> dict[str, StackVolume]:
    volumes: dict[str, StackVolume] = {}
    if node is None:
        return volumes
    for key, value in as_mapping(node, "volumes").items():
        path = f"volumes.{key}"
        external = False
        custom_name: str | None = None
        for option, option_node in as_mapping(value, path).items():
            where = f"{path}.{option}"
            if option == "external":
                external, legacy_name = as_external(option_node, where)
                custom_name = legacy_name or custom_name
            elif option == "name":
                custom_name = as_string(option_node, where)
            elif option in ("driver", "driver_opts", "labels"):
                # Volumes are the agents' local directories; there is no volume object
                # to give a driver or labels to.
                context.warn(option_node, where, "not supported (volumes are local to each "
                             "node); ignored")
            elif not option.startswith("x-"):
                fail(option_node, where, "unknown key (expected external, name)")
        # As docker names them: an external volume keeps its own name.
        default = key if external else context_name(context, key)
        volumes[key] = StackVolume(key=key, name=custom_name or default,
                                   external=external, location=value.location)
    return volumes
