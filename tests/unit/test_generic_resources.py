"""Generic resources (issue 17 item 2): the text forms (flags), the task's
environment, the node's pool and which units a task gets, the scheduler's
filter and explanation, and properties of a long run of placements and
removals: a node is never over-committed, a unit is never held by two live
tasks, and the accounting kept from changes equals a rebuild from the tasks
(what a restarted controller sees)."""

from __future__ import annotations

import collections
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.agent import node_resources
from swarm.agent.main import parse_args
from swarm.api import generic_resources as gres
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError, normalize_service_spec
from swarm.controller.scheduler.generic import Pool, holding_of, to_proto, unit_order, wants_of
from swarm.controller.scheduler.nodeinfo import NodeInfo, NodeInfos, build_node_infos
from swarm.controller.scheduler.scheduler import Scheduler
from tests.unit.test_scheduler import node, task

CHR = stat.S_IFCHR | 0o666


def gpu_node(node_id: str, *resources: str) -> pb.Node:
    result = node(node_id)
    result.description.resources.generic.extend(gres.merge(resources))
    return result


def gpu_task(task_id: str, *reservations: str, service: str = "svc", node_id: str = "",
             state: pb.TaskState.ValueType = pb.PENDING) -> pb.Task:
    result = task(task_id, service=service, node_id=node_id, state=state)
    result.spec.resources.reservations.generic.extend(
        gres.merge(reservations, reservation=True))
    return result


# ---------------------------------------------------------------- text forms


def test_a_count_or_named_units() -> None:
    assert gres.text(gres.merge(["gpu=2"])) == "gpu=2"
    assert gres.text(gres.merge(["gpu=GPU-1a,GPU-2b", "gpu=GPU-3c", "fpga=1"])) \
        == "gpu=GPU-1a,GPU-2b,GPU-3c fpga=1"


@pytest.mark.parametrize(("flags", "message"), [
    (["gpu=-1"], "invalid generic resource 'gpu=-1': the count must be at least 1"),
    (["gpu=0"], "the count must be at least 1"),
    (["gpu"], "invalid generic resource 'gpu': expected KIND=COUNT or KIND=UNIT"),
    (["gpu="], "expected KIND=COUNT"),
    (["=2"], "invalid resource kind ''"),
    (["g pu=1"], "invalid resource kind 'g pu'"),
    (["9gpu=1"], "invalid resource kind '9gpu'"),
    (["gpu=a,,b"], "invalid unit name ''"),
    (["gpu=-x"], "invalid unit name '-x'"),
    (["gpu=a,a"], "a unit is named twice"),
    (["gpu=a", "gpu=a"], "gpu: unit 'a' is named twice"),
    (["gpu=1", "gpu=2"], "gpu: counted twice"),
    (["gpu=1", "gpu=a"], "gpu: given both as a count and as named units"),
])
def test_bad_flags_say_what_is_wrong(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        gres.merge(flags)


def test_a_reservation_may_ask_a_count_and_particular_units_of_a_kind() -> None:
    assert gres.text(gres.merge(["gpu=1", "gpu=nvidia3"], reservation=True)) \
        == "gpu=1,nvidia3"


def test_environment_as_swarmkit_sets_it() -> None:
    assigned = [gres.named("gpu", "nvidia0"), gres.named("gpu", "nvidia1"),
                gres.discrete("fpga", 2), gres.named("NVIDIA-GPU", "GPU-1a")]
    assert gres.env(assigned) == ["DOCKER_RESOURCE_GPU=nvidia0,nvidia1",
                                  "DOCKER_RESOURCE_FPGA=2", "DOCKER_RESOURCE_NVIDIA-GPU=GPU-1a"]
    assert gres.env([]) == []


def test_the_controller_refuses_bad_reservations_by_field() -> None:
    spec = pb.ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    spec.task.resources.reservations.generic.append(gres.discrete("gpu", -1))
    with pytest.raises(ValidationError) as caught:
        normalize_service_spec(spec, {})
    assert str(caught.value) == ("spec.task.resources.reservations.generic[0]: gpu: invalid "
                                 "count -1: must be at least 1")
    del spec.task.resources.reservations.generic[:]
    spec.task.resources.reservations.generic.extend(
        [gres.discrete("gpu", 1), gres.discrete("gpu", 2)])
    with pytest.raises(ValidationError, match=r"reservations.generic: gpu: counted twice"):
        normalize_service_spec(spec, {})
    del spec.task.resources.reservations.generic[:]
    spec.task.resources.limits.generic.append(gres.discrete("gpu", 1))
    with pytest.raises(ValidationError, match=r"limits\.generic: generic resources are reserved"):
        normalize_service_spec(spec, {})


# ---------------------------------------------------------------- the agent


def test_agent_flags_and_device_dir(tmp_path: Path) -> None:
    base = ["--controller", "127.0.0.1:2377", "--state-dir", str(tmp_path),
            "--advertise-addr", "127.0.0.1", "--device-dir", str(tmp_path / "no-dev")]
    config = parse_args([*base, "--generic-resource", "gpu=GPU-1a,GPU-2b",
                         "--generic-resource", "fpga=2"])
    assert gres.text(config.resources.advertised) == "gpu=GPU-1a,GPU-2b fpga=2"
    assert config.resources.devices == ()


def test_agent_refuses_a_bad_flag_in_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--controller", "127.0.0.1:2377", "--state-dir", str(tmp_path / "state"),
                    "--advertise-addr", "127.0.0.1", "--generic-resource", "gpu=-1"])
    assert exited.value.code == 2
    assert not (tmp_path / "state").exists()  # refused before anything was made
    err = capsys.readouterr().err
    assert err == ("swarm-agent: error: --generic-resource: invalid generic resource "
                   "'gpu=-1': the count must be at least 1\n")


