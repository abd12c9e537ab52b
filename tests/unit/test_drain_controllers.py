"""Drain before stop across controllers (controller/drain.py,
controller/dispatcher/drainreports.py): which other controllers a drain
waits for, and the reports that tell them, over a real loopback gRPC server
(what a controller does not take is sent again until it leaves the
registry)."""

from __future__ import annotations

import asyncio

import grpc
from hypothesis import given
from hypothesis import strategies as st

from swarm.api import channels
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.api.errors import ErrorInterceptor, Unavailable
from swarm.controller.dispatcher import drainreports
from swarm.controller.dispatcher.assignments import Assignments
from swarm.controller.dispatcher.drainreports import DrainReporter, prune, queue_for
from swarm.controller.dispatcher.sessions import Session, Sessions
from swarm.controller.drain import (
    Drain,
    awaited_controllers,
    is_complete,
    keeps_early_report,
    still_awaited,
)
from swarm.controller.store import Keys
from swarm.controller.store.cache import WatchCache

ME, OTHER, THIRD = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"


def test_a_drain_waits_for_every_other_live_controller_that_has_not_reported() -> None:
    assert awaited_controllers([ME, OTHER, THIRD], ME, []) == {OTHER, THIRD}
    assert awaited_controllers([ME, OTHER, THIRD], ME, [THIRD]) == {OTHER}  # reported early
    assert awaited_controllers([ME], ME, []) == set()  # one controller: as before
    assert awaited_controllers([], ME, []) == set()  # no registry (unit setups)


def test_a_controller_that_left_the_registry_is_not_waited_for() -> None:
    assert still_awaited({OTHER, THIRD}, [ME, THIRD]) == {THIRD}
    assert still_awaited({OTHER}, [ME, OTHER, "127.0.0.1:9"]) == {OTHER}  # a newcomer: no


def test_complete_only_when_drained_here_and_reported_by_the_others() -> None:
    drain = Drain("t1", "n1", {"front": 3}, pending={"n2"}, controllers={OTHER})
    assert not is_complete(drain)
    drain.pending.clear()
    assert not is_complete(drain)  # drained here, the other side not yet
    drain.controllers.clear()
    assert is_complete(drain)


@given(live=st.sets(st.sampled_from([ME, OTHER, THIRD, "a", "b"])),
       reported=st.sets(st.sampled_from([ME, OTHER, THIRD, "a", "b"])),
       later=st.sets(st.sampled_from([ME, OTHER, THIRD, "a", "b"])))
def test_awaited_controllers_are_live_others_never_more(live: set[str], reported: set[str],
                                                         later: set[str]) -> None:
    awaited = awaited_controllers(live, ME, reported)
    assert ME not in awaited
    assert awaited <= live
    assert not awaited & reported
    remaining = still_awaited(awaited, later)
    assert remaining <= awaited  # only ever shrinks
    assert remaining <= later


def test_early_reports_are_kept_only_for_tasks_that_may_still_stop() -> None:
    def task(desired: int, state: int) -> pb.Task:
        return pb.Task(id="t1", desired_state=desired,  # type: ignore[arg-type]
                       status=pb.TaskStatus(state=state))  # type: ignore[arg-type]

    assert keeps_early_report(task(pb.RUNNING, pb.RUNNING))  # this watch lags: the stop comes
    assert keeps_early_report(task(pb.SHUTDOWN, pb.RUNNING))  # stopping
    assert not keeps_early_report(task(pb.SHUTDOWN, pb.SHUTDOWN))  # ended: a late report
    assert not keeps_early_report(None)  # removed


def test_queues_merge_and_drop_controllers_that_left() -> None:
    queues: dict[str, set[str]] = {}
    queue_for(queues, [OTHER, THIRD], ["t1"])
    queue_for(queues, [OTHER], ["t2"])
    assert queues == {OTHER: {"t1", "t2"}, THIRD: {"t1"}}
    prune(queues, [ME, OTHER])
    assert queues == {OTHER: {"t1", "t2"}}


