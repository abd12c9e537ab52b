"""Runtime options (issue 13 item 2) without a controller or a container:
the shared rules (swarm.api.runopts), the controller's validation of them,
swarmctl's create/update flags (cli/runopts.py) and the agent's OCI config
and files (agent/runtime/spec.py). Real containers: tests/agent/test_runopts.py."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from swarm.agent.runtime import RejectError, spec
from swarm.api import runopts
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError, normalize_service_spec
from swarm.cli import client, render
from swarm.cli.errors import BadFlag
from swarm.cli.main import app
from swarm.cli.service.options import ServiceOptions, ServiceUpdateOptions
from swarm.cli.service.spec import service_spec_from_options, updated_service_spec

# ---------------------------------------------------------------- the shared rules


def test_capability_names_are_the_kernels_in_any_spelling() -> None:
    assert len(runopts.CAPABILITIES) == 41  # 0..40, CAP_CHECKPOINT_RESTORE the last
    for text in ("net_admin", "NET_ADMIN", "CAP_NET_ADMIN", " cap_net_admin "):
        assert runopts.capability_name(text) == "CAP_NET_ADMIN"
    assert runopts.capability_name("all") == "ALL"
    with pytest.raises(ValueError, match="unknown capability 'NET_ADMINN'"):
        runopts.capability_name("NET_ADMINN")
    assert runopts.capability_problem("CAP_BPF") is None
    assert runopts.capability_problem("net_admin") == (
        "'net_admin' is not in canonical form (expected CAP_NET_ADMIN)")


def test_this_kernel_knows_every_capability_of_the_list() -> None:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    assert last + 1 >= len(runopts.CAPABILITIES)


DEFAULTS = spec.DEFAULT_CAPABILITIES


@pytest.mark.parametrize(("add", "drop", "expected"), [
    ([], [], list(DEFAULTS)),
    (["CAP_NET_ADMIN"], [], [*DEFAULTS, "CAP_NET_ADMIN"]),
    ([], ["CAP_NET_RAW"], [c for c in DEFAULTS if c != "CAP_NET_RAW"]),
    (["CAP_NET_RAW"], ["CAP_NET_RAW"], [*[c for c in DEFAULTS if c != "CAP_NET_RAW"],
                                        "CAP_NET_RAW"]),
    (["ALL"], [], list(runopts.CAPABILITIES)),
    (["ALL"], ["CAP_SYS_ADMIN"], [c for c in runopts.CAPABILITIES if c != "CAP_SYS_ADMIN"]),
    (["CAP_CHOWN"], ["ALL"], ["CAP_CHOWN"]),
    ([], ["ALL"], []),
])
def test_effective_capabilities_follow_dockers_rule(add: list[str], drop: list[str],
                                                    expected: list[str]) -> None:
    assert runopts.effective_capabilities(DEFAULTS, add, drop) == expected


capability = st.sampled_from([*runopts.CAPABILITIES, "ALL"])


@given(st.lists(capability, max_size=6), st.lists(capability, max_size=6))
def test_effective_capabilities_properties(add: list[str], drop: list[str]) -> None:
    caps = runopts.effective_capabilities(DEFAULTS, add, drop)
    assert len(caps) == len(set(caps))
    assert set(caps) <= set(runopts.CAPABILITIES)
    if "ALL" not in add:
        assert set(a for a in add if a != "ALL") <= set(caps)  # an add is always in
        if "ALL" not in drop:
            assert set(caps) <= set(DEFAULTS) | set(add)
    if "ALL" in drop and "ALL" not in add:
        assert set(caps) == set(add) - {"ALL"}


@pytest.mark.parametrize("name", ["net.ipv4.ip_unprivileged_port_start", "net.core.somaxconn",
                                  "kernel.shmmax", "kernel.sem", "fs.mqueue.msg_max",
                                  "net.ipv4.conf.eth0.forwarding"])
def test_namespaced_sysctls_are_accepted(name: str) -> None:
    assert runopts.parse_sysctl(f"{name}=1") == (name, "1")


@pytest.mark.parametrize("name", ["kernel.panic", "vm.swappiness", "kernel.hostname",
                                  "fs.file-max", "kernel.shmmaxx"])
def test_node_wide_sysctls_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"sysctl '{name}' is not namespaced"):
        runopts.parse_sysctl(f"{name}=1")


@given(st.text(max_size=40), st.text(max_size=10))
def test_sysctl_problem_never_crashes_and_allows_only_namespaced(name: str, value: str) -> None:
    if runopts.sysctl_problem(name, value) is None:
        assert name.startswith(("net.", "fs.mqueue.")) or name in runopts.IPC_SYSCTLS


@pytest.mark.parametrize(("text", "expected"), [
    ("nofile=1024:2048", ("nofile", 1024, 2048)),
    ("nofile=1024", ("nofile", 1024, 1024)),
    ("NPROC=10:unlimited", ("nproc", 10, -1)),
    ("core=-1", ("core", -1, -1)),
])
def test_ulimits_parse(text: str, expected: tuple[str, int, int]) -> None:
    assert runopts.parse_ulimit(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("nofile", "expected NAME=SOFT[:HARD]"),
    ("nofile=", "expected NAME=SOFT[:HARD]"),
    ("nofile=a:b", "with whole numbers"),
    ("nofile=2048:1024", "must not be above the hard limit"),
    ("nofiles=1", "unknown ulimit 'nofiles'"),
    ("nofile=-2", "must be -1 \\(unlimited\\) or more"),
    ("nofile=1:2:3", "with whole numbers"),
])
def test_malformed_ulimits_are_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        runopts.parse_ulimit(text)


@given(st.sampled_from(sorted(runopts.ULIMITS)), st.integers(-1, 2**40), st.integers(-1, 2**40))
def test_ulimit_round_trip(name: str, soft: int, hard: int) -> None:
    text = runopts.format_ulimit(name, soft, hard)
    if runopts.ulimit_problem(name, soft, hard) is None:
        assert runopts.parse_ulimit(text) == (name, soft, hard)
    else:
        with pytest.raises(ValueError, match="ulimit"):
            runopts.parse_ulimit(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("/dev/fuse", ("/dev/fuse", "/dev/fuse", "rwm")),
    ("/dev/sda:/dev/xvda", ("/dev/sda", "/dev/xvda", "rwm")),
    ("/dev/sda:/dev/xvda:r", ("/dev/sda", "/dev/xvda", "r")),
    ("/dev/sda:rw", ("/dev/sda", "/dev/sda", "rw")),
])
def test_devices_parse(text: str, expected: tuple[str, str, str]) -> None:
    assert runopts.parse_device(text) == expected


@pytest.mark.parametrize("text", ["dev/fuse", "/dev/a:b", "/dev/a:/dev/b:x", "/dev/a:/b:rr",
                                  "/dev/../etc/passwd", "/a:/b:r:w"])
def test_bad_devices_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="device"):
        runopts.parse_device(text)


def test_extra_hosts() -> None:
    assert runopts.parse_extra_host("db.internal:10.0.0.5") == "10.0.0.5 db.internal"
    assert runopts.parse_extra_host("db=10.0.0.5") == "10.0.0.5 db"
    assert runopts.parse_extra_host("v6:::1") == "::1 v6"
    assert runopts.parse_extra_host("v6=[fe80::1]") == "fe80::1 v6"
    for bad in ("db", "db:", ":10.0.0.1", "db:host", "bad name:10.0.0.1"):
        with pytest.raises(ValueError, match="invalid"):
            runopts.parse_extra_host(bad)
    assert runopts.host_entry_problem("10.0.0.5 db alias") is None
    assert runopts.host_entry_problem("10.0.0.5") is not None


# ---------------------------------------------------------------- controller validation


def _service(**container: Any) -> pb.ServiceSpec:
    return pb.ServiceSpec(name="web", task=pb.TaskSpec(container=pb.ContainerSpec(
        image="busybox", **container)))


@pytest.mark.parametrize(("container", "field", "why"), [
    ({"cap_add": ["CAP_NET_ADMINN"]}, "cap_add[0]", "unknown capability"),
    ({"cap_drop": ["net_raw"]}, "cap_drop[0]", "not in canonical form"),
    ({"sysctls": {"kernel.panic": "1"}}, "sysctls['kernel.panic']", "is not namespaced"),
    ({"sysctls": {"net.core.somaxconn": ""}}, "sysctls['net.core.somaxconn']", "needs a value"),
    ({"ulimits": [pb.Ulimit(name="nofile", soft=9, hard=1)]}, "ulimits[0]", "soft limit"),
    ({"ulimits": [pb.Ulimit(name="nofile", soft=1, hard=1)] * 2}, "ulimits[1]",
     "already set by ulimits[0]"),
    ({"pids_limit": -1}, "pids_limit", "must not be negative (got -1)"),
    ({"devices": [pb.DeviceMapping(path_on_host="fuse")]}, "devices[0]", "must be absolute"),
    ({"groups": ["a b"]}, "groups[0]", "invalid group"),
    ({"dns_config": pb.DNSConfig(nameservers=["x"])}, "dns_config.nameservers[0]",
     "invalid DNS server"),
    ({"dns_config": pb.DNSConfig(nameservers=["10.0.0.1"] * 4)}, "dns_config.nameservers",
     "at most 3"),
    ({"dns_config": pb.DNSConfig(options=["a b"])}, "dns_config.options[0]", "invalid DNS"),
    ({"hosts": ["nope db"]}, "hosts[0]", "not an IP address"),
])
def test_the_controller_refuses_bad_runtime_options_by_field(
        container: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(ValidationError) as error:
        normalize_service_spec(_service(**container), {})
    assert error.value.field == f"spec.task.container.{field}"
    assert why in error.value.problem


def test_the_controller_accepts_good_runtime_options_unchanged() -> None:
    spec_in = _service(cap_add=["CAP_NET_ADMIN", "ALL"], cap_drop=["CAP_NET_RAW"],
                       sysctls={"net.core.somaxconn": "1024"},
                       ulimits=[pb.Ulimit(name="nofile", soft=1024, hard=2048)],
                       pids_limit=64, devices=[pb.DeviceMapping(path_on_host="/dev/fuse")],
                       groups=["staff", "50"],
                       dns_config=pb.DNSConfig(nameservers=["10.0.0.2"], search=["x.org"],
                                               options=["ndots:2"]),
                       hosts=["10.0.0.5 db"], tty=True)
    out = normalize_service_spec(spec_in, {})
    out.task.container.ClearField("stop_grace_period")
    assert out.task.container == spec_in.task.container


# ---------------------------------------------------------------- swarmctl flags


def test_create_flags_fill_the_container_spec(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\nA=file\nB=file\n\nFROM_SHELL\nUNSET_HERE\n")
    options = ServiceOptions(
        name="web", image="busybox", cap_add=["net_admin"], cap_drop=["NET_RAW"],
        sysctls=["net.ipv4.ip_unprivileged_port_start=0"], ulimits=["nofile=1024:2048"],
        limit_pids="64", devices=["/dev/fuse"], group_add=["staff", "4242"],
        dns=["10.0.0.2"], dns_search=["svc.example"], dns_options=["ndots:2"],
        hosts=["db.internal:10.0.0.5"], env_files=[str(env_file)], env=["B=flag"], tty=True,
        stop_signal="SIGUSR1")
    monkeypatch.setenv("FROM_SHELL", "shell")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    container = service_spec_from_options(options).task.container
    assert list(container.cap_add) == ["CAP_NET_ADMIN"]
    assert list(container.cap_drop) == ["CAP_NET_RAW"]
    assert dict(container.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert [(u.name, u.soft, u.hard) for u in container.ulimits] == [("nofile", 1024, 2048)]
    assert container.pids_limit == 64
    assert [(d.path_on_host, d.path_in_container, d.permissions)
            for d in container.devices] == [("/dev/fuse", "/dev/fuse", "rwm")]
    assert list(container.groups) == ["staff", "4242"]
    assert container.dns_config == pb.DNSConfig(nameservers=["10.0.0.2"],
                                                search=["svc.example"], options=["ndots:2"])
    assert list(container.hosts) == ["10.0.0.5 db.internal"]
    assert list(container.env) == ["A=file", "FROM_SHELL=shell", "B=flag"]
    assert container.tty
    assert container.stop_signal == "SIGUSR1"


def test_update_add_and_rm_forms() -> None:
    current = service_spec_from_options(ServiceOptions(
        name="web", image="busybox", cap_add=["NET_ADMIN"], cap_drop=["NET_RAW"],
        sysctls=["net.core.somaxconn=10", "kernel.shmmax=1"], ulimits=["nofile=10", "nproc=5"],
        devices=["/dev/fuse", "/dev/null:/dev/n"], group_add=["staff"], dns=["10.0.0.2"],
        dns_search=["a.org"], dns_options=["ndots:2"],
        hosts=["db:10.0.0.5", "db:10.0.0.6", "cache:10.0.0.7"], limit_pids="64"))
    spec_out = updated_service_spec(current, ServiceUpdateOptions(
        cap_add=["NET_RAW"], cap_drop=["NET_ADMIN", "SYS_CHROOT"],
        sysctl_add=["net.core.somaxconn=20"], sysctl_rm=["kernel.shmmax"],
        ulimit_add=["nofile=30:40"], ulimit_rm=["nproc"],
        device_add=["/dev/zero:/dev/z:r"], device_rm=["/dev/n"],
        group_add=["4242"], group_rm=["staff"], dns_add=["10.0.0.3"], dns_rm=["10.0.0.2"],
        dns_search_add=["b.org"], dns_search_rm=["a.org"], dns_option_add=["edns0"],
        dns_option_rm=["ndots:2"], host_add=["new:10.0.0.8"], host_rm=["db:10.0.0.5", "cache"],
        limit_pids="100", tty=True))
    container = spec_out.task.container
    assert list(container.cap_add) == ["CAP_NET_RAW"]
    assert list(container.cap_drop) == ["CAP_NET_ADMIN", "CAP_SYS_CHROOT"]
    assert dict(container.sysctls) == {"net.core.somaxconn": "20"}
    assert [(u.name, u.soft, u.hard) for u in container.ulimits] == [("nofile", 30, 40)]
    assert [d.path_in_container for d in container.devices] == ["/dev/fuse", "/dev/z"]
    assert list(container.groups) == ["4242"]
    assert container.dns_config == pb.DNSConfig(nameservers=["10.0.0.3"], search=["b.org"],
                                                options=["edns0"])
    assert list(container.hosts) == ["10.0.0.6 db", "10.0.0.8 new"]
    assert (container.pids_limit, container.tty) == (100, True)
    # No flag, no change.
    assert updated_service_spec(current, ServiceUpdateOptions()).task.container == \
        current.task.container


@pytest.fixture
def no_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(target: str, *, timeout: float = 0) -> client.Controller:
        raise AssertionError(f"connected to {target} before the input was checked")

    monkeypatch.setattr(client, "connect", refuse)


BAD_FLAGS = [
    (("--cap-add", "NET_ADMINN"), "--cap-add: unknown capability 'NET_ADMINN'"),
    (("--cap-drop", "bogus"), "--cap-drop: unknown capability 'bogus'"),
    (("--cap-add", "NET_ADMIN", "--cap-drop", "net_admin"),
     "--cap-add: CAP_NET_ADMIN is both added and dropped"),
    (("--sysctl", "kernel.panic=1"), "--sysctl: sysctl 'kernel.panic' is not namespaced"),
    (("--sysctl", "net.core.somaxconn"), "--sysctl: invalid sysctl 'net.core.somaxconn'"),
    (("--ulimit", "nofile=lots"), "--ulimit: invalid ulimit 'nofile=lots'"),
    (("--ulimit", "nofile=2048:1024"), "--ulimit: ulimit nofile: the soft limit (2048)"),
    (("--limit-pids", "0"), "--limit-pids: invalid number '0': must be at least 1"),
    (("--limit-pids", "-5"), "--limit-pids: invalid number '-5': must be at least 1"),
    (("--limit-pids", "many"), "--limit-pids: invalid number 'many'"),
    (("--device", "fuse"), "--device: the device path on the host must be absolute"),
    (("--group-add", "a b"), "--group-add: invalid group 'a b'"),
    (("--dns", "resolver"), "--dns: invalid DNS server 'resolver'"),
    (("--dns-search", "a b"), "--dns-search: invalid DNS search domain"),
    (("--dns-option", "nd ots"), "--dns-option: invalid DNS option"),
    (("--host", "db"), "--host: invalid extra host 'db'"),
    (("--env-file", "/nonexistent/app.env"),
     "--env-file: cannot read '/nonexistent/app.env': No such file or directory"),
    (("--stop-signal", "SIGNOPE"), "--stop-signal: unknown signal 'SIGNOPE'"),
]


@pytest.mark.usefixtures("no_controller")
@pytest.mark.parametrize(("args", "message"), BAD_FLAGS)
def test_create_bad_runtime_option_is_one_line_exit_2(args: tuple[str, ...],
                                                      message: str) -> None:
    result = CliRunner().invoke(app, ["service", "create", "web", "--image", "busybox", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"swarmctl: {message}"), lines[0]


@pytest.mark.usefixtures("no_controller")
@pytest.mark.parametrize(("args", "message"), [
    (("--sysctl-add", "vm.swappiness=1"), "--sysctl-add: sysctl 'vm.swappiness' is not"),
    (("--ulimit-add", "nofile=x"), "--ulimit-add: invalid ulimit"),
    (("--limit-pids", "0"), "--limit-pids: invalid number '0'"),
    (("--cap-add", "CAP_NOPE"), "--cap-add: unknown capability 'CAP_NOPE'"),
    (("--device-add", "/dev/a:/b:x"), "--device-add: invalid device permissions 'x'"),
    (("--dns-add", "x"), "--dns-add: invalid DNS server"),
    (("--host-add", "db:nope"), "--host-add: invalid extra host 'db:nope'"),
])
def test_update_bad_runtime_option_is_one_line_exit_2(args: tuple[str, ...],
                                                      message: str) -> None:
    result = CliRunner().invoke(app, ["service", "update", "web", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"swarmctl: {message}"), result.stderr


def test_flags_are_declared_once_for_both_commands() -> None:
    for command, flags in (("create", ("--cap-add", "--cap-drop", "--sysctl", "--ulimit",
                                       "--limit-pids", "--device", "--group-add", "--dns",
                                       "--dns-search", "--dns-option", "--host", "--env-file",
                                       "--tty", "--stop-signal")),
                           ("update", ("--cap-add", "--cap-drop", "--sysctl-add",
                                       "--sysctl-rm", "--ulimit-add", "--ulimit-rm",
                                       "--limit-pids", "--device-add", "--device-rm",
                                       "--group-add", "--group-rm", "--dns-add", "--dns-rm",
                                       "--dns-search-add", "--dns-search-rm",
                                       "--dns-option-add", "--dns-option-rm", "--host-add",
                                       "--host-rm", "--tty", "--stop-signal"))):
        result = CliRunner().invoke(app, ["service", command, "--help"],
                                    env={"COLUMNS": "200"})
        for flag in flags:
            assert flag in result.output, (command, flag)
    with pytest.raises(BadFlag):
        service_spec_from_options(ServiceOptions(name="w", image="b", limit_pids="0"))


# ---------------------------------------------------------------- the agent's config and files


def _plan(**overrides: Any) -> spec.ContainerPlan:
    fields: dict[str, Any] = dict(
        hostname="web1", process=spec.ProcessPlan(("/bin/sh",), ("PATH=/bin",), "/", ""),
        user=spec.User(0, 0), rootfs="/b/rootfs", read_only=False, mounts=(), files=(),
        netns_path="/run/netns/n1", cgroups_path="/swarm/t1",
        resources={"devices": [{"allow": False, "access": "rwm"}], "pids": {"limit": 64}},
        nofile_limit=1_048_576)
    fields.update(overrides)
    return spec.ContainerPlan(**fields)


def test_config_carries_the_runtime_options() -> None:
    container = pb.ContainerSpec(cap_add=["CAP_NET_ADMIN"], cap_drop=["CAP_NET_RAW"])
    device = spec.plan_device(pb.DeviceMapping(path_on_host="/dev/fuse",
                                               path_in_container="/dev/f", permissions="rw"),
                              stat.S_IFCHR | 0o600, (10 << 8) | 229, 0, 0)
    config = spec.build_config(_plan(
        capabilities=tuple(spec.capabilities_for(container)),
        sysctls=(("net.core.somaxconn", "1024"),),
        ulimits=(pb.Ulimit(name="nofile", soft=1024, hard=2048),
                 pb.Ulimit(name="core", soft=-1, hard=-1)),
        devices=(device,), terminal=True))
    process = config["process"]
    assert process["terminal"] is True
    caps = process["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in caps
    assert "CAP_NET_RAW" not in caps
    assert process["capabilities"]["effective"] == caps  # root
    assert process["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024},  # the task's, not the node's
        {"type": "RLIMIT_CORE", "hard": 2**64 - 1, "soft": 2**64 - 1}]
    linux = config["linux"]
    assert linux["sysctl"] == {"net.core.somaxconn": "1024"}
    assert linux["devices"] == [{"path": "/dev/f", "type": "c", "major": 10, "minor": 229,
                                 "fileMode": 0o600, "uid": 0, "gid": 0}]
    assert linux["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"}]
    assert linux["resources"]["pids"] == {"limit": 64}
    bare = spec.build_config(_plan())
    assert "sysctl" not in bare["linux"]
    assert "devices" not in bare["linux"]
    assert bare["process"]["terminal"] is False


def test_a_device_that_is_not_one_is_rejected() -> None:
    with pytest.raises(RejectError, match="not a device node"):
        spec.plan_device(pb.DeviceMapping(path_on_host="/etc/passwd"), stat.S_IFREG | 0o644,
                         0, 0, 0)


def test_groups_are_resolved_in_the_image() -> None:
    user = spec.User(1000, 1000, (50,))
    group = "staff:x:50:\naudio:x:29:\n"
    assert spec.resolve_groups(user, ["audio", "4242", "staff"], group).additional_gids == (
        50, 29, 4242)
    with pytest.raises(RejectError, match="unable to find group video"):
        spec.resolve_groups(user, ["video"], group)


HOST = ("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch host.example\n"
        "options ndots:5 edns0\n")


def test_resolv_conf_takes_the_tasks_dns_config() -> None:
    dns = pb.DNSConfig(nameservers=["10.0.0.2"], search=["svc.example"], options=["ndots:2"])
    assert spec.resolv_conf(HOST, dns=dns) == (
        "search svc.example\nnameserver 10.0.0.2\noptions ndots:2\n")
    # Each part on its own: only the servers given, the host's search and options stay.
    assert spec.resolv_conf(HOST, dns=pb.DNSConfig(nameservers=["10.0.0.2"])) == (
        "search host.example\noptions ndots:5 edns0\nnameserver 10.0.0.2\n")


def test_with_the_embedded_dns_127_0_0_11_stays_the_nameserver() -> None:
    dns = pb.DNSConfig(nameservers=["10.0.0.2"], search=["svc.example"], options=["timeout:1"])
    assert spec.resolv_conf(HOST, embedded_dns=True, dns=dns) == (
        "search svc.example\nnameserver 127.0.0.11\noptions timeout:1 ndots:0\n")
    # A task's ndots wins over ndots:0.
    assert spec.resolv_conf(HOST, embedded_dns=True, dns=pb.DNSConfig(options=["ndots:3"])) == (
        "search host.example\nnameserver 127.0.0.11\noptions ndots:3\n")
    # Without a DNS config: as before.
    assert spec.resolv_conf(HOST, embedded_dns=True) == (
        "search host.example\nnameserver 127.0.0.11\noptions edns0 ndots:0\n")


def test_extra_hosts_are_appended_to_etc_hosts() -> None:
    text = spec.hosts_file("web1", extra=["10.0.0.5 db.internal", "::1  v6 six"])
    assert text.endswith("127.0.0.1\tweb1\n10.0.0.5\tdb.internal\n::1\tv6\tsix\n")


def test_inspect_table_shows_the_runtime_options() -> None:
    service = pb.Service(id="s1", spec=service_spec_from_options(ServiceOptions(
        name="web", image="busybox", cap_add=["NET_ADMIN"], sysctls=["net.core.somaxconn=9"],
        ulimits=["nofile=1024:2048"], limit_pids="64", devices=["/dev/fuse"],
        dns=["10.0.0.2"], hosts=["db:10.0.0.5"], tty=True)))
    text = render.service_details(service)
    for line in ("Capabilities added:", "CAP_NET_ADMIN", "Sysctls:", "net.core.somaxconn=9",
                 "Ulimits:", "nofile=1024:2048", "Pids limit:", "64", "Devices:",
                 "/dev/fuse:/dev/fuse:rwm", "DNS servers:", "10.0.0.2", "Hosts:",
                 "10.0.0.5 db", "TTY:"):
        assert line in text, (line, text)
    assert "Capabilities dropped" not in text  # only what is set
