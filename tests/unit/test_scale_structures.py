"""The incremental structures that keep the controller's work per event small
at thousands of nodes: NodeInfos (the scheduler's accounting kept from
changes), the heartbeat monitor's serving clock, the ingress keeper's work
set, the orchestrator's node-change filter, the disruption gate fed one node
at a time, the overlay index's nodes per network, and what a session hears
of a task change. Each is checked against the from-scratch computation it
replaces."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.allocator.ingress import needs_work, plan_node_attachments
from swarm.controller.dispatcher.assignments import task_news
from swarm.controller.dispatcher.heartbeats import (
    HEARTBEAT_MISSES,
    Heartbeats,
    ServingClock,
    overdue,
    stall,
)
from swarm.controller.orchestrator.disruption import DisruptionGate
from swarm.controller.orchestrator.reconciler import node_change_matters
from swarm.controller.peers import OverlayIndex
from swarm.controller.scheduler.nodeinfo import NodeInfo, NodeInfos, build_node_infos

CPU = 1_000_000_000
NODE_IDS = ["n0", "n1", "n2", "n3"]
TASK_IDS = [f"t{i}" for i in range(8)]


def make_node(node_id: str, cpus: int = 4) -> pb.Node:
    node = pb.Node(id=node_id)
    node.description.resources.nano_cpus = cpus * CPU
    node.description.resources.memory_bytes = 8 << 30
    node.status.state = pb.NodeStatus.READY
    return node


def make_task(task_id: str, node_id: str, state: int, cpus: int, port: int) -> pb.Task:
    task = pb.Task(id=task_id, service_id=f"s{cpus % 2}", node_id=node_id,
                   desired_state=pb.RUNNING)
    task.status.state = state  # type: ignore[assignment]
    task.spec.resources.reservations.nano_cpus = cpus * CPU
    if port:
        task.endpoint.spec.ports.add(protocol=pb.PortConfig.TCP, target_port=80,
                                     published_port=port, publish_mode=pb.PortConfig.HOST)
    return task


def summary(infos: dict[str, NodeInfo]) -> dict[str, tuple[object, ...]]:
    return {node_id: (dict(info.tasks_by_service), info.total_tasks, info.available_nano_cpus,
                      info.available_memory_bytes, frozenset(info.used_host_ports),
                      frozenset(info.task_ids), info.node.description.resources.nano_cpus)
            for node_id, info in infos.items()}


_task_change = st.tuples(
    st.just("task"), st.sampled_from(TASK_IDS),
    st.none() | st.tuples(st.sampled_from(["", *NODE_IDS]),
                          st.sampled_from([pb.PENDING, pb.ASSIGNED, pb.RUNNING, pb.COMPLETE]),
                          st.integers(0, 2), st.sampled_from([0, 8080])))
_node_change = st.tuples(st.just("node"), st.sampled_from(NODE_IDS),
                         st.none() | st.integers(1, 8))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_task_change, _node_change), max_size=40))
def test_node_infos_kept_from_changes_equal_a_rebuild(changes: list[tuple[object, ...]]) -> None:
    nodes: dict[str, pb.Node] = {}
    tasks: dict[str, pb.Task] = {}
    index = NodeInfos()
    for kind, object_id, value in changes:
        assert isinstance(object_id, str)
        if kind == "node":
            old_node = nodes.pop(object_id, None)
            new_node = None if value is None else make_node(object_id, value)  # type: ignore[arg-type]
            if new_node is not None:
                nodes[object_id] = new_node
            index.apply_node(old_node, new_node)
        else:
            old_task = tasks.pop(object_id, None)
            new_task = None if value is None else make_task(object_id, *value)  # type: ignore[misc]
            if new_task is not None:
                tasks[object_id] = new_task
            index.apply_task(old_task, new_task)
    assert summary(index.infos) == summary(build_node_infos(nodes.values(), tasks.values()))
    # Built at once from the same state, too.
    assert summary(NodeInfos(nodes.values(), tasks.values()).infos) == summary(index.infos)


def test_a_placement_not_written_is_taken_back_and_a_written_one_stays() -> None:
    index = NodeInfos([make_node("n0")])
    pending = make_task("t", "", pb.PENDING, 1, 0)
    placed = make_task("t", "n0", pb.ASSIGNED, 1, 0)
    index.infos["n0"].add_task(placed)  # what a pass does as it decides
    index.unplace(placed, pending)  # the write conflicted: the store has it pending
    assert index.infos["n0"].available_nano_cpus == 4 * CPU
    index.infos["n0"].add_task(placed)
    index.apply_task(pending, placed)  # the write-through: already counted
    index.unplace(placed, placed)  # live there after all: it stays
    assert (index.infos["n0"].total_tasks, index.infos["n0"].available_nano_cpus) == (1, 3 * CPU)


# ---------------------------------------------------------------- heartbeats


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_overdue_and_stall_are_plain_arithmetic() -> None:
    assert overdue({"a": 1.0, "b": 9.0, "c": 5.0}, 20.0, 12.0) == ["a", "c"]
    assert stall(10.0, 12.5, 2.5) == 0.0  # on time
    assert stall(10.0, 12.9, 2.5) == 0.0  # within the tolerance
    assert stall(10.0, 20.5, 2.5) == 8.0


def test_a_stalled_controller_does_not_mark_live_nodes_down() -> None:
    clock = FakeClock()
    beats = Heartbeats(clock)
    period, interval = 1.0, 0.5
    beats.beat("alive")
    beats.beat("dead")
    for _ in range(2):
        clock.now += interval
        assert beats.expired(interval, period) == {}
    # The loop stalls for 10 s (longer than the 3 s timeout); the beat the
    # live node sent meanwhile was waiting in a socket buffer.
    clock.now += 10.0
    assert beats.expired(interval, period) == {}
    beats.beat("alive")
    # The dead node is judged on serving time: down 3 periods after its beat.
    expired: dict[str, float] = {}
    for _ in range(8):
        clock.now += interval
        expired |= beats.expired(interval, period)
        beats.beat("alive")
    assert list(expired) == ["dead"]
    assert "alive" in beats.last_seen


def test_without_stalls_a_silent_node_expires_after_the_missed_beats() -> None:
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("n")
    ticks = 0
    while not beats.expired(0.5, 1.0):
        clock.now += 0.5
        ticks += 1
    assert ticks * 0.5 > HEARTBEAT_MISSES * 1.0
    beats.restore("n", 0.0)  # its DOWN could not be written: judged again next tick
    assert beats.expired(0.5, 1.0) == {"n": 0.0}


def test_the_serving_clock_counts_only_late_wake_ups() -> None:
    clock = FakeClock()
    serving = ServingClock(clock)
    serving.tick(1.0)
    clock.now += 1.0
    assert serving.tick(1.0) == clock.now
    clock.now += 6.0
    assert serving.tick(1.0) == clock.now - 5.0
    assert serving.now() == clock.now - 5.0


# ---------------------------------------------------------------- ingress keeper


def attached(node_id: str, *networks: str) -> pb.Node:
    node = pb.Node(id=node_id)
    for network_id in networks:
        node.attachments.add(network_id=network_id, addresses=["10.0.0.2/24"])
    return node


def test_which_nodes_the_ingress_keeper_must_look_at() -> None:
    assert needs_work(attached("a"), "ing")  # no address yet
    assert not needs_work(attached("a", "ing"), "ing")
    assert needs_work(attached("a", "ing", "old"), "ing")  # a stale attachment
    assert needs_work(attached("a", "old"), None)  # no ingress: everything goes
    assert not needs_work(attached("a"), None)


def test_a_full_subnet_is_searched_once_per_plan() -> None:
    ingress = pb.Network(id="ing", subnet="10.0.0.0/29", gateway="10.0.0.1")
    ingress.spec.name = "ingress"
    ingress.spec.ingress = True
    plan = plan_node_attachments([attached(f"n{i}") for i in range(20)], ingress, {}, 50)
    assert len(plan.claimed) == 5
    assert plan.problem
    assert len(plan.nodes) == 5


# ---------------------------------------------------------------- orchestrator


def test_only_node_changes_a_plan_can_see_make_the_orchestrator_replan() -> None:
    node = make_node("n")
    beat = pb.Node()
    beat.CopyFrom(node)
    beat.status.message = "a status message"
    beat.status.last_heartbeat.seconds = 5
    beat.attachments.add(network_id="ing", addresses=["10.0.0.9/24"])
    assert not node_change_matters(node, beat)
    down = pb.Node()
    down.CopyFrom(node)
    down.status.state = pb.NodeStatus.DOWN
    drained = pb.Node()
    drained.CopyFrom(node)
    drained.spec.availability = pb.NodeSpec.DRAIN
    labelled = pb.Node()
    labelled.CopyFrom(node)
    labelled.description.hostname = "renamed"
    assert all(node_change_matters(node, changed) for changed in (down, drained, labelled))
    assert node_change_matters(None, node)
    assert node_change_matters(node, None)


@given(st.lists(st.tuples(st.sampled_from(NODE_IDS),
                          st.sampled_from([None, pb.NodeStatus.READY, pb.NodeStatus.DOWN]),
                          st.floats(0, 100)), max_size=30))
def test_the_gate_fed_one_node_at_a_time_sees_what_a_scan_sees(
        changes: list[tuple[str, int | None, float]]) -> None:
    one_by_one, scanned = DisruptionGate(), DisruptionGate()
    nodes: dict[str, pb.Node] = {}
    for node_id, state, now in changes:
        if state is None:
            nodes.pop(node_id, None)
            one_by_one.observe_node(node_id, None, now)
        else:
            node = nodes[node_id] = pb.Node(id=node_id)
            node.status.state = state  # type: ignore[assignment]
            one_by_one.observe_node(node_id, node, now)
        scanned.observe(nodes, now)
    assert one_by_one.down_since.keys() == scanned.down_since.keys()


# ---------------------------------------------------------------- sessions


def on_network(task_id: str, node_id: str, network_id: str, state: int = pb.RUNNING) -> pb.Task:
    task = pb.Task(id=task_id, node_id=node_id, desired_state=pb.RUNNING)
    task.status.state = state  # type: ignore[assignment]
    task.networks.add(network_id=network_id, addresses=["10.1.0.2/24"])
    return task


@given(st.lists(st.tuples(st.sampled_from(TASK_IDS), st.sampled_from(["", *NODE_IDS]),
                          st.sampled_from(["a", "b"]),
                          st.sampled_from([pb.PENDING, pb.RUNNING, pb.COMPLETE])), max_size=30))
def test_the_nodes_on_a_network_are_the_reverse_of_the_networks_of_a_node(
        changes: list[tuple[str, str, str, int]]) -> None:
    index = OverlayIndex()
    tasks: dict[str, pb.Task] = {}
    for task_id, node_id, network_id, state in changes:
        new = on_network(task_id, node_id, network_id, state)
        index.apply(tasks.get(task_id), new)
        tasks[task_id] = new
    for network_id in ("a", "b"):
        assert set(index.nodes_on(network_id)) == {
            n for n in NODE_IDS if network_id in index.networks_of(n)}


def test_what_a_session_hears_of_a_task_change() -> None:
    assigned = make_task("t", "n0", pb.ASSIGNED, 0, 0)
    running = make_task("t", "n0", pb.RUNNING, 0, 0)
    stopping = make_task("t", "n0", pb.RUNNING, 0, 0)
    stopping.desired_state = pb.SHUTDOWN
    pending = make_task("t", "", pb.PENDING, 0, 0)
    assert task_news(pending, assigned, "n0") == (True, assigned)
    assert task_news(assigned, running, "n0") == (False, None)  # its own report echoed
    assert task_news(running, stopping, "n0") == (True, stopping)
    assert task_news(stopping, None, "n0") == (True, None)  # removed
    assert task_news(pending, assigned, "n1") == (False, None)
