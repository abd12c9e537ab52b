"""Throughput of a published port (the routing mesh) against a direct
connection over the same overlay.

    python -m bench.published [--mib 256] [--runs 3]

Three simulated hosts (cli/dev/hosts.py) on an underlay, an ingress-like
overlay between hosts 1 and 2 (agent.network.OverlayManager, real VXLAN), a
sink server in a "task" namespace on host 2, and on host 1 the agent's
published ports (agent.published.PublishedPorts in host 1's namespace, with
its ingress sandbox on the overlay). Then, in one run, the same client sends
--mib MiB and waits for the sink's byte count:

* direct: from inside the sandbox, straight to the task's overlay address;
* proxied: from host 3 to the published port on host 1's address: the
  kernel routing mesh (nftables DNAT to the sandbox, DNAT to the task,
  masquerade on the overlay);
* userspace: from host 1 itself to the port on its loopback, which the
  agent's userspace proxy carries through the sandbox (where it stays).

Prints one JSON line: MiB/s of each (best of --runs), `proxy_ratio`
(proxied/direct), the latency of a 64-byte round trip through each (p50, in
ms), and new connections per second (each one round trip; the direct ones
are made in the sandbox too; best of --runs, interleaved). Needs root. Everything made is removed at the
end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Interface

from swarm.agent.network import OverlayManager, OverlayNetwork, OverlaySettings, Peer
from swarm.agent.published import PublishedPorts
from swarm.api.overlay import mac_for_ip
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.hosts import Hosts
from swarm.host.netns import ensure_netns_blocking, netns_path, socket_in

NET = OverlayNetwork.create("benchingress", 4096, "10.30.0.0/24", "10.30.0.1")
TASK = IPv4Interface("10.30.0.10/24")
SANDBOX = IPv4Interface("10.30.0.2/24")
TARGET = 7000
CHUNK = 256 * 1024
# Reads until EOF and answers with the byte count; "ping" connections echo
# 64-byte messages (latency).
SINK = f"""
import socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {TARGET}))
srv.listen(16)
print("ready", flush=True)
def serve(conn):
    with conn:
        total = 0
        while data := conn.recv({CHUNK}):
            if data.startswith(b"ping") and total == 0 and len(data) == 64:
                conn.sendall(data)
                continue
            total += len(data)
        conn.sendall(str(total).encode())
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def send(connect: Callable[[], socket.socket], size: int) -> float:
    """Seconds to send `size` bytes and have the sink count them all."""
    payload = b"\0" * CHUNK
    with connect() as sock:
        started = time.perf_counter()
        sent = 0
        while sent < size:
            sock.sendall(payload)
            sent += len(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(64):
            answer += chunk
        elapsed = time.perf_counter() - started
    if int(answer) != sent:
        raise RuntimeError(f"the sink counted {answer!r} of {sent} bytes")
    return elapsed


def round_trips(connect: Callable[[], socket.socket], count: int = 200) -> float:
    """p50 of a 64-byte round trip on one connection, in ms."""
    message = b"ping".ljust(64, b".")
    times = []
    with connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(message)
            received = b""
            while len(received) < len(message):
                received += sock.recv(64)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def connection_rate(connect: Callable[[], socket.socket], count: int = 300) -> float:
    """New connections per second, each carrying one 64-byte round trip."""
    message = b"ping".ljust(64, b".")
    started = time.perf_counter()
    for _ in range(count):
        with connect() as sock:
            sock.sendall(message)
            received = b""
            while len(received) < len(message):
                received += sock.recv(64)
    return count / (time.perf_counter() - started)


async def run(mib: int, runs: int) -> dict[str, object]:
    hosts = await asyncio.to_thread(Hosts.create, 3)
    ports: PublishedPorts | None = None
    try:
        managers = [OverlayManager(OverlaySettings(
            advertise_addr=host.ip, host_netns=host.netns,
            netns_prefix=hosts.name(f"{host.name}-ov-"))) for host in list(hosts)[:2]]
        for manager in managers:
            await manager.ensure_network(NET)
        task_ns = hosts.name("task")
        await asyncio.to_thread(ensure_netns_blocking, task_ns)
        await managers[1].attach(str(netns_path(task_ns)), NET, TASK, default_route=True)
        for manager in managers:
            await manager.set_peers(NET, [Peer(TASK.ip, hosts[1].ip), Peer(SANDBOX.ip, hosts[0].ip)])
        sink = hosts.popen(task_ns, [sys.executable, "-c", SINK], stdout=subprocess.PIPE)
        assert sink.stdout is not None
        if (await asyncio.to_thread(sink.stdout.readline)).strip() != b"ready":
            raise RuntimeError("the sink did not start")

        node = hosts[0].netns
        ports = PublishedPorts(managers[0], managers[0].settings.sandbox_name("ingress"),
                               netns=node)
        listener = socket_in(node)
        listener.bind(("127.0.0.1", 0))
        published = listener.getsockname()[1]
        listener.close()
        entry = dpb.NetworkAssignment(node_address=str(SANDBOX))
        entry.network.CopyFrom(pb.Network(id=NET.network_id, vni=NET.vni, subnet=str(NET.subnet),
                                          gateway=str(NET.gateway),
                                          spec=pb.NetworkSpec(ingress=True)))
        entry.services.add(id="svc", ports=[pb.PortConfig(published_port=published,
                                                          target_port=TARGET)])
        peer = dpb.OverlayPeer(task_id="t", address=str(TASK), vtep=str(hosts[1].ip),
                               mac=mac_for_ip(str(TASK)), service_id="svc", ready=True)
        await ports.set_ingress(entry, [peer])
        await ports.reconcile()
        serving = asyncio.create_task(ports.run())  # the proxy runs on this loop

        def direct() -> socket.socket:
            sock = socket_in(ports.sandbox if ports else "")
            sock.connect((str(TASK.ip), TARGET))
            return sock

        def proxied() -> socket.socket:
            sock = socket_in(hosts[2].netns)
            sock.connect((str(hosts[0].ip), published))
            return sock

        def userspace() -> socket.socket:
            sock = socket_in(node)
            sock.connect(("127.0.0.1", published))
            return sock

        paths = (("direct", direct), ("proxied", proxied), ("userspace", userspace))
        size = mib * 1024 * 1024
        best = {name: float("inf") for name, _ in paths}
        for _ in range(runs):  # interleaved, so load drifts hit all
            for name, connect in paths:
                best[name] = min(best[name], await asyncio.to_thread(send, connect, size))
        latency = {name: await asyncio.to_thread(round_trips, connect) for name, connect in paths}
        rates = {name: 0.0 for name, _ in paths}
        for _ in range(runs):  # interleaved too, best of --runs
            for name, connect in paths:
                rates[name] = max(rates[name], await asyncio.to_thread(connection_rate, connect))
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        rate = {name: mib / seconds for name, seconds in best.items()}
        return {"bench": "published", "mib": mib, "runs": runs,
                "direct_mib_s": round(rate["direct"], 1),
                "proxied_mib_s": round(rate["proxied"], 1),
                "proxy_ratio": round(rate["proxied"] / rate["direct"], 3),
                "userspace_mib_s": round(rate["userspace"], 1),
                "rtt_p50_ms_direct": round(latency["direct"], 3),
                "rtt_p50_ms_proxied": round(latency["proxied"], 3),
                "rtt_p50_ms_userspace": round(latency["userspace"], 3),
                "connections_per_s_direct": round(rates["direct"]),
                "connections_per_s_proxied": round(rates["proxied"]),
                "connections_per_s_userspace": round(rates["userspace"]),
                "connections_ratio": round(rates["proxied"] / rates["direct"], 3)}
    finally:
        if ports is not None:
            await ports.close()
        await asyncio.to_thread(hosts.teardown)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.published")
    parser.add_argument("--mib", type=int, default=256, help="MiB sent per run (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (best kept)")
    args = parser.parse_args()
    if args.mib < 1 or args.runs < 1:
        parser.error("--mib and --runs must be at least 1")
    print(json.dumps(asyncio.run(run(args.mib, args.runs))))


if __name__ == "__main__":
    main()
