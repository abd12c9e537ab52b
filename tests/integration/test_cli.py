"""swarmctl against a live control plane: a real etcd, the real controller and three
simulated nodes speaking the real dispatcher API, driven through the real typer app.

The CLI is synchronous gRPC, so the controller and the nodes run on an event loop
in a background thread (`LiveCluster`) while CliRunner drives the app in the test's
thread; the test reads etcd through the same loop to check what was (not) written.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from swarm.api import pki
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import client, progress
from swarm.cli.errors import Interrupted
from swarm.cli.main import app
from tests.etcd_server import EtcdServer, free_port
from tests.integration.live import (
    BROKEN_IMAGE,
    NODES,
    LiveCluster,
    assert_one_line_error,
    ok,
    swarmctl,
    table_rows,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- services


def test_create_with_many_flags_waits_until_running_then_inspect(live: LiveCluster) -> None:
    started = time.monotonic()
    result = ok(swarmctl(
        live, "service", "create", "web", "--image", "nginx:alpine", "--replicas", "3",
        "--env", "MODE=prod", "-e", "B=2", "--label", "tier=front",
        "--container-label", "c=d", "--constraint", "node.role==worker",
        "--placement-pref", "spread=node.hostname", "--max-replicas-per-node", "2",
        "--limit-cpu", "0.5", "--limit-memory", "64M", "--reserve-cpu", "0.1",
        "--reserve-memory", "16Mi", "--restart-condition", "on-failure", "--restart-delay", "1s",
        "--restart-max-attempts", "4", "--update-parallelism", "2", "--update-delay", "1s",
        "--update-order", "start-first", "--publish", "8080:80", "-p", "5353:53/udp",
        "--mount", "type=volume,source=data,target=/data", "--mount", "type=volume,target=/cache",
        "--mount", "type=tmpfs,target=/tmp", "--health-cmd", "true", "--health-interval", "5s",
        "--workdir", "/srv", "--user", "nobody", "--stop-grace-period", "3s", "--read-only",
        "--timeout", "20s", "--", "nginx", "-g", "daemon off;"))
    elapsed = time.monotonic() - started
    service_id = result.stdout.strip()
    # stdout is the ID alone; the one final progress line goes to stderr.
    assert len(service_id) == 25
    assert result.stderr.startswith("web: 3/3 tasks running (converged in ")
    assert elapsed < 10

    stored = live.service("web")
    assert stored.id == service_id
    spec = stored.spec
    container = spec.task.container
    assert (container.image, list(container.args)) == ("nginx:alpine",
                                                       ["nginx", "-g", "daemon off;"])
    assert list(container.env) == ["MODE=prod", "B=2"]
    assert dict(spec.labels) == {"tier": "front"}
    assert spec.task.resources.limits.memory_bytes == 64 << 20
    assert spec.task.restart.condition == pb.RestartPolicy.ON_FAILURE
    assert spec.update.order == pb.UpdateConfig.START_FIRST
    assert [(p.published_port, p.target_port) for p in spec.endpoint.ports] == [(8080, 80),
                                                                                (5353, 53)]
    # The anonymous volume (no source) is accepted end to end, as docker does.
    assert [(m.type, m.source, m.target) for m in container.mounts] == [
        (pb.Mount.VOLUME, "data", "/data"), (pb.Mount.VOLUME, "", "/cache"),
        (pb.Mount.TMPFS, "", "/tmp")]
    running = live.running("web")
    assert len(running) == 3
    assert len({t.node_id for t in running}) == 3

    # inspect: JSON by default, YAML and the human summary on request; by name, ID or prefix.
    as_json = json.loads(ok(swarmctl(live, "service", "inspect", "web")).stdout)
    assert as_json[0]["id"] == service_id
    # VOLUME is the enum's zero, which JSON leaves out: no source, no type.
    assert as_json[0]["spec"]["task"]["container"]["mounts"][1] == {"target": "/cache"}
    assert yaml.safe_load(ok(swarmctl(live, "service", "inspect", "-o", "yaml",
                                      service_id[:6])).stdout) == as_json
    text = ok(swarmctl(live, "service", "inspect", "-o", "table", service_id)).stdout
    assert "Name:" in text
    assert "64MiB" in text
    assert "/cache:" in text
    assert "volume (anonymous)" in text


def test_ls_ps_in_every_format_with_pending_reasons(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2",
                "--health-cmd", "true", "-p", "8080:80"))
    # Detached: returns at once although no node can run it.
    started = time.monotonic()
    result = ok(swarmctl(live, "service", "create", "-d", "mars", "--image", "busybox",
                         "--constraint", "node.labels.planet==mars"))
    assert time.monotonic() - started < 3
    assert result.stderr == ""

    rows = table_rows(ok(swarmctl(live, "service", "ls")).stdout)
    assert sorted((r[1], r[2], r[3], r[4]) for r in rows) == [
        ("mars", "replicated", "0/1", "busybox"), ("web", "replicated", "2/2", "busybox")]
    listed = json.loads(ok(swarmctl(live, "service", "ls", "-o", "json")).stdout)
    assert sorted(s["spec"]["name"] for s in listed) == ["mars", "web"]
    assert yaml.safe_load(ok(swarmctl(live, "service", "ls", "-o", "yaml")).stdout) == listed
    assert sorted(ok(swarmctl(live, "service", "ls", "-q")).stdout.split()) == sorted(
        s["id"] for s in listed)
    filtered = ok(swarmctl(live, "service", "ls", "--filter", "name=web", "-o", "json")).stdout
    assert [s["spec"]["name"] for s in json.loads(filtered)] == ["web"]

    out = ok(swarmctl(live, "service", "ps", "web")).stdout
    header, *lines = out.strip().splitlines()
    assert header.split() == ["ID", "NAME", "IMAGE", "NODE", "DESIRED", "STATE", "CURRENT",
                              "STATE", "HEALTH", "ERROR"]
    hosts = set(live.node_ids())
    for row in table_rows(out):
        name, image, node, desired, current, health = row[1:7]
        assert name in ("web.1", "web.2")
        assert node in hosts
        assert (image, desired, health) == ("busybox", "Running", "healthy")
        assert re.fullmatch(r"Running .* ago", current), current
    assert len(lines) == 2

    # A task no node can take says why, in the ERROR column.
    live.eventually(lambda: any("no suitable node" in t.status.message
                                for t in live.tasks("mars")), message="scheduler's reason")
    (row,) = table_rows(ok(swarmctl(live, "service", "ps", "mars")).stdout)
    assert row[1] == "mars.1"
    assert row[4].startswith("Pending")
    assert "no suitable node" in row[-1]
    assert "node.labels.planet==mars" in row[-1]
    tasks = json.loads(ok(swarmctl(live, "service", "ps", "mars", "-o", "json")).stdout)
    assert tasks[0]["status"]["state"] == "PENDING"
    assert yaml.safe_load(ok(swarmctl(live, "service", "ps", "-o", "yaml", "mars")).stdout
                          ) == tasks
    both = ok(swarmctl(live, "service", "ps", "-q", "web", "mars")).stdout.split()
    assert len(both) == 3


def test_scale_several_services_and_wait(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "-d", "web", "--image", "busybox"))
    web_id = live.service("web").id
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox",
                "--replicas", "2"))
    result = ok(swarmctl(live, "service", "scale", web_id[:7] + "=5", "api=0"))
    assert result.stdout.splitlines() == [f"{web_id[:7]} scaled to 5", "api scaled to 0"]
    assert result.stderr.startswith("web: 5/5 tasks running, api: 0/0 tasks running "
                                    "(converged in ")
    assert len(live.running("web")) == 5
    assert live.running("api") == []
    assert live.service("api").spec.replicated.replicas == 0

    # A refused pair is one line and exit 1; the others are still scaled.
    before = live.service("web").spec.replicated.replicas
    result = swarmctl(live, "service", "scale", "ghost=2", "api=1")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["api scaled to 1"]
    assert result.stderr.splitlines()[0] == "swarmctl: service 'ghost' not found"
    assert result.stderr.splitlines()[1].startswith("api: 1/1 tasks running")
    assert live.service("web").spec.replicated.replicas == before


def test_update_image_replicas_env_and_force(live: LiveCluster) -> None:
    # The waits below last until each update's monitor period is over, as docker's do.
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox:1", "--replicas", "2",
                "-e", "A=1", "-e", "B=2", "--update-parallelism", "0",
                "--update-monitor", "500ms", "--rollback-monitor", "500ms"))
    first = {t.id for t in live.running("web")}
    result = ok(swarmctl(live, "service", "update", "web", "--image", "busybox:2",
                         "--replicas", "3", "--env-add", "C=3", "--env-rm", "A",
                         "--timeout", "20s"))
    assert result.stdout.strip() == "web"
    assert result.stderr.startswith("web: 3/3 tasks running (converged in ")
    service = live.service("web")
    assert service.spec.task.container.image == "busybox:2"
    assert list(service.spec.task.container.env) == ["B=2", "C=3"]
    running = live.running("web")
    assert len(running) == 3
    assert {t.spec.container.image for t in running} == {"busybox:2"}
    assert not first & {t.id for t in running}, "every task was replaced"

    # --force replaces the tasks although nothing else changed.
    before = {t.id for t in running}
    ok(swarmctl(live, "service", "update", "--force", service.id[:5]))
    assert live.service("web").spec.task.force_update == 1
    after = {t.id for t in live.running("web")}
    assert len(after) == 3
    assert not before & after

    # --rollback goes back to the previous spec, and that is success, not a failure.
    result = ok(swarmctl(live, "service", "update", "web", "--rollback", "--timeout", "20s"))
    assert result.stderr.startswith("web: 3/3 tasks running (converged in ")
    assert live.service("web").spec.task.force_update == 0

    # -d: the change is written, and the command does not wait for it.
    result = ok(swarmctl(live, "service", "update", "-d", "web", "--replicas", "1"))
    assert result.stderr == ""
    assert live.service("web").spec.replicated.replicas == 1


def test_rm_removes_services_and_their_tasks(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox"))
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox"))
    api_id = live.service("api").id
    result = swarmctl(live, "service", "rm", "web", api_id[:8], "ghost")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["web", api_id[:8]]
    assert result.stderr.strip() == "swarmctl: service 'ghost' not found"
    assert live.stored("services") == []
    live.eventually(lambda: live.stored("tasks") == [], message="tasks removed")
    assert ok(swarmctl(live, "service", "ls", "-q")).stdout.strip() == ""


def test_dockers_form_of_create_names_the_service_and_runs_the_command(
        live: LiveCluster) -> None:
    # docker service create [--name NAME] IMAGE [CMD...], as a docker user types it.
    named = ok(swarmctl(live, "service", "create", "--name", "sleeper", "--replicas", "2",
                        "busybox", "sleep", "3600")).stdout.strip()
    anonymous = ok(swarmctl(live, "service", "create", "-d", "localhost:5000/team/web.app:1",
                            "--", "httpd", "-f")).stdout.strip()
    sleeper = live.service("sleeper")
    assert sleeper.id == named
    assert sleeper.spec.task.container.image == "busybox"
    assert list(sleeper.spec.task.container.args) == ["sleep", "3600"]
    assert len(live.running("sleeper")) == 2
    # Without --name: the image's last path component, '.' made '-'.
    web = live.service("web-app")
    assert web.id == anonymous
    assert list(web.spec.task.container.args) == ["httpd", "-f"]
    # Twice the same image without --name: the controller refuses the name, writes nothing.
    ok(swarmctl(live, "service", "create", "busybox"))
    live.eventually(lambda: len(live.running("web-app")) == 1, message="web-app running")
    before = live.snapshot()
    assert_one_line_error(swarmctl(live, "service", "create", "-d", "busybox"), "busybox",
                          exit_code=1)
    assert live.snapshot() == before


# ---------------------------------------------------------------- waiting that fails


def test_create_fails_when_tasks_are_rejected_repeatedly(live: LiveCluster) -> None:
    result = swarmctl(live, "service", "create", "bad", "--image", BROKEN_IMAGE,
                      "--restart-delay", "0s", "--timeout", "20s")
    line = assert_one_line_error(result, "swarmctl: bad: task bad.1 failed ",
                                 f"image {BROKEN_IMAGE} not found", exit_code=3)
    # At least FAILURE_LIMIT: more may have failed between two polls.
    failures = re.search(r"failed (\d+) times", line)
    assert failures is not None
    assert int(failures.group(1)) >= progress.FAILURE_LIMIT
    # The service was created: the ID came first, for scripts.
    assert result.stdout.strip() == live.service("bad").id
    rejected = [t for t in live.tasks("bad") if t.status.state == pb.REJECTED]
    assert len(rejected) >= 3


def test_restart_condition_none_fails_at_the_first_rejection(live: LiveCluster) -> None:
    result = swarmctl(live, "service", "create", "once", "--image", BROKEN_IMAGE,
                      "--restart-condition", "none", "--timeout", "20s")
    assert_one_line_error(result, "once: task once.1 failed once: ", exit_code=3)


def test_update_to_a_broken_image_reports_the_paused_update(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2",
                "--restart-delay", "0s", "--update-monitor", "1s"))
    result = swarmctl(live, "service", "update", "web", "--image", BROKEN_IMAGE,
                      "--timeout", "20s")
    assert_one_line_error(result, "swarmctl: web: ", exit_code=3)
    assert result.stdout.strip() == "web"
    assert live.service("web").spec.task.container.image == BROKEN_IMAGE


def test_timeout_names_what_is_still_pending(live: LiveCluster) -> None:
    started = time.monotonic()
    result = swarmctl(live, "service", "create", "mars", "--image", "busybox",
                      "--constraint", "node.labels.planet==mars", "--timeout", "1s")
    assert time.monotonic() - started < 5
    assert_one_line_error(
        result, "swarmctl: not converged after 1s: mars: 0/1 tasks running (mars.1 pending: "
                "no suitable node", exit_code=3)


def test_ctrl_c_while_waiting_is_one_line_and_leaves_the_change(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "-d", "mars", "--image", "busybox",
                "--constraint", "node.labels.planet==mars"))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    with client.connect(live.addr) as ctl:
        baseline = progress.baseline_of(ctl.call(ctl.stub.GetService,
                                                 cpb.GetRequest(ref="mars")).service)
        with pytest.raises(Interrupted, match="goes on in the background") as caught:
            progress.wait_until_converged(ctl, [baseline], timeout=10, stream=io.StringIO(),
                                          sleep=interrupt)
    assert caught.value.exit_code == 130
    assert live.service("mars").spec.replicated.replicas == 1


def test_global_service_waits_for_every_eligible_node(live: LiveCluster) -> None:
    ok(swarmctl(live, "node", "update", "--label-add", "zone=east", "sim-0001"))
    result = ok(swarmctl(live, "service", "create", "mon", "--image", "busybox",
                         "--mode", "global"))
    assert result.stderr.startswith(f"mon: {NODES}/{NODES} tasks running")
    result = ok(swarmctl(live, "service", "create", "east", "--image", "busybox",
                         "--mode", "global", "--constraint", "node.labels.zone==east"))
    assert result.stderr.startswith("east: 1/1 tasks running")
    (task,) = live.running("east")
    assert task.node_id == live.node_ids()["sim-0001"]


def test_progress_is_drawn_on_a_terminal(live: LiveCluster) -> None:
    """The `swarmctl` entry point in a process of its own, its stderr a pseudo-terminal."""
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-c", "from swarm.cli.main import main; main()", "--controller", live.addr,
         "service", "create", "web", "--image", "busybox", "--replicas", "3",
         "--timeout", "20s"],
        stdout=subprocess.PIPE, stderr=child_fd, stdin=subprocess.DEVNULL, env=env)
    os.close(child_fd)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([main_fd], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=30) == 0
    finally:
        os.close(main_fd)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stdout is not None
    assert len(process.stdout.read().strip()) == 25  # the ID, alone on stdout
    screen = b"".join(chunks).decode()
    assert "\x1b[J" in screen  # redrawn in place
    assert "web: 3/3 tasks running" in screen
    for slot in (1, 2, 3):
        assert f"web.{slot}" in screen
    assert "running" in screen
    assert "converged in" in screen
    assert "\x1b[32m  web." in screen  # a running task, green on a terminal


# ---------------------------------------------------------------- nodes and networks


def test_node_ls_inspect_update_and_rm(live: LiveCluster) -> None:
    ids = live.node_ids()
    rows = table_rows(ok(swarmctl(live, "node", "ls")).stdout)
    assert sorted((r[1], r[2], r[3]) for r in rows) == [
        (f"sim-000{i}", "Ready", "Active") for i in range(NODES)]
    listed = json.loads(ok(swarmctl(live, "node", "ls", "-o", "json")).stdout)
    assert sorted(n["id"] for n in listed) == sorted(ids.values())
    assert yaml.safe_load(ok(swarmctl(live, "node", "ls", "-o", "yaml")).stdout) == listed
    assert sorted(ok(swarmctl(live, "node", "ls", "-q")).stdout.split()) == sorted(ids.values())

    inspected = json.loads(ok(swarmctl(live, "node", "inspect", "sim-0000",
                                       ids["sim-0001"][:6])).stdout)
    assert [n["id"] for n in inspected] == [ids["sim-0000"], ids["sim-0001"]]
    text = ok(swarmctl(live, "node", "inspect", "-o", "table", "sim-0002")).stdout
    assert "Hostname:" in text
    assert "sim-0002" in text

    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "3"))
    assert ok(swarmctl(live, "node", "update", "--availability", "drain",
                       "--label-add", "zone=east", "--label-add", "old=1", "sim-0000")
              ).stdout.strip() == "sim-0000"
    node = next(n for n in live.stored("nodes") if n.id == ids["sim-0000"])
    assert isinstance(node, pb.Node)
    assert node.spec.availability == pb.NodeSpec.DRAIN
    assert dict(node.spec.labels) == {"zone": "east", "old": "1"}
    live.eventually(lambda: len(live.running("web")) == 3 and ids["sim-0000"] not in {
        t.node_id for t in live.running("web")}, message="tasks moved off the drained node")
    # node ps: what runs on a node, by hostname or ID prefix.
    # (What etcd holds and what the controller's cache answers may differ for a
    # moment, and a task being stopped still shows Running as its current state.)
    def node_ps_lists_what_runs_there() -> bool:
        on_one = sorted(t.id[:12] for t in live.running("web") if t.node_id == ids["sim-0001"])
        rows = table_rows(ok(swarmctl(live, "node", "ps", ids["sim-0001"][:6])).stdout)
        assert {r[3] for r in rows} == {"sim-0001"}
        return sorted(r[0] for r in rows
                      if r[4] == "Running" and r[5].startswith("Running")) == on_one

    live.eventually(node_ps_lists_what_runs_there, message="node ps lists what runs on sim-0001")
    rows = table_rows(ok(swarmctl(live, "node", "ls", "--filter", "label=zone=east")).stdout)
    assert [(r[1], r[3]) for r in rows] == [("sim-0000", "Drain")]

    ok(swarmctl(live, "node", "update", "--label-rm", "old", "--availability", "active",
                ids["sim-0000"][:8]))
    node = next(n for n in live.stored("nodes") if n.id == ids["sim-0000"])
    assert isinstance(node, pb.Node)
    assert (node.spec.availability, dict(node.spec.labels)) == (pb.NodeSpec.ACTIVE,
                                                                {"zone": "east"})

    # A node that is up is removed only with --force.
    before = live.snapshot()
    result = swarmctl(live, "node", "rm", "sim-0002")
    assert_one_line_error(result, "swarmctl: ", "sim-0002", exit_code=1)
    assert live.snapshot() == before
    assert ok(swarmctl(live, "node", "rm", "--force", "sim-0002")).stdout.strip() == "sim-0002"
    assert ids["sim-0002"] not in {n.id for n in live.stored("nodes")}


def test_network_create_ls_inspect_rm(live: LiveCluster) -> None:
    network_id = ok(swarmctl(live, "network", "create", "--subnet", "10.20.0.0/24",
                             "--gateway", "10.20.0.1", "--label", "team=a", "front")
                    ).stdout.strip()
    ok(swarmctl(live, "network", "create", "back"))
    rows = table_rows(ok(swarmctl(live, "network", "ls")).stdout)
    front = next(r for r in rows if r[1] == "front")
    assert front[:5] == [network_id[:12], "front", "overlay", "10.20.0.0/24", "10.20.0.1"]
    listed = json.loads(ok(swarmctl(live, "network", "ls", "-o", "json")).stdout)
    # With the routing mesh's network, which the leader made.
    assert sorted(n["spec"]["name"] for n in listed) == ["back", "front", "ingress"]
    assert yaml.safe_load(ok(swarmctl(live, "network", "ls", "-o", "yaml")).stdout) == listed
    (found,) = json.loads(ok(swarmctl(live, "network", "inspect", network_id[:5])).stdout)
    assert found["spec"]["labels"] == {"team": "a"}

    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--network", "front"))
    before = live.snapshot()
    result = swarmctl(live, "network", "rm", "front")
    assert_one_line_error(result, "swarmctl: ", exit_code=1)
    assert live.snapshot() == before
    ok(swarmctl(live, "service", "rm", "web"))
    assert ok(swarmctl(live, "network", "rm", "front", "back")).stdout.split() == [
        "front", "back"]
    assert [n.spec.name for n in live.stored("networks") if isinstance(n, pb.Network)] == [
        "ingress"]


def test_published_ports_clash_and_hold_the_ingress_network(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--publish", "8080:80"))
    inspected = json.loads(ok(swarmctl(live, "service", "inspect", "web")).stdout)[0]
    assert [(p.get("published_port"), p.get("target_port")) for p in
            inspected["endpoint"]["ports"]] == [(8080, 80)]
    before = live.snapshot()
    for args, message, code in (
            (("service", "create", "api", "--image", "busybox", "--publish", "8080:81"),
             "swarmctl: spec.endpoint.ports[0].published_port: port 8080/tcp is already "
             "published by service 'web' (mode ingress)", 1),
            (("service", "create", "api", "--image", "busybox", "--publish",
              "mode=host,published=8080,target=81"),
             "swarmctl: spec.endpoint.ports[0].published_port: port 8080/tcp is already "
             "published by service 'web' (mode ingress)", 1),
            (("service", "create", "api", "--image", "busybox", "--publish", "70000:80"),
             "swarmctl: --publish: ", 2),
            (("network", "rm", "ingress"),
             "swarmctl: network 'ingress' is in use by service(s) web", 1)):
        result = swarmctl(live, *args)
        assert_one_line_error(result, message, exit_code=code)
        assert live.snapshot() == before
    # A port given without a number gets one of the dynamic range, shown as allocated.
    ok(swarmctl(live, "service", "create", "auto", "--image", "busybox", "--publish", "80"))
    assert "*:30000->80/tcp" in ok(swarmctl(live, "service", "ls")).stdout
    ok(swarmctl(live, "service", "rm", "web", "auto"))
    ok(swarmctl(live, "network", "rm", "ingress"))
    # The removed services' tasks are deleted once their agents report them stopped; the
    # snapshot is taken after that, so it only moves if the failed create wrote something.
    live.eventually(lambda: not live.stored("tasks"), timeout=30)
    before = live.snapshot()
    result = swarmctl(live, "service", "create", "web", "--image", "busybox", "--publish", "8080:80")
    assert_one_line_error(result, "swarmctl: spec.endpoint.ports[0]: published in ingress mode "
                          "(the routing mesh), but the cluster has no ingress network", exit_code=1)
    assert live.snapshot() == before


# ---------------------------------------------------------------- errors write nothing


BAD_INPUT = [
    # (arguments, what the one line names, exit status)
    (("service", "create", "web", "--image", "busybox", "--limit-memory", "12q"),
     "--limit-memory: invalid size '12q'", 2),
    (("service", "create", "web", "--image", "busybox", "--replicas", "-1"),
     "--replicas: invalid number '-1': must be at least 0", 2),
    (("service", "scale", "api=-1"), "invalid scale argument 'api=-1'", 2),
    (("service", "create", "web", "--image", "busybox", "--constraint", "node.role"),
     "--constraint: invalid constraint 'node.role'", 2),
    (("service", "create", "web", "--image", "busybox", "--mount", "type=volume,source=/x,"
      "target=/y"), "--mount: invalid 'type=volume,source=/x,target=/y': a volume name is", 2),
    (("service", "create", "web", "--image", "busybox", "--timeout", "0s"),
     "--timeout: invalid duration '0s'", 2),
    (("service", "update", "api", "--limit-memory", "12q"), "--limit-memory: invalid size", 2),
    (("service", "update", "api", "--drain-timeout", "-2s"), "--drain-timeout: invalid", 2),
    (("service", "update", "api", "--drain-timeout", "6m"), "--drain-timeout: at most 5m", 2),
    (("service", "create", "web", "--image", "busybox", "--drain-timeout", "1h"),
     "--drain-timeout: at most 5m (got 1h)", 2),
    # Caught by the controller's validation, not the CLI's: still one line, nothing written.
    (("service", "create", "Bad_Name", "--image", "busybox"), "name", 1),
    (("service", "create", "web", "--image", "busybox", "--constraint", "node.colour==red"),
     "unknown key 'node.colour'", 1),
    (("service", "create", "api", "--image", "busybox"), "api", 1),  # the name is taken
    (("service", "create", "web", "--image", "busybox", "--network", "nowhere"), "nowhere", 1),
    (("service", "inspect", "ghost"), "service 'ghost' not found", 1),
    (("service", "ps", "ghost"), "service 'ghost' not found", 1),
    (("service", "update", "ghost", "--image", "x"), "service 'ghost' not found", 1),
    (("service", "scale", "ghost=3"), "service 'ghost' not found", 1),
    (("service", "rm", "ghost"), "service 'ghost' not found", 1),
    # api was never updated: nothing to go back to.
    (("service", "rollback", "api"), "service 'api' has no previous spec to roll back to", 1),
    (("service", "update", "api", "--rollback"),
     "service 'api' has no previous spec to roll back to", 1),
    (("service", "rollback", "ghost"), "service 'ghost' not found", 1),
    (("service", "update", "api", "--replicas", "-3"), "--replicas: invalid number '-3'", 2),
    (("node", "update", "--availability", "gone", "sim-0000"),
     "--availability: invalid value 'gone'", 2),
    (("node", "update", "--label-add", "zone=a", "ghost"), "node 'ghost' not found", 1),
    (("node", "inspect", "ghost"), "node 'ghost' not found", 1),
    (("network", "inspect", "ghost"), "network 'ghost' not found", 1),
    (("network", "create", "net", "--subnet", "10.0.0.1/24"), "--subnet: invalid subnet", 2),
]


def test_errors_are_one_line_and_write_nothing(live: LiveCluster) -> None:
    """One cluster for all the cases: each is checked against a fresh snapshot of etcd."""
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox"))
    live.eventually(lambda: len(live.running("api")) == 1, message="api running")
    for args, fragment, status in BAD_INPUT:
        before = live.snapshot()
        result = swarmctl(live, *args)
        assert_one_line_error(result, fragment, exit_code=status)
        # inspect prints what it found, as docker does: an empty list here.
        assert result.stdout in ("", "[]\n"), (args, result.stdout)
        assert live.snapshot() == before, f"{args} wrote to etcd"


def test_unreachable_controller_is_one_line(etcd_server: EtcdServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ca = pki.create_root_ca("elsewhere")
    pki.issue_admin_identity(ca, cluster_id="elsewhere").save(tmp_path)
    monkeypatch.setenv("SWARMCTL_TLS_DIR", str(tmp_path))
    port = free_port()  # bound, then closed: nothing listens there
    for args in (("service", "ls"), ("node", "ls"),
                 ("service", "create", "web", "--image", "busybox")):
        result = CliRunner().invoke(app, ["--controller", f"127.0.0.1:{port}",
                                          "--request-timeout", "2",
                                          *args])
        assert_one_line_error(result, f"swarmctl: cannot reach controller at 127.0.0.1:{port}",
                              exit_code=1)
    result = CliRunner().invoke(app, ["node", "ls"],
                                env={"SWARMCTL_CONTROLLER": f"127.0.0.1:{port}"})
    assert_one_line_error(result, f"cannot reach controller at 127.0.0.1:{port}", exit_code=1)


def test_cluster_inspect_and_join_tokens(live: LiveCluster) -> None:
    shown = ok(swarmctl(live, "cluster", "inspect")).stdout
    fingerprint = pki.fingerprint(live.controller.pki.ca.cert)
    assert fingerprint in shown
    assert "90d" in shown or "2160h" in shown, shown
    data = json.loads(ok(swarmctl(live, "cluster", "inspect", "-o", "json")).stdout)
    assert data[0]["fingerprint"] == fingerprint
    worker = ok(swarmctl(live, "cluster", "join-token", "-q", "worker")).stdout.strip()
    assert worker == str(live.controller.pki.token(pki.Role.WORKER))
    assert f"swarm-agent --join-token {worker}" in ok(
        swarmctl(live, "cluster", "join-token", "worker")).stdout
    controller_token = ok(swarmctl(live, "cluster", "join-token", "-q", "controller")).stdout
    assert controller_token.strip() != worker
    rotated = ok(swarmctl(live, "cluster", "join-token", "--rotate", "-q", "worker")).stdout
    assert rotated.strip() != worker
    assert rotated.strip().startswith("SWMTKN-1-")
    assert_one_line_error(swarmctl(live, "cluster", "join-token", "boss"),
                          "swarmctl: invalid role 'boss'", exit_code=2)


def test_without_an_admin_certificate_swarmctl_says_what_to_do(
        live: LiveCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARMCTL_TLS_DIR")
    assert_one_line_error(swarmctl(live, "node", "ls"), "swarmctl: no admin certificate",
                          exit_code=1)
    result = swarmctl(live, "--insecure", "node", "ls")  # a TLS controller refuses plaintext
    assert_one_line_error(result, f"swarmctl: cannot reach controller at {live.addr}",
                          exit_code=1)


def _complete(live: LiveCluster, words: str) -> list[str]:
    """What bash would offer after `words` (the protocol of the script that
    `swarmctl --show-completion bash` prints), from the real entry point."""
    argv = words.split(" ")
    env = {**os.environ, "_SWARMCTL_COMPLETE": "complete_bash",
           "COMP_WORDS": " ".join(["swarmctl", "--controller", live.addr, *argv]),
           "COMP_CWORD": str(len(argv) + 2)}
    done = subprocess.run([sys.executable, "-c", "from swarm.cli.main import main; main()"], env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stderr == ""
    return done.stdout.split()


def test_shell_completion_offers_commands_and_the_clusters_names(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "-d", "web", "--image", "busybox"))
    ok(swarmctl(live, "service", "create", "-d", "worker", "--image", "busybox"))
    ok(swarmctl(live, "network", "create", "backend"))

    assert _complete(live, "serv") == ["service"]
    assert "scale" in _complete(live, "service ")
    assert _complete(live, "service scale w") == ["web=", "worker="]
    assert _complete(live, "service ps wo") == ["worker"]
    assert _complete(live, "network rm b") == ["backend"]
    hostnames = sorted(live.node_ids())
    assert hostnames
    assert _complete(live, "node inspect ") == hostnames

    # The shell waits on every TAB: an unreachable controller offers nothing,
    # quietly and at once.
    env = {**os.environ, "_SWARMCTL_COMPLETE": "complete_bash",
           "COMP_WORDS": "swarmctl --controller 127.0.0.1:1 service ps ", "COMP_CWORD": "5"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from swarm.cli.main import main; main()"], env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    assert (done.stdout.split(), done.stderr) == ([], "")
    assert time.monotonic() - started < 10

    script = subprocess.run([sys.executable, "-c", "from swarm.cli.main import main; main()",
                             "--show-completion", "bash"], env={**os.environ, "SHELL": "/bin/bash"},
                            capture_output=True, text=True, timeout=30)
    assert "_SWARMCTL_COMPLETE=complete_bash" in script.stdout


def test_host_network_service_runs_without_addresses_and_refuses_ports(
        live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "--name", "mon", "--network", "host", "busybox",
                "--timeout", "20s"))
    service = live.service("mon")
    assert service.spec.task.host_network
    assert list(service.endpoint.virtual_ips) == []
    (task,) = live.running("mon")
    assert list(task.networks) == []  # no overlay attachment, no address
    # Found before sending: exit 2. Found by the controller (an update): exit 1. Nothing
    # written either way.
    before = live.snapshot()
    assert_one_line_error(swarmctl(live, "service", "create", "--network", "host", "-p",
                                   "80:80", "busybox"), "--publish", exit_code=2)
    assert_one_line_error(swarmctl(live, "service", "update", "--publish-add", "80:80", "mon"),
                          "spec.endpoint.ports", "cannot publish ports", exit_code=1)
    assert live.snapshot() == before
