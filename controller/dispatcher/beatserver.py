"""Heartbeats served off the controller's event loop.

Why. grpc.aio hands the event loop about one waiting call per turn, and a
turn lasts as long as everything ready runs. A controller busy with a burst
(40,000 assignments and their status reports) turns slowly, and its unary
calls queue in gRPC core: at 5,000 nodes beats waited more than 60 s there
(the agents' patience), so live nodes were marked DOWN and sessions ended.
Measured on this machine with a plain grpc.aio server whose loop also runs a
5 ms busy callback each turn: 1,000 unary calls sent at 250/s took 31.7 s
(32 calls/s, half of them waited more than 12.6 s); the same calls to a sync
grpc server (2 worker threads) in the same process, its loop as busy, were
answered at 250/s, half within 7 ms, all within 84 ms (all 1,000 at once:
482/s). A handler on a thread needs the GIL for microseconds and gets it
within the interpreter's switch interval (5 ms), whatever the loop does.

So every controller also runs this small server: the sync grpc server on a
thread pool, on a port of its own with the same mutual TLS, serving only
Dispatcher.Heartbeat. Agents learn its address in the session's messages
(SessionMessage.heartbeat_addr; empty: beat on the session's channel, as old
agents do, and the main server still serves Heartbeat for them and for the
agents' network confirmations). A follower runs one the same way: its beats
reach the leader in its liveness reports (liveness.py), folded in on its loop.

What runs on the thread: the caller's certificate (the same checks as the
main server's AuthInterceptor: cluster, revocation, role, node), the
session's identity (a dict read), and one entry in a BeatLedger. Nothing
that needs etcd or the loop: a beat whose conditions differ from the node's
stored ones, or that confirms applied networks, is handed to the loop with
call_soon_threadsafe (the beat itself counts at once).

Thread safety. The handler reads the dispatcher's state through plain
attribute and dict lookups (atomic under the GIL; the loop replaces the
session map's entries and the cluster objects, it does not mutate them in
place), and writes only the BeatLedger, whose record() and take() hold its
lock: the loop takes the whole ledger (swapping in an empty one) and folds
it into the node monitor's Heartbeats, which only the loop touches. A beat's
arrival is stamped on the serving clock (heartbeats.ServingClock: reading
two floats), so the judge compares like with like.

Its queue is judged like the main server's. Under a busy controller on a
machine shared with thousands of simulated agents its threads wait for the
GIL and a core too: at 5,000 nodes beats waited up to 43 s here (against
60 s in the main queue before). The node monitor therefore probes this
server as it probes the main one (a Heartbeat with no node, answered here
like a beat) and counts its beats' waits as lags (heartbeats.py): a node
whose beat waits here is not judged.

A controller whose loop has stopped turning (a bug, a loop wedged on a
lock) must not keep its agents: it serves them nothing, and as a follower
it reports nobody alive, so the leader marks its nodes DOWN. The loop
stamps the time at each of its ticks; the beat server refuses beats
(UNAVAILABLE) once the loop has been silent for `stall_limit` (twice the
agents' own patience), and the agents move to another controller. A
paused (SIGSTOP) controller answers nothing, as before.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from swarm.api import channels
from swarm.api.certfiles import Role
from swarm.api.v1 import dispatcher_pb2 as dpb

from .heartbeats import backlog_limit

if TYPE_CHECKING:
    from swarm.api.pki import Revocations

log = logging.getLogger(__name__)

HEARTBEAT_METHOD = "/swarm.v1.Dispatcher/Heartbeat"
# Handlers take microseconds; two threads keep one slow handshake callback
# or GIL wait from holding up the rest.
WORKERS = 2


def stall_limit(period: float) -> float:
    """How long the controller's loop may go without a tick before the beat
    server stops answering for it: twice the agents' patience
    (backlog_limit). Longer than that patience, so a loop that is only
    busy or briefly stalled keeps its agents (the point of serving beats
    off the loop); finite, so a wedged loop loses them."""
    return 2 * backlog_limit(period)


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    details: str


def judge_beat(*, node_id: str, session_id: str, certified: str | None,
               current_session: str | None, loop_silent: float, period: float) -> Refusal | None:
    """Whether a beat is refused, and how (None: it counts). `certified` is
    the node of the caller's certificate (None on an --insecure server),
    `current_session` the node's open session here (None: none),
    `loop_silent` how long since the loop's last tick."""
    if loop_silent > stall_limit(period):
        return Refusal(grpc.StatusCode.UNAVAILABLE,
                       f"this controller's event loop has not run for {loop_silent:.0f}s; "
                       "try another controller")
    if not node_id:
        return None  # a probe: answered like a beat
    if certified is not None and certified != node_id:
        return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                       f"the certificate of node {certified} cannot act for node {node_id}")
    if current_session is None or current_session != session_id:
        return Refusal(grpc.StatusCode.NOT_FOUND,
                       f"session {session_id} of node {node_id} is not current; open a new one")
    return None


