"""The routing mesh of a host whose agent dies (SIGKILL), under client load.

Three real hosts, two controllers: a web service with a task on each host
publishes a port through the routing mesh, and a client sends `GET /` to
every host's published port every 50 ms. One host's agent is killed. Its
containers keep running (conmon), and so do the nftables tables the agent
left; the controllers mark the node DOWN after three missed heartbeats and
start its task elsewhere, and the other hosts drop the dead host's
endpoints -- its ingress address too, so a backend on another host can no
longer answer a connection the dead host's sandbox masqueraded.

What an operator expects (see the report in docs/PERFORMANCE.md, "The
routing mesh when an agent dies"): not one request fails on any host, be the
agent restarted by its supervisor (deploy/systemd: Restart=always,
RestartSec=2) or gone for good.

    flock /tmp/swarm-heavy.lock pytest -q -x tests/chaos/test_agent_death_mesh.py
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator

import pytest

from bench.load import Load, Target
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.dev.daemons import alive
from tests.chaos.harness import HACluster, require_root

SUBNET = "192.168.168.0/24"  # this module's alone
PORT = 8168
RESTART_SEC = 2.0  # deploy/systemd/swarm-agent.service


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HACluster]:
    require_root()
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    made = HACluster("a" + secrets.token_hex(3), SUBNET, controllers=2, etcd_members=1,
                     hosts=3, sim_nodes=0)
    try:
        made.up()
        yield made
    finally:
        made.down()
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved


def _by_host(load: Load) -> dict[str, tuple[int, int]]:
    """Target name -> (requests, failures)."""
    return {name: (t.requests, t.failures) for name, t in load.tallies.items()}


def _spread(three: HACluster, name: str) -> list[Target]:
    """The web service, one task per host, answering on every host's port."""
    targets = three.create_web(name, 3, PORT)
    nodes = {t.node_id for t in three.tasks(name) if t.status.state == pb.RUNNING}
    assert len(nodes) == 3, "not one task per host"
    return targets


def _moved(three: HACluster, name: str, host: str) -> None:
    """Until the host is DOWN and its slot runs elsewhere."""
    three.wait(lambda: f"{three.name}-{host}" in three.down_nodes(), 30, f"{host} DOWN")
    three.converge(name, 3, 40)


def test_agent_killed_until_its_node_is_down_the_mesh_keeps_answering(three: HACluster) -> None:
    """The agent of h1 dies and stays dead while h1 goes DOWN and its task
    runs elsewhere, then comes back (h1 READY again, its old task stopped);
    the clients of all three hosts see no failure throughout."""
    targets = _spread(three, "dead")
    with Load(targets, interval=0.05, timeout=2.0, max_seconds=90, max_requests=3000) as load:
        time.sleep(1)
        three.signal("agent h1", signal.SIGKILL)
        _moved(three, "dead", "h1")
        time.sleep(4)  # the other hosts have dropped h1's endpoints by now
        dead = _by_host(load)
        three.restart("agent h1")
        three.wait(lambda: three.down_nodes() == [], 30, "h1 back")
        three.converge("dead", 3, 30)
        time.sleep(3)
    print("agent killed until DOWN:", dead, "and back:", _by_host(load), load.report())
    assert all(requests >= 50 for requests, _ in dead.values()), load.report()
    three.remove("dead")
    assert load.total().failures == 0, load.report()


def _log_lines_after(three: HACluster, role: str, offset: int) -> str:
    path = cluster.state_dir(three.name) / "logs" / f"{role.replace(' ', '-')}.log"
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _log_size(three: HACluster, role: str) -> int:
    path = cluster.state_dir(three.name) / "logs" / f"{role.replace(' ', '-')}.log"
    return path.stat().st_size


def test_agent_killed_and_restarted_by_its_supervisor(three: HACluster) -> None:
    """SIGKILL, then a new agent RestartSec later (what systemd does): the
    node does not go DOWN, nothing moves, no request fails, and the tasks'
    containers are adopted (same pids). Prints how long the new agent took
    to open its session and to attach the ingress sandbox again (measured,
    not asserted)."""
    targets = _spread(three, "again")
    pids = three.container_pids("again")
    steps = {"session open": ("session ", " open"),
             "mesh rebuilt": ("ingress sandbox ", " attached as ")}
    took: dict[str, float] = {}
    with Load(targets, interval=0.05, timeout=2.0, max_seconds=60, max_requests=2000) as load:
        time.sleep(1)
        three.signal("agent h1", signal.SIGKILL)
        time.sleep(RESTART_SEC)
        offset = _log_size(three, "agent h1")
        started = time.monotonic()
        three.restart("agent h1")
        deadline = started + 30
        while len(took) < len(steps) and time.monotonic() < deadline:
            text = _log_lines_after(three, "agent h1", offset)
            for step, (first, then) in steps.items():
                if step not in took and any(first in line and then in line
                                            for line in text.splitlines()):
                    took[step] = round(time.monotonic() - started, 2)
            time.sleep(0.05)
        time.sleep(max(0.0, started + 8 - time.monotonic()))  # past the DOWN deadline
    counts = _by_host(load)
    print("agent restarted:", counts, load.report(), "after its start (s):", took)
    assert three.down_nodes() == []
    assert three.container_pids("again") == pids
    three.remove("again")
    assert load.total().failures == 0, load.report()


def test_agent_stopped_and_started_again_an_upgrade(three: HACluster) -> None:
    """SIGTERM (`systemctl restart`, an upgrade), a new agent RestartSec
    later: the containers keep running and so does the routing mesh: no
    request fails on any host while no agent runs on h1."""
    targets = _spread(three, "upgrade")
    pids = three.container_pids("upgrade")
    with Load(targets, interval=0.05, timeout=2.0, max_seconds=60, max_requests=2000) as load:
        time.sleep(1)
        three.signal("agent h1", signal.SIGTERM)
        three.wait(lambda: not alive(three.daemon("agent h1")), 15, "agent h1 stopped")
        time.sleep(RESTART_SEC)
        three.restart("agent h1")
        time.sleep(6)
    print("agent stopped and started:", _by_host(load), load.report())
    assert three.down_nodes() == []
    assert three.container_pids("upgrade") == pids
    three.remove("upgrade")
    assert load.total().failures == 0, load.report()