def test_nvidia_devices_are_discovered_as_gpu_units() -> None:
    entries = [("nvidia10", CHR), ("nvidia2", CHR), ("nvidiactl", CHR), ("nvidia-uvm", CHR),
               ("nvidia3", stat.S_IFREG | 0o644), ("nvidia-caps", stat.S_IFDIR | 0o755)]
    found = node_resources.plan([], entries, "/tmp/fake")
    assert gres.text(found.advertised) == "gpu=nvidia2,nvidia10"  # index order; no file
    controls = (("/tmp/fake/nvidiactl", "/dev/nvidiactl"),
                ("/tmp/fake/nvidia-uvm", "/dev/nvidia-uvm"))
    assert found.devices == (
        ("gpu", "nvidia2", (("/tmp/fake/nvidia2", "/dev/nvidia2"), *controls)),
        ("gpu", "nvidia10", (("/tmp/fake/nvidia10", "/dev/nvidia10"), *controls)))
    assigned = [gres.named("gpu", "nvidia10"), gres.named("gpu", "nvidia2")]
    assert node_resources.device_paths(found.devices, assigned) == [
        ("/tmp/fake/nvidia10", "/dev/nvidia10"), *controls, ("/tmp/fake/nvidia2", "/dev/nvidia2")]
    assert node_resources.device_paths(found.devices, [gres.discrete("gpu", 1)]) == []


def test_the_operators_gpu_flag_wins_over_discovery() -> None:
    entries = [("nvidia0", CHR), ("nvidia1", CHR)]
    found = node_resources.plan(gres.merge(["gpu=GPU-1a", "gpu=nvidia1"]), entries, "/d")
    assert gres.text(found.advertised) == "gpu=GPU-1a,nvidia1"
    assert found.devices == (("gpu", "nvidia1", (("/d/nvidia1", "/dev/nvidia1"),)),)
    counted = node_resources.plan(gres.merge(["gpu=4"]), entries, "/d")
    assert (gres.text(counted.advertised), counted.devices) == ("gpu=4", ())


def test_scan_reads_a_real_directory(tmp_path: Path) -> None:
    (tmp_path / "nvidia0").write_text("")  # a file named like a device is not one
    (tmp_path / "sda").write_text("")  # not NVIDIA's: not even looked at
    assert [name for name, _ in node_resources.scan(tmp_path)] == ["nvidia0"]
    assert node_resources.nvidia_units(node_resources.scan(tmp_path)) == []
    assert node_resources.scan(tmp_path / "missing") == []


# ---------------------------------------------------------------- the pool


