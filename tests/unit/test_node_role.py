"""The role a node registers with (placement's node.role) and the spec
`swarmctl node promote/demote` send: pure decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.agent.main import parse_args, registration_role
from swarm.api.constraints import first_unmet, parse_constraints
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.node import role_change

MANAGER, WORKER = pb.NodeSpec.MANAGER, pb.NodeSpec.WORKER


@pytest.mark.parametrize(("given", "controllers", "advertise", "role"), [
    ("manager", ["10.0.0.1:2377"], "10.0.0.2", MANAGER),
    ("worker", ["127.0.0.1:2377"], "10.0.0.2", WORKER),  # --role wins over the default
    (None, ["10.0.0.1:2377"], "10.0.0.2", WORKER),
    (None, ["10.0.0.1:2377", "127.0.0.1:2377"], "10.0.0.2", MANAGER),  # beside a controller
    (None, ["10.0.0.2:2377"], "10.0.0.2", MANAGER),  # on its own advertised address
    (None, ["localhost:2377"], "10.0.0.2", MANAGER),
    (None, ["[::1]:2377"], "10.0.0.2", MANAGER),
    (None, ["ctl.example:2377"], "10.0.0.2", WORKER),
])
def test_registration_role(given: str | None, controllers: list[str], advertise: str,
                           role: int) -> None:
    assert registration_role(given, controllers, advertise) == role


def test_agent_role_flag(tmp_path: Path) -> None:
    base = ["--controller", "10.0.0.1:2377", "--state-dir", str(tmp_path),
            "--advertise-addr", "10.0.0.2"]
    assert parse_args(base).role == WORKER
    assert parse_args([*base, "--role", "manager"]).role == MANAGER
    with pytest.raises(SystemExit):
        parse_args([*base, "--role", "leader"])


def test_role_change_is_none_when_the_node_has_the_role_and_keeps_the_rest() -> None:
    node = pb.Node(id="n1", spec=pb.NodeSpec(labels={"zone": "east"}, role=WORKER,
                                             availability=pb.NodeSpec.DRAIN))
    assert role_change(node, WORKER) is None
    promoted = role_change(node, MANAGER)
    assert promoted == pb.NodeSpec(labels={"zone": "east"}, role=MANAGER,
                                   availability=pb.NodeSpec.DRAIN)
    assert node.spec.role == WORKER  # the node read is not changed
    # What placement then sees.
    node.spec.CopyFrom(promoted)
    assert first_unmet(parse_constraints(["node.role==manager"]), node) is None
