"""A follower's reports of its live nodes to the leader
(controller/dispatcher/liveness.py), over a real loopback gRPC server: what
the leader does not take is kept and sent with the next report."""

from __future__ import annotations

import grpc

from swarm.api import channels
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.controller.api.errors import ErrorInterceptor, FailedPrecondition
from swarm.controller.dispatcher.liveness import AliveReporter, merge_report


class Leader:
    """Refuses while not leading, as Dispatcher.ReportAlive does."""

    def __init__(self) -> None:
        self.leading = False
        self.reports: list[tuple[str, list[str]]] = []

    async def ReportAlive(self, request: dpb.ReportAliveRequest,
                          context: grpc.aio.ServicerContext[object, object]
                          ) -> dpb.ReportAliveResponse:
        if not self.leading:
            raise FailedPrecondition("this controller is not the leader")
        self.reports.append((request.controller, list(request.node_ids)))
        return dpb.ReportAliveResponse()


def test_merge_report() -> None:
    assert merge_report({"a", "b"}, {"b", "c"}) == {"a", "b", "c"}
    assert merge_report(set(), set()) == set()


async def test_a_report_not_taken_is_sent_with_the_next() -> None:
    leader = Leader()
    server = channels.new_server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("swarm.v1.Dispatcher", {
        "ReportAlive": grpc.unary_unary_rpc_method_handler(
            leader.ReportAlive, request_deserializer=dpb.ReportAliveRequest.FromString,
            response_serializer=dpb.ReportAliveResponse.SerializeToString)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    addr = f"127.0.0.1:{port}"
    reporter = AliveReporter("127.0.0.1:1", lambda a: grpc.aio.insecure_channel(a))
    try:
        assert not await reporter.report(addr, timeout=5)  # nothing beat: nothing sent
        reporter.beat("n1")
        reporter.beat("n2")
        assert not await reporter.report(addr, timeout=5)  # refused: not the leader
        assert leader.reports == []
        reporter.beat("n3")
        assert not await reporter.report("", timeout=5)  # no leader known: kept
        assert not await reporter.report("127.0.0.1:1", timeout=5)  # itself: kept
        leader.leading = True
        assert await reporter.report(addr, timeout=5)
        assert leader.reports == [("127.0.0.1:1", ["n1", "n2", "n3"])]
        assert reporter.beaten == set()
        # A dead leader: the beats wait for the next one.
        await server.stop(None)
        reporter.beat("n4")
        assert not await reporter.report(addr, timeout=2)
        assert reporter.beaten == {"n4"}
    finally:
        await server.stop(None)
        await reporter.close()


def test_only_a_controllers_certificate_relays() -> None:
    import datetime as dt

    from swarm.api.pki import PeerIdentity, Role
    from swarm.controller.ca import CONTROLLER_ID_PREFIX, is_controller

    def peer(node_id: str, role: Role) -> PeerIdentity:
        return PeerIdentity(node_id=node_id, role=role, cluster_id="c", serial=1,
                            not_after=dt.datetime.now(dt.UTC))

    assert is_controller(peer(CONTROLLER_ID_PREFIX + "abc", Role.MANAGER))
    assert not is_controller(peer("0123abcd", Role.MANAGER))  # a manager node
    assert not is_controller(peer(CONTROLLER_ID_PREFIX + "abc", Role.WORKER))
