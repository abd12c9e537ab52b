"""Overlay throughput against the underlay it runs on, in the same run.

    python -m bench.overlay [--rounds 3] [--seconds 5] [--streams 1] [--mtu 1500]
                            [--link-gbit 10]

Two simulated hosts (cli/dev/hosts.py: network namespaces on an underlay
bridge), one overlay network between them set up by the agent's own
OverlayManager (a namespace per network with a bridge and a VXLAN device,
learning off, static FDB and neighbour entries from set_peers) and one task
namespace per host attached to it. Then TCP throughput, with the same tool and
options, between

* overlay:  the task on h1 -> the task on h2 (veth, bridge, VXLAN, underlay,
            and the same back up on h2)
* underlay: h1 -> h2 directly (the hosts' own addresses on the underlay)

interleaved round by round (the order alternating, so neither path always
runs on a warmer or quieter machine); medians are printed. Two settings:

* unshaped (`overlay_*`): the "wire" is a veth pair and a bridge, which cost
  nothing but CPU, so both paths are bound by the CPU and the ratio is the
  kernel's work per byte: the overlay's path crosses twice as many veths and
  bridges plus the encapsulation, on the same 2 cores.
* at a line rate (`link_*`, --link-gbit, default 10): the underlay shaped to
  what a NIC of that speed delivers, so both paths are bound by the link, as on
  real machines; the ratio is then what VXLAN's headers cost (goal >= 0.85;
  `link_header_bound_ratio` is the figure headers alone predict from the MTUs,
  `link_underlay_of_line_rate` how close the underlay came to the line rate:
  well below 1 means a loaded machine made the CPU the limit again).

The tool is iperf3 (Debian `iperf3`, installed by deploy/setup.sh): the
standard tool, in C, timing itself, so the figures compare with anyone's. A
Python sender and receiver would spend its time in the interpreter: on this
2-core machine it would be CPU-bound on both paths and understate both,
hiding the very cost it is meant to show.

Prints one JSON line. Needs root. Everything made (namespaces, devices,
qdiscs, iperf3 servers) is removed at the end, also on failure or Ctrl-C /
SIGTERM (the hosts' teardown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any

from swarm.agent.network import OverlayManager, OverlayNetwork, OverlaySettings, Peer
from swarm.cli.dev.hosts import Host, Hosts, ipr_in, nsenter_argv
from swarm.host.netns import ensure_netns_blocking, netns_path

# Private ranges that exist only inside the run's namespaces; distinct from the
# local cluster's default (192.168.77.0/24), so both can run at once.
UNDERLAY_SUBNET = "192.168.78.0/24"
NETWORK = OverlayNetwork.create("bench", 4096, "10.231.0.0/24", "10.231.0.1")
PORT = 5201  # iperf3's


@dataclass(frozen=True)
class Endpoint:
    """Where an iperf3 end runs: a namespace and the address it is reached at."""

    netns: str
    address: str


def mtu_of(netns: str, ifname: str) -> int:
    with ipr_in(netns) as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        return int(ipr.link("get", index=index)[0].get("mtu"))


async def connect_overlay(hosts: Hosts) -> list[Endpoint]:
    """The overlay between the hosts, as the agent would make it; a task
    namespace per host attached to it. Returns the task endpoints."""
    managers = [OverlayManager(OverlaySettings(
        advertise_addr=host.ip, host_netns=host.netns,
        netns_prefix=hosts.name(f"{host.name}-ov-"))) for host in hosts]
    tasks: list[Endpoint] = []
    peers: list[Peer] = []
    for n, (manager, host) in enumerate(zip(managers, hosts, strict=True), start=1):
        netns = hosts.name(f"{host.name}-t")  # torn down with the hosts
        await asyncio.to_thread(ensure_netns_blocking, netns)
        address = IPv4Interface(f"{NETWORK.subnet.network_address + 10 + n}/{NETWORK.subnet.prefixlen}")
        await manager.ensure_network(NETWORK)
        await manager.attach(str(netns_path(netns)), NETWORK, address, default_route=True)
        tasks.append(Endpoint(netns, str(address.ip)))
        peers.append(Peer(address.ip, host.ip))
    for manager in managers:
        await manager.set_peers(NETWORK, peers)
    return tasks


def iperf3_version() -> str:
    output = subprocess.run(["iperf3", "--version"], capture_output=True, text=True,
                            check=True, timeout=10).stdout
    return output.split("(")[0].strip()  # "iperf 3.12"


def start_server(hosts: Hosts, server: Endpoint) -> None:
    # Stopped by the hosts' teardown (by pid).
    hosts.popen(server.netns, ["iperf3", "--server", "--bind", server.address, "--port", str(PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(client: Endpoint, server: Endpoint, seconds: int, streams: int,
            ready_within: float = 10.0) -> dict[str, Any]:
    """One iperf3 run from client to server: received Gbit/s and the sender's
    retransmits. Retries while the server is not listening yet."""
    argv = nsenter_argv(client.netns, [
        "iperf3", "--client", server.address, "--port", str(PORT), "--bind", client.address,
        "--time", str(seconds), "--omit", "1", "--parallel", str(streams), "--json"])
    deadline = time.monotonic() + ready_within
    while True:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=seconds + 30)
        report = json.loads(result.stdout) if result.stdout.strip() else {}
        error = report.get("error") or result.stderr.strip() or f"exit {result.returncode}"
        if result.returncode == 0 and "end" in report:
            end = report["end"]
            return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                    "retransmits": int(end["sum_sent"].get("retransmits", 0))}
        if "refused" not in str(error) or time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 {client.address} -> {server.address}: {error}")
        time.sleep(0.1)


def shape(hosts: Hosts, gbit: float) -> None:
    """A line rate on the underlay: a token bucket on the underlay bridge's
    port towards each host (what a NIC of that speed would deliver to it).
    The burst is a few 64 KiB GSO packets, so none is split; the qdisc counts
    every segment's headers, the outer ones of VXLAN included, as a wire would."""
    with ipr_in(hosts.underlay_netns) as ul:
        for host in hosts:
            (index,) = ul.link_lookup(ifname=host.name)
            ul.tc("replace", "tbf", index=index, handle="1:", rate=int(gbit * 1e9 / 8),  # bytes/s
                  burst=512 * 1024, latency="20ms")


