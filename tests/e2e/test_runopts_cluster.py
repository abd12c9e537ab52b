"""Runtime options on a real local cluster (`swarmctl dev up`: etcd, a
controller, a registry, a host with a real agent running runc containers),
through swarmctl: --cap-add NET_ADMIN lets a task add an address (and a task
without it cannot), a sysctl, a ulimit and the pids limit are in force,
--dns/--dns-search/--host reach resolv.conf and /etc/hosts while the
overlay's embedded DNS keeps answering the service names (and forwards other
names to the task's --dns server), --stop-signal is what a stopping task
gets, and a task asking for a device its node lacks is REJECTED with the
reason in `service ps`.

Run under the machine-wide lock (`flock /tmp/swarm-heavy.lock pytest ...`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from swarm.cli.dev import cluster
from tests.dns_upstream import UpstreamDns
from tests.e2e.test_dev_cluster import _require_root, in_container, poll, resolved, swarmctl

pytestmark = pytest.mark.timeout(240)

SUBNET = "192.168.117.0/24"
MISSING_DEVICE = "/dev/no-such-device"


@pytest.fixture
def name() -> Iterator[str]:
    _require_root()
    name = "r" + secrets.token_hex(3)
    try:
        yield name
    finally:
        cluster.down(name, say=lambda _: None)  # also when the test failed


def _pid(service: str) -> int:
    tasks = [t for t in json.loads(swarmctl("service", "ps", service, "-o", "json"))
             if t.get("desired_state") == "RUNNING"]
    assert len(tasks) == 1, tasks
    return int(tasks[0]["status"]["container"]["pid"])


def test_runtime_options_in_a_real_cluster(name: str) -> None:
    gateway = str(next(IPv4Network(SUBNET).hosts()))
    state = cluster.up(name, 1, SUBNET, say=lambda _: None)
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    # The task's own DNS server, on the cluster's gateway (port 53: a resolv.conf
    # server has no port); the agents have no upstream of their own.
    upstream = UpstreamDns({"upstream.test": "192.0.2.7"}, host=gateway, port=53)
    try:
        swarmctl("network", "create", "front")
        # Each task tries to add an address to its loopback as it starts, then serves.
        tries = ["--", "sh", "-c", "ip addr add 10.99.0.1/32 dev lo && echo added-address "
                 "|| echo no-address; exec /bin/demo-web"]
        swarmctl("service", "create", "tools", "--image", image, "--network", "front",
                 "--cap-add", "NET_ADMIN", "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",
                 "--ulimit", "nofile=1024:2048", "--limit-pids", "64", "--dns", gateway,
                 "--dns-search", "svc.example", "--host", "db.internal:10.0.0.5",
                 "--timeout", "60s", *tries)
        swarmctl("service", "create", "plain", "--image", image, "--network", "front",
                 "--timeout", "60s", *tries)
        pid = _pid("tools")

        # NET_ADMIN: an address on its interface; the task without it is refused.
        assert poll(lambda: "added-address" in swarmctl("service", "logs", "tools"), timeout=10)
        assert "10.99.0.1/32" in in_container(pid, "ip", "-4", "addr", "show", "lo").stdout
        assert poll(lambda: "no-address" in swarmctl("service", "logs", "plain"), timeout=10)
        net_admin = 1 << 12

        def effective(task_pid: int) -> int:
            status = Path(f"/proc/{task_pid}/status").read_text()
            return int(next(line.split()[1] for line in status.splitlines()
                            if line.startswith("CapEff:")), 16)

        assert effective(pid) & net_admin
        assert not effective(_pid("plain")) & net_admin

        # The sysctl, the ulimit and the pids limit.
        assert in_container(pid, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"
                            ).stdout.strip() == "0"
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["1024", "2048"]
                   for line in limits.splitlines()), limits
        assert in_container(pid, "cat", "/sys/fs/cgroup/pids/pids.max").stdout.strip() == "64"

        # resolv.conf keeps the embedded DNS, with the task's search domain;
        # /etc/hosts has the extra host.
        resolv = in_container(pid, "cat", "/etc/resolv.conf").stdout
        assert "nameserver 127.0.0.11" in resolv
        assert gateway not in resolv
        assert "search svc.example" in resolv
        assert "10.0.0.5\tdb.internal" in in_container(pid, "cat", "/etc/hosts").stdout
        # The service name still resolves (the overlay's DNS), and other names go
        # to the task's --dns server.
        (inspect,) = json.loads(swarmctl("service", "inspect", "tools", "-o", "json"))
        vip = inspect["endpoint"]["virtual_ips"][0]["addr"].split("/")[0]
        # ("tools.": busybox nslookup asks only NAME.SEARCH for a bare name when
        # there is a search list, whatever ndots says; a C library asks NAME first.)
        assert poll(lambda: resolved(in_container(pid, "nslookup", "tools.")) == [vip])
        assert resolved(in_container(pid, "nslookup", "upstream.test")) == ["192.0.2.7"]
        assert "upstream.test" in upstream.asked
        # A task without --dns on the same node: the node's upstreams (none here).
        other = in_container(_pid("plain"), "nslookup", "upstream.test")
        assert "REFUSED" in other.stdout + other.stderr
        assert upstream.asked.count("upstream.test") == 2  # A and AAAA, from tools only
    finally:
        upstream.close()

    # The stop signal: the old task of a forced update gets SIGUSR1, long
    # before its 30 s grace period would end in a SIGKILL.
    swarmctl("service", "create", "stopper", "--image", image, "--stop-signal", "SIGUSR1",
             "--stop-grace-period", "30s", "--drain-timeout", "0s", "--timeout", "60s", "--",
             "sh", "-c", "trap 'echo got-usr1; exit 0' USR1; echo ready; "
                         "while true; do sleep 0.2; done")
    started = time.monotonic()
    swarmctl("service", "update", "stopper", "--force", "--timeout", "60s")
    assert time.monotonic() - started < 25
    assert poll(lambda: "got-usr1" in swarmctl("service", "logs", "stopper"), timeout=10)

    # A device the node does not have: REJECTED, with the reason, in service ps.
    swarmctl("service", "create", "-d", "needs-device", "--image", image,
             "--device", MISSING_DEVICE)
    reason = ("error gathering device information while adding custom device "
              f"'{MISSING_DEVICE}': No such file or directory")

    def rejected() -> bool:
        tasks = json.loads(swarmctl("service", "ps", "needs-device", "-o", "json"))
        return any(t["status"]["state"] == "REJECTED" and t["status"].get("err") == reason
                   for t in tasks)

    assert poll(rejected, timeout=30)
    assert reason in swarmctl("service", "ps", "needs-device", "--no-trunc")
