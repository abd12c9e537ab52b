"""`--scale-ups` mode of bench.discovery: the issue's end-to-end figure, from
a task reported RUNNING until every other host finds it by name and reaches it.

    python -m bench.discovery --scale-ups 20 [--nodes 3]

A local cluster (`swarmctl dev up` machinery: simulated hosts, real agents,
runc containers, mutual TLS), an overlay network and a service `web` on it
with one task per host; those tasks are the probes. Then N times: scale web
up by one, wait for the new task to be RUNNING in the controller's view, and
from the probe on every OTHER host poll (every 5 ms) until both

* DNS: `tasks.web` (type A, asked at 127.0.0.11:53 from inside the probe's
  namespace, as its resolver would) contains the new task's address, and
* HTTP: GET / on the new task's address answers 200 with the page naming it.

The latency of a scale-up runs from the RUNNING status's timestamp (the
agent's clock when it saw the container running: this machine's clock too)
until the last host's probe succeeded. Seeing the task RUNNING takes a
ListTasks poll (every 20 ms), so a name that resolved before we looked
counts the poll's delay too: the figures err on the slow side. The cluster
is removed at the end, also on failure or Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdatatype

from bench.discovery import _percentiles  # one way to take them, as bench.discovery does
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.dev.hosts import connect_in
from swarm.host.netns import NETNS_DIR, socket_in

SUBNET = "192.168.79.0/24"  # the underlay; distinct from the tests' and other benches'
DNS_ADDRESS = ("127.0.0.11", 53)
POLL = 0.005


@dataclass
class Probe:
    """A task that asks: its node, its namespace."""

    node_id: str
    netns: str


def resolves(netns: str, name: str, address: str) -> bool:
    """Whether the task's resolver answers `name` with `address` among its A records."""
    query = dns.message.make_query(name, dns.rdatatype.A)
    with socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(query.to_wire(), DNS_ADDRESS)
            answer = dns.message.from_wire(sock.recv(65535))
        except (OSError, dns.exception.DNSException):
            return False
    return any(rdata.to_text() == address for rrset in answer.answer for rdata in rrset)


def answers(netns: str, address: str, task_id: str) -> bool:
    """Whether GET / on address:80 from the namespace is the page of the task."""
    try:
        with connect_in(netns, (address, 80), timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] \
        and task_id.encode() in reply


def tasks(stub: cgrpc.ControlStub, service_id: str) -> list[pb.Task]:
    return list(stub.ListTasks(cpb.ListTasksRequest(
        filters=cpb.ListTasksRequest.Filters(service_ids=[service_id])), timeout=10).tasks)


def running(stub: cgrpc.ControlStub, service_id: str) -> list[pb.Task]:
    return [t for t in tasks(stub, service_id)
            if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING]


def wait_running(stub: cgrpc.ControlStub, service_id: str, count: int, limit: float,
                 interval: float = 0.02) -> list[pb.Task]:
    deadline = time.monotonic() + limit
    while len(found := running(stub, service_id)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} tasks RUNNING after {limit:.0f}s")
        time.sleep(interval)
    return found


def address_of(task: pb.Task) -> str:
    return task.networks[0].addresses[0].split("/")[0]


def task_netns(task: pb.Task) -> str:
    (name,) = [n for n in os.listdir(NETNS_DIR) if n.startswith("swarm-") and n.endswith(task.id)]
    return name


def measure_one(probes: list[Probe], task: pb.Task, limit: float) -> tuple[float, float, float]:
    """(total, dns, http) seconds after the task's RUNNING timestamp until
    every probe on another node resolved and reached it."""
    since = task.status.timestamp.ToNanoseconds() / 1e9
    address = address_of(task)
    pending_dns = [p for p in probes if p.node_id != task.node_id]
    pending_http = list(pending_dns)
    dns_done = http_done = 0.0
    deadline = time.monotonic() + limit
    while pending_dns or pending_http:
        pending_dns = [p for p in pending_dns if not resolves(p.netns, "tasks.web", address)]
        if not pending_dns and not dns_done:
            dns_done = time.time()
        pending_http = [p for p in pending_http if not answers(p.netns, address, task.id)]
        if not pending_http and not http_done:
            http_done = time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task.id} ({address}) not found and reached from every "
                               f"host within {limit:.0f}s")
        if pending_dns or pending_http:
            time.sleep(POLL)
    return max(dns_done, http_done) - since, dns_done - since, http_done - since


def run_cluster(nodes: int, scale_ups: int) -> dict[str, object]:
    name = "b" + secrets.token_hex(3)
    # The cluster writes a swarmctl context: keep it away from the operator's.
    config_home = os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bench-config-")
    try:
        state = cluster.up(name, nodes, SUBNET, say=lambda _: None)
        with cluster.control_channel(state) as channel:
            stub = cgrpc.ControlStub(channel)
            stub.CreateNetwork(cpb.CreateNetworkRequest(spec=pb.NetworkSpec(
                name="disc", ipam=pb.IPAMConfig(subnet="10.79.0.0/22"))), timeout=10)
            spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=nodes))
            spec.task.container.image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
            spec.task.container.env.extend(["TASK_NAME={{.Task.Name}}"])
            spec.task.networks.add(target="disc")
            service = stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=10).service
            first = wait_running(stub, service.id, nodes, 120)
            # The scheduler spreads them: one probe per node.
            probes = [Probe(t.node_id, task_netns(t)) for t in first]
            if len({p.node_id for p in probes}) != nodes:
                raise RuntimeError("the first tasks are not one per node")
            seen = {t.id for t in first}
            totals, dns_parts, http_parts = [], [], []
            for n in range(scale_ups):
                stub.ScaleService(cpb.ScaleServiceRequest(ref=service.id, replicas=nodes + n + 1),
                                  timeout=10)
                now = wait_running(stub, service.id, nodes + n + 1, 60)
                (new,) = [t for t in now if t.id not in seen]
                seen.add(new.id)
                total, dns_part, http_part = measure_one(probes, new, 30)
                totals.append(total)
                dns_parts.append(dns_part)
                http_parts.append(http_part)
        return {
            "bench": "discovery", "mode": "end_to_end", "nodes": nodes, "scale_ups": scale_ups,
            **_percentiles(totals),
            "max_ms": round(max(totals) * 1000, 1),
            **{f"dns_{k}": v for k, v in _percentiles(dns_parts).items()},
            **{f"http_{k}": v for k, v in _percentiles(http_parts).items()},
            "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        try:
            cluster.down(name, say=lambda _: None)
        finally:
            shutil.rmtree(config_home, ignore_errors=True)
