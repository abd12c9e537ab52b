"""`swarmctl apply` and `swarmctl stack ...` against a live control plane (real etcd,
real controller, simulated nodes; see tests/integration/live.py): what a deploy
writes, that a second one writes nothing, that --dry-run and an invalid file write
nothing at all, updates, --prune, and stack ls/ps/services/rm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.compose import NAMESPACE_LABEL
from tests.integration.live import (
    BROKEN_IMAGE,
    NODES,
    LiveCluster,
    assert_one_line_error,
    ok,
    swarmctl,
    table_rows,
)
from tests.unit.test_compose import FULL

pytestmark = pytest.mark.integration

STACK = """\
name: shop
services:
  web:
    image: busybox:1.36
    command: httpd -f -p 80
    ports: ["8080:80"]
    networks: [backend]
    environment:
      MODE: prod
    deploy:
      replicas: 2
  kv:
    image: redis:7
    networks:
      backend:
        aliases: [store]
    deploy:
      resources:
        reservations: {memory: 16M}
  worker:
    image: busybox:1.36
    command: ["sleep", "3600"]
networks:
  backend:
    attachable: true
"""


def write(tmp_path: Path, text: str, name: str = "stack.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def services_of(live: LiveCluster, stack: str) -> dict[str, pb.Service]:
    return {s.spec.name: s for s in live.stored("services") if isinstance(s, pb.Service)
            and s.spec.labels.get(NAMESPACE_LABEL) == stack}


def networks_of(live: LiveCluster, stack: str) -> dict[str, pb.Network]:
    return {n.spec.name: n for n in live.stored("networks") if isinstance(n, pb.Network)
            and n.spec.labels.get(NAMESPACE_LABEL) == stack}


def test_apply_creates_networks_and_services_then_changes_nothing(live: LiveCluster,
                                                                  tmp_path: Path) -> None:
    file = write(tmp_path, STACK)
    result = ok(swarmctl(live, "apply", "-f", file))
    assert "network shop_backend: created" in result.stdout
    assert "network shop_default: created" in result.stdout  # worker names no network
    assert "service shop_web: created" in result.stdout
    assert "converged" in result.stderr

    networks = networks_of(live, "shop")
    assert set(networks) == {"shop_backend", "shop_default"}
    assert networks["shop_backend"].spec.attachable
    services = services_of(live, "shop")
    assert set(services) == {"shop_web", "shop_kv", "shop_worker"}
    web = services["shop_web"]
    assert web.spec.labels[NAMESPACE_LABEL] == "shop"
    assert web.spec.replicated.replicas == 2
    assert list(web.spec.task.container.args) == ["httpd", "-f", "-p", "80"]
    assert [(n.target, list(n.aliases)) for n in web.spec.task.networks] == [
        (networks["shop_backend"].id, ["web"])]
    kv = services["shop_kv"]
    assert list(kv.spec.task.networks[0].aliases) == ["kv", "store"]
    assert services["shop_worker"].spec.task.networks[0].target == networks["shop_default"].id
    assert len(live.running("shop_web")) == 2

    before = live.snapshot()
    again = ok(swarmctl(live, "apply", "-f", file))
    assert again.stdout.count("unchanged") == 5, again.stdout
    assert "created" not in again.stdout
    assert "updated" not in again.stdout
    assert live.snapshot() == before

    # `stack deploy` is the same thing under docker's name.
    ok(swarmctl(live, "stack", "deploy", "-c", file, "shop"))
    assert live.snapshot() == before


def test_dry_run_writes_nothing_and_prints_fields(live: LiveCluster, tmp_path: Path) -> None:
    file = write(tmp_path, STACK)
    before = live.snapshot()
    result = ok(swarmctl(live, "apply", "-f", file, "--dry-run"))
    assert live.snapshot() == before
    assert "service shop_web: would be created" in result.stdout
    assert '+ task.container.image: "busybox:1.36"' in result.stdout
    assert "+ endpoint.ports[0].published_port: 8080" in result.stdout

    ok(swarmctl(live, "apply", "-f", file))  # converged: the tasks stay as they are
    edited = write(tmp_path, STACK.replace("MODE: prod", "MODE: test"))
    before = live.snapshot()
    result = ok(swarmctl(live, "apply", "-f", edited, "--dry-run"))
    assert live.snapshot() == before
    assert "service shop_web: would be updated" in result.stdout
    assert '~ task.container.env[0]: "MODE=prod" -> "MODE=test"' in result.stdout
    assert "service shop_kv: unchanged" in result.stdout


def test_an_edit_updates_only_the_changed_service(live: LiveCluster, tmp_path: Path) -> None:
    file = write(tmp_path, STACK)
    ok(swarmctl(live, "apply", "-f", file))
    before = services_of(live, "shop")
    edited = write(tmp_path, STACK.replace("replicas: 2", "replicas: 3")
                   .replace("image: busybox:1.36\n    command: httpd",
                            "image: busybox:1.37\n    command: httpd"))
    result = ok(swarmctl(live, "apply", "-f", edited))
    assert "service shop_web: updated" in result.stdout
    assert "service shop_kv: unchanged" in result.stdout
    after = services_of(live, "shop")
    assert after["shop_web"].spec.task.container.image == "busybox:1.37"
    assert after["shop_web"].spec_version == before["shop_web"].spec_version + 1
    for name in ("shop_kv", "shop_worker"):
        assert after[name].meta.version == before[name].meta.version
    assert len(live.running("shop_web")) == 3
    assert all(t.spec.container.image == "busybox:1.37" for t in live.running("shop_web"))


def test_prune_removes_what_left_the_file(live: LiveCluster, tmp_path: Path) -> None:
    ok(swarmctl(live, "apply", "-f", write(tmp_path, STACK), "-d"))
    smaller = STACK[:STACK.index("  worker:")] + STACK[STACK.index("networks:\n  backend"):]
    file = write(tmp_path, smaller)
    kept = ok(swarmctl(live, "apply", "-f", file, "-d"))
    assert "shop_worker is not in the file (kept; --prune removes it)" in kept.stdout
    assert "shop_worker" in services_of(live, "shop")

    pruned = ok(swarmctl(live, "apply", "-f", file, "--prune", "-d"))
    assert "service shop_worker: removed" in pruned.stdout
    assert "network shop_default: removed" in pruned.stdout
    assert set(services_of(live, "shop")) == {"shop_web", "shop_kv"}
    assert set(networks_of(live, "shop")) == {"shop_backend"}


def test_an_invalid_file_changes_nothing(live: LiveCluster, tmp_path: Path) -> None:
    ok(swarmctl(live, "apply", "-f", write(tmp_path, STACK)))  # converged: tasks stay put
    before = live.snapshot()
    bad = STACK.replace("replicas: 2", "replicas: 5").replace(
        '    command: ["sleep", "3600"]', '    command: ["sleep", "3600"]\n    ports: ["80a"]')
    file = write(tmp_path, bad)
    result = swarmctl(live, "apply", "-f", file)
    assert_one_line_error(result, f"{file}:23:13: services.worker.ports[0]: invalid port "
                                  '"80a"', exit_code=2)
    assert live.snapshot() == before

    # Refused by the controller's own rules, found before anything is written.
    bad = STACK.replace("image: redis:7", "image: Redis:7")
    result = swarmctl(live, "apply", "-f", write(tmp_path, bad))
    assert_one_line_error(result, "services.kv.image: invalid image reference 'Redis:7'",
                          exit_code=2)
    assert live.snapshot() == before


def test_warnings_name_the_line_and_unsatisfiable_constraints(live: LiveCluster,
                                                             tmp_path: Path) -> None:
    text = """\
