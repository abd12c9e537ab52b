"""Faults of the control plane on a real HA local cluster (3 controllers, 3
etcd members): SIGKILL the leader right after a scale and in the middle of a
rolling update, SIGSTOP it past its lease, SIGKILL an etcd member, stop a
majority of etcd for 30 s, SIGKILL the real agent while it pulls and creates
containers, cut the real host's underlay for 20 s, fill the real host's disk,
SIGKILL the leader while a client load goes through the routing mesh.
Each ends with the desired
number of tasks running, no slot running twice and nothing lost; a leader's
death moves no task, touches no container and fails no request."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from typer.testing import CliRunner

from bench.load import Load
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.dev.images import PATH_ENV, build_busybox_image
from swarm.cli.main import app
from tests.chaos.conftest import MIN_FREE
from tests.chaos.harness import HACluster

pytestmark = pytest.mark.timeout(300)

LEASE_TTL = 5.0  # the controllers' default


def restore(ha: HACluster, role: str) -> None:
    """Start the killed controller again and wait until it is registered."""
    ha.restart(role)
    ha.wait(lambda: len(ha.controller_list()) == 3, 30, "3 controllers registered")


def test_dev_status_and_controller_ls_show_every_process(ha: HACluster) -> None:
    result = CliRunner().invoke(app, ["dev", "status", "--name", ha.name, "-o", "json"])
    assert result.exit_code == 0, result.output
    processes = {p["role"]: p for p in json.loads(result.stdout)["processes"]}
    gateway = ha.state_.gateway
    for i, port in enumerate((2377, 2477, 2577)):
        assert processes[f"controller {i + 1}"]["address"] == f"{gateway}:{port}"
    for i, port in enumerate((2379, 2479, 2579)):
        assert processes[f"etcd {i + 1}"]["address"] == f"{gateway}:{port}"
    assert processes["agent h1"]["address"] == ha.state_.nodes[0].address.split("/")[0]
    assert {"registry", "simulated agents"} <= set(processes)
    assert all(p["running"] and isinstance(p["pid"], int) for p in processes.values())
    controllers = ha.controller_list()
    assert sorted(c.addr for c in controllers) == sorted(ha.state_.controller_addrs)
    assert sum(c.leader for c in controllers) == 1


def test_swarmctl_given_every_controller_survives_the_firsts_death(
        ha: HACluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--controller A,B,C` (what `dev up` writes into the swarmctl context):
    with the first one dead, swarmctl still answers through another."""
    monkeypatch.setenv("SWARMCTL_TLS_DIR", str(cluster.admin_dir(ha.name)))
    ha.signal("controller 1", signal.SIGKILL)
    try:
        result = CliRunner().invoke(app, ["--controller", ",".join(ha.state_.controller_addrs),
                                          "node", "ls", "-q"])
        assert result.exit_code == 0, result.output
        assert len(result.stdout.split()) == ha.hosts + ha.sim_nodes
    finally:
        restore(ha, "controller 1")


def test_leader_killed_right_after_a_scale_to_60(ha: HACluster) -> None:
    # Real containers on the real host: the data path must not notice.
    web_image = f"{ha.state_.registry}/{cluster.DEMO_IMAGE}:latest"
    ha.create("web", 2, image=web_image, constraints=[f"node.hostname=={ha.name}-h1"])
    ha.create("big", 1)
    ha.converge("web", 2, 90)
    ha.converge("big", 1, 30)
    web = {t.id: t.status.container.pid for t in ha.tasks("web") if t.status.state == pb.RUNNING}
    assert all(web.values())
    leader = ha.wait_leader()
    role = ha.role_at(leader)

    ha.scale("big", 60)
    ha.signal(role, signal.SIGKILL)
    killed = time.monotonic()
    ha.wait_leader(other_than=leader, timeout=LEASE_TTL + 5)
    elected = time.monotonic() - killed
    ha.converge("big", 60, 60)
    assert elected <= LEASE_TTL + 2, f"a new leader after {elected:.1f}s"
    assert ha.down_nodes() == []
    after = {t.id: t.status.container.pid for t in ha.tasks("web") if t.status.state == pb.RUNNING}
    assert after == web, "the real containers were touched by a leader kill"
    restore(ha, role)
    ha.remove("big")
    ha.remove("web")


def test_leader_killed_under_load_through_the_routing_mesh(ha: HACluster) -> None:
    """A client sends `GET /` every 50 ms to the real host's published port
    (from the root namespace, through the routing mesh) from a second before
    the leader's SIGKILL until the new leader has converged a scale and a
    moment after: not one request fails and the real containers keep their
    pids. A leader's death must not touch the data path."""
    targets = ha.create_web("mesh", 2, 8081)
    ha.create("busy", 5)
    ha.converge("busy", 5, 30)
    pids = ha.container_pids("mesh")
    assert len(pids) == 2
    assert all(pids.values())
    leader = ha.wait_leader()
    role = ha.role_at(leader)
    with Load(targets, interval=0.05, max_seconds=60, max_requests=1200) as load:
        time.sleep(1)
        ha.scale("busy", 15)
        ha.signal(role, signal.SIGKILL)
        ha.wait_leader(other_than=leader, timeout=LEASE_TTL + 5)
        ha.converge("busy", 15, 30)
        time.sleep(2)  # the agents' sessions with the new leader settle
    total = load.total()
    assert total.requests >= 50, load.report()
    assert total.failures == 0, load.report()
    assert ha.container_pids("mesh") == pids, "the real containers were touched by a leader kill"
    assert ha.down_nodes() == []
    restore(ha, role)
    ha.remove("busy")
    ha.remove("mesh")


