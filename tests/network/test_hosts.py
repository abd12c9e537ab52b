"""The multi-host harness itself (tests/hosts.py): hosts reach each other on
the underlay and nothing else, commands enter only the network namespace, and
teardown and stale cleanup leave nothing."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from swarm.cli.dev.hosts import RUN_BASE, Hosts, cleanup_stale, connect_in
from swarm.host.netns import ensure_netns_blocking, netns_path, remove_netns_blocking, socket_in
from tests.network.conftest import require_root

PORT = 7100
ECHO_ONCE = f"""
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {PORT}))
srv.listen(1)
conn, (peer, _) = srv.accept()
conn.sendall(peer.encode())
conn.close()
"""


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    require_root()
    with Hosts.create(3) as made:
        yield made
    assert made.namespaces() == []


def test_hosts_reach_each_other_on_the_underlay(hosts: Hosts) -> None:
    h1, _h2, h3 = hosts
    assert [str(h.address) for h in hosts] == ["192.168.77.11/24", "192.168.77.12/24", "192.168.77.13/24"]
    h3.popen([sys.executable, "-c", ECHO_ONCE])
    with connect_in(h1.netns, (str(h3.ip), PORT), retry_for=15) as sock:
        assert sock.recv(100) == str(h1.ip).encode()


def test_hosts_have_no_route_out(hosts: Hosts) -> None:
    with socket_in(hosts[0].netns) as sock:
        sock.settimeout(1)
        assert sock.connect_ex(("10.255.255.1", 9)) == errno.ENETUNREACH


def test_run_enters_the_network_namespace_only(hosts: Hosts) -> None:
    host = hosts[0]
    out = host.run(["sh", "-c", "readlink /proc/self/ns/net /proc/self/ns/mnt /proc/self/ns/cgroup"])
    net, mnt, cgroup = out.stdout.split()
    assert net == f"net:[{os.stat(host.path).st_ino}]"
    # Mount and cgroup namespaces are ours: runc in a host still finds the
    # cgroup mounts (`ip netns exec` would have remounted /sys).
    assert mnt == os.readlink("/proc/self/ns/mnt")
    assert cgroup == os.readlink("/proc/self/ns/cgroup")


def test_teardown_stops_processes_and_removes_every_namespace_of_the_run() -> None:
    require_root()
    hosts = Hosts.create(2)
    try:
        sleeper = hosts[0].popen(["sleep", "60"])
        extra = hosts.name("task1")
        ensure_netns_blocking(extra)
        assert len(hosts.namespaces()) == 4  # underlay, h1, h2, task1
    finally:
        hosts.teardown()
    assert sleeper.poll() is not None
    assert hosts.namespaces() == []
    assert not netns_path(extra).exists()


def test_bad_requests_are_refused_before_anything_is_made(hosts: Hosts) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        Hosts.create(300)
    # Another run's prefix: teardown would remove its namespaces, so refused.
    with pytest.raises(ValueError, match="exist already"):
        Hosts.create(1, prefix=hosts.prefix)
    assert len(hosts.namespaces()) == 4


def test_cleanup_stale_removes_only_namespaces_of_dead_runs() -> None:
    require_root()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{RUN_BASE}{dead.pid}-beef-h1"
    live = f"{RUN_BASE}{os.getpid()}-beef-h1"
    try:
        ensure_netns_blocking(stale)
        ensure_netns_blocking(live)
        removed = cleanup_stale()
        assert stale in removed
        assert live not in removed
        assert netns_path(live).exists()
        assert not netns_path(stale).exists()
    finally:
        remove_netns_blocking(stale)
        remove_netns_blocking(live)
