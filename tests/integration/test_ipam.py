"""Overlay IPAM and network assignments end to end: a real etcd, the real
controller, simulated agents over the real dispatcher API. Every failure case
checks that etcd holds exactly the keys it held before."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.allocator.claims import claim_address, task_owner
from swarm.controller.allocator.reconciler import Allocator
from swarm.controller.server import Controller
from swarm.controller.store import Claim, Conflict, Create, EtcdClient, EtcdSettings, Store
from tests.etcd_server import EtcdServer
from tests.integration.test_store import running_cache
from tests.waiting import eventually

if TYPE_CHECKING:
    Control: TypeAlias = cgrpc.ControlAsyncStub


# ---------------------------------------------------------------- helpers


async def etcd_keys(controller: Controller) -> dict[str, bytes]:
    """Every key of the cluster with its value (object values vary with meta, so
    callers compare key sets; IPAM values are owners)."""
    _, kvs = await controller.etcd.range_prefix(controller.store.keys.prefix)
    return {kv.key.decode(): kv.value for kv in kvs}


async def ipam_keys(controller: Controller, kind: str = "") -> dict[str, str]:
    prefix = controller.store.keys.ipam.decode() + kind
    return {k: v.decode() for k, v in (await etcd_keys(controller)).items()
            if k.startswith(prefix)}


async def create_network(control: Control, name: str, subnet: str = "", gateway: str = "",
                         ) -> pb.Network:
    spec = pb.NetworkSpec(name=name, ipam=pb.IPAMConfig(subnet=subnet, gateway=gateway))
    return (await control.CreateNetwork(cpb.CreateNetworkRequest(spec=spec))).network


def service_spec(name: str, replicas: int, *networks: str,
                 mode: pb.EndpointSpec.Mode.ValueType = pb.EndpointSpec.VIP) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    spec.task.container.image = "busybox:latest"
    spec.task.networks.extend(pb.NetworkAttachmentConfig(target=n) for n in networks)
    spec.endpoint.mode = mode
    return spec


async def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


def live(controller: Controller, service_id: str) -> list[pb.Task]:
    return [t for t in controller.store.cache.tasks_by_service.get(service_id, {}).values()
            if t.desired_state == pb.RUNNING]


def addresses(tasks: list[pb.Task]) -> list[str]:
    return [cidr for t in tasks for a in t.networks for cidr in a.addresses]


# ---------------------------------------------------------------- networks


async def test_networks_get_subnets_gateways_vnis_and_release_them(
        controller: Controller, control: Control) -> None:
    before = await ipam_keys(controller)
    first = await create_network(control, "front")
    second = await create_network(control, "back", "192.168.10.0/24", "192.168.10.254")
    assert (first.subnet, first.gateway, first.vni) == ("10.0.0.0/24", "10.0.0.1", 4096)
    assert (second.subnet, second.gateway, second.vni) == ("192.168.10.0/24", "192.168.10.254", 4097)
    third = await create_network(control, "third")
    assert third.subnet == "10.0.1.0/24"
    claims = await ipam_keys(controller)
    prefix = controller.store.keys.ipam.decode()
    assert claims[f"{prefix}vni/4096"] == first.id
    assert claims[f"{prefix}subnet/{'00001010' + '0' * 16}"] == first.id

    listed = (await control.ListNetworks(cpb.ListNetworksRequest())).networks
    assert [n.spec.name for n in listed] == ["back", "front", "third"]
    got = (await control.GetNetwork(cpb.GetRequest(ref="front"))).network
    assert got.vni == 4096

    for name in ("front", "back", "third"):
        await control.RemoveNetwork(cpb.RemoveRequest(ref=name))
    assert await ipam_keys(controller) == before


@pytest.mark.parametrize(("subnet", "gateway", "code", "fragment"), [
    ("10.0.0.128/25", "", grpc.StatusCode.INVALID_ARGUMENT,
     "spec.ipam.subnet: 10.0.0.128/25 overlaps network 'taken' (10.0.0.0/24)"),
    ("10.0.0.0/16", "", grpc.StatusCode.INVALID_ARGUMENT, "overlaps network 'taken'"),
    ("10.5.0.0/30", "", grpc.StatusCode.INVALID_ARGUMENT, "spec.ipam.subnet"),
    ("10.5.0.0/24", "10.6.0.1", grpc.StatusCode.INVALID_ARGUMENT,
     "spec.ipam.gateway: the gateway 10.6.0.1 is not in the subnet 10.5.0.0/24"),
])
async def test_bad_networks_write_nothing(controller: Controller, control: Control, subnet: str,
                                          gateway: str, code: grpc.StatusCode,
                                          fragment: str) -> None:
    await create_network(control, "taken", "10.0.0.0/24")
    before = set(await etcd_keys(controller))
    details = await refused(control.CreateNetwork(cpb.CreateNetworkRequest(spec=pb.NetworkSpec(
        name="new", ipam=pb.IPAMConfig(subnet=subnet, gateway=gateway)))), code)
    assert fragment in details
    assert set(await etcd_keys(controller)) == before


async def test_name_clash_and_unknown_network_write_nothing(
        controller: Controller, control: Control) -> None:
    await create_network(control, "taken")
    before = set(await etcd_keys(controller))
    details = await refused(create_network(control, "taken"), grpc.StatusCode.ALREADY_EXISTS)
    assert "spec.name" in details
    details = await refused(control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", 1, "nope"))), grpc.StatusCode.INVALID_ARGUMENT)
    assert "spec.task.networks[0].target: network 'nope' not found" in details
    assert set(await etcd_keys(controller)) == before


async def test_exhausted_networks(controller: Controller, control: Control,
                                  sim_nodes: SimulatedCluster) -> None:
    await create_network(control, "tiny", "10.7.0.0/29")  # 5 addresses
    before = set(await etcd_keys(controller))
    details = await refused(control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("big", 5, "tiny"))), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "network 'tiny' (10.7.0.0/29) has 4 free address(es), not enough for 5" in details
    assert set(await etcd_keys(controller)) == before

    service = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", 4, "tiny")))).service
    await eventually(lambda: all(t.status.state == pb.RUNNING
                                 for t in live(controller, service.id))
                     and len(live(controller, service.id)) == 4, message="4 running")
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=5))
    await eventually(lambda: any(t.status.state == pb.NEW and "no free address" in t.status.message
                                 for t in live(controller, service.id)),
                     message="the fifth task waits, saying why")
    waiting = [t for t in live(controller, service.id) if t.status.state == pb.NEW]
    assert "no free address on network 'tiny'" in waiting[0].status.message
    # Scaling back down frees it from waiting (it is removed, never scheduled).
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=4))
    await eventually(lambda: len(live(controller, service.id)) == 4)


# ---------------------------------------------------------------- task addresses


async def test_200_tasks_get_unique_addresses_released_on_deletion(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    network = await create_network(control, "big")
    service = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("many", 200, "big")))).service
    assert [v.addr for v in service.endpoint.virtual_ips] == ["10.0.0.2/24"]
    await eventually(lambda: sum(t.status.state == pb.RUNNING
                                 for t in live(controller, service.id)) == 200,
                     timeout=60, message="200 running")
    tasks = live(controller, service.id)
    held = addresses(tasks)
    assert len(held) == len(set(held)) == 200
    subnet = ipaddress.ip_network(network.subnet)
    assert all(ipaddress.ip_interface(a).ip in subnet for a in held)
    assert "10.0.0.1/24" not in held, "the gateway"
    assert "10.0.0.2/24" not in held, "the VIP"
    claims = await ipam_keys(controller, "addr/")
    owners = {key.rsplit("/", 1)[1]: owner for key, owner in claims.items()}
    assert len(owners) == 201
    for task in tasks:
        ip = str(ipaddress.ip_interface(task.networks[0].addresses[0]).ip)
        assert owners[ip] == task_owner(task.id)

    await control.RemoveService(cpb.RemoveRequest(ref="many"))
    await eventually(lambda: not controller.store.cache.tasks_by_service.get(service.id),
                     timeout=30, message="tasks deleted")
    assert await ipam_keys(controller, "addr/") == {}
    await control.RemoveNetwork(cpb.RemoveRequest(ref="big"))


async def test_released_addresses_are_not_reused_at_once(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    await create_network(control, "net")
    service = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", 6, "net", mode=pb.EndpointSpec.DNSRR)))).service
    await eventually(lambda: len(addresses(live(controller, service.id))) == 6)
    first = set(addresses(live(controller, service.id)))
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=3))
    await eventually(lambda: len(controller.store.cache.tasks_by_service[service.id]) == 3,
                     message="scaled-down tasks deleted")
    released = first - set(addresses(live(controller, service.id)))
    assert len(released) == 3
    assert len(await ipam_keys(controller, "addr/")) == 3, "their keys went with them"
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=6))
    await eventually(lambda: len(addresses(live(controller, service.id))) == 6)
    fresh = set(addresses(live(controller, service.id))) - first
    assert len(fresh) == 3
    assert not fresh & released


async def test_two_allocators_racing_never_share_an_address(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    """Two controllers' allocators (two Stores, two etcd connections) allocate
    disjoint halves of 60 NEW tasks on one network at the same time."""
    clients = [EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
               for _ in range(2)]
    stores = [Store(client, etcd_prefix) for client in clients]
    try:
        async with running_cache(stores[0]), running_cache(stores[1]):
            network = pb.Network(id="net", spec=pb.NetworkSpec(name="net", driver="overlay"),
                                 subnet="10.3.0.0/24", gateway="10.3.0.1", vni=4096)
            service = pb.Service(id="svc", spec=service_spec("svc", 60, "net",
                                                             mode=pb.EndpointSpec.DNSRR))
            tasks = []
            for slot in range(1, 61):
                task = pb.Task(id=f"t{slot:02d}", service_id="svc", slot=slot,
                               desired_state=pb.RUNNING, status=pb.TaskStatus(state=pb.NEW))
                task.spec.CopyFrom(service.spec.task)
                tasks.append(task)
            await stores[0].commit([Create(network), Create(service), *map(Create, tasks)])
            await eventually(lambda: len(stores[1].cache.tasks) == 60)
            allocators = [Allocator(store) for store in stores]
            halves = [{t.id for t in tasks[0::2]}, {t.id for t in tasks[1::2]}]
            # Interleave the halves' batches so both write on the network at once.
            for _ in range(20):
                todo = [{i for i in half if stores[n].cache.tasks[i].status.state == pb.NEW}
                        for n, half in enumerate(halves)]
                if not any(todo):
                    break
                await asyncio.gather(*(a._pass(t, None) for a, t in zip(allocators, todo,
                                                                         strict=True)))
                await asyncio.sleep(0.05)  # let each cache see the other's writes
            final = stores[0].cache.tasks
            await eventually(lambda: all(final[t.id].status.state == pb.PENDING for t in tasks),
                             message="all allocated")
            held = addresses([final[t.id] for t in tasks])
            assert len(held) == len(set(held)) == 60
            _, kvs = await clients[0].range_prefix(stores[0].keys.network_addresses("net"))
            assert len(kvs) == 60

            # The keys are the guarantee, whatever a planner decides: a second
            # claim of an address fails.
            taken = ipaddress.ip_interface(held[0]).ip
            with pytest.raises(Conflict):
                await stores[1].commit([claim_address(stores[1].keys, "net", int(taken),
                                                      task_owner("intruder"))])
            with pytest.raises(Conflict):
                await stores[1].commit([Claim(stores[1].keys.vni(9999), b"a"),
                                        Claim(stores[1].keys.address("net", str(taken)), b"b")])
            _, vni_key = await clients[0].get(stores[0].keys.vni(9999))
            assert vni_key is None, "all or nothing"
    finally:
        for client in clients:
            await client.close()


# ---------------------------------------------------------------- removal and assignments


async def test_network_rm_refused_while_in_use(controller: Controller, control: Control,
                                               sim_nodes: SimulatedCluster) -> None:
    await create_network(control, "shared")
    service = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("api", 2, "shared")))).service
    await control.CreateService(cpb.CreateServiceRequest(spec=service_spec("db", 1, "shared")))
    # Settled first: tasks still being allocated would write meanwhile.
    await eventually(lambda: sum(t.status.state == pb.RUNNING
                                 for t in controller.store.cache.tasks.values()) == 3)
    before = set(await etcd_keys(controller))
    details = await refused(control.RemoveNetwork(cpb.RemoveRequest(ref="shared")),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert "network 'shared' is in use by service(s) api, db" in details
    assert set(await etcd_keys(controller)) == before
    await control.RemoveService(cpb.RemoveRequest(ref="api"))
    await control.RemoveService(cpb.RemoveRequest(ref="db"))
    await eventually(lambda: not controller.store.cache.tasks_by_service.get(service.id)
                     and not controller.store.cache.tasks, timeout=15)
    await control.RemoveNetwork(cpb.RemoveRequest(ref="shared"))
    assert await ipam_keys(controller) == {}


def peers_seen(sim_nodes: SimulatedCluster, network_id: str) -> dict[str, set[tuple[str, str]]]:
    """Per node id: the (overlay address, vtep) peers its agent was last told of."""
    return {node.session.node_id: {(str(p.ip), str(p.vtep))
                                   for p in node.worker.overlay.peers.get(network_id, [])}
            for node in sim_nodes.nodes if network_id in node.worker.overlay.networks()}


async def test_assignments_carry_networks_and_peers(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    network = await create_network(control, "mesh")
    service = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", 3, "mesh")))).service
    vtep = {n.session.node_id: n.session.description.advertise_addr for n in sim_nodes.nodes}

    def expected() -> dict[str, set[tuple[str, str]]]:
        tasks = [t for t in controller.store.cache.tasks_by_service.get(service.id, {}).values()
                 if t.status.state == pb.RUNNING]
        nodes = controller.store.cache.nodes
        up = {t.node_id for t in tasks if nodes[t.node_id].status.state != pb.NodeStatus.DOWN}
        # Every node is told of every endpoint, its own too (DNS and load
        # balancing need them; its data plane skips its own VTEP).
        endpoints = {(str(ipaddress.ip_interface(t.networks[0].addresses[0]).ip),
                      vtep[t.node_id]) for t in tasks if t.node_id in up}
        return dict.fromkeys(up, endpoints)

    await eventually(lambda: len(expected()) == 3 and peers_seen(sim_nodes, network.id)
                     == expected(), message="every node sees the three tasks")
    agent = sim_nodes.nodes[0].worker.overlay
    assert agent.network_objects[network.id].vni == network.vni
    assert str(agent.network_objects[network.id].subnet) == network.subnet
    peer = agent.peers[network.id][0]
    assert peer.mac == "02:42:" + ":".join(f"{b:02x}" for b in peer.ip.packed)

    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=2))
    await eventually(lambda: len(expected()) == 2 and peers_seen(sim_nodes, network.id)
                     == expected(), message="the scaled-down task left every peer list, "
                     "and its node dropped the network")

    victim = next(n for n in sim_nodes.nodes if n.session.node_id in expected())
    victim_id = victim.session.node_id
    await victim.stop()
    await eventually(lambda: controller.store.cache.nodes[victim_id].status.state
                     == pb.NodeStatus.DOWN, timeout=10)
    await eventually(lambda: all(vtep[victim_id] not in {v for _, v in peers}
                                 for node_id, peers in peers_seen(sim_nodes, network.id).items()
                                 if node_id != victim_id),
                     message="the down node's endpoints are gone from every other node")
    await eventually(lambda: len(expected()) == 2 and all(
        peers_seen(sim_nodes, network.id).get(n) == p
        for n, p in expected().items()), timeout=10,
        message="its replacement is a peer again")


async def test_service_update_allocates_and_releases_vips(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    one = await create_network(control, "one")
    two = await create_network(control, "two")
    service = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", 2, "one")))).service
    vip_keys = await ipam_keys(controller, "addr/")
    assert list(vip_keys.values()).count(f"vip/{service.id}") == 1

    spec = service_spec("web", 2, "one", "two")
    service = (await control.UpdateService(cpb.UpdateServiceRequest(
        service_id=service.id, version=service.meta.version, spec=spec))).service
    assert {v.network_id: v.addr for v in service.endpoint.virtual_ips} == \
        {one.id: "10.0.0.2/24", two.id: "10.0.1.2/24"}

    def rolled(count: int) -> bool:
        tasks = [t for t in live(controller, service.id) if t.status.state == pb.RUNNING]
        return len(tasks) == 2 and all(len(t.networks) == count for t in tasks)

    await eventually(lambda: rolled(2), timeout=30, message="tasks on both networks")

    spec = service_spec("web", 2, "two", mode=pb.EndpointSpec.VIP)
    service = (await control.UpdateService(cpb.UpdateServiceRequest(
        service_id=service.id, version=service.meta.version, spec=spec))).service
    assert [v.network_id for v in service.endpoint.virtual_ips] == [two.id]
    vips = {k: v for k, v in (await ipam_keys(controller, "addr/")).items()
            if v == f"vip/{service.id}"}
    assert list(vips) == [controller.store.keys.address(two.id, "10.0.1.2").decode()]
    await eventually(lambda: rolled(1), timeout=30, message="tasks on network two only")


async def test_networks_created_concurrently_on_two_controllers_never_collide(
        controller: Controller, control: Control, etcd_server: EtcdServer,
        etcd_prefix: str) -> None:
    from tests.integration.conftest import admin_channel, controller_config

    other = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await other.start()
    channel = admin_channel(other)
    try:
        stubs = [control, cgrpc.ControlStub(channel)]
        created = await asyncio.gather(*(
            create_network(stubs[i % 2], f"net{i}",
                           # Half ask for the same explicit subnet: exactly one wins.
                           subnet="10.200.0.0/24" if i % 4 == 0 else "")
            for i in range(12)), return_exceptions=True)
        networks = [n for n in created if isinstance(n, pb.Network)]
        errors = [e for e in created if not isinstance(e, pb.Network)]
        assert len(networks) == 10, errors
        assert all(isinstance(e, grpc.aio.AioRpcError)
                   and e.code() == grpc.StatusCode.INVALID_ARGUMENT
                   and "overlaps network" in (e.details() or "") for e in errors)
        subnets = [ipaddress.ip_network(n.subnet) for n in networks]
        assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])
        assert len({n.vni for n in networks}) == 10
        assert len(await ipam_keys(controller, "vni/")) == 10
    finally:
        await channel.close(None)
        await other.stop()


async def test_commit_groups_keeps_each_group_whole(store: Store) -> None:
    keys = store.keys
    groups = [[Claim(keys.vni(4096 + g * 100 + i), b"x") for i in range(50)] for g in range(4)]
    groups.append([Claim(keys.vni(4096), b"again"), Claim(keys.vni(1), b"y")])  # conflicts
    failed = await store.commit_groups(groups)
    # Groups 0-1 fill one transaction; 2-4 share the next, which the fifth makes fail.
    assert failed == [2, 3, 4]
    _, kvs = await store.etcd.range_prefix(keys.ipam + b"vni/")
    assert sorted(int(kv.key.rsplit(b"/", 1)[1]) for kv in kvs) == \
        [4096 + g * 100 + i for g in (0, 1) for i in range(50)], "whole groups or nothing"
    with pytest.raises(ValueError, match="exceeds one transaction"):
        await store.commit_groups([[Claim(keys.vni(i), b"z") for i in range(200)]])