def test_leader_killed_in_the_middle_of_a_rolling_update(ha: HACluster) -> None:
    ha.create("roll", 20)
    ha.converge("roll", 20, 30)
    service = ha.service("roll")
    spec = pb.ServiceSpec()
    spec.CopyFrom(service.spec)
    spec.task.container.image = "busybox:2"
    spec.update.parallelism = 2
    spec.update.delay.CopyFrom(Duration(nanos=300_000_000))
    spec.update.monitor.CopyFrom(Duration(nanos=200_000_000))
    ha.call(lambda: ha.control.UpdateService(cpb.UpdateServiceRequest(
        service_id=service.id, version=service.meta.version, spec=spec), timeout=5))

    def half_way() -> bool:
        updated = sum(t.spec.container.image == "busybox:2" and t.status.state == pb.RUNNING
                      for t in ha.tasks("roll"))
        return 2 <= updated < 20

    ha.wait(half_way, 30, "the update half way")
    leader = ha.wait_leader()
    role = ha.role_at(leader)
    ha.signal(role, signal.SIGKILL)
    ha.converge("roll", 20, 90, image="busybox:2")
    assert ha.down_nodes() == []
    restore(ha, role)
    ha.remove("roll")


def test_leader_stopped_past_its_lease_is_fenced_and_steps_down(ha: HACluster) -> None:
    ha.create("pause", 5)
    ha.converge("pause", 5, 30)
    leader = ha.wait_leader()
    role = ha.role_at(leader)
    log = ha.daemon(role).log
    ha.signal(role, signal.SIGSTOP)
    try:
        successor = ha.wait_leader(other_than=leader, timeout=LEASE_TTL + 10)
        ha.scale("pause", 10)
        ha.converge("pause", 10, 30)
    finally:
        ha.signal(role, signal.SIGCONT)
    # Woken, it finds its lease gone: it steps down; its writes carry the old
    # leader key's revision, so none of them lands.
    ha.wait(lambda: "lost leadership" in Path(log).read_text(errors="replace"), 20,
            "the old leader stepping down")
    assert ha.leader() == successor
    ha.wait(lambda: len(ha.controller_list()) == 3, 30, "it registers again as a follower")
    ha.scale("pause", 12)
    ha.converge("pause", 12, 30)
    assert ha.down_nodes() == []
    ha.remove("pause")


def test_one_etcd_member_killed(ha: HACluster) -> None:
    ha.create("kv", 5)
    ha.converge("kv", 5, 30)
    ha.signal("etcd 1", signal.SIGKILL)
    ha.scale("kv", 15)
    ha.converge("kv", 15, 60)
    ha.restart("etcd 1")
    ha.scale("kv", 20)
    ha.converge("kv", 20, 60)
    assert ha.down_nodes() == []
    ha.remove("kv")


def test_etcd_majority_stopped_for_30s_moves_no_task(ha: HACluster) -> None:
    """Two of three etcd members gone for 30 s: no quorum, no leader, no writes.
    Once they are back, a leader is elected and nothing has moved: a
    control-plane outage is not a reason to evict anyone."""
    ha.create("steady", 10)
    ha.converge("steady", 10, 30)
    before = {t.id: t.node_id for t in ha.tasks("steady") if t.desired_state == pb.RUNNING}
    for role in ("etcd 2", "etcd 3"):
        ha.signal(role, signal.SIGKILL)
    time.sleep(30)
    for role in ("etcd 2", "etcd 3"):
        ha.restart(role)
    ha.wait_leader(timeout=30)
    ha.converge("steady", 10, 60)
    after = {t.id: t.node_id for t in ha.tasks("steady") if t.desired_state == pb.RUNNING}
    assert after == before, "tasks moved after an etcd outage"
    ha.wait(lambda: ha.down_nodes() == [], 20, "no node DOWN")
    ha.scale("steady", 14)
    ha.converge("steady", 14, 30)
    ha.remove("steady")


def test_agent_killed_while_pulling_and_creating(ha: HACluster) -> None:
    """SIGKILL the real agent just after its tasks are assigned (an image it
    has never pulled: pulling, then creating), then start it again: the tasks
    run, each slot once, each in a live container of its own."""
    image = build_busybox_image(ha.state_.registry, "fresh" + secrets.token_hex(3),
                                config={"Cmd": ["sleep", "3600"], "Env": [PATH_ENV]})
    ha.create("made", 3, image=image, constraints=[f"node.hostname=={ha.name}-h1"])

    def assigned() -> bool:
        return len([t for t in ha.tasks("made") if t.status.state >= pb.ASSIGNED]) >= 3

    ha.wait(assigned, 30, "3 tasks assigned")
    ha.signal("agent h1", signal.SIGKILL)
    ha.restart("agent h1")
    ha.converge("made", 3, 90)
    pids = [t.status.container.pid for t in ha.tasks("made")
            if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING]
    assert len(set(pids)) == 3
    for pid in pids:
        os.kill(pid, 0)  # alive
    ha.remove("made")


