"""The worker with service discovery, in real runc containers: three tasks
on an overlay network of a simulated host (cli/dev/hosts.py), assignments
made by hand as the dispatcher would send them (dispatcher.proto), and
commands run INSIDE the client container (its mount and network namespaces
and root: its own resolv.conf and busybox) as `docker exec` would.

Everything is removed at the end (containers, namespaces, the host), also
when the test fails; the test checks the DNS sockets let the namespaces go.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swarm.agent.discovery import Discovery
from swarm.agent.images import ImageStore
from swarm.agent.network import OverlayManager, OverlaySettings
from swarm.agent.network.dns import Forwarder, Upstream
from swarm.agent.runtime import RuncRuntime, RuncSettings
from swarm.agent.worker import Worker
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.hosts import Hosts, ipr_in
from tests.agent.containers import require_containers, teardown
from tests.dns_upstream import UpstreamDns
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(180)

NETWORK = pb.Network(id="wdnet", vni=4711, subnet="10.41.0.0/24", gateway="10.41.0.1")
NETWORK.spec.name = "front"
VIP = "10.41.0.2"
WEB_RECORD = dpb.ServiceRecord(id="s-web", name="web", mode=pb.EndpointSpec.VIP, vip=f"{VIP}/24")
WEB = ("sh", "-c", 'mkdir -p /www && echo "hello from $TASK" > /www/index.html && '
                   "exec httpd -f -p 80 -h /www")


class Setup:
    def __init__(self, hosts: Hosts, settings: RuncSettings, images: Path,
                 upstream: UpstreamDns) -> None:
        host = hosts[0]
        self.overlay = OverlayManager(OverlaySettings(
            advertise_addr=host.ip, host_netns=host.netns, netns_prefix=hosts.name("ov-")))
        self.runtime = RuncRuntime(settings)
        self.discovery = Discovery(Forwarder([Upstream("127.0.0.1", upstream.port)]))
        self.host = host
        self.states: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.worker = Worker(self.runtime, ImageStore(images), report=self.report,
                             overlay=self.overlay, netns_path=self.runtime.netns_path,
                             discovery=self.discovery)
        self.vtep = str(host.ip)

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        self.states[task_id] = status.state
        self.errors[task_id] = status.err

    def peer(self, task: pb.Task, ready: bool = True) -> dpb.OverlayPeer:
        return dpb.OverlayPeer(task_id=task.id, node_id="n1", vtep=self.vtep,
                               address=task.networks[0].addresses[0],
                               service_id=task.service_id, ready=ready,
                               task_name=f"{task.service_name}.{task.slot}.{task.id}")

    def assignments(self, tasks: list[pb.Task]) -> dpb.Assignments:
        entry = dpb.NetworkAssignment(network=NETWORK, peers=[self.peer(t) for t in tasks],
                                      services=[WEB_RECORD])
        return dpb.Assignments(type=dpb.Assignments.COMPLETE, tasks=tasks,
                               networks=[entry] if tasks else [])


def task(image: str, service: str, slot: int, address: str, *command: str) -> pb.Task:
    result = pb.Task(id=uuid.uuid4().hex[:25], service_id=f"s-{service}",
                     service_name=service, slot=slot, desired_state=pb.RUNNING,
                     status=pb.TaskStatus(state=pb.ASSIGNED))
    result.spec.container.image = image
    result.spec.container.command.extend(command)
    result.spec.container.env.append(f"TASK={service}.{slot}")
    result.spec.container.stop_grace_period.FromMilliseconds(200)
    result.networks.add(network_id=NETWORK.id, addresses=[address])
    return result


async def in_container(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """In a thread: the agent's DNS answers from this test's own event loop."""
    return await asyncio.to_thread(_in_container, pid, *argv)


def _in_container(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--target={pid}", "--mount", "--net", "--root", "--wd",
                           "/bin/busybox", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


def veths(netns: str) -> int:
    with ipr_in(netns) as ipr:
        return sum(1 for link in ipr.link("dump") if link.get(("linkinfo", "kind")) == "veth")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    require_containers()
    hosts = await asyncio.to_thread(Hosts.create, 1)
    # Under /run and short: conmon's attach socket path must fit a sockaddr_un.
    state_dir = Path(tempfile.mkdtemp(prefix="swdw-", dir="/run"))
    settings = RuncSettings(state_dir=state_dir, cgroup_parent=f"swdw-{uuid.uuid4().hex[:8]}")
    upstream = UpstreamDns({"upstream.test": "192.0.2.7"})
    made: Setup | None = None
    try:
        made = Setup(hosts, settings, tmp_path / "images", upstream)
        yield made
    finally:
        if made is not None:
            await made.worker.close()
            await made.discovery.close()
            await made.worker.images.close()  # type: ignore[attr-defined]
        await teardown(settings)
        await asyncio.to_thread(hosts.teardown)
        upstream.close()
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_names_and_the_vip_from_inside_a_container(setup: Setup, busybox_ref: str) -> None:
    loop = start_supervised("discovery-lb", setup.discovery.run)
    try:
        web1 = task(busybox_ref, "web", 1, "10.41.0.11/24", *WEB)
        web2 = task(busybox_ref, "web", 2, "10.41.0.12/24", *WEB)
        client = task(busybox_ref, "client", 1, "10.41.0.10/24", "sleep", "1000")
        tasks = [web1, web2, client]
        await setup.worker.apply(setup.assignments(tasks))
        await eventually(lambda: all(setup.states.get(t.id) == pb.RUNNING for t in tasks), 60,
                         "three tasks running")
        assert sorted(setup.discovery.serving()) == sorted(t.id for t in tasks)
        container = setup.worker.containers()[client.id]
        assert container is not None
        pid = container.pid

        resolv = (await in_container(pid, "cat", "/etc/resolv.conf")).stdout
        assert "nameserver 127.0.0.11" in resolv
        assert "options ndots:0" in resolv
        lookup = await in_container(pid, "nslookup", "web")
        assert f"Address: {VIP}" in lookup.stdout, lookup
        tasks_web = (await in_container(pid, "nslookup", "tasks.web")).stdout
        assert "10.41.0.11" in tasks_web
        assert "10.41.0.12" in tasks_web
        by_name = (await in_container(pid, "nslookup", f"web.2.{web2.id}")).stdout
        assert "Address: 10.41.0.12" in by_name
        forwarded = (await in_container(pid, "nslookup", "upstream.test")).stdout
        assert "Address: 192.0.2.7" in forwarded

        # wget by the service name (the C library's resolver, then the VIP):
        # both replicas answer over repeated requests.
        pages: set[str] = set()
        for _ in range(40):
            result = await in_container(pid, "wget", "-qO-", "http://web/")
            assert result.returncode == 0, result.stderr
            pages.add(result.stdout.strip())
            if len(pages) == 2:
                break
        assert pages == {"hello from web.1", "hello from web.2"}

        # Everything goes: the DNS sockets close, so nothing keeps the task
        # namespaces (and their veths) alive.
        overlay_netns = setup.overlay.netns_path(NETWORK.id)
        await setup.worker.apply(setup.assignments([]))
        await setup.worker.wait_removals()
        assert setup.discovery.serving() == []
        await eventually(lambda: not Path(overlay_netns).exists() or veths(overlay_netns) == 0,
                         20, "the tasks' veths gone")
    finally:
        await cancel_all([loop])


async def test_a_network_left_unassigned_is_forgotten(setup: Setup) -> None:
    # (No container needed: the directory follows the assignments alone.)
    web = task("unused", "web", 1, "10.41.0.11/24")
    setup.discovery.apply(setup.assignments([web]))
    assert setup.discovery.resolve("web", [NETWORK.id]).addresses
    setup.discovery.apply(dpb.Assignments(type=dpb.Assignments.COMPLETE))
    assert not setup.discovery.resolve("web", [NETWORK.id]).addresses
    assert setup.discovery.directory.networks() == []


async def test_a_host_whose_underlay_is_too_small_rejects_the_task_saying_why(
        setup: Setup, busybox_ref: str) -> None:
    await asyncio.to_thread(setup.host.set_mtu, 1300)  # leaves 1250 for the overlay: < 1280
    web = task(busybox_ref, "web", 1, "10.41.0.11/24", *WEB)
    await setup.worker.apply(setup.assignments([web]))
    await eventually(lambda: setup.states.get(web.id) == pb.REJECTED, 60, "the task rejected")
    assert "underlay MTU 1300" in setup.errors[web.id]
    assert setup.overlay.networks() == []  # nothing half made
    assert setup.runtime.netns_path(web.id).exists() is False


async def test_a_vxlan_device_the_kernel_took_away_is_made_again(
        setup: Setup, busybox_ref: str) -> None:
    """A VXLAN device goes with its underlay device (a NIC rebuilt on a live
    host); the worker's periodic resync makes it again, enslaved to the
    network's bridge, with no message from the controller."""
    web = task(busybox_ref, "web", 1, "10.41.0.11/24", *WEB)
    await setup.worker.apply(setup.assignments([web]))
    await eventually(lambda: setup.states.get(web.id) == pb.RUNNING, 60, "the task running")
    netns = setup.overlay.netns_path(NETWORK.id)

    def vxlan_on_bridge() -> bool:
        with ipr_in(netns) as ipr:
            (bridge,) = ipr.link_lookup(ifname="br0")
            found = ipr.link_lookup(ifname="vxlan0")
            return bool(found) and ipr.link("get", index=found[0])[0].get("master") == bridge

    def delete_vxlan() -> None:
        with ipr_in(netns) as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname="vxlan0")[0])

    # pyroute2's blocking IPRoute runs its own loop: in threads, beside ours.
    assert await asyncio.to_thread(vxlan_on_bridge)
    await asyncio.to_thread(delete_vxlan)
    assert not await asyncio.to_thread(vxlan_on_bridge)
    await setup.worker.resync_networks()
    assert await asyncio.to_thread(vxlan_on_bridge)


