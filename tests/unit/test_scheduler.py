"""The in-memory scheduler: node accounting, filters and their explanations,
the spread strategy, placement preferences, and batch placement."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.scheduler.filters import (
    ConstraintFilter,
    HostPortFilter,
    MaxReplicasFilter,
    ReadyFilter,
    ResourceFilter,
)
from swarm.controller.scheduler.nodeinfo import NodeInfo, build_node_infos
from swarm.controller.scheduler.scheduler import Decision, Scheduler, group_tasks

CPU = 1_000_000_000
GIB = 1 << 30
TCP, UDP = pb.PortConfig.TCP, pb.PortConfig.UDP


def node(node_id: str, *, cpus: int = 4, memory_gib: int = 8,
         labels: dict[str, str] | None = None,
         state: pb.NodeStatus.State.ValueType = pb.NodeStatus.READY,
         availability: pb.NodeSpec.Availability.ValueType = pb.NodeSpec.ACTIVE,
         role: pb.NodeSpec.Role.ValueType = pb.NodeSpec.WORKER) -> pb.Node:
    result = pb.Node(id=node_id)
    result.description.hostname = f"host-{node_id}"
    result.description.resources.nano_cpus = cpus * CPU
    result.description.resources.memory_bytes = memory_gib * GIB
    result.spec.labels.update(labels or {})
    result.spec.role = role
    result.spec.availability = availability
    result.status.state = state
    return result


def task(task_id: str, *, service: str = "svc", cpus: float = 0, memory_gib: float = 0,
         constraints: Sequence[str] = (), spread: Sequence[str] = (), max_per_node: int = 0,
         host_ports: Sequence[tuple[int, int]] = (), node_id: str = "",
         state: pb.TaskState.ValueType = pb.PENDING, spec_version: int = 1) -> pb.Task:
    result = pb.Task(id=task_id, service_id=service, node_id=node_id, spec_version=spec_version,
                     desired_state=pb.RUNNING)
    result.status.state = state
    result.spec.container.image = "busybox"
    result.spec.resources.reservations.nano_cpus = int(cpus * CPU)
    result.spec.resources.reservations.memory_bytes = int(memory_gib * GIB)
    result.spec.placement.constraints.extend(constraints)
    for key in spread:
        result.spec.placement.preferences.add(spread=key)
    result.spec.placement.max_replicas_per_node = max_per_node
    for protocol, port in host_ports:
        result.endpoint.spec.ports.add(protocol=protocol, target_port=80, published_port=port,
                                       publish_mode=pb.PortConfig.HOST)
    return result


def tasks_of(prefix: str, count: int, **options: Any) -> list[pb.Task]:
    return [task(f"{prefix}{i}", **options) for i in range(count)]


def infos(nodes: Iterable[pb.Node], tasks: Iterable[pb.Task] = ()) -> dict[str, NodeInfo]:
    return build_node_infos(nodes, tasks)


def schedule(tasks: Sequence[pb.Task], nodes: dict[str, NodeInfo]) -> list[Decision]:
    return Scheduler().schedule(tasks, nodes)


def placements(decisions: Iterable[Decision]) -> collections.Counter[str]:
    return collections.Counter(d.node_id for d in decisions if d.node_id)


def only_reason(decisions: Iterable[Decision]) -> str:
    reasons = {d.reason for d in decisions if not d.node_id}
    assert len(reasons) == 1, reasons
    return reasons.pop()


# ---------------------------------------------------------------- NodeInfo


def test_build_node_infos_accounts_only_live_tasks() -> None:
    nodes = [node("n1", cpus=4, memory_gib=8), node("n2")]
    running = task("t1", cpus=1, memory_gib=2, node_id="n1", state=pb.RUNNING,
                   host_ports=[(TCP, 8080)])
    stopping = task("t2", cpus=1, node_id="n1", state=pb.RUNNING)
    stopping.desired_state = pb.SHUTDOWN  # still holds its reservation until it stops
    finished = task("t3", cpus=1, node_id="n1", state=pb.COMPLETE)
    unplaced = task("t4", cpus=1)
    elsewhere = task("t5", cpus=1, node_id="gone", state=pb.RUNNING)
    built = infos(nodes, [running, stopping, finished, unplaced, elsewhere])

    n1 = built["n1"]
    assert n1.total_tasks == 2
    assert n1.tasks_by_service["svc"] == 2
    assert n1.available_nano_cpus == 2 * CPU
    assert n1.available_memory_bytes == 6 * GIB
    assert n1.used_host_ports == {(TCP, 8080)}
    assert built["n2"].total_tasks == 0
    assert set(built) == {"n1", "n2"}


def test_add_and_remove_task_are_symmetric_and_idempotent() -> None:
    info = infos([node("n1", cpus=2, memory_gib=4)])["n1"]
    placed = task("t1", cpus=1, memory_gib=1, host_ports=[(UDP, 53)])
    info.add_task(placed)
    info.add_task(placed)
    assert (info.total_tasks, info.available_nano_cpus) == (1, 1 * CPU)
    assert info.used_host_ports == {(UDP, 53)}
    info.remove_task(placed)
    info.remove_task(placed)
    assert (info.total_tasks, info.available_nano_cpus) == (0, 2 * CPU)
    assert info.available_memory_bytes == 4 * GIB
    assert info.used_host_ports == set()
    assert info.tasks_by_service["svc"] == 0


# ---------------------------------------------------------------- filters, one by one


def test_ready_filter_refuses_down_paused_and_drained_nodes() -> None:
    nodes = infos([
        node("down", state=pb.NodeStatus.DOWN),
        node("disconnected", state=pb.NodeStatus.DISCONNECTED),
        node("paused", availability=pb.NodeSpec.PAUSE),
        node("drained", availability=pb.NodeSpec.DRAIN),
        node("ok"),
    ])
    ready = ReadyFilter()
    assert ready.set_task(task("t"))
    assert [n for n, info in nodes.items() if ready.check(info)] == ["ok"]
    assert ready.explain(1) == "1 node not available"
    assert ready.explain(4) == "4 nodes not available"

    del nodes["ok"]
    assert only_reason(schedule([task("t")], nodes)) == "no suitable node (4 nodes not available)"


def test_resource_filter_names_what_lacks() -> None:
    nodes = infos([
        node("small-cpu", cpus=1, memory_gib=16),
        node("small-mem", cpus=8, memory_gib=1),
        node("small-mem2", cpus=8, memory_gib=1),
        node("tiny", cpus=1, memory_gib=1),
        node("big", cpus=8, memory_gib=16),
    ])
    resources = ResourceFilter()
    assert not resources.set_task(task("free"))  # no reservations: filter is skipped
    assert resources.set_task(task("t", cpus=2, memory_gib=4))
    assert [n for n, info in nodes.items() if resources.check(info)] == ["big"]
    assert resources.explain(4) == (
        "1 node lacks CPU; 1 node lacks CPU and memory; 2 nodes lack memory")

    del nodes["big"]
    decision, = schedule([task("t", cpus=2, memory_gib=4)], nodes)
    assert decision == Decision("t", "", "no suitable node (1 node lacks CPU; "
                                "1 node lacks CPU and memory; 2 nodes lack memory)")


def test_constraint_filter_groups_by_first_unmet_constraint() -> None:
    nodes = infos([
        node("b-ssd", labels={"zone": "b", "disk": "ssd"}),
        node("a-hdd", labels={"zone": "a", "disk": "hdd"}),
        node("unlabelled"),
        node("a-ssd", labels={"zone": "A", "disk": "ssd"}),  # values compare case-insensitively
    ])
    constraint = ConstraintFilter()
    assert not constraint.set_task(task("free"))
    wanted = task("t", constraints=["node.labels.zone==a", "node.labels.disk==ssd"])
    assert constraint.set_task(wanted)
    assert [n for n, info in nodes.items() if constraint.check(info)] == ["a-ssd"]
    assert constraint.explain(3) == ("1 node fails node.labels.disk==ssd; "
                                     "2 nodes fail node.labels.zone==a")

    del nodes["a-ssd"]
    assert only_reason(schedule([wanted], nodes)) == (
        "no suitable node (1 node fails node.labels.disk==ssd; 2 nodes fail node.labels.zone==a)")


def test_constraint_on_role_and_hostname() -> None:
    nodes = infos([node("m", role=pb.NodeSpec.MANAGER), node("w1"), node("w2")])
    decisions = schedule(tasks_of("t", 4, constraints=["node.role!=manager",
                                                       "node.hostname!=host-w2"]), nodes)
    assert placements(decisions) == {"w1": 4}


def test_invalid_constraint_fails_every_node_and_says_why() -> None:
    reason = only_reason(schedule([task("t", constraints=["zone=a"])], infos([node("n1")])))
    assert reason.startswith("no suitable node (invalid constraint 'zone=a'")


def test_host_port_filter_refuses_nodes_with_the_port_in_use() -> None:
    busy = task("old", host_ports=[(TCP, 8080)], node_id="n1", state=pb.RUNNING)
    nodes = infos([node("n1"), node("n2")], [busy])
    ports = HostPortFilter()
    assert not ports.set_task(task("free"))
    assert ports.set_task(task("t", host_ports=[(TCP, 8080)]))
    assert [n for n, info in nodes.items() if ports.check(info)] == ["n2"]
    assert ports.explain(1) == "1 node has port 8080/tcp in use"

    # One task per node can have the port: the third of three finds none.
    decisions = schedule(tasks_of("web", 2, service="web", host_ports=[(TCP, 8080)]), nodes)
    assert decisions[0] == Decision("web0", "n2", "")
    assert decisions[1] == Decision(
        "web1", "", "no suitable node (2 nodes have port 8080/tcp in use)")


def test_host_ports_differ_by_protocol_and_ignore_ingress_and_dynamic_ports() -> None:
    busy = task("old", host_ports=[(TCP, 53)], node_id="n1", state=pb.RUNNING)
    nodes = infos([node("n1")], [busy])
    dns_udp = task("udp", service="dns", host_ports=[(UDP, 53)])
    ingress = task("ingress", service="lb")
    ingress.endpoint.spec.ports.add(protocol=TCP, target_port=80, published_port=53,
                                    publish_mode=pb.PortConfig.INGRESS)
    dynamic = task("dynamic", service="any", host_ports=[(TCP, 0)])
    decisions = schedule([dns_udp, ingress, dynamic], nodes)
    assert [d.node_id for d in decisions] == ["n1", "n1", "n1"]
    assert nodes["n1"].used_host_ports == {(TCP, 53), (UDP, 53)}


def test_max_replicas_per_node_counts_existing_and_new_tasks() -> None:
    existing = task("old", service="web", node_id="n1", state=pb.RUNNING, max_per_node=2)
    nodes = infos([node("n1"), node("n2")], [existing])
    limit = MaxReplicasFilter()
    assert not limit.set_task(task("free"))
    assert limit.set_task(task("t", service="web", max_per_node=1))
    assert [n for n, info in nodes.items() if limit.check(info)] == ["n2"]
    assert limit.explain(2) == "2 nodes reached max replicas per node (1)"

    decisions = schedule(tasks_of("web", 4, service="web", max_per_node=2), nodes)
    assert placements(decisions) == {"n1": 1, "n2": 2}
    assert only_reason(decisions) == (
        "no suitable node (2 nodes reached max replicas per node (2))")
    assert [d.node_id for d in decisions[-1:]] == [""]


# ---------------------------------------------------------------- the pipeline


def test_each_node_is_counted_at_its_first_failing_filter() -> None:
    nodes = infos([
        node("down", state=pb.NodeStatus.DOWN, memory_gib=1),  # also lacks memory: not counted so
        node("small", memory_gib=1, labels={"zone": "a"}),
        node("small2", memory_gib=1),
        node("zone-b", labels={"zone": "b"}),
    ])
    wanted = task("t", memory_gib=2, constraints=["node.labels.zone==a"])
    assert only_reason(schedule([wanted], nodes)) == (
        "no suitable node (1 node not available; 2 nodes lack memory; "
        "1 node fails node.labels.zone==a)")


def test_no_nodes_at_all() -> None:
    decisions = schedule(tasks_of("t", 2), {})
    assert decisions == [Decision(f"t{i}", "", "no suitable node (no nodes in the cluster)")
                         for i in range(2)]


def test_decisions_follow_the_input_order_once_per_task() -> None:
    nodes = infos([node("n1")])
    mixed = [task("b1", service="b"), task("a1", service="a"), task("b2", service="b"),
             task("a1", service="a")]
    assert [d.task_id for d in schedule(mixed, nodes)] == ["b1", "a1", "b2"]
    assert nodes["n1"].total_tasks == 3


def test_tasks_of_one_service_with_different_specs_are_not_mixed() -> None:
    # Same service and spec_version (a caller not keeping versions): each
    # task still gets its own spec's constraints.
    nodes = infos([node("a", labels={"zone": "a"}), node("b", labels={"zone": "b"})])
    to_a = task("t1", constraints=["node.labels.zone==a"])
    to_b = task("t2", constraints=["node.labels.zone==b"])
    assert len(group_tasks([to_a, to_b])) == 2
    assert [d.node_id for d in schedule([to_a, to_b, task("t3")], nodes)] == ["a", "b", "a"]


# ---------------------------------------------------------------- strategy


def test_spread_prefers_fewest_service_tasks_then_fewest_tasks_then_node_id() -> None:
    existing = [
        task("x1", service="other", node_id="n1", state=pb.RUNNING),
        task("x2", service="other", node_id="n1", state=pb.RUNNING),
        task("w1", service="web", node_id="n2", state=pb.RUNNING),
    ]
    nodes = infos([node("n3"), node("n2"), node("n1")], existing)
    decisions = schedule(tasks_of("web", 4, service="web"), nodes)
    # n3 (0 web, 0 total) before n1 (0 web, 2 total); then web is 1 everywhere:
    # n2 and n3 (1 total each, n2 first by id) before n1 (3 total).
    assert [d.node_id for d in decisions] == ["n3", "n1", "n2", "n3"]
    assert {n: nodes[n].tasks_by_service["web"] for n in nodes} == {"n1": 1, "n2": 2, "n3": 2}


@settings(max_examples=25, deadline=None)
@given(n_nodes=st.integers(1, 12), n_tasks=st.integers(0, 60),
       busy=st.lists(st.integers(0, 11), max_size=10))
def test_spread_keeps_a_service_balanced(n_nodes: int, n_tasks: int, busy: list[int]) -> None:
    node_ids = [f"n{i:02d}" for i in range(n_nodes)]
    others = [task(f"o{i}", service="other", node_id=node_ids[b % n_nodes], state=pb.RUNNING)
              for i, b in enumerate(busy)]
    nodes = infos([node(n) for n in node_ids], others)
    decisions = schedule(tasks_of("t", n_tasks), nodes)
    assert all(d.node_id for d in decisions)
    counts = [nodes[n].tasks_by_service["svc"] for n in node_ids]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == n_tasks


def test_preferences_spread_over_label_values_not_nodes() -> None:
    nodes = infos([
        node("a1", labels={"zone": "a"}),
        node("b1", labels={"zone": "b"}), node("b2", labels={"zone": "b"}),
        node("b3", labels={"zone": "b"}),
        node("none1"),  # no zone label: a group of its own
    ])
    decisions = schedule(tasks_of("t", 9, spread=["node.labels.zone"]), nodes)
    per_node = placements(decisions)
    per_zone = collections.Counter(nodes[n].node.spec.labels.get("zone", "") for n in per_node
                                   for _ in range(per_node[n]))
    assert per_zone == {"a": 3, "b": 3, "": 3}
    assert per_node["a1"] == 3
    assert per_node["none1"] == 3
    assert sorted(per_node[n] for n in ("b1", "b2", "b3")) == [1, 1, 1]


def test_preferences_count_existing_tasks_of_the_service() -> None:
    existing = [task(f"old{i}", node_id="a1", state=pb.RUNNING) for i in range(2)]
    nodes = infos([node("a1", labels={"zone": "a"}), node("b1", labels={"zone": "b"})], existing)
    decisions = schedule(tasks_of("t", 4, spread=["node.labels.zone"]), nodes)
    assert [d.node_id for d in decisions] == ["b1", "b1", "a1", "b1"]


def test_nested_preferences_spread_within_each_value() -> None:
    nodes = infos([node(f"{zone}{rack}{i}", labels={"zone": zone, "rack": f"{zone}{rack}"})
                   for zone in "ab" for rack in "xyz"[: 1 if zone == "a" else 3] for i in range(2)])
    decisions = schedule(tasks_of("t", 12, spread=["node.labels.zone", "node.labels.rack"]), nodes)
    per_rack = collections.Counter(nodes[d.node_id].node.spec.labels["rack"] for d in decisions)
    assert per_rack == {"ax": 6, "bx": 2, "by": 2, "bz": 2}
    assert set(placements(decisions).values()) == {3, 1}


def test_preferences_move_on_when_a_branch_is_full() -> None:
    nodes = infos([node("a1", cpus=1, labels={"zone": "a"}),
                   node("b1", cpus=8, labels={"zone": "b"})])
    decisions = schedule(tasks_of("t", 5, cpus=1, spread=["node.labels.zone"]), nodes)
    assert placements(decisions) == {"a1": 1, "b1": 4}


# ---------------------------------------------------------------- batches and preset nodes


def test_resources_are_accounted_across_a_batch() -> None:
    nodes = infos([node("n1", cpus=2), node("n2", cpus=2)])
    decisions = schedule(tasks_of("t", 5, cpus=1), nodes)
    assert placements(decisions) == {"n1": 2, "n2": 2}
    assert decisions[4] == Decision("t4", "", "no suitable node (2 nodes lack CPU)")
    assert nodes["n1"].available_nano_cpus == 0
    # The next group (another service, same pass) sees the full nodes too.
    later = schedule([task("u1", service="other", cpus=0.5), task("u2", service="other")], nodes)
    assert later == [Decision("u1", "", "no suitable node (2 nodes lack CPU)"),
                     Decision("u2", "n1", "")]


def test_groups_in_one_pass_see_each_others_placements() -> None:
    nodes = infos([node("n1", memory_gib=4), node("n2", memory_gib=4)])
    batch = [*tasks_of("a", 2, service="a", memory_gib=3), *tasks_of("b", 2, service="b",
                                                                     memory_gib=2)]
    decisions = schedule(batch, nodes)
    assert placements(decisions[:2]) == {"n1": 1, "n2": 1}
    assert only_reason(decisions[2:]) == "no suitable node (2 nodes lack memory)"


def test_preset_node_is_the_only_node_checked() -> None:
    nodes = infos([node("n1"), node("n2", availability=pb.NodeSpec.DRAIN), node("n3")])
    decisions = schedule([task("g1", service="global", node_id="n1"),
                          task("g2", service="global", node_id="n2"),
                          task("g3", service="global", node_id="gone")], nodes)
    assert decisions == [
        Decision("g1", "n1", ""),
        Decision("g2", "", "no suitable node (1 node not available)"),
        Decision("g3", "", "no suitable node (node gone is not in the cluster)"),
    ]
    assert nodes["n1"].tasks_by_service["global"] == 1
    assert nodes["n3"].total_tasks == 0


def test_preset_task_does_not_compete_with_itself() -> None:
    # A PENDING task with a node is live, so build_node_infos already counted
    # its reservation; the check must not count it twice.
    pending = task("g1", service="global", cpus=4, node_id="n1")
    nodes = infos([node("n1", cpus=4)], [pending])
    assert nodes["n1"].available_nano_cpus == 0
    assert schedule([pending], nodes) == [Decision("g1", "n1", "")]
    assert (nodes["n1"].total_tasks, nodes["n1"].available_nano_cpus) == (1, 0)

    too_big = task("g2", service="global", cpus=8, node_id="n1")
    nodes = infos([node("n1", cpus=4)], [too_big])
    assert only_reason(schedule([too_big], nodes)) == "no suitable node (1 node lacks CPU)"
    assert nodes["n1"].available_nano_cpus == 4 * CPU  # released: it will not run there


@pytest.mark.parametrize(("n_nodes", "placed"), [(1, 3 + 2), (3, 5 + 5)])
def test_placed_tasks_never_overcommit_a_node(n_nodes: int, placed: int) -> None:
    nodes = infos([node(f"n{i}", cpus=3, memory_gib=3) for i in range(n_nodes)])
    decisions = schedule([*tasks_of("a", 5, service="a", cpus=1),
                          *tasks_of("b", 5, service="b", memory_gib=1.5)], nodes)
    assert sum(placements(decisions).values()) == placed
    assert all(info.available_nano_cpus >= 0 and info.available_memory_bytes >= 0
               for info in nodes.values())
