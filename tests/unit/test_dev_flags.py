"""`swarmctl dev up` refuses bad HA flags before making anything (exit 2, one line)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from swarm.cli.dev import cluster
from swarm.cli.main import app


@pytest.mark.parametrize(("args", "message"), [
    (["--controllers", "0"], "--controllers 0: expected 1 to 7"),
    (["--controllers", "8"], "--controllers 8: expected 1 to 7"),
    (["--etcd-members", "0"], "--etcd-members 0: expected 1 to 7"),
    (["--agent-arg", "h2"], "--agent-arg 'h2': expected HOST:FLAG, e.g. "
                            "h2:--generic-resource=gpu=2"),
    (["--agent-arg", "h2:gpu=2"], "--agent-arg 'h2:gpu=2': expected HOST:FLAG, e.g. "
                                  "h2:--generic-resource=gpu=2"),
    (["--nodes", "2", "--agent-arg", "h3:--device-dir=/tmp"],
     "--agent-arg h3:...: no host 'h3' in a cluster of 2 (hosts h1 to h2)"),
])
def test_bad_counts_are_refused_before_anything_is_made(args: list[str], message: str) -> None:
    name = "flagtest"
    result = CliRunner().invoke(app, ["dev", "up", "--name", name, *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"swarmctl: {message}"]
    assert not cluster.state_dir(name).exists()


def test_the_ith_controller_and_member_take_the_ith_hundred() -> None:
    state = cluster.ClusterState(name="x", subnet="192.168.77.0/24", gateway="192.168.77.1",
                                 controllers=3, etcd_members=3)
    assert state.controller_addrs == ["192.168.77.1:2377", "192.168.77.1:2477",
                                      "192.168.77.1:2577"]
    assert state.etcd_endpoints == ["192.168.77.1:2379", "192.168.77.1:2479",
                                    "192.168.77.1:2579"]
    assert state.controller == "192.168.77.1:2377"
    argv = cluster.etcd_member_argv(state, 1)
    assert argv[argv.index("--initial-cluster") + 1] == (
        "x-e0=http://192.168.77.1:2380,x-e1=http://192.168.77.1:2480,"
        "x-e2=http://192.168.77.1:2580")
    assert argv[argv.index("--name") + 1] == "x-e1"
    first, second = cluster.controller_argv(state, 0), cluster.controller_argv(state, 1)
    assert "--init" in first  # the first initialises the cluster and writes the admin identity
    assert "--init" not in second
    assert "--admin-out" not in second
    assert [a for a in second if a.startswith("--etcd=")] == [
        f"--etcd={e}" for e in state.etcd_endpoints]


def test_several_controllers_make_one_target() -> None:
    from swarm.cli import client

    assert client.grpc_target("10.0.0.1:2377") == "10.0.0.1:2377"
    assert client.grpc_target("10.0.0.1:2377, 10.0.0.2:2377") == "ipv4:10.0.0.1:2377,10.0.0.2:2377"
    assert client.controller_addrs("10.0.0.1:2377,10.0.0.2:2377") == ["10.0.0.1:2377",
                                                                      "10.0.0.2:2377"]
