"""Manager nodes for placement: a node registers with its role (here the first
simulated node as a manager, as `swarmctl dev up`'s first host and an agent beside
a controller do), a stack pinned to `node.role == manager` lands on it, and
`swarmctl node promote/demote` move the role as placement sees it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.api.v1 import objects_pb2 as pb
from tests.etcd_server import EtcdServer
from tests.integration.live import (
    BROKEN_IMAGE,
    LiveCluster,
    assert_one_line_error,
    ok,
    swarmctl,
)

# As the Docker voting-app sample pins its database.
STACK = """\
services:
  db:
    image: busybox:1.36
    command: ["sleep", "3600"]
    deploy:
      placement:
        constraints: [node.role == manager]
  web:
    image: busybox:1.36
    deploy:
      replicas: 2
      placement:
        constraints: ["node.role==worker"]
"""


@pytest.fixture
def managed(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveCluster]:
    """The `live` cluster, with its first simulated node (sim-0000) a manager."""
    cluster = LiveCluster(etcd_server, etcd_prefix, reject_images={BROKEN_IMAGE}, managers=1)
    cluster.controller.pki.admin_identity().save(tmp_path / "admin")
    monkeypatch.setenv("SWARMCTL_TLS_DIR", str(tmp_path / "admin"))
    try:
        yield cluster
    finally:
        cluster.close()


def _nodes_of(live: LiveCluster, service: str) -> set[str]:
    hostnames = {node_id: name for name, node_id in live.node_ids().items()}
    return {hostnames[t.node_id] for t in live.running(service)}


def test_manager_pinned_stack_lands_on_the_first_node_and_follows_promote(
        managed: LiveCluster, tmp_path: Path) -> None:
    live = managed
    roles = {n.description.hostname: n.spec.role for n in live.stored("nodes")
             if isinstance(n, pb.Node)}
    assert roles == {"sim-0000": pb.NodeSpec.MANAGER, "sim-0001": pb.NodeSpec.WORKER,
                     "sim-0002": pb.NodeSpec.WORKER}
    listed = ok(swarmctl(live, "node", "ls", "-q", "--filter", "role=manager")).stdout
    assert listed.split() == [live.node_ids()["sim-0000"]]

    stack = tmp_path / "stack.yaml"
    stack.write_text(STACK)
    ok(swarmctl(live, "apply", "-f", str(stack), "--stack", "vote", "--timeout", "20s"))
    live.eventually(lambda: _nodes_of(live, "vote_db") == {"sim-0000"}, message="db placed")
    live.eventually(lambda: len(live.running("vote_web")) == 2, message="web placed")
    assert _nodes_of(live, "vote_web") <= {"sim-0001", "sim-0002"}

    # Promote sim-0001, demote sim-0000: placement sees it, db moves to the new manager.
    assert ok(swarmctl(live, "node", "promote", "sim-0001")).stdout == (
        "Node sim-0001 promoted to a manager.\n")
    assert ok(swarmctl(live, "node", "demote", "sim-0000")).stdout == (
        "Node sim-0000 demoted to a worker.\n")
    ok(swarmctl(live, "service", "update", "--force", "vote_db", "--timeout", "20s"))
    live.eventually(lambda: _nodes_of(live, "vote_db") == {"sim-0001"},
                    message="db on the promoted node")

    # Already a manager: said, nothing written. An unknown node: one line, exit 1.
    before = live.snapshot()
    assert ok(swarmctl(live, "node", "promote", "sim-0001")).stdout == (
        "Node sim-0001 is already a manager.\n")
    assert live.snapshot() == before
    assert_one_line_error(swarmctl(live, "node", "demote", "ghost"), "ghost", "not found",
                          exit_code=1)
    assert live.snapshot() == before