class BeatLedger:
    """The beats handled on the server's threads since the loop last took
    them: node -> arrival (serving clock), the latest per node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self.max_lag = 0.0  # the longest a beat waited in this server (bench.control_plane)
        self._recent_lag = 0.0  # the longest since the last take
        self.count = 0  # beats recorded (bench.control_plane)

    def record(self, node_id: str, seen: float, lag: float = 0.0) -> None:
        with self._lock:
            if seen > self._beats.get(node_id, -math.inf):
                self._beats[node_id] = seen
            if lag > self.max_lag:
                self.max_lag = lag
            if lag > self._recent_lag:
                self._recent_lag = lag
            self.count += 1

    def take(self) -> tuple[dict[str, float], float]:
        """Everything recorded since the last take (the loop's side), and
        the longest a beat of it waited here."""
        with self._lock:
            taken, self._beats = self._beats, {}
            lag, self._recent_lag = self._recent_lag, 0.0
        return taken, lag


class BeatSource(Protocol):
    """What the beat server reads of the dispatcher (from its threads)."""

    def beat_view(self) -> BeatView | None: ...


@dataclass
class BeatView:
    """The serving state as the beat threads see it (dispatcher.py keeps
    it: the loop replaces `answer`, `period` and `loop_tick`; the dicts are
    the loop's, read only)."""

    ledger: BeatLedger
    sessions: Mapping[str, Any]  # node -> sessions.Session (session_id, closed)
    node_conditions: Callable[[str], Collection[str] | None]  # stored conditions, None: unknown
    now: Callable[[], float]  # the serving clock
    on_loop: Callable[[dpb.HeartbeatRequest], None]  # hand a beat's extras to the loop
    answer: dpb.HeartbeatResponse
    period: float
    loop_tick: float  # time.monotonic() of the loop's last tick


class Authorizer(Protocol):
    def __call__(self, context: grpc.ServicerContext) -> str | None: ...


def certificate_authorizer(revocations: Callable[[], Revocations], roles: Collection[Role],
                           cluster_id: str | None) -> Authorizer:
    """The main server's AuthInterceptor checks (channels.check_caller), for
    a sync handler: the caller's node ID, or the call is aborted."""

    def authorize(context: grpc.ServicerContext) -> str | None:
        try:
            return channels.check_caller(context, roles, revocations(),
                                         cluster_id=cluster_id).node_id
        except channels.CallerRefused as refused:
            log.warning("refused heartbeat from %s: %s: %s", context.peer(),
                        refused.code.name, refused.details)
            context.abort(refused.code, refused.details)

    return authorize


class BeatServer:
    """The heartbeat-only server (see the module's docstring)."""

    def __init__(self, source: BeatSource, authorize: Authorizer | None,
                 settings: channels.LinkSettings | None = None, workers: int = WORKERS) -> None:
        self._source = source
        self._authorize = authorize
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="heartbeats"),
            options=channels.server_options(settings or channels.LinkSettings()))
        handler = grpc.unary_unary_rpc_method_handler(
            self._heartbeat, request_deserializer=dpb.HeartbeatRequest.FromString,
            response_serializer=dpb.HeartbeatResponse.SerializeToString)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "swarm.v1.Dispatcher", {"Heartbeat": handler}),))

    def listen(self, address: str, identity: channels.IdentitySource | None, *,
               insecure: bool = False) -> int:
        """Bind (mutual TLS with the controller's identity, or plaintext) and
        start serving; the bound port."""
        if insecure:
            port = self._server.add_insecure_port(address)
        else:
            if identity is None:
                raise ValueError("a TLS heartbeat server needs the controller's identity")
            port = self._server.add_secure_port(address, channels.server_credentials(identity))
        if not port:
            raise OSError(f"cannot listen on {address}")
        self._server.start()
        return port

    def stop(self, grace: float | None = None) -> None:
        self._server.stop(grace).wait()

    def _heartbeat(self, request: dpb.HeartbeatRequest,
                   context: grpc.ServicerContext) -> dpb.HeartbeatResponse:
        certified = self._authorize(context) if self._authorize is not None else None
        view = self._source.beat_view()
        if view is None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "this controller is starting or stopping; try another")
        session = view.sessions.get(request.node_id) if request.node_id else None
        current = None if session is None or session.closed else session.session_id
        refusal = judge_beat(node_id=request.node_id, session_id=request.session_id,
                             certified=certified, current_session=current,
                             loop_silent=time.monotonic() - view.loop_tick, period=view.period)
        if refusal is not None:
            context.abort(refusal.code, refusal.details)
        if not request.node_id:
            return view.answer
        lag = 0.0
        remaining = context.time_remaining()
        if request.HasField("timeout") and remaining is not None:
            lag = max(0.0, request.timeout.ToNanoseconds() / 1e9 - remaining)
        view.ledger.record(request.node_id, view.now() - lag, lag)
        stored = view.node_conditions(request.node_id)
        if request.applied or (stored is not None and list(stored) != list(request.conditions)):
            view.on_loop(request)
        return view.answer
