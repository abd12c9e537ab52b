"""The log broker on a real control plane: real etcd, in-process controllers,
agents with real sessions and the real LogPublisher, whose "containers" are
k8s-file logs written by the test (no runc: tests/agent/test_logs_e2e.py has
the real containers). What is checked here is what the end-to-end test cannot
provoke at will: bounded buffers and back-pressure, a node that does not
answer, a node that sends lines it must not, a followed service that gains a
task, and a follower controller sending swarmctl to the leader."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from swarm.agent.logs import LogPublisher, LogSettings
from swarm.agent.session import AgentSession, insecure_channels
from swarm.agent.simulated import FakeWorker
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import client
from swarm.cli import logs as cli_logs
from swarm.controller.logbroker import LogBrokerSettings
from swarm.controller.server import Controller
from tests.etcd_server import EtcdServer
from tests.integration.conftest import FAST_SESSION, controller_config

pytestmark = pytest.mark.integration

FAST_LOGS = LogSettings(poll_interval=0.05, retry_initial=0.05, retry_max=0.2)


# These tests are about the log broker; the in-process agents speak plaintext,
# so the controllers here run --insecure (mutual TLS has tests of its own:
# test_security.py, and tests/agent/test_logs_e2e.py runs logs over mTLS).
@pytest.fixture
async def controller(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Controller]:
    # A generous answer deadline: on a loaded CI machine an in-process agent may
    # take seconds to open its subscription stream, and these tests assert what
    # the agent answers, not the deadline (test_nodes_that_are_down_or_silent_are_named
    # sets its own short one).
    config = replace(controller_config(etcd_server.endpoint, etcd_prefix, insecure=True),
                     logs=LogBrokerSettings(answer_timeout=30.0))
    instance = Controller(config)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
async def control(controller: Controller) -> AsyncIterator[cgrpc.ControlAsyncStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{controller.port}")
    try:
        yield cgrpc.ControlStub(channel)
    finally:
        await channel.close(None)


@pytest.fixture(autouse=True)
def plaintext_swarmctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMCTL_INSECURE", "1")


def k8s_lines(texts: Sequence[str], stream: str = "stdout") -> bytes:
    """Records as conmon writes them, stamped now (a nanosecond apart)."""
    now = time.time_ns()
    return b"".join(f"{_stamp(now + i)} {stream} F {text}\n".encode()
                    for i, text in enumerate(texts))


def _stamp(nanos: int) -> str:
    seconds, fraction = divmod(nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}+00:00"


class Node:
    """A node whose 'containers' are log files in a directory."""

    def __init__(self, addr: str, name: str, log_dir: Path, *, publish: bool = True,
                 log_settings: LogSettings = FAST_LOGS) -> None:
        self.log_dir = log_dir
        self.addr = addr
        self.worker = FakeWorker()
        self.publisher = LogPublisher(lambda task_id: log_dir / f"{task_id}.log", log_settings)
        self.description = pb.NodeDescription(hostname=name, advertise_addr="127.0.0.1",
                                              resources=pb.Resources(nano_cpus=10**9,
                                                                     memory_bytes=1 << 30))
        self.publish = publish
        self.session = self._session("")
        self.loop = start_supervised(f"node-{name}", self.session.run)

    def _session(self, node_id: str) -> AgentSession:
        session = AgentSession([self.addr], self.description, self.worker, insecure_channels(),
                               node_id=node_id, settings=FAST_SESSION,
                               services=[("logs", self.publisher.serve)] if self.publish else [])
        self.worker.session = session
        return session

    async def reconnect(self) -> None:
        """A new session of the same node (as after a network blip)."""
        await cancel_all([self.loop])
        self.session = self._session(self.session.node_id)
        self.loop = start_supervised("node-again", self.session.run)
        await asyncio.wait_for(self.session.connected.wait(), 10)

    def write(self, task_id: str, data: bytes) -> None:
        with (self.log_dir / f"{task_id}.log").open("ab") as file:
            file.write(data)


@contextlib.asynccontextmanager
async def nodes(controller: Controller, tmp_path: Path, names: Sequence[str],
                leader: Controller | None = None, **kwargs: Any) -> AsyncIterator[list[Node]]:
    """Nodes whose sessions are with `controller`; `leader`: the one whose
    broker they listen at, when that is another."""
    broker = (leader or controller).logs
    made = []
    try:
        for name in names:
            (tmp_path / name).mkdir()
            made.append(Node(f"127.0.0.1:{controller.port}", name, tmp_path / name, **kwargs))
        async with asyncio.timeout(15):
            for node in made:
                await node.session.connected.wait()
        # And each node's log-subscription stream is open at the leader (it
        # follows the session; under load it may lag the session by seconds).
        if kwargs.get("publish", True):
            await until("every node listens for log subscriptions",
                        lambda: all(n.session.node_id in broker._listeners
                                    for n in made), timeout=30)
        yield made
    finally:
        await cancel_all([node.loop for node in made])


async def until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout}s"
        await asyncio.sleep(0.02)


async def create(control: cgrpc.ControlAsyncStub, name: str, replicas: int,
                 controller: Controller, tasks: int | None = None) -> pb.Service:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    spec.task.container.image = "busybox"
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=spec))).service
    wanted = replicas if tasks is None else tasks
    await until("tasks assigned", lambda: len(assigned(controller, service.id)) == wanted)
    return service


def assigned(controller: Controller, service_id: str) -> list[pb.Task]:
    return sorted((t for t in controller.store.cache.tasks_by_service.get(service_id, {}).values()
                   if t.node_id and t.status.state >= pb.ASSIGNED), key=lambda t: t.slot)


def logs_request(service: str, *, follow: bool = False, tail: int | None = None
                 ) -> lpb.ServiceLogsRequest:
    request = lpb.ServiceLogsRequest(service=service, options=lpb.LogOptions(follow=follow))
    if tail is not None:
        request.options.tail = tail
    return request


async def collect(control: cgrpc.ControlAsyncStub, request: lpb.ServiceLogsRequest
                  ) -> tuple[list[lpb.LogMessage], list[lpb.NodeLogError]]:
    lines: list[lpb.LogMessage] = []
    errors: list[lpb.NodeLogError] = []
    async with asyncio.timeout(30):
        async for message in control.ServiceLogs(request):
            lines.extend(message.messages)
            errors.extend(message.node_errors)
    return lines, errors


async def test_lines_of_every_task_then_the_end(controller: Controller,
                                                control: cgrpc.ControlAsyncStub,
                                                tmp_path: Path) -> None:
    async with nodes(controller, tmp_path, ["a", "b"]) as (a, b):
        service = await create(control, "web", 2, controller)
        tasks = assigned(controller, service.id)
        by_node = {a.session.node_id: a, b.session.node_id: b}
        assert set(by_node) == {t.node_id for t in tasks}
        for task in tasks:
            node = by_node[task.node_id]
            node.write(task.id, k8s_lines([f"{task.slot} out {i}" for i in range(3)]))
            node.write(task.id, k8s_lines([f"{task.slot} err"], "stderr"))
            # A line being written (no newline yet) is not sent.
            node.write(task.id, b"2026-11-29T03:23:32.1+00:00 stdout F unfinis")
        lines, errors = await collect(control, logs_request("web"))
        assert errors == []
        got = sorted((m.context.task_id, m.context.node_id, m.stream, m.data) for m in lines)
        assert got == sorted(
            [(t.id, t.node_id, lpb.LOG_STREAM_STDOUT, f"{t.slot} out {i}".encode())
             for t in tasks for i in range(3)]
            + [(t.id, t.node_id, lpb.LOG_STREAM_STDERR, f"{t.slot} err".encode()) for t in tasks])
        assert all(m.context.service_id == service.id for m in lines)

        lines, _ = await collect(control, logs_request("web", tail=1))
        assert sorted(m.data for m in lines) == [b"1 err", b"2 err"]
        lines, _ = await collect(control, logs_request("web", tail=0))
        assert lines == []
        assert controller.logs.subscriptions == 0

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(control, logs_request("nope"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as negative:
            await collect(control, logs_request("web", tail=-1))
        assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_agent_at_its_limit_says_so(controller: Controller,
                                             control: cgrpc.ControlAsyncStub,
                                             tmp_path: Path) -> None:
    full = replace(FAST_LOGS, max_subscriptions=0)
    async with nodes(controller, tmp_path, ["a"], log_settings=full) as (a,):
        service = await create(control, "web", 1, controller)
        (task,) = assigned(controller, service.id)
        a.write(task.id, k8s_lines(["hello"]))
        lines, errors = await collect(control, logs_request("web"))
        assert lines == []
        assert [(e.node_id, e.message) for e in errors] == [
            (a.session.node_id, "the node cannot send its logs: too many log streams on this "
                                "node (at most 0)")]


async def test_a_slow_reader_holds_the_agent_back_and_leaving_ends_everything(
        controller: Controller, control: cgrpc.ControlAsyncStub, tmp_path: Path) -> None:
    async with nodes(controller, tmp_path, ["a"]) as (a,):
        service = await create(control, "big", 1, controller)
        (task,) = assigned(controller, service.id)
        line = "x" * 1000
        total = 24_000  # about 24 MB of log
        a.write(task.id, k8s_lines([line] * total))
        received = 0
        call = control.ServiceLogs(logs_request("big"))
        async for message in call:
            received += len(message.messages)
            break
        await asyncio.sleep(1.0)  # not reading: everything upstream fills and stops
        (subscription,) = controller.logs._subscriptions.values()
        assert subscription.queue.qsize() <= controller.logs.settings.buffer_batches
        in_flight = subscription.received
        assert in_flight < total / 2, f"{in_flight} of {total} lines buffered"
        assert a.publisher.active == 1

        call.cancel()  # the caller goes away: the subscription ends, the agent stops
        await until("subscription dropped", lambda: controller.logs.subscriptions == 0)
        await until("agent stopped publishing", lambda: a.publisher.active == 0)


async def test_followed_service_gains_a_task(controller: Controller,
                                             control: cgrpc.ControlAsyncStub,
                                             tmp_path: Path) -> None:
    async with nodes(controller, tmp_path, ["a", "b"]) as all_nodes:
        by_node = {n.session.node_id: n for n in all_nodes}
        service = await create(control, "web", 1, controller)
        (first,) = assigned(controller, service.id)
        by_node[first.node_id].write(first.id, k8s_lines(["old"]))
        call = control.ServiceLogs(logs_request("web", follow=True, tail=0))
        seen: list[bytes] = []

        async def read() -> None:
            async for message in call:
                seen.extend(m.data for m in message.messages)

        reader = asyncio.create_task(read())
        try:
            await until("subscribed", lambda: sum(n.publisher.active for n in all_nodes) == 1)
            by_node[first.node_id].write(first.id, k8s_lines(["new 1"]))
            await until("new line", lambda: seen == [b"new 1"])
            await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=2))
            await until("two tasks", lambda: len(assigned(controller, service.id)) == 2)
            (second,) = [t for t in assigned(controller, service.id) if t.id != first.id]
            # The new task's log, all of it (tail 0 was for the lines before the call).
            by_node[second.node_id].write(second.id, k8s_lines(["second 1", "second 2"]))
            await until("the new task's lines", lambda: seen[1:] == [b"second 1", b"second 2"])
        finally:
            call.cancel()
            await cancel_all([reader])
        await until("subscription dropped", lambda: controller.logs.subscriptions == 0)


async def test_a_followed_node_that_reconnects_resumes_without_repeating(
        controller: Controller, control: cgrpc.ControlAsyncStub, tmp_path: Path) -> None:
    async with nodes(controller, tmp_path, ["a"]) as (a,):
        service = await create(control, "web", 1, controller)
        (task,) = assigned(controller, service.id)
        a.write(task.id, k8s_lines(["one", "two"]))
        call = control.ServiceLogs(logs_request("web", follow=True))
        seen: list[bytes] = []

        async def read() -> None:
            async for message in call:
                seen.extend(m.data for m in message.messages)

        reader = asyncio.create_task(read())
        try:
            await until("the first lines", lambda: seen == [b"one", b"two"])
            await a.reconnect()
            await until("subscribed again", lambda: a.publisher.active == 1)
            a.write(task.id, k8s_lines(["three"]))
            await until("the line after the reconnect", lambda: len(seen) >= 3)
            await asyncio.sleep(0.2)
            assert seen == [b"one", b"two", b"three"]
        finally:
            call.cancel()
            await cancel_all([reader])


async def test_nodes_that_are_down_or_silent_are_named(etcd_server: EtcdServer, etcd_prefix: str,
                                                       tmp_path: Path) -> None:
    config = replace(controller_config(etcd_server.endpoint, etcd_prefix, insecure=True),
                     logs=LogBrokerSettings(answer_timeout=0.5))
    controller = Controller(config)
    await controller.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{controller.port}")
    control = cgrpc.ControlStub(channel)
    try:
        # Node "quiet" listens but never publishes; node "mute" does not even listen.
        async with nodes(controller, tmp_path, ["quiet", "mute"], publish=False) as (quiet, mute):
            service = await create(control, "web", 2, controller)
            stub = dgrpc.DispatcherStub(channel)
            listen = stub.ListenSubscriptions(lpb.ListenSubscriptionsRequest(
                node_id=quiet.session.node_id, session_id=quiet.session.session_id))
            try:
                await until("listening", lambda: quiet.session.node_id in controller.logs._listeners)
                started = time.monotonic()
                lines, errors = await collect(control, logs_request("web"))
                elapsed = time.monotonic() - started
                assert lines == []
                assert {e.node_id: e.message for e in errors} == {
                    mute.session.node_id: "the node is not connected (down?): its logs are "
                                          "missing",
                    quiet.session.node_id: "the node did not answer within 0.5s: its logs are "
                                           "missing"}
                assert 0.4 < elapsed < 3, elapsed

                # A node may send only the lines of its own tasks in the subscription.
                call = control.ServiceLogs(logs_request("web"))
                while True:  # past the given-up subscription's messages
                    subscription = await listen.read()
                    assert isinstance(subscription, lpb.SubscriptionMessage)
                    if subscription.id in controller.logs._subscriptions:
                        break
                assert list(subscription.task_ids) == [
                    t.id for t in assigned(controller, service.id)
                    if t.node_id == quiet.session.node_id]
                forged = lpb.LogMessage(context=lpb.LogContext(task_id="someone-elses"),
                                        data=b"x")
                publish = stub.PublishLogs(iter([lpb.PublishLogsMessage(
                    node_id=quiet.session.node_id, session_id=quiet.session.session_id,
                    subscription_id=subscription.id, messages=[forged])]))
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await publish
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                errors = [e for m in [m async for m in call] for e in m.node_errors]
                assert any(e.node_id == quiet.session.node_id and "bad log messages" in e.message
                           for e in errors), errors
                # And only while its session is current.
                stale = stub.PublishLogs(iter([lpb.PublishLogsMessage(
                    node_id=quiet.session.node_id, session_id="stale",
                    subscription_id=subscription.id)]))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stale
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            finally:
                listen.cancel()
    finally:
        await channel.close(None)
        await controller.stop()


async def test_a_follower_relays_logs_from_the_leader(controller: Controller,
                                                     control: cgrpc.ControlAsyncStub,
                                                     etcd_server: EtcdServer, etcd_prefix: str,
                                                     tmp_path: Path) -> None:
    """Only the leader's broker serves logs; a follower relays the call to it,
    so a client asking any controller gets them (and never looks for the leader)."""
    follower = Controller(controller_config(etcd_server.endpoint, etcd_prefix, insecure=True))
    await follower.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{follower.port}")
    try:
        assert not follower.logs.leading
        async with nodes(controller, tmp_path, ["a"]) as (a,):
            service = await create(control, "web", 1, controller)
            (task,) = assigned(controller, service.id)
            a.write(task.id, k8s_lines(["hello"]))
            await until("the follower knows the task",
                        lambda: task.id in follower.store.cache.tasks)
            lines, errors = await collect(cgrpc.ControlStub(channel), logs_request("web"))
            assert ([m.data for m in lines], errors) == ([b"hello"], [])
            assert controller.logs.subscriptions == 0, "the relayed subscription ended"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await collect(cgrpc.ControlStub(channel), logs_request("web", tail=-1))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            # swarmctl (blocking gRPC, in a thread) asks the follower: the same.
            out, err = io.BytesIO(), io.BytesIO()
            warnings: list[str] = []

            def run_cli() -> None:
                with client.connect(f"127.0.0.1:{follower.port}") as ctl:
                    cli_logs.stream_logs(ctl, "web", lpb.LogOptions(), cli_logs.Format(),
                                         out, err, warnings.append)

            await asyncio.wait_for(asyncio.to_thread(run_cli), 15)
            assert out.getvalue() == f"web.1.{task.id[:12]}@a | hello\n".encode()
            assert (err.getvalue(), warnings) == (b"", [])
    finally:
        await channel.close(None)
        await follower.stop()


async def test_a_node_served_by_a_follower_has_its_logs_relayed(
        controller: Controller, control: cgrpc.ControlAsyncStub, etcd_server: EtcdServer,
        etcd_prefix: str, tmp_path: Path) -> None:
    """Every controller serves sessions: a node whose session is on a follower
    has its log streams relayed by the follower to the leader's broker."""
    follower = Controller(controller_config(etcd_server.endpoint, etcd_prefix, insecure=True))
    await follower.start()
    try:
        leadership = controller.leadership
        assert leadership is not None
        await until("the first controller leads", lambda: leadership.is_leader)
        # Listening at the leader's broker, through the follower.
        async with nodes(follower, tmp_path, ["a"], leader=controller) as (a,):
            assert a.session.serving == f"127.0.0.1:{follower.port}"
            assert follower.dispatcher is not None
            assert follower.dispatcher.session_count() == 1
            service = await create(control, "web", 1, controller)
            (task,) = assigned(controller, service.id)
            a.write(task.id, k8s_lines(["hello", "from a follower"]))
            lines, errors = await collect(control, logs_request("web"))
            assert ([m.data for m in lines], errors) == ([b"hello", b"from a follower"], [])
            assert controller.logs.subscriptions == 0, "the subscription ended"
    finally:
        await follower.stop()
