"""Runtime options in real runc containers (issue 13 item 2): capabilities,
sysctls, ulimits, the pids limit against a fork bomb, devices (a missing
one rejected with the reason), supplementary groups, resolv.conf and
/etc/hosts, a pseudo-terminal and the stop signal.

Needs root (runc, overlayfs, namespaces, cgroups); CI runs it as root. Run
it under the machine-wide lock: `flock /tmp/swarm-heavy.lock pytest ...`.
Every test's runtime has its own state dir, cgroup parent and netns prefix,
and the fixture removes everything it made, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from swarm.agent.runtime import ImageConfig, ImageInput, RejectError, RuncRuntime, RuncSettings
from swarm.agent.runtime import spec as runtime_spec
from swarm.api.v1 import objects_pb2 as pb
from tests.agent.containers import leftovers, require_containers, write_busybox_layer
from tests.agent.containers import teardown as _teardown

APPLETS = ("sh", "sleep", "cat", "echo", "id", "true", "ip", "head", "wc", "tty", "grep")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nwww:x:1000:1000:www:/home/www:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\nwww:x:1000:\n"


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_busybox_layer(tmp_path_factory.mktemp("runopts-layer"), APPLETS,
                               passwd=PASSWD, group=GROUP)


@pytest.fixture
def image(layer: Path) -> ImageInput:
    return ImageInput(layers=(layer,), config=ImageConfig(cmd=("sh",)))


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[RuncSettings]:
    require_containers()
    # Under /run and short: conmon's attach socket path must fit a sockaddr_un.
    state_dir = Path(tempfile.mkdtemp(prefix="swro-", dir="/run"))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch host.example\n"
                      "options edns0\n")
    yield RuncSettings(state_dir=state_dir, cgroup_parent=f"swro-{uuid.uuid4().hex[:8]}",
                       host_resolv_conf=resolv)
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
async def runtime(settings: RuncSettings) -> AsyncIterator[RuncRuntime]:
    try:
        yield RuncRuntime(settings)
    finally:
        extra = await _teardown(settings)
        assert not extra, f"remove() left things behind: {extra}"


def _task(script: str, **container: object) -> pb.Task:
    task = pb.Task(id=uuid.uuid4().hex[:25], service_id="svc")
    task.spec.container.CopyFrom(pb.ContainerSpec(command=["sh", "-c", script],
                                                  **container))  # type: ignore[arg-type]
    return task


def _messages(runtime: RuncRuntime, task_id: str) -> list[str]:
    """The text of conmon's CRI log lines ("<timestamp> stdout F <line>")."""
    lines = runtime.log_path(task_id).read_text().splitlines()
    return [fields[3].rstrip("\r") for fields in (line.split(" ", 3) for line in lines)
            if len(fields) == 4]


async def _run(runtime: RuncRuntime, task: pb.Task, image: ImageInput) -> tuple[int, list[str]]:
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    code = await asyncio.wait_for(runtime.wait(task.id), 20)
    return code, _messages(runtime, task.id)


async def _wait_for_log(runtime: RuncRuntime, task_id: str, text: str) -> None:
    deadline = time.monotonic() + 10
    while not (runtime.log_path(task_id).exists()
               and any(text in m for m in _messages(runtime, task_id))):
        assert time.monotonic() < deadline, f"{text!r} not logged"
        await asyncio.sleep(0.05)


ADD_ADDRESS = "ip addr add 10.99.0.1/32 dev lo && echo added || echo refused"


async def test_cap_add_net_admin_lets_a_task_add_an_address(runtime: RuncRuntime,
                                                            image: ImageInput) -> None:
    without = _task(ADD_ADDRESS)
    code, messages = await _run(runtime, without, image)
    assert code == 0
    assert "refused" in messages  # (stdout and stderr are two pipes: no order between them)
    assert any("Operation not permitted" in m for m in messages), messages
    with_cap = _task(ADD_ADDRESS + "; ip -4 addr show dev lo", cap_add=["CAP_NET_ADMIN"])
    code, messages = await _run(runtime, with_cap, image)
    assert code == 0
    assert "added" in messages
    assert any("10.99.0.1/32" in m for m in messages), messages
    config = json.loads((runtime.bundle_dir(with_cap.id) / "config.json").read_text())
    assert "CAP_NET_ADMIN" in config["process"]["capabilities"]["effective"]


