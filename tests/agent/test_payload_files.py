"""A task's secrets and configs on a real node: the worker asks for them
(here a stand-in for the session's TaskPayloads call), the runtime puts them
in a tmpfs of the task's, bind-mounted read-only into a runc container with
the given owner and mode; they leave no byte on the state directory's own
file system nor in a log line, and the tmpfs goes when the task ends --
also when it ended while no agent ran."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from swarm.agent.runtime import RuncRuntime
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.host.mounts import mount_points
from tests.agent.test_worker import (  # noqa: F401  (fixtures)
    Harness,
    changed,
    complete,
    harness,
    make_task,
    settings,
    with_desired,
)
from tests.waiting import eventually


class Payloads:
    """What the controller would send for each task; counts the asks."""

    def __init__(self, secret: bytes, config: bytes) -> None:
        self.secret, self.config = secret, config
        self.asked: list[str] = []
        self.refuse = False

    async def __call__(self, task_id: str) -> dpb.TaskPayloadsResponse:
        self.asked.append(task_id)
        if self.refuse:
            raise grpc.aio.AioRpcError(grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), details="not yours",
                                       debug_error_string="")
        return dpb.TaskPayloadsResponse(
            secrets=[dpb.Payload(id="s1", name="pw", data=self.secret)],
            configs=[dpb.Payload(id="c1", name="conf", data=self.config)])


def secret_task(image: str, *command: str) -> pb.Task:
    task = make_task(image, *command)
    task.spec.container.secrets.add(secret_id="s1", secret_name="pw", file=pb.FileTarget(
        name="db", uid=1000, gid=1001, mode=0o400))
    task.spec.container.configs.add(config_id="c1", config_name="conf", file=pb.FileTarget(
        name="/etc/app.conf", mode=0o444))
    return task


def payload_mounts(runtime: RuncRuntime, task_id: str) -> list[str]:
    return [m for m in mount_points() if m == str(runtime.payloads_dir(task_id))]


def files_containing(root: Path, needle: bytes) -> list[str]:
    listed = subprocess.run(["find", str(root), "-xdev", "-type", "f", "-print0"],
                            capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for path in filter(None, listed):
        try:
            if needle in Path(os.fsdecode(path)).read_bytes():
                found.append(os.fsdecode(path))
        except OSError:
            continue
    return found


async def test_files_in_a_tmpfs_read_only_with_owner_and_mode_gone_when_the_task_ends(
        harness: Harness, busybox_ref: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.DEBUG)
    secret, config = secrets.token_hex(16).encode(), secrets.token_hex(8).encode()
    worker = await harness.worker()
    worker.fetch_payloads = Payloads(secret, config)
    task = secret_task(busybox_ref, "sh", "-c",
                       "stat -c '%u %g %a' /run/secrets/db /etc/app.conf; cat /run/secrets/db; "
                       "echo; echo x > /run/secrets/db || echo read-only; exec sleep 1000")
    await worker.apply(complete(task))
    await harness.reports.reach(task.id, pb.RUNNING)
    runtime = worker.runtime
    assert isinstance(runtime, RuncRuntime)
    assert payload_mounts(runtime, task.id) == [str(runtime.payloads_dir(task.id))]
    await eventually(lambda: "read-only" in runtime.log_path(task.id).read_text(), 10,
                     "the container's output")
    output = runtime.log_path(task.id).read_text()
    assert "1000 1001 400" in output
    assert "0 0 444" in output
    assert secret.decode() in output  # the task read it (its own log: the test's command)
    # On the host: only in the tmpfs, not on the state directory's file system.
    runtime.log_path(task.id).unlink()  # (the test made the container print it)
    assert files_containing(runtime.settings.state_dir, secret) == []
    assert files_containing(runtime.settings.state_dir, config) == []
    assert not any(secret.decode() in record.getMessage() for record in caplog.records)

    # The task ends (killed): its files go, its container stays as history.
    pid = harness.reports.last(task.id).container.pid
    os.kill(pid, signal.SIGKILL)
    await harness.reports.reach(task.id, pb.FAILED)
    await eventually(lambda: payload_mounts(runtime, task.id) == [], 10, "tmpfs unmounted")
    assert not runtime.payloads_dir(task.id).exists()
    assert (await runtime.list())[task.id].status == "stopped"
    await worker.apply(changed(removed=(task.id,)))
    await worker.wait_removals()


async def test_a_task_that_ended_while_no_agent_ran_loses_its_files_on_restart(
        harness: Harness, busybox_ref: str) -> None:  # noqa: F811
    secret = secrets.token_hex(16).encode()
    first = await harness.worker()
    first.fetch_payloads = Payloads(secret, b"conf")
    ends, dropped = secret_task(busybox_ref, "sleep", "1000"), secret_task(busybox_ref,
                                                                           "sleep", "1000")
    await first.apply(complete(ends, dropped))
    statuses = {t.id: await harness.reports.reach(t.id, pb.RUNNING) for t in (ends, dropped)}
    runtime = first.runtime
    assert isinstance(runtime, RuncRuntime)
    await first.close()
    os.kill(statuses[ends.id].container.pid, signal.SIGKILL)
    await eventually((runtime.settings.exits_dir / ends.id).exists, 10, "conmon's exit file")
    assert payload_mounts(runtime, ends.id)  # nobody was there to release them

    second = await harness.worker()
    fetch = second.fetch_payloads = Payloads(secret, b"conf")
    await second.apply(complete(with_desired(ends, pb.RUNNING, statuses[ends.id])))
    await harness.reports.reach(ends.id, pb.FAILED)
    await second.wait_removals()  # `dropped` is not assigned any more: removed
    await eventually(lambda: payload_mounts(runtime, ends.id) == [], 10, "tmpfs unmounted")
    assert payload_mounts(runtime, dropped.id) == []
    assert fetch.asked == []  # adopted: nothing asked again


async def test_refused_payloads_reject_the_task_and_leave_nothing(
        harness: Harness, busybox_ref: str) -> None:  # noqa: F811
    worker = await harness.worker()
    payloads = Payloads(b"x", b"y")
    payloads.refuse = True
    worker.fetch_payloads = payloads
    task = secret_task(busybox_ref, "sleep", "1000")
    await worker.apply(complete(task))
    status = await harness.reports.reach(task.id, pb.REJECTED)
    assert "PERMISSION_DENIED: not yours" in status.err
    assert payloads.asked == [task.id]
    assert isinstance(worker.runtime, RuncRuntime)
    assert payload_mounts(worker.runtime, task.id) == []