# A constraint every node meets (ha.create's default keeps tasks off the real
# hosts; node.role==worker no longer names them all: dev up's first host is a
# manager).
EVERY_NODE = "node.hostname!=no-such-host"

def _nft_in(netns: str, script: str) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "nft", "-f", "-"], input=script,
                   text=True, check=True, capture_output=True)


def test_host_cut_off_for_20s_then_healed(ha: HACluster) -> None:
    """The real host's underlay drops everything for 20 s (nftables in its
    namespace): it goes DOWN, its task is replaced elsewhere (one node of
    eleven is no mass disconnect); healed, it stops the old container, and
    every slot runs once."""
    image = f"{ha.state_.registry}/{cluster.DEMO_IMAGE}:latest"
    replicas = ha.hosts + ha.sim_nodes  # spread: one per node, one on the real host
    # Every node, the real host too (a manager since dev up makes its first host one).
    ha.create("cut", replicas, image=image, constraints=[EVERY_NODE])
    ha.converge("cut", replicas, 90)
    host = f"{ha.name}-h1"
    nodes = ha.call(lambda: ha.control.ListNodes(cpb.ListNodesRequest(), timeout=5)).nodes
    real_node = next(n.id for n in nodes if n.description.hostname == host)
    (old,) = [t for t in ha.tasks("cut") if t.node_id == real_node and t.status.state == pb.RUNNING]
    netns = ha.state_.nodes[0].netns
    _nft_in(netns, "table inet chaos {\n"
                   " chain in { type filter hook input priority 0; policy drop; iif lo accept; }\n"
                   " chain out { type filter hook output priority 0; policy drop; oif lo accept; }\n"
                   "}\n")
    cut = time.monotonic()
    try:
        ha.wait(lambda: host in ha.down_nodes(), 20, f"{host} DOWN")
        ha.converge("cut", replicas, 40)  # the slot runs elsewhere meanwhile
        time.sleep(max(0.0, 20 - (time.monotonic() - cut)))  # cut off for 20 s in all
    finally:
        _nft_in(netns, "delete table inet chaos\n")
    ha.wait(lambda: ha.down_nodes() == [], 30, f"{host} back")

    def old_stopped() -> bool:
        task = next(t for t in ha.tasks("cut") if t.id == old.id)
        return task.status.state > pb.RUNNING

    ha.wait(old_stopped, 30, "the cut-off task stopped once its host is back")
    ha.converge("cut", replicas, 30)
    with pytest.raises(ProcessLookupError):
        os.kill(old.status.container.pid, 0)
    ha.remove("cut")


def test_a_full_disk_stops_new_tasks_on_its_node(ha: HACluster) -> None:
    """The real host's state dir is a small file system (conftest): filled, the
    node reports disk-pressure and gets no new task; emptied, it is fed again."""
    host = f"{ha.name}-h1"
    state_dir = Path(ha.state_.nodes[0].state_dir)

    def conditions() -> list[str]:
        nodes = ha.call(lambda: ha.control.ListNodes(cpb.ListNodesRequest(), timeout=5)).nodes
        return next(list(n.status.conditions) for n in nodes if n.description.hostname == host)

    assert conditions() == []
    stat = os.statvfs(state_dir)
    free = stat.f_bavail * stat.f_frsize
    filler = state_dir / "filler"
    filler.write_bytes(b"\0" * max(0, free - (MIN_FREE // 2)))
    try:
        ha.wait(lambda: conditions() == ["disk-pressure"], 15, "disk-pressure reported")
        replicas = ha.hosts + ha.sim_nodes
        image = f"{ha.state_.registry}/{cluster.DEMO_IMAGE}:latest"  # the real host can pull it
        ha.create("disk", replicas, image=image, constraints=[EVERY_NODE])
        ha.converge("disk", replicas, 30)
        nodes = {t.node_id for t in ha.tasks("disk") if t.desired_state == pb.RUNNING}
        real = next(n.id for n in ha.call(lambda: ha.control.ListNodes(
            cpb.ListNodesRequest(), timeout=5)).nodes if n.description.hostname == host)
        assert real not in nodes
    finally:
        filler.unlink()
    ha.wait(lambda: conditions() == [], 15, "disk-pressure gone")
    ha.scale("disk", 3 * (ha.hosts + ha.sim_nodes))
    ha.converge("disk", 3 * (ha.hosts + ha.sim_nodes), 60)
    assert any(t.node_id == real for t in ha.tasks("disk") if t.desired_state == pb.RUNNING)
    ha.remove("disk")