def test_units_are_given_lowest_first_in_natural_order() -> None:
    assert sorted(["nvidia10", "nvidia2", "nvidia1"], key=unit_order) \
        == ["nvidia1", "nvidia2", "nvidia10"]
    pool = Pool.of(gpu_node("n", "gpu=nvidia10,nvidia2,nvidia1").description.resources)
    first = pool.assign(wants_of(gpu_task("t1", "gpu=2")))
    assert first == (("gpu", 2, ("nvidia1", "nvidia2")),)
    pool.hold(first)
    assert pool.assign(wants_of(gpu_task("t2", "gpu=1"))) == (("gpu", 1, ("nvidia10",)),)
    assert pool.lacking(wants_of(gpu_task("t3", "gpu=2"))) == "gpu"
    pool.release(first)
    assert pool.assign(wants_of(gpu_task("t4", "gpu=1", "gpu=nvidia10"))) \
        == (("gpu", 2, ("nvidia1", "nvidia10")),)


def test_counted_kinds_and_particular_units() -> None:
    pool = Pool.of(gpu_node("n", "fpga=3", "gpu=a,b").description.resources)
    assert pool.assign(wants_of(gpu_task("t", "fpga=2"))) == (("fpga", 2, ()),)
    assert pool.lacking(wants_of(gpu_task("t", "fpga=4"))) == "fpga"
    assert pool.lacking(wants_of(gpu_task("t", "gpu=c"))) == "gpu"  # no such unit
    assert pool.lacking(wants_of(gpu_task("t", "fpga=x"))) == "fpga"  # a counted kind
    assert pool.lacking(wants_of(gpu_task("t", "tpu=1"))) == "tpu"
    assert to_proto((("fpga", 2, ()), ("gpu", 2, ("a", "b")))) == [
        gres.discrete("fpga", 2), gres.named("gpu", "a"), gres.named("gpu", "b")]


def test_a_task_holds_its_assignment_or_else_what_it_asks() -> None:
    unassigned = gpu_task("t", "gpu=2", node_id="n")
    assert holding_of(unassigned) == (("gpu", 2, ()),)
    assigned = gpu_task("t", "gpu=2", node_id="n", state=pb.RUNNING)
    assigned.assigned_generic_resources.extend([gres.named("gpu", "b"), gres.named("gpu", "a")])
    assert holding_of(assigned) == (("gpu", 2, ("a", "b")),)


# ---------------------------------------------------------------- the scheduler


def test_only_the_node_with_the_gpu_takes_the_task_and_the_next_waits() -> None:
    nodes = build_node_infos([node("a"), gpu_node("b", "gpu=nvidia0"), node("c")], [])
    first, second = Scheduler().schedule(
        [gpu_task("t1", "gpu=1"), gpu_task("t2", "gpu=1", service="other")], nodes)
    assert (first.node_id, first.assigned) == ("b", (("gpu", 1, ("nvidia0",)),))
    assert (second.node_id, second.reason) == ("", "no suitable node (3 nodes lack gpu)")
    waiting = Scheduler().schedule([gpu_task("t3", "gpu=1")], nodes)
    assert waiting[0].reason == "no suitable node (3 nodes lack gpu)"


def test_a_node_down_is_explained_before_what_it_lacks() -> None:
    down = gpu_node("b", "gpu=1")
    down.status.state = pb.NodeStatus.DOWN
    nodes = build_node_infos([node("a"), down], [])
    (decision,) = Scheduler().schedule([gpu_task("t", "gpu=1")], nodes)
    assert decision.reason == "no suitable node (1 node not available; 1 node lacks gpu)"


def test_a_global_task_bound_to_its_node_gets_units_there() -> None:
    nodes = build_node_infos([gpu_node("a", "gpu=x,y")], [])
    (decision,) = Scheduler().schedule([gpu_task("g", "gpu=1", node_id="a")], nodes)
    assert decision.assigned == (("gpu", 1, ("x",)),)
    assert nodes["a"].held == {"g": (("gpu", 1, ("x",)),)}


def test_a_batch_shares_the_units_out() -> None:
    nodes = build_node_infos([gpu_node("a", "gpu=a0,a1"), gpu_node("b", "gpu=b0")], [])
    decisions = Scheduler().schedule([gpu_task(f"t{i}", "gpu=1") for i in range(4)], nodes)
    given = [unit for d in decisions for _, _, units in d.assigned for unit in units]
    assert sorted(given) == ["a0", "a1", "b0"]
    assert decisions[-1].reason == "no suitable node (2 nodes lack gpu)"


