"""Control-plane convergence: real etcd, a real controller, simulated agents.

    python -m bench.control_plane --nodes 500 --tasks 10000 [--network]

Starts etcd (with fsync, as in production) and one controller in this process,
and N simulated nodes in child processes (real gRPC sessions, fake worker),
--agent-procs of them (default one per 500 nodes), so that the simulated
agents are not what limits the measurement on a machine with few cores.
Times from the `ScaleService` call until every task is stored as RUNNING, and
prints one JSON line. With --network the service is attached to an overlay
network (a /16), so every task also goes through the allocator (NEW ->
PENDING, one address each) and every node is sent the network's peers.
Mutual TLS is on (as in production): the nodes join
with the worker token, each with its own certificate and connection;
--insecure measures plaintext for comparison.

The simulated nodes keep the peers they are sent as task ids per network
(`--peer-ids-only`), without the simulated data plane's conversion and
filing: with --network 500 of them in one process on the controller's cores
would otherwise spend several times the controller's CPU on what 500 hosts
do each on their own.

Besides the time it reports the CPU seconds each side used while converging
(the controller is this process; the agents and etcd are children) and how
many nodes were marked DOWN meanwhile (a live node marked DOWN for missed
heartbeats is the controller falling behind).

--controllers N runs N-1 more controllers as child processes (the one in this
process leads; it is elected before they start): every controller serves
agent sessions, and each agent process is given every controller's address
and opens its nodes' sessions at random ones, so sessions spread over the
controllers while the leader alone decides. `controller_cpu_s` is then the
leader's, `followers_cpu_s` the others' together, and `sessions_on_leader`
how many sessions the leader served.

With --network it also reports the peer traffic: what the controller sent
to agents (Assignments messages: count and serialized bytes, and the bytes
of their network entries) while converging, and for ONE task start after
convergence (the service scaled up by one, counted until the new task is
RUNNING and every node was sent it as ready, then a quiet second): with
every node on the network, that is what one more task costs the fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import IO

from swarm.api import channels, pki
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.ca import CASettings
from swarm.controller.dispatcher.assignments import Assignments
from swarm.controller.dispatcher.sessions import Session
from swarm.controller.server import Controller, ControllerConfig
from swarm.controller.store import Change, EtcdSettings
from swarm.controller.store.cache import WatchCache
from swarm.controller.wire import Encoded
from tests.etcd_server import EtcdServer, free_port
from tests.processes import wait_for_port

PREFIX = "/bench/"


def _is_running(task: object) -> bool:
    return isinstance(task, pb.Task) and task.status.state == pb.RUNNING \
        and task.desired_state == pb.RUNNING


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Traffic:
    """Counts what the dispatcher's Assignments hand to sessions (each one
    message on the wire): messages, serialized bytes, and the bytes of their
    network entries (the peer traffic). Installed by wrapping the two methods
    that make messages, so the controller's code is measured as it is."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.network_bytes = 0
        self.peers_sent = 0
        self._originals = (Assignments.complete, Assignments.incremental)

    def count(self, message: Encoded | None) -> None:
        if message is None:
            return
        self.messages += 1
        self.bytes += len(message.data)
        self.network_bytes += message.network_bytes
        self.peers_sent += message.peers

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.messages, self.bytes, self.network_bytes, self.peers_sent

    def install(self) -> None:
        complete, incremental = self._originals

        def counted_complete(assignments: Assignments, session: Session) -> Encoded:
            message = complete(assignments, session)
            self.count(message)
            return message

        def counted_incremental(assignments: Assignments, session: Session
                                ) -> Encoded | None:
            message = incremental(assignments, session)
            self.count(message)
            return message

        Assignments.complete = counted_complete  # type: ignore[method-assign,assignment]
        Assignments.incremental = counted_incremental  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        Assignments.complete, Assignments.incremental = self._originals  # type: ignore[method-assign]



def _traffic_fields(prefix: str, before: tuple[int, int, int, int],
                    after: tuple[int, int, int, int]) -> dict[str, int]:
    names = ("messages", "bytes", "network_bytes", "peers")
    return {f"{prefix}_{name}": a - b for name, a, b in zip(names, after, before, strict=True)}


