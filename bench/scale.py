"""`--replicas` mode of bench.containers: the issue's end-to-end figure.

A one-node local cluster (`swarmctl dev up` machinery: etcd, a controller, a
registry with the demo image, one real swarm-agent in a simulated host, all
over mutual TLS); a service `web` of 1 replica is created and waited for (the
image is pulled then, as on a node that ran the service before); then the
clock starts at `ScaleService(web=N)` and stops when N tasks are RUNNING in
the controller's view. The agent's RSS is read with the N containers running.
The same run then times N sequential raw `runc run -d` of a busybox rootfs
(bench.containers' raw phase) for the ratio. Everything is removed at the end.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster

SUBNET = "192.168.96.0/24"


def _running(stub: cgrpc.ControlStub, service_id: str) -> int:
    tasks = stub.ListTasks(cpb.ListTasksRequest(
        filters=cpb.ListTasksRequest.Filters(service_ids=[service_id])), timeout=10).tasks
    return sum(t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING for t in tasks)


def _wait_running(stub: cgrpc.ControlStub, service_id: str, count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while _running(stub, service_id) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} tasks RUNNING after {limit:.0f}s")
        time.sleep(0.02)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def scale_through_controller(replicas: int) -> dict[str, float]:
    """seconds_to_running and agent_rss_mib, with a cluster of its own."""
    name = "b" + secrets.token_hex(3)
    # The cluster writes a swarmctl context: keep it away from the operator's.
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bench-config-")
    try:
        state = cluster.up(name, 1, SUBNET, say=lambda _: None)
        with cluster.control_channel(state) as channel:
            stub = cgrpc.ControlStub(channel)
            spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=1))
            spec.task.container.image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
            service = stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=10).service
            _wait_running(stub, service.id, 1, 60)
            started = time.perf_counter()
            stub.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=replicas), timeout=10)
            _wait_running(stub, service.id, replicas, 300)
            seconds = time.perf_counter() - started
            agent = next(d for d in state.daemons if d.role.startswith("agent"))
            rss = _rss_mib(agent.pid)
        return {"seconds_to_running": round(seconds, 3), "agent_rss_mib": rss}
    finally:
        cluster.down(name, say=lambda _: None)
