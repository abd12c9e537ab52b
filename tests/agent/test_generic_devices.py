"""Generic resources in real runc containers: a task given GPU units gets
DOCKER_RESOURCE_GPU (over any value of the service's own) and exactly the
device nodes of its units, under /dev in the container, let through its
device cgroup; a unit it was not given is not there. The "GPUs" are fake
device nodes made by mknod in a temporary directory (with /dev/null's and
/dev/zero's numbers, so that they can be read and written), found the way the
agent finds /dev/nvidiaN (agent/node_resources.py).

Needs root; run it under the machine-wide lock: `flock /tmp/swarm-heavy.lock pytest ...`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from swarm.agent import node_resources
from swarm.agent.runtime import ImageConfig, ImageInput, RuncRuntime, RuncSettings
from swarm.api import generic_resources as gres
from swarm.api.v1 import objects_pb2 as pb
from tests.agent.containers import require_containers, write_busybox_layer
from tests.agent.containers import teardown as _teardown

APPLETS = ("sh", "echo", "head", "wc", "test", "ls")


@pytest.fixture
def fake_gpus(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "dev"
    directory.mkdir()
    made = []
    for name, (major, minor) in (("nvidia0", (1, 3)), ("nvidia1", (1, 5)),
                                 ("nvidiactl", (1, 3))):
        os.mknod(directory / name, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        made.append(directory / name)
    try:
        yield directory
    finally:
        for path in made:
            path.unlink(missing_ok=True)


@pytest.fixture
def image(tmp_path: Path) -> ImageInput:
    layer = write_busybox_layer(tmp_path / "layer", APPLETS)
    return ImageInput(layers=(layer,), config=ImageConfig(cmd=("sh",)))


@pytest.fixture
async def runtime(fake_gpus: Path) -> AsyncIterator[RuncRuntime]:
    require_containers()
    state_dir = Path(tempfile.mkdtemp(prefix="swgr-", dir="/run"))
    found = node_resources.discover([], fake_gpus)
    assert gres.text(found.advertised) == "gpu=nvidia0,nvidia1"
    settings = RuncSettings(state_dir=state_dir, cgroup_parent=f"swgr-{uuid.uuid4().hex[:8]}",
                            resource_devices=found.devices)
    try:
        yield RuncRuntime(settings)
    finally:
        extra = await _teardown(settings)
        shutil.rmtree(state_dir, ignore_errors=True)
        assert not extra, f"remove() left things behind: {extra}"


async def test_a_task_gets_its_units_devices_and_environment(
        runtime: RuncRuntime, image: ImageInput) -> None:
    task = pb.Task(id=uuid.uuid4().hex[:25], service_id="svc")
    task.spec.container.command[:] = [
        "sh", "-c", "echo gpu=$DOCKER_RESOURCE_GPU; head -c 3 /dev/nvidia1 | wc -c; "
                    "echo x > /dev/nvidiactl && echo ctl-writable; "
                    "test -e /dev/nvidia0 || echo no-nvidia0"]
    task.spec.container.env.append("DOCKER_RESOURCE_GPU=not-this")
    task.assigned_generic_resources.append(gres.named("gpu", "nvidia1"))
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    assert await asyncio.wait_for(runtime.wait(task.id), 20) == 0
    lines = runtime.log_path(task.id).read_text().splitlines()
    messages = [line.split(" ", 3)[3] for line in lines if line.count(" ") >= 3]
    assert messages == ["gpu=nvidia1", "3", "ctl-writable", "no-nvidia0"]
    await runtime.remove(task.id)