async def _one_task_start(control: cgrpc.ControlAsyncStub, cache: WatchCache, service_id: str,
                          tasks: int, traffic: Traffic) -> dict[str, object]:
    """The traffic of scaling the service up by one: from a quiet second
    (what converging left pending has gone out), counted until the new task
    is RUNNING and nothing was sent for half a second (the peer deltas that
    follow its RUNNING status have gone out)."""
    await _quiet(traffic, 1.0, 30.0)
    known = set(cache.tasks)
    before = traffic.snapshot()
    await control.ScaleService(cpb.ScaleServiceRequest(ref=service_id, replicas=tasks + 1))
    deadline = time.monotonic() + 60
    while not any(_is_running(t) for task_id, t in cache.tasks.items() if task_id not in known):
        if time.monotonic() > deadline:
            return {"one_task_start_error": "the extra task did not start within 60 s"}
        await asyncio.sleep(0.02)
    await _quiet(traffic, 0.5, 30.0)
    return dict(_traffic_fields("one_task_start", before, traffic.snapshot()))


async def _quiet(traffic: Traffic, seconds: float, limit: float) -> None:
    """Until nothing was sent for `seconds` (or `limit` passed)."""
    last, quiet_since = traffic.snapshot(), time.monotonic()
    give_up = quiet_since + limit
    while time.monotonic() - quiet_since < seconds and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
        now = traffic.snapshot()
        if now != last:
            last, quiet_since = now, time.monotonic()


def _sessions_lost(log: bytes) -> dict[str, int]:
    """From the agents' log: sessions that ended (a failed call, or an
    open that got no first message in time), and calls a slow controller
    answered past their deadline with the session kept."""
    lines = log.splitlines()
    return {
        "agent_sessions_lost": sum((b"session with" in line and b" failed: " in line)
                                   or b"accepted a session but sent nothing" in line
                                   for line in lines),
        "agent_slow_answers": sum(b"is slow to answer" in line for line in lines),
    }


