"""Rebalancing: the pure planner (which slots move where, and why), its
properties (spread within one task where the constraints allow, no move that
adds imbalance, minimal for plain spreading, idempotent), and its execution
through the rolling-update machinery with the real scheduler placing the
successors (stop-first and start-first overlap bounds, failure handling,
completion)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.orchestrator import autorebalance, rebalance
from swarm.controller.orchestrator.rebalance import RebalancePlan, plan_rebalance
from swarm.controller.orchestrator.tasks import ConstraintCache, is_live
from swarm.controller.scheduler.nodeinfo import build_node_infos
from swarm.controller.scheduler.scheduler import Scheduler
from tests.unit.test_orchestrator import (
    ACTIVE,
    DOWN,
    DRAIN,
    NOW,
    PAUSE,
    READY,
    START_FIRST,
    STOP_FIRST,
    US,
    apply,
    cluster,
    node,
    plan,
    service,
    task,
)


def spread(svc: pb.Service, placement: Mapping[str, int]) -> list[pb.Task]:
    """Running tasks of `svc`, `placement[node]` on each node, slots from 1."""
    tasks: list[pb.Task] = []
    for node_id, count in sorted(placement.items()):
        for _ in range(count):
            tasks.append(task(svc, len(tasks) + 1, node_id=node_id))
    return tasks


def after(tasks: Sequence[pb.Task], result: RebalancePlan) -> list[pb.Task]:
    """The tasks as the plan would leave them: each moved task on its target."""
    targets = {move.task_id: move.to_node for move in result.moves}
    out = []
    for t in tasks:
        copy = pb.Task()
        copy.CopyFrom(t)
        copy.node_id = targets.get(t.id, t.node_id)
        out.append(copy)
    return out


def counts(tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node]) -> dict[str, int]:
    found = Counter(t.node_id for t in tasks if is_live(t) and t.status.state <= pb.RUNNING)
    return {node_id: found.get(node_id, 0) for node_id in nodes}


def rebalance_plan(svc: pb.Service, tasks: Sequence[pb.Task],
                   nodes: Mapping[str, pb.Node]) -> RebalancePlan:
    return plan_rebalance(svc, tasks, nodes, tasks, service_id=svc.id)


NODES3 = cluster(node("n1"), node("n2"), node("n3"))


# ---------------------------------------------------------------- the planner


def test_moves_from_the_fullest_to_the_emptiest_and_says_why() -> None:
    svc = service(5)
    tasks = spread(svc, {"n1": 4, "n2": 1})
    result = rebalance_plan(svc, tasks, NODES3)
    assert [(m.slot, m.from_node, m.to_node) for m in result.moves] == [
        (4, "n1", "n3"), (3, "n1", "n2")]
    assert result.moves[0].reason == "node host-n1 has 4 tasks of web, host-n3 has 0"
    assert result.moves[1].reason == "node host-n1 has 3 tasks of web, host-n2 has 1"
    assert result.summary() == "4 1 0 tasks on 3 eligible nodes"
    assert sorted(counts(after(tasks, result), NODES3).values()) == [1, 2, 2]


def test_a_balanced_service_moves_nothing() -> None:
    svc = service(5)
    tasks = spread(svc, {"n1": 2, "n2": 2, "n3": 1})
    assert rebalance_plan(svc, tasks, NODES3).moves == ()


def test_a_task_not_running_yet_moves_before_a_running_one() -> None:
    svc = service(3)
    tasks = spread(svc, {"n1": 3})
    tasks[0].status.state = pb.PREPARING
    result = rebalance_plan(svc, tasks, cluster(node("n1"), node("n2")))
    assert [m.task_id for m in result.moves] == [tasks[0].id]


@pytest.mark.parametrize("unusable", [
    node("n3", availability=PAUSE), node("n3", availability=DRAIN), node("n3", state=DOWN),
    node("n3", labels={"disk": "hdd"})])
def test_only_eligible_nodes_take_tasks_and_count(unusable: pb.Node) -> None:
    svc = service(4, constraints=["node.labels.disk!=hdd"])
    nodes = cluster(node("n1"), node("n2"), unusable)
    tasks = spread(svc, {"n1": 3, "n2": 0})
    result = rebalance_plan(svc, tasks, nodes)
    assert {m.to_node for m in result.moves} == {"n2"}
    assert len(result.moves) == 1
    # A task on a node that is not eligible is neither counted nor moved here.
    tasks = spread(svc, {"n1": 1, "n2": 1, "n3": 2})
    assert rebalance_plan(svc, tasks, nodes).moves == ()


def test_max_replicas_per_node_and_resources_limit_the_targets() -> None:
    svc = service(6)
    svc.spec.task.placement.max_replicas_per_node = 3
    nodes = cluster(node("n1"), node("n2"), node("n3"))
    for n in nodes.values():
        n.description.resources.memory_bytes = 1000
    svc.spec.task.resources.reservations.memory_bytes = 300
    tasks = spread(svc, {"n1": 3, "n2": 3})
    for t in tasks:
        t.spec.CopyFrom(svc.spec.task)
    other = task(service(1), 1, node_id="n3", task_id="other")
    other.service_id = "other"
    other.spec.resources.reservations.memory_bytes = 700  # n3 has room for one
    result = plan_rebalance(svc, tasks, nodes, [*tasks, other], service_id=svc.id)
    assert [m.to_node for m in result.moves] == ["n3"]


def test_placement_preferences_balance_the_label_values_first() -> None:
    svc = service(4)
    svc.spec.task.placement.preferences.add(spread="node.labels.zone")
    nodes = cluster(node("a1", labels={"zone": "a"}), node("a2", labels={"zone": "a"}),
                    node("b1", labels={"zone": "b"}))
    tasks = spread(svc, {"a1": 2, "a2": 2})
    result = rebalance_plan(svc, tasks, nodes)
    assert [(m.from_node, m.to_node) for m in result.moves] == [("a2", "b1"), ("a1", "b1")]
    assert result.moves[0].reason == "node.labels.zone=a has 4 tasks of web, node.labels.zone=b has 0"
    assert counts(after(tasks, result), nodes) == {"a1": 1, "a2": 1, "b1": 2}


def test_nodes_without_the_label_form_a_group_of_their_own() -> None:
    svc = service(3)
    svc.spec.task.placement.preferences.add(spread="node.labels.zone")
    nodes = cluster(node("a1", labels={"zone": "a"}), node("x"))
    result = rebalance_plan(svc, spread(svc, {"a1": 3}), nodes)
    assert [m.to_node for m in result.moves] == ["x"]
    assert "node.labels.zone=(none) has 0" in result.moves[0].reason


def test_refusals() -> None:
    glob = service(mode="global")
    assert rebalance.refusal(glob, []) == (
        "service 'web' is global: rebalance applies to replicated services only")
    updating = service(3, status=US.UPDATING)
    updating.update_status.message = "update in progress"
    assert rebalance.refusal(updating, []) == (
        "service 'web' is being updated (update in progress): rebalance once the update has "
        "completed or been rolled back")
    paused = service(3, status=US.PAUSED)
    paused.update_status.message = "update paused due to failure"
    assert rebalance.refusal(paused, []) == (
        "service 'web' has a paused update (update paused due to failure): rebalance once the "
        "update has completed or been rolled back")
    svc = service(3, version=2)
    assert rebalance.refusal(svc, [task(svc, version=1)]) == (
        "service 'web' has tasks of an older spec: update it first")
    assert rebalance.refusal(service(3, status=US.COMPLETED), []) is None


# ---------------------------------------------------------------- properties


placements = st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=7)


def optimal_moves(values: Sequence[int]) -> int:
    """The fewest moves that leave counts within one of each other: the fullest
    nodes keep the extra tasks, every other task above its share moves."""
    total, n = sum(values), len(values)
    share, extra = divmod(total, n)
    targets = [share + 1] * extra + [share] * (n - extra)
    return sum(max(0, have - want)
               for have, want in zip(sorted(values, reverse=True), targets, strict=True))


@settings(max_examples=150, deadline=None)
@given(placements)
def test_plain_spread_is_within_one_minimal_and_idempotent(values: list[int]) -> None:
    nodes = cluster(*(node(f"n{i}") for i in range(len(values))))
    svc = service(sum(values))
    tasks = spread(svc, {f"n{i}": v for i, v in enumerate(values)})
    result = rebalance_plan(svc, tasks, nodes)
    # The auto mode's cheap pre-check never skips a service that needs moves.
    eligible = rebalance.eligible_node_ids(svc, nodes, ConstraintCache())
    assert rebalance.may_move(svc, tasks, eligible) == bool(result.moves)
    final = counts(after(tasks, result), nodes)
    assert max(final.values()) - min(final.values()) <= 1
    assert len(result.moves) == optimal_moves(values)
    assert len({m.task_id for m in result.moves}) == len(result.moves)  # none moves twice
    # No move leaves its target as loaded as the node it left.
    current = counts(tasks, nodes)
    for move in result.moves:
        assert current[move.to_node] + 1 < current[move.from_node]
        current[move.from_node] -= 1
        current[move.to_node] += 1
    assert rebalance_plan(svc, after(tasks, result), nodes).moves == ()


@settings(max_examples=100, deadline=None)
@given(placements, st.integers(min_value=1, max_value=4),
       st.lists(st.booleans(), min_size=7, max_size=7))
def test_with_limits_no_move_adds_imbalance_and_planning_again_moves_nothing(
        values: list[int], limit: int, paused: list[bool]) -> None:
    nodes = cluster(*(node(f"n{i}", availability=PAUSE if paused[i] else ACTIVE)
                      for i in range(len(values))))
    svc = service(sum(values))
    svc.spec.task.placement.max_replicas_per_node = limit
    tasks = spread(svc, {f"n{i}": v for i, v in enumerate(values)})
    for t in tasks:
        t.spec.CopyFrom(svc.spec.task)
    result = rebalance_plan(svc, tasks, nodes)
    current = counts(tasks, nodes)
    for move in result.moves:
        assert not paused[int(move.to_node[1:])]
        assert not paused[int(move.from_node[1:])]
        assert current[move.to_node] + 1 < current[move.from_node]
        assert current[move.to_node] + 1 <= limit
        current[move.from_node] -= 1
        current[move.to_node] += 1
    eligible = [current[f"n{i}"] for i in range(len(values)) if not paused[i]]
    # Within one where the limit allows: a node two below another is full.
    for low in eligible:
        if eligible and max(eligible) - low >= 2:
            assert low >= limit
    assert rebalance_plan(svc, after(tasks, result), nodes).moves == ()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(min_value=0, max_value=6)),
                min_size=1, max_size=7))
def test_spread_preference_balances_label_values_then_nodes(
        layout: list[tuple[str, int]]) -> None:
    nodes = cluster(*(node(f"n{i}", labels={"zone": zone}) for i, (zone, _) in enumerate(layout)))
    svc = service(sum(v for _, v in layout))
    svc.spec.task.placement.preferences.add(spread="node.labels.zone")
    tasks = spread(svc, {f"n{i}": v for i, (_, v) in enumerate(layout)})
    result = rebalance_plan(svc, tasks, nodes)
    final = counts(after(tasks, result), nodes)
    per_zone = Counter[str]()
    for i, (zone, _) in enumerate(layout):
        per_zone[zone] += final[f"n{i}"]
    zones = {zone for zone, _ in layout}
    assert max(per_zone[z] for z in zones) - min(per_zone[z] for z in zones) <= 1
    for zone in zones:
        inside = [final[f"n{i}"] for i, (z, _) in enumerate(layout) if z == zone]
        assert max(inside) - min(inside) <= 1
    assert len({m.task_id for m in result.moves}) == len(result.moves)
    assert rebalance_plan(svc, after(tasks, result), nodes).moves == ()


# ---------------------------------------------------------------- execution


def scheduler_step(tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node], now: float,
                   fail_on: str = "") -> list[pb.Task]:
    """The real scheduler places PENDING tasks; agents run ASSIGNED ones (those
    on `fail_on` fail) and stop those asked to."""
    out = [pb.Task() for _ in tasks]
    for copy, t in zip(out, tasks, strict=True):
        copy.CopyFrom(t)
    pending = [t for t in out if is_live(t) and t.status.state == pb.PENDING]
    infos = build_node_infos(nodes.values(), out)
    placed = {d.task_id: d.node_id for d in Scheduler().schedule(pending, infos) if d.node_id}
    for t in out:
        if t.id in placed:
            t.node_id, t.status.state = placed[t.id], pb.ASSIGNED
        elif is_live(t) and pb.ASSIGNED <= t.status.state < pb.RUNNING:
            t.status.state = pb.FAILED if t.node_id == fail_on else pb.RUNNING
            t.status.timestamp.GetCurrentTime()
            t.status.timestamp.FromNanoseconds(int(now * 1e9))
        elif not is_live(t) and pb.ASSIGNED <= t.status.state < pb.COMPLETE:
            t.status.state = pb.SHUTDOWN
    return out


def run_rebalance(svc: pb.Service, tasks: list[pb.Task], nodes: Mapping[str, pb.Node],
                  fail_on: str = "", rounds: int = 80
                  ) -> tuple[pb.Service, list[pb.Task], list[list[pb.Task]]]:
    """Start the rebalance as the API does, then orchestrator, scheduler and agents
    until nothing changes; every intermediate state is returned."""
    result = rebalance_plan(svc, tasks, nodes)
    svc, marked = rebalance.start(svc, tasks, result, NOW)
    changed = {t.id: t for t in marked}
    tasks = [changed.get(t.id, t) for t in tasks]
    states = [tasks]
    now = NOW
    for _ in range(rounds):
        step = plan(svc, tasks, nodes, now)
        svc, tasks = apply(svc, tasks, step)
        states.append(tasks)
        moved = scheduler_step(tasks, nodes, now, fail_on)
        states.append(moved)
        if step.is_empty() and moved == tasks and step.requeue_after is None:
            return svc, tasks, states
        tasks = moved
        now += 1.0
    raise AssertionError("did not converge")


def running_per_slot(tasks: Sequence[pb.Task]) -> Counter[int]:
    return Counter(t.slot for t in tasks if t.status.state == pb.RUNNING)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_stop_first_rebalance_moves_the_planned_slots_through_the_update(
        parallelism: int) -> None:
    svc = service(6, parallelism=parallelism, order=STOP_FIRST, monitor=2)
    tasks = spread(svc, {"n1": 5, "n2": 1})
    svc, final, states = run_rebalance(svc, tasks, NODES3)
    assert counts(final, NODES3) == {"n1": 2, "n2": 2, "n3": 2}
    assert svc.update_status.state == US.COMPLETED
    assert svc.update_status.message == "rebalance completed: 3 slots moved"
    assert not svc.HasField("rebalance")
    for state in states:
        assert max(running_per_slot(state).values()) == 1  # stop-first: never side by side
        running = sum(t.status.state == pb.RUNNING for t in state)
        assert running >= 6 - parallelism
    # Planning again on the result moves nothing.
    assert rebalance_plan(svc, final, NODES3).moves == ()
    assert plan(svc, final, NODES3, NOW + 1000).is_empty()


def test_start_first_rebalance_never_runs_fewer_than_desired() -> None:
    svc = service(4, parallelism=1, order=START_FIRST, monitor=1)
    tasks = spread(svc, {"n1": 4})
    svc, final, states = run_rebalance(svc, tasks, NODES3)
    assert sorted(counts(final, NODES3).values()) == [1, 1, 2]
    for state in states:
        assert sum(t.status.state == pb.RUNNING for t in state) >= 4
        assert max(running_per_slot(state).values()) <= 2
        # At most parallelism slots overlap at once.
        assert sum(n == 2 for n in running_per_slot(state).values()) <= 1


def test_the_status_message_counts_the_slots_still_moving() -> None:
    svc = service(6, parallelism=1, monitor=2)
    tasks = spread(svc, {"n1": 6})
    result = rebalance_plan(svc, tasks, NODES3)
    svc, marked = rebalance.start(svc, tasks, result, NOW)
    assert svc.update_status.state == US.UPDATING
    assert svc.update_status.message == "rebalancing: 4 slots moving"
    assert rebalance.in_progress(svc)
    changed = {t.id: t for t in marked}
    assert sorted(changed) == sorted(m.task_id for m in result.moves)
    current = [changed.get(t.id, t) for t in tasks]
    messages: list[str] = []
    now = NOW
    for _ in range(40):
        svc, current = apply(svc, current, plan(svc, current, NODES3, now))
        if not messages or messages[-1] != svc.update_status.message:
            messages.append(svc.update_status.message)
        current = scheduler_step(current, NODES3, now)
        now += 1.0
    assert messages == ["rebalancing: 4 slots moving", "rebalancing: 3 slots moving",
                        "rebalancing: 2 slots moving", "rebalancing: 1 slot moving",
                        "rebalancing: 4 slots moved, monitoring",
                        "rebalance completed: 4 slots moved"]


def test_a_failing_rebalance_pauses_even_with_failure_action_rollback() -> None:
    # Restart condition none: the failed slot stays empty, so the run comes to rest.
    svc = service(4, parallelism=1, monitor=5, condition=pb.RestartPolicy.NONE,
                  failure_action=pb.UpdateConfig.ROLLBACK)
    svc.previous_spec.CopyFrom(svc.spec)
    svc.previous_spec.task.container.image = "busybox:0"
    tasks = spread(svc, {"n1": 4})
    nodes = cluster(node("n1"), node("n2"))
    svc, final, _ = run_rebalance(svc, tasks, nodes, fail_on="n2")
    assert svc.spec_version == 1  # not rolled back to the previous spec
    assert svc.spec.task.container.image == "busybox:1"
    assert svc.update_status.state == US.PAUSED
    assert svc.update_status.message.startswith(
        "rebalance paused due to failure or early termination of task ")
    # A paused rebalance may be started again; an update's pause may not.
    assert rebalance.refusal(svc, final) is None


def test_marks_of_a_paused_rebalance_are_cleared_when_it_starts_again() -> None:
    svc = service(4)
    tasks = spread(svc, {"n1": 2, "n2": 2})
    tasks[0].rebalance = "old reason"
    result = rebalance_plan(svc, tasks, cluster(node("n1"), node("n2")))
    assert result.moves == ()
    _, changed = rebalance.start(svc, tasks, result, NOW)
    assert [(t.id, t.rebalance) for t in changed] == [(tasks[0].id, "")]


def test_an_update_supersedes_a_rebalance() -> None:
    svc = service(3)
    tasks = spread(svc, {"n1": 3})
    result = rebalance_plan(svc, tasks, NODES3)
    started, _ = rebalance.start(svc, tasks, result, NOW)
    started.spec_version += 1  # what UpdateService does on a new template
    assert not rebalance.in_progress(started)


def test_a_node_that_is_not_ready_is_no_target() -> None:
    svc = service(2)
    nodes = cluster(node("n1"), node("n2", state=pb.NodeStatus.UNKNOWN))
    assert rebalance_plan(svc, spread(svc, {"n1": 2}), nodes).moves == ()
    assert nodes["n1"].status.state == READY


# ---------------------------------------------------------------- --auto-rebalance's choices


def named(name: str, replicas: int, **kwargs: object) -> pb.Service:
    svc = service(replicas, **kwargs)  # type: ignore[arg-type]
    svc.id = svc.spec.name = name
    return svc


def test_a_node_arrives_when_it_can_take_tasks() -> None:
    assert autorebalance.arrived(None, node("n1"))
    assert autorebalance.arrived(node("n1", state=DOWN), node("n1"))
    assert autorebalance.arrived(node("n1", availability=DRAIN), node("n1"))
    assert not autorebalance.arrived(node("n1"), node("n1"))  # a heartbeat
    assert not autorebalance.arrived(node("n1"), node("n1", state=DOWN))
    assert not autorebalance.arrived(None, node("n1", availability=PAUSE))


def test_auto_picks_one_service_by_name_skipping_updates_and_global() -> None:
    updating = named("a-updating", 4, status=US.UPDATING)
    paused = named("b-paused", 4, status=US.PAUSED)
    glob = named("c-global", 0, mode="global")
    web, api = named("web", 4), named("d-api", 4)
    tasks = {s.id: spread(s, {"n1": 4}) for s in (updating, paused, web, api)}
    for svc in (updating, paused, web, api):
        for t in tasks[svc.id]:
            t.id, t.service_id = f"{svc.id}-{t.id}", svc.id  # IDs unique in the cluster
    everything = [t for svc_tasks in tasks.values() for t in svc_tasks]
    done: set[str] = set()
    picked = autorebalance.pick([web, updating, glob, paused, api], tasks, NODES3, everything,
                                done)
    assert picked is not None
    assert picked[0].spec.name == "d-api"
    assert len(picked[1].moves) == 2
    # Each service once per episode.
    done.add("d-api")
    picked = autorebalance.pick([web, updating, glob, paused, api], tasks, NODES3, everything,
                                done)
    assert picked is not None
    assert picked[0].spec.name == "web"
    # None while any service is rebalancing (one at a time).
    rebalancing, _ = rebalance.start(web, tasks["web"], picked[1], NOW)
    assert autorebalance.pick([rebalancing, api], tasks, NODES3, everything, set()) is None
    # A balanced service joins `done`.
    balanced = named("e-balanced", 3)
    tasks["e-balanced"] = spread(balanced, {"n1": 1, "n2": 1, "n3": 1})
    done = set()
    assert autorebalance.pick([balanced], tasks, NODES3, tasks["e-balanced"], done) is None
    assert done == {"e-balanced"}


def test_the_benchmark_prints_one_json_line(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from bench import rebalance as bench

    monkeypatch.setattr("sys.argv", ["bench.rebalance", "--nodes", "20", "--tasks", "100",
                                     "--services", "3"])
    bench.main()
    (line,) = capsys.readouterr().out.splitlines()
    figures = json.loads(line)
    assert (figures["plan_moves"], figures["full_plan_moves"]) == (50, 50)
    assert figures["auto_pick_services"] == 3


def test_swarm_controller_auto_rebalance_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from swarm.controller.main import parse_args

    assert not parse_args(["--insecure"]).auto_rebalance.enabled
    config = parse_args(["--insecure", "--auto-rebalance", "--auto-rebalance-interval", "2.5"])
    assert config.auto_rebalance == autorebalance.AutoRebalanceSettings(enabled=True,
                                                                        interval=2.5)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--insecure", "--auto-rebalance-interval", "0"])
    assert exit_info.value.code == 2
    assert "--auto-rebalance-interval: must be positive" in capsys.readouterr().err
