"""Compose runtime options (cap_add, cap_drop, sysctls, ulimits, pids, devices,
group_add, dns*, extra_hosts, tty, env_file, stop_signal) -> the ContainerSpec,
and their bad values as one-line errors with their line (cli/compose/runopts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import normalize_service_spec
from swarm.cli.compose import StackError, parse_stack

BASE = "name: s\nservices:\n  web:\n    image: busybox\n"

RUNTIME = BASE + """\
    cap_add: [net_admin, SYS_PTRACE]
    cap_drop: [CAP_NET_RAW]
    sysctls:
      net.core.somaxconn: 1024
      net.ipv4.ip_unprivileged_port_start: 0
    ulimits:
      nproc: 65535
      nofile: {soft: 1024, hard: 2048}
    devices:
      - /dev/fuse
      - /dev/null:/dev/mynull:rw
      - {source: /dev/zero, target: /dev/z, permissions: r}
    group_add: [staff, 4242]
    dns: 10.0.0.2
    dns_search: [example.org]
    dns_opt: [ndots:2, edns0]
    extra_hosts:
      - db.internal:10.0.0.5
      - "v6.internal=::1"
    tty: true
    stop_signal: SIGUSR1
    deploy:
      resources:
        limits: {pids: 64, memory: 64M}
"""


def parse(text: str, **kwargs: object) -> pb.ServiceSpec:
    options: dict[str, object] = {"filename": "f.yaml", "environ": {}}
    options.update(kwargs)
    stack = parse_stack(text, **options)  # type: ignore[arg-type]
    assert stack.warnings == []
    return stack.services["web"].spec


def test_every_runtime_key_reaches_the_container_spec() -> None:
    spec = parse(RUNTIME)
    container = spec.task.container
    assert list(container.cap_add) == ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
    assert list(container.cap_drop) == ["CAP_NET_RAW"]
    assert dict(container.sysctls) == {"net.core.somaxconn": "1024",
                                       "net.ipv4.ip_unprivileged_port_start": "0"}
    assert [(u.name, u.soft, u.hard) for u in container.ulimits] == [
        ("nproc", 65535, 65535), ("nofile", 1024, 2048)]
    assert [(d.path_on_host, d.path_in_container, d.permissions) for d in container.devices] == [
        ("/dev/fuse", "/dev/fuse", "rwm"), ("/dev/null", "/dev/mynull", "rw"),
        ("/dev/zero", "/dev/z", "r")]
    assert list(container.groups) == ["staff", "4242"]
    assert list(container.dns_config.nameservers) == ["10.0.0.2"]
    assert list(container.dns_config.search) == ["example.org"]
    assert list(container.dns_config.options) == ["ndots:2", "edns0"]
    assert list(container.hosts) == ["10.0.0.5 db.internal", "::1 v6.internal"]
    assert container.tty
    assert container.stop_signal == "SIGUSR1"
    assert container.pids_limit == 64
    assert spec.task.resources.limits.memory_bytes == 64 * 1024 * 1024
    # What the loader makes, the controller accepts as it is.
    del spec.task.networks[:]
    normalized = normalize_service_spec(spec, {}).task.container
    normalized.ClearField("stop_grace_period")  # the controller's default, filled in
    assert normalized == container


def test_the_list_and_map_forms(tmp_path: Path) -> None:
    container = parse(BASE + "    sysctls: [net.core.somaxconn=512]\n"
                             "    extra_hosts: {db: 10.0.0.7}\n    pids_limit: 100\n"
                             "    dns: [10.0.0.2, 10.0.0.3]\n    cap_add: ALL\n"
                             "    cap_drop: [net_raw]\n").task.container
    assert dict(container.sysctls) == {"net.core.somaxconn": "512"}
    assert list(container.hosts) == ["10.0.0.7 db"]
    assert container.pids_limit == 100
    assert list(container.dns_config.nameservers) == ["10.0.0.2", "10.0.0.3"]
    assert (list(container.cap_add), list(container.cap_drop)) == (["ALL"], ["CAP_NET_RAW"])


def test_env_file_then_environment(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("# comment\nA=from-file\nB=from-file\n")
    stack = parse_stack(BASE + "    env_file: app.env\n    environment: {B: inline}\n",
                        filename="f.yaml", environ={}, base_dir=tmp_path)
    assert list(stack.services["web"].spec.task.container.env) == ["A=from-file", "B=inline"]


BAD = [
    ("    cap_add: [NET_ADMINN]\n",
     "f.yaml:5:15: services.web.cap_add[0]: unknown capability 'NET_ADMINN' (expected a Linux "
     "capability such as NET_ADMIN or SYS_PTRACE, or ALL)"),
    ("    cap_add: [NET_ADMIN]\n    cap_drop: [net_admin]\n",
     'f.yaml:6:15: services.web.cap_drop: "CAP_NET_ADMIN" is also in cap_add'),
    ("    sysctls: {kernel.panic: 1}\n",
     "f.yaml:5:29: services.web.sysctls.kernel.panic: sysctl 'kernel.panic' is not namespaced: "
     "it would change the whole node (allowed: net.*, fs.mqueue.*, kernel.msgmax, "
     "kernel.msgmnb, kernel.msgmni, kernel.sem, kernel.shmall, kernel.shmmax, kernel.shmmni, "
     "kernel.shm_rmid_forced)"),
    ("    sysctls: [vm.swappiness=1]\n",
     "f.yaml:5:15: services.web.sysctls[0]: sysctl 'vm.swappiness' is not namespaced: it would "
     "change the whole node (allowed: net.*, fs.mqueue.*, kernel.msgmax, kernel.msgmnb, "
     "kernel.msgmni, kernel.sem, kernel.shmall, kernel.shmmax, kernel.shmmni, "
     "kernel.shm_rmid_forced)"),
    ("    ulimits: {nofile: {soft: 4096, hard: 1024}}\n",
     "f.yaml:5:23: services.web.ulimits.nofile: ulimit nofile: the soft limit (4096) must not "
     "be above the hard limit (1024)"),
    ("    ulimits: {nofiles: 10}\n",
     "f.yaml:5:24: services.web.ulimits.nofiles: unknown ulimit 'nofiles' (expected one of as, "
     "core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, "
     "rttime, sigpending, stack)"),
    ("    ulimits: {nofile: lots}\n",
     'f.yaml:5:23: services.web.ulimits.nofile: expected a whole number, got a string "lots"'),
    ("    deploy: {resources: {limits: {pids: 0}}}\n",
     "f.yaml:5:41: services.web.deploy.resources.limits.pids: must be at least 1 (got 0)"),
    ("    pids_limit: -5\n",
     "f.yaml:5:17: services.web.pids_limit: must be at least 1 (got -5)"),
    ("    devices: [dev/fuse]\n",
     "f.yaml:5:15: services.web.devices[0]: the device path on the host must be absolute "
     "(got 'dev/fuse')"),
    ("    devices: ['/dev/fuse:/dev/fuse:rwx']\n",
     "f.yaml:5:15: services.web.devices[0]: invalid device permissions 'rwx' (expected some "
     "of r, w and m, e.g. rwm)"),
    ("    dns: [not-an-ip]\n",
     "f.yaml:5:11: services.web.dns[0]: invalid DNS server 'not-an-ip' (expected an IP "
     "address, e.g. 10.0.0.2)"),
    ("    dns_opt: ['bad option']\n",
     "f.yaml:5:15: services.web.dns_opt[0]: invalid DNS option 'bad option' (expected a "
     "resolv.conf option such as ndots:2, timeout:1, edns0 or rotate)"),
    ("    extra_hosts: ['db:nope']\n",
     "f.yaml:5:19: services.web.extra_hosts[0]: invalid extra host 'db:nope': 'nope' is not "
     "an IP address (expected HOST:IP)"),
    ("    group_add: ['bad group']\n",
     "f.yaml:5:17: services.web.group_add[0]: invalid group 'bad group' (expected a group name "
     "or a numeric GID)"),
    ("    tty: sometimes\n",
     'f.yaml:5:10: services.web.tty: expected true or false, got a string "sometimes"'),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_runtime_options_are_one_line_with_their_line(text: str, message: str) -> None:
    with pytest.raises(StackError) as caught:
        parse(BASE + text)
    assert str(caught.value) == message
