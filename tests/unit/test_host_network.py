"""Host networking (`--network host`, compose `network_mode: host`): the flag's
and the file's refusals, the controller's, the allocator giving such a task no
address and no VIP, and the OCI config without a network namespace."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from swarm.agent.runtime import spec as oci
from swarm.api import validation
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.compose import StackError, parse_stack
from swarm.cli.errors import BadFlag
from swarm.cli.main import app
from swarm.cli.service.options import ServiceOptions
from swarm.cli.service.spec import service_spec_from_options
from swarm.controller.allocator.networks import plan_vips, wants_vips
from swarm.controller.allocator.tasks import plan_tasks
from tests.unit.test_ipam import network, new_task
from tests.unit.test_runopts import _plan


def test_network_host_sets_host_networking_and_attaches_nothing() -> None:
    spec = service_spec_from_options(ServiceOptions(name="mon", image="busybox",
                                                    networks=["host"]))
    assert spec.task.host_network
    assert list(spec.task.networks) == []
    validation.normalize_service_spec(spec, {})  # the controller takes it
    plain = service_spec_from_options(ServiceOptions(name="web", image="busybox",
                                                     networks=["backend"]))
    assert not plain.task.host_network


@pytest.mark.parametrize(("networks", "publish", "flag", "why"), [
    (["host"], ["8080:80"], "--publish", "cannot be used with --network host"),
    (["host", "backend"], [], "--network", "host cannot be combined with other networks"),
    (["name=host,alias=x"], [], "--network", "host takes no alias"),
])
def test_network_host_refusals_name_the_flag(networks: list[str], publish: list[str],
                                             flag: str, why: str) -> None:
    with pytest.raises(BadFlag, match=why) as raised:
        service_spec_from_options(ServiceOptions(name="mon", image="busybox",
                                                 networks=networks, publish=publish))
    assert raised.value.flag == flag


def test_network_host_with_publish_is_one_line_exit_2_before_anything_is_sent() -> None:
    # No controller at this address: exit 2 proves nothing was sent.
    result = CliRunner().invoke(app, ["--controller", "127.0.0.1:9", "service", "create",
                                      "--network", "host", "-p", "80:80", "busybox"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "swarmctl: --publish: cannot be used with --network host: the task binds the node's "
        "ports itself"]


def test_the_controller_refuses_ports_and_networks_on_a_host_network_service() -> None:
    spec = pb.ServiceSpec(name="mon")
    spec.task.container.image = "busybox"
    spec.task.host_network = True
    spec.endpoint.ports.add(target_port=80, published_port=80)
    with pytest.raises(validation.ValidationError, match="cannot publish ports") as raised:
        validation.normalize_service_spec(spec, {})
    assert raised.value.field == "spec.endpoint.ports"
    del spec.endpoint.ports[:]
    spec.task.networks.add(target="n1")
    nets = {"n1": network("n1", "10.0.0.0/24", name="backend")}
    with pytest.raises(validation.ValidationError, match="cannot join other networks"):
        validation.normalize_service_spec(spec, nets)
    with pytest.raises(validation.ValidationError, match="'host' is reserved"):
        validation.normalize_network_spec(pb.NetworkSpec(name="host"))


def test_the_allocator_gives_a_host_network_task_no_address_and_no_vip() -> None:
    spec = pb.ServiceSpec(name="mon")
    spec.task.host_network = True
    assert not wants_vips(spec)
    assert plan_vips(spec, [], {}, {}).virtual_ips == []
    service = pb.Service(id="s", spec=spec)
    task = new_task("t1")
    task.spec.host_network = True
    plan = plan_tasks([task], {"a": network("a", "10.0.0.0/24")}, {"s": service}, {}, 0.0)
    assert not plan.waiting
    (promoted,) = plan.promoted
    assert list(promoted.task.networks) == []
    assert promoted.task.status.state == pb.PENDING


def test_the_oci_config_has_no_network_namespace_for_host_networking() -> None:
    own = oci.build_config(_plan())
    assert {"type": "network", "path": "/run/netns/n1"} in own["linux"]["namespaces"]
    host = oci.build_config(_plan(netns_path=None))
    kinds = [entry["type"] for entry in host["linux"]["namespaces"]]
    assert kinds == ["pid", "ipc", "uts", "mount"]


HOST_STACK = """\
services:
  mon:
    image: busybox
    network_mode: host
"""


def test_compose_network_mode_host() -> None:
    stack = parse_stack(HOST_STACK, stack_name="s")
    spec = stack.services["mon"].spec
    assert spec.task.host_network
    assert list(spec.task.networks) == []
    assert stack.networks == {}  # no default network made for it


@pytest.mark.parametrize(("extra", "where", "why"), [
    ("    ports: ['80:80']\n", "services.mon.ports", "cannot be used with network_mode: host"),
    ("    networks: [default]\n", "services.mon.networks", "cannot be used with network_mode"),
])
def test_compose_network_mode_host_refusals(extra: str, where: str, why: str) -> None:
    with pytest.raises(StackError, match=why) as raised:
        parse_stack(HOST_STACK + extra, stack_name="s")
    assert where in str(raised.value)


def test_compose_other_network_modes_are_refused() -> None:
    with pytest.raises(StackError, match='unsupported mode "bridge"'):
        parse_stack(HOST_STACK.replace("network_mode: host", "network_mode: bridge"),
                    stack_name="s")
