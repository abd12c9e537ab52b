"""Runtime options through swarmctl against a live control plane (real etcd,
the real controller, simulated nodes): the flags reach the stored spec, an
update changes them with the -add/-rm forms, and bad input is one line naming
it, exit 2 before anything is sent (or 1 when the controller refuses it),
with etcd unchanged (a snapshot of every key, before and after)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import client
from swarm.cli.client import RpcFailure
from tests.integration.live import LiveCluster, assert_one_line_error, ok, swarmctl

pytestmark = pytest.mark.integration


def test_runtime_flags_are_stored_and_updated(live: LiveCluster, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("MODE=from-file\n")
    ok(swarmctl(live, "service", "create", "-d", "web", "--image", "busybox",
                "--cap-add", "net_admin", "--cap-drop", "NET_RAW",
                "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",
                "--ulimit", "nofile=1024:2048", "--limit-pids", "64",
                "--device", "/dev/fuse", "--group-add", "staff",
                "--dns", "10.0.0.2", "--dns-search", "svc.example", "--dns-option", "ndots:2",
                "--host", "db.internal:10.0.0.5", "--env-file", str(env_file), "--tty",
                "--stop-signal", "SIGUSR1"))
    container = live.service("web").spec.task.container
    assert (list(container.cap_add), list(container.cap_drop)) == (["CAP_NET_ADMIN"],
                                                                   ["CAP_NET_RAW"])
    assert dict(container.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert [(u.name, u.soft, u.hard) for u in container.ulimits] == [("nofile", 1024, 2048)]
    assert container.pids_limit == 64
    assert [d.path_on_host for d in container.devices] == ["/dev/fuse"]
    assert list(container.groups) == ["staff"]
    assert list(container.dns_config.nameservers) == ["10.0.0.2"]
    assert list(container.hosts) == ["10.0.0.5 db.internal"]
    assert list(container.env) == ["MODE=from-file"]
    assert (container.tty, container.stop_signal) == (True, "SIGUSR1")

    ok(swarmctl(live, "service", "update", "-d", "web", "--cap-drop", "NET_ADMIN",
                "--sysctl-rm", "net.ipv4.ip_unprivileged_port_start", "--ulimit-rm", "nofile",
                "--limit-pids", "128", "--device-rm", "/dev/fuse", "--dns-rm", "10.0.0.2",
                "--host-add", "cache:10.0.0.6", "--no-tty"))
    container = live.service("web").spec.task.container
    assert (list(container.cap_add), list(container.cap_drop)) == (
        [], ["CAP_NET_RAW", "CAP_NET_ADMIN"])
    assert (dict(container.sysctls), list(container.ulimits), list(container.devices)) == (
        {}, [], [])
    assert (container.pids_limit, container.tty) == (128, False)
    assert list(container.dns_config.nameservers) == []
    assert list(container.hosts) == ["10.0.0.5 db.internal", "10.0.0.6 cache"]


BAD_INPUT = [
    (("service", "create", "web", "--image", "busybox", "--cap-add", "NET_ADMINN"),
     "--cap-add: unknown capability 'NET_ADMINN'"),
    (("service", "create", "web", "--image", "busybox", "--sysctl", "kernel.panic=1"),
     "--sysctl: sysctl 'kernel.panic' is not namespaced"),
    (("service", "create", "web", "--image", "busybox", "--ulimit", "nofile=1024:lots"),
     "--ulimit: invalid ulimit 'nofile=1024:lots'"),
    (("service", "create", "web", "--image", "busybox", "--limit-pids", "0"),
     "--limit-pids: invalid number '0': must be at least 1"),
    (("service", "create", "web", "--image", "busybox", "--limit-pids", "-1"),
     "--limit-pids: invalid number '-1': must be at least 1"),
    (("service", "update", "api", "--cap-add", "SYS_NOPE"),
     "--cap-add: unknown capability 'SYS_NOPE'"),
    (("service", "update", "api", "--sysctl-add", "kernel.panic=1"),
     "--sysctl-add: sysctl 'kernel.panic' is not namespaced"),
    (("service", "update", "api", "--ulimit-add", "nofile"), "--ulimit-add: invalid ulimit"),
    (("service", "update", "api", "--limit-pids", "0"), "--limit-pids: invalid number '0'"),
]


def test_bad_runtime_options_are_one_line_exit_2_and_write_nothing(
        live: LiveCluster, tmp_path: Path) -> None:
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox"))
    live.eventually(lambda: len(live.running("api")) == 1, message="api running")
    for args, fragment in BAD_INPUT:
        before = live.snapshot()
        result = swarmctl(live, *args)
        line = assert_one_line_error(result, fragment, exit_code=2)
        assert line.startswith(f"swarmctl: {fragment}"), line
        assert live.snapshot() == before, f"{args} wrote to etcd"
    # A stack file: checked whole before anything is sent.
    stack = tmp_path / "stack.yaml"
    stack.write_text("services:\n  web:\n    image: busybox\n    sysctls:\n"
                     "      kernel.panic: 1\n")
    before = live.snapshot()
    result = swarmctl(live, "stack", "deploy", "-c", str(stack), "shop")
    assert_one_line_error(result, f"{stack}:5:21: services.web.sysctls.kernel.panic: sysctl "
                          "'kernel.panic' is not namespaced", exit_code=2)
    assert live.snapshot() == before


def test_the_controller_refuses_what_swarmctl_would_never_send(live: LiveCluster) -> None:
    """Another client may send anything: the controller's validation names the
    field (INVALID_ARGUMENT) and writes nothing."""
    bad_containers = [
        (pb.ContainerSpec(cap_add=["CAP_NOPE"]), "spec.task.container.cap_add[0]: unknown"),
        (pb.ContainerSpec(sysctls={"kernel.panic": "1"}),
         "spec.task.container.sysctls['kernel.panic']: sysctl 'kernel.panic' is not namespaced"),
        (pb.ContainerSpec(ulimits=[pb.Ulimit(name="nofile", soft=10, hard=5)]),
         "spec.task.container.ulimits[0]: ulimit nofile: the soft limit (10)"),
        (pb.ContainerSpec(pids_limit=-1), "spec.task.container.pids_limit: must not be negative"),
        (pb.ContainerSpec(devices=[pb.DeviceMapping(path_on_host="/dev/x", permissions="q")]),
         "spec.task.container.devices[0]: invalid device permissions 'q'"),
    ]
    with client.connect(live.addr) as ctl:
        for container, message in bad_containers:
            container.image = "busybox"
            spec = pb.ServiceSpec(name="web", task=pb.TaskSpec(container=container))
            before = live.snapshot()
            with pytest.raises(RpcFailure) as caught:
                ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(spec=spec))
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert str(caught.value).startswith(message), str(caught.value)
            assert live.snapshot() == before