async def test_cap_drop_all_leaves_none(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("grep Cap /proc/self/status", cap_drop=["ALL"], cap_add=["CAP_CHOWN"])
    code, messages = await _run(runtime, task, image)
    assert code == 0
    effective = next(m for m in messages if m.startswith("CapEff:"))
    assert int(effective.split()[1], 16) == 1  # CAP_CHOWN, number 0, alone


async def test_sysctl_and_ulimit_are_in_force(runtime: RuncRuntime, image: ImageInput) -> None:
    node_file = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    node_value = await asyncio.to_thread(node_file.read_text)
    task = _task("cat /proc/sys/net/ipv4/ip_unprivileged_port_start; ulimit -n; ulimit -Hn",
                 sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
                 ulimits=[pb.Ulimit(name="nofile", soft=1024, hard=2048)])
    code, messages = await _run(runtime, task, image)
    assert (code, messages) == (0, ["0", "1024", "2048"])
    # The node's own value is untouched (the sysctl is the task's namespace's).
    assert await asyncio.to_thread(node_file.read_text) == node_value


async def test_a_fork_bomb_under_limit_pids_leaves_the_node_and_other_tasks_healthy(
        runtime: RuncRuntime, image: ImageInput) -> None:
    neighbour = _task("echo up; sleep 1000")
    await runtime.prepare(neighbour, image)
    await runtime.start(neighbour.id)
    await _wait_for_log(runtime, neighbour.id, "up")
    # Each shell forks two more for ever; without the limit this takes the node.
    bomb = _task("echo bombing; b() { b | b & }; b; sleep 1000", pids_limit=64)
    bomb.spec.resources.limits.nano_cpus = 500_000_000  # and half a CPU, for the neighbours
    await runtime.prepare(bomb, image)
    pids = (runtime.settings.cgroup_root / "pids" / runtime.cgroups_path(bomb.id).lstrip("/"))
    assert (pids / "pids.max").read_text().strip() == "64"
    await runtime.start(bomb.id)
    await _wait_for_log(runtime, bomb.id, "bombing")
    def refused_forks() -> int:  # pids.events: "max N", forks refused at the limit
        return int((pids / "pids.events").read_text().split()[1])

    deadline = time.monotonic() + 15
    while refused_forks() == 0:
        assert time.monotonic() < deadline, (pids / "pids.current").read_text()
        await asyncio.sleep(0.1)
    for _ in range(10):  # it keeps trying, and never gets past the limit
        assert int((pids / "pids.current").read_text()) <= 64
        await asyncio.sleep(0.1)
    # The other task still runs and still starts processes; so does the node.
    assert await runtime.exec(neighbour.id, ["sh", "-c", "true"], timeout=10) == 0
    assert (await runtime.list())[neighbour.id].status == "running"
    started = time.monotonic()
    node = await asyncio.create_subprocess_exec("true")
    assert await asyncio.wait_for(node.wait(), 5) == 0
    assert time.monotonic() - started < 5
    # And the bomb goes away with its container.
    await runtime.remove(bomb.id)
    assert leftovers(runtime, bomb.id) == []


async def test_devices_are_given_and_a_missing_one_rejects_the_task(
        runtime: RuncRuntime, image: ImageInput) -> None:
    missing = _task("true", devices=[pb.DeviceMapping(path_on_host="/dev/no-such-device",
                                                      path_in_container="/dev/x")])
    with pytest.raises(RejectError) as error:
        await runtime.prepare(missing, image)
    assert str(error.value) == ("error gathering device information while adding custom device "
                                "'/dev/no-such-device': No such file or directory")
    assert leftovers(runtime, missing.id) == []
    # /dev/null and /dev/zero are runc's defaults anyway: loop-control is not.
    # (`true`, not `:`: a failed redirection of a special builtin ends the shell.)
    task = _task("echo hi > /dev/mynull && echo wrote; true < /dev/lc && echo readable; "
                 "true > /dev/lc || echo not-writable",
                 devices=[pb.DeviceMapping(path_on_host="/dev/null",
                                           path_in_container="/dev/mynull", permissions="rw"),
                          pb.DeviceMapping(path_on_host="/dev/loop-control",
                                           path_in_container="/dev/lc", permissions="r")])
    code, messages = await _run(runtime, task, image)
    assert code == 0
    assert {"wrote", "readable", "not-writable"} <= set(messages)
    assert any("Operation not permitted" in m for m in messages), messages
    without = _task("true > /dev/lc || echo denied",
                    devices=[pb.DeviceMapping(path_on_host="/dev/null",
                                              path_in_container="/dev/lc")])
    code, messages = await _run(runtime, without, image)
    assert (code, messages) == (0, [])  # /dev/lc is /dev/null there: nothing denied


async def test_group_add(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("id -G", user="www", groups=["staff", "4242"])
    assert await _run(runtime, task, image) == (0, ["1000 50 4242"])
    unknown = _task("id -G", groups=["nope"])
    with pytest.raises(RejectError, match="unable to find group nope"):
        await runtime.prepare(unknown, image)
    assert leftovers(runtime, unknown.id) == []


async def test_dns_and_extra_hosts_are_in_the_files(runtime: RuncRuntime,
                                                   image: ImageInput) -> None:
    task = _task("cat /etc/resolv.conf /etc/hosts",
                 dns_config=pb.DNSConfig(nameservers=["10.0.0.2"], search=["svc.example"],
                                         options=["ndots:2"]),
                 hosts=["10.0.0.5 db.internal", "10.0.0.6 cache"])
    code, messages = await _run(runtime, task, image)
    assert code == 0
    assert messages[:3] == ["search svc.example", "nameserver 10.0.0.2", "options ndots:2"]
    assert "10.0.0.5\tdb.internal" in messages
    assert "10.0.0.6\tcache" in messages
    assert "192.0.2.53" not in "\n".join(messages)  # the host's server is replaced


async def test_tty(runtime: RuncRuntime, image: ImageInput) -> None:
    code, messages = await _run(runtime, _task("tty", tty=True), image)
    assert (code, messages) == (0, ["/dev/pts/0"])
    code, messages = await _run(runtime, _task("tty"), image)
    assert (code, messages) == (1, ["not a tty"])


async def test_the_stop_signal_is_delivered(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("trap 'echo got-usr1; exit 0' USR1; echo ready; "
                 "while true; do sleep 0.05; done", stop_signal="SIGUSR1")
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    await _wait_for_log(runtime, task.id, "ready")
    # What the agent's stop (and its drain before stop) sends: the service's signal.
    signal = runtime_spec.stop_signal(task.spec.container, image.config)
    assert signal == "SIGUSR1"
    started = time.monotonic()
    await runtime.shutdown(task.id, signal, grace=10)
    assert time.monotonic() - started < 5
    assert await runtime.wait(task.id) == 0
    assert "got-usr1" in _messages(runtime, task.id)
