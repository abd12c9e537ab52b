"""`swarmctl dev up|status|down` for real: simulated hosts (network
namespaces on an underlay), etcd, a controller, a registry and real agents
running runc containers; then nothing left behind."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swarm.agent.main import default_cgroup_parent
from swarm.cli.dev import cluster
from swarm.cli.dev.context import read_context
from swarm.cli.dev.daemons import alive, spawn, stop
from swarm.cli.dev.hosts import ipr_in
from swarm.cli.main import app
from tests.dns_upstream import UpstreamDns

pytestmark = pytest.mark.timeout(240)


def _require_root() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")


@pytest.fixture
def name() -> Iterator[str]:
    _require_root()
    name = "t" + secrets.token_hex(3)
    try:
        yield name
    finally:
        cluster.down(name, say=lambda _: None)  # also when the test failed


def swarmctl(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"swarmctl {' '.join(args)}: {result.output}"
    return result.output


def page(netns: str, url: str = "http://127.0.0.1:80/", attempts: int = 50) -> str:
    """The demo page from inside a task's namespace (httpd may still be starting)."""
    for _ in range(attempts):
        result = subprocess.run(
            # (no -T: busybox 1.35 wget segfaults with it)
            ["nsenter", f"--net=/run/netns/{netns}", "busybox", "wget", "-qO-",
             url], capture_output=True, text=True, timeout=20, check=False)
        if result.returncode == 0:
            return result.stdout
        time.sleep(0.1)
    return ""


def netns_with(prefix: str) -> list[str]:
    run = Path("/run/netns")
    return sorted(n for n in os.listdir(run) if n.startswith(prefix)) if run.is_dir() else []


def test_up_scale_status_down_leaves_nothing(name: str) -> None:
    state = cluster.up(name, 2, "192.168.91.0/24", say=lambda _: None)
    assert read_context() is not None
    assert read_context().controller == state.controller  # type: ignore[union-attr]
    assert read_context().cert  # type: ignore[union-attr]  # mutual TLS with an admin identity
    assert "Fingerprint (SHA-256)" in swarmctl("cluster", "inspect")
    assert swarmctl("cluster", "join-token", "-q", "worker").startswith("SWMTKN-1-")
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("service", "create", "web", "--image", image, "--replicas", "2", "--timeout", "60s")
    swarmctl("service", "scale", "web=4", "--timeout", "60s")
    status = swarmctl("dev", "status", "--name", name)
    # Both hosts run tasks (spread), and every process is up.
    assert f"{name}-h1" in status
    assert f"{name}-h2" in status
    assert status.count("web.") == 4
    assert "gone" not in status
    # The first host is a manager for placement (node.role), the others workers.
    managers = swarmctl("node", "ls", "--filter", "role=manager")
    assert f"{name}-h1" in managers
    assert f"{name}-h2" not in managers

    # The tasks are real containers answering on port 80 in their namespaces
    # (named after their agent's cgroup parent).
    prefixes = [default_cgroup_parent(Path(node.state_dir)) + "-" for node in state.nodes]
    task_namespaces = [n for prefix in prefixes for n in netns_with(prefix)]
    assert len(task_namespaces) == 4
    for netns in task_namespaces:
        assert page(netns).startswith("hello from "), netns

    cluster.down(name, say=lambda _: None)
    assert not any(alive(d) for d in state.daemons)
    assert netns_with(cluster.namespace_prefix(name)) == []
    assert not Path(f"/sys/class/net/{cluster.root_link(name)}").exists()
    assert not cluster.state_dir(name).exists()
    assert str(cluster.state_dir(name)) not in Path("/proc/self/mounts").read_text()
    assert read_context() is None


