"""Compose-format stack files -> specs (cli/compose/), and deploy planning
(cli/stack.py's pure functions), without a controller. The commands themselves run
against a live control plane in tests/integration/test_stack.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import normalize_network_spec, normalize_service_spec
from swarm.cli import stack as stack_cli
from swarm.cli.compose import NAMESPACE_LABEL, Stack, StackError, load_stack, parse_stack
from swarm.cli.main import app
from swarm.cli.stack import Action, PlanError, plan_lines, plan_stack, unsatisfiable_constraints

SECOND = 1_000_000_000
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
BASE = "name: s\nservices:\n  web:\n    image: busybox\n"


def parse(text: str, **kwargs: object) -> Stack:
    options: dict[str, object] = {"filename": "f.yaml", "environ": {}}
    options.update(kwargs)
    return parse_stack(text, **options)  # type: ignore[arg-type]


def web(text: str, **kwargs: object) -> pb.ServiceSpec:
    """The spec of service `web` in BASE plus `text` (indented under it)."""
    return parse(BASE + text, **kwargs).services["web"].spec


# ---------------------------------------------------------------- every supported key


FULL = """\
name: shop
services:
  web:
    image: nginx:1.25
    command: ["nginx", "-g", "daemon off;"]
    entrypoint: /docker-entrypoint.sh
    environment:
      MODE: prod
      DEBUG: false
      PORT: 80
    ports:
      - "8080:80"
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
    networks:
      front:
        aliases: [www]
      back:
    volumes:
      - static:/srv/static:ro
      - type: bind
        source: /etc/ssl
        target: /etc/ssl
        read_only: true
      - type: tmpfs
        target: /cache
        tmpfs: {size: 16M}
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost/"]
      interval: 1m30s
      timeout: 5s
      retries: 4
      start_period: 500ms
    stop_grace_period: 20s
    x-drain-timeout: 3s
    stop_signal: SIGQUIT
    labels: ["com.example.role=web"]
    hostname: web-host
    user: "101:101"
    working_dir: /srv
    read_only: true
    tmpfs: /run:size=8M
    init: true
    deploy:
      mode: replicated
      replicas: 3
      labels: {tier: front}
      placement:
        constraints: ["node.role == worker", "node.labels.zone!=west"]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 2
      resources:
        limits: {cpus: "1.5", memory: 512M}
        reservations: {cpus: 0.25, memory: 128M}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 5, window: 1m}
      update_config:
        parallelism: 2
        delay: 10s
        failure_action: rollback
        monitor: 30s
        max_failure_ratio: 0.25
        order: start-first
      rollback_config: {parallelism: 0, failure_action: continue, order: stop-first}
      endpoint_mode: vip
  agent:
    image: busybox
    deploy: {mode: global, endpoint_mode: dnsrr}
networks:
  front:
    driver: overlay
    attachable: true
    internal: false
    labels: {owner: team-a}
    ipam:
      config:
        - subnet: 10.20.0.0/24
          gateway: 10.20.0.1
  back:
    internal: false  # web publishes ports: an internal network would refuse them
  shared:
    external: true
volumes:
  static:
  certs:
    external: true
