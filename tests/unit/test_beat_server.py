"""The heartbeat server off the event loop (controller/dispatcher/beatserver.py):
its decision (judge_beat), its ledger under threads, and the server itself on
a loopback port (plaintext; the mutual-TLS path is the integration test's)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.session import leave_beat_server, use_beat_server
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
from swarm.controller.dispatcher.beatserver import (
    BeatLedger,
    BeatServer,
    BeatView,
    judge_beat,
    stall_limit,
)
from swarm.controller.dispatcher.heartbeats import Heartbeats, backlog_limit
from swarm.controller.dispatcher.sessions import Session, Sessions
from swarm.controller.main import heartbeat_listen_error

periods = st.floats(min_value=0.1, max_value=100.0)
ids = st.text(alphabet="abc", min_size=0, max_size=2)


@given(periods)
def test_the_loop_may_stall_longer_than_the_agents_wait(period: float) -> None:
    # A loop busy past the agents' patience keeps them (the point of the
    # server), a wedged one does not for ever.
    assert backlog_limit(period) < stall_limit(period) < float("inf")


@given(node=ids, session=ids, certified=st.none() | ids, current=st.none() | ids,
       silent=st.floats(min_value=0.0, max_value=1000.0), period=periods)
def test_judge_beat(node: str, session: str, certified: str | None, current: str | None,
                    silent: float, period: float) -> None:
    refusal = judge_beat(node_id=node, session_id=session, certified=certified,
                         current_session=current, loop_silent=silent, period=period)
    code = None if refusal is None else refusal.code
    if silent > stall_limit(period):
        assert code == grpc.StatusCode.UNAVAILABLE
    elif not node:
        assert code is None  # a probe
    elif certified is not None and certified != node:
        assert code == grpc.StatusCode.PERMISSION_DENIED
    elif current != session:
        assert code == grpc.StatusCode.NOT_FOUND
    else:
        assert code is None


def test_ledger_keeps_the_latest_beat_and_is_emptied_by_take() -> None:
    ledger = BeatLedger()
    ledger.record("a", 5.0)
    ledger.record("a", 3.0, lag=0.5)  # an older arrival handled later
    ledger.record("b", 1.0)
    assert ledger.take() == ({"a": 5.0, "b": 1.0}, 0.5)
    assert ledger.max_lag == 0.5
    assert ledger.take() == ({}, 0.0)  # the lag of what was taken since


def test_no_beat_is_lost_between_threads_and_the_loop() -> None:
    ledger = BeatLedger()
    heartbeats = Heartbeats(time.monotonic)
    recorded: dict[str, float] = {}
    stop = threading.Event()

    def beats(prefix: str) -> None:
        for i in range(20_000):
            node, at = f"{prefix}{i % 300}", float(i)
            ledger.record(node, at)
            recorded[node] = at  # each node is one thread's

    threads = [threading.Thread(target=beats, args=(p,)) for p in "xyz"]
    for thread in threads:
        thread.start()

    def fold() -> None:
        while not stop.is_set():
            for node, at in ledger.take()[0].items():
                heartbeats.seen(node, at)

    folder = threading.Thread(target=fold)
    folder.start()
    for thread in threads:
        thread.join()
    stop.set()
    folder.join()
    for node, at in ledger.take()[0].items():
        heartbeats.seen(node, at)
    assert heartbeats.last_seen == recorded


def test_a_folded_beat_never_moves_a_later_one_back() -> None:
    heartbeats = Heartbeats(lambda: 100.0)
    heartbeats.seen("n", 50.0)
    heartbeats.seen("n", 40.0)
    assert heartbeats.last_seen["n"] == 50.0


@pytest.mark.parametrize(("value", "error"), [
    ("127.0.0.1:0", ""), ("[::1]:2380", ""), ("0.0.0.0", "expected HOST:PORT"),
    (":2380", "expected HOST:PORT"), ("host:http", "port must be"), ("host:70000", "port must be"),
])
def test_heartbeat_listen_error(value: str, error: str) -> None:
    assert (heartbeat_listen_error(value) == "") == (error == "")
    assert error in heartbeat_listen_error(value)


class _Source:
    def __init__(self, view: BeatView) -> None:
        self.view = view

    def beat_view(self) -> BeatView | None:
        return self.view


@pytest.fixture
def served() -> Iterator[tuple[BeatView, list[dpb.HeartbeatRequest], dgrpc.DispatcherStub]]:
    handed: list[dpb.HeartbeatRequest] = []
    sessions = Sessions()
    sessions.open(Session(node_id="n1", session_id="s1"))
    view = BeatView(ledger=BeatLedger(), sessions=sessions,
                    node_conditions=lambda node: ["disk-ok"] if node == "n1" else None,
                    now=lambda: 42.0, on_loop=handed.append,
                    answer=dpb.HeartbeatResponse(), period=1.0, loop_tick=time.monotonic())
    server = BeatServer(_Source(view), None)
    port = server.listen("127.0.0.1:0", None, insecure=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield view, handed, dgrpc.DispatcherStub(channel)
    finally:
        channel.close()
        server.stop(None)


def test_server_records_a_beat_of_the_current_session(
        served: tuple[BeatView, list[dpb.HeartbeatRequest], dgrpc.DispatcherStub]) -> None:
    view, handed, stub = served
    view.answer.period.FromSeconds(7)
    response = stub.Heartbeat(dpb.HeartbeatRequest(node_id="n1", session_id="s1",
                                                   conditions=["disk-ok"]), timeout=5)
    assert response.period.seconds == 7
    assert view.ledger.take()[0] == {"n1": 42.0}
    assert handed == []  # nothing for the loop: conditions as stored


def test_server_hands_changed_conditions_to_the_loop(
        served: tuple[BeatView, list[dpb.HeartbeatRequest], dgrpc.DispatcherStub]) -> None:
    view, handed, stub = served
    stub.Heartbeat(dpb.HeartbeatRequest(node_id="n1", session_id="s1", conditions=["disk-full"]),
                   timeout=5)
    assert [list(r.conditions) for r in handed] == [["disk-full"]]
    assert "n1" in view.ledger.take()[0]  # the beat counts at once


def test_server_refuses_a_stale_session_and_a_wedged_loop(
        served: tuple[BeatView, list[dpb.HeartbeatRequest], dgrpc.DispatcherStub]) -> None:
    view, _handed, stub = served
    with pytest.raises(grpc.RpcError) as refused:
        stub.Heartbeat(dpb.HeartbeatRequest(node_id="n1", session_id="old"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    view.loop_tick = time.monotonic() - stall_limit(view.period) - 1
    with pytest.raises(grpc.RpcError) as wedged:
        stub.Heartbeat(dpb.HeartbeatRequest(node_id="n1", session_id="s1"), timeout=5)
    assert wedged.value.code() == grpc.StatusCode.UNAVAILABLE
    assert view.ledger.take()[0] == {}


@given(st.sampled_from(list(grpc.StatusCode)))
def test_when_an_agent_leaves_the_beat_server(code: grpc.StatusCode) -> None:
    # Refused (a wedged loop) or gone: the session's channel judges. A
    # deadline missed or a refusal of the session is the session's business.
    assert leave_beat_server(code) == (code == grpc.StatusCode.UNAVAILABLE)


@pytest.mark.parametrize("state", [None, *grpc.ChannelConnectivity])
def test_beats_go_to_the_beat_server_only_over_a_connection_up(
        state: grpc.ChannelConnectivity | None) -> None:
    assert use_beat_server(state) == (state == grpc.ChannelConnectivity.READY)


def test_heartbeat_listen_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from swarm.controller.main import parse_args

    assert parse_args(["--insecure", "--heartbeat-listen", "0.0.0.0:2376"]).heartbeat_listen \
        == "0.0.0.0:2376"
    assert parse_args(["--insecure", "--heartbeat-listen", "off"]).heartbeat_listen == "off"
    assert parse_args(["--insecure"]).heartbeat_listen == ""
    with pytest.raises(SystemExit) as caught:
        parse_args(["--insecure", "--heartbeat-listen", "2376"])
    assert caught.value.code == 2
    assert "--heartbeat-listen: expected HOST:PORT, got '2376'" in capsys.readouterr().err


def test_nodes_are_judged_up_to_the_queue_furthest_behind() -> None:
    # A beat waiting in the heartbeat server's queue is not judged, however
    # quickly the main server's probes come back (at 5,000 nodes 2,734 live
    # nodes were marked DOWN while the main queue was short and the heartbeat
    # server's was 40 s long).
    now = [60.0]
    beats = Heartbeats(lambda: now[0])
    beats.seen("n", 30.0)  # its next beat arrives at 50 and waits in the heartbeat server
    beats.probe_sent("main")
    sent = beats.probe_sent("heartbeat server")  # behind that beat in the queue
    now[0] = 140.0
    beats.caught_up(139.0, "main")  # the main queue is short
    assert beats.probed == 60.0  # the heartbeat server's probe is not back
    assert beats.expired(interval=10.0, period=20.0) == {}  # judged at 60, not 139
    beats.seen("n", 50.0)  # handled at last, then the probe behind it
    beats.caught_up(sent, "heartbeat server")
    assert beats.expired(interval=10.0, period=20.0) == {}
    now[0] = 200.0
    beats.caught_up(199.0, "main")
    beats.caught_up(199.0, "heartbeat server")
    # Silent since 50 with every queue read: found.
    assert list(beats.expired(interval=10.0, period=20.0)) == ["n"]
