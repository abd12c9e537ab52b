"""The routing mesh's controller side against a real etcd and simulated
nodes: the ingress network, node addresses on it, published ports (claims,
clashes, dynamic ports) and what the dispatcher tells every node."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.allocator.ingress import find_ingress, node_address
from swarm.controller.server import Controller
from tests.etcd_server import EtcdServer
from tests.integration.conftest import (
    controller_config,
)
from tests.integration.test_ipam import etcd_keys, ipam_keys, refused
from tests.waiting import eventually

if TYPE_CHECKING:
    Control: TypeAlias = cgrpc.ControlAsyncStub


@pytest.fixture
async def controller(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Controller]:
    """A controller that makes the ingress network, as swarm-controller does
    (conftest's `control` and `sim_nodes` use this one in this module)."""
    instance = Controller(controller_config(etcd_server.endpoint, etcd_prefix, ingress=True))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


def web(name: str = "web", *ports: pb.PortConfig, replicas: int = 2) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    spec.task.container.image = "busybox:latest"
    spec.endpoint.ports.extend(ports or [published(8080, 80)])
    return spec


def published(port: int, target: int, mode: int = pb.PortConfig.INGRESS) -> pb.PortConfig:
    return pb.PortConfig(published_port=port, target_port=target,
                         publish_mode=mode)  # type: ignore[arg-type]


def services_seen(node: object, network_id: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """The published services a simulated node was last told of."""
    entry = node.worker.entries.get(network_id)  # type: ignore[attr-defined]
    if entry is None:
        return []
    return [(r.name, [(p.published_port, p.target_port) for p in r.ports])
            for r in entry.services]


def ingress_of(controller: Controller) -> pb.Network:
    network = find_ingress(controller.store.cache.networks.values())
    assert network is not None
    return network


async def test_leader_makes_the_ingress_network_and_gives_every_node_an_address(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    await eventually(lambda: find_ingress(controller.store.cache.networks.values()) is not None)
    listed = (await control.ListNetworks(cpb.ListNetworksRequest())).networks
    assert [(n.spec.name, n.spec.ingress) for n in listed] == [("ingress", True)]
    ingress = ingress_of(controller)
    await eventually(lambda: all(node_address(n, ingress.id)
                                 for n in controller.store.cache.nodes.values()))
    addresses = {node.id: node_address(node, ingress.id)
                 for node in controller.store.cache.nodes.values()}
    assert len(addresses) == 3
    assert len(set(addresses.values())) == 3
    subnet = ipaddress.IPv4Network(ingress.subnet)
    assert all(ipaddress.IPv4Interface(a).network == subnet for a in addresses.values())
    owners = set((await ipam_keys(controller, f"addr/{ingress.id}/")).values())
    assert owners == {f"node/{node_id}" for node_id in addresses}
    # No port is published: no node is sent the network (its peers would be
    # every node, news of every join for every node, and nothing listens).
    await asyncio.sleep(0.5)
    assert all(ingress.id not in n.worker.entries for n in sim_nodes.nodes)
    # Once one is, every node is assigned the ingress network with its own
    # address and the other nodes' endpoints, though none runs a task.
    await control.CreateService(cpb.CreateServiceRequest(spec=web(replicas=0)))

    def told(node: object) -> bool:
        node_id = node.session.node_id  # type: ignore[attr-defined]
        entry = node.worker.entries.get(ingress.id)  # type: ignore[attr-defined]
        peers = {p.address for p in node.worker.peer_sets.endpoints(ingress.id)}  # type: ignore[attr-defined]
        return entry is not None and entry.node_address == addresses[node_id] and \
            {a for nid, a in addresses.items() if nid != node_id} <= peers

    await eventually(lambda: all(told(n) for n in sim_nodes.nodes))
    # Only one ingress network.
    details = await refused(control.CreateNetwork(cpb.CreateNetworkRequest(
        spec=pb.NetworkSpec(name="mesh2", ingress=True))), grpc.StatusCode.ALREADY_EXISTS)
    assert details.startswith("spec.ingress: the cluster already has an ingress network")


async def test_published_ports_reach_every_node_and_clash_by_name(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    await eventually(lambda: find_ingress(controller.store.cache.networks.values()) is not None)
    ingress = ingress_of(controller)
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web()))).service
    assert [(p.published_port, p.target_port) for p in service.endpoint.ports] == [(8080, 80)]
    assert set((await ipam_keys(controller, "port/")).items()) == {
        (controller.store.keys.port(pb.PortConfig.TCP, 8080).decode(), service.id)}

    def running() -> list[pb.Task]:
        return [t for t in controller.store.cache.tasks_by_service.get(service.id, {}).values()
                if t.status.state == pb.RUNNING]

    await eventually(lambda: len(running()) == 2)
    for task in running():
        # The ingress attachment, after the task's own networks (none here).
        assert [a.network_id for a in task.networks] == [ingress.id]
    # Every node, with a task or not, hears of the service and its port.
    await eventually(lambda: all(services_seen(n, ingress.id) == [("web", [(8080, 80)])]
                                 for n in sim_nodes.nodes))
    task_addresses = {t.networks[0].addresses[0] for t in running()}

    def peers_known() -> bool:
        # Peer news is paced apart from the service records: it may come later.
        for node in sim_nodes.nodes:
            seen = {p.address for p in node.worker.peer_sets.endpoints(ingress.id)}
            local = {t.networks[0].addresses[0] for t in running()
                     if t.node_id == node.session.node_id}
            if not task_addresses - local <= seen:
                return False
        return True

    await eventually(peers_known)

    # Another service may not publish 8080, in any mode; nothing is written.
    before = set(await etcd_keys(controller))
    for mode in (pb.PortConfig.INGRESS, pb.PortConfig.HOST):
        details = await refused(control.CreateService(cpb.CreateServiceRequest(
            spec=web("other", published(8080, 81, mode)))), grpc.StatusCode.INVALID_ARGUMENT)
        assert details == ("spec.endpoint.ports[0].published_port: port 8080/tcp is already "
                           "published by service 'web' (mode ingress)")
    assert set(await etcd_keys(controller)) == before
    # A port of 0 gets one of the dynamic range, kept across updates.
    other = (await control.CreateService(cpb.CreateServiceRequest(
        spec=web("other", published(0, 80))))).service
    assert [p.published_port for p in other.endpoint.ports] == [30000]
    spec = pb.ServiceSpec()
    spec.CopyFrom(other.spec)
    spec.task.container.env.append("A=1")
    updated = (await control.UpdateService(cpb.UpdateServiceRequest(
        service_id=other.id, version=other.meta.version, spec=spec))).service
    assert [p.published_port for p in updated.endpoint.ports] == [30000]

    # The ingress network stays while ports are published.
    details = await refused(control.RemoveNetwork(cpb.RemoveRequest(ref="ingress")),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert details == "network 'ingress' is in use by service(s) other, web"
    await control.RemoveService(cpb.RemoveRequest(ref="other"))
    await control.RemoveService(cpb.RemoveRequest(ref="web"))
    assert await ipam_keys(controller, "port/") == {}
    await eventually(lambda: all(not services_seen(n, ingress.id) for n in sim_nodes.nodes)
                     and not controller.store.cache.tasks, timeout=15)
    await control.RemoveNetwork(cpb.RemoveRequest(ref="ingress"))
    # Nodes lose their addresses (and agents the network); publishing is refused now.
    await eventually(lambda: not any(n.attachments for n in controller.store.cache.nodes.values()))
    await eventually(lambda: all(ingress.id not in n.worker.overlay.networks()
                                 for n in sim_nodes.nodes))
    assert await ipam_keys(controller, "addr/") == {}
    before = set(await etcd_keys(controller))
    details = await refused(control.CreateService(cpb.CreateServiceRequest(spec=web())),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert details.startswith("spec.endpoint.ports[0]: published in ingress mode (the routing "
                              "mesh), but the cluster has no ingress network")
    assert set(await etcd_keys(controller)) == before
    # Host mode needs no ingress network; a new ingress network gives every node an address.
    await control.CreateService(cpb.CreateServiceRequest(
        spec=web("direct", published(8081, 80, pb.PortConfig.HOST))))
    created = (await control.CreateNetwork(cpb.CreateNetworkRequest(
        spec=pb.NetworkSpec(name="mesh", ingress=True)))).network
    await eventually(lambda: all(node_address(n, created.id)
                                 for n in controller.store.cache.nodes.values()))


async def test_a_removed_node_releases_its_ingress_address(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    await eventually(lambda: find_ingress(controller.store.cache.networks.values()) is not None)
    ingress = ingress_of(controller)
    await eventually(lambda: len(controller.store.cache.nodes) == 3 and all(
        node_address(n, ingress.id) for n in controller.store.cache.nodes.values()))
    gone = sim_nodes.nodes[0]
    node_id = gone.session.node_id
    address = node_address(controller.store.cache.nodes[node_id], ingress.id)
    await gone.stop()
    await control.RemoveNode(cpb.RemoveNodeRequest(ref=node_id, force=True))
    keys = await ipam_keys(controller, f"addr/{ingress.id}/")
    assert f"node/{node_id}" not in keys.values()
    assert not any(k.endswith("/" + address.split("/")[0]) for k in keys)
    # The other nodes stop hearing of its endpoint.
    await eventually(lambda: all(
        address not in {p.address for p in n.worker.peer_sets.endpoints(ingress.id)}
        for n in sim_nodes.nodes[1:]))


async def test_bad_published_ports_are_refused(controller: Controller, control: Control) -> None:
    await eventually(lambda: find_ingress(controller.store.cache.networks.values()) is not None)
    before = set(await etcd_keys(controller))
    for port, field in ((published(70000, 80), "spec.endpoint.ports[0].published_port"),
                        (published(8080, 0), "spec.endpoint.ports[0].target_port"),
                        (published(0, 80, pb.PortConfig.HOST),
                         "spec.endpoint.ports[0].published_port")):
        details = await refused(control.CreateService(cpb.CreateServiceRequest(spec=web("x", port))),
                                grpc.StatusCode.INVALID_ARGUMENT)
        assert details.startswith(field), details
    spec = web("x")
    spec.task.networks.add(target="ingress")
    details = await refused(control.CreateService(cpb.CreateServiceRequest(spec=spec)),
                            grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("spec.task.networks[0].target: network 'ingress' is the ingress")
    assert set(await etcd_keys(controller)) == before


async def test_ports_added_and_removed_by_an_update(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    await eventually(lambda: find_ingress(controller.store.cache.networks.values()) is not None)
    ingress = ingress_of(controller)
    plain = pb.ServiceSpec(name="api", replicated=pb.ReplicatedService(replicas=2))
    plain.task.container.image = "busybox:latest"
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=plain))).service

    def attached(want: bool) -> bool:
        tasks = [t for t in controller.store.cache.tasks_by_service.get(service.id, {}).values()
                 if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]
        return len(tasks) == 2 and all(
            (ingress.id in {a.network_id for a in t.networks}) == want for t in tasks)

    await eventually(lambda: attached(False), timeout=15)
    with_port = pb.ServiceSpec()
    with_port.CopyFrom(plain)
    with_port.endpoint.ports.append(published(8090, 80))
    current = controller.store.cache.services[service.id]
    await control.UpdateService(cpb.UpdateServiceRequest(service_id=service.id,
                                                     version=current.meta.version, spec=with_port))
    assert set((await ipam_keys(controller, "port/")).values()) == {service.id}
    # The rolling update replaces the tasks: the new ones join the ingress network.
    await eventually(lambda: attached(True), timeout=20)
    current = controller.store.cache.services[service.id]
    await control.UpdateService(cpb.UpdateServiceRequest(service_id=service.id,
                                                     version=current.meta.version, spec=plain))
    assert await ipam_keys(controller, "port/") == {}
    await eventually(lambda: attached(False), timeout=20)