"""


def test_every_supported_key_maps_into_the_spec() -> None:
    stack = parse(FULL)
    assert stack.warnings == []
    assert set(stack.services) == {"web", "agent"}
    spec = stack.services["web"].spec
    assert spec.name == "shop_web"
    assert dict(spec.labels) == {"tier": "front", NAMESPACE_LABEL: "shop"}
    container = spec.task.container
    assert container.image == "nginx:1.25"
    assert list(container.args) == ["nginx", "-g", "daemon off;"]
    assert list(container.command) == ["/docker-entrypoint.sh"]
    assert list(container.env) == ["MODE=prod", "DEBUG=false", "PORT=80"]
    assert [(p.published_port, p.target_port, p.protocol, p.publish_mode)
            for p in spec.endpoint.ports] == [
        (8080, 80, pb.PortConfig.TCP, pb.PortConfig.INGRESS),
        (8443, 443, pb.PortConfig.TCP, pb.PortConfig.HOST)]
    assert [(n.target, list(n.aliases)) for n in spec.task.networks] == [
        ("shop_front", ["web", "www"]), ("shop_back", ["web"])]
    assert [(m.type, m.source, m.target, m.read_only, m.tmpfs_size_bytes)
            for m in container.mounts] == [
        (pb.Mount.VOLUME, "shop_static", "/srv/static", True, 0),
        (pb.Mount.BIND, "/etc/ssl", "/etc/ssl", True, 0),
        (pb.Mount.TMPFS, "", "/cache", False, 16 * MIB),
        (pb.Mount.TMPFS, "", "/run", False, 8 * MIB)]
    health = container.healthcheck
    assert list(health.test) == ["CMD", "curl", "-f", "http://localhost/"]
    assert health.interval.ToNanoseconds() == 90 * SECOND
    assert health.timeout.ToNanoseconds() == 5 * SECOND
    assert health.retries == 4
    assert health.start_period.ToNanoseconds() == SECOND // 2
    assert container.stop_grace_period.ToNanoseconds() == 20 * SECOND
    assert container.drain_timeout.ToNanoseconds() == 3 * SECOND
    assert container.stop_signal == "SIGQUIT"
    assert dict(container.labels) == {"com.example.role": "web", NAMESPACE_LABEL: "shop"}
    assert (container.hostname, container.user, container.dir) == ("web-host", "101:101", "/srv")
    assert container.read_only
    assert container.init
    assert spec.replicated.replicas == 3
    placement = spec.task.placement
    assert list(placement.constraints) == ["node.role==worker", "node.labels.zone!=west"]
    assert [p.spread for p in placement.preferences] == ["node.labels.zone"]
    assert placement.max_replicas_per_node == 2
    resources = spec.task.resources
    assert (resources.limits.nano_cpus, resources.limits.memory_bytes) == (1_500_000_000,
                                                                           512 * MIB)
    assert (resources.reservations.nano_cpus, resources.reservations.memory_bytes) == (
        250_000_000, 128 * MIB)
    restart = spec.task.restart
    assert restart.condition == pb.RestartPolicy.ON_FAILURE
    assert restart.delay.ToNanoseconds() == 2 * SECOND
    assert restart.max_attempts == 5
    assert restart.window.ToNanoseconds() == 60 * SECOND
    update = spec.update
    assert (update.parallelism, update.failure_action, update.order) == (
        2, pb.UpdateConfig.ROLLBACK, pb.UpdateConfig.START_FIRST)
    assert update.delay.ToNanoseconds() == 10 * SECOND
    assert update.monitor.ToNanoseconds() == 30 * SECOND
    assert update.max_failure_ratio == pytest.approx(0.25)
    rollback = spec.rollback
    assert (rollback.parallelism, rollback.failure_action, rollback.order) == (
        0, pb.UpdateConfig.CONTINUE, pb.UpdateConfig.STOP_FIRST)
    assert spec.endpoint.mode == pb.EndpointSpec.VIP

    agent = stack.services["agent"].spec
    assert agent.WhichOneof("mode") == "global"
    assert agent.endpoint.mode == pb.EndpointSpec.DNSRR
    # No networks named: the stack's default network, as docker does.
    assert [n.target for n in agent.task.networks] == ["shop_default"]

    networks = stack.networks
    assert set(networks) == {"front", "back", "default"}  # `shared` is unused
    front = networks["front"].spec
    assert front is not None
    assert (front.name, front.driver, front.attachable, front.internal) == (
        "shop_front", "overlay", True, False)
    assert (front.ipam.subnet, front.ipam.gateway) == ("10.20.0.0/24", "10.20.0.1")
    assert dict(front.labels) == {"owner": "team-a", NAMESPACE_LABEL: "shop"}
    back = networks["back"].spec
    assert back is not None
    assert not back.internal
    private = parse(BASE + "    networks: [private]\nnetworks:\n"
                           "  private: {internal: true, attachable: true}\n").networks["private"]
    assert private.spec is not None
    assert (private.spec.internal, private.spec.attachable) == (True, True)
    assert stack.volumes["certs"].external
    assert stack.volumes["certs"].name == "certs"
    assert stack.volumes["static"].name == "shop_static"


def test_every_spec_passes_the_controllers_validation() -> None:
    stack = parse(FULL)
    networks = {n.name: pb.Network(id=n.name, spec=n.spec or pb.NetworkSpec(name=n.name))
                for n in stack.networks.values()}
    for service in stack.services.values():
        normalize_service_spec(service.spec, networks)
    for network in stack.networks.values():
        if network.spec is not None:
            normalize_network_spec(network.spec)


def test_minimal_service_sets_only_what_docker_sets() -> None:
    spec = web("")
    assert spec.replicated.replicas == 1
    assert not spec.HasField("update")
    assert not spec.task.HasField("restart")
    assert not spec.task.container.HasField("healthcheck")


# ---------------------------------------------------------------- forms and syntaxes


@pytest.mark.parametrize(("text", "env"), [
    ("    environment: [A=1, B=two words, 'C=x=y']\n", ["A=1", "B=two words", "C=x=y"]),
    ("    environment: {A: 1, B: two words, C: 'x=y', D: true, E: 1.5}\n",
     ["A=1", "B=two words", "C=x=y", "D=true", "E=1.5"]),
    # A key without a value comes from the shell, or is left out.
    ("    environment: [FROM_SHELL, NOT_SET]\n", ["FROM_SHELL=here"]),
    ("    environment: {FROM_SHELL: , NOT_SET: }\n", ["FROM_SHELL=here"]),
    ("    environment: {EMPTY: ''}\n", ["EMPTY="]),
])
def test_environment_list_and_map_forms(text: str, env: list[str]) -> None:
    assert list(web(text, environ={"FROM_SHELL": "here"}).task.container.env) == env


def test_env_file_is_read_relative_to_the_stack_file_and_environment_wins() -> None:
    files = {Path("/stacks/app/common.env"): "# comment\nA=1\nexport B='two'\n\nC=\"3\"\n",
             Path("/stacks/app/extra.env"): "C=4\n"}

    def read(path: Path) -> str:
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    spec = web("    env_file: [common.env, {path: missing.env, required: false}, extra.env]\n"
               "    environment: {A: override}\n",
               base_dir=Path("/stacks/app"), read_text=read)
    assert list(spec.task.container.env) == ["A=override", "B=two", "C=4"]
    single = web("    env_file: common.env\n", base_dir=Path("/stacks/app"), read_text=read)
    assert list(single.task.container.env) == ["A=1", "B=two", "C=3"]


@pytest.mark.parametrize(("port", "expected"), [
    ('"80"', [(0, 80, pb.PortConfig.TCP)]),
    ("80", [(0, 80, pb.PortConfig.TCP)]),
    ('"8080:80"', [(8080, 80, pb.PortConfig.TCP)]),
    ('"8080:80/udp"', [(8080, 80, pb.PortConfig.UDP)]),
    ('"53:53/SCTP"', [(53, 53, pb.PortConfig.SCTP)]),
    ('"9000-9001:90-91"', [(9000, 90, pb.PortConfig.TCP), (9001, 91, pb.PortConfig.TCP)]),
    ("{target: 80, published: '8080', protocol: udp}", [(8080, 80, pb.PortConfig.UDP)]),
])
def test_port_syntaxes(port: str, expected: list[tuple[int, int, int]]) -> None:
    spec = web(f"    ports: [{port}]\n")
    assert [(p.published_port, p.target_port, p.protocol) for p in spec.endpoint.ports] == expected


def test_host_ip_in_a_port_is_a_warning() -> None:
    stack = parse(BASE + '    ports: ["127.0.0.1:8080:80"]\n')
    assert stack.services["web"].spec.endpoint.ports[0].published_port == 8080
    assert [str(w) for w in stack.warnings] == [
        "f.yaml:5:13: services.web.ports[0]: binding to a host IP (127.0.0.1) is not "
        "supported; published on every address"]


def test_volume_syntaxes() -> None:
    spec = web("    volumes: [data:/data, './conf:/etc/app:ro', /scratch, 'ext:/ext:rw',\n"
               "              {type: volume, source: data, target: /d2}]\n"
               "volumes:\n  data:\n  ext: {external: true, name: shared-data}\n",
               base_dir=Path("/stacks/app"))
    assert [(m.type, m.source, m.target, m.read_only) for m in spec.task.container.mounts] == [
        (pb.Mount.VOLUME, "s_data", "/data", False),
        (pb.Mount.BIND, "/stacks/app/conf", "/etc/app", True),
        (pb.Mount.VOLUME, "", "/scratch", False),  # anonymous
        (pb.Mount.VOLUME, "shared-data", "/ext", False),
        (pb.Mount.VOLUME, "s_data", "/d2", False)]


@pytest.mark.parametrize(("test", "expected"), [
    ("curl -f http://localhost/", ["CMD-SHELL", "curl -f http://localhost/"]),
    ("[CMD-SHELL, 'exit 0']", ["CMD-SHELL", "exit 0"]),
    ("[NONE]", ["NONE"]),
])
def test_healthcheck_test_forms(test: str, expected: list[str]) -> None:
    spec = web(f"    healthcheck:\n      test: {test}\n")
    assert list(spec.task.container.healthcheck.test) == expected


def test_healthcheck_start_interval() -> None:
    spec = web("    healthcheck: {test: 'true', start_period: 30s, start_interval: 1s}\n")
    assert spec.task.container.healthcheck.start_interval.ToMilliseconds() == 1000


def test_healthcheck_disable() -> None:
    spec = web("    healthcheck: {disable: true}\n")
    assert list(spec.task.container.healthcheck.test) == ["NONE"]


def test_networks_external_and_custom_names() -> None:
    stack = parse(BASE + "    networks: [ext, named]\nnetworks:\n  ext: {external: true}\n"
                         "  named: {name: exact-name}\n")
    assert [n.target for n in stack.services["web"].spec.task.networks] == ["ext", "exact-name"]
    assert stack.networks["ext"].external
    assert stack.networks["ext"].spec is None
    named = stack.networks["named"].spec
    assert named is not None
    assert named.name == "exact-name"


def test_yaml_anchors_and_merge_keys() -> None:
    stack = parse("name: s\nx-common: &common\n  image: busybox\n  environment: [A=1]\n"
                  "services:\n  a:\n    <<: *common\n  b:\n    <<: *common\n"
                  "    environment: [B=2]\n")
    assert list(stack.services["a"].spec.task.container.env) == ["A=1"]
    assert list(stack.services["b"].spec.task.container.env) == ["B=2"]
    assert stack.services["b"].spec.task.container.image == "busybox"


# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize(("value", "expected"), [
    ("${TAG}", "1.2"),
    ("$TAG", "1.2"),
    ("v${TAG}-x", "v1.2-x"),
    ("${UNSET:-dflt}", "dflt"),
    ("${EMPTY:-dflt}", "dflt"),
    ("${EMPTY-dflt}", ""),
    ("${UNSET-dflt}", "dflt"),
    ("${TAG:+set}", "set"),
    ("${UNSET:+set}", ""),
    ("${EMPTY+set}", "set"),
    ("${TAG:?needed}", "1.2"),
    ("$$TAG", "$TAG"),
    ("cost: $$5", "cost: $5"),
])
def test_interpolation(value: str, expected: str) -> None:
    spec = web(f"    hostname: '{value}'\n", environ={"TAG": "1.2", "EMPTY": ""})
    assert spec.task.container.hostname == expected


def test_interpolated_numbers_are_numbers() -> None:
    spec = web("    deploy:\n      replicas: ${N}\n", environ={"N": "4"})
    assert spec.replicated.replicas == 4


def test_an_unset_variable_is_a_warning_once_with_its_line() -> None:
    stack = parse(BASE + "    hostname: ${NOPE}\n    user: ${NOPE}\n")
    assert stack.services["web"].spec.task.container.hostname == ""
    assert [str(w) for w in stack.warnings] == [
        "f.yaml:5:15: the variable NOPE is not set; using an empty string"]


# ---------------------------------------------------------------- warnings and names


def test_unsupported_keys_are_warnings_naming_the_key_and_line() -> None:
    stack = parse(BASE + "    build: .\n    depends_on: [db]\n    privileged: true\n"
                         "    shm_size: 64m\n    ipc: host\n"
                         "    x-custom: ignored silently\n"
                         "    healthcheck: {test: 'true', start_interval: 1s}\n"
                         "include:\n  - other.yaml\nx-top: fine\n")
    assert [str(w) for w in stack.warnings] == [
        "f.yaml:5:12: services.web.build: not supported by this orchestrator; ignored",
        "f.yaml:6:17: services.web.depends_on: not supported by this orchestrator; ignored",
        "f.yaml:7:17: services.web.privileged: not supported by this orchestrator; ignored",
        "f.yaml:8:15: services.web.shm_size: not supported by this orchestrator; ignored",
        "f.yaml:9:10: services.web.ipc: not supported by this orchestrator; ignored",
        "f.yaml:13:3: include: not supported; ignored",
    ]


def test_stack_name_comes_from_the_option_then_the_file_then_the_directory(
        tmp_path: Path) -> None:
    directory = tmp_path / "My-Project.v2"
    directory.mkdir()
    file = directory / "stack.yaml"
    file.write_text("services:\n  web:\n    image: busybox\n")
    assert load_stack(file).name == "my-projectv2"
    assert load_stack(file, stack_name="other").name == "other"
    file.write_text("name: named\nservices:\n  web:\n    image: busybox\n")
    assert load_stack(file).services["web"].spec.name == "named_web"


def test_examples_parse() -> None:
    examples = sorted((REPO / "deploy" / "examples").glob("*.yaml"))
    assert {p.name for p in examples} >= {"web.yaml", "monitor.yaml", "placement.yaml"}
    for path in examples:
        stack = load_stack(path, environ={})
        assert stack.warnings == [], path
    web_stack = load_stack(REPO / "deploy" / "examples" / "web.yaml", environ={})
    web_spec = web_stack.services["web"].spec
    assert web_spec.name == "web_web"
    assert [(p.published_port, p.target_port) for p in web_spec.endpoint.ports] == [(8080, 80)]
    assert web_stack.networks["backend"].spec is not None
    monitor = load_stack(REPO / "deploy" / "examples" / "monitor.yaml", environ={})
    assert monitor.services["node-stats"].spec.WhichOneof("mode") == "global"
    placement = load_stack(REPO / "deploy" / "examples" / "placement.yaml", environ={})
    batch = placement.services["batch"].spec
    assert batch.task.placement.constraints
    assert batch.task.resources.reservations.memory_bytes == 128 * MIB


# ---------------------------------------------------------------- bad input, one line each


BAD = [
    ("name: s\nservices:\n  web: [\n",
     "f.yaml:4:1: invalid YAML: expected the node content, but found '<stream end>' (while "
     "parsing a flow node)"),
    ("services:\n\tweb: 1\n",
     "f.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token (while "
     "scanning for the next token)"),
    (BASE + "servces: {}\n",
     "f.yaml:5:10: servces: unknown top-level key (expected configs, name, networks, secrets, "
     "services, version, volumes, or x-* extensions)"),
    ("- a\n", "f.yaml:1:1: expected a mapping with `services:` at the top, got a list"),
    ("", "f.yaml:1:1: the file is empty: expected a `services:` mapping"),
    ("name: s\n", "f.yaml:1:1: services: required: at least one service"),
    (BASE + "    imagee: x\n", "f.yaml:5:13: services.web.imagee: unknown key"),
    ("name: s\nservices:\n  web:\n    image: [a]\n",
     "f.yaml:4:12: services.web.image: expected a string, got a list"),
    ("name: s\nservices:\n  web:\n    command: x\n",
     "f.yaml:4:5: services.web: image: required (building images is not supported)"),
    (BASE + "    deploy:\n      replicas: three\n",
     'f.yaml:6:17: services.web.deploy.replicas: expected a whole number, got a string "three"'),
    (BASE + "    deploy:\n      replicas: -1\n",
     "f.yaml:6:17: services.web.deploy.replicas: must not be negative (got -1)"),
    (BASE + "    deploy:\n      replicas: 1000000\n",
     "f.yaml:6:17: services.web.deploy.replicas: must be at most 100000 (got 1000000)"),
    (BASE + "    deploy:\n      mode: global\n      replicas: 2\n",
     "f.yaml:7:17: services.web.deploy.replicas: cannot be used with mode: global"),
    (BASE + '    ports: ["80a"]\n',
     'f.yaml:5:13: services.web.ports[0]: invalid port "80a" (expected a port from 1 to 65535, '
     "e.g. 8080:80)"),
    (BASE + '    ports: ["8080:70000"]\n',
     'f.yaml:5:13: services.web.ports[0]: invalid port "8080:70000" (expected a port from 1 to '
     "65535, e.g. 8080:80)"),
    (BASE + '    ports: ["8080:80/icmp"]\n',
     'f.yaml:5:13: services.web.ports[0]: invalid port "8080:80/icmp": unknown protocol "icmp" '
     "(expected tcp, udp or sctp)"),
    (BASE + "    ports:\n      - {target: 80, mode: bridge}\n",
     'f.yaml:6:28: services.web.ports[0].mode: invalid value "bridge" (expected ingress, host)'),
    (BASE + '    ports: ["8080:80", "8080:81"]\n',
     "f.yaml:5:12: services.web.ports: port 8080/tcp is already published by ports[0]"),
    (BASE + "    x-drain-timeout: 10m\n",
     "f.yaml:5:22: services.web.x-drain-timeout: at most 5m (got 10m): it bounds a wait that "
     "takes well under a second when every node answers"),
    (BASE + "    x-drain-timeout: -1s\n",
     'f.yaml:5:22: services.web.x-drain-timeout: invalid duration "-1s" (expected '
     "e.g. 10s, 1m30s, 500ms)"),
    (BASE + "    x-drain-timeout: soon\n",
     'f.yaml:5:22: services.web.x-drain-timeout: invalid duration "soon" (expected '
     "e.g. 10s, 1m30s, 500ms)"),
    (BASE + "    stop_grace_period: 10 seconds\n",
     'f.yaml:5:24: services.web.stop_grace_period: invalid duration "10 seconds" (expected '
     "e.g. 10s, 1m30s, 500ms)"),
    (BASE + "    healthcheck:\n      interval: 10\n",
     "f.yaml:6:17: services.web.healthcheck.interval: expected a string, got a number"),
    (BASE + "    deploy:\n      resources:\n        limits:\n          memory: lots\n",
     'f.yaml:8:19: services.web.deploy.resources.limits.memory: invalid size "lots" (expected '
     "bytes or a number with a unit b, k, m, g, e.g. 512M)"),
    (BASE + "    deploy:\n      resources:\n        limits:\n          cpus: many\n",
     'f.yaml:8:17: services.web.deploy.resources.limits.cpus: invalid CPU count "many" '
     "(expected a number such as 0.5 or 2)"),
    (BASE + "    networks: [front]\n",
     'f.yaml:5:16: services.web.networks: undefined network "front": declare it under the '
     "top-level `networks:`"),
    (BASE + '    volumes: ["data:/data"]\n',
     'f.yaml:5:15: services.web.volumes[0]: undefined volume "data": declare it under the '
     "top-level `volumes:`"),
    (BASE + '    volumes: ["data:/data:rx"]\n',
     'f.yaml:5:15: services.web.volumes[0]: invalid volume "data:/data:rx": unknown mode "rx" '
     "(expected ro or rw)"),
    (BASE + "    environment: 3\n",
     "f.yaml:5:18: services.web.environment: expected a mapping, got a number"),
    (BASE + '    environment: ["=x"]\n',
     'f.yaml:5:19: services.web.environment[0]: invalid entry "=x": expected KEY=VALUE with a '
     "non-empty KEY without spaces"),
    (BASE + "    user: ${USER:?set USER please}\n",
     "f.yaml:5:11: required variable USER is missing a value: set USER please"),
    (BASE + "    user: ${USER:-x\n",
     'f.yaml:5:11: invalid interpolation format in "${USER:-x": expected $VAR or ${VAR} (use $$ '
     "for a literal $)"),
    (BASE + "    image: other\n", 'f.yaml:5:5: duplicate key "image" (first at line 4)'),
    (BASE + '    deploy:\n      placement:\n        constraints: ["node.role=manager"]\n',
     "f.yaml:7:22: services.web.deploy.placement.constraints: invalid constraint "
     "'node.role=manager': expected KEY==VALUE or KEY!=VALUE"),
    (BASE + "    working_dir: relative\n",
     "f.yaml:5:18: services.web.working_dir: the working directory 'relative' must be an "
     "absolute path"),
    (BASE + "    stop_signal: SIGFOO\n",
     "f.yaml:5:18: services.web.stop_signal: unknown signal 'SIGFOO': expected a name such as "
     "SIGTERM, TERM or SIGKILL, or a number from 1 to 64"),
    (BASE + "    healthcheck:\n      test: [CURL, x]\n",
     "f.yaml:6:13: services.web.healthcheck.test: expected a string, or a list starting with "
     "CMD, CMD-SHELL or NONE"),
    (BASE + "    deploy:\n      restart_policy:\n        condition: always\n",
     'f.yaml:7:20: services.web.deploy.restart_policy.condition: invalid value "always" '
     "(expected any, on-failure, none)"),
    (BASE + "    deploy:\n      update_config:\n        max_failure_ratio: 2\n",
     "f.yaml:7:28: services.web.deploy.update_config.max_failure_ratio: expected a number "
     'between 0 and 1, got "2"'),
    (BASE + "    read_only: maybe\n",
     'f.yaml:5:16: services.web.read_only: expected true or false, got a string "maybe"'),
    (BASE + "    networks: [n]\nnetworks:\n  n:\n    driver: bridge\n",
     "f.yaml:8:13: networks.n.driver: unsupported driver 'bridge' (only 'overlay' is supported)"),
    (BASE + "networks:\n  unused:\n    ipam:\n      config:\n        - subnet: 10.0.0.1/24\n",
     "f.yaml:9:19: networks.unused.ipam.config[0].subnet: invalid subnet '10.0.0.1/24': "
     "10.0.0.1/24 has host bits set (expected e.g. 10.10.0.0/24)"),
    ("name: Bad Name\nservices:\n  web:\n    image: busybox\n",
     'f.yaml:1:7: name: invalid stack name "Bad Name": expected lowercase letters, digits, '
     "'-' or '_', starting with a letter or digit"),
    ("name: s\nservices:\n  web:\n    image: Busybox\n",
     "f.yaml:4:12: services.web.image: invalid image reference 'Busybox' (repository names are "
     "lowercase)"),
    (BASE + "    deploy:\n      resources:\n        limits: {memory: 64M}\n"
            "        reservations: {memory: 128M}\n",
     "f.yaml:7:9: services.web.deploy.resources: the reservation (128MiB) exceeds the limit "
     "(64MiB)"),
    ("name: s\nservices:\n  web:\n    image: a\n  web:\n    image: b\n",
     'f.yaml:5:3: duplicate key "web" (first at line 3)'),
    ("name: s\nservices: &a\n  web: *a\n", "f.yaml:2:11: invalid YAML: a recursive alias"),
    ("name: s\nservices:\n  ? [a]\n  : x\n", "f.yaml:3:5: mapping keys must be strings, not a list"),
    (BASE + "    deploy:\n      replica: 3\n",
     "f.yaml:6:16: services.web.deploy.replica: unknown key (expected mode, replicas, labels, "
     "placement, resources, restart_policy, update_config, rollback_config, endpoint_mode or "
     "x-schedule)"),
    (BASE + "    deploy:\n      mode: replicated-job\n      update_config: {parallelism: 2}\n",
     "f.yaml:7:22: services.web.deploy.update_config: a job (mode: replicated-job) has no "
     "update_config: an update re-runs it"),
    (BASE + "    deploy:\n      mode: global-job\n      x-schedule: '61 * * * *'\n",
     "f.yaml:7:19: services.web.deploy.x-schedule: '61 * * * *' is not a valid cron "
     "expression (minute hour day-of-month month day-of-week, e.g. '*/5 * * * *')"),
    (BASE + "    deploy:\n      x-schedule: '@hourly'\n",
     "f.yaml:6:19: services.web.deploy.x-schedule: applies to jobs only (mode: replicated-job "
     "or global-job)"),
    (BASE + "    ports: ['8080:80']\n    networks: [back]\nnetworks:\n  back: {internal: true}\n",
     "f.yaml:5:12: services.web.ports: cannot publish ports: network 's_back' is internal (no "
     "path out of the cluster); drop the published ports (--publish) or the network"),
    (BASE + "networks:\n  back: {internal: maybe}\n",
     'f.yaml:6:20: networks.back.internal: expected true or false, got a string "maybe"'),
    (BASE + "networks:\n  back: {attachable: 1}\n",
     'f.yaml:6:22: networks.back.attachable: expected true or false, got a number "1"'),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_input_is_one_line_naming_file_line_and_column(text: str, message: str) -> None:
    with pytest.raises(StackError) as caught:
        parse(text)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_one_bad_service_among_good_ones_fails_the_whole_file() -> None:
    text = BASE + "  good:\n    image: busybox\n  bad:\n    image: busybox\n    ports: [x]\n"
    with pytest.raises(StackError, match=r"^f\.yaml:9:13: services\.bad\.ports\[0\]"):
        parse(text)


# ---------------------------------------------------------------- no crash on anything


def assert_parses_or_one_line_error(text: str, **kwargs: object) -> None:
    """Anything but a StackError (a crash) fails the test; so does a multi-line one."""
    try:
        parse(text, **kwargs)
    except StackError as error:
        message = str(error)
    else:
        return
    assert "\n" not in message


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=True), st.text(max_size=12),
                     st.sampled_from(["80a", "8080:80", "1m30s", "512M", "${X}", "$", "${X:?}",
                                      "node.role==manager", "/abs", "./rel:/x", "a:b:c:d",
                                      "CMD", "global", "host", "-1", "99999999999999999999"]))
_keys = st.sampled_from([
    "image", "command", "entrypoint", "environment", "env_file", "ports", "networks", "volumes",
    "healthcheck", "test", "interval", "retries", "deploy", "mode", "replicas", "placement",
    "constraints", "preferences", "spread", "resources", "limits", "reservations", "cpus",
    "memory", "restart_policy", "update_config", "max_failure_ratio", "labels", "tmpfs",
    "target", "published", "protocol", "type", "source", "external", "ipam", "config", "subnet",
    "aliases", "build", "x-a", "name", "services", "driver", "read_only", "order",
])
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(_keys, children, max_size=5)),
    max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services=st.dictionaries(st.sampled_from(["web", "db", "x"]), _documents, max_size=3),
       top=st.dictionaries(_keys, _documents, max_size=3))
def test_random_documents_never_crash_the_parser(services: dict[str, object],
                                                  top: dict[str, object]) -> None:
    document = {"name": "s", **top, "services": services}
    text = yaml.safe_dump(document)
    assert_parses_or_one_line_error(text, read_text=lambda path: "A=1\n")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#$ \n\t0123456789.,?")),
               max_size=60))
def test_random_text_never_crashes_the_parser(text: str) -> None:
    assert_parses_or_one_line_error(text)


# ---------------------------------------------------------------- planning


def stored(stack: Stack, networks: dict[str, pb.Network]) -> list[pb.Service]:
    """The services as the controller would store them after a deploy."""
    return [pb.Service(id=f"id-{key}", spec=normalize_service_spec(service.spec, networks),
                       meta=pb.Meta(version=1))
            for key, service in stack.services.items()]


def created_networks(stack: Stack) -> dict[str, pb.Network]:
    return {f"net-{key}": pb.Network(id=f"net-{key}", spec=normalize_network_spec(n.spec))
            for key, n in stack.networks.items() if n.spec is not None}


def test_plan_creates_everything_first_then_nothing() -> None:
    stack = parse(FULL.replace("  shared:\n    external: true\n", ""))
    plan = plan_stack(stack, [], [])
    assert [(s.name, s.action) for s in plan.networks] == [
        ("shop_back", Action.create), ("shop_default", Action.create),
        ("shop_front", Action.create)]
    assert [(s.name, s.action) for s in plan.services] == [
        ("shop_agent", Action.create), ("shop_web", Action.create)]
    lines = plan_lines(plan, dry_run=True, details=True)
    assert "service shop_web: would be created" in lines
    assert '    + task.container.image: "nginx:1.25"' in lines
    assert '    + task.networks[0].target: "shop_front"' in lines

    networks = created_networks(stack)
    again = plan_stack(stack, stored(stack, networks), list(networks.values()))
    steps: list[stack_cli.NetworkStep | stack_cli.ServiceStep] = [*again.networks,
                                                                  *again.services]
    assert {s.action for s in steps} == {Action.unchanged}
    assert not again.writes


def test_plan_updates_field_by_field_and_prunes() -> None:
    stack = parse(BASE + "  old:\n    image: busybox\n")
    networks = created_networks(stack)
    current = stored(stack, networks)
    edited = parse(BASE.replace("busybox", "busybox:1.37") + "    deploy: {replicas: 2}\n")
    plan = plan_stack(edited, current, list(networks.values()))
    (update,) = [s for s in plan.services if s.action is Action.update]
    assert [str(c) for c in update.changes] == [
        "~ replicated.replicas: 1 -> 2",
        '~ task.container.image: "busybox" -> "busybox:1.37"']
    assert plan.notes == ("service s_old is not in the file (kept; --prune removes it)",)
    pruned = plan_stack(edited, current, list(networks.values()), prune=True)
    assert [(s.name, s.action) for s in pruned.services] == [
        ("s_web", Action.update), ("s_old", Action.remove)]


def test_plan_refuses_what_it_cannot_do() -> None:
    stack = parse(BASE + "    networks: [ext]\nnetworks:\n  ext: {external: true}\n")
    with pytest.raises(PlanError, match="external network 'ext' not found"):
        plan_stack(stack, [], [])
    foreign = pb.Service(id="x", spec=pb.ServiceSpec(name="s_web"))
    ext = pb.Network(id="n1", spec=pb.NetworkSpec(name="ext"))
    with pytest.raises(PlanError, match="'s_web' already exists and is not part of stack 's'"):
        plan_stack(stack, [foreign], [ext])
    # An external network is only known at the controller: internal there, no ports.
    published = parse(BASE + "    networks: [ext]\n    ports: ['80:80']\n"
                             "networks:\n  ext: {external: true}\n")
    private = pb.Network(id="n1", spec=pb.NetworkSpec(name="ext", internal=True))
    with pytest.raises(PlanError, match=r"^f\.yaml:6:12: services\.web\.ports: cannot publish "
                                        "ports: network 'ext' is internal"):
        plan_stack(published, [], [private])
    globally = parse(BASE + "    deploy: {mode: global}\n")
    networks = created_networks(globally)
    current = stored(parse(BASE), networks)
    with pytest.raises(PlanError, match="cannot change between replicated and global"):
        plan_stack(globally, current, list(networks.values()))


def test_a_differing_network_is_left_with_a_note() -> None:
    stack = parse(BASE)
    network = pb.Network(id="n", spec=pb.NetworkSpec(
        name="s_default", driver="overlay", internal=True, labels={NAMESPACE_LABEL: "s"}))
    plan = plan_stack(stack, [], [network])
    (step,) = plan.networks
    assert step.action is Action.unchanged
    assert "cannot be changed in place" in step.note
    assert [str(c) for c in step.changes] == ["- internal: true"]


def test_unsatisfiable_constraints_warn_with_the_line() -> None:
    stack = parse(BASE + "    deploy:\n      placement:\n        constraints:\n"
                         "          - node.labels.gpu==yes\n          - node.role==worker\n")
    node = pb.Node(id="n1", spec=pb.NodeSpec(role=pb.NodeSpec.WORKER))
    assert unsatisfiable_constraints(stack, [node]) == [
        "warning: f.yaml:8:13: services.web.deploy.placement.constraints[0]: no node satisfies "
        "'node.labels.gpu==yes' now; the service's tasks will stay pending until one does"]


def test_stack_summaries() -> None:
    services = [pb.Service(spec=pb.ServiceSpec(name=n, labels={NAMESPACE_LABEL: s}))
                for n, s in (("a_x", "a"), ("b_y", "b"), ("a_z", "a"))]
    services.append(pb.Service(spec=pb.ServiceSpec(name="loose")))
    networks = [pb.Network(spec=pb.NetworkSpec(name="a_default", labels={NAMESPACE_LABEL: "a"}))]
    summaries = stack_cli.summarize(services, networks)
    assert [(s.name, s.services, s.networks) for s in summaries] == [
        ("a", ["a_x", "a_z"], ["a_default"]), ("b", ["b_y"], [])]


# ---------------------------------------------------------------- the commands, offline


@pytest.mark.parametrize("command", [["apply"], ["stack", "deploy"], ["stack", "ls"],
                                     ["stack", "ps"], ["stack", "services"], ["stack", "rm"]])
def test_every_stack_command_has_help_with_examples(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    assert "swarmctl " + " ".join(command) in result.output


def test_a_bad_file_is_refused_before_connecting(tmp_path: Path) -> None:
    file = tmp_path / "stack.yaml"
    file.write_text(BASE + "    ports: [x]\n")
    # Port 1 on 127.0.0.1: nothing listens, and nothing is tried before the file is valid.
    result = CliRunner().invoke(app, ["--controller", "127.0.0.1:1", "apply", "-f", str(file)])
    assert result.exit_code == 2
    assert result.stderr == (f'swarmctl: {file}:5:13: services.web.ports[0]: invalid port "x" '
                             "(expected a port from 1 to 65535, e.g. 8080:80)\n")
    missing = CliRunner().invoke(app, ["apply", "-f", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr
    assert "No such file or directory" in missing.stderr


def test_jobs_deploy_as_docker_stack_deploy_does() -> None:
    """deploy.mode replicated-job / global-job (refused before); replicas are the
    completions and, as docker's stack loader has it, the concurrency; a job's
    default restart condition is on-failure; x-schedule is the job's schedule."""
    batch = web("    deploy: {mode: replicated-job, replicas: 4}\n")
    assert batch.WhichOneof("mode") == "replicated_job"
    assert batch.replicated_job.total_completions == 4
    assert batch.replicated_job.max_concurrent == 4
    assert batch.task.restart.condition == pb.RestartPolicy.ON_FAILURE
    assert not batch.HasField("update")
    nightly = web("    deploy:\n      mode: global-job\n      x-schedule: '0 3 * * *'\n"
                  "      restart_policy: {condition: none}\n")
    assert nightly.WhichOneof("mode") == "global_job"
    assert nightly.schedule == "0 3 * * *"
    assert nightly.task.restart.condition == pb.RestartPolicy.NONE
