"""Jobs on a real local cluster: real agents, runc containers and network
namespaces. Each task appends `start T` / `end T` (T: the machine's
/proc/uptime, one clock for every container) to a file in a bind-mounted
directory, so what ran at once is measured from inside the containers:

- a replicated job of 6 completions with max-concurrent 2 never runs more than
  2 at once and ends with 6 COMPLETE tasks; `service create` waits and exits 0;
- a failing job makes `service create` exit 3 with the reason;
- a global job completes once per node, and runs on a host that joins later;
- a scheduled job (`@every 3s`, runs of 4 s) runs at least twice, never two
  runs at once, and counts the runs it skipped.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.dev.daemons import spawn, stop
from swarm.cli.main import app
from tests.e2e.test_dev_cluster import _require_root, swarmctl
from tests.waiting import until

pytestmark = pytest.mark.timeout(300)

SUBNET = "192.168.142.0/24"  # this suite's own underlay (jobs: 192.168.142-143)


@dataclass
class Cluster:
    state: cluster.ClusterState
    image: str
    out: Path  # bind-mounted into every task at /out


@pytest.fixture(scope="module")
def live() -> Iterator[Cluster]:
    _require_root()
    name = "j" + secrets.token_hex(3)
    out = Path(tempfile.mkdtemp(prefix="swarm-jobs-"))
    out.chmod(0o777)
    # A swarmctl context of this suite's own: the machine's one is shared with
    # whatever else brings a local cluster up or down meanwhile.
    env = pytest.MonkeyPatch()
    env.setenv("XDG_CONFIG_HOME", str(out / "config"))
    try:
        state = cluster.up(name, 3, SUBNET, say=lambda _: None,
                           agent_args=("--bind-root", str(out)))
        yield Cluster(state, f"{state.registry}/{cluster.DEMO_IMAGE}:latest", out)
    finally:
        cluster.down(name, say=lambda _: None)  # also when the test failed
        env.undo()
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(autouse=True)
def cluster_context(live: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test talks to the module's cluster (tests/conftest.py gives each test
    a config home of its own, where no context is)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(live.out / "config"))


def recorder(log: str, seconds: float, exit_code: int = 0) -> list[str]:
    """The task's command: note its start and end in /out/LOG."""
    stamp = "$(cut -d' ' -f1 /proc/uptime)"
    return ["--", "sh", "-c", f"echo start {stamp} >> /out/{log}; sleep {seconds}; "
            f"echo end {stamp} >> /out/{log}; exit {exit_code}"]


def most_at_once(path: Path) -> tuple[int, int]:
    """(the most tasks running at once, how many ended), from the start/end lines."""
    events = []
    for line in path.read_text().splitlines():
        kind, at = line.split()
        events.append((float(at), 0 if kind == "end" else 1))  # an end first on a tie
    running = most = ended = 0
    for _, starts in sorted(events):
        running += 1 if starts else -1
        ended += 0 if starts else 1
        most = max(most, running)
    return most, ended


def service(live: Cluster, name: str) -> pb.Service:
    with cluster.control_channel(live.state) as channel:
        return cgrpc.ControlStub(channel).GetService(cpb.GetRequest(ref=name), timeout=10).service


def mount(live: Cluster) -> list[str]:
    return ["--mount", f"type=bind,source={live.out},target=/out"]


def test_replicated_job_runs_6_completions_2_at_a_time(live: Cluster) -> None:
    output = swarmctl("service", "create", "batch", "--image", live.image, "--mode",
                      "replicated-job", "--replicas", "6", "--max-concurrent", "2",
                      "--timeout", "120s", *mount(live), *recorder("batch", 1.5))
    assert "batch: 6/6 completed (0 running) (converged in " in output, output
    most, ended = most_at_once(live.out / "batch")
    assert ended == 6
    assert most == 2, "never more than max-concurrent, and that many at once"
    ps = swarmctl("service", "ps", "batch")
    assert ps.count("Complete") == 12, ps  # desired and current state, 6 tasks
    ls = swarmctl("service", "ls")
    (row,) = [line for line in ls.splitlines() if " batch " in line]
    assert "replicated-job" in row
    assert "0/0 (6/6 completed)" in row
    status = service(live, "batch").job_status
    assert status.state == pb.JobStatus.COMPLETE


def test_a_failing_job_makes_create_exit_3_with_the_reason(live: Cluster) -> None:
    result = CliRunner().invoke(app, [
        "service", "create", "doomed", "--image", live.image, "--mode", "replicated-job",
        "--restart-condition", "none", "--timeout", "60s", *mount(live),
        *recorder("doomed", 0, 3)])
    assert result.exit_code == 3, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "doomed" in line
    assert "non-zero exit (3)" in line


def test_global_job_completes_once_per_node_and_on_a_host_that_joins(live: Cluster) -> None:
    state = live.state
    # The third host leaves the cluster (its agent stopped, its node removed) ...
    old = next(d for d in state.daemons if d.role == "agent h3")
    assert stop(old)
    state.daemons.remove(old)
    cluster.save_state(state)
    swarmctl("node", "rm", "--force", f"{state.name}-h3")
    output = swarmctl("service", "create", "warm", "--image", live.image, "--mode",
                      "global-job", "--timeout", "60s", *mount(live), *recorder("warm", 0.5))
    assert "warm: 2/2 completed" in output, output
    assert most_at_once(live.out / "warm")[1] == 2
    # ... and joins again as a new node (a fresh state dir: a new identity).
    fresh = state.nodes[2].state_dir + "-rejoined"
    argv = [fresh if arg == state.nodes[2].state_dir else arg for arg in old.argv]
    state.nodes.append(cluster.NodeRecord(state.nodes[2].host, state.nodes[2].netns,
                                          state.nodes[2].address, fresh))
    state.daemons.append(spawn(old.role, argv, Path(old.log + ".rejoined")))
    cluster.save_state(state)

    def ran_there() -> str:
        ps = swarmctl("service", "ps", "warm")
        done = service(live, "warm").job_status.state == pb.JobStatus.COMPLETE
        return "" if ps.count("Complete") == 6 and done else ps

    until(ran_there, timeout=60, interval=0.5)
    assert most_at_once(live.out / "warm")[1] == 3
    assert "0/0 (3/3 completed)" in swarmctl("service", "ls")


def test_a_scheduled_job_runs_on_schedule_and_never_overlaps(live: Cluster) -> None:
    # Runs of 4 s every 3 s: every other fire time finds the run still going.
    swarmctl("service", "create", "tick", "--image", live.image, "--mode", "replicated-job",
             "--schedule", "@every 3s", *mount(live), *recorder("tick", 4))

    def two_runs() -> str:
        status = service(live, "tick").job_status
        return "" if status.iteration >= 2 and status.state == pb.JobStatus.COMPLETE \
            else str(status)

    until(two_runs, timeout=60, interval=0.5)
    status = service(live, "tick").job_status
    ps = swarmctl("service", "ps", "tick")
    swarmctl("service", "rm", "tick")
    assert status.skipped >= 1, status
    assert "tick.1 (run 2)" in ps
    assert "tick.1 (run 1)" in ps
    most, ended = most_at_once(live.out / "tick")
    assert ended >= 2
    assert most == 1, "runs never overlap"
