"""The agent's session with the controllers: registration, the assignment
stream, heartbeats and batched status reports, with failover.

Every controller serves sessions (controller/dispatcher/): the session opens
with whichever controller of its list answers (starting at a random one, so
agents spread over the controllers) and stays there. The controllers it
knows are those it was started with and those named in the session (every
running controller), so a controller added later needs no restart, and an
agent started with one address survives that controller's death. Nothing
here knows which controller leads.

Failover is prompt, because the leader marks a node DOWN after a few
heartbeat periods without word of it: when the controller fails, every other
known controller is tried at once, and only a whole round of unreachable
controllers earns a (jittered, growing) backoff. A controller that refuses
for now (FAILED_PRECONDITION or UNAVAILABLE: starting, stopping, etcd
unreachable) is left for the next one. A controller that accepts a
connection but sends nothing (a paused process) is given up after a few
seconds. On every (re)connect the controller sends the complete assignment
set and the session re-reports every task's status, so nothing that happened
while it was away is lost.

The session knows nothing about containers: it drives a Worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import grpc

from swarm.api.loops import cancel_all, paced_pause, start_supervised
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
from swarm.api.v1 import objects_pb2 as pb

from .compact_deltas import CompactDeltas

log = logging.getLogger(__name__)

_RPC_TIMEOUT = 10.0
_FIRST_MESSAGE_TIMEOUT = 3.0  # or a heartbeat's timeout, if longer


def heartbeat_timeout(period: float) -> float:
    """How long a heartbeat waits for the controller's answer before the
    session is given up (the controller is paused or gone): as long as the
    controller waits for a beat before it marks the node DOWN (3 periods),
    since a beat answered that late still counts there (the controller does
    not count the time it was behind)."""
    return max(3 * period, 1.0)


def use_beat_server(state: grpc.ChannelConnectivity | None) -> bool:
    """Whether this beat goes to the controller's heartbeat server, given
    its channel's state (None: the controller has none, or the session left
    it): only over a connection already up. The first beats of a session go
    on the session's channel while that one is being made (a TLS handshake
    with a busy controller may take a while, and a beat that waited for it
    in vain would be lost), and every beat does if it never comes up (a
    firewall)."""
    return state == grpc.ChannelConnectivity.READY


def leave_beat_server(code: grpc.StatusCode) -> bool:
    """Whether a beat the heartbeat server did not answer moves the rest of
    the session's beats to the session's channel: when the server refuses
    (UNAVAILABLE: a controller whose loop stopped turning) or went away. A
    beat past its deadline is judged as on the session's channel (a paused
    controller is left within 3 periods)."""
    return code == grpc.StatusCode.UNAVAILABLE


class Worker(Protocol):
    """What runs the tasks. The session feeds it assignments; it reports back
    through the `report` callback it was given."""

    async def apply(self, assignments: dpb.Assignments) -> None: ...

    def statuses(self) -> dict[str, pb.TaskStatus]:
        """The latest status of every task the worker knows, to re-report."""
        ...


@runtime_checkable
class Settling(Protocol):
    """A worker that can say when what it was given is in force everywhere
    on this node (agent.worker.Worker): the session then confirms the
    networks' versions to the controller, which tells a stopping task's
    node when every node has let it go (drain before stop). Workers without
    it (simulated nodes) confirm nothing and are not waited for."""

    async def settled(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class SessionSettings:
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    # Reports go at most this often (a burst is one call; the controller
    # coalesces its writes over about the same 20 ms): see status_due.
    status_flush_interval: float = 0.02
    status_first_pause: float = 0.005
    status_progress_pause: float = 0.1
    status_progress_max: float = 1.0
    status_batch_max: int = 500
    # How long a confirmation of applied networks waits for the load
    # balancers; past it nothing is confirmed (the drain's bound applies).
    settle_timeout: float = 5.0


def status_due(settings: SessionSettings, *, now: float, sent_at: float, waiting_since: float,
               news_at: float | None, progress_at: float) -> float:
    """When the pending status reports go (monotonic): at most one call per
    status_flush_interval after the last (`sent_at`; the one pacing rule,
    swarm.api.loops.paced_pause), and then
    * news others wait for (a RUNNING: other nodes find the task by it; an
      end: its replacement), reported at `news_at`: status_first_pause later;
    * a task's way there only (ACCEPTED ... STARTING): status_progress_pause
      after the latest such report (`progress_at`), at most
      status_progress_max after the first (`waiting_since`). A STARTING is
      then still waiting when its RUNNING comes, and replaced by it: one
      report, not a STARTING whose call holds the RUNNING back by an
      interval (and the controller's status write the same way)."""
    if news_at is not None:
        first = news_at + settings.status_first_pause
    else:
        first = min(progress_at + settings.status_progress_pause,
                    waiting_since + settings.status_progress_max)
    return now + paced_pause(sent_at, settings.status_flush_interval, first - now, now)


ChannelFactory = Callable[[str], grpc.aio.Channel]
SessionService = Callable[["dgrpc.DispatcherAsyncStub", str, str], Awaitable[None]]
"""Runs beside an open session (stub, node ID, session ID) until cancelled when
the session ends -- e.g. agent.logs.LogPublisher.serve. It is supervised: a
crash is logged and it is started again; its ending does not end the session."""


def insecure_channels() -> ChannelFactory:
    """One cached plaintext channel per address (mutual TLS slots in here)."""
    channels: dict[str, grpc.aio.Channel] = {}

    def factory(addr: str) -> grpc.aio.Channel:
        if addr not in channels:
            channels[addr] = grpc.aio.insecure_channel(addr)
        return channels[addr]

    return factory


class AgentSession:
    def __init__(self, controllers: Sequence[str], description: pb.NodeDescription,
                 worker: Worker, channels: ChannelFactory, *,
                 node_id: str = "", labels: dict[str, str] | None = None,
                 role: pb.NodeSpec.Role.ValueType = pb.NodeSpec.WORKER,
                 on_registered: Callable[[str], None] | None = None,
                 settings: SessionSettings | None = None,
                 services: Sequence[tuple[str, SessionService]] = (),
                 conditions: Callable[[], Sequence[str]] | None = None) -> None:
        if not controllers:
            raise ValueError("at least one controller address is needed")
        self._given = list(controllers)  # what it was started with
        self._controllers = list(controllers)  # what it tries: learned, then given
        # Where to start: agents started with the same list spread over it.
        self._target = random.randrange(len(self._controllers))
        self._period = 5.0  # the heartbeat period of the last session
        self._heard_at = 0.0  # when the session stream last brought a message (monotonic)
        # The status report on its way (its send time, and whether it was
        # answered): it is the node's heartbeat too, see _heartbeats.
        self._report_in_flight: tuple[float, asyncio.Future[bool]] | None = None
        self.description = description
        self.worker = worker
        self._channels = channels
        self.node_id = node_id
        self._labels = labels or {}
        self._role = role  # sent when registering only: the cluster's record wins after
        self._on_registered = on_registered
        self.settings = settings or SessionSettings()
        self._services = list(services)  # (name, service) run beside each session
        # The node's conditions (agent/conditions.py), sent with every heartbeat.
        self.conditions = conditions or (lambda: ())
        self._pending: dict[str, pb.TaskStatus] = {}
        self._pending_ready = asyncio.Event()
        # When the first pending report others wait for came (None: none is
        # pending), and the latest report (status_due).
        self._news_at: float | None = None
        self._reported_at = 0.0
        self._news_ready = asyncio.Event()
        self.connected = asyncio.Event()
        self.session_id = ""
        self.serving = ""  # the controller of the open session
        # Network versions applied and not yet confirmed (drain before stop).
        self._applied: dict[str, int] = {}
        self._compact = CompactDeltas()
        self._applied_ready = asyncio.Event()
        self._opened = False  # the current attempt got as far as an open session
        self._stub: dgrpc.DispatcherAsyncStub | None = None  # of the open session
        # Called with the period and the send time (monotonic) of each
        # heartbeat a controller answered (a status report standing in for
        # one too): the routing mesh's liveness, agent.published.PublishedPorts.beat.
        self.on_beat: Callable[[float, float], None] = lambda period, sent: None

    # ------------------------------------------------------------ reporting

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        """Queue a status; the latest one per task wins."""
        self._pending[task_id] = status
        self._pending_ready.set()
        self._reported_at = time.monotonic()
        if status.state >= pb.RUNNING:
            if self._news_at is None:
                self._news_at = self._reported_at
            self._news_ready.set()

    # ------------------------------------------------------------ payloads

    async def task_payloads(self, task_id: str) -> dpb.TaskPayloadsResponse:
        """One task's secrets and configs, from the controller of the open
        session (controller/payloads.py). Raises AioRpcError; ContainerError-
        free: the worker turns a failure into a rejected task."""
        stub = self._stub
        if stub is None or not self.connected.is_set():
            await self.connected.wait()
            stub = self._stub
        assert stub is not None
        return await stub.TaskPayloads(
            dpb.TaskPayloadsRequest(node_id=self.node_id, task_id=task_id),
            timeout=_RPC_TIMEOUT)

    # ------------------------------------------------------------ the loop

    @property
    def controllers(self) -> list[str]:
        """The controllers this session knows, in the order it tries them."""
        return list(self._controllers)

    def learn_controllers(self, addrs: Sequence[str]) -> None:
        """The serving controller's word on the running controllers; those the agent was
        started with stay known after them (one may be a name for several)."""
        if not addrs:
            return
        learned = list(dict.fromkeys(addrs))
        learned += [a for a in self._given if a not in learned]
        if learned != self._controllers:
            log.info("controllers: %s", ", ".join(learned))
            self._controllers = learned

    async def run(self) -> None:
        backoff = self.settings.backoff_initial
        unreachable = 0  # controllers that failed in a row: a whole round earns a backoff
        while True:
            addr = self._controllers[self._target % len(self._controllers)]
            self._opened = False
            try:
                await self._session(addr)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and "register" in (error.details() or ""):
                    log.warning("controller does not know node %s; registering again", self.node_id)
                    self.node_id = ""
                    continue
                log.warning("session with %s failed: %s %s", addr, error.code().name,
                            error.details())
                self._next(addr)
            except TimeoutError:
                log.warning("controller %s accepted a session but sent nothing", addr)
                self._next(addr)
            finally:
                self.connected.clear()
                self.serving = ""
            if self._opened:
                # It was open: the controller went away. Try the others at once.
                backoff = self.settings.backoff_initial
                unreachable = 0
                continue
            unreachable += 1
            if unreachable < len(self._controllers):
                continue  # another controller may answer: no reason to wait
            unreachable = 0
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, self.settings.backoff_max)

    def _next(self, addr: str) -> None:
        """Leave addr for the controller after it in the list."""
        try:
            self._target = self._controllers.index(addr) + 1
        except ValueError:
            self._target += 1

    async def _session(self, addr: str) -> None:
        stub: dgrpc.DispatcherAsyncStub = dgrpc.DispatcherStub(
            self._channels(addr))
        if not self.node_id:
            response = await stub.Register(
                dpb.RegisterRequest(description=self.description, labels=self._labels,
                                    role=self._role),
                timeout=_RPC_TIMEOUT)
            self.node_id = response.node_id
            log.info("registered as node %s", self.node_id)
            if self._on_registered is not None:
                self._on_registered(self.node_id)
        stream = stub.Session(dpb.SessionRequest(node_id=self.node_id,
                                                 description=self.description,
                                                 compact_deltas=True,
                                                 peer_groups=True))
        self._compact = CompactDeltas()  # per stream: its first message is complete
        helpers: list[asyncio.Task[None]] = []
        services: list[asyncio.Task[None]] = []
        try:
            # A paused controller accepts the connection and never answers.
            async with asyncio.timeout(max(_FIRST_MESSAGE_TIMEOUT,
                                           heartbeat_timeout(self._period))):
                first = await stream.read()
            if first is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            assert isinstance(first, dpb.SessionMessage)
            self._heard_at = time.monotonic()
            self.session_id = first.session_id
            self.serving = addr
            self._opened = True
            self.learn_controllers(first.controllers)
            period = first.heartbeat_period.ToNanoseconds() / 1e9 or 5.0
            self._period = period
            # Re-report everything: reports sent to a dead controller may be lost.
            for task_id, status in self.worker.statuses().items():
                self._pending.setdefault(task_id, status)
            self._pending_ready.set()
            self._applied.clear()
            # The controller's heartbeat server, off its event loop, if it
            # has one: beats answered promptly however busy it is.
            beat_channel = self._channels(first.heartbeat_addr) if first.heartbeat_addr else None
            helpers = [
                asyncio.create_task(self._heartbeats(stub, beat_channel), name="heartbeat"),
                asyncio.create_task(self._flush_statuses(stub), name="status-reports"),
            ]
            if isinstance(self.worker, Settling):
                helpers.append(asyncio.create_task(self._confirm_applied(stub, self.worker),
                                                   name="applied-networks"))
            node_id, session_id = self.node_id, self.session_id
            services = [start_supervised(name, functools.partial(service, stub, node_id, session_id))
                        for name, service in self._services]
            self._stub = stub
            self.connected.set()
            log.info("session %s with %s open", self.session_id, addr)
            await self._apply(first.assignments)
            helpers.append(asyncio.create_task(self._follow(stream), name="assignments"))
            # Whichever stops first ends the session: the stream, or a refused heartbeat.
            done, _ = await asyncio.wait(helpers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        finally:
            stream.cancel()
            await cancel_all(helpers)
            await cancel_all(services)

    async def _follow(self, stream: Any) -> None:
        # read() only: grpc.aio forbids mixing read() with iteration on one call.
        while True:
            message = await stream.read()
            if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            self._heard_at = time.monotonic()
            self.learn_controllers(message.controllers)
            if message.HasField("heartbeat_period"):
                self._period = message.heartbeat_period.ToNanoseconds() / 1e9 or self._period
            await self._apply(message.assignments)

    async def _apply(self, assignments: dpb.Assignments) -> None:
        self._compact.expand(assignments)  # whole entries for everything after
        await self.worker.apply(assignments)
        versions = {entry.network.id: entry.version for entry in assignments.networks
                    if entry.version}
        if versions:
            self._applied.update(versions)
            self._applied_ready.set()

    async def _confirm_applied(self, stub: dgrpc.DispatcherAsyncStub, worker: Settling) -> None:
        """Confirm the network versions applied, once they are in force
        (drain before stop), in an extra heartbeat; a burst of messages is
        one confirmation."""
        while True:
            await self._applied_ready.wait()
            self._applied_ready.clear()
            applied = dict(self._applied)
            if not await worker.settled(self.settings.settle_timeout):
                log.info("load balancers not in step after %gs; not confirming networks "
                         "yet", self.settings.settle_timeout)
                self._applied_ready.set()  # again (discovery retries its failed passes)
                continue
            for network_id, version in applied.items():
                if self._applied.get(network_id) == version:
                    del self._applied[network_id]
            await stub.Heartbeat(dpb.HeartbeatRequest(
                node_id=self.node_id, session_id=self.session_id,
                applied=[dpb.AppliedNetwork(network_id=n, version=v)
                         for n, v in sorted(applied.items())],
                conditions=sorted(self.conditions())), timeout=_RPC_TIMEOUT)

    def _busy_not_gone(self, error: grpc.aio.AioRpcError, period: float) -> bool:
        """Whether a call that ran out of time is to be tried again rather
        than end the session: the controller is busy, not gone, when its
        stream brought a message within the last period (a paused or dead
        one sends nothing). Ending the session would cost it a complete
        set of everything for this node on top of what keeps it busy: with
        hundreds of nodes, a wave of new sessions that fed itself."""
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            return False
        if time.monotonic() - self._heard_at >= period:
            return False
        log.warning("controller %s is slow to answer (%s); the session stays", self.serving,
                    error.details())
        return True

    async def _heartbeats(self, stub: dgrpc.DispatcherAsyncStub,
                          beat_channel: grpc.aio.Channel | None = None) -> None:
        """Beat until the session ends: to the controller's heartbeat server
        (beat_channel) once a connection to it is up (use_beat_server), else
        on the session's channel. A refusal there (UNAVAILABLE: a controller
        whose loop stopped turning, or gone) sends the rest of the session's
        beats on the session's channel, where a wedged controller's silence
        ends the session."""
        sent_conditions: list[str] | None = None  # those of the last beat sent
        beat_stub = dgrpc.DispatcherStub(beat_channel) if beat_channel is not None else None
        while True:
            # Patient: a busy controller answers late, and a beat that arrives
            # late still counts (the node is DOWN only after HEARTBEAT_MISSES
            # periods without one, and the controller does not count the
            # time it was behind: the deadline sent is its measure); giving
            # up after one period made agents drop their sessions and
            # reconnect exactly when the controller was busiest. A paused
            # controller is still left within three periods. The period is
            # the latest the controller gave, in an answer or on the stream.
            period = self._period
            sent = time.monotonic()
            timeout = heartbeat_timeout(period)
            on_beat_server = beat_channel is not None and use_beat_server(
                beat_channel.get_state(try_to_connect=True))
            conditions = sorted(self.conditions())
            in_flight = self._report_in_flight
            if not on_beat_server and in_flight is not None and conditions == sent_conditions:
                # A status report is on its way: the controller counts it as
                # a beat (from when it arrived), so it stands in for this
                # one. A busy controller then has one call of this node
                # waiting in its queue, not two: at 2,000 nodes beats and
                # reports together waited up to 24 s there, and beats that
                # waited longer than their deadline were lost.
                report_sent, answered = in_flight
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(asyncio.shield(answered),
                                              max(0.0, report_sent + timeout - sent)):
                        self.on_beat(period, report_sent)
                        await asyncio.sleep(max(0.0, report_sent + period * 0.8
                                                - time.monotonic()))
                        continue
                sent = time.monotonic()  # not answered: a beat of its own, now
            sent_conditions = conditions
            request = dpb.HeartbeatRequest(node_id=self.node_id, session_id=self.session_id,
                                           conditions=conditions)
            request.timeout.FromNanoseconds(int(timeout * 1e9))
            try:
                response = await (beat_stub if on_beat_server and beat_stub is not None
                                  else stub).Heartbeat(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                if on_beat_server and leave_beat_server(error.code()):
                    log.warning("heartbeat server of %s: %s %s; beating on the session's "
                                "channel", self.serving, error.code().name, error.details())
                    beat_channel = None
                    continue
                if self._busy_not_gone(error, self._period):
                    continue
                raise
            period = self._period = response.period.ToNanoseconds() / 1e9 or period
            self.on_beat(period, sent)
            # Beat a little faster than the period so one late beat is not a
            # miss, counted from when the last one was sent: a slow answer
            # does not space the beats further apart.
            await asyncio.sleep(max(0.0, sent + period * 0.8 - time.monotonic()))

    async def _flush_statuses(self, stub: dgrpc.DispatcherAsyncStub) -> None:
        sent_at = 0.0
        while True:
            await self._pending_ready.wait()
            since = time.monotonic()
            if self._news_at is None and any(s.state >= pb.RUNNING for s in self._pending.values()):
                self._news_at = since  # re-reported at a new session
            while (left := status_due(self.settings, now=time.monotonic(), sent_at=sent_at,
                                      waiting_since=since, news_at=self._news_at,
                                      progress_at=self._reported_at) - time.monotonic()) > 0:
                # Cut short by news (a RUNNING after a STARTING); a progress
                # report meanwhile moves the time on (status_due).
                self._news_ready.clear()
                waiter = asyncio.ensure_future(self._news_ready.wait())
                try:
                    await asyncio.wait({waiter}, timeout=left)
                finally:
                    waiter.cancel()
            sent_at = time.monotonic()
            self._news_at = None
            self._pending_ready.clear()
            while self._pending:
                batch = dict(list(self._pending.items())[: self.settings.status_batch_max])
                request = dpb.UpdateTaskStatusRequest(
                    node_id=self.node_id, session_id=self.session_id,
                    updates=[dpb.TaskStatusUpdate(task_id=task_id, status=status)
                             for task_id, status in batch.items()])
                timeout = max(_RPC_TIMEOUT, heartbeat_timeout(self._period))
                request.timeout.FromNanoseconds(int(timeout * 1e9))
                answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._report_in_flight = (time.monotonic(), answered)
                try:
                    await stub.UpdateTaskStatus(request, timeout=timeout)
                    answered.set_result(True)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
                    # A busy controller, not a dead one (the heartbeats judge
                    # that): keep the session and send these again, rather
                    # than reconnect and re-report everything at the worst time.
                    log.info("status report not answered in time; sending it again")
                    self._pending_ready.set()
                    break
                finally:
                    self._report_in_flight = None
                    if not answered.done():
                        answered.set_result(False)  # a heartbeat of its own goes then
                for task_id, status in batch.items():
                    # Drop what was sent unless a newer status came meanwhile.
                    if self._pending.get(task_id) is status:
                        del self._pending[task_id]