class Peer:
    """Another controller's ReportDrained; refuses while `up` is False."""

    def __init__(self) -> None:
        self.up = False
        self.reports: list[tuple[str, list[str]]] = []
        self.got = asyncio.Event()
        self.delay = 0.0  # a stuck controller

    async def ReportDrained(self, request: dpb.ReportDrainedRequest,
                            context: grpc.aio.ServicerContext[object, object]
                            ) -> dpb.ReportDrainedResponse:
        await asyncio.sleep(self.delay)
        if not self.up:
            raise Unavailable("this controller is starting or stopping; try another")
        self.reports.append((request.controller, list(request.task_ids)))
        self.got.set()
        return dpb.ReportDrainedResponse()


async def serve(peer: Peer) -> tuple[grpc.aio.Server, str]:
    server = channels.new_server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("swarm.v1.Dispatcher", {
        "ReportDrained": grpc.unary_unary_rpc_method_handler(
            peer.ReportDrained, request_deserializer=dpb.ReportDrainedRequest.FromString,
            response_serializer=dpb.ReportDrainedResponse.SerializeToString)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_stuck_controller_delays_no_other_controllers_reports() -> None:
    stuck, fine = Peer(), Peer()
    stuck.up = fine.up = True
    stuck.delay = 30.0
    (stuck_server, stuck_addr), (fine_server, fine_addr) = await serve(stuck), await serve(fine)
    reporter = DrainReporter(ME, lambda a: grpc.aio.insecure_channel(a),
                             lambda: [ME, stuck_addr, fine_addr])
    loop = asyncio.create_task(reporter.run())
    try:
        reporter.announce("t1")
        await asyncio.wait_for(fine.got.wait(), 5)
        fine.got.clear()
        reporter.announce("t2")  # while the call to the stuck one hangs
        await asyncio.wait_for(fine.got.wait(), drainreports.TIMEOUT / 2)
        assert fine.reports == [(ME, ["t1"]), (ME, ["t2"])]
        assert stuck.reports == []
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await stuck_server.stop(None)
        await fine_server.stop(None)
        await reporter.close()


async def test_reports_reach_the_other_controllers_and_are_retried_until_taken() -> None:
    peer = Peer()
    server, addr = await serve(peer)
    live = [ME, addr]
    reporter = DrainReporter(ME, lambda a: grpc.aio.insecure_channel(a), lambda: live)
    try:
        reporter.announce("t1")
        reporter.announce("t2")
        assert reporter.queues == {addr: {"t1", "t2"}}  # never to itself
        assert not await reporter.send_once()  # refused: kept
        assert reporter.queues == {addr: {"t1", "t2"}}
        peer.up = True
        reporter.announce("t3")
        assert await reporter.send_once()
        assert peer.reports == [(ME, ["t1", "t2", "t3"])]
        assert reporter.queues == {}
        # The loop sends what is announced at once.
        peer.got.clear()
        loop = asyncio.create_task(reporter.run())
        try:
            reporter.announce("t4")
            await asyncio.wait_for(peer.got.wait(), 5)
            assert peer.reports[-1] == (ME, ["t4"])
            # A dead controller: retried while registered, dropped once it leaves.
            await server.stop(None)
            reporter.announce("t5")
            await asyncio.sleep(drainreports.RETRY_PAUSE * 3)
            assert peer.reports[-1] == (ME, ["t4"])  # not delivered, still retried
            live.remove(addr)
            await asyncio.sleep(drainreports.RETRY_PAUSE * 2 + drainreports.TIMEOUT)
            assert reporter.queues == {}
            reporter.announce("t6")  # nobody else registered: nothing queued
            assert reporter.queues == {}
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
    finally:
        await server.stop(None)
        await reporter.close()


# ---------------------------------------------------------------- one controller's side


def _put(cache: WatchCache, *objects: pb.Task | pb.Node | pb.Network) -> None:
    keys = Keys("/t/")
    cache.apply_committed([(keys.of(o), o.SerializeToString()) for o in objects], [],
                          cache.revision + 1)


def _task(desired: int, task_id: str = "t1", node_id: str = "n1") -> pb.Task:
    task = pb.Task(id=task_id, node_id=node_id, service_id="s1", slot=1,
                   desired_state=desired,  # type: ignore[arg-type]
                   status=pb.TaskStatus(state=pb.RUNNING))
    task.networks.add(network_id="net", addresses=[f"10.0.0.{5 + int(node_id[1:])}/24"])
    return task


def _side(controllers: list[str], desired: int = pb.RUNNING
          ) -> tuple[WatchCache, Assignments, list[str]]:
    """A controller (ME) serving n1 (the task's node, confirms nothing) and n2
    (on the network, confirms)."""
    cache = WatchCache(None, Keys("/t/"))  # type: ignore[arg-type]  # applied by hand, no etcd
    for addr in controllers:
        cache.controllers[addr] = pb.ControllerInfo(addr=addr)
    _put(cache, pb.Network(id="net", vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1",
                           spec=pb.NetworkSpec(name="net")),
         *(pb.Node(id=n, status=pb.NodeStatus(state=pb.NodeStatus.READY, addr=f"127.0.1.{i}"))
           for i, n in enumerate(("n1", "n2"), 1)),
         _task(desired), _task(pb.RUNNING, "t2", "n2"))  # t2: n2 is on the network
    announced: list[str] = []
    sessions = Sessions()
    assignments = Assignments(cache, sessions, identity=ME, announce=announced.append)
    cache.subscribe(assignments.on_change)
    for node_id in ("n1", "n2"):
        session = Session(node_id=node_id, session_id=node_id)
        sessions.open(session)
        assignments.complete(session)
    return cache, assignments, announced


def _confirm(assignments: Assignments, node_id: str) -> None:
    session = assignments._sessions[node_id]
    assignments.incremental(session)  # the new peer set is sent...
    assignments.heard(session, [dpb.AppliedNetwork(network_id=n, version=v)  # ...and confirmed
                                for n, v in session.sent_networks.items()])


def test_the_tasks_node_is_told_once_its_side_and_every_other_controller_are_drained() -> None:
    cache, assignments, announced = _side([ME, OTHER])
    _confirm(assignments, "n2")
    _put(cache, _task(pb.SHUTDOWN))
    n1 = assignments._sessions["n1"]
    assert "t1" in assignments.drains
    assert announced == []  # n2 holds it here
    _confirm(assignments, "n2")
    assert announced == ["t1"]  # drained on this side: the others hear
    assert n1.drained == set()  # ...but OTHER has not reported
    assignments.reported(OTHER, ["t1"])
    assert n1.drained == {"t1"}
    assert "t1" not in assignments.drains


def test_a_report_before_the_stop_counts_and_a_dead_controller_stops_counting() -> None:
    cache, assignments, announced = _side([ME, OTHER, THIRD])
    assignments.reported(OTHER, ["t1"])  # this watch has not seen the stop yet
    assert assignments.early_reports == {"t1": {OTHER}}
    _put(cache, _task(pb.SHUTDOWN))  # nobody here confirms: drained here at once
    assert announced == ["t1"]
    n1 = assignments._sessions["n1"]
    assert n1.drained == set()  # THIRD still awaited
    del cache.controllers[THIRD]  # its registry record expired
    assignments.controllers_changed()
    assert n1.drained == {"t1"}
    # A report for a task that has ended is not kept.
    ended = _task(pb.SHUTDOWN)
    ended.status.state = pb.SHUTDOWN
    _put(cache, ended)
    assignments.reported(OTHER, ["t1"])
    assert assignments.early_reports == {}


def test_a_controller_starting_mid_drain_reports_its_empty_side_at_once() -> None:
    """Restarted under the same address before its record expired, the
    others may be waiting for it: it serves no session yet, so its side is
    drained, and it says so."""
    _, assignments, announced = _side([ME, OTHER], desired=pb.SHUTDOWN)
    assert announced == ["t1"]
    assert assignments.drains["t1"].controllers == {OTHER}
