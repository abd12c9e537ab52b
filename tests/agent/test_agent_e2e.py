"""End to end on real parts: etcd, a `swarm-controller` process, one or two
`swarm-agent` processes (loopback only), the test registry's busybox image,
runc containers.

Every test stops its processes by PID and then removes every container the
agents left (an agent's SIGTERM leaves them running on purpose), with their
mounts, network namespaces and cgroups, also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import pytest

from swarm.agent.main import AgentConfig, parse_args, purge, runc_settings
from swarm.agent.runtime import RuncRuntime
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from tests.agent.containers import require_containers, teardown
from tests.etcd_server import EtcdServer
from tests.processes import Proc, admin_channel, start_agent, start_controller, worker_token
from tests.registry import RegistryServer

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Control: TypeAlias = cgrpc.ControlAsyncStub

Tasks = list[pb.Task]


@dataclass
class Cluster:
    controller: Proc
    control: Control
    state_dirs: list[str]
    join_token: str = ""
    agents: dict[str, Proc] = field(default_factory=dict)  # hostname -> process

    def start_agent(self, hostname: str) -> Proc:
        index = len(self.agents) if hostname not in self.agents else \
            list(self.agents).index(hostname)
        if index >= len(self.state_dirs):
            self.state_dirs.append(tempfile.mkdtemp(prefix="swe2e-", dir="/run"))
        proc = start_agent([self.controller], self.state_dirs[index], hostname=hostname,
                           join_token=self.join_token)
        self.agents[hostname] = proc
        return proc

    def config(self, hostname: str) -> AgentConfig:
        """The agent's configuration, as it parsed its arguments."""
        state_dir = self.state_dirs[list(self.agents).index(hostname)]
        return parse_args(["--controller", "127.0.0.1:1", "--state-dir", state_dir,
                           "--advertise-addr", "127.0.0.1"])

    def runtime(self, hostname: str) -> RuncRuntime:
        """A runtime over the agent's own state (to look at its containers)."""
        return RuncRuntime(runc_settings(self.config(hostname)))

    async def wait_ready(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` nodes are READY."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = (await self.control.ListNodes(cpb.ListNodesRequest())).nodes
            if sum(n.status.state == pb.NodeStatus.READY for n in nodes) >= count:
                return
            assert time.monotonic() < deadline, f"{count} nodes not ready: {nodes}"
            await asyncio.sleep(0.1)

    async def tasks(self, service_id: str) -> Tasks:
        request = cpb.ListTasksRequest(filters=cpb.ListTasksRequest.Filters(
            service_ids=[service_id]))
        return list((await self.control.ListTasks(request)).tasks)

    async def wait(self, service_id: str, condition: Callable[[Tasks], bool], what: str,
                   timeout: float = 30.0) -> Tasks:
        deadline = time.monotonic() + timeout
        while True:
            tasks = await self.tasks(service_id)
            if condition(tasks):
                return tasks
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {name}\n{proc.log()[-3000:]}"
                                 for name, proc in self.agents.items())
                seen = [(t.slot, pb.TaskState.Name(t.status.state), t.status.err) for t in tasks]
                raise AssertionError(f"{what} not reached in {timeout}s; tasks: {seen}\n{logs}")
            await asyncio.sleep(0.1)


async def _running_containers(runtime: RuncRuntime) -> dict[str, int]:
    return {task_id: state.pid for task_id, state in (await runtime.list()).items()
            if state.status == "running"}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.fixture
async def cluster(etcd_server: EtcdServer, etcd_prefix: str,
                  registry: RegistryServer) -> AsyncIterator[Cluster]:
    require_containers()
    controller = start_controller(etcd_server.endpoint, etcd_prefix, heartbeat_period=0.5)
    channel = admin_channel(controller)
    cluster = Cluster(controller, cgrpc.ControlStub(channel), [],
                      join_token=await worker_token(controller))
    try:
        yield cluster
    finally:
        await channel.close(None)
        for proc in cluster.agents.values():
            proc.stop()
        controller.stop()
        for index, state_dir in enumerate(cluster.state_dirs):
            with contextlib.suppress(IndexError):
                hostname = list(cluster.agents)[index]
                # What `swarmctl node rm` tells an operator to run: the node's
                # containers, overlay namespaces and ingress sandbox, cgroups.
                await purge(cluster.config(hostname))
                await teardown(cluster.runtime(hostname).settings)
            shutil.rmtree(state_dir, ignore_errors=True)


def service_spec(name: str, image: str, *command: str, replicas: int = 1,
                 health: pb.HealthConfig | None = None) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    container = spec.task.container
    container.image = image
    container.command.extend(command)
    container.stop_grace_period.FromMilliseconds(300)
    if health is not None:
        container.healthcheck.CopyFrom(health)
    spec.task.restart.delay.FromMilliseconds(100)
    return spec


def running(tasks: Sequence[pb.Task]) -> Tasks:
    return [t for t in tasks if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]


async def test_services_run_as_real_containers(cluster: Cluster, busybox_ref: str,
                                               registry: RegistryServer) -> None:
    cluster.start_agent("node-a")
    cluster.start_agent("node-b")
    await cluster.wait_ready(2)
    control = cluster.control

    # Three replicas: RUNNING with real container PIDs, spread over both nodes.
    web = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", busybox_ref, "sleep", "1000", replicas=3)))).service
    tasks = await cluster.wait(web.id, lambda ts: len(running(ts)) == 3, "3 running", 60)
    containers = {**await _running_containers(cluster.runtime("node-a")),
                  **await _running_containers(cluster.runtime("node-b"))}
    for task in tasks:
        assert containers[task.id] == task.status.container.pid
        assert _alive(task.status.container.pid)
    assert len({t.node_id for t in tasks}) == 2
    # Two agents on one machine: each sees (and would remove) only its own containers.
    nodes = {n.description.hostname: n.id
             for n in (await control.ListNodes(cpb.ListNodesRequest())).nodes}
    for hostname in ("node-a", "node-b"):
        own = {t.id for t in tasks if t.node_id == nodes[hostname]}
        assert set(await cluster.runtime(hostname).list()) == own

    # Scale down: the extra containers are stopped and removed.
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=1))
    tasks = await cluster.wait(web.id, lambda ts: len(ts) == 1 and len(running(ts)) == 1,
                               "scaled down to 1")

    async def containers_left() -> int:
        total = 0
        for name in ("node-a", "node-b"):
            total += len(await cluster.runtime(name).list())
        return total

    deadline = time.monotonic() + 20
    while await containers_left() != 1:
        assert time.monotonic() < deadline, "containers of scaled-down tasks still there"
        await asyncio.sleep(0.1)

    # A missing image: REJECTED with the reason.
    missing = f"{registry.addr}/web:2"
    bad = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("bad", missing, "sleep", "1")))).service
    tasks = await cluster.wait(bad.id, lambda ts: any(t.status.state == pb.REJECTED for t in ts),
                               "rejected")
    rejected = next(t for t in tasks if t.status.state == pb.REJECTED)
    assert rejected.status.err == f"image not found: {missing}"
    await control.RemoveService(cpb.RemoveRequest(ref="bad"))

    # Exit 3: FAILED with the exit code, and replaced by the restart supervisor.
    exits = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("exits", busybox_ref, "sh", "-c", "exit 3")))).service
    tasks = await cluster.wait(
        exits.id, lambda ts: any(t.status.state == pb.FAILED for t in ts) and len(ts) >= 2,
        "failed and replaced")
    failed = next(t for t in tasks if t.status.state == pb.FAILED)
    assert (failed.status.container.exit_code, failed.status.err) == (
        3, "task: non-zero exit (3)")
    assert max(t.attempt for t in tasks) >= 1
    await control.RemoveService(cpb.RemoveRequest(ref="exits"))

    # A failing health check: FAILED (unhealthy) and replaced.
    check = pb.HealthConfig(test=["CMD-SHELL", "exit 1"], retries=1)
    check.interval.FromMilliseconds(200)
    check.timeout.FromSeconds(5)
    sick = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("sick", busybox_ref, "sleep", "1000", health=check)))).service
    tasks = await cluster.wait(
        sick.id, lambda ts: any(t.status.state == pb.FAILED for t in ts) and len(ts) >= 2,
        "unhealthy task failed and replaced")
    unhealthy = next(t for t in tasks if t.status.state == pb.FAILED)
    assert unhealthy.status.health == pb.TaskStatus.UNHEALTHY
    assert unhealthy.status.err.startswith("unhealthy container")
    await control.RemoveService(cpb.RemoveRequest(ref="sick"))


async def test_agent_restart_adopts_its_containers(cluster: Cluster, busybox_ref: str) -> None:
    agent = cluster.start_agent("node-a")
    await cluster.wait_ready(1)
    control = cluster.control
    web = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", busybox_ref, "sleep", "1000", replicas=2)))).service
    before = await cluster.wait(web.id, lambda ts: len(running(ts)) == 2, "2 running", 60)
    pids = {t.id: t.status.container.pid for t in before}

    # SIGTERM: the agent stops cleanly and leaves its containers running.
    agent.signal(signal.SIGTERM)
    try:
        agent.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"agent did not stop on SIGTERM:\n{agent.log()}")
    assert agent.process.returncode == 0, agent.log()
    assert "containers keep running" in agent.log()
    assert all(_alive(pid) for pid in pids.values())
    os.unlink(agent.log_path)

    restarted = cluster.start_agent("node-a")
    await asyncio.sleep(0)
    deadline = time.monotonic() + 20
    while "adopting its running container" not in restarted.log():
        assert restarted.process.poll() is None, restarted.log()
        assert time.monotonic() < deadline, restarted.log()
        await asyncio.sleep(0.1)
    # Same tasks, same processes: nothing was restarted or replaced.
    after = await cluster.wait(web.id, lambda ts: len(running(ts)) == 2, "2 running again")
    assert {t.id: t.status.container.pid for t in after} == pids
    assert len(after) == 2
    assert await _running_containers(cluster.runtime("node-a")) == pids
    # And the adopted containers are watched: one killed is reported and replaced.
    victim = next(iter(pids))
    os.kill(pids[victim], signal.SIGKILL)
    tasks = await cluster.wait(web.id, lambda ts: len(running(ts)) == 2 and any(
        t.id == victim and t.status.state == pb.FAILED for t in ts), "killed one replaced")
    assert next(t for t in tasks if t.id == victim).status.container.exit_code == 137