def stopping(task: pb.Task, drain_timeout: float) -> pb.Task:
    """The task as the dispatcher sends it once told to stop."""
    result = pb.Task()
    result.CopyFrom(task)
    result.desired_state = pb.SHUTDOWN
    result.spec.container.drain_timeout.FromMilliseconds(int(drain_timeout * 1000))
    return result


def not_ready(setup: Setup, task: pb.Task) -> dpb.NetworkAssignment:
    """The delta that takes the task out of DNS and the load balancers."""
    return dpb.NetworkAssignment(network=NETWORK, delta=True, services=[WEB_RECORD],
                                 peers=[setup.peer(task, ready=False)])


async def test_a_stopping_task_waits_to_be_drained_within_its_bound(
        setup: Setup, busybox_ref: str) -> None:
    """Drain before stop in the worker: a task told to stop keeps running
    until the controller says it is drained, or until its drain timeout;
    settled() says when the load balancers have what was applied (the VIP
    no longer leads to the stopping task)."""
    loop = start_supervised("discovery-lb", setup.discovery.run)
    try:
        web1 = task(busybox_ref, "web", 1, "10.41.0.11/24", *WEB)
        web2 = task(busybox_ref, "web", 2, "10.41.0.12/24", *WEB)
        client = task(busybox_ref, "client", 1, "10.41.0.10/24", "sleep", "1000")
        tasks = [web1, web2, client]
        await setup.worker.apply(setup.assignments(tasks))
        await eventually(lambda: all(setup.states.get(t.id) == pb.RUNNING for t in tasks), 60,
                         "three tasks running")
        containers = setup.worker.containers()
        pid = containers[client.id].pid  # type: ignore[union-attr]
        web2_pid = containers[web2.id].pid  # type: ignore[union-attr]

        # web2 is told to stop, and is no longer a ready peer (one message).
        started = asyncio.get_running_loop().time()
        await setup.worker.apply(dpb.Assignments(
            type=dpb.Assignments.INCREMENTAL, tasks=[stopping(web2, 1.5)],
            networks=[not_ready(setup, web2)]))
        assert await setup.worker.settled(10)
        # In force: the VIP leads only to web1, while web2 still runs.
        pages = {(await in_container(pid, "wget", "-qO-", "http://web/")).stdout.strip()
                 for _ in range(10)}
        assert pages == {"hello from web.1"}
        assert setup.states[web2.id] == pb.RUNNING
        assert await asyncio.to_thread(Path(f"/proc/{web2_pid}").exists)
        # Never drained: its bound stops it (1.5 s, then the 0.2 s grace).
        await eventually(lambda: setup.states.get(web2.id) == pb.SHUTDOWN, 20, "web2 stopped")
        assert asyncio.get_running_loop().time() - started >= 1.5

        # web1 has a long bound, but the controller says it is drained.
        started = asyncio.get_running_loop().time()
        await setup.worker.apply(dpb.Assignments(
            type=dpb.Assignments.INCREMENTAL, tasks=[stopping(web1, 60)],
            networks=[not_ready(setup, web1)]))
        await asyncio.sleep(0.5)
        assert setup.states[web1.id] == pb.RUNNING
        await setup.worker.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL,
                                                 drained=[web1.id]))
        await eventually(lambda: setup.states.get(web1.id) == pb.SHUTDOWN, 20, "web1 stopped")
        assert asyncio.get_running_loop().time() - started < 10

        # A drain timeout of 0: no wait (the client, RUNNING on a network,
        # would otherwise wait like any possible backend).
        started = asyncio.get_running_loop().time()
        await setup.worker.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL,
                                                 tasks=[stopping(client, 0)]))
        await eventually(lambda: setup.states.get(client.id) == pb.SHUTDOWN, 20,
                         "client stopped")
        assert asyncio.get_running_loop().time() - started < 1.5  # sleep: 0.2 s grace
        await setup.worker.apply(setup.assignments([]))
        await setup.worker.wait_removals()
    finally:
        await cancel_all([loop])