services:
  app:
    image: busybox
    privileged: true
    deploy:
      placement:
        constraints: [node.labels.gpu == yes]
"""
    (tmp_path / "proj").mkdir()
    file = write(tmp_path / "proj", text)
    result = swarmctl(live, "apply", "-f", file, "-d")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert f"warning: {file}:4:17: services.app.privileged: not supported by this " \
           "orchestrator; ignored" in lines
    assert any(line.startswith(f"warning: {file}:7:23: services.app.deploy.placement."
                               "constraints[0]: no node satisfies") for line in lines), lines
    # The stack is named after the directory.
    assert set(services_of(live, "proj")) == {"proj_app"}


def test_stack_ls_services_ps_and_rm(live: LiveCluster, tmp_path: Path) -> None:
    ok(swarmctl(live, "apply", "-f", write(tmp_path, STACK)))
    ok(swarmctl(live, "apply", "-f", write(tmp_path, "services:\n  one:\n    image: busybox\n",
                                           "other.yaml"), "--stack", "solo"))
    rows = table_rows(ok(swarmctl(live, "stack", "ls")).stdout)
    assert rows == [["shop", "3", "2"], ["solo", "1", "1"]]
    listed = json.loads(ok(swarmctl(live, "stack", "ls", "-o", "json")).stdout)
    assert listed == [
        {"name": "shop", "services": ["shop_kv", "shop_web", "shop_worker"],
         "networks": ["shop_backend", "shop_default"]},
        {"name": "solo", "services": ["solo_one"], "networks": ["solo_default"]}]
    assert yaml.safe_load(ok(swarmctl(live, "stack", "ls", "-o", "yaml")).stdout) == listed

    services = table_rows(ok(swarmctl(live, "stack", "services", "shop")).stdout)
    assert [(row[1], row[3]) for row in services] == [
        ("shop_kv", "1/1"), ("shop_web", "2/2"), ("shop_worker", "1/1")]
    as_json = json.loads(ok(swarmctl(live, "stack", "services", "shop", "-o", "json")).stdout)
    assert [s["spec"]["name"] for s in as_json] == ["shop_kv", "shop_web", "shop_worker"]

    tasks = table_rows(ok(swarmctl(live, "stack", "ps", "shop")).stdout)
    assert len(tasks) == 4
    assert {row[3] for row in tasks} <= {f"sim-000{i}" for i in range(NODES)}
    ps_yaml = yaml.safe_load(ok(swarmctl(live, "stack", "ps", "shop", "-o", "yaml")).stdout)
    assert len(ps_yaml) == 4

    removed = ok(swarmctl(live, "stack", "rm", "shop"))
    assert "network shop_backend: removed" in removed.stdout
    assert services_of(live, "shop") == {}
    assert networks_of(live, "shop") == {}
    assert set(services_of(live, "solo")) == {"solo_one"}
    assert_one_line_error(swarmctl(live, "stack", "ps", "shop"), "stack 'shop' not found",
                          exit_code=1)


def test_external_networks_are_used_not_created(live: LiveCluster, tmp_path: Path) -> None:
    text = ("name: ext\nservices:\n  app:\n    image: busybox\n    networks: [shared]\n"
            "networks:\n  shared:\n    external: true\n")
    file = write(tmp_path, text)
    assert_one_line_error(swarmctl(live, "apply", "-f", file),
                          "networks.shared: external network 'shared' not found", exit_code=1)
    assert services_of(live, "ext") == {}
    network_id = ok(swarmctl(live, "network", "create", "shared")).stdout.strip()
    ok(swarmctl(live, "apply", "-f", file))
    (app,) = services_of(live, "ext").values()
    assert app.spec.task.networks[0].target == network_id
    assert networks_of(live, "ext") == {}
    # Removing the stack leaves the external network alone.
    ok(swarmctl(live, "stack", "rm", "ext"))
    assert [n.id for n in live.stored("networks")
            if isinstance(n, pb.Network) and not n.spec.ingress] == [network_id]


def test_a_stack_that_does_not_converge_exits_3(live: LiveCluster, tmp_path: Path) -> None:
    # Restart condition none: the first rejection is final, so the test is quick.
    file = write(tmp_path, f"name: broken\nservices:\n  app:\n    image: {BROKEN_IMAGE}\n"
                           "    deploy: {restart_policy: {condition: none}}\n")
    result = swarmctl(live, "apply", "-f", file, "--timeout", "20s")
    assert result.exit_code == 3, result.output
    assert "service broken_app: created" in result.stdout
    assert f"image {BROKEN_IMAGE} not found" in result.stderr
    # -d returns at once; the service is unchanged anyway.
    assert "unchanged" in ok(swarmctl(live, "apply", "-f", file, "-d")).stdout


def test_every_key_survives_a_round_trip_unchanged(live: LiveCluster, tmp_path: Path) -> None:
    """Whatever the controller fills in or rewrites (defaults, network IDs, canonical
    subnets) must not look like a change: the full example applies, then is unchanged."""
    extra = ("  extra:\n    image: busybox\n    ports: ['80', '9000-9001:90-91/udp']\n"
             "    healthcheck: {disable: true}\n")
    text = FULL.replace("  shared:\n    external: true\n", "").replace(
        "networks:\n  front:", extra + "networks:\n  front:")
    file = write(tmp_path, text)
    first = ok(swarmctl(live, "apply", "-f", file, "-d"))
    assert first.stdout.count(": created") == 6, first.stdout
    again = ok(swarmctl(live, "apply", "-f", file, "-d"))
    assert again.stdout.count(": unchanged") == 6, again.stdout
    dry = ok(swarmctl(live, "apply", "-f", file, "--dry-run"))
    assert "would be" not in dry.stdout
