"""Drain before stop, the pure decisions: when the leader considers a
stopping task drained (controller.drain), and whether and how long the
agent holds its stop signal (agent.worker)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.steps import (
    DEFAULT_DRAIN_TIMEOUT,
    drain_left,
    drain_timeout,
    must_drain,
)
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.drain import Drain, NodeView, is_drained, is_stopping, starts_draining


def task(desired: int = pb.RUNNING, state: int = pb.RUNNING, networks: int = 1,
         health: int = pb.TaskStatus.NO_HEALTHCHECK) -> pb.Task:
    result = pb.Task(id="t1", node_id="n1", desired_state=desired,  # type: ignore[arg-type]
                     status=pb.TaskStatus(state=state, health=health))  # type: ignore[arg-type]
    for index in range(networks):
        result.networks.add(network_id=f"net{index}", addresses=[f"10.0.{index}.5/24"])
    return result


def test_a_task_starts_draining_when_told_to_stop_while_it_may_serve() -> None:
    assert starts_draining(task(), task(desired=pb.SHUTDOWN))
    assert starts_draining(None, task(desired=pb.REMOVE))  # seen first while stopping
    assert not starts_draining(task(desired=pb.SHUTDOWN), task(desired=pb.SHUTDOWN))  # once
    assert not starts_draining(task(), task(desired=pb.SHUTDOWN, networks=0))  # no network
    assert not starts_draining(task(), task(desired=pb.SHUTDOWN, state=pb.SHUTDOWN))  # ended
    assert not starts_draining(task(), task(desired=pb.SHUTDOWN, state=pb.PENDING))  # unplaced
    assert not starts_draining(task(), None)
    assert is_stopping(task(desired=pb.SHUTDOWN, state=pb.ASSIGNED))
    assert not is_stopping(task(desired=pb.RUNNING))


DRAIN = Drain("t1", "n1", {"front": 7, "ingress": 3})


def test_drained_once_every_confirming_node_with_its_networks_confirmed() -> None:
    behind = NodeView(sent={"front": 7}, acked={"front": 6}, confirms=True)
    caught_up = NodeView(sent={"front": 7, "ingress": 3}, acked={"front": 7, "ingress": 4},
                         confirms=True)
    unrelated = NodeView(sent={"other": 2}, acked={}, confirms=True)  # never had the task
    silent = NodeView(sent={"front": 7}, acked={}, confirms=False)  # a simulated node
    assert not is_drained(DRAIN, [caught_up, behind])
    assert is_drained(DRAIN, [caught_up, unrelated, silent])
    assert is_drained(DRAIN, [])  # nobody to wait for
    # Sent an older version and not yet the one without the task: not drained.
    assert not is_drained(DRAIN, [NodeView({"ingress": 2}, {"ingress": 2}, True)])


views = st.builds(NodeView,
                  sent=st.dictionaries(st.sampled_from(["front", "ingress", "x"]),
                                       st.integers(0, 10)),
                  acked=st.dictionaries(st.sampled_from(["front", "ingress", "x"]),
                                        st.integers(0, 10)),
                  confirms=st.booleans())


@given(st.lists(views, max_size=6))
def test_drained_means_no_confirming_holder_is_behind(nodes: list[NodeView]) -> None:
    behind = any(node.confirms and network in node.sent and node.acked.get(network, 0) < version
                 for node in nodes for network, version in DRAIN.required.items())
    assert is_drained(DRAIN, nodes) is not behind
    # More confirmations never undo it.
    if not behind:
        more = [NodeView(n.sent, {k: v + 1 for k, v in n.acked.items()}, n.confirms)
                for n in nodes]
        assert is_drained(DRAIN, more)


def test_only_a_possible_backend_waits() -> None:
    running = task()
    assert must_drain(running, running.status)
    assert not must_drain(task(networks=0), task(networks=0).status)  # nobody else sends to it
    starting = task(health=pb.TaskStatus.HEALTH_STARTING)  # never was ready
    assert not must_drain(starting, starting.status)
    unhealthy = task(health=pb.TaskStatus.UNHEALTHY)
    assert not must_drain(unhealthy, unhealthy.status)
    healthy = task(health=pb.TaskStatus.HEALTHY)
    assert must_drain(healthy, healthy.status)
    prepared = task(state=pb.READY)  # created, never started
    assert not must_drain(prepared, prepared.status)


def test_the_drain_timeout_defaults_to_two_seconds() -> None:
    container = pb.ContainerSpec()
    assert drain_timeout(container) == DEFAULT_DRAIN_TIMEOUT == 2.0
    container.drain_timeout.FromMilliseconds(0)
    assert drain_timeout(container) == 0.0
    container.drain_timeout.FromMilliseconds(750)
    assert drain_timeout(container) == 0.75
    container.drain_timeout.seconds = -3  # refused by the API; never a negative wait
    assert drain_timeout(container) == 0.0


@given(asked=st.floats(0, 1e6), elapsed=st.floats(0, 100), bound=st.floats(0, 300))
def test_the_wait_is_bounded_and_ends_when_drained(asked: float, elapsed: float,
                                                   bound: float) -> None:
    left = drain_left(asked, asked + elapsed, bound, drained=False)
    assert 0.0 <= left <= bound + 1e-6
    if elapsed > bound + 1e-6:
        assert left == 0.0
    if elapsed < bound - 1e-6:
        assert left > 0.0
    assert drain_left(asked, asked + elapsed, bound, drained=True) == 0.0