def _agent_groups(nodes: int, processes: int) -> list[int]:
    """How many simulated nodes each agent process runs (as even as can be)."""
    processes = max(1, min(processes, nodes))
    return [nodes // processes + (i < nodes % processes) for i in range(processes)]


async def _watch_loop(controller: Controller, done: asyncio.Event,
                      tick: float = 0.05) -> tuple[float, int]:
    """Until done: the longest the event loop ran late (a sleep of `tick` that
    took longer), and how many times the controller stopped leading."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    losses = 0
    leadership = controller.leadership
    leading = leadership is not None and leadership.is_leader
    while not done.is_set():
        before = loop.time()
        await asyncio.sleep(tick)
        worst = max(worst, loop.time() - before - tick)
        now_leading = leadership is not None and leadership.is_leader
        losses += leading and not now_leading
        leading = now_leading
    return worst, losses


def _start_follower(etcd: EtcdServer, kek_file: str, insecure: bool,
                    log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """Another controller of the cluster, as a child process; its address."""
    port = free_port()
    security = ["--insecure"] if insecure else [
        "--kek-file", kek_file, "--join-listen", f"127.0.0.1:{free_port()}",
        "--join-rate", "1000000"]
    process = subprocess.Popen(
        [sys.executable, "-m", "swarm.controller.main", "--listen", f"127.0.0.1:{port}",
         "--etcd", etcd.endpoint, "--prefix", PREFIX, "--log-level", "WARNING", *security],
        stdout=log, stderr=subprocess.STDOUT)
    return process, f"127.0.0.1:{port}"



async def run(nodes: int, tasks: int, fsync: bool, network: bool = False,
              insecure: bool = False, agent_procs: int = 0,
              timeout: float = 600.0, controllers: int = 1,
              agent_log_path: str = "") -> dict[str, object]:
    etcd = EtcdServer.start(fsync=fsync)
    agents: list[subprocess.Popen[bytes]] = []
    followers: list[subprocess.Popen[bytes]] = []
    kek = pki.generate_kek()
    traffic = Traffic()
    traffic.install()
    controller = Controller(ControllerConfig(
        listen="127.0.0.1:0", etcd=EtcdSettings(endpoints=(etcd.endpoint,)), prefix=PREFIX,
        insecure=insecure,
        # One address joins every node: no per-peer join limit here.
        ca=CASettings(kek=kek, join_rate=1e6, join_burst=1_000_000)))
    secrets_dir = tempfile.TemporaryDirectory(prefix="bench-control-plane-")
    try:
        await controller.start()
        addr = f"127.0.0.1:{controller.port}"
        addrs = [addr]
        with (open(agent_log_path, "w+b") if agent_log_path else  # noqa: ASYNC230
              tempfile.TemporaryFile()) as agent_log:
            if controllers > 1:
                leadership = controller.leadership
                assert leadership is not None
                while not leadership.is_leader:  # this one leads: elected before the others start
                    await leadership.changed.wait()
                kek_file = os.path.join(secrets_dir.name, "kek")
                fd = os.open(kek_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(kek + b"\n")
                for _ in range(controllers - 1):
                    process, follower_addr = _start_follower(etcd, kek_file, insecure, agent_log)
                    followers.append(process)
                    addrs.append(follower_addr)
                for process, follower_addr in zip(followers, addrs[1:], strict=True):
                    port = int(follower_addr.rsplit(":", 1)[1])
                    await asyncio.to_thread(wait_for_port, port, process, 30.0)
            security = ["--insecure"] if insecure else [
                "--join-token", str(controller.pki.token(pki.Role.WORKER)),
                "--join-addr", controller.join_addr]
            groups = _agent_groups(nodes, agent_procs or -(-nodes // 500))
            given = [arg for a in addrs for arg in ("--controller", a)]
            for index, count in enumerate(groups):
                agents.append(subprocess.Popen(  # noqa: ASYNC220 - long-lived children
                    [sys.executable, "-m", "swarm.agent.simulated", *given,
                     "--nodes", str(count), "--hostname-prefix", f"sim{index}",
                     "--peer-ids-only", *security],
                    stdout=agent_log, stderr=subprocess.STDOUT))
            cache = controller.store.cache
            joining = time.monotonic()
            deadline = joining + 120 + nodes / 20
            # Counting thousands of nodes ten times a second showed up in the
            # controller's profile (this is its process): look less often then.
            poll = 0.1 if nodes <= 500 else 0.5
            while sum(n.status.state == pb.NodeStatus.READY for n in cache.nodes.values()) < nodes:
                if time.monotonic() > deadline or any(a.poll() is not None for a in agents):
                    raise RuntimeError("simulated nodes did not all become ready")
                await asyncio.sleep(poll)
            ready_s = round(time.monotonic() - joining, 1)

            identity = None if insecure else controller.pki.admin_identity()
            async with channels.client_channel(addr, identity, insecure=insecure) as channel:
                control = cgrpc.ControlStub(channel)
                spec = pb.ServiceSpec(name="bench", replicated=pb.ReplicatedService(replicas=0))
                spec.task.container.image = "busybox:latest"
                if network:
                    net_spec = pb.NetworkSpec(name="bench", ipam=pb.IPAMConfig(
                        subnet="10.128.0.0/16"))
                    await control.CreateNetwork(cpb.CreateNetworkRequest(spec=net_spec))
                    spec.task.networks.add(target="bench")
                service = (await control.CreateService(cpb.CreateServiceRequest(spec=spec))).service

                running = 0
                marked_down = 0
                done = asyncio.Event()

                def on_change(change: Change) -> None:
                    nonlocal running, marked_down
                    if isinstance(change.new, pb.Node):
                        down = pb.NodeStatus.DOWN
                        marked_down += change.new.status.state == down and (
                            not isinstance(change.old, pb.Node) or change.old.status.state != down)
                        return
                    running += _is_running(change.new) - _is_running(change.old)
                    if running >= tasks:
                        done.set()

                cache.subscribe(on_change)
                stalls = asyncio.create_task(_watch_loop(controller, done), name="loop-stalls")
                traffic_before = traffic.snapshot()
                cpu_before = time.process_time()
                others_before = [_cpu_seconds(a.pid) for a in agents], _cpu_seconds(etcd.process.pid)
                followers_before = [_cpu_seconds(f.pid) for f in followers]
                started = time.perf_counter()
                await control.ScaleService(cpb.ScaleServiceRequest(ref=service.id, replicas=tasks))
                try:
                    await asyncio.wait_for(done.wait(), timeout=timeout)
                except TimeoutError:
                    stalls.cancel()
                    raise
                seconds = time.perf_counter() - started
                controller_cpu = time.process_time() - cpu_before
                agents_cpu = sum(_cpu_seconds(a.pid) - before
                                 for a, before in zip(agents, others_before[0], strict=True))
                etcd_cpu = _cpu_seconds(etcd.process.pid) - others_before[1]
                max_stall, leader_losses = await stalls
                followers_cpu = sum(_cpu_seconds(f.pid) - before
                                    for f, before in zip(followers, followers_before, strict=True))
                assert controller.dispatcher is not None
                on_leader = controller.dispatcher.session_count()
                converged = _traffic_fields("converge", traffic_before, traffic.snapshot())
                one_start: dict[str, object] = {}
                if network:
                    one_start = await _one_task_start(control, cache, service.id, tasks, traffic)
            per_node = [len(cache.tasks_by_node.get(n, {})) for n in cache.nodes]
            agent_log.seek(0)
            lost = _sessions_lost(agent_log.read())
            return {
                "bench": "control_plane",
                "nodes": nodes,
                "tasks": tasks,
                "seconds_to_converge": round(seconds, 3),
                "tasks_per_s": round(tasks / seconds, 1),
                "tasks_per_node_min": min(per_node),
                "tasks_per_node_max": max(per_node),
                # CPU each side used while converging: the controller is this
                # process; the agents and etcd run on the same cores.
                "controller_cpu_s": round(controller_cpu, 3),
                "agents_cpu_s": round(agents_cpu, 3),
                "etcd_cpu_s": round(etcd_cpu, 3),
                "controllers": controllers,
                "followers_cpu_s": round(followers_cpu, 3),
                "sessions_on_leader": on_leader,
                "agent_processes": len(agents),
                "nodes_marked_down": marked_down,
                # The longest the controller's event loop did not run (a keep-alive,
                # heartbeat or session waits that long), and how often it lost the lease.
                "loop_max_stall_s": round(max_stall, 3),
                # The longest a heartbeat waited in the leader before it was handled.
                "heartbeat_max_lag_s": round(controller.dispatcher.heartbeat_max_lag(), 3),
                "heartbeat_period_s": controller.dispatcher.heartbeat_period(),
                # The longest a heartbeat waited in the heartbeat server (off the
                # loop: controller/dispatcher/beatserver.py).
                "beat_server_max_lag_s": round(controller.dispatcher.beat_server_max_lag(), 3),
                "beat_server_beats": controller.dispatcher.beat_server_beats(),
                "beat_server_max_gap_s": round(controller.dispatcher.beat_server_max_gap(), 3),
                # Sessions the agents gave up from their start to convergence (the
                # controller failed, refused, or was too slow to answer).
                **lost,
                # The longest the node monitor's probe took through the queue
                # (nodes are judged only up to what it has seen handled).
                "probe_max_wait_s": round(controller.dispatcher.probe_max_wait(), 3),
                "leader_losses": leader_losses,
                "orchestrator_pass_s": round(controller.orchestrator.pass_seconds, 3),
                "scheduler_pass_s": round(controller.scheduler.pass_seconds, 3),
                "seconds_to_ready": ready_s,
                "orchestrator_passes": controller.orchestrator.passes,
                "scheduler_passes": controller.scheduler.passes,
                "network": network,
                **converged,
                **one_start,
                "allocator_passes": controller.allocator.passes,
                "etcd_fsync": fsync,
                "mtls": not insecure,
                "controller_max_rss_mib": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
    finally:
        traffic.uninstall()
        for agent in agents:
            if agent.poll() is None:
                agent.terminate()
        for agent in agents:
            agent.wait(timeout=30)
        for follower in followers:
            if follower.poll() is None:
                follower.terminate()
        for follower in followers:
            follower.wait(timeout=30)
        await controller.stop()
        etcd.stop()
        secrets_dir.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--no-fsync", action="store_true",
                        help="run etcd with --unsafe-no-fsync (not how production runs)")
    parser.add_argument("--network", action="store_true",
                        help="attach the service to an overlay network (IPAM and peers)")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC instead of mutual TLS (for comparison)")
    parser.add_argument("--agent-procs", type=int, default=0,
                        help="processes to run the simulated nodes in (default: one per 500)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for convergence before giving up")
    parser.add_argument("--controllers", type=int, default=1,
                        help="controllers serving the agents' sessions; this process's leads, "
                             "the others are child processes (default 1)")
    parser.add_argument("--agent-log", default="",
                        help="keep the simulated agents' and followers' output in this file")
    args = parser.parse_args()
    if args.controllers < 1:
        parser.error("--controllers: must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(asyncio.run(run(args.nodes, args.tasks, not args.no_fsync, args.network,
                                     args.insecure, args.agent_procs, args.timeout,
                                     args.controllers, args.agent_log))))


if __name__ == "__main__":
    main()