def measure_paths(paths: dict[str, tuple[Endpoint, Endpoint]], rounds: int, seconds: int,
                  streams: int) -> dict[str, list[dict[str, Any]]]:
    """Each path `rounds` times, interleaved, the order alternating."""
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for round_number in range(rounds):
        order = list(paths) if round_number % 2 == 0 else list(reversed(paths))
        for name in order:
            figures[name].append(measure(*paths[name], seconds, streams))
    return figures


def summarize(prefix: str, figures: dict[str, list[dict[str, Any]]]) -> dict[str, object]:
    """Medians, ratio and every round of one set of measurements."""
    overlay = statistics.median(f["gbps"] for f in figures["overlay"])
    underlay = statistics.median(f["gbps"] for f in figures["underlay"])
    return {
        f"{prefix}overlay_gbps": round(overlay, 2),
        f"{prefix}underlay_gbps": round(underlay, 2),
        f"{prefix}overlay_ratio": round(overlay / underlay, 3),
        f"{prefix}overlay_gbps_rounds": [round(f["gbps"], 2) for f in figures["overlay"]],
        f"{prefix}underlay_gbps_rounds": [round(f["gbps"], 2) for f in figures["underlay"]],
        f"{prefix}overlay_retransmits": sum(f["retransmits"] for f in figures["overlay"]),
        f"{prefix}underlay_retransmits": sum(f["retransmits"] for f in figures["underlay"]),
    }


