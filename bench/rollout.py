"""Rollouts under client load: how many requests fail while a service is
updated, scaled down or moved off a drained node, and how long each takes.

A local cluster of 3 hosts (`swarmctl dev up` machinery: network namespaces,
real agents, runc containers). On it: an overlay network `front`; a service
`web` (the demo image's httpd, 3 replicas, start-first updates, published
on port 8080 through the routing mesh, on `front`); a service `client` (one
task on host 1, on `front`) whose network namespace is where the VIP load
runs from. During each scenario a bounded client load (bench.load) sends
`GET /` on a new connection every ~30 ms to port 8080 of every host's
address (from this, the root, namespace, as deploy/demo.sh fetches) and to
web's VIP from the client task's namespace (through its nftables load
balancer, as the container's own connections go).

Scenarios (in this order, each waiting until the tasks it stopped have
stopped, so their stop happened under load):
  start_first_update   service update web --env-add V=1        (3 replicas)
  stop_first_update    service update web --update-order stop-first --env-add V=2
  rollback             service update web --rollback
  scale_down           service scale web=1
  one_replica_update   service update web --update-order start-first --env-add V=3
  node_drain           (scale web=3 first) node update --availability drain HOST3
  failing_update       service update web --health-cmd false ... --update-failure-action
                       rollback (start-first, parallelism 1): exits 3, rolled back;
                       `bad_tasks_started` counts the tasks of the failing spec seen
  rebalance            (a host drained and emptied of web first) node update
                       --availability active HOST; service rebalance web

    python -m bench.rollout [--drain-timeout 2s] [--compare] [--health] [--verbose]
    python -m bench.rollout --example [--drain-timeout 0s] [--start-interval 1s]

prints ONE JSON line: failed_requests per scenario and in total, requests in
total, each scenario's duration (`seconds`: from the command until the
service has converged, an update's monitor period included, and every task
it stopped has stopped; `settled_seconds`: until web's last task state
change), the failing update's `bad_tasks_started`, exit code and whether it
was rolled back, and the rebalance's tasks per host before and after. With
--compare the updates run a second time with --drain-timeout 0s (no wait
for the drain: the agent stops a task as soon as it is told) to compare
update durations. With --health web has a health check (1 s interval), so
a new task is a backend only once healthy, and the health gate waits for
that before stopping an old task or moving to the next slot. With
--example it measures what issue 10 did instead: the example web stack
(deploy/examples/web.yaml) scaled to 5, a client every 50 ms on port 8080
of every host, one good update; --drain-timeout then replaces the
example's x-drain-timeout, --start-interval its health check's start_interval.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
from typer.testing import CliRunner

from bench.load import Load, Tally, Target
from swarm.api.healthcheck import is_up
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.main import app
from swarm.host.netns import NETNS_DIR

SUBNET = "192.168.149.0/24"  # the underlay; distinct from the tests' and other benches'
PORT = 8080
CONVERGE = "120s"
# The demo image's web server, exiting at once on SIGTERM as real servers
# do (nginx, gunicorn, node...). The demo's httpd alone runs as PID 1, which
# ignores SIGTERM: it would serve on through its whole stop grace period and
# hide what happens when a task stops while it is still sent requests.
SERVER = ("sh", "-c", "trap 'exit 0' TERM; /bin/demo-web & wait")


class RolloutError(Exception):
    pass


def swarmctl(*args: str) -> str:
    """swarmctl in this process (the cluster's context); its output, or
    RolloutError with it."""
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        raise RolloutError(f"swarmctl {' '.join(args)}: exit {result.exit_code}: "
                           f"{result.output.strip()}")
    return result.output


def swarmctl_status(*args: str) -> tuple[int, str]:
    """swarmctl in this process: its exit code and its output (stdout, then
    stderr), for a command whose failure is the point."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, (result.stdout + result.stderr).strip()


def tasks(service: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = json.loads(swarmctl("service", "ps", service, "-o", "json"))
    return found


def _state(task: dict[str, object], key: str) -> str:
    status = task.get("status")
    if key == "desired_state":
        return str(task.get("desired_state", ""))
    return str(status.get("state", "")) if isinstance(status, dict) else ""


_ENDED = {"COMPLETE", "SHUTDOWN", "FAILED", "REJECTED", "ORPHANED", "REMOVE"}


def wait_stopped(service: str, timeout: float = 60.0) -> None:
    """Until no task of the service that was told to stop still runs."""
    deadline = time.monotonic() + timeout
    while True:
        stopping = [t for t in tasks(service) if _state(t, "desired_state") != "RUNNING"
                    and _state(t, "state") not in _ENDED]
        if not stopping:
            return
        if time.monotonic() > deadline:
            raise RolloutError(f"{len(stopping)} tasks of {service} still stopping "
                               f"after {timeout:.0f}s")
        time.sleep(0.2)


@dataclass
class Stage:
    """The cluster and what the scenarios need of it."""

    state: cluster.ClusterState
    hosts: list[str]  # every host's underlay address
    vip: str  # web's VIP on `front`
    client_netns: str  # the client task's network namespace (a path)
    image: str
    extra_service_args: tuple[str, ...] = ()
    drained: str = ""  # the node node_drain drains

    def targets(self) -> list[Target]:
        return [*(Target(host, PORT, label=f"mesh {host}") for host in self.hosts),
                Target(self.vip, 80, self.client_netns, label="vip")]

    def host_name(self, host: str) -> str:
        return f"{self.state.name}-{host}"


def _task_netns(task_id: str) -> str:
    (name,) = [n for n in os.listdir(NETNS_DIR) if n.startswith("swarm-") and n.endswith(task_id)]
    return os.path.join(NETNS_DIR, name)


def prepare(state: cluster.ClusterState, *, service_args: tuple[str, ...] = ()) -> Stage:
    """The network, the client and the web service; waits until web answers
    everywhere."""
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("network", "create", "front")
    swarmctl("service", "create", "client", "--image", image, "--network", "front",
             "--constraint", f"node.hostname=={state.name}-h1", "--timeout", CONVERGE)
    swarmctl("service", "create", "web", "--image", image, "--replicas", "3", "--network",
             "front", "--publish", f"{PORT}:80", "--env", "TASK_NAME={{.Task.Name}}",
             "--env", "NODE_NAME={{.Node.Hostname}}", "--update-order", "start-first",
             "--update-parallelism", "1",
             "--stop-grace-period", "5s", *service_args, "--timeout", CONVERGE, "--", *SERVER)
    (client,) = tasks("client")
    (web,) = json.loads(swarmctl("service", "inspect", "web", "-o", "json"))
    vip = web["endpoint"]["virtual_ips"][0]["addr"].split("/")[0]
    stage = Stage(state, [n.address.split("/")[0] for n in state.nodes], vip,
                  _task_netns(str(client["id"])), image, service_args)
    # Every target answers before any load is measured.
    for target in stage.targets():
        probe = Load([target], interval=0.2, max_seconds=60, max_requests=300)
        probe.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tally = probe.tallies[target.name]
            if tally.requests > tally.failures:
                break
            time.sleep(0.1)
        probe.stop()
        if probe.tallies[target.name].requests == probe.tallies[target.name].failures:
            raise RolloutError(f"{target.name} never answered: {probe.report()}")
    return stage


# A scenario may return figures of its own (Outcome.extra).
Scenario = Callable[[Stage], dict[str, object] | None]


def start_first_update(stage: Stage) -> None:
    swarmctl("service", "update", "web", "--update-order", "start-first", "--env-add", "V=1",
             "--timeout", CONVERGE)


def stop_first_update(stage: Stage) -> None:
    swarmctl("service", "update", "web", "--update-order", "stop-first", "--env-add", "V=2",
             "--timeout", CONVERGE)


def rollback(stage: Stage) -> None:
    """Back to the spec before the last update (a rollback replaces tasks as
    an update does, with the rollback config)."""
    swarmctl("service", "update", "web", "--rollback", "--timeout", CONVERGE)


def scale_down(stage: Stage) -> None:
    swarmctl("service", "scale", "web=1", "--timeout", CONVERGE)


def one_replica_update(stage: Stage) -> None:
    swarmctl("service", "update", "web", "--update-order", "start-first", "--env-add", "V=3",
             "--timeout", CONVERGE)


def node_drain(stage: Stage) -> None:
    swarmctl("node", "update", "--availability", "drain", stage.drained)
    wait_running("web", 3)


def health_update(stage: Stage) -> dict[str, object]:
    """start-first to a spec with a health check (HEALTH): each new task is a
    backend, and its old task is stopped, only once it is healthy. Not one
    of SCENARIOS (bench.rollout --health runs them all with a check); the
    e2e suite's cheap health-gated case. The health of web's live tasks."""
    swarmctl("service", "update", "web", "--update-order", "start-first", *HEALTH,
             "--env-add", f"H={secrets.token_hex(2)}", "--timeout", CONVERGE)
    wait_stopped("web")
    return {"health": sorted(_health(t) for t in tasks("web")
                             if _state(t, "desired_state") == "RUNNING")}


def _health(task: dict[str, object]) -> str:
    status = task.get("status")  # JSON leaves the default (0) value out
    return str(status.get("health", "NO_HEALTHCHECK")) if isinstance(status, dict) else ""


def wait_running(service: str, count: int, timeout: float = 120.0) -> None:
    """Until `count` tasks of the service are wanted and RUNNING."""
    deadline = time.monotonic() + timeout
    while sum(_state(t, "desired_state") == "RUNNING" and _state(t, "state") == "RUNNING"
              for t in tasks(service)) < count:
        if time.monotonic() > deadline:
            raise RolloutError(f"fewer than {count} tasks of {service} running "
                               f"after {timeout:.0f}s")
        time.sleep(0.2)


def _three_replicas(stage: Stage) -> None:
    swarmctl("service", "scale", "web=3", "--timeout", CONVERGE)
    wait_stopped("web")


def _before_node_drain(stage: Stage) -> None:
    _three_replicas(stage)
    # A node with a web task, not the client's (host 1).
    nodes = {str(n["id"]): str(n["description"]["hostname"])
             for n in json.loads(swarmctl("node", "ls", "-o", "json"))}
    stage.drained = sorted(nodes[str(t["node_id"])] for t in tasks("web")
                           if _state(t, "desired_state") == "RUNNING"
                           and nodes[str(t["node_id"])] != stage.host_name("h1"))[0]


def _after_node_drain(stage: Stage) -> None:
    swarmctl("node", "update", "--availability", "active", stage.drained)


class TaskWatcher:
    """Every task of a service the controller lists, polled every 100 ms from a
    thread while a command runs in this one (a bad task lives for a few
    seconds, and the task history may reap it afterwards)."""

    def __init__(self, state: cluster.ClusterState, service_id: str) -> None:
        self.state, self.service_id = state, service_id
        self.seen: dict[str, pb.Task] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task watcher", daemon=True)

    def _run(self) -> None:
        with cluster.control_channel(self.state) as channel:
            stub = cgrpc.ControlStub(channel)
            while not self._stop.is_set():
                try:
                    self.seen.update((t.id, t) for t in _list_tasks(stub, self.service_id))
                except grpc.RpcError:  # a poll missed is retried; counted
                    self.errors += 1
                self._stop.wait(0.1)

    def __enter__(self) -> TaskWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(20)


def _list_tasks(stub: cgrpc.ControlStub, service_id: str) -> list[pb.Task]:
    request = cpb.ListTasksRequest()
    request.filters.service_ids.append(service_id)
    return list(stub.ListTasks(request, timeout=10).tasks)


def ready(task: pb.Task) -> bool:
    """Wanted, RUNNING, and healthy if its spec (or image) has a health check."""
    return task.desired_state == pb.RUNNING and is_up(task.status)


# The failing update: a health check that always fails, rolled back
# on the first failure (start-first, one slot at a time).
FAILING = ("--health-cmd", "false", "--health-interval", "1s", "--health-retries", "2",
           "--health-start-period", "0s", "--update-failure-action", "rollback",
           "--update-order", "start-first", "--update-parallelism", "1")


def failing_update(stage: Stage) -> dict[str, object]:
    """A failing update rolled back: swarmctl's exit code and line, the bad
    tasks started, and the service's state once every stopped task stopped."""
    with cluster.control_channel(stage.state) as channel:
        stub = cgrpc.ControlStub(channel)
        before = stub.GetService(cpb.GetRequest(ref="web"), timeout=10).service
        with TaskWatcher(stage.state, before.id) as watcher:
            code, output = swarmctl_status("service", "update", "web", *FAILING,
                                           "--timeout", CONVERGE)
        wait_stopped("web")
        after = stub.GetService(cpb.GetRequest(ref="web"), timeout=10).service
        live = [t for t in _list_tasks(stub, before.id) if t.desired_state == pb.RUNNING]
    bad = [t for t in watcher.seen.values()
           if list(t.spec.container.healthcheck.test) == ["CMD-SHELL", "false"]]
    return {"exit_code": code, "output": output, "bad_tasks_started": len(bad),
            "parallelism": after.spec.update.parallelism,
            "back_on_old_spec": after.spec == before.spec,
            "update_state": pb.UpdateStatus.State.Name(after.update_status.state),
            "replicas": after.spec.replicated.replicas,
            "ready": sum(ready(t) and t.spec == before.spec.task for t in live),
            "live": len(live)}


def web_per_host(stage: Stage) -> dict[str, int]:
    """Running web tasks per host (every host listed, also those with none)."""
    nodes = {str(n["id"]): str(n["description"]["hostname"])
             for n in json.loads(swarmctl("node", "ls", "-o", "json"))}
    counts = dict.fromkeys(sorted(nodes.values()), 0)
    for task in tasks("web"):
        if _state(task, "desired_state") == "RUNNING" and _state(task, "state") == "RUNNING":
            counts[nodes[str(task["node_id"])]] += 1
    return counts


def _before_rebalance(stage: Stage) -> None:
    """Three replicas on two hosts, the third drained and empty: the host the
    rebalance will add (node_drain's, when it ran before)."""
    swarmctl("service", "scale", "web=3", "--timeout", CONVERGE)
    wait_stopped("web")
    if not stage.drained:
        _before_node_drain(stage)
    swarmctl("node", "update", "--availability", "drain", stage.drained)
    wait_running("web", 3)
    wait_stopped("web")


def rebalance(stage: Stage) -> dict[str, object]:
    """The host comes back (active) and web is rebalanced onto it."""
    swarmctl("node", "update", "--availability", "active", stage.drained)
    before = web_per_host(stage)
    output = swarmctl("service", "rebalance", "web", "--timeout", CONVERGE)
    wait_stopped("web")
    return {"before": before, "after": web_per_host(stage), "output": output.strip()}


SCENARIOS: dict[str, Scenario] = {
    "start_first_update": start_first_update,
    "stop_first_update": stop_first_update,
    "rollback": rollback,
    "scale_down": scale_down,
    "one_replica_update": one_replica_update,
    "node_drain": node_drain,
    "failing_update": failing_update,
    "rebalance": rebalance,
}
SETUP: dict[str, Callable[[Stage], None]] = {"node_drain": _before_node_drain,
                                              "failing_update": _three_replicas,
                                              "rebalance": _before_rebalance}
TEARDOWN: dict[str, Callable[[Stage], None]] = {"node_drain": _after_node_drain}


_DRAINED = re.compile(r"task (\w+) \(web\): drained from every node after ([\d.]+)s")
_CUT_SHORT = re.compile(r"task (\w+) \(web\): not confirmed drained")


def drains(state: cluster.ClusterState) -> tuple[dict[str, float], set[str]]:
    """From the agents' logs: web's tasks drained before their stop signal
    (confirmed by every node: task -> seconds waited) and those stopped by
    the drain timeout instead."""
    confirmed: dict[str, float] = {}
    cut_short: set[str] = set()
    for daemon in state.daemons:
        if not daemon.role.startswith("agent"):
            continue
        text = Path(daemon.log).read_text(errors="replace")
        confirmed.update((m[1], float(m[2])) for m in _DRAINED.finditer(text))
        cut_short.update(m[1] for m in _CUT_SHORT.finditer(text))
    return confirmed, cut_short


@dataclass
class Outcome:
    name: str
    tally: Tally
    seconds: float  # the scenario's command until converged and stopped
    details: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    # The command until web's last task state change (the last new task up
    # or the last old one stopped): `seconds` without the wait an update
    # adds for its monitor period after its last new task came up.
    settled: float | None = None


def run_scenario(stage: Stage, name: str, scenario: Scenario, *, interval: float = 0.03,
                 settle: float = 1.0, max_seconds: float = 150.0) -> Outcome:
    """The scenario under load: load for `settle` seconds before, the
    scenario (its command until converged), until every task it stopped has
    stopped, `settle` seconds after."""
    if name in SETUP:
        SETUP[name](stage)
    load = Load(stage.targets(), interval=interval, max_seconds=max_seconds,
                max_requests=int(max_seconds / interval) + 1)
    with load:
        time.sleep(settle)
        began, began_at = time.monotonic(), time.time()
        extra = scenario(stage) or {}
        wait_stopped("web")
        seconds = time.monotonic() - began
        last = last_change("web")
        time.sleep(settle)
    if name in TEARDOWN:
        TEARDOWN[name](stage)
    settled = last - began_at if last is not None and last >= began_at else None
    return Outcome(name, load.total(), seconds, load.report(), extra, settled)


def last_change(service: str) -> float | None:
    """When (wall clock, as the agents stamp task states) the service's latest
    task state change happened."""
    stamps = [datetime.fromisoformat(str(status["timestamp"])).timestamp()
              for task in tasks(service)
              if isinstance(status := task.get("status"), dict) and "timestamp" in status]
    return max(stamps, default=None)


def outcome_of(outcomes: list[Outcome], name: str) -> Outcome:
    (outcome,) = [o for o in outcomes if o.name == name]
    return outcome


def drain_timeout(stage: Stage, value: str) -> None:
    """The web service's drain bound (no task replaced: not a task change)."""
    swarmctl("service", "update", "web", "--drain-timeout", value, "--timeout", CONVERGE)


HEALTH = ("--health-cmd", "wget -q -O /dev/null http://127.0.0.1/", "--health-interval", "1s",
          "--health-timeout", "2s", "--health-retries", "3")


def run(nodes: int, drain: str | None, compare: bool, verbose: bool,
        health: bool = False) -> dict[str, object]:
    name = "r" + secrets.token_hex(3)
    # The cluster writes a swarmctl context: keep it away from the operator's.
    config_home = os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bench-config-")
    try:
        state = cluster.up(name, nodes, SUBNET, say=lambda _: None)
        service_args = (*(("--drain-timeout", drain) if drain else ()),
                        *(HEALTH if health else ()))
        stage = prepare(state, service_args=service_args)
        outcomes = []
        for scenario_name, scenario in SCENARIOS.items():
            outcome = run_scenario(stage, scenario_name, scenario)
            outcomes.append(outcome)
            if verbose:
                print(f"{scenario_name}: {outcome.seconds:.1f}s (settled "
                      f"{outcome.settled}): {outcome.details}"
                      + (f" {outcome.extra}" if outcome.extra else ""), file=sys.stderr)
        result: dict[str, object] = {
            "bench": "rollout", "nodes": nodes, "health_check": health,
            "failed_requests": {o.name: o.tally.failures for o in outcomes},
            "failed_requests_total": sum(o.tally.failures for o in outcomes),
            "requests": sum(o.tally.requests for o in outcomes),
            "seconds": {o.name: round(o.seconds, 2) for o in outcomes},
            "settled_seconds": {o.name: round(o.settled, 2) for o in outcomes
                                if o.settled is not None},
            "failure_reasons": {o.name: dict(o.tally.reasons) for o in outcomes
                                if o.tally.failures},
        }
        failing, moved = outcome_of(outcomes, "failing_update"), outcome_of(outcomes, "rebalance")
        result.update({
            "bad_tasks_started": failing.extra["bad_tasks_started"],
            "failing_update_exit_code": failing.extra["exit_code"],
            "failing_update_rolled_back": failing.extra["back_on_old_spec"],
            "failed_requests_failing_update": failing.tally.failures,
            "failed_requests_rebalance": moved.tally.failures,
            # Running web tasks per host before and after the rebalance.
            "rebalance_per_host": [moved.extra["before"], moved.extra["after"]],
        })
        if compare:
            drain_timeout(stage, "0s")
            compared = {}
            for scenario_name in ("start_first_update", "stop_first_update"):
                outcome = run_scenario(stage, scenario_name, _again(scenario_name))
                compared[scenario_name] = {
                    "seconds": round(outcome.seconds, 2),
                    "settled_seconds": None if outcome.settled is None
                    else round(outcome.settled, 2),
                    "failed_requests": outcome.tally.failures}
                if verbose:
                    print(f"{scenario_name} without drain: {outcome.seconds:.1f}s: "
                          f"{outcome.details}", file=sys.stderr)
            result["without_drain"] = compared
        waits, cut_short = drains(state)
        ordered = sorted(waits.values())
        result.update({
            # Tasks that waited for every node's confirmation before their
            # stop signal, how long, and those the drain timeout stopped.
            "drained_tasks": len(ordered),
            "drain_wait_p50_ms": round(ordered[len(ordered) // 2] * 1000) if ordered else None,
            "drain_wait_max_ms": round(ordered[-1] * 1000) if ordered else None,
            "drain_timeouts": len(cut_short),
            "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)})
        return result
    finally:
        try:
            cluster.down(name, say=lambda _: None)
        finally:
            shutil.rmtree(config_home, ignore_errors=True)


EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "web.yaml"


def run_example(drain: str | None, verbose: bool,
                start_interval: str | None = None) -> dict[str, object]:
    """The issue's own measurement: the example web stack (web_web, start-first,
    a health check, its demo httpd) scaled to 5, a client every 50 ms on port
    8080 of every host, and a good update (`--env-add V=2`)."""
    name = "r" + secrets.token_hex(3)
    config_home = os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bench-config-")
    stack = Path(config_home) / "web.yaml"
    text = EXAMPLE.read_text()
    if drain is not None:
        text = re.sub(r"x-drain-timeout: \S+", f"x-drain-timeout: {drain}", text)
    if start_interval is not None:
        # Probes this often during the start period (docker's default 5 s):
        # how soon a new task can be found healthy, which a health-gated
        # update waits for, slot by slot.
        text = re.sub(r"start_interval: \S+", f"start_interval: {start_interval}", text)
    stack.write_text(text)
    try:
        state = cluster.up(name, 3, SUBNET, say=lambda _: None)
        os.environ["SWARM_REGISTRY"] = state.registry
        swarmctl("apply", "-f", str(stack), "--timeout", CONVERGE)
        swarmctl("service", "scale", "web_web=5", "--timeout", CONVERGE)
        targets = [Target(n.address.split("/")[0], PORT, label=f"mesh {n.host}")
                   for n in state.nodes]
        time.sleep(12)  # the example's health checks (10 s interval) make the tasks ready
        load = Load(targets, interval=0.05, max_seconds=300, max_requests=6000)
        with load:
            time.sleep(1)
            began = time.monotonic()
            swarmctl("service", "update", "web_web", "--env-add", "V=2", "--timeout", "240s")
            wait_stopped("web_web")
            seconds = time.monotonic() - began
            time.sleep(1)
        if verbose:
            print(f"example update: {seconds:.1f}s: {load.report()}", file=sys.stderr)
        total = load.total()
        # Connections the routing mesh had no ready backend for (an update
        # that stopped old tasks before new ones were healthy), and backends
        # it could not reach, from the agents' logs.
        logs = [Path(d.log).read_text(errors="replace") for d in state.daemons
                if d.role.startswith("agent")]
        return {"bench": "rollout", "mode": "example_web_stack", "replicas": 5,
                "mesh_no_backend_ready": sum(t.count("no backend ready") for t in logs),
                "mesh_backend_unreachable": sum(t.count("unreachable (") for t in logs),
                "drain_timeout": drain or "2s (the example's)",
                "health_start_interval": start_interval or "1s (the example's)",
                "failed_requests": total.failures, "requests": total.requests,
                "failure_reasons": dict(total.reasons), "seconds": round(seconds, 2),
                "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)}
    finally:
        try:
            cluster.down(name, say=lambda _: None)
        finally:
            shutil.rmtree(config_home, ignore_errors=True)


def _again(name: str) -> Scenario:
    """The update scenario once more (a new environment value: new tasks)."""
    order = "start-first" if name == "start_first_update" else "stop-first"

    def scenario(stage: Stage) -> None:
        swarmctl("service", "update", "web", "--update-order", order, "--env-add",
                 f"AGAIN={secrets.token_hex(2)}", "--timeout", CONVERGE)
    return scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drain-timeout", default=None,
                        help="web's drain bound (default: the service default)")
    parser.add_argument("--compare", action="store_true",
                        help="run the updates again with --drain-timeout 0s")
    parser.add_argument("--health", action="store_true",
                        help="give web a health check (1s interval): new tasks become "
                        "backends only once healthy")
    parser.add_argument("--example", action="store_true",
                        help="instead: the example web stack (5 replicas) and one good "
                        "update, as issue 10 measured it")
    parser.add_argument("--start-interval", default=None,
                        help="with --example: the health check's start interval (default "
                        "the example's 1s; docker's default is 5s)")
    parser.add_argument("--verbose", action="store_true", help="per-scenario lines on stderr")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.rollout: needs root (namespaces, runc)", file=sys.stderr)
        return 2
    try:
        result = run_example(args.drain_timeout, args.verbose, args.start_interval) \
            if args.example \
            else run(3, args.drain_timeout, args.compare, args.verbose, args.health)
    except (RolloutError, cluster.ClusterError) as error:
        print(f"bench.rollout: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