def _written(current: pb.Task, node_id: str, assigned: tuple[tuple[str, int, tuple[str, ...]], ...]
             ) -> pb.Task:
    """What the reconciler writes for a placement."""
    result = pb.Task()
    result.CopyFrom(current)
    result.node_id = node_id
    result.status.state = pb.ASSIGNED
    result.assigned_generic_resources.extend(to_proto(assigned))
    return result


def _check_invariants(infos: dict[str, NodeInfo], store: dict[str, pb.Task]) -> None:
    live = [t for t in store.values() if t.node_id and t.status.state <= pb.RUNNING]
    for info in infos.values():
        pool = Pool.of(info.node.description.resources)
        on_node = [t for t in live if t.node_id == info.node.id]
        used: collections.Counter[str] = collections.Counter()
        units: collections.Counter[tuple[str, str]] = collections.Counter()
        for held in on_node:
            for kind, count, names in holding_of(held):
                used[kind] += count
                units.update((kind, name) for name in names)
        for kind, count in used.items():
            assert count <= pool.totals.get(kind, 0), f"{info.node.id} over-committed {kind}"
        assert all(n == 1 for n in units.values()), f"a unit given twice: {units}"
        for (kind, name) in units:
            assert name in pool.units.get(kind, ()), f"{name} is not a unit of {info.node.id}"


# Placements weigh most: units run out, and stops free some again.
OPERATIONS = st.lists(st.tuples(st.sampled_from(["place", "place", "place", "stop",
                                                 "restart-controller"]),
                                st.integers(0, 20), st.sampled_from(["gpu=1", "gpu=2", "fpga=1",
                                                                     "gpu=1,fpga=1"])),
                      min_size=4, max_size=40)


@settings(max_examples=100, deadline=None)
@given(OPERATIONS, st.lists(st.sampled_from(["gpu=g0,g1,g2", "gpu=g0", "fpga=2", "", "gpu=3"]),
                            min_size=1, max_size=4))
def test_units_are_never_given_twice_nor_a_node_over_committed(
        operations: list[tuple[str, int, str]], node_resources_: list[str]) -> None:
    nodes = [gpu_node(f"n{i}", *([text] if text else []))
             for i, text in enumerate(node_resources_)]
    store: dict[str, pb.Task] = {}
    index = NodeInfos(nodes, [])
    scheduler = Scheduler()
    serial = 0
    for action, number, wants in operations:
        if action == "place":
            serial += 1
            new = gpu_task(f"t{serial}", *wants.split(","), service=f"s{number % 3}")
            store[new.id] = new
            index.apply_task(None, new)
            (decision,) = scheduler.schedule([new], index.infos)
            if decision.node_id:
                written = _written(new, decision.node_id, decision.assigned)
                index.apply_task(store[new.id], written)
                store[new.id] = written
        elif action == "stop":
            live = sorted(t.id for t in store.values() if t.status.state <= pb.RUNNING
                          and t.node_id)
            if live:
                old = store[live[number % len(live)]]
                stopped = pb.Task()
                stopped.CopyFrom(old)
                stopped.status.state = pb.SHUTDOWN
                index.apply_task(old, stopped)
                store[old.id] = stopped
        else:  # a new leader rebuilds from the stored tasks
            index = NodeInfos(nodes, store.values())
        _check_invariants(index.infos, store)
        rebuilt = build_node_infos(nodes, store.values())
        for node_id, info in index.infos.items():
            assert info.held == rebuilt[node_id].held
            pool, fresh = info.pool(), rebuilt[node_id].pool()
            assert (+pool.used, pool.taken) == (+fresh.used, fresh.taken)


def test_node_inspect_shows_what_the_node_offers() -> None:
    from swarm.cli import render

    text = render.node_details(gpu_node("n", "gpu=nvidia0,nvidia1", "fpga=2"))
    (line,) = [line for line in text.splitlines() if "Generic:" in line]
    assert line.split() == ["Generic:", "gpu=nvidia0,nvidia1", "fpga=2"]