def header_bound_ratio(overlay_mtu: int, underlay_mtu: int) -> float:
    """What the overlay keeps of a saturated link when only headers count:
    TCP payload per full frame (MSS = MTU - 20 IP - 32 TCP with timestamps),
    and an overlay frame fills an underlay frame once encapsulated."""
    return (overlay_mtu - 52) / (underlay_mtu - 52)


def line_goodput(gbit: float, mtu: int) -> float:
    """The most TCP payload a link of that rate carries (Gbit/s): the token
    bucket counts whole Ethernet frames (MTU + 14), of which MTU - 52 is payload."""
    return gbit * (mtu - 52) / (mtu + 14)


def run(rounds: int, seconds: int, streams: int, mtu: int, link_gbit: float) -> dict[str, object]:
    with Hosts.create(2, subnet=UNDERLAY_SUBNET, mtu=mtu) as hosts:
        h1, h2 = hosts[0], hosts[1]
        tasks = asyncio.run(connect_overlay(hosts))
        paths = {"overlay": (tasks[0], tasks[1]), "underlay": (endpoint(h1), endpoint(h2))}
        for _, server in paths.values():
            start_server(hosts, server)
        overlay_mtu = mtu_of(tasks[0].netns, "eth0")
        underlay_mtu = mtu_of(h1.netns, h1.ifname)
        figures: dict[str, object] = {
            "bench": "overlay", "tool": iperf3_version(), "rounds": rounds, "seconds": seconds,
            "streams": streams, "underlay_mtu": underlay_mtu, "overlay_mtu": overlay_mtu,
            **summarize("", measure_paths(paths, rounds, seconds, streams)),
        }
        if link_gbit:
            shape(hosts, link_gbit)
            link = measure_paths(paths, rounds, seconds, streams)
            underlay = statistics.median(f["gbps"] for f in link["underlay"])
            figures.update({
                "link_gbit": link_gbit,
                **summarize("link_", link),
                "link_header_bound_ratio": round(header_bound_ratio(overlay_mtu, underlay_mtu), 3),
                # Near 1: the underlay path was link-bound, as intended; well
                # below: the CPU was the limit (a loaded machine) and the
                # link_ ratio says little.
                "link_underlay_of_line_rate": round(
                    underlay / line_goodput(link_gbit, underlay_mtu), 3),
            })
    return {**figures, "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)}


def endpoint(host: Host) -> Endpoint:
    return Endpoint(host.netns, str(host.ip))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overlay")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements of each path, interleaved (medians are printed)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each measurement")
    parser.add_argument("--streams", type=int, default=1, help="parallel TCP streams (iperf3 -P)")
    parser.add_argument("--mtu", type=int, default=1500, help="the underlay's MTU")
    parser.add_argument("--link-gbit", type=float, default=10.0,
                        help="then again with the underlay shaped to this line rate "
                             "(Gbit/s; 0: skip)")
    args = parser.parse_args()
    for flag, value, low in (("--rounds", args.rounds, 1), ("--seconds", args.seconds, 1),
                             ("--streams", args.streams, 1),
                             # the smallest overlay MTU the agent accepts, plus VXLAN's 50
                             ("--mtu", args.mtu, 1330),
                             ("--link-gbit", args.link_gbit, 0)):
        if value < low:
            sys.exit(f"bench.overlay: {flag} {value}: expected at least {low}")
    if os.geteuid() != 0:
        sys.exit("bench.overlay needs root (network namespaces, netlink)")
    if shutil.which("iperf3") is None:
        sys.exit("bench.overlay: iperf3 missing (Debian package iperf3: run deploy/setup.sh)")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the hosts' teardown

    signal.signal(signal.SIGTERM, terminate)
    print(json.dumps(run(args.rounds, args.seconds, args.streams, args.mtu, args.link_gbit)))


if __name__ == "__main__":
    main()
