"""The routing mesh's pure decisions: published ports, node addresses on the
ingress network, what the dispatcher adds to ingress entries, and which
listeners and backends an agent derives from them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from swarm.agent.network import OverlaySettings
from swarm.agent.network.model import is_network_id
from swarm.agent.network.proxy import Backend, pick
from swarm.agent.published import (
    host_routes,
    ingress_backends,
    ingress_routes,
    local_addresses,
    ready_addresses,
)
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.allocator.ingress import (
    NO_INGRESS_MESSAGE,
    ingress_spec,
    node_address,
    plan_node_attachments,
)
from swarm.controller.allocator.networks import (
    AllocationError,
    PoolSettings,
    allocate_network,
    pool_settings,
)
from swarm.controller.allocator.ports import DYNAMIC_FIRST, plan_ports, publishes_ingress
from swarm.controller.allocator.tasks import plan_tasks
from swarm.controller.mesh import affects_mesh, complete_ingress, ingress_records, mesh_fingerprint
from swarm.controller.peers import OverlayIndex

TCP, UDP = pb.PortConfig.TCP, pb.PortConfig.UDP
INGRESS, HOST = pb.PortConfig.INGRESS, pb.PortConfig.HOST


def port(published: int, target: int = 80, mode: int = INGRESS, protocol: int = TCP
         ) -> pb.PortConfig:
    return pb.PortConfig(published_port=published, target_port=target,
                         publish_mode=mode, protocol=protocol)  # type: ignore[arg-type]


def service(service_id: str, *ports: pb.PortConfig) -> pb.Service:
    result = pb.Service(id=service_id, spec=pb.ServiceSpec(name=service_id))
    result.spec.endpoint.ports.extend(ports)
    result.endpoint.ports.extend(ports)
    return result


def spec(*ports: pb.PortConfig) -> pb.ServiceSpec:
    result = pb.ServiceSpec(name="new")
    result.endpoint.ports.extend(ports)
    return result


INGRESS_NET = pb.Network(id="ing", subnet="10.0.0.0/29", gateway="10.0.0.1", vni=4096,
                         spec=pb.NetworkSpec(name="ingress", ingress=True))


# ---------------------------------------------------------------- published ports


def test_explicit_ports_are_claimed_and_clashes_name_the_other_service() -> None:
    others = [service("web", port(8080)), service("direct", port(9000, mode=HOST))]
    plan = plan_ports("new", spec(port(8081), port(9000, mode=HOST), port(8080, protocol=UDP)),
                      [], others)
    assert [(p.published_port, p.publish_mode) for p in plan.ports] == [
        (8081, INGRESS), (9000, HOST), (8080, INGRESS)]
    # Ingress ports only are claimed cluster-wide (host ports are per node).
    assert plan.claimed == [(TCP, 8081), (UDP, 8080)]
    for wanted, clash in ((port(8080), "service 'web' (mode ingress)"),
                          (port(8080, mode=HOST), "service 'web' (mode ingress)"),
                          (port(9000), "service 'direct' (mode host)")):
        with pytest.raises(AllocationError) as caught:
            plan_ports("new", spec(port(1), wanted), [], others)
        assert str(caught.value) == (f"spec.endpoint.ports[1].published_port: port "
                                     f"{wanted.published_port}/tcp is already published by "
                                     f"{clash}")
    # Its own ports are no clash (an update), and the same service keeps them.
    assert plan_ports("web", spec(port(8080)), others[0].endpoint.ports, others).claimed == []


def test_dynamic_ports_take_the_lowest_free_and_are_kept() -> None:
    others = [service("a", port(DYNAMIC_FIRST)), service("b", port(DYNAMIC_FIRST + 2, mode=HOST))]
    plan = plan_ports("new", spec(port(0, 80), port(0, 81), port(DYNAMIC_FIRST + 1, 82)), [],
                      others)
    assert [p.published_port for p in plan.ports] == [DYNAMIC_FIRST + 3, DYNAMIC_FIRST + 4,
                                                       DYNAMIC_FIRST + 1]
    again = plan_ports("new", spec(port(0, 80), port(0, 81)), plan.ports, others)
    assert [p.published_port for p in again.ports] == [DYNAMIC_FIRST + 3, DYNAMIC_FIRST + 4]
    assert again.claimed == []
    assert again.released == [(TCP, DYNAMIC_FIRST + 1)]
    with pytest.raises(AllocationError, match="needs a published port number"):
        plan_ports("new", spec(port(0, 80, mode=HOST)), [], [])


def test_which_services_join_the_ingress_network() -> None:
    assert publishes_ingress(spec(port(8080)))
    assert not publishes_ingress(spec(port(8080, mode=HOST)))
    assert not publishes_ingress(spec())
    task = pb.Task(id="t1", service_id="web", status=pb.TaskStatus(state=pb.NEW),
                   desired_state=pb.RUNNING)
    web = service("web", port(8080))
    # No ingress network: the task waits, saying why.
    plan = plan_tasks([task], {}, {"web": web}, {}, 0.0)
    assert plan.waiting == {"t1": NO_INGRESS_MESSAGE}
    plan = plan_tasks([task], {"ing": INGRESS_NET}, {"web": web}, {"ing": {0x0A000002}}, 0.0)
    (promoted,) = plan.promoted
    assert [(a.network_id, list(a.addresses)) for a in promoted.task.networks] == [
        ("ing", ["10.0.0.3/29"])]


# ---------------------------------------------------------------- node addresses


def node(node_id: str, *attachments: pb.NetworkAttachment) -> pb.Node:
    return pb.Node(id=node_id, attachments=attachments)


def test_nodes_without_an_ingress_address_get_one_and_stale_ones_go() -> None:
    has = node("b", pb.NetworkAttachment(network_id="ing", addresses=["10.0.0.2/29"]))
    stale = node("c", pb.NetworkAttachment(network_id="gone", addresses=["10.9.0.2/24"]))
    plan = plan_node_attachments([node("a"), has, stale], INGRESS_NET, {"ing": {0x0A000002}}, 10)
    assert [(n.id, node_address(n, "ing")) for n in plan.nodes] == [
        ("a", "10.0.0.3/29"), ("c", "10.0.0.4/29")]
    assert plan.released == [("gone", "10.9.0.2/24")]
    assert plan.pool is not None
    assert plan.pool.network.address_cursor == "10.0.0.4"
    # At most `limit` nodes per plan; no ingress network: every attachment goes.
    assert len(plan_node_attachments([node("a"), node("d")], INGRESS_NET, {}, 1).nodes) == 1
    plan = plan_node_attachments([has], None, {}, 10)
    assert [list(n.attachments) for n in plan.nodes] == [[]]
    assert plan.released == [("ing", "10.0.0.2/29")]


def test_a_full_ingress_subnet_is_a_problem_not_a_crash() -> None:
    used = {"ing": set(range(0x0A000002, 0x0A000007))}  # every host address of the /29
    plan = plan_node_attachments([node("a")], INGRESS_NET, used, 10)
    assert plan.nodes == []
    assert "no free address on network 'ingress'" in plan.problem


def test_the_ingress_network_holds_thousands_of_nodes() -> None:
    """A cluster's ingress network is a /16 from the default pools (a /24
    left every node past the 253rd without an address, out of the routing
    mesh); user networks keep their /24s next to it."""
    pools = PoolSettings()
    ingress = allocate_network(ingress_spec(), [], pools)
    assert ingress.subnet == "10.0.0.0/16"
    made = pb.Network(id="ing", subnet=ingress.subnet, gateway=ingress.gateway, vni=ingress.vni,
                      spec=ingress_spec())
    nodes = [node(f"n{i:05d}") for i in range(5000)]
    used: dict[str, set[int]] = {}
    given: list[str] = []
    while True:  # as the keeper does: a bounded plan per transaction
        plan = plan_node_attachments([n for n in nodes if not node_address(n, "ing")], made,
                                     used, 1000)
        assert plan.problem == ""
        if not plan.nodes:
            break
        assert plan.pool is not None
        made = plan.pool.network
        used.setdefault("ing", set()).update(plan.claimed.values())
        by_id = {n.id: n for n in plan.nodes}
        nodes = [by_id.get(n.id, n) for n in nodes]
        given.extend(node_address(n, "ing") for n in plan.nodes)
    assert len(given) == len(set(given)) == 5000
    assert all(IPv4Interface(a).network == IPv4Network("10.0.0.0/16") for a in given)
    user = allocate_network(pb.NetworkSpec(name="front"), [made], pools)
    assert user.subnet == "10.1.0.0/24"


@pytest.mark.parametrize(("ipam_defaults", "subnet"), [
    (pb.IPAMDefaults(), "10.0.0.0/16"),
    (pb.IPAMDefaults(ingress_subnet_size=20), "10.0.0.0/20"),
    # A pool smaller than the ingress size holds a smaller ingress network.
    (pb.IPAMDefaults(address_pools=["172.30.0.0/22"]), "172.30.0.0/22"),
    (pb.IPAMDefaults(subnet_size=26), "10.0.0.0/16"),
])
def test_the_ingress_size_is_the_clusters_setting(ipam_defaults: pb.IPAMDefaults,
                                                    subnet: str) -> None:
    cluster = pb.Cluster(id="c", spec=pb.ClusterSpec(ipam=ipam_defaults))
    assert allocate_network(ingress_spec(), [], pool_settings([cluster])).subnet == subnet


def test_the_ingress_size_flag_reaches_the_new_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    from swarm.controller.main import parse_args
    from swarm.controller.server import default_cluster

    assert default_cluster(parse_args(["--insecure"])).spec.ipam.ingress_subnet_size == 16
    config = parse_args(["--insecure", "--ingress-subnet-size", "20"])
    assert default_cluster(config).spec.ipam.ingress_subnet_size == 20
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--insecure", "--ingress-subnet-size", "30"])
    assert exit_info.value.code == 2
    assert "--ingress-subnet-size: must be between 8 and 29 (got 30)" in capsys.readouterr().err


def test_an_existing_ingress_network_keeps_its_subnet() -> None:
    """Nothing reallocates an ingress network that exists: a cluster made
    with a /24 keeps it (and so do its nodes' addresses)."""
    has = node("b", pb.NetworkAttachment(network_id="ing", addresses=["10.0.0.2/29"]))
    plan = plan_node_attachments([has, node("a")], INGRESS_NET, {"ing": {0x0A000002}}, 10)
    assert [(n.id, node_address(n, "ing")) for n in plan.nodes] == [("a", "10.0.0.3/29")]
    assert plan.pool is not None
    assert plan.pool.network.subnet == "10.0.0.0/29"


# ---------------------------------------------------------------- what nodes are told


def test_a_nodes_own_endpoint_assigns_it_the_ingress_network() -> None:
    index = OverlayIndex()
    with_address = node("n1", pb.NetworkAttachment(network_id="ing", addresses=["10.0.0.2/29"]))
    assert index.apply_node(None, with_address) == {"ing"}
    assert index.networks_of("n1") == {"ing"}
    assert set(index.endpoints["ing"]) == {"node:n1"}
    assert index.apply_node(with_address, with_address) == set()
    assert index.apply_node(with_address, None) == {"ing"}
    assert index.networks_of("n1") == set()


def test_ingress_entries_carry_the_node_address_and_published_services() -> None:
    web = service("web", port(8080), port(9000, mode=HOST))
    records = ingress_records([web, service("plain")])
    assert [(r.id, [p.published_port for p in r.ports]) for r in records] == [("web", [8080])]
    assert affects_mesh(None, web)
    assert not affects_mesh(service("plain"), service("plain", port(1, mode=HOST)))
    me = node("n1", pb.NetworkAttachment(network_id="ing", addresses=["10.0.0.2/29"]))
    # No peer changed and nothing else did: nothing to send.
    assert complete_ingress(None, INGRESS_NET, me, records, changed=False) is None
    entry = complete_ingress(None, INGRESS_NET, me, records, changed=True)
    assert entry is not None
    assert entry.delta
    assert entry.node_address == "10.0.0.2/29"
    assert list(entry.services) == records
    assert not entry.network.address_cursor
    assert mesh_fingerprint(me, INGRESS_NET, records) != mesh_fingerprint(me, INGRESS_NET, [])


# ---------------------------------------------------------------- the agent's side


def test_listeners_and_backends_follow_services_readiness_and_running_tasks() -> None:
    record = dpb.ServiceRecord(id="web", ports=[port(8080, 80), port(9000, 90, mode=HOST)])
    routes = ingress_routes([record])
    assert list(routes) == [(TCP, 8080)]
    assert (routes[(TCP, 8080)].service_id, routes[(TCP, 8080)].target_port) == ("web", 80)
    peers = [dpb.OverlayPeer(task_id="t1", address="10.0.0.3/24", service_id="web", ready=True),
             dpb.OverlayPeer(task_id="t2", address="10.0.0.4/24", service_id="web"),
             dpb.OverlayPeer(task_id="node:n1", address="10.0.0.2/24"),
             dpb.OverlayPeer(task_id="t3", address="10.0.0.5/24", service_id="api", ready=True)]
    assert ingress_backends(ready_addresses(peers), "web", 80, "/run/netns/sb") == [
        Backend("/run/netns/sb", "10.0.0.3", 80)]
    # The node's own ready tasks (by VTEP): kept when its liveness lapses.
    for peer, vtep in zip(peers, ["192.0.2.1", "192.0.2.1", "192.0.2.1", "192.0.2.2"],
                          strict=True):
        peer.vtep = vtep
    assert local_addresses(peers, "192.0.2.1") == {"10.0.0.3"}
    assert local_addresses(peers, "192.0.2.2") == {"10.0.0.5"}
    assert local_addresses(peers, "") == set()

    def task(task_id: str, *addresses: str) -> pb.Task:
        result = pb.Task(id=task_id)
        result.endpoint.ports.extend([port(9000, 90, mode=HOST), port(8080)])
        for address in addresses:
            result.networks.add(network_id="n", addresses=[address])
        return result

    routes = host_routes([(task("a", "10.1.0.5/24"), pb.RUNNING), (task("b"), pb.RUNNING),
                          (task("c"), pb.STARTING)], lambda task_id: f"/ns/{task_id}")
    assert list(routes) == [(TCP, 9000)]
    assert routes[(TCP, 9000)].backends == (Backend("/ns/a", "10.1.0.5", 90),
                                            Backend("/ns/b", "127.0.0.1", 90))


def test_backends_are_picked_at_random_without_repeats() -> None:
    backends = [Backend("ns", f"10.0.0.{n}", 80) for n in range(2, 12)]
    first: set[str] = set()
    for _ in range(50):
        picked = pick(backends)
        assert len(picked) == len(set(picked)) == 3
        first.add(picked[0].address)
    assert len(first) > 3
    assert pick([]) == []


def test_the_ingress_sandbox_is_never_taken_for_a_network() -> None:
    name = OverlaySettings(advertise_addr=IPv4Address("10.0.0.1"),
                           netns_prefix="ov-x-").sandbox_name("ingress")
    assert name.startswith("ov-x-")
    assert not is_network_id(name[len("ov-x-"):])
    assert is_network_id("4tggkxp3sbtgwy433eywgfwgb")
