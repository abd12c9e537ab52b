"""swarmctl without a controller: the pure spec builders, argument parsing, the
rendering of tables, JSON and YAML, and the command flows against a fake stub."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner

from cli import client, parsing, render
from cli.errors import BadFlag, BadInput
from cli.main import app
from cli.network import network_spec_from_options
from cli.node import updated_node_spec
from cli.service import (
    ServiceOptions,
    ServiceUpdateOptions,
    check_update_options,
    service_spec_from_options,
    updated_service_spec,
)
from swarmapi.v1 import control_pb2 as cpb
from swarmapi.v1 import control_pb2_grpc as cgrpc
from swarmapi.v1 import objects_pb2 as pb

SECOND = 1_000_000_000
NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def nanos(value: Duration) -> int:
    return value.ToNanoseconds()


# ---------------------------------------------------------------- service create


def test_create_minimal_spec_has_docker_defaults() -> None:
    spec = service_spec_from_options(ServiceOptions(name="web", image="busybox"))
    assert spec.name == "web"
    assert spec.task.container.image == "busybox"
    assert spec.WhichOneof("mode") == "replicated"
    assert spec.replicated.replicas == 1
    # Nothing the user did not ask for: the server fills in its defaults.
    assert not spec.HasField("update")
    assert not spec.HasField("rollback")
    assert not spec.task.HasField("restart")
    assert not spec.task.container.HasField("healthcheck")
    assert list(spec.task.container.args) == []


def test_create_maps_every_flag() -> None:
    spec = service_spec_from_options(ServiceOptions(
        name="web", image="nginx:alpine", args=["nginx", "-g", "daemon off;"],
        replicas="3", env=["A=1", "B=x=y", "A=2"], labels=["tier=front", "bare"],
        container_labels=["c=d"], constraints=["node.labels.zone == east", "node.role!=manager"],
        placement_prefs=["spread=node.labels.zone"], max_replicas_per_node="2",
        limit_cpu="0.5", limit_memory="512M", reserve_cpu="0.25", reserve_memory="64Mi",
        restart_condition="on-failure", restart_delay="3s", restart_max_attempts="4",
        restart_window="1m",
        update_parallelism="2", update_delay="10s", update_order="start-first",
        update_failure_action="rollback", update_monitor="30s", update_max_failure_ratio="0.25",
        rollback_parallelism="0", rollback_failure_action="continue",
        publish=["8080:80", "53:53/udp", "published=9000,target=90,protocol=tcp,mode=host"],
        networks=["backend", "name=front,alias=www,alias=web"], endpoint_mode="dnsrr",
        workdir="/srv", user="nobody", hostname="box", stop_signal="SIGINT",
        stop_grace_period="20s", read_only=True, init=True,
        health_cmd="wget -q localhost", health_interval="5s", health_timeout="2s",
        health_retries="3", health_start_period="1s",
        mounts=["type=volume,source=data,target=/data,readonly", "type=tmpfs,target=/tmp,"
                                                                 "tmpfs-size=16M"],
        entrypoint="/bin/sh -c",
    ))
    container = spec.task.container
    assert container.image == "nginx:alpine"
    assert list(container.args) == ["nginx", "-g", "daemon off;"]
    assert list(container.command) == ["/bin/sh", "-c"]
    assert list(container.env) == ["A=2", "B=x=y"]
    assert dict(spec.labels) == {"tier": "front", "bare": ""}
    assert dict(container.labels) == {"c": "d"}
    assert spec.replicated.replicas == 3
    placement = spec.task.placement
    assert list(placement.constraints) == ["node.labels.zone==east", "node.role!=manager"]
    assert [p.spread for p in placement.preferences] == ["node.labels.zone"]
    assert placement.max_replicas_per_node == 2
    resources = spec.task.resources
    assert resources.limits.nano_cpus == SECOND // 2
    assert resources.limits.memory_bytes == 512 * 1024**2
    assert resources.reservations.nano_cpus == SECOND // 4
    assert resources.reservations.memory_bytes == 64 * 1024**2
    restart = spec.task.restart
    assert restart.condition == pb.RestartPolicy.ON_FAILURE
    assert nanos(restart.delay) == 3 * SECOND
    assert restart.max_attempts == 4
    assert nanos(restart.window) == 60 * SECOND
    update = spec.update
    assert update.parallelism == 2
    assert nanos(update.delay) == 10 * SECOND
    assert update.order == pb.UpdateConfig.START_FIRST
    assert update.failure_action == pb.UpdateConfig.ROLLBACK
    assert nanos(update.monitor) == 30 * SECOND
    assert update.max_failure_ratio == pytest.approx(0.25)
    assert spec.rollback.parallelism == 0
    assert spec.rollback.failure_action == pb.UpdateConfig.CONTINUE
    assert nanos(spec.rollback.monitor) == 5 * SECOND  # default kept for the rest
    ports = list(spec.endpoint.ports)
    assert [(p.published_port, p.target_port, p.protocol, p.publish_mode) for p in ports] == [
        (8080, 80, pb.PortConfig.TCP, pb.PortConfig.INGRESS),
        (53, 53, pb.PortConfig.UDP, pb.PortConfig.INGRESS),
        (9000, 90, pb.PortConfig.TCP, pb.PortConfig.HOST),
    ]
    assert spec.endpoint.mode == pb.EndpointSpec.DNSRR
    assert [(n.target, list(n.aliases)) for n in spec.task.networks] == [
        ("backend", []), ("front", ["www", "web"])]
    assert (container.dir, container.user, container.hostname, container.stop_signal) == (
        "/srv", "nobody", "box", "SIGINT")
    assert nanos(container.stop_grace_period) == 20 * SECOND
    assert container.read_only
    assert container.init
    health = container.healthcheck
    assert list(health.test) == ["CMD-SHELL", "wget -q localhost"]
    assert (nanos(health.interval), nanos(health.timeout), health.retries,
            nanos(health.start_period)) == (5 * SECOND, 2 * SECOND, 3, SECOND)
    mounts = list(container.mounts)
    assert (mounts[0].type, mounts[0].source, mounts[0].target, mounts[0].read_only) == (
        pb.Mount.VOLUME, "data", "/data", True)
    assert (mounts[1].type, mounts[1].target, mounts[1].tmpfs_size_bytes) == (
        pb.Mount.TMPFS, "/tmp", 16 * 1024**2)


def test_create_partial_configs_start_from_defaults() -> None:
    spec = service_spec_from_options(ServiceOptions(
        name="web", image="busybox", update_delay="1s", restart_condition="none"))
    assert spec.update.parallelism == 1
    assert nanos(spec.update.monitor) == 5 * SECOND
    assert nanos(spec.update.delay) == SECOND
    assert spec.task.restart.condition == pb.RestartPolicy.NONE
    assert nanos(spec.task.restart.delay) == 5 * SECOND


def test_create_global_mode() -> None:
    spec = service_spec_from_options(ServiceOptions(name="agent", image="busybox",
                                                    mode="global"))
    assert spec.WhichOneof("mode") == "global"
    with pytest.raises(BadFlag, match="--replicas"):
        service_spec_from_options(ServiceOptions(name="agent", image="busybox", mode="global",
                                                 replicas="2"))


def test_create_no_healthcheck() -> None:
    spec = service_spec_from_options(ServiceOptions(name="w", image="b", no_healthcheck=True))
    assert list(spec.task.container.healthcheck.test) == ["NONE"]
    with pytest.raises(BadFlag, match="--no-healthcheck: cannot be combined with --health-cmd"):
        service_spec_from_options(ServiceOptions(name="w", image="b", no_healthcheck=True,
                                                 health_cmd="true"))


BAD_CREATE_FLAGS = [
    ("--replicas", "x", "invalid number"),
    ("--replicas", "-1", "at least 0"),
    ("--mode", "sometimes", "expected one of replicated, global"),
    ("--env", "NOVALUE", "KEY=VALUE"),
    ("--label", "=v", "non-empty key"),
    ("--constraint", "node.role", "KEY==VALUE"),
    ("--placement-pref", "pack=node.labels.x", "spread=node.labels.KEY"),
    ("--max-replicas-per-node", "1.5", "invalid number"),
    ("--limit-cpu", "lots", "invalid CPU count"),
    ("--limit-memory", "lots", "invalid size 'lots'"),
    ("--reserve-cpu", "-1", "invalid CPU count"),
    ("--reserve-memory", "1.5b", "whole number of bytes"),
    ("--restart-condition", "always", "any, on-failure, none"),
    ("--restart-delay", "5", "invalid duration"),
    ("--restart-max-attempts", "many", "invalid number"),
    ("--restart-window", "1y", "invalid duration"),
    ("--update-parallelism", "-2", "at least 0"),
    ("--update-delay", "soon", "invalid duration"),
    ("--update-order", "random", "start-first, stop-first"),
    ("--update-failure-action", "explode", "pause, continue, rollback"),
    ("--update-monitor", "5x", "invalid duration"),
    ("--update-max-failure-ratio", "2", "between 0 and 1"),
    ("--rollback-failure-action", "rollback", "pause, continue"),
    ("--publish", "80:http", "target port"),
    ("--publish", "70000:80", "published port"),
    ("--publish", "8080:80/icmp", "tcp, udp, sctp"),
    ("--publish", "published=80,color=red", "unknown key 'color'"),
    ("--publish", "published=80", "target=PORT is required"),
    ("--network", "alias=x", "name=NETWORK is required"),
    ("--endpoint-mode", "lb", "vip, dnsrr"),
    ("--stop-grace-period", "10", "invalid duration"),
    ("--health-interval", "often", "invalid duration"),
    ("--health-retries", "x", "invalid number"),
    ("--mount", "type=volume,source=x", "target=PATH is required"),
    ("--mount", "type=nfs,target=/x", "volume, bind, tmpfs"),
    ("--mount", "type=bind,source=rel,target=/x", "absolute source"),
    ("--mount", "target=relative", "absolute path"),
    ("--mount", "type=volume,target=/x,readonly=maybe", "true or false"),
    ("--entrypoint", "sh -c 'unbalanced", "invalid command"),
]


@pytest.fixture
def no_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to connect fails the test: input errors come before connecting."""

    def refuse(target: str, *, timeout: float = 0) -> client.Controller:
        raise AssertionError(f"connected to {target} before the input was checked")

    monkeypatch.setattr(client, "connect", refuse)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result: Any, *fragments: str, exit_code: int = 2) -> None:
    assert result.exit_code == exit_code, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("swarmctl: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("no_controller")
@pytest.mark.parametrize(("flag", "value", "why"), BAD_CREATE_FLAGS)
def test_create_bad_value_is_one_line_naming_the_flag(flag: str, value: str, why: str) -> None:
    result = invoke("service", "create", "web", "--image", "busybox", flag, value)
    assert_one_line_error(result, f"swarmctl: {flag}: ", why)


@pytest.mark.usefixtures("no_controller")
def test_create_without_image_is_a_usage_error() -> None:
    assert_one_line_error(invoke("service", "create", "web"), "--image")


# ---------------------------------------------------------------- service update


def current_spec() -> pb.ServiceSpec:
    return service_spec_from_options(ServiceOptions(
        name="web", image="nginx:1", replicas="2", env=["A=1", "B=2"], labels=["x=1"],
        constraints=["node.role==worker"], publish=["8080:80", "53:53/udp"],
        mounts=["type=volume,source=d,target=/d"], update_parallelism="1",
        limit_memory="1g"))


def test_update_applies_adds_and_removes() -> None:
    before = current_spec()
    spec = updated_service_spec(before, ServiceUpdateOptions(
        image="nginx:2", replicas="5", env_add=["B=3", "C=4"], env_rm=["A"],
        label_add=["y=2"], label_rm=["x"], constraint_add=["node.labels.zone==east"],
        constraint_rm=["node.role == worker"], publish_add=["9090:90"], publish_rm=["53/udp"],
        mount_add=["type=tmpfs,target=/t"], mount_rm=["/d"], limit_memory="0",
        limit_cpu="1.5", update_parallelism="3", args="sleep 10", force=True))
    container = spec.task.container
    assert container.image == "nginx:2"
    assert spec.replicated.replicas == 5
    assert list(container.env) == ["B=3", "C=4"]
    assert dict(spec.labels) == {"y": "2"}
    assert list(spec.task.placement.constraints) == ["node.labels.zone==east"]
    assert [(p.published_port, p.target_port) for p in spec.endpoint.ports] == [
        (8080, 80), (9090, 90)]
    assert [m.target for m in container.mounts] == ["/t"]
    assert spec.task.resources.limits.memory_bytes == 0
    assert spec.task.resources.limits.nano_cpus == 3 * SECOND // 2
    assert spec.update.parallelism == 3
    assert list(container.args) == ["sleep", "10"]
    assert spec.task.force_update == 1
    # The spec read is left alone: the caller may need it to retry.
    assert before.task.container.image == "nginx:1"
    assert before.task.force_update == 0


def test_update_publish_add_replaces_the_same_published_port() -> None:
    spec = updated_service_spec(current_spec(), ServiceUpdateOptions(
        publish_add=["8080:81"]))
    assert [(p.published_port, p.target_port) for p in spec.endpoint.ports] == [
        (53, 53), (8080, 81)]


def test_update_without_changes_keeps_the_spec() -> None:
    before = current_spec()
    assert updated_service_spec(before, ServiceUpdateOptions()) == before


def test_update_replicas_of_a_global_service_is_refused() -> None:
    spec = service_spec_from_options(ServiceOptions(name="g", image="b", mode="global"))
    with pytest.raises(BadFlag, match="--replicas: applies to replicated services only"):
        updated_service_spec(spec, ServiceUpdateOptions(replicas="3"))


def test_update_rollback_stands_alone() -> None:
    check_update_options(ServiceUpdateOptions(rollback=True))
    with pytest.raises(BadFlag, match="--rollback: cannot be combined"):
        check_update_options(ServiceUpdateOptions(rollback=True, image="x"))


@pytest.mark.usefixtures("no_controller")
@pytest.mark.parametrize(("args", "fragment"), [
    (("--env-add", "NOVALUE"), "--env-add: "),
    (("--env-rm", "A=1"), "--env-rm: "),
    (("--publish-rm", "http"), "--publish-rm: "),
    (("--limit-memory", "big"), "--limit-memory: invalid size"),
    (("--constraint-add", "zone"), "--constraint-add: "),
    (("--update-order", "sideways"), "--update-order: "),
    (("--rollback", "--force"), "--rollback: cannot be combined"),
])
def test_update_bad_value_before_connecting(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(invoke("service", "update", "web", *args), fragment)


# ---------------------------------------------------------------- scale, nodes, networks


@pytest.mark.parametrize(("text", "expected"), [
    ("web=3", ("web", 3)), ("web=0", ("web", 0)), ("abc123def=10", ("abc123def", 10))])
def test_scale_argument(text: str, expected: tuple[str, int]) -> None:
    assert parsing.scale_argument(text) == expected


@pytest.mark.parametrize("text", ["web", "web=", "=3", "web=-1", "web=two", "web=1.5"])
def test_scale_argument_refused(text: str) -> None:
    with pytest.raises(BadInput, match=r"expected SERVICE=REPLICAS|whole number"):
        parsing.scale_argument(text)


@pytest.mark.usefixtures("no_controller")
def test_scale_checks_every_pair_before_connecting() -> None:
    assert_one_line_error(invoke("service", "scale", "web=3", "worker"),
                          "invalid scale argument 'worker'")


def test_node_update_spec() -> None:
    spec = pb.NodeSpec(labels={"old": "1", "keep": "2"})
    updated = updated_node_spec(spec, availability="drain", role="manager",
                                label_add=["zone=east"], label_rm=["old"])
    assert updated.availability == pb.NodeSpec.DRAIN
    assert updated.role == pb.NodeSpec.MANAGER
    assert dict(updated.labels) == {"keep": "2", "zone": "east"}
    assert dict(spec.labels) == {"old": "1", "keep": "2"}


@pytest.mark.usefixtures("no_controller")
def test_node_update_bad_availability() -> None:
    assert_one_line_error(invoke("node", "update", "n1", "--availability", "gone"),
                          "--availability: invalid value 'gone'")
    assert_one_line_error(invoke("node", "update", "n1"), "nothing to change")


def test_network_spec() -> None:
    spec = network_spec_from_options("front", subnet="10.20.0.0/24", gateway="10.20.0.1",
                                     attachable=True, internal=True, labels=["a=b"])
    assert (spec.name, spec.driver, spec.ipam.subnet, spec.ipam.gateway) == (
        "front", "overlay", "10.20.0.0/24", "10.20.0.1")
    assert spec.attachable
    assert spec.internal
    assert dict(spec.labels) == {"a": "b"}


@pytest.mark.usefixtures("no_controller")
@pytest.mark.parametrize(("args", "fragment"), [
    (("--subnet", "10.0.0.1/24"), "--subnet: invalid subnet"),
    (("--subnet", "nonsense"), "--subnet: invalid subnet"),
    (("--gateway", "10.0.0.1"), "--gateway: needs --subnet"),
    (("--subnet", "10.0.0.0/24", "--gateway", "10.0.1.1"), "--gateway: 10.0.1.1 is not in"),
])
def test_network_create_bad_values(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(invoke("network", "create", "net", *args), fragment)


@pytest.mark.usefixtures("no_controller")
def test_bad_filters_before_connecting() -> None:
    assert_one_line_error(invoke("service", "ps", "web", "--filter", "desired-state=sleepy"),
                          "--filter: invalid value 'sleepy'")
    assert_one_line_error(invoke("service", "ls", "--filter", "colour=red"),
                          "--filter: invalid filter 'colour=red'")
    assert_one_line_error(invoke("node", "ls", "--filter", "role=boss"), "--filter: ")


# ---------------------------------------------------------------- rendering


def test_table_aligns_columns() -> None:
    text = render.table(["ID", "NAME"], [["abc", "web"], ["a", "worker-long"]])
    assert text.splitlines() == ["ID    NAME", "abc   web", "a     worker-long"]


@pytest.mark.parametrize(("seconds", "words"), [
    (0.2, "Less than a second"), (1, "1 second"), (3, "3 seconds"), (59, "59 seconds"),
    (60, "About a minute"), (150, "2 minutes"), (3600, "About an hour"),
    (5 * 3600, "5 hours"), (3 * 86400, "3 days"), (21 * 86400, "3 weeks"),
    (90 * 86400, "3 months"), (800 * 86400, "2 years")])
def test_human_duration(seconds: float, words: str) -> None:
    assert render.human_duration(seconds) == words


def test_ago() -> None:
    assert render.ago(ts(NOW - timedelta(seconds=3)), NOW) == "3 seconds ago"
    assert render.ago(ts(NOW - timedelta(seconds=80)), NOW) == "about a minute ago"
    assert render.ago(Timestamp(), NOW) == ""


def sample_service() -> pb.Service:
    spec = service_spec_from_options(ServiceOptions(
        name="web", image="nginx@sha256:abcdef", replicas="3", publish=["8080:80"],
        limit_memory="256M", limit_cpu="0.5", constraints=["node.role==worker"]))
    return pb.Service(id="s" * 25, spec=spec, meta=pb.Meta(version=7, created_at=ts(NOW)))


def sample_task(slot: int, state: int, *, node: str = "", minutes: int = 2,
                message: str = "", err: str = "") -> pb.Task:
    return pb.Task(
        id=f"t{slot}{state}".ljust(25, "0"), service_id="s" * 25, service_name="web", slot=slot,
        node_id=node, desired_state=pb.RUNNING,
        spec=pb.TaskSpec(container=pb.ContainerSpec(image="nginx@sha256:abcdef")),
        meta=pb.Meta(created_at=ts(NOW - timedelta(minutes=minutes))),
        status=pb.TaskStatus(state=cast(pb.TaskState.ValueType, state),
                             timestamp=ts(NOW - timedelta(minutes=minutes)),
                             message=message, err=err))


def test_tasks_table_shows_node_state_and_pending_reason() -> None:
    tasks = [
        sample_task(1, pb.RUNNING, node="n" * 25),
        sample_task(2, pb.PENDING, minutes=0,
                    message="no suitable node (insufficient memory on 2 nodes)"),
        sample_task(3, pb.FAILED, node="n" * 25, err="exit status 1"),
    ]
    text = render.tasks_table(tasks, {"n" * 25: "node-1"}, NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "NAME", "IMAGE", "NODE", "DESIRED", "STATE", "CURRENT",
                                "STATE", "ERROR"]
    assert "web.1" in lines[1]
    assert "node-1" in lines[1]
    assert "Running 2 minutes ago" in lines[1]
    assert "nginx " in lines[1]
    assert "sha256" not in lines[1]
    assert "Pending less than a second ago" in lines[2]
    assert lines[2].endswith("no suitable node (insufficient memory on 2 nodes)")
    assert lines[3].endswith("exit status 1")
    assert "Failed 2 minutes ago" in lines[3]
    assert lines[1].startswith("t15120000000 ")  # 12 characters of the ID
    wide = render.tasks_table(tasks, {}, NOW, no_trunc=True)
    assert tasks[0].id in wide
    assert "nginx@sha256:abcdef" in wide
    assert "n" * 25 in wide


def test_tasks_table_marks_history() -> None:
    older = sample_task(1, pb.FAILED, minutes=5)
    older.id = "old".ljust(25, "0")
    newer = sample_task(1, pb.RUNNING, minutes=1)
    names = [line.split("   ")[1].strip()
             for line in render.tasks_table([older, newer], {}, NOW).splitlines()[1:]]
    assert names == ["web.1", "\\_ web.1"]


def test_services_table_counts_running_tasks() -> None:
    service = sample_service()
    tasks = [sample_task(1, pb.RUNNING), sample_task(2, pb.PENDING)]
    lines = render.services_table([service], tasks).splitlines()
    assert lines[0].split() == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    assert lines[1].split() == ["s" * 12, "web", "replicated", "1/3", "nginx", "*:8080->80/tcp"]


def test_nodes_and_networks_tables() -> None:
    node = pb.Node(id="n" * 25, description=pb.NodeDescription(hostname="node-1"),
                   spec=pb.NodeSpec(availability=pb.NodeSpec.DRAIN, role=pb.NodeSpec.MANAGER),
                   status=pb.NodeStatus(state=pb.NodeStatus.READY, addr="10.0.0.2"))
    lines = render.nodes_table([node]).splitlines()
    assert lines[0].split() == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "ADDR"]
    assert lines[1].split() == ["n" * 12, "node-1", "Ready", "Drain", "manager", "10.0.0.2"]
    network = pb.Network(id="w" * 25, spec=pb.NetworkSpec(name="front", driver="overlay"),
                         subnet="10.0.1.0/24", gateway="10.0.1.1")
    lines = render.networks_table([network]).splitlines()
    assert lines[1].split() == ["w" * 12, "front", "overlay", "10.0.1.0/24", "10.0.1.1"]


def test_json_and_yaml_are_lists_of_objects_with_proto_field_names() -> None:
    service = sample_service()
    data = json.loads(render.as_json([service]))
    assert isinstance(data, list)
    assert len(data) == 1
    assert data[0]["spec"]["task"]["container"]["image"] == "nginx@sha256:abcdef"
    assert data[0]["spec"]["replicated"]["replicas"] == "3"  # int64: a string in JSON
    assert "max_replicas_per_node" not in data[0]["spec"]["task"]["placement"]
    assert data[0]["spec"]["task"]["resources"]["limits"]["memory_bytes"] == str(256 * 1024**2)
    assert yaml.safe_load(render.as_yaml([service])) == data
    assert json.loads(render.as_json([])) == []


def test_render_picks_the_format() -> None:
    network = pb.Network(id="x", spec=pb.NetworkSpec(name="n"))
    assert render.render(render.Output.table, [network], lambda: "TABLE") == "TABLE"
    assert json.loads(render.render(render.Output.json, [network], lambda: "")) == [
        {"id": "x", "spec": {"name": "n"}}]
    assert yaml.safe_load(render.render(render.Output.yaml, [network], lambda: "")) == [
        {"id": "x", "spec": {"name": "n"}}]


def test_service_details_are_human_readable() -> None:
    text = render.service_details(sample_service())
    assert "Name:" in text
    assert "web" in text
    assert "Memory:" in text
    assert "256MiB" in text
    assert "CPU:" in text
    assert "0.5" in text
    assert "node.role==worker" in text
    node_text = render.node_details(pb.Node(
        id="n1", description=pb.NodeDescription(
            hostname="h", resources=pb.Resources(nano_cpus=2 * SECOND, memory_bytes=2**30))))
    assert "Hostname:" in node_text
    assert "1GiB" in node_text


# ---------------------------------------------------------------- commands, against a fake stub


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeStub:
    """Answers each method from `handlers`; records (method, request)."""

    def __init__(self, **handlers: Callable[[Any], Message]) -> None:
        self.handlers = handlers
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, method: str) -> Callable[..., Message]:
        def call(request: Any, timeout: float | None = None) -> Message:
            assert timeout, "every RPC has a deadline"
            self.calls.append((method, request))
            if method not in self.handlers:
                raise AssertionError(f"unexpected call {method}")
            return self.handlers[method](request)
        return call

    def requests(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeStub]:
    def install(**handlers: Callable[[Any], Message]) -> FakeStub:
        stub = FakeStub(**handlers)

        def connect(target: str, *, timeout: float = client.DEFAULT_TIMEOUT) -> client.Controller:
            return client.Controller(target=target, stub=cast(cgrpc.ControlStub, stub),
                                     timeout=timeout)

        monkeypatch.setattr(client, "connect", connect)
        return stub

    return install


def fail(code: grpc.StatusCode, details: str) -> Callable[[Any], Message]:
    def handler(request: Any) -> Message:
        raise FakeRpcError(code, details)
    return handler


def test_create_sends_the_spec_and_prints_the_id(fake: Callable[..., FakeStub]) -> None:
    stub = fake(CreateService=lambda r: cpb.ServiceResponse(service=pb.Service(id="abc",
                                                                               spec=r.spec)))
    result = invoke("service", "create", "web", "--image", "busybox", "--replicas", "2",
                    "--limit-memory", "64M", "--", "sleep", "-n", "100")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "abc"
    (request,) = stub.requests("CreateService")
    assert request.spec.replicated.replicas == 2
    assert list(request.spec.task.container.args) == ["sleep", "-n", "100"]
    assert request.spec.task.resources.limits.memory_bytes == 64 * 1024**2
    # A command without dashes needs no `--`, and options may follow it.
    result = invoke("service", "create", "w2", "sleep", "100", "--image", "busybox",
                    "-p", "published=8080,target=80,mode=host")
    assert result.exit_code == 0, result.output
    request = stub.requests("CreateService")[-1]
    assert list(request.spec.task.container.args) == ["sleep", "100"]
    assert request.spec.endpoint.ports[0].publish_mode == pb.PortConfig.HOST


def test_server_errors_are_one_line_exit_1(fake: Callable[..., FakeStub]) -> None:
    fake(CreateService=fail(grpc.StatusCode.INVALID_ARGUMENT,
                            "spec.task.container.image: must not be empty\n(second line)"))
    result = invoke("service", "create", "web", "--image", "x")
    assert_one_line_error(result, "swarmctl: spec.task.container.image: must not be empty "
                                  "(second line)", exit_code=1)


def test_unreachable_controller_names_it(fake: Callable[..., FakeStub]) -> None:
    fake(ListServices=fail(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    result = invoke("--controller", "10.9.9.9:2377", "service", "ls")
    assert_one_line_error(result, "swarmctl: cannot reach controller at 10.9.9.9:2377: "
                                  "connection refused", exit_code=1)


def test_controller_from_environment(fake: Callable[..., FakeStub]) -> None:
    fake(ListNodes=fail(grpc.StatusCode.UNAVAILABLE, "down"))
    result = CliRunner().invoke(app, ["node", "ls"], env={"SWARMCTL_CONTROLLER": "h:1"})
    assert_one_line_error(result, "cannot reach controller at h:1", exit_code=1)


def test_update_retries_after_a_version_conflict(fake: Callable[..., FakeStub]) -> None:
    versions = iter([3, 4])
    attempts: list[int] = []

    def get(request: Any) -> Message:
        return cpb.ServiceResponse(service=pb.Service(
            id="sid", spec=current_spec(), meta=pb.Meta(version=next(versions))))

    def update(request: Any) -> Message:
        attempts.append(request.version)
        if len(attempts) == 1:
            raise FakeRpcError(grpc.StatusCode.ABORTED, "changed since it was read")
        return cpb.ServiceResponse(service=pb.Service(id="sid", spec=request.spec))

    stub = fake(GetService=get, UpdateService=update)
    result = invoke("service", "update", "web", "--env-add", "Z=9", "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "web"
    assert attempts == [3, 4]
    final = stub.requests("UpdateService")[-1]
    assert final.service_id == "sid"
    assert "Z=9" in final.spec.task.container.env
    assert final.spec.task.force_update == 1


def test_update_gives_up_after_three_retries(fake: Callable[..., FakeStub]) -> None:
    stub = fake(GetService=lambda r: cpb.ServiceResponse(service=pb.Service(
                    id="sid", spec=current_spec(), meta=pb.Meta(version=1))),
                UpdateService=fail(grpc.StatusCode.ABORTED, "changed since it was read"))
    result = invoke("service", "update", "web", "--image", "x")
    assert_one_line_error(result, "changed since it was read", exit_code=1)
    assert len(stub.requests("UpdateService")) == 4


def test_update_rollback_sends_the_flag(fake: Callable[..., FakeStub]) -> None:
    stub = fake(GetService=lambda r: cpb.ServiceResponse(service=pb.Service(
                    id="sid", spec=current_spec(), meta=pb.Meta(version=5))),
                UpdateService=lambda r: cpb.ServiceResponse(service=pb.Service(
                    id="sid", spec=current_spec())))
    assert invoke("service", "update", "web", "--rollback").exit_code == 0
    (request,) = stub.requests("UpdateService")
    assert request.rollback
    assert request.version == 5
    assert not request.HasField("spec")


def test_scale_each_pair_and_report_failures(fake: Callable[..., FakeStub]) -> None:
    def scale(request: Any) -> Message:
        if request.ref == "ghost":
            raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "service 'ghost' not found")
        return cpb.ServiceResponse()

    stub = fake(ScaleService=scale)
    result = invoke("service", "scale", "web=3", "ghost=1", "db=0")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["web scaled to 3", "db scaled to 0"]
    assert result.stderr.strip() == "swarmctl: service 'ghost' not found"
    assert [(r.ref, r.replicas) for r in stub.requests("ScaleService")] == [
        ("web", 3), ("ghost", 1), ("db", 0)]


def test_ps_resolves_services_and_shows_hostnames(fake: Callable[..., FakeStub]) -> None:
    service = sample_service()
    stub = fake(
        GetService=lambda r: cpb.ServiceResponse(service=service),
        ListTasks=lambda r: cpb.ListTasksResponse(tasks=[
            sample_task(1, pb.RUNNING, node="n" * 25),
            sample_task(2, pb.PENDING, message="no suitable node (1 node drained)")]),
        ListNodes=lambda r: cpb.ListNodesResponse(nodes=[
            pb.Node(id="n" * 25, description=pb.NodeDescription(hostname="node-1"))]),
    )
    result = invoke("service", "ps", "web", "--filter", "desired-state=running")
    assert result.exit_code == 0, result.output
    assert "node-1" in result.stdout
    assert "no suitable node (1 node drained)" in result.stdout
    (request,) = stub.requests("ListTasks")
    assert list(request.filters.service_ids) == [service.id]
    assert list(request.filters.desired_states) == [pb.RUNNING]
    assert stub.requests("GetService")[0].ref == "web"


def test_listing_json_and_yaml(fake: Callable[..., FakeStub]) -> None:
    node = pb.Node(id="n1", description=pb.NodeDescription(hostname="h1"))
    fake(ListNodes=lambda r: cpb.ListNodesResponse(nodes=[node]))
    as_json = json.loads(invoke("node", "ls", "-o", "json").stdout)
    assert as_json == [{"id": "n1", "description": {"hostname": "h1"}}]
    assert yaml.safe_load(invoke("node", "ls", "--output", "yaml").stdout) == as_json
    assert invoke("node", "ls", "-q").stdout.split() == ["n1"]


def test_inspect_reports_missing_refs_and_exits_1(fake: Callable[..., FakeStub]) -> None:
    def get(request: Any) -> Message:
        if request.ref == "front":
            return cpb.NetworkResponse(network=pb.Network(id="w1", spec=pb.NetworkSpec(
                name="front")))
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND, f"network {request.ref!r} not found")

    fake(GetNetwork=get)
    result = invoke("network", "inspect", "front", "ghost")
    assert result.exit_code == 1
    assert [n["id"] for n in json.loads(result.stdout)] == ["w1"]
    assert result.stderr.strip() == "swarmctl: network 'ghost' not found"


def test_node_rm_and_update(fake: Callable[..., FakeStub]) -> None:
    stub = fake(
        RemoveNode=lambda r: cpb.RemoveResponse(id="n1"),
        GetNode=lambda r: cpb.NodeResponse(node=pb.Node(id="n1", meta=pb.Meta(version=9))),
        UpdateNode=lambda r: cpb.NodeResponse(node=pb.Node(id="n1")),
    )
    assert invoke("node", "rm", "--force", "h1").stdout.strip() == "h1"
    assert stub.requests("RemoveNode")[0].force
    assert invoke("node", "update", "--availability", "drain", "h1").exit_code == 0
    (request,) = stub.requests("UpdateNode")
    assert (request.node_id, request.version, request.spec.availability) == (
        "n1", 9, pb.NodeSpec.DRAIN)


# ---------------------------------------------------------------- help and a real channel


@pytest.mark.parametrize("command", [
    ["service", "create"], ["service", "ls"], ["service", "inspect"], ["service", "ps"],
    ["service", "scale"], ["service", "update"], ["service", "rm"],
    ["node", "ls"], ["node", "inspect"], ["node", "ps"], ["node", "update"], ["node", "rm"],
    ["network", "create"], ["network", "ls"], ["network", "inspect"], ["network", "rm"]])
def test_every_command_help_shows_an_example(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert f"swarmctl {' '.join(command)}" in result.stdout


def test_root_help_documents_exit_codes() -> None:
    text = invoke("--help").stdout
    assert "Exit status:" in text
    assert "SWARMCTL_CONTROLLER" in text
    for line in ("0  success", "1  the controller", "2  bad usage"):
        assert line in text


def _not_found(request: cpb.GetRequest, context: grpc.ServicerContext) -> cpb.ServiceResponse:
    context.abort(grpc.StatusCode.NOT_FOUND, f"service {request.ref!r} not found")
    raise AssertionError("unreachable")


def test_real_channel_errors_become_one_line() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    handler = grpc.unary_unary_rpc_method_handler(
        _not_found, request_deserializer=cpb.GetRequest.FromString,
        response_serializer=cpb.ServiceResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("swarm.v1.Control", {"GetService": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with client.connect(f"127.0.0.1:{port}", timeout=5) as ctl, \
                pytest.raises(client.RpcFailure) as caught:
            ctl.call(ctl.stub.GetService, cpb.GetRequest(ref="nope"))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.message == "service 'nope' not found"
    finally:
        server.stop(None)