def test_example_stacks_run_in_real_containers(name: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    state = cluster.up(name, 2, "192.168.94.0/24", say=lambda _: None)
    monkeypatch.setenv("SWARM_REGISTRY", state.registry)  # the examples' image registry
    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    for example in ("web", "monitor", "placement"):
        output = swarmctl("apply", "-f", str(examples / f"{example}.yaml"), "--timeout", "60s")
        assert "tasks running" in output, output
    services = swarmctl("service", "ls")
    for service, replicas in (("web_web", "3/3"), ("web_kv", "1/1"),
                              ("monitor_node-stats", "2/2"), ("placement_batch", "4/4")):
        assert any(line.split()[1:4:2] == [service, replicas]
                   for line in services.splitlines()[1:]), services
    # The web example publishes 8080: its page answers through every host (demo.sh).
    for node in state.nodes:
        assert answers(node.address.split("/")[0], 8080).startswith("hello from web_web.")
    # A web task finds its backend by the stack's short name and by the
    # compose alias, both the service's VIP, and reaches it through the VIP.
    (kv,) = json.loads(swarmctl("service", "inspect", "web_kv", "-o", "json"))
    kv_vip = kv["endpoint"]["virtual_ips"][0]["addr"].split("/")[0]
    web_task = json.loads(swarmctl("service", "ps", "web_web", "-o", "json"))[0]
    pid = int(web_task["status"]["container"]["pid"])
    for alias in ("kv", "store", "web_kv"):
        assert poll(functools.partial(resolves_to, pid, alias, [kv_vip])), alias
    reply = in_container(pid, "sh", "-c", "echo colour=blue | nc -w 3 kv 7000")
    assert "colour=blue" in reply.stdout, reply


def test_tasks_on_an_overlay_reach_each_other_across_hosts(name: str) -> None:
    state = cluster.up(name, 2, "192.168.95.0/24", say=lambda _: None)
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("network", "create", "backend")
    swarmctl("service", "create", "web", "--image", image, "--replicas", "2", "--network",
             "backend", "--max-replicas-per-node", "1", "--env", "TASK_NAME={{.Task.Name}}",
             "--env", "NODE_NAME={{.Node.Hostname}}", "--timeout", "60s")
    tasks = json.loads(swarmctl("service", "ps", "web", "-o", "json"))
    assert len(tasks) == 2
    addresses = {t["id"]: t["networks"][0]["addresses"][0].split("/")[0] for t in tasks}
    namespaces = {task_id: next(n for n in netns_with("swarm-") if n.endswith(task_id))
                  for task_id in addresses}
    (a, b) = sorted(addresses)
    # Each container fetches the other's page over VXLAN between the two hosts.
    assert page(namespaces[a], f"http://{addresses[b]}/").startswith("hello from web.")
    assert f".{b} on {name}-h" in page(namespaces[a], f"http://{addresses[b]}/")
    assert f".{a} on {name}-h" in page(namespaces[b], f"http://{addresses[a]}/")
    overlay_prefixes = [f"ov-{default_cgroup_parent(Path(n.state_dir))}-" for n in state.nodes]
    assert all(netns_with(prefix) for prefix in overlay_prefixes)
    cluster.down(name, say=lambda _: None)
    assert not any(netns_with(prefix) for prefix in overlay_prefixes)


def free_port() -> int:
    """A port free for both UDP and TCP (the upstream listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("0.0.0.0", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("0.0.0.0", port))
                except OSError:
                    continue
                return port


def in_container(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command inside a task's container (its mount, network and root:
    its own /etc/resolv.conf and busybox), as `docker exec` would run it."""
    return subprocess.run(["nsenter", f"--target={pid}", "--mount", "--net", "--uts", "--root",
                           "--wd", "/bin/busybox", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


def resolves_to(pid: int, name: str, addresses: list[str]) -> bool:
    return resolved(in_container(pid, "nslookup", name)) == addresses


def resolved(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The addresses busybox nslookup printed (not the server's)."""
    return sorted(line.split()[-1] for line in result.stdout.splitlines()
                  if line.startswith("Address") and not line.rstrip().endswith(":53"))


def poll(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_service_names_and_vips_from_a_container(name: str) -> None:
    subnet = "192.168.96.0/24"
    port = free_port()
    gateway = str(next(IPv4Network(subnet).hosts()))
    state = cluster.up(name, 3, subnet, say=lambda _: None,
                       dns_forwarders=[f"{gateway}:{port}"])
    assert state.gateway == gateway
    upstream = UpstreamDns({"upstream.test": "192.0.2.7"}, host=gateway, port=port)
    try:
        _check_discovery(state, upstream)
    finally:
        upstream.close()


def _check_discovery(state: cluster.ClusterState, upstream: UpstreamDns) -> None:
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("network", "create", "front")
    swarmctl("network", "create", "back")
    swarmctl("service", "create", "web", "--image", image, "--replicas", "3", "--network",
             "front", "--max-replicas-per-node", "1", "--env", "TASK_NAME={{.Task.Name}}",
             "--env", "NODE_NAME={{.Node.Hostname}}", "--timeout", "60s")
    # On host 1 too, so that host 1's agent knows the name, and must not tell.
    swarmctl("service", "create", "hidden", "--image", image, "--network", "back",
             "--constraint", f"node.hostname=={state.name}-h1", "--timeout", "60s")
    # The client: a container on host 1 on the same network.
    swarmctl("service", "create", "client", "--image", image, "--network", "front",
             "--constraint", f"node.hostname=={state.name}-h1", "--timeout", "60s")
    tasks = json.loads(swarmctl("service", "ps", "web", "-o", "json"))
    assert len(tasks) == 3
    by_address = {t["networks"][0]["addresses"][0].split("/")[0]: t for t in tasks}
    names = {t["id"]: f"web.{t['slot']}.{t['id']}" for t in tasks}
    (client,) = json.loads(swarmctl("service", "ps", "client", "-o", "json"))
    pid = int(client["status"]["container"]["pid"])
    (inspect,) = json.loads(swarmctl("service", "inspect", "web", "-o", "json"))
    vip = inspect["endpoint"]["virtual_ips"][0]["addr"].split("/")[0]

    # The container's resolv.conf points at the embedded DNS.
    resolv = in_container(pid, "cat", "/etc/resolv.conf").stdout
    assert "nameserver 127.0.0.11" in resolv
    assert "ndots:0" in resolv
    # SERVICE -> its VIP; tasks.SERVICE -> every ready task; a task name -> its address.
    assert poll(lambda: resolved(in_container(pid, "nslookup", "web")) == [vip])
    assert poll(lambda: resolved(in_container(pid, "nslookup", "tasks.web")) ==
                sorted(by_address))
    some = tasks[1]
    assert resolved(in_container(pid, "nslookup", names[some["id"]])) == \
        [some["networks"][0]["addresses"][0].split("/")[0]]
    # A service on a network the client is not on: NXDOMAIN, never forwarded.
    hidden = in_container(pid, "nslookup", "hidden")
    assert hidden.returncode != 0
    assert "NXDOMAIN" in hidden.stdout + hidden.stderr
    assert "hidden" not in upstream.asked
    # Anything else goes to the upstream (ours, on the cluster's gateway).
    assert resolved(in_container(pid, "nslookup", "upstream.test")) == ["192.0.2.7"]
    assert "upstream.test" in upstream.asked

    # The VIP reaches every replica (wget by the service name, from the container).
    seen: set[str] = set()
    for _ in range(60):
        page_text = in_container(pid, "wget", "-qO-", "http://web/").stdout
        seen.add(page_text.split(" on ")[0].removeprefix("hello from "))
        if len(seen) == 3:
            break
    assert seen == set(names.values()), seen

    # The agent of host 1 restarts: the adopted client container gets its DNS
    # responder and its table again (nothing answers while the agent is away).
    restart_agent(state, "h1")
    assert poll(lambda: resolved(in_container(pid, "nslookup", "web")) == [vip])
    assert in_container(pid, "wget", "-qO-", "http://web/").stdout.startswith("hello from web.")

    # Scale down: the VIP stops choosing the tasks that went.
    swarmctl("service", "scale", "web=1", "--timeout", "60s")
    remaining = json.loads(swarmctl("service", "ps", "web", "-o", "json"))
    left = [t for t in remaining if t.get("desired_state") == "RUNNING"]
    assert len(left) == 1
    survivor = names[left[0]["id"]]
    # The others stop within their grace period (httpd as PID 1 ignores SIGTERM).
    assert poll(lambda: resolved(in_container(pid, "nslookup", "tasks.web")) ==
                [left[0]["networks"][0]["addresses"][0].split("/")[0]], timeout=40)
    pages = {in_container(pid, "wget", "-qO-", "http://web/").stdout.split(" on ")[0]
             for _ in range(15)}
    assert pages == {f"hello from {survivor}"}, pages
    # Nothing keeps the stopped tasks' namespaces alive (the agent's DNS
    # sockets in them are closed): their veths are gone from every host,
    # only the survivor's and the client's remain.
    (front,) = json.loads(swarmctl("network", "inspect", "front", "-o", "json"))
    overlays = [f"ov-{default_cgroup_parent(Path(n.state_dir))}-{front['id']}"
                for n in state.nodes]
    assert poll(lambda: sum(veths(ns) for ns in overlays) == 2, timeout=20)


def restart_agent(state: cluster.ClusterState, host: str) -> None:
    """Stop a host's agent (its containers keep running) and start it again
    with the same command line, recorded in the cluster's state (so `down`
    stops the new one)."""
    old = next(d for d in state.daemons if d.role == f"agent {host}")
    assert stop(old)
    state.daemons.remove(old)
    state.daemons.append(spawn(old.role, old.argv, Path(old.log)))
    cluster.save_state(state)


def veths(netns: str) -> int:
    if not Path(f"/run/netns/{netns}").exists():
        return 0
    with ipr_in(netns) as ipr:
        return sum(1 for link in ipr.link("dump") if link.get(("linkinfo", "kind")) == "veth")


def test_up_after_a_crash_cleans_up_and_starts_again(name: str) -> None:
    first = cluster.up(name, 1, "192.168.92.0/24", say=lambda _: None)
    # A crash: the controller dies, swarmctl never runs `down`.
    controller = next(d for d in first.daemons if d.role == "controller")
    os.kill(controller.pid, 9)
    deadline = time.monotonic() + 10
    while alive(controller) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = cluster.up(name, 1, "192.168.92.0/24", say=lambda _: None)
    assert not any(alive(d) for d in first.daemons)
    assert all(alive(d) for d in second.daemons)


def test_bad_input_is_one_line_and_makes_nothing() -> None:
    _require_root()
    for args, message in (
            (["--name", "Bad_Name"], "--name 'Bad_Name'"),
            (["--nodes", "0", "--name", "tbad"], "--nodes 0"),
            (["--subnet", "300.1.1.0/24", "--name", "tbad"], "--subnet '300.1.1.0/24'")):
        result = CliRunner().invoke(app, ["dev", "up", *args])
        assert result.exit_code == 1, result.output
        assert result.output.strip().startswith(f"swarmctl: {message}"), result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not cluster.state_dir("tbad").exists()
    assert netns_with("swd-tbad-") == []


def fetch(address: str, port: int, timeout: float = 3.0) -> str:
    """GET / from the root namespace to a host's advertise address (the
    hosts' underlay: namespaces this test made). Raises OSError when nothing
    answers."""
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", "/")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def answers(address: str, port: int, attempts: int = 100) -> str:
    """The page once it answers (the listener and its backends take a moment)."""
    for _ in range(attempts):
        with contextlib.suppress(OSError, http.client.HTTPException):
            text = fetch(address, port)
            if text.startswith("hello from"):
                return text
        time.sleep(0.2)
    raise AssertionError(f"nothing answered on {address}:{port}")


def refused(address: str, port: int, attempts: int = 100) -> bool:
    """Whether the port ends up closed (connection refused) on the host."""
    for _ in range(attempts):
        try:
            with socket.create_connection((address, port), timeout=2):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def test_published_port_answers_on_every_host_and_host_mode_only_where_tasks_run(
        name: str) -> None:
    state = cluster.up(name, 3, "192.168.96.0/24", say=lambda _: None)
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    assert "ingress" in swarmctl("network", "ls")  # made by the leader, as swarm init does
    # Two replicas on three hosts: one host runs no task and must answer too.
    swarmctl("service", "create", "web", "--image", image, "--replicas", "2",
             "--max-replicas-per-node", "1", "--publish", "8080:80",
             "--env", "TASK_NAME={{.Task.Name}}", "--env", "NODE_NAME={{.Node.Hostname}}",
             "--timeout", "60s")
    hosts = [node.address.split("/")[0] for node in state.nodes]
    tasks = json.loads(swarmctl("service", "ps", "web", "-o", "json"))
    task_nodes = {t["node_id"] for t in tasks}
    assert len(task_nodes) == 2
    answered: set[str] = set()
    for address in hosts:
        assert answers(address, 8080).startswith("hello from web.")
        for _ in range(12):
            answered.add(fetch(address, 8080).split(" on ")[0])
    assert len(answered) == 2, answered  # both replicas answer, from every host

    # Bad input: one line, nothing made.
    result = CliRunner().invoke(app, ["service", "create", "other", "--image", image,
                                      "--publish", "70000:80"])
    assert result.exit_code == 2, result.output
    result = CliRunner().invoke(app, ["service", "create", "other", "--image", image,
                                      "--publish", "8080:81"])
    assert result.exit_code == 1, result.output
    assert "port 8080/tcp is already published by service 'web'" in result.output
    assert "other" not in swarmctl("service", "ls")

    # Host mode: only the node running the task listens.
    swarmctl("service", "create", "direct", "--image", image, "--replicas", "1",
             "--publish", "mode=host,published=8081,target=80",
             "--env", "TASK_NAME={{.Task.Name}}", "--timeout", "60s")
    (direct,) = json.loads(swarmctl("service", "ps", "direct", "-o", "json"))
    node_hosts = {n["id"]: n["description"]["advertise_addr"]
                  for n in json.loads(swarmctl("node", "ls", "-o", "json"))}
    running_on = node_hosts[direct["node_id"]]
    assert answers(running_on, 8081).startswith("hello from direct.")
    for address in hosts:
        if address != running_on:
            assert refused(address, 8081, attempts=1), address

    # Removed: nothing listens any more. With no port published in ingress
    # mode the nodes are not sent the ingress network at all (its peers would
    # be every node: news of every join for every node), so its overlay and
    # sandbox go from every host.
    swarmctl("service", "rm", "web", "direct")
    for address in hosts:
        assert refused(address, 8080), address
        assert refused(address, 8081), address
    prefixes = [f"ov-{default_cgroup_parent(Path(n.state_dir))}-" for n in state.nodes]
    deadline = time.monotonic() + 30
    while any(netns_with(p) for p in prefixes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(netns_with(p) for p in prefixes)
    cluster.down(name, say=lambda _: None)
    assert not any(netns_with(prefix) for prefix in prefixes)


def test_host_network_task_answers_on_its_hosts_own_address(name: str) -> None:
    state = cluster.up(name, 2, "192.168.129.0/24", say=lambda _: None)
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    second = state.nodes[1]
    # Bad input first: host networking publishes nothing. One line, nothing written.
    result = CliRunner().invoke(app, ["service", "create", "bad", "--image", image,
                                      "--network", "host", "--publish", "8090:8090"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "swarmctl: --publish: cannot be used with --network host: the task binds the node's "
        "ports itself"]
    assert "bad" not in swarmctl("service", "ls")

    swarmctl("service", "create", "hostweb", "--image", image, "--network", "host",
             "--env", "PORT=8090", "--env", "TASK_NAME={{.Task.Name}}",
             "--constraint", f"node.hostname=={name}-{second.host}", "--timeout", "60s")
    # httpd bound the host's own port: reached on the host's address, with no
    # published port and no namespace of the task's own.
    address = second.address.split("/")[0]
    assert answers(address, 8090).startswith("hello from hostweb.1.")
    prefix = default_cgroup_parent(Path(second.state_dir)) + "-"
    assert netns_with(prefix) == []
    (service,) = json.loads(swarmctl("service", "inspect", "hostweb"))
    assert not service.get("endpoint", {}).get("virtual_ips")
