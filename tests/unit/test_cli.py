"""swarmctl without a controller: the pure spec builders, argument parsing, the
rendering of tables, JSON and YAML, convergence judging, and help. The commands
themselves run against a live controller in tests/integration/test_cli.py."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner

from swarm.api import validation
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import client, colour, parsing, progress, render
from swarm.cli.errors import BadFlag, BadInput
from swarm.cli.main import app
from swarm.cli.network import network_spec_from_options
from swarm.cli.node import updated_node_spec
from swarm.cli.service.options import ServiceOptions, ServiceUpdateOptions
from swarm.cli.service.spec import (
    CreateTarget,
    check_update_options,
    create_target,
    name_from_image,
    service_spec_from_options,
    updated_service_spec,
)

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
        publish=["8080:80", "53:53/udp", "published=9000,target=90,protocol=tcp,mode=host",
                 "published=443,target=8443,proxy-protocol=v2"],
        networks=["backend", "name=front,alias=www,alias=web"], endpoint_mode="dnsrr",
        workdir="/srv", user="nobody", hostname="box", stop_signal="SIGINT",
        stop_grace_period="20s", drain_timeout="750ms", read_only=True, init=True,
        health_cmd="wget -q localhost", health_interval="5s", health_timeout="2s",
        health_retries="3", health_start_period="1s", health_start_interval="500ms",
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
        (443, 8443, pb.PortConfig.TCP, pb.PortConfig.INGRESS),
    ]
    assert [p.proxy_protocol for p in ports] == [pb.PortConfig.PROXY_NONE] * 3 + [
        pb.PortConfig.PROXY_V2]
    assert spec.endpoint.mode == pb.EndpointSpec.DNSRR
    assert [(n.target, list(n.aliases)) for n in spec.task.networks] == [
        ("backend", []), ("front", ["www", "web"])]
    assert (container.dir, container.user, container.hostname, container.stop_signal) == (
        "/srv", "nobody", "box", "SIGINT")
    assert nanos(container.stop_grace_period) == 20 * SECOND
    assert nanos(container.drain_timeout) == 3 * SECOND // 4
    assert container.read_only
    assert container.init
    health = container.healthcheck
    assert list(health.test) == ["CMD-SHELL", "wget -q localhost"]
    assert (nanos(health.interval), nanos(health.timeout), health.retries,
            nanos(health.start_period)) == (5 * SECOND, 2 * SECOND, 3, SECOND)
    assert nanos(health.start_interval) == SECOND // 2
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
    ("--drain-timeout", "-2s", "invalid duration"),
    ("--drain-timeout", "1h", "at most 5m (got 1h)"),
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
    ("--publish", "published=80,target=80,proxy-protocol=v1", "none, v2"),
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


def test_anonymous_volume_and_the_volume_name_rule_match_the_controller() -> None:
    anonymous = parsing.mount("--mount", "type=volume,target=/cache")
    assert (anonymous.type, anonymous.source, anonymous.target) == (pb.Mount.VOLUME, "",
                                                                   "/cache")
    # The CLI refuses exactly the names the controller refuses.
    assert parsing.VOLUME_NAME_RE.pattern == validation._VOLUME_NAME_RE.pattern
    for name in ("data", "d.v1", "0-x", "a_b"):
        parsing.mount("--mount", f"source={name},target=/d")
        validation.normalize_service_spec(_with_mount(name), {})
    for name in ("/srv", "-x", ".hidden", "a b"):
        with pytest.raises(BadFlag, match="a volume name is"):
            parsing.mount("--mount", f"source={name},target=/d")
        with pytest.raises(validation.ValidationError, match="a volume name is"):
            validation.normalize_service_spec(_with_mount(name), {})


def _with_mount(source: str) -> pb.ServiceSpec:
    spec = service_spec_from_options(ServiceOptions(name="web", image="busybox"))
    spec.task.container.mounts.add(type=pb.Mount.VOLUME, source=source, target="/d")
    return spec


@pytest.mark.usefixtures("no_controller")
def test_create_without_image_is_a_usage_error() -> None:
    # `service create web` is docker's form now (image web, service web); with no
    # positional at all there is still no image.
    assert_one_line_error(invoke("service", "create"), "--image", "missing")
    assert_one_line_error(invoke("service", "create", "--name", "web"), "--image")


@pytest.mark.parametrize(("positionals", "name", "image", "expected"), [
    # Today's form: NAME --image IMAGE [CMD...].
    (["web"], None, "busybox", CreateTarget("web", "busybox", [])),
    (["web", "sleep", "9"], None, "busybox", CreateTarget("web", "busybox", ["sleep", "9"])),
    (["sleep", "9"], "web", "busybox", CreateTarget("web", "busybox", ["sleep", "9"])),
    # Docker's form: [--name NAME] IMAGE [CMD...].
    (["nginx:alpine"], "web", None, CreateTarget("web", "nginx:alpine", [])),
    (["busybox", "sleep", "9"], None, None, CreateTarget("busybox", "busybox", ["sleep", "9"])),
    (["localhost:5000/team/web.app:1.2"], None, None,
     CreateTarget("web-app", "localhost:5000/team/web.app:1.2", [])),
])
def test_create_target_reads_both_forms(positionals: list[str], name: str | None,
                                        image: str | None, expected: CreateTarget) -> None:
    assert create_target(positionals, name, image) == expected


def test_create_target_refusals_name_what_is_missing() -> None:
    with pytest.raises(BadInput, match="a service name is required"):
        create_target([], None, "busybox")
    with pytest.raises(BadFlag, match="--image: missing"):
        create_target([], "web", None)
    with pytest.raises(BadInput, match="IMAGE: invalid image reference: 'Web'"):
        create_target(["Web", "sleep"], None, None)


@pytest.mark.parametrize(("image", "name"), [
    ("busybox", "busybox"), ("library/redis:7", "redis"), ("ghcr.io/org/my_app@sha256:"
                                                             + "a" * 64, "my_app"),
    ("host:5000/a/b/c.d.e", "c-d-e"), ("x" * 70, "x" * 63),
])
def test_name_from_image_is_the_last_path_component_as_a_valid_name(image: str,
                                                                    name: str) -> None:
    assert name_from_image(image) == name
    spec = service_spec_from_options(ServiceOptions(name=name_from_image(image), image=image))
    validation.normalize_service_spec(spec, {})  # the controller takes the name as it is


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
    (("--drain-timeout", "-1s"), "--drain-timeout: invalid duration"),
    (("--drain-timeout", "10m"), "--drain-timeout: at most 5m (got 10m)"),
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
                                "STATE", "HEALTH", "ERROR"]
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
    network = pb.Network(id="w" * 25, spec=pb.NetworkSpec(name="front", driver="overlay",
                                                          internal=True, labels={"a": "b"}),
                         subnet="10.0.1.0/24", gateway="10.0.1.1")
    lines = render.networks_table([network]).splitlines()
    assert lines[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SUBNET", "GATEWAY",
                                "INTERNAL", "ATTACHABLE", "LABELS"]
    assert lines[1].split() == ["w" * 12, "front", "overlay", "10.0.1.0/24", "10.0.1.1",
                                "true", "false", "a=b"]
    details = [line.split() for line in render.network_details(network).splitlines()]
    internal = next(d for d in details if d[0] == "Internal:")
    attachable = next(d for d in details if d[0] == "Attachable:")
    assert (internal, attachable) == (["Internal:", "true"], ["Attachable:", "false"])


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


def test_service_details_show_the_update_status_as_docker_does() -> None:
    service = sample_service()
    status = service.update_status
    status.state = pb.UpdateStatus.ROLLBACK_COMPLETED
    status.started_at.FromSeconds(1_700_000_000)
    status.completed_at.FromSeconds(1_700_000_030)
    status.message = "rollback completed (update rolled back: task web.2 not healthy within 12s)"
    lines = [line.split(":", 1) for line in render.service_details(service).splitlines()]
    shown = {key.strip(): value.strip() for key, value in lines if value.strip()}
    assert shown["State"] == "rollback_completed"
    assert shown["Started"] == "2023-11-14T22:13:20Z"
    assert shown["Completed"] == "2023-11-14T22:13:50Z"
    assert shown["Message"] == status.message
    status.state = pb.UpdateStatus.UPDATING
    status.ClearField("completed_at")
    text = render.service_details(service)
    assert "Completed:" not in text
    assert "updating" in text


def test_a_task_given_up_by_the_update_shows_why() -> None:
    given_up = sample_task(1, pb.SHUTDOWN, node="n" * 25)
    given_up.desired_state = pb.SHUTDOWN
    given_up.update_failure = "not healthy within 12s"
    (line,) = render.tasks_table([given_up], {}, NOW).splitlines()[1:]
    assert line.endswith("not healthy within 12s")


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", [
    ["service", "create"], ["service", "ls"], ["service", "inspect"], ["service", "ps"],
    ["service", "scale"], ["service", "update"], ["service", "rollback"], ["service", "rm"],
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
    for line in ("0  success", "1  the controller", "2  bad usage", "3  the change was made"):
        assert line in text


# ---------------------------------------------------------------- convergence, judged


def wanted(replicas: int = 3, *, version: int = 2, restart: str | None = None,
           max_attempts: str | None = None) -> pb.Service:
    spec = service_spec_from_options(ServiceOptions(
        name="web", image="busybox", replicas=str(replicas), restart_condition=restart,
        restart_max_attempts=max_attempts))
    return pb.Service(id="s" * 25, spec=spec, spec_version=version)


def task(slot: int, state: int, *, version: int = 2, desired: int = pb.RUNNING,
         node: str = "n1", task_id: str = "", err: str = "", message: str = "",
         minute: int = 0) -> pb.Task:
    return pb.Task(
        id=task_id or f"t{slot}-{state}-{version}-{minute}", service_id="s" * 25,
        service_name="web", slot=slot, node_id=node, spec_version=version,
        desired_state=cast(pb.TaskState.ValueType, desired),
        meta=pb.Meta(created_at=ts(NOW + timedelta(minutes=minute))),
        status=pb.TaskStatus(state=cast(pb.TaskState.ValueType, state), err=err,
                             message=message))


NODES = [pb.Node(id=f"n{i}", description=pb.NodeDescription(hostname=f"host-{i}"),
                 status=pb.NodeStatus(state=pb.NodeStatus.READY)) for i in (1, 2, 3)]


def judge(service: pb.Service, tasks: list[pb.Task],
          baseline: progress.Baseline | None = None) -> progress.Assessment:
    return progress.assess(service, tasks, NODES, baseline or progress.baseline_of(service))


def test_converged_when_every_wanted_task_runs_the_current_spec() -> None:
    service = wanted(2)
    done = judge(service, [task(1, pb.RUNNING), task(2, pb.RUNNING)])
    assert (done.converged, done.failure, done.summary) == (True, None,
                                                            "web: 2/2 tasks running")
    assert [(t.name, t.state, t.node) for t in done.tasks] == [
        ("web.1", "running", "host-1"), ("web.2", "running", "host-1")]
    # An old-spec task still running, a missing one, or an extra one: not yet.
    assert not judge(service, [task(1, pb.RUNNING), task(2, pb.RUNNING, version=1)]).converged
    assert not judge(service, [task(1, pb.RUNNING)]).converged
    extra = [task(1, pb.RUNNING), task(2, pb.RUNNING), task(3, pb.RUNNING)]
    assert not judge(service, extra).converged
    # A task being shut down (scale down) no longer counts.
    extra[2].desired_state = pb.SHUTDOWN
    assert judge(service, extra).converged


def test_pending_task_shows_the_scheduler_reason() -> None:
    waiting = judge(wanted(1), [task(1, pb.PENDING, node="", message="no suitable node (x)")])
    assert not waiting.converged
    assert waiting.failure is None
    assert waiting.tasks[0].detail == "no suitable node (x)"
    assert waiting.waiting_for == "web.1 pending: no suitable node (x)"


def test_repeated_failures_of_a_slot_fail_the_wait() -> None:
    service = wanted(1)
    failures = [task(1, pb.REJECTED, minute=i, err=f"no image {i}") for i in range(3)]
    assert judge(service, failures[:2]).failure is None
    assert judge(service, failures).failure == "task web.1 failed 3 times: no image 2"
    # Failures from before the command (and of an older spec) are not this command's.
    before = progress.baseline_of(service, failures[:1])
    assert judge(service, failures, before).failure is None
    old = [task(1, pb.FAILED, version=1, minute=i) for i in range(5)]
    assert judge(service, old).failure is None


def test_restart_policy_lowers_the_failure_limit() -> None:
    rejected = [task(1, pb.REJECTED, err="boom")]
    assert judge(wanted(1, restart="none"), rejected).failure == "task web.1 failed once: boom"
    twice = [task(1, pb.FAILED, minute=i, err="boom") for i in range(2)]
    assert judge(wanted(1, max_attempts="1"), twice).failure == (
        "task web.1 failed 2 times: boom")


def test_a_new_paused_or_rolled_back_update_fails_the_wait() -> None:
    service = wanted(1)
    baseline = progress.baseline_of(service)
    service.update_status.state = pb.UpdateStatus.PAUSED
    service.update_status.message = "task x failed"
    service.update_status.started_at.FromSeconds(100)
    assert judge(service, [], baseline).failure == "update paused: task x failed"
    # A pause that was there before the command is not its failure.
    assert judge(service, [], progress.baseline_of(service)).failure is None
    # A rollback after a failure is waited for (the service goes back to its old
    # spec), then fails the wait with the reason.
    service.update_status.state = pb.UpdateStatus.ROLLBACK_STARTED
    service.update_status.message = "update rolled back: task web.1 reported unhealthy"
    rolling = judge(service, [task(1, pb.RUNNING)], baseline)
    assert (rolling.failure, rolling.converged) == (None, False)
    assert rolling.waiting_for == (
        "update failed and is rolling back: update rolled back: task web.1 reported unhealthy")
    service.update_status.state = pb.UpdateStatus.ROLLBACK_COMPLETED
    service.update_status.message = "rollback completed (update rolled back: task web.1 ...)"
    assert judge(service, [task(1, pb.RUNNING)], baseline).failure == (
        "update failed and was rolled back: rollback completed (update rolled back: "
        "task web.1 ...)")
    # ... unless the command asked for the rollback: then it is success.
    asked = progress.baseline_of(wanted(1), rollback=True)
    done = judge(service, [task(1, pb.RUNNING)], asked)
    assert (done.failure, done.converged) == (None, True)
    service.update_status.state = pb.UpdateStatus.ROLLBACK_STARTED
    assert judge(service, [task(1, pb.RUNNING)], asked).converged is False


def test_an_update_converges_once_healthy_and_complete() -> None:
    service = wanted(2)
    baseline = progress.baseline_of(service)
    service.update_status.state = pb.UpdateStatus.UPDATING
    service.update_status.started_at.FromSeconds(100)
    starting = [task(1, pb.RUNNING), task(2, pb.RUNNING)]
    starting[1].status.health = pb.TaskStatus.HEALTH_STARTING
    judged = judge(service, starting, baseline)
    assert (judged.converged, judged.running) == (False, 1)  # running, not healthy yet
    assert judged.waiting_for == "web.2 running: starting"
    starting[1].status.health = pb.TaskStatus.HEALTHY
    judged = judge(service, starting, baseline)
    # Every task is up, but the update still watches them for its monitor period.
    assert (judged.converged, judged.waiting_for) == (False, "update in progress")
    assert progress.progress_lines([judged], width=200)[0] == (
        "web: 2/2 tasks running (update in progress)")
    service.update_status.state = pb.UpdateStatus.COMPLETED
    assert judge(service, starting, baseline).converged


def test_global_service_wants_one_task_per_eligible_node() -> None:
    spec = service_spec_from_options(ServiceOptions(
        name="mon", image="busybox", mode="global", constraints=["node.labels.zone==a"]))
    service = pb.Service(id="s" * 25, spec=spec, spec_version=1)
    nodes = [pb.Node(id=n.id, description=n.description, status=n.status) for n in NODES]
    nodes[0].spec.labels["zone"] = "a"
    nodes[1].spec.labels["zone"] = "a"
    nodes[1].spec.availability = pb.NodeSpec.DRAIN
    nodes[2].spec.labels["zone"] = "b"
    assert progress.eligible_nodes(spec, nodes) == {"n1"}
    running = task(0, pb.RUNNING, version=1, node="n1")
    done = progress.assess(service, [running], nodes, progress.baseline_of(service))
    assert done.converged
    # A paused node keeps its (old) task: it neither counts nor holds the wait up.
    nodes[2].spec.labels["zone"] = "a"
    nodes[2].spec.availability = pb.NodeSpec.PAUSE
    kept = task(0, pb.RUNNING, version=0, node="n3")
    assert progress.assess(service, [running, kept], nodes,
                           progress.baseline_of(service)).converged
    nodes[2].spec.availability = pb.NodeSpec.ACTIVE
    assert not progress.assess(service, [running, kept], nodes,
                               progress.baseline_of(service)).converged
    assert done.tasks[0].name == "web.host-1"  # the task's service_name, then the host


def test_progress_lines_and_redraw() -> None:
    service = wanted(2)
    assessment = judge(service, [task(1, pb.RUNNING),
                                 task(2, pb.PENDING, node="", message="no suitable node")])
    lines = progress.progress_lines([assessment], width=200)
    assert lines[0] == "web: 1/2 tasks running"
    assert lines[1].split() == ["web.1", "running", "host-1"]
    assert lines[2].split()[:2] == ["web.2", "pending"]
    assert lines[2].endswith("no suitable node")
    assert all(len(line) < 30 for line in progress.progress_lines([assessment], width=30))

    # On a colour terminal: the same text, the running task green, the pending one
    # yellow, escapes added after the cut to the width.
    painted = progress.progress_lines([assessment], width=30, coloured=True)
    plain = progress.progress_lines([assessment], width=30)
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in painted] == plain
    assert painted[1].startswith("\x1b[32m")
    assert painted[2].startswith("\x1b[33m")

    class Screen:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    screen = Screen()
    display = progress.LiveDisplay(screen)  # type: ignore[arg-type]
    display.draw(["a", "b"])
    display.draw(["c"])
    # Second draw: back up the two lines drawn, clear, redraw.
    assert screen.text == "\x1b[Ja\nb\n\x1b[2F\x1b[Jc\n"


@pytest.mark.usefixtures("no_controller")
@pytest.mark.parametrize("command", [["service", "create", "web", "--image", "x"],
                                     ["service", "update", "web", "--image", "x"],
                                     ["service", "scale", "web=2"]])
def test_wait_timeout_is_checked_before_connecting(command: list[str]) -> None:
    assert_one_line_error(invoke(*command, "--timeout", "soon"),
                          "--timeout: invalid duration 'soon'")


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour.enabled(Stream(tty=True))
    assert not colour.enabled(Stream(tty=False))
    monkeypatch.setenv("NO_COLOR", "")
    assert not colour.enabled(Stream(tty=True))
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not colour.enabled(Stream(tty=True))


def test_service_details_show_the_stop_grace_period_and_the_drain_timeout() -> None:
    service = pb.Service(id="s1", spec=pb.ServiceSpec(name="web"))
    service.spec.task.container.image = "busybox"
    service.spec.task.container.stop_grace_period.FromSeconds(5)
    text = render.service_details(service)
    assert "Drain timeout" not in text  # unset: the agent's default (2s)
    service.spec.task.container.drain_timeout.FromMilliseconds(750)
    lines = [line.split() for line in render.service_details(service).splitlines()]
    assert ["Drain", "timeout:", "750ms"] in lines, lines


# ---------------------------------------------------------------- jobs


def test_job_specs_from_flags_as_docker_builds_them() -> None:
    batch = service_spec_from_options(ServiceOptions(
        name="b", image="busybox", mode="replicated-job", replicas="6"))
    assert batch.replicated_job.total_completions == 6
    assert batch.replicated_job.max_concurrent == 6, "docker: defaults to the completions"
    assert batch.task.restart.condition == pb.RestartPolicy.ON_FAILURE
    assert not batch.HasField("update")
    two = service_spec_from_options(ServiceOptions(
        name="b", image="busybox", mode="replicated-job", replicas="6", max_concurrent="2",
        restart_condition="none", schedule=" @every 10s"))
    assert two.replicated_job.max_concurrent == 2
    assert two.task.restart.condition == pb.RestartPolicy.NONE
    assert two.schedule == "@every 10s"
    warm = service_spec_from_options(ServiceOptions(name="w", image="busybox",
                                                    mode="global-job"))
    assert warm.WhichOneof("mode") == "global_job"
    # update: --replicas is the completions, --max-concurrent and --schedule apply.
    again = updated_service_spec(batch, ServiceUpdateOptions(
        replicas="3", max_concurrent="1", schedule="0 3 * * *", force=True))
    assert (again.replicated_job.total_completions, again.replicated_job.max_concurrent) == (3, 1)
    assert again.schedule == "0 3 * * *"


@pytest.mark.parametrize(("options", "message"), [
    (ServiceOptions(name="b", image="i", mode="replicated-job", max_concurrent="0"),
     "--max-concurrent: must be at least 1"),
    (ServiceOptions(name="b", image="i", mode="replicated-job", update_delay="1s"),
     "--update-delay: a job (replicated-job) has no rolling update"),
    (ServiceOptions(name="b", image="i", mode="global-job", max_concurrent="2"),
     "--max-concurrent: applies to --mode replicated-job only"),
    (ServiceOptions(name="b", image="i", schedule="@daily"),
     "--schedule: applies to jobs only"),
    (ServiceOptions(name="b", image="i", mode="global-job", schedule="0 25 * * *"),
     "--schedule: '0 25 * * *' is not a valid cron expression"),
])
def test_bad_job_flags_name_the_flag(options: ServiceOptions, message: str) -> None:
    with pytest.raises(BadFlag, match=re.escape(message)):
        service_spec_from_options(options)


def test_job_rows_in_ls_and_ps() -> None:
    service = pb.Service(id="s1")
    service.spec.name = "batch"
    service.spec.replicated_job.total_completions = 6
    service.spec.replicated_job.max_concurrent = 2
    service.job_status.iteration = 2
    tasks = []
    for slot, state, run in [(1, pb.COMPLETE, 2), (2, pb.COMPLETE, 2), (3, pb.COMPLETE, 2),
                             (4, pb.RUNNING, 2), (1, pb.COMPLETE, 1)]:
        task = pb.Task(id=f"t{slot}{run}", service_id="s1", service_name="batch", slot=slot,
                       job_iteration=run)
        task.status.state = state
        tasks.append(task)
    _, rows = render.services_rows([service], tasks)
    assert rows[0][2:4] == ["replicated-job", "1/2 (3/6 completed)"]
    _, ps = render.tasks_rows(tasks, {}, datetime.now(UTC))
    assert [row[1] for row in ps][:2] == ["batch.1 (run 2)", "batch.2 (run 2)"]
    assert [row[1] for row in ps][-1] == "batch.1 (run 1)"
