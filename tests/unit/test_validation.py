"""Validation and defaulting at the API edge, and reference resolution."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from swarm.api.refs import Ambiguous, NotFound, resolve_ref
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import (
    ValidationError,
    image_reference_problem,
    normalize_network_spec,
    normalize_node_spec,
    normalize_service_spec,
    signal_number,
    validate_replicas,
)

Mutation = Callable[[pb.ServiceSpec], object]
T = TypeVar("T")
SECOND = 1_000_000_000
MIB = 1024 * 1024
DIGEST = "sha256:" + "0123456789abcdef" * 4

NETWORKS = {
    "aaa111": pb.Network(id="aaa111", spec=pb.NetworkSpec(name="backend")),
    "aaa222": pb.Network(id="aaa222", spec=pb.NetworkSpec(name="frontend")),
    "bbb333": pb.Network(id="bbb333", spec=pb.NetworkSpec(name="aaa")),
    "ccc444": pb.Network(id="ccc444", spec=pb.NetworkSpec(name="private", internal=True)),
}


def web() -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=3))
    spec.task.container.image = "nginx:1.25"
    spec.task.container.env.append("A=1")
    return spec


def normalize(spec: pb.ServiceSpec) -> pb.ServiceSpec:
    return normalize_service_spec(spec, NETWORKS)


def fields(message: object, **values: object) -> object:
    for key, value in values.items():
        setattr(message, key, value)
    return message


def _mount(spec: pb.ServiceSpec, kind: int, source: str = "", target: str = "/data",
           size: int = 0) -> object:
    return spec.task.container.mounts.add(type=kind, source=source, target=target,
                                          tmpfs_size_bytes=size)


def _dur(message: object, seconds: int, nanos: int = 0) -> object:
    message.seconds = seconds  # type: ignore[attr-defined]
    message.nanos = nanos  # type: ignore[attr-defined]
    return message


def _ports(spec: pb.ServiceSpec, *ports: pb.PortConfig) -> object:
    spec.endpoint.ports.extend(ports)
    return spec


def _global(spec: pb.ServiceSpec) -> object:
    getattr(spec, "global").SetInParent()
    return spec


# ---------------------------------------------------------------- services: refusals


INVALID_SERVICES: list[tuple[str, Mutation, str, str]] = [
    # (id, mutation of web(), the field of the error, a fragment of its problem)
    ("name-empty", lambda s: fields(s, name=""), "spec.name", "required"),
    ("name-dash", lambda s: fields(s, name="-bad-"), "spec.name", "starting and ending"),
    ("name-upper", lambda s: fields(s, name="Web"), "spec.name", "lowercase"),
    ("name-long", lambda s: fields(s, name="a" * 64), "spec.name", "1-63"),
    ("name-dot", lambda s: fields(s, name="a.b"), "spec.name", "'a.b'"),
    ("label-key", lambda s: s.labels.update({"": "x"}), "spec.labels", "must not be empty"),
    ("replicas-negative", lambda s: fields(s.replicated, replicas=-1),
     "spec.mode.replicated.replicas", "must not be negative (got -1)"),
    ("replicas-huge", lambda s: fields(s.replicated, replicas=100_001),
     "spec.mode.replicated.replicas", "at most 100000"),
    ("image-missing", lambda s: fields(s.task.container, image=""),
     "spec.task.container.image", "required"),
    ("image-upper", lambda s: fields(s.task.container, image="Web:latest"),
     "spec.task.container.image",
     "invalid image reference 'Web:latest' (repository names are lowercase)"),
    ("image-space", lambda s: fields(s.task.container, image="Bad Image!"),
     "spec.task.container.image", "whitespace"),
    ("image-bang", lambda s: fields(s.task.container, image="bad!"),
     "spec.task.container.image", "invalid path component 'bad!'"),
    ("image-empty-tag", lambda s: fields(s.task.container, image="nginx:"),
     "spec.task.container.image", "invalid tag ''"),
    ("image-tag-dot", lambda s: fields(s.task.container, image="nginx:.x"),
     "spec.task.container.image", "invalid tag '.x'"),
    ("image-long-tag", lambda s: fields(s.task.container, image="nginx:" + "a" * 129),
     "spec.task.container.image", "invalid tag"),
    ("image-digest", lambda s: fields(s.task.container, image="nginx@sha256:abc"),
     "spec.task.container.image", "digest"),
    ("image-digest-upper", lambda s: fields(s.task.container, image="nginx@" + DIGEST.upper()),
     "spec.task.container.image", "digest"),
    ("image-double-slash", lambda s: fields(s.task.container, image="a//b"),
     "spec.task.container.image", "empty path component"),
    ("image-separator", lambda s: fields(s.task.container, image="a..b"),
     "spec.task.container.image", "invalid path component"),
    ("image-registry", lambda s: fields(s.task.container, image="bad_host.io/app"),
     "spec.task.container.image", "invalid registry"),
    ("image-ipv6", lambda s: fields(s.task.container, image="[1:2:3]:5000/app"),
     "spec.task.container.image", "IPv6"),
    ("image-only-tag", lambda s: fields(s.task.container, image=":latest"),
     "spec.task.container.image", "no repository name"),
    ("env-empty-key", lambda s: s.task.container.env.append("=x"),
     "spec.task.container.env[1]", "'=x'"),
    ("env-space", lambda s: s.task.container.env.append("MY KEY=1"),
     "spec.task.container.env[1]", "without whitespace"),
    ("env-empty", lambda s: s.task.container.env.append(""),
     "spec.task.container.env[1]", "KEY=VALUE"),
    ("env-nul", lambda s: s.task.container.env.append("A=\0"),
     "spec.task.container.env[1]", "NUL"),
    ("dir-relative", lambda s: fields(s.task.container, dir="app"),
     "spec.task.container.dir", "absolute"),
    ("container-label", lambda s: s.task.container.labels.update({"": "x"}),
     "spec.task.container.labels", "must not be empty"),
    ("mount-target-relative", lambda s: _mount(s, pb.Mount.TMPFS, target="data"),
     "spec.task.container.mounts[0].target", "absolute path (got 'data')"),
    ("mount-target-root", lambda s: _mount(s, pb.Mount.TMPFS, target="/"),
     "spec.task.container.mounts[0].target", "root"),
    ("mount-target-twice", lambda s: (_mount(s, pb.Mount.TMPFS, target="/d"),
                                      _mount(s, pb.Mount.TMPFS, target="/d/")),
     "spec.task.container.mounts[1].target", "already mounted by mounts[0]"),
    ("mount-type", lambda s: _mount(s, 9), "spec.task.container.mounts[0].type",
     "unknown value 9 (expected VOLUME, BIND or TMPFS)"),
    ("volume-path-source", lambda s: _mount(s, pb.Mount.VOLUME, source="/srv"),
     "spec.task.container.mounts[0].source", "'/srv'"),
    ("bind-relative", lambda s: _mount(s, pb.Mount.BIND, source="srv"),
     "spec.task.container.mounts[0].source", "absolute source"),
    ("tmpfs-source", lambda s: _mount(s, pb.Mount.TMPFS, source="x"),
     "spec.task.container.mounts[0].source", "takes no source"),
    ("tmpfs-size-on-volume", lambda s: _mount(s, pb.Mount.VOLUME, source="v", size=MIB),
     "spec.task.container.mounts[0].tmpfs_size_bytes", "tmpfs mounts only"),
    ("tmpfs-size-negative", lambda s: _mount(s, pb.Mount.TMPFS, size=-1),
     "spec.task.container.mounts[0].tmpfs_size_bytes", "negative"),
    ("stop-signal", lambda s: fields(s.task.container, stop_signal="SIGFOO"),
     "spec.task.container.stop_signal", "unknown signal 'SIGFOO'"),
    ("stop-signal-zero", lambda s: fields(s.task.container, stop_signal="0"),
     "spec.task.container.stop_signal", "1 to 64"),
    ("grace-negative", lambda s: _dur(s.task.container.stop_grace_period, -1),
     "spec.task.container.stop_grace_period", "must not be negative (got -1s)"),
    ("grace-malformed", lambda s: _dur(s.task.container.stop_grace_period, 1, -5),
     "spec.task.container.stop_grace_period", "malformed duration"),
    ("grace-nanos-range", lambda s: _dur(s.task.container.stop_grace_period, 0, SECOND),
     "spec.task.container.stop_grace_period", "malformed duration"),
    ("grace-huge", lambda s: _dur(s.task.container.stop_grace_period, 2**62),
     "spec.task.container.stop_grace_period", "out of range"),
    ("drain-negative", lambda s: _dur(s.task.container.drain_timeout, -2),
     "spec.task.container.drain_timeout", "must not be negative (got -2s)"),
    ("drain-absurd", lambda s: _dur(s.task.container.drain_timeout, 3600),
     "spec.task.container.drain_timeout", "at most 5m (got 1h)"),
    ("drain-malformed", lambda s: _dur(s.task.container.drain_timeout, 1, -5),
     "spec.task.container.drain_timeout", "malformed duration"),
    ("health-kind", lambda s: s.task.container.healthcheck.test.extend(["RUN", "x"]),
     "spec.task.container.healthcheck.test[0]", "expected NONE, CMD or CMD-SHELL"),
    ("health-cmd-alone", lambda s: s.task.container.healthcheck.test.extend(["CMD"]),
     "spec.task.container.healthcheck.test", "CMD needs"),
    ("health-shell-alone", lambda s: s.task.container.healthcheck.test.extend(["CMD-SHELL"]),
     "spec.task.container.healthcheck.test", "exactly one"),
    ("health-shell-two", lambda s: s.task.container.healthcheck.test.extend(
        ["CMD-SHELL", "a", "b"]), "spec.task.container.healthcheck.test", "exactly one"),
    ("health-none-extra", lambda s: s.task.container.healthcheck.test.extend(["NONE", "x"]),
     "spec.task.container.healthcheck.test", "NONE takes nothing"),
    ("health-interval", lambda s: _dur(s.task.container.healthcheck.interval, -1),
     "spec.task.container.healthcheck.interval", "negative"),
    ("health-timeout", lambda s: _dur(s.task.container.healthcheck.timeout, 0, -1),
     "spec.task.container.healthcheck.timeout", "negative"),
    ("health-start-period", lambda s: _dur(s.task.container.healthcheck.start_period, -5),
     "spec.task.container.healthcheck.start_period", "negative"),
    ("health-start-interval", lambda s: _dur(s.task.container.healthcheck.start_interval, -1),
     "spec.task.container.healthcheck.start_interval", "negative"),
    ("limit-cpu-negative", lambda s: fields(s.task.resources.limits, nano_cpus=-1),
     "spec.task.resources.limits.nano_cpus", "negative"),
    ("reserve-memory-negative", lambda s: fields(s.task.resources.reservations,
                                                 memory_bytes=-1),
     "spec.task.resources.reservations.memory_bytes", "negative"),
    ("memory-limit-tiny", lambda s: fields(s.task.resources.limits, memory_bytes=MIB),
     "spec.task.resources.limits.memory_bytes", "at least 6MiB, runc's minimum (got 1MiB)"),
    ("memory-reservation-over-limit", lambda s: (
        fields(s.task.resources.limits, memory_bytes=64 * MIB),
        fields(s.task.resources.reservations, memory_bytes=128 * MIB)),
     "spec.task.resources.reservations.memory_bytes", "exceeds the limit (64MiB)"),
    ("cpu-reservation-over-limit", lambda s: (
        fields(s.task.resources.limits, nano_cpus=SECOND),
        fields(s.task.resources.reservations, nano_cpus=2 * SECOND)),
     "spec.task.resources.reservations.nano_cpus", "exceeds the limit"),
    ("restart-condition", lambda s: fields(s.task.restart, condition=7),
     "spec.task.restart.condition", "expected ANY, ON_FAILURE or NONE"),
    ("restart-delay", lambda s: _dur(s.task.restart.delay, -1),
     "spec.task.restart.delay", "negative"),
    ("restart-window", lambda s: _dur(s.task.restart.window, -1),
     "spec.task.restart.window", "negative"),
    ("constraint-operator", lambda s: s.task.placement.constraints.append("node.labels.zone~=a"),
     "spec.task.placement.constraints[0]", "expected KEY==VALUE or KEY!=VALUE"),
    ("constraint-key", lambda s: s.task.placement.constraints.extend(
        ["node.role==manager", "zone==a"]),
     "spec.task.placement.constraints[1]", "unknown key 'zone'"),
    ("spread-key", lambda s: s.task.placement.preferences.add(spread="zone"),
     "spec.task.placement.preferences[0].spread", "unknown key 'zone'"),
    ("spread-empty", lambda s: s.task.placement.preferences.add(spread=""),
     "spec.task.placement.preferences[0].spread", "unknown key ''"),
    ("spread-label-without-name", lambda s: s.task.placement.preferences.add(
        spread="node.labels."), "spec.task.placement.preferences[0].spread", "unknown key"),
    ("max-per-node-global", lambda s: (_global(s), fields(s.task.placement,
                                                          max_replicas_per_node=2)),
     "spec.task.placement.max_replicas_per_node", "replicated services only"),
    ("network-unknown", lambda s: s.task.networks.add(target="nope"),
     "spec.task.networks[0].target", "network 'nope' not found"),
    ("network-empty", lambda s: s.task.networks.add(target=""),
     "spec.task.networks[0].target", "required"),
    ("network-ambiguous", lambda s: s.task.networks.add(target="aa"),
     "spec.task.networks[0].target", "ambiguous reference 'aa': matches 2 networks"),
    ("network-twice", lambda s: (s.task.networks.add(target="backend"),
                                 s.task.networks.add(target="aaa111")),
     "spec.task.networks[1].target", "already attached by networks[0]"),
    ("update-delay", lambda s: _dur(s.update.delay, -1), "spec.update.delay", "negative"),
    ("update-monitor", lambda s: _dur(s.update.monitor, -1), "spec.update.monitor", "negative"),
    ("update-ratio-high", lambda s: fields(s.update, max_failure_ratio=1.5),
     "spec.update.max_failure_ratio", "between 0 and 1 (got 1.5)"),
    ("update-ratio-negative", lambda s: fields(s.update, max_failure_ratio=-0.25),
     "spec.update.max_failure_ratio", "between 0 and 1"),
    ("update-ratio-nan", lambda s: fields(s.update, max_failure_ratio=float("nan")),
     "spec.update.max_failure_ratio", "got nan"),
    ("update-action", lambda s: fields(s.update, failure_action=9),
     "spec.update.failure_action", "expected PAUSE, CONTINUE or ROLLBACK"),
    ("update-order", lambda s: fields(s.update, order=2),
     "spec.update.order", "expected STOP_FIRST or START_FIRST"),
    ("rollback-of-rollback", lambda s: fields(s.rollback, failure_action=pb.UpdateConfig.ROLLBACK),
     "spec.rollback.failure_action", "expected PAUSE or CONTINUE"),
    ("rollback-monitor", lambda s: _dur(s.rollback.monitor, -1),
     "spec.rollback.monitor", "negative"),
    ("endpoint-mode", lambda s: fields(s.endpoint, mode=3),
     "spec.endpoint.mode", "expected VIP or DNSRR"),
    ("target-port-zero", lambda s: _ports(s, pb.PortConfig(target_port=80),
                                          pb.PortConfig(target_port=0)),
     "spec.endpoint.ports[1].target_port", "between 1 and 65535 (got 0)"),
    ("target-port-high", lambda s: _ports(s, pb.PortConfig(target_port=70_000)),
     "spec.endpoint.ports[0].target_port", "got 70000"),
    ("published-port-high", lambda s: _ports(s, pb.PortConfig(target_port=80,
                                                              published_port=65_536)),
     "spec.endpoint.ports[0].published_port", "got 65536"),
    ("published-twice", lambda s: _ports(
        s, pb.PortConfig(target_port=80, published_port=8080),
        pb.PortConfig(target_port=81, published_port=8080, publish_mode=pb.PortConfig.HOST)),
     "spec.endpoint.ports[1].published_port", "8080/tcp is already published by ports[0]"),
    ("protocol", lambda s: _ports(s, pb.PortConfig(target_port=80, protocol=5)),  # type: ignore[arg-type]
     "spec.endpoint.ports[0].protocol", "expected TCP, UDP or SCTP"),
    ("publish-mode", lambda s: _ports(s, pb.PortConfig(target_port=80, publish_mode=4)),  # type: ignore[arg-type]
     "spec.endpoint.ports[0].publish_mode", "expected INGRESS or HOST"),
    ("dnsrr-ingress", lambda s: (fields(s.endpoint, mode=pb.EndpointSpec.DNSRR),
                                 _ports(s, pb.PortConfig(target_port=80, published_port=80))),
     "spec.endpoint.ports[0].publish_mode", "DNSRR"),
    ("proxy-protocol-udp", lambda s: _ports(s, pb.PortConfig(
        target_port=53, protocol=pb.PortConfig.UDP, proxy_protocol=pb.PortConfig.PROXY_V2)),
     "spec.endpoint.ports[0].proxy_protocol", "only for TCP ports published in ingress mode"),
    ("proxy-protocol-host", lambda s: _ports(s, pb.PortConfig(
        target_port=80, published_port=80, publish_mode=pb.PortConfig.HOST,
        proxy_protocol=pb.PortConfig.PROXY_V2)),
     "spec.endpoint.ports[0].proxy_protocol", "only for TCP ports published in ingress mode"),
    ("proxy-protocol-unknown", lambda s: _ports(s, pb.PortConfig(target_port=80,
                                                                 proxy_protocol=7)),  # type: ignore[arg-type]
     "spec.endpoint.ports[0].proxy_protocol", "expected PROXY_NONE or PROXY_V2"),
    ("internal-publish", lambda s: (s.task.networks.add(target="backend"),
                                    s.task.networks.add(target="private"),
                                    _ports(s, pb.PortConfig(target_port=80, published_port=80))),
     "spec.endpoint.ports", "cannot publish ports: network 'private' is internal"),
    ("internal-publish-host", lambda s: (
        s.task.networks.add(target="private"),
        _ports(s, pb.PortConfig(target_port=80, publish_mode=pb.PortConfig.HOST))),
     "spec.endpoint.ports", "(--publish)"),
]


@pytest.mark.parametrize(("mutate", "field", "fragment"),
                         [pytest.param(m, f, p, id=i) for i, m, f, p in INVALID_SERVICES])
def test_invalid_service_specs_are_refused(mutate: Mutation, field: str, fragment: str) -> None:
    spec = web()
    mutate(spec)
    with pytest.raises(ValidationError) as caught:
        normalize(spec)
    error = caught.value
    assert error.field == field
    assert fragment in error.problem
    assert str(error) == f"{field}: {error.problem}"
    assert "\n" not in str(error)


# ---------------------------------------------------------------- services: acceptances


VALID_SERVICES: list[tuple[str, Mutation]] = [
    ("stack-name", lambda s: fields(s, name="mystack_web-1")),
    ("one-char-name", lambda s: fields(s, name="a")),
    ("63-char-name", lambda s: fields(s, name="a" * 63)),
    ("zero-replicas", lambda s: fields(s.replicated, replicas=0)),
    ("max-replicas", lambda s: fields(s.replicated, replicas=100_000)),
    ("global", _global),
    ("image-plain", lambda s: fields(s.task.container, image="busybox")),
    ("image-registry-port", lambda s: fields(s.task.container,
                                             image="localhost:5000/team/app:v1.2")),
    ("image-digest", lambda s: fields(s.task.container,
                                      image=f"registry.example.com/a/b:1@{DIGEST}")),
    ("image-separators", lambda s: fields(s.task.container, image="ab/c_d__e--f.g:W_1.x-y")),
    ("image-upper-registry", lambda s: fields(s.task.container, image="Registry/app")),
    ("image-ipv6", lambda s: fields(s.task.container, image="[::1]:5000/app")),
    ("env-unset", lambda s: s.task.container.env.extend(["UNSET", "EMPTY=", "A==b c"])),
    ("signals", lambda s: fields(s.task.container, stop_signal="SIGRTMIN+2")),
    ("signal-number", lambda s: fields(s.task.container, stop_signal="9")),
    ("signal-lower", lambda s: fields(s.task.container, stop_signal="term")),
    ("volume", lambda s: _mount(s, pb.Mount.VOLUME, source="data.v1")),
    # Anonymous, as docker's `--mount type=volume,target=/data`; swarmctl sends the same.
    ("volume-anonymous", lambda s: _mount(s, pb.Mount.VOLUME)),
    ("bind", lambda s: _mount(s, pb.Mount.BIND, source="/srv")),
    ("tmpfs", lambda s: _mount(s, pb.Mount.TMPFS, size=MIB)),
    ("health-none", lambda s: s.task.container.healthcheck.test.append("NONE")),
    ("health-cmd", lambda s: s.task.container.healthcheck.test.extend(["CMD", "true"])),
    ("health-shell", lambda s: s.task.container.healthcheck.test.extend(["CMD-SHELL", "x"])),
    ("health-inherit", lambda s: _dur(s.task.container.healthcheck.interval, 30)),
    ("memory-minimum", lambda s: fields(s.task.resources.limits, memory_bytes=6 * MIB)),
    ("reservation-equals-limit", lambda s: (
        fields(s.task.resources.limits, memory_bytes=64 * MIB, nano_cpus=SECOND),
        fields(s.task.resources.reservations, memory_bytes=64 * MIB, nano_cpus=SECOND))),
    ("reservation-without-limit", lambda s: fields(s.task.resources.reservations,
                                                   memory_bytes=1 << 40)),
    ("constraints", lambda s: s.task.placement.constraints.extend(
        ["node.role==manager", "node.labels.zone != a", "engine.labels.os==linux"])),
    ("spread", lambda s: s.task.placement.preferences.extend(
        [pb.PlacementPreference(spread="node.labels.zone"),
         pb.PlacementPreference(spread="node.hostname")])),
    ("ratio-bounds", lambda s: (fields(s.update, max_failure_ratio=1.0),
                                fields(s.rollback, max_failure_ratio=0.0))),
    ("rollback-continue", lambda s: fields(s.rollback, failure_action=pb.UpdateConfig.CONTINUE)),
    ("ports", lambda s: _ports(
        s, pb.PortConfig(target_port=80, published_port=8080),
        pb.PortConfig(target_port=80, published_port=8080, protocol=pb.PortConfig.UDP),
        pb.PortConfig(target_port=81), pb.PortConfig(target_port=82),
        pb.PortConfig(target_port=65_535, published_port=65_535))),
    ("proxy-protocol-v2", lambda s: _ports(s, pb.PortConfig(
        target_port=80, published_port=8080, proxy_protocol=pb.PortConfig.PROXY_V2))),
    ("internal-without-ports", lambda s: s.task.networks.add(target="private")),
    ("ports-on-other-networks", lambda s: (s.task.networks.add(target="backend"),
                                           _ports(s, pb.PortConfig(target_port=80)))),
    ("dnsrr-host-ports", lambda s: (fields(s.endpoint, mode=pb.EndpointSpec.DNSRR),
                                    _ports(s, pb.PortConfig(target_port=80, published_port=80,
                                                            publish_mode=pb.PortConfig.HOST)))),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=i) for i, m in VALID_SERVICES])
def test_valid_service_specs_are_accepted_and_stable(mutate: Mutation) -> None:
    spec = web()
    mutate(spec)
    first = normalize(spec)
    assert normalize(first) == first


def test_defaults_are_filled_in() -> None:
    spec = pb.ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    out = normalize(spec)
    assert out.WhichOneof("mode") == "replicated"
    assert out.replicated.replicas == 1
    container = out.task.container
    assert container.stop_grace_period.ToNanoseconds() == 10 * SECOND
    restart = out.task.restart
    assert out.task.HasField("restart")
    assert restart.condition == pb.RestartPolicy.ANY
    assert restart.delay.ToNanoseconds() == 5 * SECOND
    assert not restart.HasField("window")
    for config in (out.update, out.rollback):
        assert config.parallelism == 1
        assert config.HasField("delay")
        assert config.delay.ToNanoseconds() == 0
        assert config.failure_action == pb.UpdateConfig.PAUSE
        assert config.monitor.ToNanoseconds() == 5 * SECOND
        assert config.order == pb.UpdateConfig.STOP_FIRST
        assert config.max_failure_ratio == 0
    assert out.HasField("endpoint")
    assert out.endpoint.mode == pb.EndpointSpec.VIP
    assert not container.HasField("healthcheck")
    assert container.image == "busybox", "the image reference is kept as written"


def test_explicit_values_are_kept() -> None:
    spec = web()
    _dur(spec.task.container.stop_grace_period, 0)
    spec.task.restart.condition = pb.RestartPolicy.ON_FAILURE
    _dur(spec.task.restart.delay, 0)
    _dur(spec.task.restart.window, 60)
    spec.update.parallelism = 0  # all at once
    spec.update.order = pb.UpdateConfig.START_FIRST
    spec.update.failure_action = pb.UpdateConfig.ROLLBACK
    _dur(spec.update.monitor, 0, 500_000_000)
    spec.rollback.max_failure_ratio = 0.5
    spec.endpoint.mode = pb.EndpointSpec.DNSRR
    out = normalize(spec)
    assert out.task.container.stop_grace_period.ToNanoseconds() == 0
    assert out.task.restart.condition == pb.RestartPolicy.ON_FAILURE
    assert out.task.restart.delay.ToNanoseconds() == 0
    assert out.task.restart.window.ToNanoseconds() == 60 * SECOND
    assert out.update.parallelism == 0
    assert out.update.order == pb.UpdateConfig.START_FIRST
    assert out.update.failure_action == pb.UpdateConfig.ROLLBACK
    assert out.update.monitor.ToNanoseconds() == SECOND // 2
    assert out.update.delay.ToNanoseconds() == 0, "an absent duration in a given config: default"
    assert out.rollback.parallelism == 0, "a given config keeps its zero parallelism"
    assert out.rollback.monitor.ToNanoseconds() == 5 * SECOND
    assert out.endpoint.mode == pb.EndpointSpec.DNSRR


@pytest.mark.parametrize(("target", "resolved"), [
    ("aaa111", "aaa111"),  # exact ID
    ("frontend", "aaa222"),  # name
    ("aaa", "bbb333"),  # a name beats an ID prefix
    ("aaa2", "aaa222"),  # unique ID prefix
    ("bbb", "bbb333"),
])
def test_network_targets_resolve_to_ids(target: str, resolved: str) -> None:
    spec = web()
    spec.task.networks.add(target=target, aliases=["www"])
    out = normalize(spec)
    assert [n.target for n in out.task.networks] == [resolved]
    assert list(out.task.networks[0].aliases) == ["www"]
    assert spec.task.networks[0].target == target, "the input is not modified"


def test_input_is_not_modified() -> None:
    spec = pb.ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    before = spec.SerializeToString(deterministic=True)
    out = normalize(spec)
    assert out is not spec
    assert spec.SerializeToString(deterministic=True) == before


def test_validation_error_shape() -> None:
    error = ValidationError("spec.name", "required")
    assert isinstance(error, ValueError)
    assert (error.field, error.problem, str(error)) == ("spec.name", "required",
                                                        "spec.name: required")


def test_user_text_is_quoted_on_one_line_and_bounded() -> None:
    spec = web()
    spec.task.container.image = "evil\nimage" + "x" * 500
    with pytest.raises(ValidationError) as caught:
        normalize(spec)
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(("value", "message"), [
    (-1, "replicas: must not be negative (got -1)"),
    (100_001, "replicas: must be at most 100000 (got 100001)"),
])
def test_validate_replicas(value: int, message: str) -> None:
    validate_replicas(0)
    validate_replicas(100_000)
    with pytest.raises(ValidationError) as caught:
        validate_replicas(value)
    assert str(caught.value) == message
    with pytest.raises(ValidationError, match=r"^spec\.x: "):
        validate_replicas(value, "spec.x")


@pytest.mark.parametrize(("text", "number"), [
    ("SIGTERM", 15), ("TERM", 15), ("term", 15), ("15", 15), ("SIGKILL", 9), ("SIGIOT", 6),
    ("SIGRTMIN", 34), ("RTMIN+1", 35), ("SIGRTMAX-1", 63), ("SIGRTMAX", 64), ("64", 64),
])
def test_signal_number(text: str, number: int) -> None:
    assert signal_number(text) == number


@pytest.mark.parametrize("text", ["", "0", "65", "SIG", "SIGFOO", "RTMIN+31", "RTMAX-31",
                                  "\u0661\u0665", "99999999999999999999", "-9"])
def test_signal_number_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="signal"):
        signal_number(text)


def test_image_reference_problem_accepts_none_for_valid() -> None:
    assert image_reference_problem("nginx") is None
    assert image_reference_problem("x" * 256) is not None


# ---------------------------------------------------------------- nodes


@pytest.mark.parametrize(("spec", "field", "fragment"), [
    (pb.NodeSpec(labels={"": "a"}), "spec.labels", "must not be empty"),
    (pb.NodeSpec(role=5), "spec.role", "unknown value 5 (expected WORKER or MANAGER)"),  # type: ignore[arg-type]
    (pb.NodeSpec(availability=9), "spec.availability",  # type: ignore[arg-type]
     "unknown value 9 (expected ACTIVE, PAUSE or DRAIN)"),
])
def test_invalid_node_specs(spec: pb.NodeSpec, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        normalize_node_spec(spec)
    assert caught.value.field == field
    assert fragment in caught.value.problem


def test_valid_node_spec_is_copied() -> None:
    spec = pb.NodeSpec(labels={"zone": "a"}, role=pb.NodeSpec.MANAGER,
                       availability=pb.NodeSpec.DRAIN)
    out = normalize_node_spec(spec)
    assert out == spec
    assert out is not spec


# ---------------------------------------------------------------- networks


def _net(subnet: str = "", gateway: str = "", **spec: object) -> pb.NetworkSpec:
    result = pb.NetworkSpec(name="backend")
    for key, value in spec.items():
        if key == "labels":
            result.labels.update(value)  # type: ignore[call-overload]
        else:
            setattr(result, key, value)
    if subnet or gateway:
        result.ipam.subnet = subnet
        result.ipam.gateway = gateway
    return result


@pytest.mark.parametrize(("spec", "field", "fragment"), [
    (_net(name=""), "spec.name", "required"),
    (_net(name="Back End"), "spec.name", "lowercase"),
    (_net(name="x-"), "spec.name", "starting and ending"),
    (pb.NetworkSpec(name="n", labels={"": "1"}), "spec.labels", "must not be empty"),
    (_net(driver="bridge"), "spec.driver", "unsupported driver 'bridge' (only 'overlay'"),
    (_net("10.0.0.0"), "spec.ipam.subnet", "CIDR"),
    (_net("10.0.0.0/255.255.255.0"), "spec.ipam.subnet", "CIDR"),
    (_net("fd00::/64"), "spec.ipam.subnet", "IPv4"),
    (_net("10.0.0.1/24"), "spec.ipam.subnet", "host bits"),
    (_net("10.0.0.0/30"), "spec.ipam.subnet", "between /8 and /29"),
    (_net("8.0.0.0/7"), "spec.ipam.subnet", "between /8 and /29"),
    (_net("300.0.0.0/24"), "spec.ipam.subnet", "invalid subnet"),
    (_net("10.0.0.0/24", "10.0.1.1"), "spec.ipam.gateway", "not in the subnet 10.0.0.0/24"),
    (_net("10.0.0.0/24", "10.0.0.0"), "spec.ipam.gateway", "network or broadcast"),
    (_net("10.0.0.0/24", "10.0.0.255"), "spec.ipam.gateway", "network or broadcast"),
    (_net("10.0.0.0/24", "gw"), "spec.ipam.gateway", "IPv4 address"),
    (_net("", "10.0.0.1"), "spec.ipam.gateway", "needs a subnet"),
])
def test_invalid_network_specs(spec: pb.NetworkSpec, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        normalize_network_spec(spec)
    assert caught.value.field == field
    assert fragment in caught.value.problem


@pytest.mark.parametrize(("subnet", "gateway"), [
    ("", ""), ("10.10.0.0/24", ""), ("10.10.0.0/24", "10.10.0.1"), ("10.0.0.0/8", "10.255.0.9"),
    ("192.168.1.8/29", "192.168.1.14"),
])
def test_valid_network_specs(subnet: str, gateway: str) -> None:
    spec = _net(subnet, gateway, attachable=True, labels={"team": "a"})
    out = normalize_network_spec(spec)
    assert out.driver == "overlay"
    assert (out.ipam.subnet, out.ipam.gateway) == (subnet, gateway)
    assert out.attachable
    assert spec.driver == "", "the input is not modified"
    assert normalize_network_spec(out) == out


# ---------------------------------------------------------------- references


class Obj:
    def __init__(self, name: str) -> None:
        self.name = name


def _objects(**by_id: str) -> dict[str, Obj]:
    return {obj_id: Obj(name) for obj_id, name in by_id.items()}


def test_resolve_ref_order() -> None:
    objects = _objects(abc123="web", abd456="db", xyz789="abc123x", web="other")
    name: Callable[[Obj], str] = lambda o: o.name  # noqa: E731
    assert resolve_ref("abc123", objects, name, "service") is objects["abc123"]
    assert resolve_ref("db", objects, name, "service") is objects["abd456"]
    assert resolve_ref("web", objects, name, "service") is objects["web"], "an exact ID first"
    assert resolve_ref("abc123x", objects, name, "service") is objects["xyz789"]
    assert resolve_ref("abc", objects, name, "service") is objects["abc123"]
    assert resolve_ref("x", objects, name, "service") is objects["xyz789"]


@pytest.mark.parametrize(("ref", "error", "message"), [
    ("ab", Ambiguous, "ambiguous reference 'ab': matches 2 services"),
    ("same", Ambiguous, "ambiguous reference 'same': matches 2 services"),
    ("x", NotFound, "service 'x' not found"),
    ("abc1234", NotFound, "service 'abc1234' not found"),
    ("", NotFound, "empty service reference"),
])
def test_resolve_ref_failures(ref: str, error: type[LookupError], message: str) -> None:
    objects = _objects(abc123="same", abd456="same")
    with pytest.raises(error) as caught:
        resolve_ref(ref, objects, lambda o: o.name, "service")
    assert isinstance(caught.value, LookupError)
    assert str(caught.value.args[0]).startswith(message)


def test_resolve_ref_kind_wording() -> None:
    with pytest.raises(LookupError, match=r"^node 'n' not found$"):
        resolve_ref("n", {}, lambda o: str(o), "node")


# ---------------------------------------------------------------- properties


_ANY_ENUM = st.integers(-(2**31), 2**31 - 1)
_ANY_INT64 = st.integers(-(2**63), 2**63 - 1)
_ANY_UINT32 = st.integers(0, 2**32 - 1)
_ANY_UINT64 = st.integers(0, 2**64 - 1)
_ANY_DURATION = st.one_of(st.none(), st.tuples(_ANY_INT64, st.integers(-(2**31), 2**31 - 1)))
_SANE_DURATION = st.one_of(st.none(), st.tuples(st.integers(0, 100), st.integers(0, 999_999_999)))
_TEXT = st.text(max_size=12)


def _set_duration(message: object, value: tuple[int, int] | None) -> None:
    if value is not None:
        _dur(message, *value)


@st.composite
def service_specs(draw: st.DrawFn) -> pb.ServiceSpec:
    """Service specs from plausible to garbage: each choice is garbage with a
    probability drawn once per example (none, a little, a lot), so that a good
    share validates (and exercises idempotence) and the rest probes the refusals."""
    noise = draw(st.sampled_from([0, 3, 30]))  # percent

    def pick(sane: st.SearchStrategy[T], wild: st.SearchStrategy[T]) -> T:
        return draw(wild) if draw(st.integers(0, 99)) < noise else draw(sane)

    def pick_from(sane: list[str]) -> str:
        return pick(st.sampled_from(sane), _TEXT)

    def pick_duration(message: object) -> None:
        _set_duration(message, pick(_SANE_DURATION, _ANY_DURATION))

    spec = pb.ServiceSpec(name=pick_from(["web", "a_b", "x-1"]))
    spec.labels.update(pick(st.dictionaries(st.sampled_from(["a", "zone"]), _TEXT, max_size=2),
                            st.dictionaries(_TEXT, _TEXT, max_size=2)))
    mode = draw(st.sampled_from(["none", "replicated", "global"]))
    if mode == "replicated":
        spec.replicated.replicas = pick(st.integers(0, 10), _ANY_INT64)
    elif mode == "global":
        _global(spec)
    task = spec.task
    container = task.container
    container.image = pick_from(["busybox", "nginx:1.25", f"r.io:5000/a/b@{DIGEST}"])
    for _ in range(draw(st.integers(0, 2))):
        container.env.append(pick_from(["A=1", "B", "C=x=y"]))
    container.dir = pick_from(["", "/app"])
    container.stop_signal = pick_from(["", "SIGTERM", "9", "RTMAX-2"])
    pick_duration(container.stop_grace_period)
    container.labels.update(pick(st.dictionaries(st.sampled_from(["a"]), _TEXT, max_size=1),
                                 st.dictionaries(_TEXT, _TEXT, max_size=2)))
    for index in range(draw(st.integers(0, 2))):
        kind = pick(st.integers(0, 2), _ANY_ENUM)
        sources: dict[int, str] = {pb.Mount.VOLUME: "data", pb.Mount.BIND: "/srv"}
        source = sources.get(kind, "")
        container.mounts.add(type=kind, source=pick(st.just(source), _TEXT),
                             target=pick(st.just(f"/data{index}"), _TEXT),
                             tmpfs_size_bytes=pick(st.just(MIB if kind == pb.Mount.TMPFS else 0),
                                                   _ANY_INT64))
    if draw(st.booleans()):
        health = container.healthcheck
        health.SetInParent()
        health.test.extend(pick(
            st.sampled_from([[], ["NONE"], ["CMD", "true"], ["CMD-SHELL", "exit 0"]]),
            st.lists(st.one_of(st.sampled_from(["NONE", "CMD", "CMD-SHELL"]), _TEXT),
                     max_size=3)))
        pick_duration(health.interval)
        pick_duration(health.timeout)
        pick_duration(health.start_period)
        health.retries = draw(_ANY_UINT32)
    limits, reservations = task.resources.limits, task.resources.reservations
    limits.nano_cpus = pick(st.sampled_from([0, 2 * SECOND]), _ANY_INT64)
    limits.memory_bytes = pick(st.sampled_from([0, 64 * MIB]), _ANY_INT64)
    reservations.nano_cpus = pick(st.integers(0, SECOND), _ANY_INT64)
    reservations.memory_bytes = pick(st.integers(0, 32 * MIB), _ANY_INT64)
    if draw(st.booleans()):
        fields(task.restart, condition=pick(st.integers(0, 2), _ANY_ENUM))
        task.restart.max_attempts = draw(_ANY_UINT64)
        pick_duration(task.restart.delay)
        pick_duration(task.restart.window)
    for _ in range(draw(st.integers(0, 2))):
        task.placement.constraints.append(pick_from(["node.role==manager", "node.labels.a!=b"]))
    for _ in range(draw(st.integers(0, 2))):
        task.placement.preferences.add(spread=pick_from(["node.labels.zone", "node.id"]))
    task.placement.max_replicas_per_node = pick(
        st.just(0) if mode == "global" else st.integers(0, 3), _ANY_UINT64)
    targets = draw(st.lists(st.sampled_from(["backend", "aaa222", "bbb"]), unique=True,
                            max_size=2))
    for target in targets:
        task.networks.add(target=pick(st.just(target), _TEXT), aliases=[draw(_TEXT)])
    for which in ("update", "rollback"):
        if draw(st.booleans()):
            config: pb.UpdateConfig = getattr(spec, which)
            config.parallelism = draw(_ANY_UINT64)
            fields(config, failure_action=pick(st.integers(0, 1), _ANY_ENUM),
                   order=pick(st.integers(0, 1), _ANY_ENUM))
            config.max_failure_ratio = pick(st.floats(0, 1, width=32), st.floats(width=32))
            pick_duration(config.delay)
            pick_duration(config.monitor)
    if draw(st.booleans()):
        fields(spec.endpoint, mode=pick(st.integers(0, 1), _ANY_ENUM))
        for index in range(draw(st.integers(0, 3))):
            spec.endpoint.ports.add(
                protocol=pick(st.integers(0, 2), _ANY_ENUM),
                publish_mode=pick(st.just(int(pb.PortConfig.HOST)), _ANY_ENUM),
                target_port=pick(st.integers(1, 65_535), _ANY_UINT32),
                published_port=pick(st.sampled_from([0, 8000 + index]), _ANY_UINT32))
    spec.task.force_update = draw(_ANY_UINT64)
    return spec


def _check_total_and_idempotent(spec: pb.ServiceSpec) -> None:
    before = spec.SerializeToString(deterministic=True)
    error: ValidationError | None = None
    try:
        out: pb.ServiceSpec | None = normalize(spec)
    except ValidationError as caught:
        error, out = caught, None
    if error is not None:
        assert error.field.startswith("spec.")
        assert str(error) == f"{error.field}: {error.problem}"
        assert "\n" not in str(error)
        event("refused")
    assert spec.SerializeToString(deterministic=True) == before, "the input is not modified"
    if out is not None:
        event("accepted")
        assert normalize(out) == out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service_specs())
def test_any_service_spec_validates_or_raises_validation_error(spec: pb.ServiceSpec) -> None:
    _check_total_and_idempotent(spec)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as two's complement, like int64 on the wire
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@st.composite
def _wire(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> bytes:
    """Arbitrary well-framed wire bytes for `descriptor`: any field, any value
    (out-of-range enums and ints, invalid UTF-8, NaN floats, nested garbage)."""
    chunks = []
    candidates = list(descriptor.fields)
    for _ in range(draw(st.integers(0, 4 if depth < 4 and candidates else 0))):
        field: FieldDescriptor = draw(st.sampled_from(candidates))
        if field.message_type is not None:
            wire_type, body = 2, draw(_wire(field.message_type, depth + 1))
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            wire_type, body = 2, draw(st.one_of(st.text(max_size=8).map(str.encode),
                                                st.binary(max_size=8)))
        elif field.type == FieldDescriptor.TYPE_FLOAT:
            wire_type, body = 5, draw(st.binary(min_size=4, max_size=4))
        elif field.type == FieldDescriptor.TYPE_DOUBLE:
            wire_type, body = 1, draw(st.binary(min_size=8, max_size=8))
        else:
            wire_type, body = 0, _varint(draw(st.one_of(st.integers(-3, 3),
                                                        st.integers(-(2**63), 2**64 - 1))))
        if wire_type == 2:
            body = _varint(len(body)) + body
        chunks.append(_varint(field.number << 3 | wire_type) + body)
    return b"".join(chunks)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"", web().SerializeToString()]), _wire(pb.ServiceSpec.DESCRIPTOR))
def test_any_wire_bytes_validate_or_raise_validation_error(base: bytes, garbage: bytes) -> None:
    spec = pb.ServiceSpec()
    try:
        spec.ParseFromString(base + garbage)
    except DecodeError:  # invalid UTF-8 in a string field: refused before validation
        assume(False)
    _check_total_and_idempotent(spec)
