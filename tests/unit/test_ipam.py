"""IPAM's pure decisions: addresses (cursor order, no immediate reuse),
subnets from pools, VNIs, the subnet claim-key encoding, network and VIP
allocation, and the task planner (all or nothing, waiting reasons)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api.overlay import mac_for_ip
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.allocator import ipam
from swarm.controller.allocator.networks import (
    AllocationError,
    PoolSettings,
    allocate_network,
    plan_vips,
    pool_settings,
    stopping_holders,
    used_by_network,
)
from swarm.controller.allocator.tasks import WAITING_FOR_VIPS, needs_allocation, plan_tasks


def ip(text: str) -> int:
    return int(IPv4Address(text))


def subnet(cidr: str = "10.0.0.0/29", gateway: str | None = None) -> ipam.Subnet:
    network = IPv4Network(cidr)
    return ipam.Subnet(network, int((gateway and IPv4Address(gateway))
                                    or ipam.default_gateway(network)))


# ---------------------------------------------------------------- addresses


def test_first_address_skips_network_and_gateway() -> None:
    assert ipam.next_address(subnet(), set(), None) == ip("10.0.0.2")


def test_next_address_starts_after_the_cursor_and_wraps() -> None:
    s = subnet()  # hosts .1-.6, gateway .1
    assert ipam.next_address(s, set(), ip("10.0.0.4")) == ip("10.0.0.5")
    assert ipam.next_address(s, {ip("10.0.0.6")}, ip("10.0.0.5")) == ip("10.0.0.2")
    assert ipam.next_address(s, set(), ip("10.0.0.6")) == ip("10.0.0.2"), "wraps, skips gateway"


def test_full_subnet_gives_none() -> None:
    s = subnet()
    used = {ip(f"10.0.0.{i}") for i in range(2, 7)}
    assert ipam.next_address(s, used, None) is None
    assert ipam.free_count(s, used) == 0
    assert s.capacity() == 5


def test_allocate_hands_out_distinct_addresses_and_moves_the_cursor() -> None:
    found, cursor = ipam.allocate(subnet(), set(), None, 10)
    assert found == [ip(f"10.0.0.{i}") for i in range(2, 7)]
    assert cursor == ip("10.0.0.6")


def test_a_released_address_is_not_reused_at_once() -> None:
    s = subnet("10.0.0.0/24")
    found, cursor = ipam.allocate(s, set(), None, 3)
    used = set(found) - {found[0]}  # the first one is released
    assert ipam.next_address(s, used, cursor) == found[-1] + 1


@st.composite
def address_cases(draw: st.DrawFn) -> tuple[ipam.Subnet, set[int], int | None]:
    prefix = draw(st.integers(24, 29))
    base = draw(st.integers(0, (1 << prefix) - 1)) << (32 - prefix)
    network = IPv4Network((base, prefix))
    hosts = list(range(int(network.network_address) + 1, int(network.broadcast_address)))
    gateway = draw(st.sampled_from(hosts))
    used = set(draw(st.lists(st.sampled_from(hosts), max_size=len(hosts))))
    cursor = draw(st.none() | st.sampled_from(hosts))
    return ipam.Subnet(network, gateway), used, cursor


@given(address_cases())
@settings(max_examples=300, deadline=None)
def test_next_address_is_the_first_free_one_after_the_cursor(
        case: tuple[ipam.Subnet, set[int], int | None]) -> None:
    s, used, cursor = case
    hosts = list(range(s.first_host, s.last_host + 1))
    free = [a for a in hosts if a != s.gateway and a not in used]
    result = ipam.next_address(s, used, cursor)
    if not free:
        assert result is None
        return
    # Cyclic order starting just after the cursor.
    start = 0 if cursor is None else hosts.index(cursor) + 1
    order = hosts[start:] + hosts[:start]
    assert result == next(a for a in order if a in free)


@given(address_cases(), st.integers(1, 70))
@settings(max_examples=200, deadline=None)
def test_allocate_never_repeats_and_never_hands_out_reserved(
        case: tuple[ipam.Subnet, set[int], int | None], count: int) -> None:
    s, used, cursor = case
    found, _ = ipam.allocate(s, used, cursor, count)
    assert len(found) == len(set(found)) == min(count, ipam.free_count(s, used))
    for address in found:
        assert s.first_host <= address <= s.last_host
        assert address != s.gateway
        assert address not in used


@given(address_cases(), st.integers(1, 20))
@settings(max_examples=200, deadline=None)
def test_released_addresses_wait_for_the_cursor_to_come_round(
        case: tuple[ipam.Subnet, set[int], int | None], count: int) -> None:
    s, used, cursor = case
    found, cursor = ipam.allocate(s, used, cursor, count)
    if not found:
        return
    released = found[0]
    remaining = used | set(found[1:])
    again, _ = ipam.allocate(s, remaining, cursor, ipam.free_count(s, remaining))
    # Every other free address comes first: the released one is last in line.
    assert again[-1] == released


# ---------------------------------------------------------------- subnets and VNIs


def nets(*cidrs: str) -> list[IPv4Network]:
    return [IPv4Network(c) for c in cidrs]


def test_next_subnet_takes_the_lowest_free_block() -> None:
    pools = nets("10.0.0.0/8")
    assert ipam.next_subnet(pools, 24, []) == IPv4Network("10.0.0.0/24")
    assert ipam.next_subnet(pools, 24, nets("10.0.0.0/24", "10.0.1.0/24")) == \
        IPv4Network("10.0.2.0/24")
    assert ipam.next_subnet(pools, 24, nets("10.0.0.0/16")) == IPv4Network("10.1.0.0/24")
    assert ipam.next_subnet(pools, 24, nets("10.0.0.128/25")) == IPv4Network("10.0.1.0/24")


def test_next_subnet_moves_to_the_next_pool_and_runs_out() -> None:
    pools = nets("192.168.0.0/23", "172.20.0.0/24")
    assert ipam.next_subnet(pools, 24, nets("192.168.0.0/23")) == IPv4Network("172.20.0.0/24")
    assert ipam.next_subnet(pools, 24, nets("192.168.0.0/16", "172.20.0.0/24")) is None
    assert ipam.next_subnet(nets("10.0.0.0/25"), 24, []) is None, "a /24 does not fit a /25"


@given(st.integers(20, 24), st.integers(24, 28),
       st.lists(st.tuples(st.integers(0, 4095), st.integers(20, 29)), max_size=8))
@settings(max_examples=300, deadline=None)
def test_next_subnet_matches_brute_force(pool_prefix: int, size: int,
                                         taken_raw: list[tuple[int, int]]) -> None:
    base = int(IPv4Address("10.1.0.0"))
    pool = IPv4Network((base, pool_prefix))
    # Taken networks around the pool's /20, some overlapping it, some not.
    taken = [IPv4Network(((base + (offset << 8)) & ~((1 << (32 - p)) - 1), p))
             for offset, p in taken_raw]
    expected = next((c for c in pool.subnets(new_prefix=size)
                     if not any(c.overlaps(t) for t in taken)), None)
    assert ipam.next_subnet([pool], size, taken) == expected


@given(st.integers(8, 29), st.integers(8, 29), st.integers(0, (1 << 32) - 1),
       st.integers(0, (1 << 32) - 1))
def test_subnet_bits_prefix_relation_is_overlap(pa: int, pb_: int, a: int, b: int) -> None:
    first = IPv4Network((a >> (32 - pa) << (32 - pa), pa))
    second = IPv4Network((b >> (32 - pb_) << (32 - pb_), pb_))
    bits_a, bits_b = ipam.subnet_bits(first), ipam.subnet_bits(second)
    prefix_related = bits_a.startswith(bits_b) or bits_b.startswith(bits_a)
    assert prefix_related == first.overlaps(second)
    assert bits_b in ipam.ancestor_bits(first) or not (
        bits_a.startswith(bits_b) and bits_a != bits_b)


def test_next_vni_from_4096() -> None:
    assert ipam.next_vni(set()) == 4096
    assert ipam.next_vni({4096, 4097, 4099}) == 4098
    assert ipam.next_vni({1, 2}, first=1, last=2) is None


def test_mac_is_derived_from_the_address() -> None:
    assert mac_for_ip("10.0.0.2/24") == "02:42:0a:00:00:02"
    assert mac_for_ip("172.17.255.1") == "02:42:ac:11:ff:01"


# ---------------------------------------------------------------- networks


def network(net_id: str, cidr: str, *, vni: int = 4096, name: str = "") -> pb.Network:
    s = IPv4Network(cidr)
    return pb.Network(id=net_id, spec=pb.NetworkSpec(name=name or net_id, driver="overlay"),
                      subnet=cidr, gateway=str(ipam.default_gateway(s)), vni=vni)


def test_network_gets_the_next_pool_block_gateway_and_vni() -> None:
    existing = [network("a", "10.0.0.0/24", vni=4096)]
    got = allocate_network(pb.NetworkSpec(name="b"), existing, PoolSettings())
    assert (got.subnet, got.gateway, got.vni) == ("10.0.1.0/24", "10.0.1.1", 4097)


def test_explicit_subnet_and_gateway_are_kept() -> None:
    spec = pb.NetworkSpec(name="b", ipam=pb.IPAMConfig(subnet="192.168.5.0/24",
                                                       gateway="192.168.5.254"))
    got = allocate_network(spec, [], PoolSettings())
    assert (got.subnet, got.gateway) == ("192.168.5.0/24", "192.168.5.254")


def test_overlapping_subnet_is_refused_naming_the_other_network() -> None:
    spec = pb.NetworkSpec(name="b", ipam=pb.IPAMConfig(subnet="10.0.0.128/25"))
    with pytest.raises(AllocationError) as caught:
        allocate_network(spec, [network("a", "10.0.0.0/24", name="front")], PoolSettings())
    assert caught.value.field == "spec.ipam.subnet"
    assert "overlaps network 'front' (10.0.0.0/24)" in str(caught.value)
    assert not caught.value.exhausted


def test_exhausted_pool_is_reported() -> None:
    pools = PoolSettings(pools=(IPv4Network("10.9.0.0/24"),), subnet_size=24)
    with pytest.raises(AllocationError) as caught:
        allocate_network(pb.NetworkSpec(name="b"), [network("a", "10.9.0.0/24")], pools)
    assert caught.value.exhausted
    assert "10.9.0.0/24" in str(caught.value)


def test_pool_settings_come_from_the_cluster() -> None:
    cluster = pb.Cluster(spec=pb.ClusterSpec(ipam=pb.IPAMDefaults(
        address_pools=["172.30.0.0/16"], subnet_size=26)))
    assert pool_settings([cluster]) == PoolSettings((IPv4Network("172.30.0.0/16"),), 26)
    assert pool_settings([pb.Cluster()]) == PoolSettings()


# ---------------------------------------------------------------- VIPs and tasks


def service_spec(*network_ids: str, mode: pb.EndpointSpec.Mode.ValueType = pb.EndpointSpec.VIP
                 ) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="web")
    spec.task.networks.extend(pb.NetworkAttachmentConfig(target=n) for n in network_ids)
    spec.endpoint.mode = mode
    return spec


def test_vips_are_kept_allocated_and_released() -> None:
    networks = {"a": network("a", "10.0.0.0/24"), "b": network("b", "10.0.1.0/24")}
    first = plan_vips(service_spec("a"), [], networks, {})
    assert [v.addr for v in first.virtual_ips] == ["10.0.0.2/24"]
    assert first.claimed == [("a", ip("10.0.0.2"))]
    assert first.networks[0].address_cursor == "10.0.0.2"
    second = plan_vips(service_spec("b"), first.virtual_ips, networks, {})
    assert [v.addr for v in second.virtual_ips] == ["10.0.1.2/24"]
    assert [v.network_id for v in second.released] == ["a"]
    dnsrr = plan_vips(service_spec("b", mode=pb.EndpointSpec.DNSRR), second.virtual_ips,
                      networks, {})
    assert not dnsrr.virtual_ips
    assert not dnsrr.claimed
    assert len(dnsrr.released) == 1


def test_vip_on_a_full_network_is_exhausted() -> None:
    full = {ip(f"10.0.0.{i}") for i in range(2, 7)}
    with pytest.raises(AllocationError) as caught:
        plan_vips(service_spec("a"), [], {"a": network("a", "10.0.0.0/29")}, {"a": full})
    assert caught.value.exhausted
    assert caught.value.field == "spec.task.networks[0].target"


def new_task(task_id: str, *network_ids: str, service_id: str = "s") -> pb.Task:
    task = pb.Task(id=task_id, service_id=service_id, desired_state=pb.RUNNING)
    task.spec.networks.extend(pb.NetworkAttachmentConfig(target=n) for n in network_ids)
    task.status.state = pb.NEW
    return task


def allocated_service(*network_ids: str, mode: pb.EndpointSpec.Mode.ValueType = pb.EndpointSpec.DNSRR
                      ) -> pb.Service:
    service = pb.Service(id="s", spec=service_spec(*network_ids, mode=mode))
    service.endpoint.spec.CopyFrom(service.spec.endpoint)
    return service


def test_tasks_get_one_address_per_network_and_become_pending() -> None:
    networks = {"a": network("a", "10.0.0.0/24"), "b": network("b", "10.0.1.0/24")}
    tasks = [new_task("t1", "a", "b"), new_task("t2", "a")]
    plan = plan_tasks(tasks, networks, {"s": allocated_service("a", "b")}, {}, 0.0)
    assert not plan.waiting
    first, second = (p.task for p in plan.promoted)
    assert [(a.network_id, list(a.addresses)) for a in first.networks] == \
        [("a", ["10.0.0.2/24"]), ("b", ["10.0.1.2/24"])]
    assert list(second.networks[0].addresses) == ["10.0.0.3/24"]
    assert first.status.state == pb.PENDING
    assert {n.id: n.address_cursor for n in plan.networks()} == {"a": "10.0.0.3", "b": "10.0.1.2"}
    assert tasks[0].status.state == pb.NEW, "inputs untouched"
    assert not tasks[0].networks


def test_a_task_gets_all_its_addresses_or_none() -> None:
    networks = {"a": network("a", "10.0.0.0/24"), "full": network("full", "10.0.1.0/29")}
    used = {"full": {ip(f"10.0.1.{i}") for i in range(2, 7)}}
    plan = plan_tasks([new_task("t1", "a", "full"), new_task("t2", "a")], networks,
                      {"s": allocated_service("a", "full")}, used, 0.0)
    assert "no free address on network 'full'" in plan.waiting["t1"]
    # t1's tentative address on "a" went back: t2 gets the first one.
    assert list(plan.promoted[0].task.networks[0].addresses) == ["10.0.0.2/24"]


def test_tasks_wait_for_their_services_vips() -> None:
    networks = {"a": network("a", "10.0.0.0/24")}
    service = allocated_service("a", mode=pb.EndpointSpec.VIP)
    plan = plan_tasks([new_task("t1", "a")], networks, {"s": service}, {}, 0.0)
    assert plan.waiting == {"t1": WAITING_FOR_VIPS}
    assert not plan.pools
    service.endpoint.virtual_ips.add(network_id="a", addr="10.0.0.2/24")
    plan = plan_tasks([new_task("t1", "a")], networks, {"s": service},
                      used_by_network([], [service]), 0.0)
    task = plan.promoted[0].task
    assert list(task.networks[0].addresses) == ["10.0.0.3/24"]
    assert task.endpoint.virtual_ips[0].addr == "10.0.0.2/24", "the VIPs travel with the task"


def test_only_new_wanted_tasks_need_allocation() -> None:
    task = new_task("t1", "a")
    assert needs_allocation(task)
    task.desired_state = pb.SHUTDOWN
    assert not needs_allocation(task)
    task.desired_state, task.status.state = pb.RUNNING, pb.PENDING
    assert not needs_allocation(task)


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
                max_size=40),
       st.sets(st.integers(2, 14), max_size=13))
@settings(max_examples=150, deadline=None)
def test_planned_addresses_are_unique_and_all_or_nothing(
        attachments: list[list[str]], used_on_c: set[int]) -> None:
    """Random tasks on three networks, one of them small and partly used: no
    address is handed out twice or taken from `used`, every promoted task has
    one address on each of its networks, and a task that waits has none."""
    networks = {"a": network("a", "10.0.0.0/24"), "b": network("b", "10.0.1.0/26"),
                "c": network("c", "10.0.2.0/28")}
    used = {"c": {ip("10.0.2.0") + i for i in used_on_c}}
    tasks = [new_task(f"t{i}", *nets) for i, nets in enumerate(attachments)]
    plan = plan_tasks(tasks, networks, {"s": allocated_service("a", "b", "c")}, used, 0.0)
    seen: set[tuple[str, int]] = {("c", a) for a in used["c"]}
    for promotion in plan.promoted:
        wanted = [a.target for a in promotion.task.spec.networks]
        assert [a.network_id for a in promotion.task.networks] == wanted
        for network_id, address in promotion.claimed:
            assert (network_id, address) not in seen
            seen.add((network_id, address))
            assert address != ip(networks[network_id].gateway)
    assert len(plan.promoted) + len(plan.waiting) == len(tasks)
    for task_id, reason in plan.waiting.items():
        assert "no free address on network 'c'" in reason, task_id


def test_orchestrator_creates_tasks_on_networks_as_new() -> None:
    from swarm.controller.orchestrator import OrchestratorSettings, plan_service

    service = pb.Service(id="s", spec_version=1, spec=service_spec("a"))
    service.spec.replicated.replicas = 2
    plain = pb.Service(id="p", spec_version=1, spec=pb.ServiceSpec(name="p"))
    plain.spec.replicated.replicas = 1
    created = plan_service(service, [], {}, 0.0, OrchestratorSettings()).create
    assert [t.status.state for t in created] == [pb.NEW, pb.NEW]
    assert created[0].status.message == "waiting for network addresses"
    created = plan_service(plain, [], {}, 0.0, OrchestratorSettings()).create
    assert [t.status.state for t in created] == [pb.PENDING], "nothing to allocate"


@given(st.lists(st.tuples(st.integers(0, 9), st.none() | st.sets(st.integers(2, 40), max_size=2)),
                max_size=40))
@settings(max_examples=100, deadline=None)
def test_address_index_follows_the_cache(steps: list[tuple[int, set[int] | None]]) -> None:
    """Random task writes and deletions through the watch cache: the index
    always equals a full rescan."""
    from swarm.controller.allocator.index import AddressIndex
    from swarm.controller.store import Keys, WatchCache

    keys = Keys("/t/")
    cache = WatchCache(None, keys)  # type: ignore[arg-type]  # never lists or watches here
    index = AddressIndex(cache)
    for revision, (task_no, owned) in enumerate(steps, start=1):
        key = keys.object("tasks", f"t{task_no}")
        if owned is None:
            cache.apply_committed([], [key], revision)
            continue
        task = pb.Task(id=f"t{task_no}", service_id="s")
        for n, address in enumerate(sorted(owned)):
            task.networks.add(network_id=f"n{n}", addresses=[f"10.0.0.{address}/24"])
        cache.apply_committed([(key, task.SerializeToString())], [], revision)
        expected = {k: v for k, v in used_by_network(cache.tasks.values(), []).items() if v}
        assert {k: set(v) for k, v in index.items()} == expected


def test_stopping_holders_are_unended_tasks_with_an_address_on_live_nodes() -> None:
    def holder(task_id: str, state: int, node_id: str = "up", network_id: str = "net",
               addresses: tuple[str, ...] = ("10.0.0.5/24",)) -> pb.Task:
        task = pb.Task(id=task_id, node_id=node_id)
        task.status.state = state  # type: ignore[assignment]
        task.networks.add(network_id=network_id, addresses=addresses)
        return task

    nodes = {"up": pb.Node(id="up", status=pb.NodeStatus(state=pb.NodeStatus.READY)),
             "down": pb.Node(id="down", status=pb.NodeStatus(state=pb.NodeStatus.DOWN))}
    tasks = [holder("running", pb.RUNNING), holder("pending", pb.PENDING, node_id=""),
             holder("ended", pb.SHUTDOWN), holder("failed", pb.FAILED),
             holder("on-down-node", pb.RUNNING, node_id="down"),
             holder("on-gone-node", pb.RUNNING, node_id="gone"),
             holder("other-network", pb.RUNNING, network_id="other"),
             holder("no-address", pb.NEW, addresses=())]
    assert [t.id for t in stopping_holders("net", tasks, nodes)] == ["running", "pending"]
