"""Service discovery data end to end: a real etcd, the real controller, and
simulated agents over the real dispatcher API receive, with each network, the
services attached to it (name, mode, VIP) and every endpoint with its task
name and readiness; changes arrive as deltas."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from swarm.agent.compact_deltas import entry_peers
from swarm.agent.simulated import SimulatedCluster, SimulatedNode
from swarm.api.naming import task_name
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.server import Controller
from tests.integration.test_ipam import create_network, service_spec
from tests.waiting import eventually

if TYPE_CHECKING:
    Control: TypeAlias = cgrpc.ControlAsyncStub

Record = tuple[str, str, int, str]  # id, name, mode, vip
Seen = tuple[str, str, str, bool]  # task id, service id, task name, ready


def records_seen(node: SimulatedNode, network_id: str) -> list[Record]:
    return [(r.id, r.name, r.mode, r.vip) for r in node.worker.peer_sets.services(network_id)]


def endpoints_seen(node: SimulatedNode, network_id: str) -> list[Seen]:
    return [(p.task_id, p.service_id, p.task_name, p.ready)
            for p in node.worker.peer_sets.endpoints(network_id)]


def holders(sim_nodes: SimulatedCluster, network_id: str) -> list[SimulatedNode]:
    return [n for n in sim_nodes.nodes if network_id in n.worker.overlay.networks()]


def vip_on(service: pb.Service, network_id: str) -> str:
    (vip,) = [v.addr for v in service.endpoint.virtual_ips if v.network_id == network_id]
    return vip


async def test_nodes_get_service_records_names_and_readiness(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    cache = controller.store.cache
    network = await create_network(control, "mesh")
    web = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", 3, "mesh")))).service
    db = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("db", 1, "mesh", mode=pb.EndpointSpec.DNSRR)))).service
    records: list[Record] = [(db.id, "db", pb.EndpointSpec.DNSRR, ""),
               (web.id, "web", pb.EndpointSpec.VIP, vip_on(web, network.id))]
    assert records[1][3], "a vip-mode service has its VIP at once"

    def expected_endpoints() -> list[Seen]:
        tasks = [t for sid in (web.id, db.id) for t in cache.tasks_by_service.get(sid, {}).values()
                 if t.status.state == pb.RUNNING]
        return sorted((t.id, t.service_id, task_name(t), True) for t in tasks)

    def every_holder_sees(endpoints: list[Seen], services: list[Record]) -> bool:
        nodes = holders(sim_nodes, network.id)
        return bool(nodes) and all(endpoints_seen(n, network.id) == endpoints
                                   and records_seen(n, network.id) == services for n in nodes)

    await eventually(lambda: len(expected_endpoints()) == 4
                     and every_holder_sees(expected_endpoints(), records), timeout=15,
                     message="every node on the network sees the 4 tasks, ready, and 2 services")
    for node in holders(sim_nodes, network.id):
        first = next(e for e in node.worker.received if e.network.id == network.id)
        assert not first.delta, "a network's first entry in a session is complete"
        assert first.services, "with the records"
    names = [name for _, _, name, _ in expected_endpoints()]
    assert sorted(n.split(".")[0] for n in names) == ["db", "web", "web", "web"]

    # A task turning unhealthy (reported through its node's real session) is
    # one changed peer, sent as a delta to every node on the network.
    target = next(t for t in cache.tasks_by_service[web.id].values()
                  if t.status.state == pb.RUNNING)
    owner = next(n for n in sim_nodes.nodes if n.session.node_id == target.node_id)
    for node in sim_nodes.nodes:
        node.worker.received.clear()
    status = pb.TaskStatus(state=pb.RUNNING, health=pb.TaskStatus.UNHEALTHY, message="unhealthy")
    owner.session.report(target.id, status)
    unhealthy = [(t, s, n, r and t != target.id) for t, s, n, r in expected_endpoints()]
    await eventually(lambda: every_holder_sees(unhealthy, records), timeout=10,
                     message="every node sees the task not ready")
    for node in holders(sim_nodes, network.id):
        entries = [e for e in node.worker.received if e.network.id == network.id]
        assert entries, "the change was sent"
        assert all(e.delta for e in entries), "a delta, not the whole set again"
        assert [p.task_id for e in entries for p in entry_peers(e)] == [target.id]
        assert [[r.name for r in e.services] for e in entries] == [["db", "web"]] * len(entries)
    owner.session.report(target.id, pb.TaskStatus(state=pb.RUNNING,
                                                  health=pb.TaskStatus.HEALTHY))
    await eventually(lambda: every_holder_sees(expected_endpoints(), records), timeout=10,
                     message="ready again")

    # A service with no tasks changes no peer, but its record reaches the
    # nodes that have the network; its removal takes it away again.
    api = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("api", 0, "mesh")))).service
    with_api: list[Record] = sorted([*records, (api.id, "api", pb.EndpointSpec.VIP, vip_on(api, network.id))],
                      key=lambda r: r[1])
    await eventually(lambda: every_holder_sees(expected_endpoints(), with_api), timeout=10,
                     message="the new service's record")
    await control.RemoveService(cpb.RemoveRequest(ref="api"))
    await eventually(lambda: every_holder_sees(expected_endpoints(), records), timeout=10,
                     message="the removed service's record gone")

    # Switching web to dnsrr releases its VIP: the record says so.
    spec = service_spec("web", 3, "mesh", mode=pb.EndpointSpec.DNSRR)
    current = cache.services[web.id]
    await control.UpdateService(cpb.UpdateServiceRequest(
        service_id=web.id, version=current.meta.version, spec=spec))
    dnsrr: list[Record] = [records[0], (web.id, "web", pb.EndpointSpec.DNSRR, "")]
    await eventually(lambda: len(expected_endpoints()) == 4
                     and every_holder_sees(expected_endpoints(), dnsrr), timeout=30,
                     message="web in dnsrr mode, without a VIP, its tasks rolled")

